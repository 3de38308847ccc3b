"""Fixtures of the benchmark suite: options, shared models and clusters, result files.

Options (``--protocols``, ``--deployments``, ``--batch-sizes``, ``--images``,
``--quick``, ``--cluster-config``) are declared in the top-level ``conftest.py``.
Private models are built once per (protocol, deployment, batch size) and reused by
every benchmark; clusters once per session. At the end of a run that was not
interrupted, ``results/runs/<stamp>/`` and ``results/latest/`` receive
``benchmark.json``, ``summary.json`` and the report.
"""
from __future__ import annotations

import datetime as _dt
import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest

from harness.net.cluster import Cluster
from harness.inference.data import load_mnist
from harness.inference.private import PrivateModel, plaintext_predictor
from harness.results.store import RESULTS_DIR, Recorder, publish, write_json
from models.conv_mnist import load_model

logger = logging.getLogger("harness.bench")

QUICK_IMAGES = 64


def _csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


@dataclass(frozen=True)
class BenchOptions:
    protocols: tuple[str, ...]
    deployments: tuple[str, ...]
    batch_sizes: tuple[int, ...]
    images: int | None
    quick: bool
    cluster_config: str | None

    @classmethod
    def from_config(cls, config: pytest.Config) -> "BenchOptions":
        deployments = tuple(_csv(config.getoption("--deployments")))
        for d in deployments:
            if d not in ("inprocess", "cluster", "manual"):
                raise pytest.UsageError(f"--deployments: unknown deployment {d!r}")
        cluster_config = config.getoption("--cluster-config")
        if "manual" in deployments and not cluster_config:
            raise pytest.UsageError("--deployments manual needs --cluster-config FILE")
        quick = config.getoption("--quick")
        sizes = config.getoption("--batch-sizes") or ("1" if quick else "1,32")
        batch_sizes = tuple(int(b) for b in _csv(sizes))
        return cls(
            protocols=tuple(_csv(config.getoption("--protocols"))),
            deployments=deployments,
            batch_sizes=batch_sizes,
            images=config.getoption("--images"),
            quick=quick,
            cluster_config=cluster_config,
        )

    def as_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(self).items()}


def pytest_configure(config: pytest.Config) -> None:
    config._harness_options = BenchOptions.from_config(config)  # type: ignore[attr-defined]
    config._harness_recorder = Recorder(options=config._harness_options.as_dict())  # type: ignore[attr-defined]
    staging = Path(tempfile.mkdtemp(prefix="tfe-harness-run-"))
    config._harness_staging = staging  # type: ignore[attr-defined]
    if config.getoption("benchmark_json", None) is None:  # read by pytest-benchmark later
        config.option.benchmark_json = staging / "benchmark.json"


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    opts: BenchOptions = metafunc.config._harness_options  # type: ignore[attr-defined]
    if "protocol" in metafunc.fixturenames:
        metafunc.parametrize("protocol", opts.protocols, scope="session")
    # Only the protocol is session-scoped: pytest then runs the tests protocol by
    # protocol, and each protocol's models and cluster are freed before the next.
    if "deployment" in metafunc.fixturenames:
        metafunc.parametrize("deployment", opts.deployments)
    if "batch" in metafunc.fixturenames:
        metafunc.parametrize("batch", opts.batch_sizes,
                             ids=[f"batch{b}" for b in opts.batch_sizes])


