"""Result files of a pytest-benchmark run: staged during the session, published at its end.

``results/runs/<stamp>/`` and ``results/latest/`` receive ``benchmark.json``
(pytest-benchmark's), ``summary.json`` and the report, only for a run that was not
interrupted; the files are completed in a staging folder and renamed into place.
"""
from __future__ import annotations

import datetime as _dt
import logging
import shutil
import tempfile
from pathlib import Path

import pytest

from harness.net.interrupt import on_interrupt
from harness.results.store import Recorder, publish, write_json

logger = logging.getLogger("harness.bench")


def start_results(config: pytest.Config) -> None:
    from harness.pytest_plugin import session_of  # noqa: PLC0415

    session = session_of(config)
    session.recorder = Recorder(options=session.as_dict())
    session.staging = Path(tempfile.mkdtemp(prefix="tfe-harness-run-"))
    staging = session.staging
    on_interrupt(lambda: shutil.rmtree(staging, ignore_errors=True))
    if config.getoption("benchmark_json", None) is None:  # read by pytest-benchmark later
        config.option.benchmark_json = session.staging / "benchmark.json"


def finish_results(config: pytest.Config, exitstatus: int) -> None:
    from harness.pytest_plugin import session_of  # noqa: PLC0415

    session = session_of(config)
    staging = session.staging
    if staging is None:
        return
    interrupted = exitstatus in (pytest.ExitCode.INTERRUPTED, pytest.ExitCode.INTERNAL_ERROR)
    try:
        if interrupted:
            logger.warning("run interrupted: no result files written")
        elif not session.recorder.empty():
            run_dir = _publish_run(staging, session.recorder, session.results_dir)
            reporter = config.pluginmanager.get_plugin("terminalreporter")
            if reporter is not None:
                reporter.write_line(f"results: {run_dir} (and {session.results_dir / 'latest'})")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        session.staging = None


def _publish_run(staging: Path, recorder: Recorder, results_dir: Path) -> Path:
    """Complete the run's files in ``staging``, then move them under ``results_dir``."""
    from harness.results.report import write_report  # noqa: PLC0415

    write_json(staging / "summary.json", recorder.summary())
    write_report(staging)
    results_dir.mkdir(parents=True, exist_ok=True)
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    copies = []
    for _ in range(2):  # same filesystem as the targets, so the final renames are atomic
        copy = Path(tempfile.mkdtemp(prefix=".incoming-", dir=results_dir))
        shutil.copytree(staging, copy, dirs_exist_ok=True)
        copies.append(copy)
    run_dir = publish(copies[0], results_dir / "runs" / stamp)
    publish(copies[1], results_dir / "latest")
    return run_dir
