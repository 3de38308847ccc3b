"""The runtime-floor skeleton (``harness.inference.skeleton``) copies a computation's
transfers exactly.

A driver subprocess starts a real cluster and counts (``harness.inference.comm``) four
computations and the skeleton of each: tuned SecureNN and Pond predictions of the
tutorial model (46 and 78 tensors between parties; Pond's hold several control
transfers on one link that wait for nothing), stock Pond's
private matmul (a control transfer from TensorFlow's automatic control dependencies)
and a plain function that leaves two results on workers (two fetches). The skeleton's
own partition graphs, counted the same way, must hold the same transfers per link
(bytes, tensors, control tensors), to and from the driver, and the same rounds.
"""
from __future__ import annotations

import json
import sys

import pytest
import driver_process
from driver_process import run_driver

pytestmark = [pytest.mark.cluster]

KEYS = ("links", "driver_links", "rounds", "data_rounds", "rounds_with_driver",
        "party_bytes", "party_tensors", "driver_bytes", "driver_tensors")


def _driver() -> None:
    from harness.tfe import activate

    tfe = activate()
    import numpy as np
    import tensorflow as tf

    from harness.inference import comm
    from harness.inference.models import load_model
    from harness.inference.private import PrivateModel
    from harness.inference.skeleton import Skeleton
    from harness.inference.skeleton import packed as skeleton_packed
    from harness.net.cluster import Cluster
    from harness.tfe import protocols
    from harness.tfe.tracing import compile_step

    def pick(count):
        return {k: v for k, v in count.as_dict().items() if k in KEYS}

    report: dict = {}
    with Cluster() as cluster:
        config = cluster.connect()
        players = list(cluster.hostmap)
        counts = {}
        for protocol in ("securenn", "pond"):
            model = PrivateModel(load_model("tutorial", 1), protocol, cluster=cluster)
            counts[protocol] = comm.count_prediction(model, model.zeros())

        tfe.set_config(config)
        tfe.set_protocol(protocols.make("pond", "stock"))

        @compile_step
        def matmul(a, b):
            xs = tfe.define_private_input("prediction-client", lambda: a)
            ys = tfe.define_private_input("prediction-client", lambda: b)
            out = []
            tfe.define_output("prediction-client", [tfe.matmul(xs, ys)],
                              lambda v: out.append(tf.identity(v)))
            return out[0]

        counts["matmul"] = comm.count(matmul, tf.ones([2, 3]), tf.ones([3, 4]), players=players)
        server0, server1 = (config.get_player(n).device_name for n in ("server0", "server1"))

        two_outputs = driver_process.two_outputs(server0, server1)

        counts["plain"] = comm.count(two_outputs, tf.ones([5]), players=players)
        for name, count in counts.items():
            skeleton = Skeleton(count, players)
            outputs = [skeleton() for _ in range(3)][-1]
            report[name] = {"original": pick(count), "copy": pick(skeleton.counted()),
                            "outputs": [list(np.shape(o)) for o in outputs]}
        fewer = skeleton_packed(counts["securenn"])
        report["packed"] = {"copy": pick(Skeleton(fewer, players).counted()),
                            "groups": fewer.total(party=True)[1]}
    print(json.dumps(report), flush=True)


@pytest.fixture(scope="module")
def measured() -> dict:
    return run_driver(__file__)


@pytest.mark.parametrize("name", ["securenn", "pond", "matmul", "plain"])
def test_skeleton_sends_what_the_computation_sends(measured, name):
    case = measured[name]
    assert case["copy"] == case["original"]
    assert case["original"]["party_tensors"] + case["original"]["driver_tensors"] > 0


