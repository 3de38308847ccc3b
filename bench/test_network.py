"""Private prediction on shaped networks: emulated latency next to projected latency.

For each protocol and shaped network of ``--network`` (e.g. ``--network lan,wan``; the
tests are left out without it) a driver subprocess starts
``Cluster(network=profile)`` (players in namespaces, links shaped with tc) and predicts
one batch per request, per model and batch of the run (group ``network-<profile>``).

The compute time is the same prediction on the same cluster with its links'
limits lifted (``ShapedNetwork.lift``, untimed, before each such call; ``restore``
before each shaped call), timed interleaved with the shaped calls (each round calls
both, so both see the same machine speed): the reference and the shaped run share
processes, namespaces, veths and connections and differ only in the shaping, and no
second cluster is needed (an earlier loopback reference kept up to two more clusters
alive: a full run with ``--network lan,wan`` peaked at 10.9 GB). ``harness.inference.comm``
counts the exact bytes per link and rounds of one prediction on that cluster (the
driver's transfers included: it feeds the input and takes the result), from which
``harness.results.projection`` projects the latency on the profile.

Drivers run in subprocesses so that this process's TensorFlow context (and the
clusters of the other benchmarks) stay untouched. A figure says whether its delay
was emulated (netem) or projected (no sch_netem: the emulated run has the rate
limit only, and ``rounds x RTT`` is added by the model).
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from harness.inference.comm_trace import TRACE_ENV, out_of_order
from harness.net.shaping import ShapedNetwork
from harness.results.metrics import interleaved
from harness.results.projection import (
    WIRE_RATIO, checked_ratios, project, unexplained, wire_ratios)
from harness.results.replay import LINK_MODEL

pytestmark = [pytest.mark.cluster, pytest.mark.netns, pytest.mark.slow]

ROOT = Path(__file__).resolve().parent.parent

_DRIVER = """
import json, os, stat, sys, time
from harness.tfe import activate
activate()
import numpy as np
from harness.inference.data import load_mnist
from harness.inference.private import PrivateModel
from harness.net.cluster import Cluster
from harness.net.netprofile import parse_network
from harness.inference.models import load_model

protocol, network = sys.argv[1], parse_network(sys.argv[2])
name, batch = sys.argv[3], int(sys.argv[4])
keras = load_model(name, batch)
x = load_mnist().x_test[:batch].reshape(batch, *keras.input_shape[1:])
with Cluster(network=network) as cluster:
    model = PrivateModel(keras, protocol, cluster=cluster)
    model.predict(x)
    info = {"first_call_s": model.timing.first_call_s,
            "network": cluster.shaped.describe() if cluster.shaped else None}
    from harness.inference.comm import count_prediction
    from harness.inference.comm_trace import LogMark
    counting = count_prediction(model, x)
    names = [[t.sender, t.receiver, t.tensor] for t in counting.transfers]
    counted = counting.as_dict()
    info["links"] = {**counted["links"], **counted["driver_links"]}
    info["rounds"] = counted["rounds_with_driver"]
    info["round_links"] = counted["round_links"]
    info["schedule"] = counted["schedule"]
    info["party_rounds"] = counted["rounds"]
    print(json.dumps(info), flush=True)
    steps = {"predict": lambda: model.predict(x)}
    if cluster.shaped is not None:
        steps.update(lift=cluster.shaped.lift, restore=cluster.shaped.restore,
                     wire=lambda: print(json.dumps({"bytes": cluster.shaped.link_bytes(),
                                                    "resent": cluster.shaped.resent_bytes()}),
                                        flush=True))
    logs = [w.log_path for w in cluster.managed]
    if stat.S_ISREG(os.stat(2).st_mode):  # this process's own lines (its transfers)
        logs.append("/proc/self/fd/2")

    def trace():
        mark = LogMark(logs)
        t0 = time.time()
        model.predict(x)
        t1 = time.time()
        time.sleep(0.1)  # the last lines of the other processes
        print(json.dumps(mark.times(names, list(cluster.hostmap), t0, t1)), flush=True)

    steps["trace"] = trace
    for line in sys.stdin:
        if line.strip() not in steps:
            break
        steps[line.strip()]()
        print("ok", flush=True)
