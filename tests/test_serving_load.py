"""Many clients at once, dynamic batching, and faults under load (issue 14).

Real processes throughout: ``python -m harness serve`` (auto-managed server0-2, K client
slots) and several ``python -m harness client`` processes, plus client-side snippets that
misbehave (killed mid-request, malformed requests, never collecting). Every result is
checked against the plaintext logits of its own image.
"""
from __future__ import annotations

import json
import re
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from test_serving import PY, REPO, Serve, _clean, _env, leftover_workers, plaintext_logits, script

WAITING = "are in use: waiting up to"


def _clients(hostmap: Path, specs: list[tuple[int, int]],
             errs: list[Path] | None = None) -> list[subprocess.Popen]:
    """``python -m harness client`` per (image index, repeat), all started at once;
    stderr to the files ``errs`` if given (readable while they run), else a pipe."""
    from harness.net.cluster import exit_with_parent  # noqa: PLC0415

    return [subprocess.Popen(
        [PY, "-m", "harness", "client", "--config", str(hostmap), "--image", str(index),
         "--repeat", str(repeat), "--json", "--wait", "400", "--timeout", "120"],
        stdout=subprocess.PIPE, stderr=open(errs[k], "w") if errs else subprocess.PIPE,
        text=True, env=_env(), cwd=REPO, preexec_fn=exit_with_parent)
        for k, (index, repeat) in enumerate(specs)]


def _batches(log: str) -> list[int]:
    return [int(n) for n in re.findall(r"answered (\d+) request\(s\) \(batch", log)]


def _check_results(done: list[tuple[int, str]], indices: list[int], repeat: int) -> None:
    from harness.inference.data import load_mnist  # noqa: PLC0415

    plain = plaintext_logits(load_mnist().x_test[:max(indices) + 1])
    for index, out in zip(indices, (o for _, o in done)):
        requests = json.loads(out)["requests"]
        assert len(requests) == repeat
        for r in requests:  # each client got the logits of its own image
            logits = np.asarray(r["logits"])
            assert logits.argmax() == plain[index].argmax(), (index, r)
            assert np.abs(logits - plain[index]).max() < 0.1, (index, r)


