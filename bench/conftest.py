"""These tests run tf-encrypted: activate the boundary before any test module imports
TensorFlow (``harness.tfe.activate``; options and fixtures come from the plugin)."""
from harness.tfe import activate

activate()


import pytest  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def total_rss(recorder):
    """The largest simultaneous RSS of the run's processes (driver + workers), sampled."""
    from harness.results.rss import RssSampler  # noqa: PLC0415

    with RssSampler() as sampler:
        yield sampler
    if recorder is not None:
        recorder.total_memory = sampler.summary()


# Benchmarks that start process trees of their own (a served model, its cluster and up to
# 8 client processes, ~4.5 GB of PSS together) run first, while the driver is small.
# TensorFlow keeps most of the driver's heap after the in-process benchmarks (measured
# 2.6 GB PSS at the end of a full run, with every private model released): had they come
# last, the two would add up (9.3 GB measured).
RUN_FIRST = ("test_serving_load.py", "test_serving_bench.py")


@pytest.hookimpl(trylast=True)  # after pytest has grouped the items by their fixtures
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: item.path.name not in RUN_FIRST)  # stable: order kept
