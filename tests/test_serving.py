"""Share, serve, stop: private prediction serving to a separate client process (issue 4).

The cluster tests run the real commands in subprocesses: ``python -m harness serve``
(auto-managed server0-2, the client slots external) and ``python -m harness client``.
Who can read what is tested in ``test_serving_privacy.py``; many clients at once and
faults under load in ``test_serving_load.py`` (which uses the helpers here).
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable
NOISE = re.compile(r"^(I0000|W0000|E0000|WARNING: All log|This could happen)")


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return env


def _clean(text: str) -> str:
    return "\n".join(line for line in text.splitlines() if not NOISE.match(line))


class Serve:
    """``python -m harness serve`` in a subprocess; ready once the hostmap file exists."""

    def __init__(self, tmp: Path, protocol: str = "securenn", num_requests: int = 3,
                 request_timeout: float = 10.0, idle_timeout: float = 240.0,
                 extra: tuple[str, ...] = ()) -> None:
        from harness.net.cluster import exit_with_parent  # noqa: PLC0415

        self.hostmap = tmp / "hostmap.json"
        self.err_path = tmp / "serve.log"
        self._err = open(self.err_path, "w")
        self.proc = subprocess.Popen(
            [PY, "-m", "harness", "-v", "serve", "--protocol", protocol,
             "--num-requests", str(num_requests), "--hostmap-out", str(self.hostmap),
             "--request-timeout", str(request_timeout), "--idle-timeout", str(idle_timeout),
             *extra],
            stdout=subprocess.PIPE, stderr=self._err, stdin=subprocess.DEVNULL, text=True,
            env=_env(), cwd=REPO, preexec_fn=exit_with_parent)

    def log(self) -> str:
        return _clean(self.err_path.read_text(errors="replace"))

    def wait_ready(self, timeout: float = 240.0) -> None:
        deadline = time.monotonic() + timeout
        while not self.hostmap.exists():
            if self.proc.poll() is not None:
                pytest.fail(f"serve exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
            if time.monotonic() > deadline:
                pytest.fail(f"serve not ready after {timeout:.0f} s:\n{self.log()[-3000:]}")
            time.sleep(0.2)

    def finish(self, timeout: float = 90.0) -> tuple[int, str]:
        out, _ = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, out

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._err.close()


def client(hostmap: Path, *images: Any, timeout: float = 180.0) -> subprocess.CompletedProcess:
    args = [a for image in images for a in ("--image", str(image))]
    return subprocess.run([PY, "-m", "harness", "client", "--config", str(hostmap), *args,
                           "--json"], capture_output=True, text=True, env=_env(), cwd=REPO,
                          timeout=timeout)


def script(code: str, hostmap: Path, *args: str, **popen: Any) -> subprocess.Popen:
    """A client-side Python snippet pinned to loopback (as `harness client` pins itself)."""
    from harness.net.cluster import exit_with_parent  # noqa: PLC0415

    return subprocess.Popen([PY, "-m", "harness.net.bind", "127.0.0.1", "--", PY, "-c", code,
                             str(hostmap), *args], text=True, env=_env(), cwd=REPO,
                            preexec_fn=exit_with_parent, **popen)


def leftover_workers(parent_pid: int) -> list[str]:
    """Worker processes started by the serve process ``parent_pid`` that still run."""
    import psutil  # noqa: PLC0415

    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmd = " ".join(proc.info["cmdline"] or [])
        if "harness.net.worker" in cmd and f"--parent-pid {parent_pid}" in cmd:
            found.append(f"{proc.pid}: {cmd}")
    return found


def plaintext_logits(images: np.ndarray) -> np.ndarray:
    from models.conv_mnist import load_model  # noqa: PLC0415

    model = load_model()
    return np.concatenate([model(img[None]).numpy() for img in images])


# -- the check of the issue ------------------------------------------------------------------
@pytest.mark.cluster
def test_serve_three_requests_from_a_separate_client_process(tmp_path: Path) -> None:
    from harness.inference.data import load_mnist  # noqa: PLC0415

    x = load_mnist().x_test[:3]
    as_file = tmp_path / "digit1.npy"
    np.save(as_file, x[1][:, :, 0])  # a (28, 28) float image in [0, 1]
    serve = Serve(tmp_path, "securenn", num_requests=3)
    try:
        serve.wait_ready()
        results = []
        for spec in ("0", as_file, "2"):  # three client processes, one after the other
            done = client(serve.hostmap, spec)
            assert done.returncode == 0, _clean(done.stderr)[-3000:]
            results.append(json.loads(done.stdout)["requests"][0])
        rc, out = serve.finish()
    finally:
        serve.close()
    assert rc == 0, serve.log()[-3000:]
    assert "SERVED 3" in out
    assert "served 3 request(s)" in serve.log()
    private = np.array([r["logits"] for r in results])
    plain = plaintext_logits(x)
    err = float(np.abs(private - plain).max())
    agreement = float(np.mean(private.argmax(-1) == plain.argmax(-1)))
    print(f"securenn serving: max abs err {err:.4f}, argmax agreement {agreement}, "
          f"latencies (ms) {[round(r['latency_ms'], 1) for r in results]}")
    assert agreement == 1.0
    assert err < 0.1  # in-process SecureNN gives ~0.03-0.05 with these weights
    assert [r.get("label") for r in results] == [results[0].get("label"), None,
                                                  results[2].get("label")]
    assert not leftover_workers(serve.proc.pid)


@pytest.mark.cluster
def test_serve_a_model_file_with_its_own_input_shape(tmp_path: Path) -> None:
    """`serve --model FILE`: zoo network A rebuilt with a flat (784,) input, a Dropout and
    an identity BatchNormalization, saved as HDF5; clients send a test-split index (a
    28x28x1 digit, reshaped to the model's 784 values) and a .npy of 784 values."""
    import tf_keras  # noqa: PLC0415

    from harness.inference.data import load_mnist  # noqa: PLC0415
    from models import zoo  # noqa: PLC0415

    source = zoo.load("A")
    dense = [layer for layer in source.layers if type(layer).__name__ == "Dense"]
    flat = tf_keras.Sequential([
        tf_keras.layers.InputLayer(input_shape=(784,)),
        tf_keras.layers.Dense(128, activation="relu"), tf_keras.layers.Dropout(0.3),
        tf_keras.layers.Dense(128), tf_keras.layers.BatchNormalization(),
        tf_keras.layers.ReLU(), tf_keras.layers.Dense(10)])
    mine = [layer for layer in flat.layers if type(layer).__name__ == "Dense"]
    for src, dst in zip(dense, mine):
        dst.set_weights(src.get_weights())
    path = tmp_path / "flat-a.h5"
    flat.save(path)
    x = load_mnist().x_test[:2].reshape(2, 784)
    np.save(tmp_path / "one.npy", x[1])
    serve = Serve(tmp_path, "securenn", num_requests=2, extra=("--model", str(path)))
    try:
        serve.wait_ready()
        done = client(serve.hostmap, "0", tmp_path / "one.npy")
        assert done.returncode == 0, _clean(done.stderr)[-3000:]
        rc, out = serve.finish()
    finally:
        serve.close()
    assert rc == 0, serve.log()[-3000:]
    assert f"model={path}" in out
    private = np.array([r["logits"] for r in json.loads(done.stdout)["requests"]])
    plain = flat.predict(x, verbose=0)
    print(f"served {path.name}: max abs err {np.abs(private - plain).max():.4f}")
    assert (private.argmax(-1) == plain.argmax(-1)).all()
    assert np.abs(private - plain).max() < 0.1
    assert not leftover_workers(serve.proc.pid)


# -- trouble -----------------------------------------------------------------------------
VANISH = r"""
import os, signal, sys
from harness.tfe import activate; activate()
import numpy as np, tensorflow as tf
from tensorflow.python.ops import gen_data_flow_ops
from harness.inference.client import PredictionClient
c = PredictionClient(sys.argv[1])
spec = c.desc.input_queue(c.slot.index, 0)
# 1) dies half-way through sending: shares on server0 only, no commit
with tf.device(c.devices[0]):
    gen_data_flow_ops.queue_enqueue_v2(c._in[0], [tf.constant(7, tf.int64)] + [
        tf.zeros(s, tf.int64) for s in spec.shapes[1:]])
# 2) sends a whole request, then is killed before fetching the result
c.send(np.zeros((28, 28), np.float32))
print("VANISHED", flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


@pytest.mark.cluster
def test_bad_and_vanishing_clients_do_not_stop_serving(tmp_path: Path) -> None:
    from harness.inference.data import load_mnist  # noqa: PLC0415

    nan_image = tmp_path / "nan.npy"
    image = load_mnist().x_test[3][:, :, 0].copy()
    image[5, 5] = np.nan
    np.save(nan_image, image)
    serve = Serve(tmp_path, "securenn", num_requests=3, request_timeout=3.0,
                  extra=("--clients", "1"))
    try:
        serve.wait_ready()
        bad = client(serve.hostmap, nan_image)
        assert bad.returncode == 2, _clean(bad.stderr)
        assert "NaN" in bad.stderr and "error:" in bad.stderr
        vanish = script(VANISH, serve.hostmap, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        out, err = vanish.communicate(timeout=180)
        assert "VANISHED" in out and vanish.returncode == -signal.SIGKILL, _clean(err)[-3000:]
        # the same (only) slot: an orphan entry and a stale result wait for this client
        good = client(serve.hostmap, "3")
        assert good.returncode == 0, _clean(good.stderr)[-3000:]
        logits = np.array(json.loads(good.stdout)["requests"][0]["logits"])
        # idle now (2 of 3 answered): stopping must be prompt
        time.sleep(1.0)
        start = time.monotonic()
        serve.proc.send_signal(signal.SIGTERM)
        rc, out = serve.finish(timeout=60)
        stop_s = time.monotonic() - start
    finally:
        serve.close()
    log = serve.log()
    print(f"stop while idle took {stop_s:.1f} s")
    assert "served 2 request(s)" in log and "SERVED 2" in out, log[-3000:]
    assert rc == 1  # stopped before the 3 asked for
    assert "skipped 1 partial request" in log
    assert stop_s < 15.0
    plain = plaintext_logits(load_mnist().x_test[3:4])[0]
    assert logits.argmax() == plain.argmax() and np.abs(logits - plain).max() < 0.1
    assert not leftover_workers(serve.proc.pid)


@pytest.mark.parametrize("image, message", [
    (np.zeros((28, 27), np.float32), "shape"),
    (np.zeros((2, 28, 27), np.float32), "shape"),
    (np.full((28, 28), 255.0, np.float32), "[0, 1]"),
    (np.full((28, 28), -0.5, np.float32), "[0, 1]"),
    (np.full((28, 28), np.inf, np.float32), "NaN or inf"),
    (np.array([["a"] * 28] * 28), "numeric"),
])
def test_client_refuses_malformed_images_before_sharing(image: np.ndarray, message: str) -> None:
    from harness.inference.client_cli import check_pixels  # noqa: PLC0415
    from harness.inference.private import InputError  # noqa: PLC0415

    with pytest.raises(InputError, match=re.escape(message)):
        check_pixels(image, (28, 28, 1))


def test_client_takes_inputs_in_the_served_models_shape() -> None:
    from harness.inference.client import as_examples  # noqa: PLC0415
    from harness.inference.private import InputError  # noqa: PLC0415

    digit = np.zeros((28, 28), np.float32)
    for example in ((28, 28, 1), (784,)):
        one, single = as_examples(digit, example)
        assert single and one.shape == (1, *example)
        batch, single = as_examples(np.zeros((3, 28, 28, 1)), example)
        assert not single and batch.shape == (3, *example)
    with pytest.raises(InputError, match=r"served model's shape \(784,\)"):
        as_examples(np.zeros((28, 27)), (784,))


# -- slots and batching, without a cluster -----------------------------------------------
def test_slot_names_and_hostmap_checks() -> None:
    from harness.inference.serving_slots import (ServingError, client_slots,  # noqa: PLC0415
                                                 slot_index, slot_names)

    assert slot_names(3) == ("prediction-client", "prediction-client-1", "prediction-client-2")
    assert [slot_index(n) for n in ("prediction-client", "prediction-client-7", "server0",
                                    "prediction-client-0", "prediction-client-x")] == [
        0, 7, None, None, None]
    servers = {f"server{i}": f"127.0.0.1:{5000 + i}" for i in range(3)}
    ok = {**servers, "prediction-client-1": "127.0.0.1:6001", "prediction-client": "127.0.0.1:6000"}
    assert client_slots(ok) == ["prediction-client", "prediction-client-1"]
    with pytest.raises(ServingError, match="without gaps"):
        client_slots({**servers, "prediction-client": "a:1", "prediction-client-2": "a:2"})
    with pytest.raises(ServingError, match="no 'prediction-client' slot"):
        client_slots(servers)
    with pytest.raises(ServingError, match="lacks server2"):
        client_slots({"server0": "a:1", "server1": "a:2", "prediction-client": "a:3"})


def test_a_slot_is_held_by_one_process_and_the_next_waits(tmp_path: Path) -> None:
    from harness.inference.serving_slots import ServingError, claim_slot  # noqa: PLC0415
    from harness.net.cluster import free_ports  # noqa: PLC0415

    ports = free_ports("127.0.0.1", 5)
    hostmap = {**{f"server{i}": f"127.0.0.1:{ports[i]}" for i in range(3)},
               "prediction-client": f"127.0.0.1:{ports[3]}",
               "prediction-client-1": f"127.0.0.1:{ports[4]}"}
    said: list[str] = []
    first = claim_slot(hostmap, "127.0.0.1", 1.0, announce=said.append)
    second = claim_slot(hostmap, "127.0.0.1", 1.0, announce=said.append)
    assert (first.index, second.index) == (0, 1) and not said
    start = time.monotonic()
    with pytest.raises(ServingError, match="stayed in use for 1 s"):
        claim_slot(hostmap, "127.0.0.1", 1.0, announce=said.append)
    assert time.monotonic() - start >= 1.0
    assert len(said) == 1 and "waiting up to" in said[0]  # said once, one line
    first.release()  # a process exiting frees its slot the same way
    assert claim_slot(hostmap, "127.0.0.1", 1.0).index == 0
    second.release()


def test_batch_window_and_plan() -> None:
    from harness.inference.serving_batching import (BatchWindow, compiled_sizes,  # noqa: PLC0415
                                                    plan_batch, step_size)

    w = BatchWindow(max_batch=4, window=0.05)
    assert w.take(1, 0.0) == 1  # nobody seen recently: a lone request does not wait
    w.seen([0, 1, 2, 3, 4], 0.0)  # five clients active: wait for three or the window
    assert w.take(2, 0.01) == 0 and w.take(3, 0.02) == 3
    assert w.take(1, 0.10) == 0 and w.take(1, 0.151) == 1  # the window bounds the wait
    assert w.take(9, 0.2) == 4 and w.take(9, 0.2, wanted=2) == 2
    assert w.take(1, 5.0) == 1  # the others went quiet over a second ago
    w.seen([0, 1], 5.0)         # two groups take turns: {0, 1} then {2, 3}
    w.seen([2, 3], 5.1)
    assert w.take(1, 5.2) == 0 and w.take(2, 5.21) == 2  # half of the four
    w.seen([0, 1], 5.3)
    w.seen([0], 5.4)            # 2 and 3 left; two clients share each batch
    assert w.quorum(5.45) == 2 and w.take(1, 5.5) == 0 and w.take(1, 5.56) == 1
    w.seen([0], 5.6)
    w.seen([0], 5.65)           # 1 left too: a lone client does not wait
    assert w.take(1, 5.7) == 1
    q = BatchWindow(max_batch=8, window=0.3)
    q.seen(range(8), 0.0)
    q.ran(0.04)  # a batch took 40 ms: the owner waits 20 ms after the last new request
    assert q.take(2, 0.05) == 0 and q.take(3, 0.06) == 0 and q.take(3, 0.079) == 0
    assert q.take(3, 0.081) == 3  # no fourth request for 20 ms: run the three
    assert q.take(1, 0.09) == 0 and q.take(1, 0.11) == 1
    plan = plan_batch([5, 6, 7, 8, 0], [1, 0, 1, 9, 0], n_slots=3, size=4)
    assert plan.rows == ((6, 0), (5, 1), (7, 1))  # by slot, commit order within a slot
    assert plan.rids.tolist() == [6, 5, 7, 0] and plan.counts.tolist() == [1, 2, 0]
    assert plan.refused == ((8, 9), (0, 0))  # a slot that is not served, an impossible id
    assert compiled_sizes(8) == (1, 2, 4, 8) and compiled_sizes(1) == (1,)
    assert compiled_sizes(6) == (1, 2, 4, 6)
    assert step_size(1, (1, 8)) == 1 and step_size(2, (1, 8)) == 8 and step_size(3, (1, 2, 4)) == 4
    with pytest.raises(ValueError):
        step_size(9, (1, 8))


def test_serving_load_report_section_plot_and_files(tmp_path: Path) -> None:
    from harness.results import report_serving  # noqa: PLC0415

    def row(batching: bool, clients: int, tp: float, p50: float, p95: float,
            wrong: int = 0) -> dict[str, Any]:
        return {"protocol": "aby3", "batching": batching, "max_batch": 8 if batching else 1,
                "window_ms": 300, "clients": clients, "requests_per_client": 5,
                "throughput_rps": tp, "latency_ms_p50": p50, "latency_ms_p95": p95,
                "latency_ms_p99": p95, "mean_batch": 8.0, "refused": 0, "lost": 0,
                "wrong": wrong, "argmax_agreement": 1.0}

    met = {"serving_load": [row(False, 1, 8.0, 120.0, 130.0), row(True, 8, 25.0, 300, 350)]}
    text = "\n".join(report_serving.section(met))
    assert "x3.12 (target >= 3)" in text and "**met**" in text
    assert "| 8 x 5 x 1 | 25 |" in text  # one round: no range
    several = dict(row(True, 8, 25.0, 300, 350), rounds=3,
                   throughput_rps_rounds=[21.5, 25.0, 30.25])
    assert "| 8 x 5 x 3 | 25 (21.5-30.2) |" in "\n".join(
        report_serving.section({"serving_load": [row(False, 1, 8.0, 120.0, 130.0), several]}))
    missed = {"serving_load": [row(False, 1, 8.0, 120.0, 130.0),
                               row(True, 8, 25.0, 300, 350, wrong=1)]}
    assert "**not met**" in "\n".join(report_serving.section(missed))  # a wrong answer
    assert report_serving.section({"latency": []}) == []
    assert report_serving.render_plot({}) is None
    written = report_serving.write_files(tmp_path, met)
    assert [p.name for p in written] == ["serving_load.png", "serving_load.md"]
    assert written[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert written[1].read_text().startswith("# Serving under load")


def test_client_polls_just_before_results_are_expected() -> None:
    """The client's first poll: halved after a poll that found the result at once (it
    may have slept too long), else just before the last empty poll of this request."""
    from types import SimpleNamespace  # noqa: PLC0415

    from harness.inference.client import PredictionClient  # noqa: PLC0415

    c = SimpleNamespace(_expect=0.2)
    for _ in range(3):
        PredictionClient._learn(c, 10.0, None)
    assert c._expect == pytest.approx(0.025)
    PredictionClient._learn(c, 10.0, 10.05)  # empty until 50 ms after sending
    assert c._expect == pytest.approx(0.045)
