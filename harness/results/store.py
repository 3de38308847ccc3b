"""Result files of a benchmark run: collected during the session, written at its end.

A run directory holds ``benchmark.json`` (pytest-benchmark's own), ``summary.json``
(accuracy, communication, memory, environment) and the human report. Files are
written into a temporary sibling directory and renamed into place only when the
session finished, so an interrupted run leaves no half-written results.
"""
from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import platform
import shutil
import tempfile
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

SCHEMA = 1
RESULTS_DIR = Path(__file__).resolve().parents[2] / "results"


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def environment() -> dict[str, Any]:
    """Versions, machine, commit and date of this run (machine and commit as
    pytest-benchmark records them in its own JSON)."""
    from pytest_benchmark.plugin import pytest_benchmark_generate_machine_info  # noqa: PLC0415
    from pytest_benchmark.utils import get_commit_info  # noqa: PLC0415

    machine = pytest_benchmark_generate_machine_info()
    commit = get_commit_info()
    cpu = machine.get("cpu") or {}
    head = (commit.get("id") or "")[:7]
    return {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "python": machine.get("python_version") or platform.python_version(),
        "platform": platform.platform(),
        "cpu": cpu.get("brand_raw") or platform.processor() or "unknown",
        "cores": os.cpu_count(),
        "git_commit": (head + ("-dirty" if commit.get("dirty") else "")) if head else None,
        "packages": {d: _version(d) for d in
                     ("tensorflow", "tf-keras", "tf-encrypted", "numpy", "pytest-benchmark")},
    }


@dataclass
class Recorder:
    """Rows gathered by the benchmark session (one list per table of the summary)."""

    options: dict[str, Any] = field(default_factory=dict)
    accuracy: list[dict[str, Any]] = field(default_factory=list)
    latency: list[dict[str, Any]] = field(default_factory=list)
    communication: list[dict[str, Any]] = field(default_factory=list)
    memory: list[dict[str, Any]] = field(default_factory=list)
    cluster: list[dict[str, Any]] = field(default_factory=list)
    serving_load: list[dict[str, Any]] = field(default_factory=list)  # bench/test_serving_load
    network: list[dict[str, Any]] = field(default_factory=list)  # bench/test_network
    variants: list[dict[str, Any]] = field(default_factory=list)  # bench/test_variants
    total_memory: dict[str, Any] = field(default_factory=dict)  # harness.results.rss

    def summary(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "environment": environment(),
            "options": self.options,
            "accuracy": self.accuracy,
            "latency": self.latency,
            "communication": self.communication,
            "memory": self.memory,
            "cluster": self.cluster,
            "serving_load": self.serving_load,
            "network": self.network,
            "variants": self.variants,
            "total_memory": self.total_memory,
        }

    def empty(self) -> bool:
        return not any((self.accuracy, self.latency, self.communication, self.memory,
                        self.cluster, self.serving_load, self.network, self.variants))


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` atomically (temp file + rename): readers see the old file or the
    whole new one, and a failed write leaves no temp file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` atomically (temp file + rename), readable by all (0644)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, 0o644)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically (``write_text``)."""
    write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def publish(staging: Path, final: Path) -> Path:
    """Move a finished staging directory to ``final`` (replacing an older one)."""
    final.parent.mkdir(parents=True, exist_ok=True)
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
    os.replace(staging, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_json(path: Path) -> Any:
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)
