"""Serving under load: C concurrent client processes x R requests against one served model.

Per protocol (SecureNN, ABY3; within ``--protocols``) and batching mode (off:
``--max-batch 1``; on: ``--max-batch 8 --batch-window 300``) one ``python -m harness
serve --clients 8`` runs on the auto-managed loopback cluster, and 8 long-lived client
processes (``python -m harness client --stdin``) connect to it and warm up (their first
request traces the client's functions). A round then writes R image indices to each of
the first C clients at the same moment; each client sends them one after another (a
closed loop) and answers one JSON line per request with the latency it measured itself.

Each C runs several rounds (5, ``--quick`` 3; ``HARNESS_LOAD_ROUNDS``), each after 2 s
of idle servers. One row of the ``serving_load`` table per C (group
``serving-load-<protocol>``): throughput (correct answers / wall time, the median round,
with every round's figure kept), client latency p50/p95/p99 over the answers of all
rounds, and requests refused (an error came back), lost (no answer) and wrong (argmax
differs from the plaintext Keras logits of the request's own image). ``--quick`` runs
C = 1, 4 with R = 2; the full run C = 1, 4, 8 with R = 5.

The table and the plot (throughput and p95 against C) are written beside the run's
report as ``serving_load.md`` / ``serving_load.png`` (``harness.results.report_serving``).
"""
from __future__ import annotations

import json
import os
import re
import selectors
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest

from harness.inference.data import load_mnist
from harness.inference.private import plaintext_predictor
from harness.net.cluster import exit_with_parent
from models.conv_mnist import load_model

REPO = Path(__file__).resolve().parents[1]
LOAD_PROTOCOLS = ("securenn", "aby3")
MAX_CLIENTS = 8
# batching "on": the owner's --max-batch and --batch-window (override for experiments)
MAX_BATCH = int(os.environ.get("HARNESS_LOAD_MAX_BATCH", "8"))
WINDOW_MS = float(os.environ.get("HARNESS_LOAD_WINDOW_MS", "300"))
N_IMAGES = 64
CLIENT_PARTS = ("send_ms", "ready_ms", "receive_ms", "polls", "cpu_ms")  # per answer
IDLE_BEFORE_ROUND = 2.0  # s; more than the owner's batching memory (BatchWindow.recent)
BATCH_LINE = re.compile(r"answered (\d+) request\(s\) \(batch (\d+), slots [^)]*\) in ([0-9.]+) "
                        r"ms; before it ([0-9.]+) ms idle, ([0-9.]+) ms gathering")


def _session(config: pytest.Config) -> Any:
    from harness.pytest_plugin import session_of  # noqa: PLC0415

    return session_of(config)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    session = _session(metafunc.config)
    if "load_protocol" in metafunc.fixturenames:
        chosen = [p for p in LOAD_PROTOCOLS if p in session.protocols]
        metafunc.parametrize("load_protocol", chosen, scope="module",
                             ids=[f"serving-load-{p}" for p in chosen])  # -k serving-load
    if "batching" in metafunc.fixturenames:
        metafunc.parametrize("batching", ["off", "on"], scope="module",
                             ids=["batching-off", "batching-on"])
    if "clients" in metafunc.fixturenames:
        counts = (1, 4) if session.quick else (1, 4, MAX_CLIENTS)
        metafunc.parametrize("clients", counts, ids=[f"C{c}" for c in counts])


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return env


