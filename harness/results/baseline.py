"""Accuracy regression check against the committed ``results/baseline.json``.

The baseline holds bounds with explicit tolerances per protocol for the tutorial model
and per model x protocol for the others::

    {"protocols": {"securenn": {"argmax_agreement": {"min": 1.0, "tolerance": 0.0}, ...}},
     "models": {"A": {"securenn": {...}, "aby3": {...}}, ...}}

A metric passes when ``value >= min - tolerance`` or ``value <= max + tolerance``.
Latency is deliberately absent: it is reported and compared, never asserted.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

from harness.results.store import RESULTS_DIR, load_json

BASELINE_PATH = RESULTS_DIR / "baseline.json"


def load_baseline(path: Path = BASELINE_PATH) -> dict[str, Any]:
    data = load_json(path)
    if not isinstance(data, dict) or "protocols" not in data:
        raise ValueError(f"{path}: expected an object with a 'protocols' key")
    return data


def bounds_for(baseline: dict[str, Any], protocol: str,
               model: str = "tutorial") -> dict[str, Any] | None:
    """The bounds of ``model`` under ``protocol``, or None if the baseline has none."""
    if model == "tutorial":
        return baseline["protocols"].get(protocol)
    return (baseline.get("models") or {}).get(model, {}).get(protocol)


def violations(protocol: str, metrics: dict[str, float],
               baseline: dict[str, Any], model: str = "tutorial") -> list[str]:
    """Messages naming each metric outside its bound: metric, baseline, new value."""
    bounds = bounds_for(baseline, protocol, model) or {}
    if model != "tutorial":
        protocol = f"{model}/{protocol}"
    out = []
    for metric, bound in bounds.items():
        if metric not in metrics:
            continue
        value, tol = float(metrics[metric]), float(bound.get("tolerance", 0.0))
        if "min" in bound and value < bound["min"] - tol:
            out.append(f"{protocol} {metric}: {value:.6g} is below the baseline minimum "
                       f"{bound['min']:.6g} (tolerance {tol:g})")
        if "max" in bound and value > bound["max"] + tol:
            out.append(f"{protocol} {metric}: {value:.6g} is above the baseline maximum "
                       f"{bound['max']:.6g} (tolerance {tol:g})")
    return out


def check_rows(rows: Iterable[dict[str, Any]], baseline: dict[str, Any]) -> list[str]:
    """Check accuracy rows of a summary (one per protocol/deployment)."""
    problems: list[str] = []
    for row in rows:
        problems += violations(row["protocol"], row, baseline, row.get("model", "tutorial"))
    return problems
