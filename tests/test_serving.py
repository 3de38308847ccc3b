"""Share, serve, stop: private prediction serving to a separate client process (issue 4).

The cluster tests run the real commands in subprocesses: ``python -m harness serve``
(auto-managed server0-2, the client's slot external) and ``python -m harness client``.
``test_who_sees_what`` runs the same serving code in one process whose CPU is split
into five logical devices (owner, server0-2, client) and reads the partitioned graphs
TensorFlow actually executed: which tensors cross from which party to which, and what
a curious server or result-collector holds.

This file doubles as that one-process script: ``python tests/test_serving.py
placement securenn`` prints its findings as JSON.
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
                 request_timeout: float = 10.0, idle_timeout: float = 240.0) -> None:
        self.hostmap = tmp / "hostmap.json"
        from harness.net.cluster import exit_with_parent  # noqa: PLC0415  (this file also runs as a script)

        self.err_path = tmp / "serve.log"
        self._err = open(self.err_path, "w")
        self.proc = subprocess.Popen(
            [PY, "-m", "harness", "-v", "serve", "--protocol", protocol,
             "--num-requests", str(num_requests), "--hostmap-out", str(self.hostmap),
             "--request-timeout", str(request_timeout), "--idle-timeout", str(idle_timeout)],
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


# -- trouble -----------------------------------------------------------------------------
VANISH = r"""
import os, sys
from harness.tfe import activate; activate()
import numpy as np, tensorflow as tf
from tensorflow.python.ops import gen_data_flow_ops
from harness.inference.client import PredictionClient
c = PredictionClient(sys.argv[1])
w = c.wire
# 1) dies half-way through sending: shares on server0 only, no commit
with tf.device(c.devices[0]):
    gen_data_flow_ops.queue_enqueue_v2(c._in[0], [tf.constant(7, tf.int64),
        tf.zeros(w.input_shape, tf.int64), tf.zeros(w.output_shape, tf.int64)])