def _tail(path: Path, lines: int = 25) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def _stop(proc: subprocess.Popen, grace: float = 60.0) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class LoadDeployment:
    """One serving owner (8 client slots) and ``n`` connected, warmed-up client processes."""

    def __init__(self, protocol: str, batching: bool, tmp: Path, n: int) -> None:
        self.protocol, self.batching = protocol, batching
        self.max_batch = MAX_BATCH if batching else 1
        self.hostmap, self.serve_log = tmp / "hostmap.json", tmp / "serve.log"
        self.clients: list[subprocess.Popen] = []
        with open(self.serve_log, "w") as err:
            self.serve = subprocess.Popen(
                [sys.executable, "-m", "harness", "-v", "serve", "--protocol", protocol,
                 "--clients", str(MAX_CLIENTS), "--max-batch", str(self.max_batch),
                 "--batch-window", str(WINDOW_MS), "--hostmap-out", str(self.hostmap),
                 "--idle-timeout", "900"],
                stdout=subprocess.DEVNULL, stderr=err, stdin=subprocess.DEVNULL, env=_env(),
                cwd=REPO, preexec_fn=exit_with_parent)
        deadline = time.monotonic() + 600
        while not self.hostmap.exists():
            if self.serve.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"serve did not come up:\n{_tail(self.serve_log)}")
            time.sleep(0.5)
        self.logs = [tmp / f"client{c}.log" for c in range(n)]
        for log in self.logs:
            with open(log, "w") as err:
                self.clients.append(subprocess.Popen(
                    [sys.executable, "-m", "harness", "client", "--config", str(self.hostmap),
                     "--stdin", "--timeout", "120", "--wait", "600"],
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True,
                    bufsize=1, env=_env(), cwd=REPO, preexec_fn=exit_with_parent))
        self.ready = [self._read_one(c, 900) for c in range(n)]
        for c in range(n):  # the client's first request traces its functions: not measured
            self.clients[c].stdin.write("0\n")
            self.clients[c].stdin.flush()
        warm = [self._read_one(c, 600) for c in range(n)]
        bad = [w for w in warm if "error" in w]
        assert not bad, bad

    def _read_one(self, c: int, timeout: float) -> dict[str, Any]:
        with selectors.DefaultSelector() as sel:
            sel.register(self.clients[c].stdout, selectors.EVENT_READ)
            if not sel.select(timeout):
                raise TimeoutError(f"client {c} silent for {timeout:.0f} s:\n"
                                   f"{_tail(self.logs[c])}")
        line = self.clients[c].stdout.readline()
        if not line:
            raise RuntimeError(f"client {c} exited:\n{_tail(self.logs[c])}")
        return json.loads(line)

    def round(self, c_count: int, per_client: int, first_image: int,
              timeout: float) -> tuple[float, list[list[tuple[int, dict[str, Any] | None]]]]:
        """All of the first ``c_count`` clients send ``per_client`` requests at once;
        returns the wall time and, per client, (image index, answer or None if lost)."""
        sent = [[(first_image + c * per_client + r) % N_IMAGES for r in range(per_client)]
                for c in range(c_count)]
        got: list[list[dict[str, Any]]] = [[] for _ in range(c_count)]
        sel = selectors.DefaultSelector()
        for c in range(c_count):
            sel.register(self.clients[c].stdout, selectors.EVENT_READ, c)
        start = time.perf_counter()
        for c in range(c_count):
            self.clients[c].stdin.write("".join(f"{i}\n" for i in sent[c]))
            self.clients[c].stdin.flush()
        deadline, last = time.monotonic() + timeout, start
        open_ = set(range(c_count))
        while open_ and time.monotonic() < deadline:
            for key, _ in sel.select(timeout=1.0):
                c = key.data
                line = self.clients[c].stdout.readline()
                if not line:  # the client died: the rest of its requests are lost
                    sel.unregister(key.fileobj)
                    open_.discard(c)
                    continue
                got[c].append(json.loads(line))
                last = time.perf_counter()
                if len(got[c]) == per_client:
                    sel.unregister(key.fileobj)
                    open_.discard(c)
        sel.close()
        answers = [[(i, got[c][r] if r < len(got[c]) else None) for r, i in enumerate(sent[c])]
                   for c in range(c_count)]
        return last - start, answers

    def cpu_seconds(self) -> dict[str, float]:
        """CPU time used so far: the serving side (owner and workers), the owner alone,
        and the clients."""
        import psutil  # noqa: PLC0415

        def total(procs: list[Any]) -> float:
            found = 0.0
            for proc in procs:
                try:
                    t = proc.cpu_times()
                    found += t.user + t.system
                except psutil.Error:
                    pass
            return found

        owner = psutil.Process(self.serve.pid)
        return {"serving": total([owner, *owner.children(recursive=True)]),
                "owner": total([owner]),
                "clients": total([psutil.Process(p.pid) for p in self.clients])}

    def batches_since(self, offset: int) -> tuple[list[tuple[int, float, float, float]], int]:
        """The owner's batches logged after ``offset``: (rows, step ms, idle ms before it,
        gathering ms), and the log's length now."""
        text = self.serve_log.read_text(errors="replace")
        found = [(int(m.group(1)), float(m.group(3)), float(m.group(4)), float(m.group(5)))
                 for m in BATCH_LINE.finditer(text[offset:])]
        return found, len(text)

    def close(self) -> None:
        for proc in self.clients:
            if proc.poll() is None:
                try:
                    proc.stdin.close()
                except OSError:
                    pass
        for proc in self.clients:
            _stop(proc, 30)
        _stop(self.serve)