"""


class RemoteDriver:
    """A driver subprocess with its own cluster; ``predict()`` runs one private prediction."""

    def __init__(self, protocol: str, network: str, model: str = "tutorial", batch: int = 1):
        self._log = tempfile.TemporaryFile()
        # the rendezvous log of every process of the cluster: ``comm_trace``
        env = dict(os.environ, PYTHONPATH=str(ROOT), **TRACE_ENV)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "harness.net.bind", "127.0.0.1", "--", sys.executable,
             "-c", _DRIVER, protocol, network, model, str(batch)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log, env=env, text=True)
        self.info = json.loads(self._line())

    def _line(self) -> str:
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait()
            self._log.seek(0)
            lines = self._log.read().decode(errors="replace").strip().splitlines()
            tail = [ln for ln in lines if not ln[:1] in "IWE" or not ln[1:5].isdigit()][-15:]
            raise RuntimeError(f"driver exited with {self.proc.returncode}:\n" + "\n".join(tail))
        return line

    def step(self, what: str) -> None:
        """``predict`` (one private prediction), or on a shaped network ``lift`` /
        ``restore`` (its links' limits lifted / back: ``ShapedNetwork.lift``)."""
        self.proc.stdin.write(f"{what}\n")
        self.proc.stdin.flush()
        assert self._line().strip() == "ok"

    def predict(self) -> None:
        self.step("predict")

    def query(self, what: str) -> Any:
        """``wire`` (bytes each shaped link's tbf has let through so far, ``link_bytes``,
        and payload each player's TCP has retransmitted, ``resent_bytes``) or ``trace``
        (one prediction, when each transfer was sent and arrived:
        ``harness.inference.comm_trace``)."""
        self.proc.stdin.write(f"{what}\n")
        self.proc.stdin.flush()
        answer = json.loads(self._line())
        assert self._line().strip() == "ok"
        return answer

    def close(self) -> None:
        try:
            self.proc.stdin.close()
            self.proc.wait(timeout=60)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait()
        self.proc.stdout.close()
        self._log.close()


def _diff(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {k: n - before.get(k, 0) for k, n in after.items()}


def test_network_latency(benchmark, protocol, model, network, batch, options, recorder):
    ok, reason = ShapedNetwork.available()
    if not ok:
        pytest.skip(f"shaped networks: {reason}")
    if not network.shaped:
        pytest.skip("loopback is not shaped: each shaped run times its own unshaped "
                    "reference")
    if protocol == "pond":
        pytest.skip("pond: the papers' network settings are for SecureNN and ABY3")
    rounds = 5 if options.quick or batch > 1 else 15
    benchmark.group = f"network-{network.name}"
    driver = RemoteDriver(protocol, network.name, model, batch)
    try:
        times = interleaved(
            {"unshaped": driver.predict, "shaped": driver.predict}, benchmark, rounds,
            before={"unshaped": partial(driver.step, "lift"),
                    "shaped": partial(driver.step, "restore")})
        medians = {name: statistics.median(t) for name, t in times.items()}
        driver.step("restore")
        before = driver.query("wire")
        driver.predict()  # one more shaped call, its frames counted on every link
        after = driver.query("wire")
        driver.step("lift")  # traced calls with the limits lifted: the compute's shape
        traces = sorted((driver.query("trace") for _ in range(3)), key=lambda t: t["call_s"])
    finally:
        driver.close()
    base = {**driver.info, "median_s": medians["unshaped"]}
    emulated_s = medians["shaped"]
    described = driver.info["network"]
    comm = {"links": base["links"], "rounds": base["rounds"],
            "round_links": base["round_links"], "schedule": base["schedule"],
            "timing": traces[1]}  # the traced call of median length
    projection = project(base["median_s"], comm, network.rate, network.rtt,
                         unshaped=["driver"], burst=described.get("burst_bytes") or 0)
    wire = wire_ratios(comm, _diff(before["bytes"], after["bytes"]), unshaped=["driver"],
                       resent=_diff(before["resent"], after["resent"]))
    row = {
        "model": model, "protocol": protocol, "batch": batch, "network": network.name,
        "rate_bytes_per_s": network.rate, "rtt_s": network.rtt,
        "delay": described["delay"], "qdisc": described["qdisc"],
        "emulated_ms": emulated_s * 1e3,
        "compute_ms": base["median_s"] * 1e3,
        "compute_reference": "the same cluster, its links' limits lifted",
        "projected_ms": projection.total_s * 1e3,
        "projected_without_rtt_ms": (projection.compute_s + projection.transfer_s) * 1e3,
        "projected_sequential_without_rtt_ms": (
            projection.compute_s + projection.transfer_sequential_s) * 1e3,
        "projected_scheduled_without_rtt_ms": (
            projection.compute_s + projection.transfer_scheduled_s) * 1e3,
        "projected_timed_without_rtt_ms": (
            projection.compute_s + projection.transfer_timed_s) * 1e3,
        "traced_calls_ms": [t["call_s"] * 1e3 for t in traces],
        "traced_transfers": [sum(x is not None for x in t["sent"]) for t in traces],
        "projection": projection.as_dict(),
        "link_model": LINK_MODEL,
        "party_rounds": base["party_rounds"],
        "wire": wire,
        "wire_method": ("frame bytes each link's tbf let through during one shaped call "
                        "(tc counters), against the counted payload; what each player's "
                        "TCP retransmitted in that call (ss bytes_retrans) beside it"),
    }
    if described["delay"] == "projected":
        row["emulated_plus_projected_delay_ms"] = (emulated_s + projection.latency_s) * 1e3
    benchmark.extra_info.update(row)
    recorder.network.append(row)
    print(f"\n{model} {protocol} b{batch} {network.name}: emulated {row['emulated_ms']:.1f} ms "
          f"(delay {row['delay']}), unshaped {row['compute_ms']:.1f} ms, projected "
          f"{row['projected_ms']:.1f} ms ({projection.rounds} rounds x RTT = "
          f"{projection.latency_s * 1e3:.1f} ms, busiest link {projection.busiest_link} "
          f"{projection.busiest_link_bytes} B = {projection.transfer_s * 1e3:.1f} ms)")
    ratios = checked_ratios(wire)
    print(f"wire / counted per link (tc counters, one shaped call): "
          f"{ {k: round(v, 3) for k, v in ratios.items()} }; retransmitted: "
          f"{ {k: v['resent'] for k, v in wire.items() if v['resent']} or 'nothing'}")
    orders = [out_of_order(base["schedule"], t) for t in traces]
    print(f"traced calls: {row['traced_transfers']} of {len(base['schedule'])} transfers "
          f"found in the log, {[c for c, _ in orders]} counted dependencies checked, "
          f"{sum(len(w) for _, w in orders)} broken")
    assert all(checked for checked, _ in orders), "no counted dependency could be checked"
    assert not any(w for _, w in orders), (
        f"the runtime sent a transfer before one it waits for (by the count) had arrived: "
        f"{[w[:5] for _, w in orders]}")
    off = unexplained(wire)
    assert not off, (f"the links carried what the count does not explain (wire / counted "
                     f"outside {WIRE_RATIO}, retransmissions allowed for): {off}")