@pytest.hookimpl(hookwrapper=True, trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> Iterator[None]:
    yield  # pytest-benchmark has written benchmark.json into the staging folder by now
    config = session.config
    staging: Path = config._harness_staging  # type: ignore[attr-defined]
    recorder: Recorder = config._harness_recorder  # type: ignore[attr-defined]
    interrupted = exitstatus in (pytest.ExitCode.INTERRUPTED, pytest.ExitCode.INTERNAL_ERROR)
    try:
        if interrupted:
            logger.warning("run interrupted: no result files written")
        elif not recorder.empty():
            run_dir = _publish_run(staging, recorder)
            reporter = config.pluginmanager.get_plugin("terminalreporter")
            if reporter is not None:
                reporter.write_line(f"results: {run_dir} (and results/latest/)")
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _publish_run(staging: Path, recorder: Recorder) -> Path:
    """Complete the run's files in ``staging``, then move them under ``results/``."""
    from harness.results.report import write_report  # noqa: PLC0415

    write_json(staging / "summary.json", recorder.summary())
    write_report(staging)
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    copies = []
    for _ in range(2):  # same filesystem as the targets, so the final renames are atomic
        copy = Path(tempfile.mkdtemp(prefix=".incoming-", dir=RESULTS_DIR))
        shutil.copytree(staging, copy, dirs_exist_ok=True)
        copies.append(copy)
    run_dir = publish(copies[0], RESULTS_DIR / "runs" / stamp)
    publish(copies[1], RESULTS_DIR / "latest")
    return run_dir


# -- fixtures --------------------------------------------------------------------------
@pytest.fixture(scope="session")
def options(pytestconfig: pytest.Config) -> BenchOptions:
    return pytestconfig._harness_options  # type: ignore[attr-defined]


@pytest.fixture(scope="session")
def recorder(pytestconfig: pytest.Config) -> Recorder:
    return pytestconfig._harness_recorder  # type: ignore[attr-defined]


@pytest.fixture(scope="session")
def test_split(options: BenchOptions) -> tuple[np.ndarray, np.ndarray]:
    """Test images and labels: ``--images`` of them, the whole split by default."""
    split = load_mnist()
    n = options.images or (QUICK_IMAGES if options.quick else len(split.x_test))
    return split.x_test[:n], split.y_test[:n]


class Clusters:
    """Clusters by deployment, started on first use. An auto-managed cluster serves one
    protocol: moving to the next protocol stops it (its workers' memory goes with it)."""

    def __init__(self, options: BenchOptions) -> None:
        self.options = options
        self._clusters: dict[str, Cluster] = {}
        self._protocol: dict[str, str] = {}

    def cluster(self, deployment: str, protocol: str) -> Cluster | None:
        """The started, connected cluster of a deployment (None for in-process)."""
        if deployment == "inprocess":
            return None
        running = self._clusters.get(deployment)
        if running is not None and running.auto_managed and self._protocol[deployment] != protocol:
            running.stop()
            running = None
        if running is None:
            running = (Cluster.manual(self.options.cluster_config)
                       if deployment == "manual" else Cluster())
            running.start()
            running.connect()
            self._clusters[deployment] = running
        self._protocol[deployment] = protocol
        return running

    def stop(self) -> None:
        for cluster in self._clusters.values():
            cluster.stop()


@pytest.fixture(scope="session")
def clusters(options: BenchOptions) -> Iterator[Clusters]:
    pool = Clusters(options)
    try:
        yield pool
    finally:
        pool.stop()


@dataclass
class Models:
    """Keras and private models, built once per (protocol, deployment, batch)."""

    clusters: Clusters

    def __post_init__(self) -> None:
        self._keras: dict[int, Any] = {}
        self._plain: dict[int, Any] = {}
        self._private: dict[tuple[str, str, int], PrivateModel] = {}

    def keras(self, batch: int) -> Any:
        if batch not in self._keras:
            self._keras[batch] = load_model(batch_size=batch)
        return self._keras[batch]

    def plaintext(self, batch: int) -> Any:
        if batch not in self._plain:
            self._plain[batch] = plaintext_predictor(self.keras(batch))
        return self._plain[batch]

    def private(self, protocol: str, deployment: str, batch: int) -> PrivateModel:
        key = (protocol, deployment, batch)
        if key not in self._private:
            for old in [k for k in self._private if k[0] != protocol]:
                del self._private[old]  # one protocol's models at a time
            model = PrivateModel(self.keras(batch), protocol,
                                 cluster=self.clusters.cluster(deployment, protocol))
            model.predict(np.zeros((batch, 28, 28, 1), np.float32))  # build + trace
            self._private[key] = model
        return self._private[key]


@pytest.fixture(scope="session")
def models(clusters: Clusters) -> Models:
    return Models(clusters)