def _stdin_clients(hostmap: Path, n: int) -> list[subprocess.Popen]:
    from harness.net.cluster import exit_with_parent  # noqa: PLC0415

    procs = [subprocess.Popen(
        [PY, "-m", "harness", "client", "--config", str(hostmap), "--stdin", "--wait", "400",
         "--timeout", "120"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL, text=True, bufsize=1, env=_env(), cwd=REPO,
        preexec_fn=exit_with_parent) for _ in range(n)]
    for p in procs:
        assert json.loads(p.stdout.readline()).get("ready")
    return procs


@pytest.mark.cluster
def test_more_clients_than_slots_wait_their_turn_and_get_their_own_results(
        tmp_path: Path) -> None:
    """2 clients hold both slots; 5 more start at once and each says once that it waits.
    The 2 send 4 requests each at the same moment: their requests share private
    predictions (batches of 2). Once they leave, the 5 are served, each with its own
    image's logits. The owner answers exactly N and stops; nothing is left running."""
    from harness.inference.data import load_mnist  # noqa: PLC0415

    indices, repeat, paired = [0, 1, 2, 3, 4], 2, 4
    n = len(indices) * repeat + 2 * paired
    serve = Serve(tmp_path, "securenn", num_requests=n,
                  extra=("--clients", "2", "--max-batch", "2", "--batch-window", "2000"))
    holders: list[subprocess.Popen] = []
    first: list[subprocess.Popen] = []
    err_files = [tmp_path / f"client{i}.err" for i in indices]
    try:
        serve.wait_ready()
        holders = _stdin_clients(serve.hostmap, 2)
        first = _clients(serve.hostmap, [(i, repeat) for i in indices], err_files)
        deadline = time.monotonic() + 300
        while not all(WAITING in f.read_text(errors="replace") for f in err_files):
            assert time.monotonic() < deadline and all(p.poll() is None for p in first), \
                [f.read_text(errors="replace")[-500:] for f in err_files]
            time.sleep(0.2)
        mark = len(serve.err_path.read_text(errors="replace"))
        for k, p in enumerate(holders):  # both at once: 10..13 and 20..23
            p.stdin.write("".join(f"{10 * (k + 1) + r}\n" for r in range(paired)))
            p.stdin.flush()
        answers = [[json.loads(p.stdout.readline()) for _ in range(paired)] for p in holders]
        for p in holders:  # leaving frees the slots for the 5
            p.stdin.close()
        outs = [p.communicate(timeout=600) for p in first]
        rc, out = serve.finish(timeout=120)
    finally:
        for p in holders + first:
            if p.poll() is None:
                p.kill()
        serve.close()
    log = serve.log()
    errs = [_clean(f.read_text(errors="replace")) for f in err_files]
    done = [(p.returncode, o) for p, (o, _) in zip(first, outs)]
    assert [code for code, _ in done] == [0] * len(indices), "\n".join(errs)[-4000:]
    waited = [e for e in errs if WAITING in e]
    assert len(waited) >= len(indices) - 2, errs  # no slot at first: they waited, said so
    assert all(len([line for line in e.splitlines() if WAITING in line]) == 1 for e in waited)
    _check_results(done, indices, repeat)
    plain = plaintext_logits(load_mnist().x_test[:24])
    for k, got in enumerate(answers):
        for r, answer in enumerate(got):
            index = 10 * (k + 1) + r
            assert answer["image"] == str(index) and "error" not in answer, answer
            assert np.argmax(answer["logits"]) == plain[index].argmax(), answer
    assert rc == 0 and f"SERVED {n}" in out, log[-3000:]
    assert sum(_batches(log)) == n
    paired_batches = _batches(serve.err_path.read_text(errors="replace")[mark:])
    print(f"batches: {_batches(log)}; of the paired clients: {paired_batches}")
    assert paired_batches.count(2) >= 2, paired_batches  # two clients, one prediction
    assert not leftover_workers(serve.proc.pid)


KILLED = r"""
import os, signal, sys
from harness.tfe import activate; activate()
import numpy as np, tensorflow as tf
from tensorflow.python.ops import gen_data_flow_ops as dq
from harness.inference.client import PredictionClient
c = PredictionClient(sys.argv[1], wait=400)
spec = c.desc.input_queue(c.slot.index, 0)
with tf.device(c.devices[0]):  # killed while sending: shares on server0 only, no commit
    dq.queue_enqueue_v2(c._in[0], [tf.constant(5, tf.int64)] + [
        tf.zeros(s, tf.int64) for s in spec.shapes[1:]])
c.send(np.zeros((28, 28), np.float32))  # killed while waiting for its result
print("KILLED", flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""

MALFORMED = r"""
import sys
from harness.tfe import activate; activate()
import tensorflow as tf
from tensorflow.python.ops import gen_data_flow_ops as dq
from harness.inference.client import PredictionClient
from harness.inference.serving_queues import queue_handle
c = PredictionClient(sys.argv[1], wait=400)
with tf.device(c.devices[0]):
    commit = queue_handle(c.desc.commit_queue())
    for rid, slot in ((77, 99), (78, -1), (-3, c.slot.index), (79, c.slot.index)):
        dq.queue_enqueue_v2(commit, [tf.constant(rid, tf.int64), tf.constant(slot, tf.int64)])
from tensorflow.python.eager import context
try:  # a request of the wrong shape never gets onto the servers' queues
    with tf.device(c.devices[0]):
        dq.queue_enqueue_v2(c._in[0], [tf.constant(80, tf.int64), tf.zeros([3], tf.int64)])
    context.async_wait()  # remote ops run asynchronously: their errors come out here
except tf.errors.InvalidArgumentError:
    context.async_clear_error()
    print("SHAPE REFUSED", flush=True)
print("MALFORMED SENT", flush=True)
"""

HOARDER = r"""
import sys, time
from harness.tfe import activate; activate()
import numpy as np
from harness.inference.client import PredictionClient
c = PredictionClient(sys.argv[1], wait=400)
for _ in range(2):
    c.send(np.full((28, 28), 0.5, np.float32))  # and never collects
print("SENT", flush=True)
time.sleep(3600)
"""


@pytest.mark.cluster
def test_faults_under_load_do_not_stall_the_others(tmp_path: Path) -> None:
    """While 3 good clients send 3 requests each: a client killed mid-request, one
    sending malformed commits and a wrong-shaped request, one that never collects its 2
    results. The good clients get correct answers, the owner answers exactly N and
    returns, and nothing is left running."""
    good, repeat = [5, 6, 7], 3
    n = len(good) * repeat + 1 + 2  # + the killed client's request + the hoarder's two
    serve = Serve(tmp_path, "securenn", num_requests=n, request_timeout=3.0,
                  extra=("--clients", "4", "--max-batch", "4", "--batch-window", "30"))
    bad: list[subprocess.Popen] = []
    try:
        serve.wait_ready()
        procs = _clients(serve.hostmap, [(i, repeat) for i in good])
        bad = [script(code, serve.hostmap, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
               for code in (KILLED, MALFORMED, HOARDER)]
        outs = [p.communicate(timeout=600) for p in procs]
        start = time.monotonic()
        rc, out = serve.finish(timeout=180)
        finish_s = time.monotonic() - start
        killed, malformed = (p.communicate(timeout=60) for p in bad[:2])
        bad[2].kill()
        hoarder = bad[2].communicate(timeout=60)
    finally:
        for p in bad + locals().get("procs", []):
            if p.poll() is None:
                p.kill()
        serve.close()
    log = serve.log()
    done = [(p.returncode, o) for p, (o, _) in zip(procs, outs)]
    errs = [_clean(e) for _, e in outs]
    assert [code for code, _ in done] == [0] * len(good), "\n".join(errs)[-4000:]
    _check_results(done, good, repeat)
    assert "KILLED" in killed[0] and bad[0].returncode == -signal.SIGKILL, _clean(killed[1])
    assert "MALFORMED SENT" in malformed[0] and "SHAPE REFUSED" in malformed[0], \
        _clean(malformed[1])[-3000:]
    assert "SENT" in hoarder[0], _clean(hoarder[1])[-3000:]
    assert rc == 0 and f"SERVED {n}" in out and f"served {n} request(s)" in log, log[-4000:]
    assert sum(_batches(log)) == n
    stats = log[log.rindex("stopped serving"):]
    assert "'refused': 4" in stats, stats  # slots 99 and -1, id -3, and 79 without shares
    # the hoarder's two results (and the killed client's, unless the next client in its
    # slot skipped it as stale) were still waiting when serving ended
    assert int(re.search(r"'uncollected': (\d+)", stats).group(1)) in (2, 3), stats
    assert "skipped 1 partial request" in log
    assert finish_s < 60, finish_s  # bounded by --request-timeout once N were answered
    assert not leftover_workers(serve.proc.pid)


@pytest.mark.cluster
def test_sigterm_under_load_stops_everything_within_seconds(tmp_path: Path) -> None:
    """SIGTERM to the owner while two clients keep sending: it stops within seconds,
    the clients get one clear error line per request instead of hanging, and nothing is
    left running."""
    serve = Serve(tmp_path, "securenn", num_requests=1000,
                  extra=("--clients", "2", "--max-batch", "2", "--batch-window", "50"))
    procs: list[subprocess.Popen] = []
    try:
        serve.wait_ready()
        procs = _stdin_clients(serve.hostmap, 2)
        for p in procs:
            p.stdin.write("".join(f"{i % 20}\n" for i in range(60)))
            p.stdin.flush()
        first = [json.loads(p.stdout.readline()) for p in procs for _ in range(2)]
        start = time.monotonic()
        serve.proc.send_signal(signal.SIGTERM)
        serve.proc.wait(timeout=60)
        stop_s = time.monotonic() - start
        tails = [p.communicate(timeout=300)[0].splitlines() for p in procs]  # closes stdin
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        serve.close()
    print(f"owner stopped {stop_s:.1f} s after SIGTERM")
    assert all("logits" in a for a in first), first
    assert stop_s < 15.0
    for lines in tails:  # after the stop, every request came back as an error line
        answers = [json.loads(line) for line in lines]
        errors = [a for a in answers if "error" in a]
        assert errors and all("logits" not in a for a in answers[answers.index(errors[0]):])
        assert "stopped serving" in errors[0]["error"] or "lost the servers" in errors[0]["error"]
    assert not leftover_workers(serve.proc.pid)