@pytest.fixture(scope="module")
def plaintext() -> tuple[np.ndarray, np.ndarray]:
    split = load_mnist()
    predict = plaintext_predictor(load_model(batch_size=1))
    images = split.x_test[:N_IMAGES]
    return np.concatenate([predict(images[i:i + 1]) for i in range(N_IMAGES)]), images


@pytest.fixture(scope="module")
def load_files(pytestconfig: pytest.Config, recorder: Any) -> Iterator[None]:
    """At the end of the module: the table and the plot beside the run's report."""
    yield
    staging = getattr(_session(pytestconfig), "staging", None)
    if staging is not None and recorder.serving_load:
        from harness.results.report_serving import write_files  # noqa: PLC0415
        from harness.results.store import environment  # noqa: PLC0415

        write_files(staging, {"environment": environment(),
                              "serving_load": recorder.serving_load})


@pytest.fixture(scope="module")
def load_deployment(load_protocol: str, batching: str, options: Any,
               tmp_path_factory: pytest.TempPathFactory) -> Iterator[LoadDeployment]:
    n = max((1, 4) if options.quick else (1, 4, MAX_CLIENTS))
    tmp = tmp_path_factory.mktemp(f"load-{load_protocol}-{batching}")
    running = None
    try:
        running = LoadDeployment(load_protocol, batching == "on", tmp, n)
        yield running
    finally:
        if running is not None:
            running.close()
        elif (tmp / "serve.log").exists():
            print(_tail(tmp / "serve.log"))
    import psutil  # noqa: PLC0415

    left = [p.pid for p in psutil.process_iter(["cmdline"])
            if running is not None and
            f"--parent-pid {running.serve.pid}" in " ".join(p.info["cmdline"] or [])]
    assert not left, f"workers left behind by serve: {left}"


