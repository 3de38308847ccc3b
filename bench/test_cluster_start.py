"""Start-to-ready time of an auto-managed cluster (3 servers + client worker)."""
from __future__ import annotations

import pytest

from harness.net.cluster import Cluster


def test_cluster_start_to_ready(benchmark, options, recorder):
    if "cluster" not in options.deployments:
        pytest.skip("cluster deployment not selected")
    benchmark.group = "cluster"
    started: list[Cluster] = []

    def start() -> None:
        started.append(Cluster().start())

    def teardown() -> None:
        started.pop().stop()

    benchmark.pedantic(start, teardown=teardown, rounds=2 if options.quick else 3,
                       iterations=1)
    seconds = benchmark.stats.stats.median
    recorder.cluster.append({"workers": 4, "start_to_ready_s_median": seconds,
                             "rounds": benchmark.stats.stats.rounds})
    benchmark.extra_info.update(workers=4, start_to_ready_s=seconds)
