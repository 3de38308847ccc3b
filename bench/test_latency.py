"""Private prediction latency per protocol x deployment x batch size (steady state).

Groups are ``<protocol>-batch<B>`` so in-process and cluster runs of a protocol sit
side by side; the plaintext Keras baseline of the same batch is in ``plaintext-batch<B>``.
First-call (build + trace) time, the plaintext median measured in the same test,
and the private/plaintext and cluster/in-process ratios go to ``extra_info``. Cluster runs
record the exact traffic of one prediction per link (``harness.inference.comm``).
"""
from __future__ import annotations

import time

import numpy as np
import pytest
import tensorflow as tf

from harness.inference.comm import count_prediction
from harness.inference.evaluate import fill_batch
from harness.results.metrics import peak_rss_mb


def _rounds(options, batch: int) -> int:
    if options.quick:
        return 5
    return 30 if batch == 1 else 10


def _median_s(fn, arg, rounds: int) -> float:
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn(arg)
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def test_plaintext_latency(benchmark, models, model, batch, test_split, options):
    benchmark.group = f"{model}-plaintext-batch{batch}"
    predict = models.plaintext(model, batch)
    x = fill_batch(test_split[0], batch)
    predict(x)
    benchmark.extra_info.update(kind="plaintext", model=model, batch=batch)
    benchmark.pedantic(predict, args=(x,), rounds=_rounds(options, batch) * 3,
                       warmup_rounds=2, iterations=1)


def test_private_latency(benchmark, models, clusters, recorder, model, protocol, variant,
                         deployment, batch, test_split, options):
    benchmark.group = f"{model}-{protocol}-batch{batch}"
    name = model
    model = models.private(name, protocol, deployment, batch, variant)
    x = fill_batch(test_split[0], batch)
    rounds = _rounds(options, batch)
    benchmark.pedantic(model.predict, args=(x,), rounds=rounds, warmup_rounds=1, iterations=1)
    median_ms = benchmark.stats.stats.median * 1e3
    plain_ms = _median_s(models.plaintext(name, batch), x, rounds * 3) * 1e3
    row = {
        "model": name, "protocol": protocol, "variant": variant, "deployment": deployment,
        "batch": batch,
        "median_ms": median_ms, "plaintext_median_ms": plain_ms,
        "private_over_plaintext": median_ms / plain_ms,
        "first_call_s": model.timing.first_call_s, "rounds": rounds,
    }
    inproc = next((r for r in recorder.latency if r["protocol"] == protocol
                   and r["model"] == name and r["variant"] == variant
                   and r["batch"] == batch and r["deployment"] == "inprocess"), None)
    if deployment != "inprocess" and inproc is not None:
        row["over_inprocess"] = median_ms / inproc["median_ms"]
    cluster = clusters.cluster(deployment, protocol)
    memory = {"model": name, "protocol": protocol, "variant": variant,
              "deployment": deployment, "batch": batch,
              "driver_peak_rss_mb": peak_rss_mb()}
    if cluster is not None:
        comm = count_prediction(model, x).as_dict()  # exact: one call's partition graphs
        row["bytes_per_prediction"] = comm["party_bytes"] / batch
        recorder.communication.append({
            "model": name, "protocol": protocol, "variant": variant,
            "deployment": deployment, "batch": batch,
            "bytes_per_prediction": comm["party_bytes"] / batch,
            "bytes_per_batch": comm["party_bytes"],
            "tensors_per_batch": comm["party_tensors"],
            "comm_rounds": comm["rounds"], "comm_data_rounds": comm["data_rounds"],
            "links": comm["links"],  # per batch: {"a->b": {bytes, tensors, control_tensors}}
            "by_link_per_batch": {k: v["bytes"] for k, v in comm["links"].items()},
            "driver_bytes_per_batch": comm["driver_bytes"],
            "driver_tensors_per_batch": comm["driver_tensors"],
            "driver_links": comm["driver_links"],
            "comm_rounds_with_driver": comm["rounds_with_driver"],
            "method": comm["method"],
        })
        memory["workers_peak_rss_mb"] = cluster.peak_rss_mb()
    recorder.latency.append(row)
    recorder.memory.append(memory)
    benchmark.extra_info.update(row)


@pytest.mark.parametrize("protocol_", ["securenn"])
def test_harness_overhead(benchmark, models, options, test_split, recorder, protocol_):
    """The harness's own cost: benchmarked ``predict`` vs a bare loop on the compiled step."""
    if ("inprocess" not in options.deployments or protocol_ not in options.protocols
            or "tutorial" not in options.models):
        pytest.skip("needs the in-process securenn tutorial model")
    benchmark.group = "harness-overhead"
    model = models.private("tutorial", protocol_, "inprocess", 1)
    x = fill_batch(test_split[0], 1)
    rounds = _rounds(options, 1)
    const = tf.constant(x)
    step = model._step  # noqa: SLF001  (the bare compiled call is the point here)
    bare_ms = _median_s(lambda c: step(c).numpy(), const, rounds) * 1e3
    benchmark.pedantic(model.predict, args=(x,), rounds=rounds, warmup_rounds=1, iterations=1)
    full_ms = benchmark.stats.stats.median * 1e3
    benchmark.extra_info.update(bare_loop_ms=bare_ms, benchmark_ms=full_ms,
                                overhead_pct=100 * (full_ms - bare_ms) / bare_ms)
