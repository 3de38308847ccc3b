"""The harness's pytest plugin: options, one session object, fixtures and result files.

Registered through the ``pytest11`` entry point (``pyproject.toml``), so ``pip install``
of the project makes ``--protocols`` & co. available to any pytest run. Loading it
imports no TensorFlow: fixtures import the inference layer when first used.

Plain ``pytest`` is secure without a wrapper: a driver connected to a cluster runs a
TensorFlow server that would listen on every interface, so before anything else
(``pytest_load_initial_conftests``) a pytest started from the command line restarts
itself once under the loopback ``bind()`` shim (``harness.net.bind``). Where it cannot
(``pytest.main()`` inside another program), cluster tests fail with the error that says
how to run them.
"""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from harness.names import DEPLOYMENTS, PROTOCOLS
from harness.pytest_fixtures import (  # noqa: F401  (fixtures of the plugin)
    clusters, models, options, recorder, release_after, test_split)

QUICK_IMAGES = 64
LOOPBACK = "127.0.0.1"
_NO_REEXEC = "HARNESS_PYTEST_NO_REEXEC"


# -- option types: clear errors ------------------------------------------------------------
def _items(text: str, what: str) -> list[str]:
    items = [v.strip() for v in text.split(",") if v.strip()]
    if not items:
        raise argparse.ArgumentTypeError(f"{what}: give at least one value")
    return items


def _choices(kind: str, choices: tuple[str, ...]) -> Any:
    def parse(text: str) -> tuple[str, ...]:
        out = []
        for item in _items(text, kind):
            if item.lower() not in choices:
                raise argparse.ArgumentTypeError(
                    f"unknown {kind} {item!r}; choose from {', '.join(choices)}")
            out.append(item.lower())
        return tuple(dict.fromkeys(out))
    parse.__name__ = kind  # argparse names the option's type in its messages
    return parse


def parse_positive_ints(text: str) -> tuple[int, ...]:
    """``1,32`` -> (1, 32); a clear error for anything that is not a positive integer."""
    out = []
    for item in _items(text, "sizes"):
        if not item.isdigit() or int(item) < 1:
            raise argparse.ArgumentTypeError(f"{item!r} is not a positive integer (e.g. 1,32)")
        out.append(int(item))
    return tuple(dict.fromkeys(out))


def parse_positive_int(text: str) -> int:
    if not text.strip().isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive integer")
    return int(text)


def parse_models(text: str) -> tuple[str, ...]:
    """Zoo names or model files; unknown names and missing files are refused now."""
    from models import zoo  # noqa: PLC0415  (no TensorFlow)

    out = []
    for item in _items(text, "models"):
        if Path(item).exists():
            out.append(item)
            continue
        try:
            out.append(zoo.get(item).name)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"{exc} (or give the path of a model file)") from None
    return tuple(dict.fromkeys(out))


def parse_networks(text: str) -> tuple[Any, ...]:
    from harness.net.netprofile import parse_networks as parse  # noqa: PLC0415

    return parse(text)


parse_protocols = _choices("protocol", PROTOCOLS)
parse_deployments = _choices("deployment", DEPLOYMENTS)
parse_variants = _choices("variant", ("stock", "tuned"))


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("harness", "private-inference benchmark harness")
    group.addoption("--protocols", type=parse_protocols, default=PROTOCOLS,
                    help=f"comma-separated protocols (default: {','.join(PROTOCOLS)})")
    group.addoption("--deployments", type=parse_deployments, default=("inprocess", "cluster"),
                    help="comma-separated: inprocess, cluster, manual (default: inprocess,cluster)")
    group.addoption("--cluster-config", default=None, metavar="FILE",
                    help="hostmap JSON of hand-started workers, for --deployments manual")
    group.addoption("--batch-sizes", type=parse_positive_ints, default=None,
                    help="comma-separated batch sizes (default: 1,32; 1 with --quick)")
    group.addoption("--images", type=parse_positive_int, default=None,
                    help="test images for accuracy (default: the whole test split)")
    group.addoption("--models", type=parse_models, default=("tutorial",),
                    help="comma-separated zoo names or model files (default: tutorial)")
    group.addoption("--variants", type=parse_variants, default=None,
                    help="protocol code: stock (tf-encrypted's own) and/or tuned (default: "
                         "tuned; the full suite also times stock beside it)")
    group.addoption("--network", type=parse_networks, default=(), dest="network",
                    help="shaped networks for cluster runs: loopback, lan, wan or RATE/RTT "
                         "(e.g. 100mbit/40ms), comma-separated (default: off)")
    group.addoption("--quick", action="store_true",
                    help="a small CI-sized subset: fewer images and rounds")
    group.addoption("--results-dir", default=None, metavar="DIR",
                    help="where runs are written (default: results/ under the rootdir)")


