"""Run-to-run comparison: latency through pytest-benchmark's own ``compare`` and our
accuracy figures side by side (no TensorFlow)."""
from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from harness.results.baseline import BASELINE_PATH, load_baseline, violations
from harness.results.report_tables import (
    BENCHMARK, ACCURACY_METRICS, _run_dir, load_run, _rows, _num, _table, _title, _proto)

# -- comparison -------------------------------------------------------------------------
def _benchmark_cli() -> list[str]:
    script = Path(sys.executable).with_name("pytest-benchmark")
    if script.is_file():
        return [str(script)]
    found = shutil.which("pytest-benchmark")
    if found:
        return [found]
    return [sys.executable, "-c", "import sys; from pytest_benchmark.cli import main; "
            "sys.exit(main())"]


def benchmark_compare(bench_a: Path, bench_b: Path, timeout: float = 120.0) -> str:
    """pytest-benchmark's own comparison table of two ``benchmark.json`` files."""
    # Run in a scratch directory (the command creates ./.benchmarks as its storage) on
    # copies named a/ and b/: the rows are labelled "a/benchmark" and "b/benchmark", and
    # a run compared with itself is read from two files (pytest-benchmark's loader
    # mutates what it has loaded, so the same path twice fails).
    with tempfile.TemporaryDirectory(prefix="bench-compare-") as scratch:
        files = []
        for tag, src in (("a", bench_a), ("b", bench_b)):
            dst = Path(scratch, tag, BENCHMARK)
            dst.parent.mkdir()
            shutil.copyfile(src, dst)
            files.append(str(dst.relative_to(scratch)))
        cmd = [*_benchmark_cli(), "compare", "--group-by", "group", "--sort", "name",
               "--columns", "median,iqr,mean,stddev,min,max,rounds", "--time-unit", "ms",
               *files]
        out = subprocess.run(cmd, capture_output=True, text=True, cwd=scratch,
                             timeout=timeout, check=False)
    if out.returncode != 0:
        tail = "\n".join(out.stderr.strip().splitlines()[-5:])
        raise RuntimeError(f"pytest-benchmark compare failed ({out.returncode}): {tail}")
    return out.stdout.strip("\n")


def _delta(a: Any, b: Any) -> str:
    if not isinstance(a, (int, float)) or not isinstance(b, (int, float)):
        return "-"
    d = b - a
    rel = f" ({d / a:+.1%})" if a else ""
    return f"{d:+.3g}{rel}"


def _accuracy_compare(sum_a: dict[str, Any], sum_b: dict[str, Any],
                      baseline: dict[str, Any] | None) -> list[str]:
    rows_a = {(r.get("protocol"), r.get("deployment")): r for r in _rows(sum_a, "accuracy")}
    rows_b = {(r.get("protocol"), r.get("deployment")): r for r in _rows(sum_b, "accuracy")}
    keys = list(dict.fromkeys([*rows_a, *rows_b]))
    if not keys:
        return ["## Accuracy", "", "No accuracy rows in either run.", ""]
    table, flagged = [], []
    for proto, dep in keys:
        a, b = rows_a.get((proto, dep), {}), rows_b.get((proto, dep), {})
        label = (_proto(str(proto)), dep)
        if not a or not b:
            table.append((*label, "all", "-" if not a else "measured", "-" if not b else
                          "measured", "-", "only in run " + ("b" if not a else "a")))
            continue
        table.append((*label, "images", _num(a.get("images"), "d"), _num(b.get("images"), "d"),
                      "-", ""))
        for key, _, spec, higher_better in ACCURACY_METRICS:
            va, vb = a.get(key), b.get(key)
            if va is None and vb is None:
                continue
            status = []
            if baseline is not None and proto in baseline["protocols"]:
                for run, value in (("a", va), ("b", vb)):
                    if value is not None and violations(str(proto), {key: value}, baseline):
                        status.append(f"{run} outside baseline")
                bad_b = vb is not None and violations(str(proto), {key: vb}, baseline)
                if bad_b:
                    flagged += [f"[{dep}] {m}" for m in bad_b]
            if va is None or vb is None:
                status.append("only in run " + ("b" if va is None else "a"))
            elif va != vb:
                status.append("better" if (vb > va) == higher_better else "worse")
            table.append((*label, key, _num(va, spec), _num(vb, spec), _delta(va, vb),
                          ", ".join(status) or "="))
    lines = ["## Accuracy", "",
             "Per protocol and deployment; *worse*/*better* is the direction of the change, "
             "*outside baseline* marks a value beyond the bounds of the baseline file.", "",
             *_table(("protocol", "deployment", "metric", "a", "b", "delta b - a", "status"),
                     table), ""]
    if baseline is not None:
        if flagged:
            lines += ["**Run b is worse than the baseline:**", "", *(f"- {m}" for m in flagged), ""]
        else:
            lines += ["Run b is within the baseline.", ""]
    return lines