def test_the_cases_hold_what_the_copy_must_get_right(measured):
    controls = sum(v["control_tensors"] for v in measured["matmul"]["original"]["links"].values())
    assert controls >= 1  # a control transfer is copied as one, not as data
    # several control transfers on one link, waiting for nothing: copied one by one
    # (an early version let Grappler merge them into one)
    assert max(v["control_tensors"] for v in measured["pond"]["original"]["links"].values()) >= 3
    assert measured["securenn"]["original"]["party_tensors"] >= 40
    assert measured["securenn"]["original"]["data_rounds"] < measured["securenn"]["original"]["rounds"]
    # two results left on workers: the skeleton returns both, with their shapes
    assert measured["plain"]["outputs"] == [[5], [5]]


def test_packed_skeleton_keeps_bytes_and_rounds_with_fewer_tensors(measured):
    original, copy = measured["securenn"]["original"], measured["packed"]["copy"]
    assert {k: v["bytes"] for k, v in copy["links"].items()} == \
        {k: v["bytes"] for k, v in original["links"].items()}
    assert (copy["rounds"], copy["party_bytes"]) == (original["rounds"], original["party_bytes"])
    assert copy["party_tensors"] == measured["packed"]["groups"] < original["party_tensors"]


def test_packing_groups_one_link_and_round():
    from harness.inference.comm import Communication, Transfer
    from harness.inference.skeleton import packed

    def t(sender, receiver, level, nbytes, after=(), control=False, tensor="x"):
        return Transfer(sender, receiver, tensor, "n:0", "int64", (nbytes // 8,), nbytes,
                        control, level, after)

    comm = Communication([t("a", "b", 1, 16), t("a", "b", 1, 8), t("a", "c", 1, 8),
                          t("b", "a", 2, 24, after=(0, 1)), t("b", "a", 2, 0, (1,), True),
                          t("c", "a", 2, 0, (2,), True), t("c", "a", 2, 0, (2,), True),
                          t("a", "driver", 3, 8, after=(3,), tensor="fetch:0")], 2, 2, 3)
    out = packed(comm)
    assert [(x.link, x.nbytes, x.control, x.after) for x in out.transfers] == [
        ("a->b", 24, False, ()), ("a->c", 8, False, ()), ("b->a", 24, False, (0,)),
        ("c->a", 0, True, (1,)), ("a->driver", 8, False, (2,))]
    assert out.transfers[0].shape == (24,) and out.transfers[0].dtype == "int8"
    assert out.links()["a->b"]["bytes"] == comm.links()["a->b"]["bytes"]


def test_report_shows_the_floor_and_what_it_means_for_the_target():
    from harness.results import report_speed

    def row(batch, inprocess, cluster, floor):
        return {"table": "floor", "model": "tutorial", "protocol": "securenn",
                "variant": "tuned", "deployment": "cluster", "batch": batch,
                "inprocess_ms": inprocess, "cluster_ms": cluster, "floor_ms": floor,
                "cluster_over_inprocess": cluster / inprocess,
                "floor_over_inprocess": floor / inprocess,
                "party_tensors": 46, "comm_rounds": 18, "packed_tensors": 27,
                "packed_floor_ms": 10.0}

    text = "\n".join(report_speed.section({"variants": [row(1, 6.0, 22.0, 12.0),
                                                        row(32, 90.0, 140.0, 30.0)]}))
    assert "| tutorial | SecureNN | tuned | 1 | 46 / 18 | 6 | 22 | 12 | 3.67 | 2 | 27, 10 |" in text
    assert "| tutorial | SecureNN | tuned | 32 | 46 / 18 | 90 | 140 | 30 | 1.56 | 0.333 | 27, 10 |" in text
    assert "cluster / in-process 3.67 side by side (target <= 1.5): **not met**; the floor " \
           "alone is 2.00 x in-process, so the target is out of reach" in text
    text = "\n".join(report_speed.section({"variants": [row(1, 10.0, 14.0, 3.0)]}))
    assert "**met**; the floor alone is 0.30 x in-process, so the target is within reach" in text


if __name__ == "__main__" and sys.argv[1:] == ["--driver"]:
    _driver()