@dataclass
class HarnessSession:
    """Everything the plugin keeps for one pytest session (``config.stash[SESSION]``)."""

    protocols: tuple[str, ...]
    deployments: tuple[str, ...]
    batch_sizes: tuple[int, ...]
    images: int | None
    models: tuple[str, ...]
    variants: tuple[str, ...]
    compared_variants: tuple[str, ...]
    networks: tuple[Any, ...]
    quick: bool
    cluster_config: str | None
    results_dir: Path
    recorder: Any = None
    staging: Path | None = None
    notes: list[str] = field(default_factory=list)

    @classmethod
    def from_config(cls, config: pytest.Config) -> "HarnessSession":
        opt = config.getoption
        deployments = tuple(opt("--deployments"))
        if "manual" in deployments and not opt("--cluster-config"):
            raise pytest.UsageError("--deployments manual needs --cluster-config FILE")
        quick = bool(opt("--quick"))
        results = opt("--results-dir") or (config.rootpath / "results")
        chosen = opt("--variants")
        # Benchmarks time the tuned code; the stock/tuned comparison runs in the full
        # suite by default, and wherever --variants names two or more.
        compared = tuple(chosen) if chosen else (() if quick else ("stock", "tuned"))
        return cls(
            protocols=tuple(opt("--protocols")), deployments=deployments,
            batch_sizes=opt("--batch-sizes") or ((1,) if quick else (1, 32)),
            images=opt("--images"), models=tuple(opt("--models")),
            variants=tuple(chosen or ("tuned",)), compared_variants=compared, networks=tuple(opt("network")),
            quick=quick, cluster_config=opt("--cluster-config"), results_dir=Path(results),
        )

    def as_dict(self) -> dict[str, Any]:
        keep = ("protocols", "deployments", "batch_sizes", "images", "models", "variants",
                "compared_variants", "quick", "cluster_config")
        out = {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(self).items()
               if k in keep}
        out["networks"] = [str(n) for n in self.networks]
        return out


SESSION = pytest.StashKey[HarnessSession]()


def session_of(config: pytest.Config) -> HarnessSession:
    return config.stash[SESSION]


# -- the loopback shim for plain `pytest` ----------------------------------------------------
def _started_as_pytest_cli() -> bool:
    argv = getattr(sys, "orig_argv", sys.argv)
    prog = Path(sys.argv[0]).name
    return prog in ("pytest", "py.test", "__main__.py") or argv[1:3] == ["-m", "pytest"]


@pytest.hookimpl(tryfirst=True)
def pytest_load_initial_conftests(early_config: pytest.Config, parser: pytest.Parser,
                                  args: list[str]) -> None:
    """Restart this pytest once under the loopback shim, before TensorFlow can load."""
    from harness.net import bind  # noqa: PLC0415  (no TensorFlow)

    if early_config.known_args_namespace.verbose <= 0:
        # TensorFlow's C++ start-up lines (CUDA probing, cuInit) only with -v
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if bind.active(LOOPBACK) or os.environ.get(_NO_REEXEC) or "tensorflow" in sys.modules:
        return
    if not _started_as_pytest_cli():
        return  # pytest.main() in another program: Cluster.connect() says what to do
    env = bind.shim_env(LOOPBACK)
    env[_NO_REEXEC] = "1"  # never loop, even if the shim cannot take effect
    capture = early_config.pluginmanager.getplugin("capturemanager")
    if capture is not None:  # give the new process our real stdout/stderr back
        capture.stop_global_capturing()
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *getattr(sys, "orig_argv", sys.argv)[1:]], env)


def pytest_configure(config: pytest.Config) -> None:
    for line in ("cluster: starts real worker processes",
                 "netns: needs root and `ip netns` (several hosts)",
                 "slow: takes more than a few seconds"):
        config.addinivalue_line("markers", line)
    config.stash[SESSION] = HarnessSession.from_config(config)
    from harness.net.interrupt import install_interrupt_watchdog  # noqa: PLC0415
    from harness.pytest_results import start_results  # noqa: PLC0415

    start_results(config)
    install_interrupt_watchdog()


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """The run's dimensions, for benchmarks (tests using ``benchmark``) that name them."""
    if "benchmark" not in metafunc.fixturenames:
        return
    opts = session_of(metafunc.config)
    # Only the protocol is session-scoped: pytest then runs the tests protocol by
    # protocol, and each protocol's models and cluster are freed before the next.
    dims = (("protocol", opts.protocols, "session", None),
            ("model", opts.models, None, None),
            ("variant", opts.variants, None, None),
            ("deployment", opts.deployments, None, None),
            ("network", opts.networks, None, [str(n) for n in opts.networks]),
            ("batch", opts.batch_sizes, None, [f"batch{b}" for b in opts.batch_sizes]))
    own = {n.strip() for m in metafunc.definition.iter_markers("parametrize")
           for n in (m.args[0].split(",") if isinstance(m.args[0], str) else m.args[0])}
    for name, values, scope, ids in dims:
        if name in metafunc.fixturenames and name not in own:
            metafunc.parametrize(name, values, scope=scope, ids=ids)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A run without benchmarks (the tests) has no benchmark.json to write: tell
    pytest-benchmark, which would otherwise warn that it saved nothing."""
    if any("benchmark" in getattr(item, "fixturenames", ()) for item in items):
        return
    bench = getattr(config, "_benchmarksession", None)
    staged = session_of(config).staging
    if bench is not None and staged is not None and getattr(bench, "json", None) is not None \
            and str(bench.json).startswith(str(staged)):
        bench.json = None


def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> None:
    release_after(item, nextitem)  # a protocol's models and clusters, after its last test


@pytest.hookimpl(hookwrapper=True, trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> Any:
    yield  # pytest-benchmark has written benchmark.json into the staging folder by now
    from harness.pytest_results import finish_results  # noqa: PLC0415

    finish_results(session.config, exitstatus)


@pytest.hookimpl(optionalhook=True)  # a hook of pytest-benchmark, when installed
def pytest_benchmark_update_json(config: pytest.Config, benchmarks: Any,
                                 output_json: dict[str, Any]) -> None:
    """pytest-benchmark's own JSON carries the run's harness options too."""
    if SESSION in config.stash:
        output_json["harness"] = session_of(config).as_dict()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    for note in session_of(terminalreporter.config).notes:
        terminalreporter.write_line(note)


@pytest.fixture(scope="session")
def cluster() -> Any:
    """A session-wide auto-managed cluster (3 servers + client worker), stopped at the end."""
    from harness.net.cluster import Cluster  # noqa: PLC0415

    with Cluster() as running:
        yield running