def _latency_compare(sum_a: dict[str, Any], sum_b: dict[str, Any]) -> list[str]:
    rows_a = {(r.get("protocol"), r.get("deployment"), r.get("batch")): r
              for r in _rows(sum_a, "latency")}
    rows_b = {(r.get("protocol"), r.get("deployment"), r.get("batch")): r
              for r in _rows(sum_b, "latency")}
    keys = list(dict.fromkeys([*rows_a, *rows_b]))
    if not keys:
        return []
    table = []
    for key in keys:
        a, b = rows_a.get(key, {}), rows_b.get(key, {})
        ma, mb = a.get("median_ms"), b.get("median_ms")
        ratio = f"{mb / ma:.3g}" if ma and mb else "-"
        table.append((_proto(str(key[0])), key[1], key[2], _num(ma, ".4g"), _num(mb, ".4g"),
                      ratio, _num(a.get("private_over_plaintext"), ".3g"),
                      _num(b.get("private_over_plaintext"), ".3g")))
    return ["Medians from the summaries (latency is reported, never asserted):", "",
            *_table(("protocol", "deployment", "batch", "a median ms", "b median ms", "b / a",
                     "a private/plaintext", "b private/plaintext"), table), ""]


def compare(run_a: Path, run_b: Path, baseline_path: Path | None = BASELINE_PATH) -> str:
    """A Markdown comparison of two saved runs (a = before, b = after)."""
    run_a, run_b = _run_dir(run_a), _run_dir(run_b)
    sum_a, bench_a = load_run(run_a)
    sum_b, bench_b = load_run(run_b)
    lines = ["# Comparison of two runs", ""]
    for tag, path, summary in (("a", run_a, sum_a), ("b", run_b, sum_b)):
        date, commit = _title(summary)
        lines.append(f"- **{tag}**: `{path}` ({date}, commit {commit})")
    lines += ["", "## Latency", ""]
    if bench_a is not None and bench_b is not None:
        try:
            table = benchmark_compare(run_a / BENCHMARK, run_b / BENCHMARK)
        except (OSError, RuntimeError, subprocess.TimeoutExpired) as exc:
            lines += [f"pytest-benchmark compare could not run: {exc}", ""]
        else:
            lines += ["pytest-benchmark compare (grouped by benchmark group; the figure in "
                      "parentheses is relative to the best of the group):", "",
                      "```text", table, "```", ""]
    else:
        missing = [str(p / BENCHMARK) for p, b in ((run_a, bench_a), (run_b, bench_b)) if b is None]
        lines += [f"No pytest-benchmark comparison: missing {', '.join(missing)}.", ""]
    lines += _latency_compare(sum_a, sum_b)
    baseline = None
    if baseline_path is not None and Path(baseline_path).is_file():
        baseline = load_baseline(Path(baseline_path))
    lines += _accuracy_compare(sum_a, sum_b, baseline)
    return "\n".join(lines).rstrip() + "\n"

