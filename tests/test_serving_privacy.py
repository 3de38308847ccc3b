"""Who can read what when two clients are served in one batch (issues 4 and 14).

The serving code runs in one process whose CPU is split into six logical devices: the
model owner, server0-2, client A (slot 0) and client B (slot 1). Both clients send a
request, the owner answers both in one batch of 2, and each client collects its own
result. The test reads the partitioned graphs TensorFlow actually executed - which
tensors cross from which party to which - and the values a curious party holds: a
server's input shares, everything in a slot's output queue without the client's mask,
and client B reading client A's result queue.

This file doubles as that one-process script: ``python tests/test_serving_privacy.py
securenn`` prints its findings as JSON.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SERVERS = ("server0", "server1", "server2")
A, B, OWNER = "client-A", "client-B", "owner"


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return env


@pytest.mark.parametrize("protocol", ["securenn", "aby3"])
def test_who_sees_what(protocol: str) -> None:
    done = subprocess.run([sys.executable, __file__, protocol], capture_output=True,
                          text=True, env=_env(), cwd=REPO, timeout=900)
    assert done.returncode == 0, done.stderr[-4000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    print(json.dumps(report, indent=1))
    parties = set(SERVERS) | {A, B, OWNER}

    def edges(fn: str, src: str | None = None, dst: str | None = None) -> list[dict]:
        return [e for e in report["transfers"][fn]
                if (src is None or e["from"] == src) and (dst is None or e["to"] == dst)]

    for fn in report["transfers"]:  # every edge was attributed to a known party
        assert {e["from"] for e in edges(fn)} | {e["to"] for e in edges(fn)} <= parties, fn
    # a client's send: only shares, seeds of shares, output masks, the request id and
    # its slot leave the client, only to the servers; nothing about the image in the clear
    for fn, me in (("send_A", A), ("send_B", B)):
        sent = edges(fn, src=me)
        assert sent and {e["to"] for e in sent} <= set(SERVERS), fn
        for e in sent:
            assert re.match(r"(private-input/share/|output-mask/|rid$)", e["tensor"]), e
            assert "float" not in e["dtype"] and "encode" not in e["tensor"], e
        others = {OWNER, A, B} - {me}
        assert not [e for e in edges(fn) if e["from"] in others or e["to"] in others], fn
    # the owner's batch step: never touches a client; sends ids and counts, gets back
    # per-row flags and counters (and loop control), never a share
    step = edges("step")
    assert step and not [e for e in step if {e["from"], e["to"]} & {A, B}]
    to_owner = edges("step", dst=OWNER)
    assert to_owner
    for e in to_owner:  # counters (loop exits) and found flags (ids > 0), never a share
        assert re.match(r"(while(_\d+)?/(exit|LoopCond)|Greater(_\d+)?$)", e["tensor"]), e
        assert e["dtype"] in ("bool", "int64", "int32"), e
    for e in edges("step", src=OWNER):
        assert re.match(r"(rids$|counts$|.*while.*|.*/edge_cases/share/)", e["tensor"]), e
    # each client's receive: one (id, masked output share) per output server, nothing out
    outputs = ["server0", "server1"] + (["server2"] if protocol == "aby3" else [])
    for fn, me in (("receive_A", A), ("receive_B", B)):
        got = edges(fn, dst=me)
        assert sorted(e["from"] for e in got) == sorted(outputs * 2), fn
        assert all(e["dtype"] == "int64" for e in got), fn
        assert not edges(fn, src=me), fn
        assert not [e for e in edges(fn) if {e["from"], e["to"]} & ({A, B, OWNER} - {me})]
    # values: a server's input share is uniform noise; the shares do reconstruct the image
    shares = report["input_shares"]
    assert shares["reconstructs_encoded_image"]
    assert 0.08 < shares["server0_fraction_below_2^60"] < 0.17  # uniform int64: 1/8
    assert shares["encoded_fraction_below_2^60"] == 1.0
    # both clients got their own, correct logits from the one batch
    for me in ("A", "B"):
        assert report[f"logits_{me}_max_abs_err"] < 0.1
        assert report[f"argmax_{me}_equal"]
    # results: whoever collects a slot's shares without its client's mask sees noise,
    # and so does client B unmasking A's shares with its own mask
    assert report["collected_without_mask_max_abs"] > 1e6
    assert report["b_unmasks_a_max_abs"] > 1e6


def _placement_main(protocol_name: str) -> dict[str, Any]:
    """Owner, servers and two clients of one batch on six logical CPU devices."""
    os.environ["TF_USE_LEGACY_KERAS"] = "1"
    import tensorflow as tf  # noqa: PLC0415

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 6)
    from harness.tfe import activate  # noqa: PLC0415

    tfe = activate()
    from tensorflow.python.eager import context  # noqa: PLC0415
    from tensorflow.python.ops import gen_data_flow_ops as q  # noqa: PLC0415
    from tf_encrypted.player import Player  # noqa: PLC0415

    from harness.inference import client as cl  # noqa: PLC0415
    from harness.inference.data import load_mnist  # noqa: PLC0415
    from harness.inference.private import CLIENT, PLAYERS, PROTOCOLS  # noqa: PLC0415
    from harness.inference.serving_layout import ServingDescriptor  # noqa: PLC0415
    from harness.inference.serving_queues import handle_on  # noqa: PLC0415
    from harness.inference.serving_step import build_step  # noqa: PLC0415
    from models.conv_mnist import load_model  # noqa: PLC0415

    def dev(k: int) -> str:
        return f"/job:localhost/replica:0/task:0/device:CPU:{k}"

    config = tfe.LocalConfig(list(PLAYERS))
    for k, player in enumerate(config.players):  # server0-2 -> CPU:1-3, client A -> CPU:4
        player.device_name = dev(k + 1)
    player_b = Player("prediction-client-1", len(PLAYERS), dev(5))
    roles = {dev(0): OWNER, dev(1): "server0", dev(2): "server1", dev(3): "server2",
             dev(4): A, dev(5): B}
    tfe.set_config(config)
    protocol = PROTOCOLS[protocol_name]()
    tfe.set_protocol(protocol)
    model = load_model()
    with tf.device(dev(0)):
        shared = tfe.keras.models.clone_model(model)
    desc = ServingDescriptor(protocol_name, "emulated", slots=2, max_batch=2)
    devices = [dev(1), dev(2), dev(3)]
    for i, spec in desc.all_queues():
        handle_on(devices[i], spec)
    step = build_step(protocol, shared, desc, devices, 2)
    send_a, receive_a = cl.build_functions(protocol, desc, devices, dev(4), 0, CLIENT)
    send_b, receive_b = cl.build_functions(protocol, desc, devices, dev(5), 1, player_b)
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
                    a, b = (role(n.attr[k].s.decode()) for k in ("send_device", "recv_device"))
                    if a != b:
                        found.append({"from": a, "to": b,
                                      "dtype": tf.dtypes.as_dtype(n.attr["T"].type).name,
                                      "tensor": re.sub(r"^edge_\d+_", "",
                                                       n.attr["tensor_name"].s.decode())})
        return out, found

    def ring(values: Any) -> np.ndarray:
        return np.asarray(values, dtype=np.int64)

    x = load_mnist().x_test[:2]
    plain = model(x).numpy()
    report: dict[str, Any] = {"protocol": protocol_name, "transfers": {}}
    # request 1 (A): what the servers got (a curious server0, and both servers together).
    # TensorFlow reports partitioned graphs when a function is first run: record then.
    with tf.device(dev(4)):
        mask_a, report["transfers"]["send_A"] = traced(send_a, tf.constant(x[:1]),
                                                       tf.constant(11, tf.int64))
    views, by_index = {}, {}
    for i in desc.layout.input_servers:
        spec = desc.input_queue(0, i)
        with tf.device(devices[i]):
            got = q.queue_dequeue_v2(handle_on(devices[i], spec), [tf.int64] * spec.n)
        views[i] = [ring(t.numpy()) for t in got[1:1 + len(desc.layout.held[i])]]
        for index, value in zip(desc.layout.held[i], views[i]):
            by_index.setdefault(index, value)
    with tf.device(devices[0]):
        q.queue_dequeue_v2(handle_on(devices[0], desc.commit_queue()), [tf.int64] * 2)
    encoded = ring(x[:1].astype(np.float64) * protocol.fixedpoint_config.scaling_factor)
    with np.errstate(over="ignore"):
        rebuilt = np.sum([by_index[k] for k in range(desc.layout.n_shares)], axis=0,
                         dtype=np.int64)
    report["input_shares"] = {
        "reconstructs_encoded_image": bool(np.all(np.abs(rebuilt - encoded) <= 1)),
        "server0_fraction_below_2^60": float(np.mean(np.abs(np.stack(views[0])) < 2**60)),
        "encoded_fraction_below_2^60": float(np.mean(np.abs(encoded) < 2**60)),
    }
    # requests 2 (A) and 3 (B): one batch of 2, each client collects its own result
    with tf.device(dev(4)):
        mask_a = send_a(tf.constant(x[:1]), tf.constant(12, tf.int64))
    with tf.device(dev(5)):
        mask_b, report["transfers"]["send_B"] = traced(send_b, tf.constant(x[1:2]),
                                                       tf.constant(13, tf.int64))
    rids, counts = tf.constant([12, 13], tf.int64), tf.constant([1, 1], tf.int32)
    with tf.device(dev(0)):
        (found, _, _), report["transfers"]["step"] = traced(step, rids, counts)
    report["found"] = found.numpy().tolist()
    with tf.device(dev(4)):
        (ids_a, logits_a), report["transfers"]["receive_A"] = traced(receive_a, mask_a)
    with tf.device(dev(5)):
        (ids_b, logits_b), report["transfers"]["receive_B"] = traced(receive_b, mask_b)
    for me, logits, row in (("A", logits_a, 0), ("B", logits_b, 1)):
        report[f"logits_{me}_max_abs_err"] = float(np.abs(logits.numpy() - plain[row]).max())
        report[f"argmax_{me}_equal"] = bool(logits.numpy().argmax() == plain[row].argmax())
    report["ids"] = [ids_a.numpy().tolist(), ids_b.numpy().tolist()]
    # request 4 (A): someone other than A collects slot 0's output shares
    with tf.device(dev(4)):
        send_a(tf.constant(x[:1]), tf.constant(14, tf.int64))
    with tf.device(dev(0)):
        step(tf.constant([14, 0], tf.int64), tf.constant([1, 0], tf.int32))
    outs = []
    for i in desc.layout.output_servers:
        with tf.device(devices[i]):
            got = q.queue_dequeue_v2(handle_on(devices[i], desc.output_queue(0, i)),
                                     [tf.int64] * 2)
            outs.append(ring(got[1].numpy()))
    with np.errstate(over="ignore"):
        total = np.sum(outs, axis=0, dtype=np.int64)
        as_b = total - ring(mask_b.numpy())  # B unmasks A's result with its own mask
    scale = protocol.fixedpoint_config.scaling_factor
    report["collected_without_mask_max_abs"] = float(np.abs(total / scale - plain[0]).max())
    report["b_unmasks_a_max_abs"] = float(np.abs(as_b / scale - plain[0]).max())
    return report


if __name__ == "__main__":
    print(json.dumps(_placement_main(sys.argv[1] if len(sys.argv) > 1 else "securenn")))