# 2) sends a whole request, then dies before fetching the result
c.send(np.zeros((28, 28), np.float32))
print("VANISHED", flush=True)
os._exit(0)
"""


@pytest.mark.cluster
def test_bad_and_vanishing_clients_do_not_stop_serving(tmp_path: Path) -> None:
    from harness.inference.data import load_mnist  # noqa: PLC0415

    nan_image = tmp_path / "nan.npy"
    image = load_mnist().x_test[3][:, :, 0].copy()
    image[5, 5] = np.nan
    np.save(nan_image, image)
    serve = Serve(tmp_path, "securenn", num_requests=2, request_timeout=3.0)
    try:
        serve.wait_ready()
        bad = client(serve.hostmap, nan_image)
        assert bad.returncode == 2, _clean(bad.stderr)
        assert "NaN" in bad.stderr and "error:" in bad.stderr
        vanish = subprocess.run(
            [PY, "-m", "harness.net.bind", "127.0.0.1", "--", PY, "-c", VANISH, str(serve.hostmap)],
            capture_output=True, text=True, env=_env(), cwd=REPO, timeout=180)
        assert "VANISHED" in vanish.stdout, _clean(vanish.stderr)[-3000:]
        good = client(serve.hostmap, "3")
        assert good.returncode == 0, _clean(good.stderr)[-3000:]
        logits = np.array(json.loads(good.stdout)["requests"][0]["logits"])
        # idle now (1 of 2 served): stopping must be prompt
        time.sleep(1.0)
        start = time.monotonic()
        serve.proc.send_signal(signal.SIGTERM)
        rc, out = serve.finish(timeout=60)
        stop_s = time.monotonic() - start
    finally:
        serve.close()
    log = serve.log()
    print(f"stop while idle took {stop_s:.1f} s")
    assert "served 1 request(s)" in log and "SERVED 1" in out, log[-3000:]
    assert rc == 1  # stopped before the 2 asked for
    assert "did not collect its result" in log
    assert "skipped 1 partial request" in log
    assert stop_s < 15.0
    plain = plaintext_logits(load_mnist().x_test[3:4])[0]
    assert logits.argmax() == plain.argmax() and np.abs(logits - plain).max() < 0.1
    assert not leftover_workers(serve.proc.pid)


@pytest.mark.parametrize("image, message", [
    (np.zeros((28, 27), np.float32), "shape"),
    (np.zeros((2, 28, 28), np.float32), "shape"),
    (np.full((28, 28), 255.0, np.float32), "[0, 1]"),
    (np.full((28, 28), -0.5, np.float32), "[0, 1]"),
    (np.full((28, 28), np.inf, np.float32), "NaN or inf"),
    (np.array([["a"] * 28] * 28), "numeric"),
])
def test_client_refuses_malformed_images_before_sharing(image: np.ndarray, message: str) -> None:
    from harness.inference.client import check_pixels  # noqa: PLC0415
    from harness.inference.private import InputError  # noqa: PLC0415

    with pytest.raises(InputError, match=re.escape(message)):
        check_pixels(image)


# -- who can read what ---------------------------------------------------------------------
@pytest.mark.parametrize("protocol", ["securenn", "aby3"])
def test_who_sees_what(protocol: str) -> None:
    done = subprocess.run([PY, __file__, "placement", protocol], capture_output=True,
                          text=True, env=_env(), cwd=REPO, timeout=600)
    assert done.returncode == 0, _clean(done.stderr)[-4000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    print(json.dumps(report, indent=1))
    client, owner = "prediction-client", "owner"
    servers = ("server0", "server1", "server2")

    def edges(fn: str, src: str | None = None, dst: str | None = None) -> list[dict]:
        return [e for e in report["transfers"][fn]
                if (src is None or e["from"] == src) and (dst is None or e["to"] == dst)]

    # the client's send: only shares, seeds of shares, output masks and the request id
    # leave the client; nothing about the image in the clear, nothing for the owner
    sent = edges("send", src=client)
    assert sent and {e["to"] for e in sent} <= set(servers)
    for e in sent:
        assert re.match(r"(private-input/share/|output-mask/|rid$)", e["tensor"]), e
        assert "float" not in e["dtype"] and "encode" not in e["tensor"], e
    assert not [e for e in report["transfers"]["send"] if owner in (e["from"], e["to"])]
    # the owner's step: never touches the client; gets back loop control and skip counts
    assert not [e for e in report["transfers"]["step"] if client in (e["from"], e["to"])]
    to_owner = edges("step", dst=owner)
    assert to_owner
    for e in to_owner:
        assert re.match(r"while(_\d+)?/(LoopCond|exit)", e["tensor"]), e
    for e in edges("step", src=owner):  # the request id, and tf-encrypted's sharing of a
        assert re.match(r"(rid$|Func/while|.*/edge_cases/share/)", e["tensor"]), e  # constant
    # the client's receive: one (id, masked output share) per output server, nothing out
    got = edges("receive", dst=client)
    outputs = ["server0", "server1"] + (["server2"] if protocol == "aby3" else [])
    assert sorted(e["from"] for e in got) == sorted(outputs * 2)
    assert all(e["dtype"] == "int64" for e in got)
    assert not edges("receive", src=client)
    # values: a server's input share is uniform noise; the shares do reconstruct the image
    shares = report["input_shares"]
    assert shares["reconstructs_encoded_image"]
    assert 0.08 < shares["server0_fraction_below_2^60"] < 0.17  # uniform int64: 1/8
    assert shares["encoded_fraction_below_2^60"] == 1.0
    # results: whoever collects all output shares without the client's mask sees noise
    assert report["collected_without_mask_max_abs"] > 1e6
    assert report["client_logits_max_abs_err"] < 0.1
    assert report["client_argmax_equal"]


def _placement_main(protocol_name: str) -> dict[str, Any]:
    """Run owner, servers and client of one request on five logical CPU devices."""
    os.environ["TF_USE_LEGACY_KERAS"] = "1"
    import tensorflow as tf  # noqa: PLC0415

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 5)
    from harness.tfe import activate; activate()
    import tf_encrypted as tfe  # noqa: PLC0415
    from tensorflow.python.eager import context  # noqa: PLC0415
    from tensorflow.python.ops import gen_data_flow_ops as q  # noqa: PLC0415

    from harness.inference import client as cl  # noqa: PLC0415
    from harness.inference import serving  # noqa: PLC0415
    from harness.inference.data import load_mnist  # noqa: PLC0415
    from harness.inference.private import CLIENT, PLAYERS, PROTOCOLS, SERVERS  # noqa: PLC0415
    from models.conv_mnist import load_model  # noqa: PLC0415

    def dev(k: int) -> str:
        return f"/job:localhost/replica:0/task:0/device:CPU:{k}"

    config = tfe.LocalConfig(list(PLAYERS))
    for k, player in enumerate(config.players):  # server0-2 -> CPU:1-3, client -> CPU:4
        player.device_name = dev(k + 1)
    roles = {dev(0): "owner", **{p.device_name: p.name for p in config.players}}
    tfe.set_config(config)
    protocol = PROTOCOLS[protocol_name]()
    tfe.set_protocol(protocol)
    model = load_model()
    with tf.device(dev(0)):
        shared = tfe.keras.models.clone_model(model)
    wire = serving.Wire(protocol_name, "emulated", (1, 28, 28, 1), (1, 10))
    devices = [config.get_player(s).device_name for s in SERVERS]
    me = config.get_player(CLIENT).device_name
    step = serving.build_step(protocol, shared, wire, devices)
    send, receive = cl.build_functions(protocol, wire, devices, me)
    handles = {}
    for i in wire.layout.input_servers:
        with tf.device(devices[i]):
            handles["in", i] = serving.queue_handle(wire.input_queue(i), wire.capacity)
    for i in wire.layout.output_servers:
        with tf.device(devices[i]):
            handles["out", i] = serving.queue_handle(wire.output_queue(i), wire.capacity)
    with tf.device(devices[0]):
        handles["commit"] = serving.queue_handle(wire.commit_queue(), wire.capacity)
    ctx = context.context()

    def role(device: str) -> str:
        tail = device.rsplit("/device:", 1)[-1]
        return next((r for d, r in roles.items() if d.endswith(tail)), device)

    def traced(fn: Any, *args: Any) -> tuple[Any, list[dict[str, str]]]:
        ctx.enable_run_metadata()
        out = fn(*args)
        meta = ctx.export_run_metadata()
        ctx.disable_run_metadata()
        found = []
        for graphs in meta.function_graphs:
            for part in graphs.partition_graphs:
                nodes = {n.name: n for n in part.node}
                for n in part.node:
                    if n.op not in ("_Send", "_HostSend"):
                        continue
                    src = nodes.get(n.input[0].split(":")[0].lstrip("^"))
                    if src is not None and src.op == "Const" and any(
                            i.startswith("^") for i in src.input):
                        continue  # a control edge (a dummy constant), no data
                    a, b = role(n.attr["send_device"].s.decode()), role(
                        n.attr["recv_device"].s.decode())
                    if a != b:
                        found.append({"from": a, "to": b,
                                      "dtype": tf.dtypes.as_dtype(n.attr["T"].type).name,
                                      "tensor": re.sub(r"^edge_\d+_", "",
                                                       n.attr["tensor_name"].s.decode())})
        return out, found

    x = load_mnist().x_test[:1]
    plain = model(x).numpy()
    report: dict[str, Any] = {"protocol": protocol_name, "transfers": {}}

    def ring(values: Any) -> np.ndarray:
        return np.asarray(values, dtype=np.int64)

    # request 1: look at what the servers got (a curious server0, and both servers together).
    # TensorFlow reports partitioned graphs when a function is first run: record then.
    with tf.device(me):
        _, report["transfers"]["send"] = traced(send, tf.constant(x), tf.constant(1, tf.int64))
    by_index: dict[int, np.ndarray] = {}  # additive share index -> value, as servers hold them
    views = {}
    for i in wire.layout.input_servers:
        with tf.device(devices[i]):
            got = q.queue_dequeue_v2(handles["in", i], [tf.int64] * len(wire.input_queue(i)[1]))
        views[i] = [ring(t.numpy()) for t in got[1:1 + len(wire.layout.held[i])]]
        for index, value in zip(wire.layout.held[i], views[i]):
            by_index.setdefault(index, value)
    with tf.device(devices[0]):
        q.queue_dequeue_v2(handles["commit"], [tf.int64])
    encoded = ring(x.astype(np.float64) * protocol.fixedpoint_config.scaling_factor)
    with np.errstate(over="ignore"):
        rebuilt = np.sum([by_index[k] for k in range(wire.layout.n_shares)], axis=0,
                         dtype=np.int64)
    report["input_shares"] = {
        "reconstructs_encoded_image": bool(np.all(np.abs(rebuilt - encoded) <= 1)),
        "server0_fraction_below_2^60": float(np.mean(np.abs(np.stack(views[0])) < 2**60)),
        "encoded_fraction_below_2^60": float(np.mean(np.abs(encoded) < 2**60)),
    }
    # request 2: the whole round trip, with the transfers of each function recorded
    with tf.device(me):
        mask_sum = send(tf.constant(x), tf.constant(2, tf.int64))
    with tf.device(dev(0)):
        _, report["transfers"]["step"] = traced(step, tf.constant(2, tf.int64))
    with tf.device(me):
        (ids, logits), report["transfers"]["receive"] = traced(receive, mask_sum)
    report["client_logits_max_abs_err"] = float(np.abs(logits.numpy() - plain).max())
    report["client_argmax_equal"] = bool(logits.numpy().argmax() == plain.argmax())
    # request 3: someone other than the client collects all output shares
    with tf.device(me):
        send(tf.constant(x), tf.constant(3, tf.int64))
    with tf.device(dev(0)):
        step(tf.constant(3, tf.int64))
    outs = []
    for i in wire.layout.output_servers:
        with tf.device(devices[i]):
            outs.append(ring(q.queue_dequeue_v2(handles["out", i], [tf.int64] * 2)[1].numpy()))
    with np.errstate(over="ignore"):
        total = np.sum(outs, axis=0, dtype=np.int64)
    seen = total / protocol.fixedpoint_config.scaling_factor
    report["collected_without_mask_max_abs"] = float(np.abs(seen - plain).max())
    return report


if __name__ == "__main__":
    if len(sys.argv) >= 2 and sys.argv[1] == "placement":
        print(json.dumps(_placement_main(sys.argv[2] if len(sys.argv) > 2 else "securenn")))
    else:
        print("usage: python tests/test_serving.py placement [securenn|aby3]", file=sys.stderr)
        raise SystemExit(2)
