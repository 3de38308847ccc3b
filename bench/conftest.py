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
