"""Session fixtures of the harness's pytest plugin: options, test data, clusters, models.

Private models are built once per (model, protocol, variant, deployment, network, batch)
and reused by every benchmark; an auto-managed cluster serves one protocol at a time.
When the run moves past a protocol's last test (``release_after``), its private models
are dropped, its clusters stopped and the freed heap handed back to the system, so the
tests after it (serving, the next protocol) do not run beside its memory. TensorFlow is
imported only when a fixture is first used.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import gc
import logging
from typing import Any, Iterator

import pytest

logger = logging.getLogger("harness.bench")
QUICK_IMAGES = 64
POOLS = pytest.StashKey[list]()


def _protocol_of(item: Any) -> str | None:
    callspec = getattr(item, "callspec", None)
    return callspec.params.get("protocol") if callspec is not None else None


def release_after(item: pytest.Item, nextitem: pytest.Item | None) -> None:
    """After the last test of a protocol: free that protocol's models and clusters."""
    done = _protocol_of(item)
    if done is None or (nextitem is not None and _protocol_of(nextitem) == done):
        return
    pools = item.config.stash.get(POOLS, [])
    if not any(pool.holds_something() for pool in pools):
        return
    for pool in pools:
        pool.release()
    gc.collect()
    _trim_heap()
    logger.info("%s's last test done: its private models and clusters released", done)


def _trim_heap() -> None:
    """glibc keeps freed memory in its arenas; malloc_trim returns it to the system."""
    libc = ctypes.util.find_library("c")
    if libc:
        try:
            ctypes.CDLL(libc).malloc_trim(0)
        except (OSError, AttributeError):  # not glibc: nothing to trim
            pass


@pytest.fixture(scope="session")
def options(pytestconfig: pytest.Config) -> Any:
    """The run's ``HarnessSession`` (parsed options, recorder, notes)."""
    from harness.pytest_plugin import session_of  # noqa: PLC0415

    return session_of(pytestconfig)


@pytest.fixture(scope="session")
def recorder(options: Any) -> Any:
    return options.recorder


@pytest.fixture(scope="session")
def test_split(options: Any) -> tuple[Any, Any]:
    """Test images and labels: ``--images`` of them, the whole split by default."""
    from harness.inference.data import load_mnist  # noqa: PLC0415

    split = load_mnist()
    available = len(split.x_test)
    wanted = options.images or (QUICK_IMAGES if options.quick else available)
    if wanted > available:
        options.notes.append(f"--images {wanted}: the test split holds {available} images; "
                             f"all {available} were used")
    n = min(wanted, available)
    return split.x_test[:n], split.y_test[:n]


class Clusters:
    """Clusters by (deployment, network), started on first use, one protocol at a time."""

    def __init__(self, options: Any) -> None:
        self.options = options
        self._running: dict[tuple[str, str], Any] = {}
        self._protocol: dict[tuple[str, str], str] = {}

    def cluster(self, deployment: str, protocol: str, network: Any = None) -> Any:
        """The started, connected cluster of a deployment (None for in-process)."""
        if deployment == "inprocess":
            return None
        from harness.net.cluster import Cluster  # noqa: PLC0415

        key = (deployment, str(network or "loopback"))
        running = self._running.get(key)
        if running is not None and running.auto_managed and self._protocol[key] != protocol:
            running.stop()
            running = None
        if running is None:
            if deployment == "manual":
                running = Cluster.manual(self.options.cluster_config)
            elif network is not None and getattr(network, "shaped", False):
                running = Cluster(network=network)
            else:
                running = Cluster()
            running.start()
            running.connect()
            self._running[key] = running
        self._protocol[key] = protocol
        return running

    def stop(self) -> None:
        for running in self._running.values():
            running.stop()
        self._running.clear()

    release = stop

    def holds_something(self) -> bool:
        return bool(self._running)


@pytest.fixture(scope="session")
def clusters(pytestconfig: pytest.Config, options: Any) -> Iterator[Clusters]:
    pool = Clusters(options)
    pytestconfig.stash.setdefault(POOLS, []).append(pool)
    try:
        yield pool
    finally:
        pool.stop()


class Models:
    """Keras, plaintext and private models, built once and kept for one protocol at a time."""

    def __init__(self, clusters: Clusters) -> None:
        self.clusters = clusters
        self._keras: dict[tuple[str, int], Any] = {}
        self._plain: dict[tuple[str, int], Any] = {}
        self._private: dict[tuple, Any] = {}

    def keras(self, model: str, batch: int) -> Any:
        if (model, batch) not in self._keras:
            from harness.inference.models import load_model  # noqa: PLC0415

            self._keras[(model, batch)] = load_model(model, batch)
        return self._keras[(model, batch)]

    def plaintext(self, model: str, batch: int) -> Any:
        if (model, batch) not in self._plain:
            from harness.inference.private import plaintext_predictor  # noqa: PLC0415

            self._plain[(model, batch)] = plaintext_predictor(self.keras(model, batch))
        return self._plain[(model, batch)]

    def private(self, model: str, protocol: str, deployment: str, batch: int,
                variant: str = "tuned", network: Any = None) -> Any:
        key = (model, protocol, variant, deployment, str(network), batch)
        if key not in self._private:
            from harness.inference.private import PrivateModel  # noqa: PLC0415

            for old in [k for k in self._private if k[1] != protocol]:
                del self._private[old]  # one protocol's models at a time
            keras = self.keras(model, batch)
            private = PrivateModel(keras, protocol, variant=variant,
                                   cluster=self.clusters.cluster(deployment, protocol, network))
            private.predict(private.zeros())  # build + trace
            self._private[key] = private
        return self._private[key]


    def release(self) -> None:
        self._private.clear()
        self._plain.clear()
        self._keras.clear()

    def holds_something(self) -> bool:
        return bool(self._private)


@pytest.fixture(scope="session")
def models(pytestconfig: pytest.Config, clusters: Clusters) -> Models:
    pool = Models(clusters)
    pytestconfig.stash.setdefault(POOLS, []).insert(0, pool)  # models go before clusters
    return pool