def _percentile(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


def _rounds(options: Any) -> int:
    """Rounds per row: one round of 40 requests is too few on a shared machine (its
    throughput moved by 1.5x between rounds of the same deployment)."""
    raw = os.environ.get("HARNESS_LOAD_ROUNDS", "3" if options.quick else "5")
    if not raw.strip().isdigit() or int(raw) < 1:
        raise pytest.UsageError(f"HARNESS_LOAD_ROUNDS must be a whole number >= 1, got {raw!r}")
    return int(raw)


def _score(answers: list[list[tuple[int, dict[str, Any] | None]]],
           plain: np.ndarray) -> dict[str, Any]:
    """One round's answers checked against the plaintext logits of their own images."""
    out: dict[str, Any] = {"refused": 0, "lost": 0, "wrong": 0, "lat": [], "errs": [],
                           "agree": [], "parts": {k: [] for k in CLIENT_PARTS}}
    for per in answers:
        for index, answer in per:
            if answer is None:
                out["lost"] += 1
            elif "error" in answer:
                out["refused" if answer.get("refused") else "lost"] += 1
            else:
                logits = np.asarray(answer["logits"])
                ok = int(logits.argmax()) == int(plain[index].argmax())
                out["wrong"] += 0 if ok else 1
                out["agree"].append(ok)
                out["errs"].append(float(np.abs(logits - plain[index]).max()))
                out["lat"].append(float(answer["latency_ms"]))
                for key, values in out["parts"].items():
                    if key in answer:
                        values.append(float(answer[key]))
    return out


def test_serving_load(benchmark, load_deployment, load_protocol, batching, clients, options,
                      recorder, plaintext, load_files):
    """C clients x R requests each at once, in several rounds; every answer checked
    against plaintext."""
    benchmark.group = f"serving-load-{load_protocol}"
    per_client = 2 if options.quick else 5
    plain, _images = plaintext
    offset = load_deployment.batches_since(0)[1]
    cpu_before = load_deployment.cpu_seconds()
    done: list[tuple[float, Any]] = []  # per round: (wall s, answers)

    def idle() -> None:  # untimed: start each round from an idle server, no batching history
        time.sleep(IDLE_BEFORE_ROUND)

    def one_round() -> None:
        first = (clients * 7 + len(done) * clients * per_client) % N_IMAGES
        done.append(load_deployment.round(clients, per_client, first,
                                          timeout=120.0 + 30.0 * per_client))

    benchmark.pedantic(one_round, setup=idle, rounds=_rounds(options), iterations=1,
                       warmup_rounds=0)
    batches, _ = load_deployment.batches_since(offset)
    cpu = {k: v - cpu_before[k] for k, v in load_deployment.cpu_seconds().items()}
    scored = [_score(answers, plain) for _, answers in done]

    def pooled(key: str, part: str | None = None) -> list[Any]:  # over all rounds
        return [x for s in scored for x in (s[key] if part is None else s[key][part])]

    lat, errs, agree = pooled("lat"), pooled("errs"), pooled("agree")
    refused, lost, wrong = (sum(s[k] for s in scored) for k in ("refused", "lost", "wrong"))
    # per round: correct answers over its wall time; the row quotes the median round
    rates = [(len(s["lat"]) - s["wrong"]) / wall for (wall, _), s in zip(done, scored)
             if wall > 0]
    total = clients * per_client * len(done)
    row = {"protocol": load_protocol, "batching": batching == "on",
           "max_batch": load_deployment.max_batch, "window_ms": WINDOW_MS, "clients": clients,
           "requests_per_client": per_client, "rounds": len(done), "requests": total,
           "answered": len(lat), "refused": refused, "lost": lost, "wrong": wrong,
           "throughput_rps": float(np.median(rates)) if rates else None,
           "throughput_rps_rounds": rates,
           "wall_s": sum(wall for wall, _ in done), "latency_ms_p50": _percentile(lat, 50),
           "latency_ms_p95": _percentile(lat, 95), "latency_ms_p99": _percentile(lat, 99),
           "latency_ms_mean": float(np.mean(lat)) if lat else None,
           "argmax_agreement": float(np.mean(agree)) if agree else None,
           "max_abs_err": max(errs) if errs else None,
           "batches": len(batches),
           "mean_batch": float(np.mean([b[0] for b in batches])) if batches else None,
           # the owner's time per batch (medians): the private prediction itself, idle
           # before its first request arrived (clients fetching, unmasking, sending the
           # next), gathering (the batch window)
           **{f"owner_{k}_ms_median": _percentile([b[i] for b in batches], 50)
              for i, k in ((1, "step"), (2, "idle"), (3, "gather"))},
           # where a client's time goes (medians): sharing and sending, until the result is
           # in its queues, fetching and unmasking it
           **{f"client_{k}_median": _percentile(pooled("parts", k), 50) for k in CLIENT_PARTS},
           # CPU seconds per request (2 cores shared by everything)
           "cpu_s_serving_per_request": cpu["serving"] / total,
           "cpu_s_owner_per_request": cpu["owner"] / total,
           "cpu_s_clients_per_request": cpu["clients"] / total}
    recorder.serving_load.append(row)
    benchmark.extra_info.update(kind="serving-load", **row)
    print(json.dumps(row))
    assert refused == 0 and lost == 0 and wrong == 0, row
