"""Project-wide pytest configuration: command-line options, markers, hypothesis profiles.

``import harness`` comes first: it selects legacy Keras before TensorFlow loads,
builds/loads our secure ops and patches tf-encrypted (``harness.tfe``).
"""
from __future__ import annotations

import os

import pytest

from harness.tfe import activate

activate()  # must precede any tensorflow import
from hypothesis import HealthCheck, settings

from harness.inference.private import protocol_names  # noqa: E402

# Hypothesis: a bounded, derandomized profile for CI; "dev" by default; "thorough" on demand
# (`pytest --hypothesis-profile thorough`).
settings.register_profile(
    "ci", max_examples=25, deadline=None, derandomize=True, print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "dev", max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "thorough", max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile("ci" if os.environ.get("CI") else "dev")

def _csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("harness", "private-inference benchmark harness")
    group.addoption("--protocols", default=",".join(protocol_names()),
                    help="comma-separated protocols to run (default: %(default)s)")
    group.addoption("--deployments", default="inprocess,cluster",
                    help="comma-separated: inprocess, cluster, manual (default: %(default)s)")
    group.addoption("--cluster-config", default=None, metavar="FILE",
                    help="hostmap JSON of hand-started workers, for --deployments manual")
    group.addoption("--batch-sizes", default=None,
                    help="comma-separated batch sizes (default: 1,32; 1 with --quick)")
    group.addoption("--images", type=int, default=None,
                    help="test images for accuracy (default: the whole test split)")
    group.addoption("--quick", action="store_true",
                    help="a small CI-sized subset: fewer images and rounds")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "cluster: starts real worker processes")
    config.addinivalue_line("markers", "netns: needs root and `ip netns` (several hosts)")
    config.addinivalue_line("markers", "slow: takes more than a few seconds")
    for proto in _csv(config.getoption("--protocols")):
        if proto not in protocol_names():
            raise pytest.UsageError(
                f"--protocols: unknown protocol {proto!r}; choose from {', '.join(protocol_names())}"
            )


@pytest.fixture(scope="session")
def cluster():
    """A session-wide auto-managed cluster (3 servers + client worker), stopped at the end.

    Connecting to it (``cluster.connect()``) switches this process's TensorFlow
    context to the cluster; tests that need an in-process context afterwards
    should drive the cluster from a subprocess instead.
    """
    from harness.net.cluster import Cluster

    with Cluster() as running:
        yield running
