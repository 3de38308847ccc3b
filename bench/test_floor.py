"""How much of a cluster prediction is TensorFlow's remote runtime: the floor.

For each protocol x variant x batch on a cluster deployment, ``test_runtime_floor``
builds the skeleton of one prediction (``harness.inference.skeleton``: the same
transfers, sizes and dependencies, no protocol work; checked against the prediction's
own exact count) and times four calls interleaved, in the same rounds: the prediction
in-process, the prediction on the cluster, the skeleton and its packed form on the same
cluster.

- ``floor_ms``: the skeleton's median, what the runtime costs for this pattern alone;
- ``cluster_over_inprocess``: the cluster's median / the in-process one (side by side);
- ``floor_over_inprocess``: the floor / in-process. The cluster cannot be faster than
  the floor, so a cluster / in-process target below 1 + this is out of reach on this
  runtime without fewer transfers or rounds;
- ``packed_floor_ms``: the skeleton of ``skeleton.packed``: each link's transfers of one
  round as one tensor (``packed_tensors`` of them, same bytes and rounds), timed in the
  same rounds: what packing everything sent in a round could at best save.

Rows go to the ``variants`` table with ``table == "floor"`` (the report's speed section).
"""
from __future__ import annotations

from functools import partial

import numpy as np
import pytest

from harness.inference.comm import count_prediction
from harness.inference.evaluate import fill_batch
from harness.inference.skeleton import Skeleton, packed
from harness.results.metrics import interleaved


def _rounds(options, batch: int) -> int:
    if options.quick:
        return 5
    return 30 if batch == 1 else 8


def test_runtime_floor(benchmark, models, recorder, model, protocol, variant, deployment,
                       batch, test_split, options):
    if deployment == "inprocess":
        pytest.skip("the floor is a cluster's: compared with in-process, it runs on a cluster")
    if "inprocess" not in options.deployments:
        pytest.skip("needs the in-process deployment too (--deployments inprocess,cluster)")
    benchmark.group = f"{model}-{protocol}-floor-{deployment}-batch{batch}"
    local = models.private(model, protocol, "inprocess", batch, variant)
    remote = models.private(model, protocol, deployment, batch, variant)
    x = fill_batch(test_split[0], batch)
    comm = count_prediction(remote, x)
    players = list(remote.cluster.hostmap)
    skeleton = Skeleton(comm, players)
    copied = skeleton.counted().as_dict()  # also its build + trace call
    wanted = comm.as_dict()
    for key in ("links", "driver_links", "rounds", "data_rounds", "rounds_with_driver"):
        assert copied[key] == wanted[key], f"the skeleton's {key} differ from the prediction's"
    packing = packed(comm)
    at_best = Skeleton(packing, players)
    fewer = at_best.counted().as_dict()
    assert {k: v["bytes"] for k, v in fewer["links"].items()} == \
        {k: v["bytes"] for k, v in wanted["links"].items()}
    assert (fewer["rounds"], fewer["party_tensors"]) == (wanted["rounds"],
                                                         packing.total(party=True)[1])
    calls = {"inprocess": partial(local.predict, x), "cluster": partial(remote.predict, x),
             "floor": skeleton, "packed": at_best}
    times = interleaved(calls, benchmark, _rounds(options, batch))
    med = {k: float(np.median(t)) * 1e3 for k, t in times.items()}
    row = {"table": "floor", "model": model, "protocol": protocol, "variant": variant,
           "deployment": deployment, "batch": batch,
           "inprocess_ms": med["inprocess"], "cluster_ms": med["cluster"],
           "floor_ms": med["floor"], "packed_floor_ms": med["packed"],
           "packed_tensors": fewer["party_tensors"],
           "cluster_over_inprocess": med["cluster"] / med["inprocess"],
           "floor_over_inprocess": med["floor"] / med["inprocess"],
           "party_tensors": wanted["party_tensors"], "comm_rounds": wanted["rounds"],
           "rounds": len(times["floor"])}
    recorder.variants.append(row)
    benchmark.extra_info.update(row)
