"""Reading a saved run and the formatting helpers of its report (no TensorFlow)."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterable, Sequence

from harness.results.store import RESULTS_DIR, load_json

SUMMARY = "summary.json"
BENCHMARK = "benchmark.json"
REPORT_MD = "report.md"
REPORT_PNG = "report.png"
LATEST_DIR = RESULTS_DIR / "latest"

DEPLOYMENT_ORDER = ("inprocess", "cluster", "manual")
DEPLOYMENT_LABEL = {"inprocess": "in-process", "cluster": "cluster (4 processes, loopback)",
                    "manual": "manual cluster"}
PROTOCOL_LABEL = {"securenn": "SecureNN", "aby3": "ABY3", "pond": "Pond"}

# Accuracy metrics of a summary row: (key, label, format, higher is better).
ACCURACY_METRICS: tuple[tuple[str, str, str, bool], ...] = (
    ("plaintext_accuracy", "plaintext top-1", ".4f", True),
    ("private_accuracy", "private top-1", ".4f", True),
    ("argmax_agreement", "argmax agreement", ".4f", True),
    ("max_abs_err", "max abs err", ".3g", False),
    ("mean_abs_err", "mean abs err", ".3g", False),
    ("kl_divergence", "KL (nats)", ".3g", False),
)

# -- loading ----------------------------------------------------------------------------
def _run_dir(path: Path) -> Path:
    path = Path(path)
    return path.parent if path.is_file() else path


def load_run(run_dir: Path) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """``summary.json`` (required) and ``benchmark.json`` (None when absent) of a run."""
    run_dir = _run_dir(run_dir)
    summary_path = run_dir / SUMMARY
    if not summary_path.is_file():
        raise FileNotFoundError(f"{summary_path}: no such file (not a run directory?)")
    summary = load_json(summary_path)
    if not isinstance(summary, dict):
        raise ValueError(f"{summary_path}: expected a JSON object")
    bench_path = run_dir / BENCHMARK
    bench = load_json(bench_path) if bench_path.is_file() else None
    return summary, bench


def _rows(summary: dict[str, Any], key: str) -> list[dict[str, Any]]:
    rows = summary.get(key) or []
    return [r for r in rows if isinstance(r, dict)]


def _benchmarks(bench: dict[str, Any] | None, group: str) -> list[dict[str, Any]]:
    if not bench:
        return []
    return [b for b in bench.get("benchmarks", []) if b.get("group") == group]


def _order(values: Iterable[str], preferred: Sequence[str]) -> list[str]:
    seen = list(dict.fromkeys(values))
    return [v for v in preferred if v in seen] + [v for v in seen if v not in preferred]


def _sorted(rows: list[dict[str, Any]], protocols: Sequence[str]) -> list[dict[str, Any]]:
    protos = _order((r.get("protocol", "") for r in rows), protocols)
    deps = _order((r.get("deployment", "") for r in rows), DEPLOYMENT_ORDER)
    return sorted(rows, key=lambda r: (protos.index(r.get("protocol", "")),
                                       deps.index(r.get("deployment", "")),
                                       r.get("batch") or 0))


def _protocol_order(summary: dict[str, Any]) -> list[str]:
    return list((summary.get("options") or {}).get("protocols") or ["securenn", "aby3", "pond"])


# -- formatting -------------------------------------------------------------------------
def _num(value: Any, spec: str = ".3g") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, (int, float)):
        return format(value, spec)
    return str(value)


def _mb(n_bytes: Any) -> str:
    return "-" if n_bytes is None else f"{n_bytes / 1e6:.3g} MB"


def _cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def _table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return lines


def _title(summary: dict[str, Any]) -> tuple[str, str]:
    env = summary.get("environment") or {}
    return str(env.get("date") or "unknown date"), str(env.get("git_commit") or "unknown commit")


def _shown_path(path: Path) -> str:
    """``results/baseline.json`` for files of the repository, the full path otherwise."""
    try:
        return str(path.resolve().relative_to(RESULTS_DIR.parent))
    except ValueError:
        return str(path)


def _dep(row: dict[str, Any]) -> str:
    return str(row.get("deployment", "?"))


def _proto(name: str) -> str:
    return PROTOCOL_LABEL.get(name, name)



def _find(rows: list[dict[str, Any]], protocol: str, deployment: str,
          batch: int | None = None) -> dict[str, Any] | None:
    for r in rows:
        if r.get("protocol") == protocol and r.get("deployment") == deployment and (
                batch is None or r.get("batch") == batch):
            return r
    return None
