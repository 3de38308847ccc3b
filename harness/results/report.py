"""The human report of a benchmark run, run-to-run comparison and the baseline check.

``write_report(run_dir)`` turns ``summary.json`` (ours) and ``benchmark.json``
(pytest-benchmark's, optional) into ``report.md`` and ``report.png``. It can be
re-run at any time on a saved run (``python -m harness report RUN_DIR``): only the
saved JSON is read. Both files are rendered in memory first and then written
atomically (temp file + rename), so a failure leaves the previous report, if any,
untouched and no partial or temporary file behind.

``compare(run_a, run_b)`` shows latency through pytest-benchmark's own ``compare``
and our accuracy figures side by side; ``check(run_dir, baseline)`` lists the
accuracy rows outside ``results/baseline.json``.

This module does not import TensorFlow (matplotlib is imported only to draw).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

from harness.results.baseline import BASELINE_PATH, bounds_for, load_baseline, violations
from harness.results.compare import compare  # noqa: F401  (python -m harness compare)
from harness.results import report_network, report_serving, report_speed
from harness.results.plots import render_plot
from harness.results.store import write_bytes
from harness.results.report_tables import (
    SUMMARY, BENCHMARK, REPORT_MD, REPORT_PNG, LATEST_DIR, ACCURACY_METRICS, _run_dir,
    load_run, _rows, _benchmarks, _sorted, _protocol_order, _num, _mb, _table, _title,
    _shown_path, _dep, _proto)

logger = logging.getLogger(__name__)

RTT_PNG = "latency_vs_rtt.png"


# -- markdown sections ------------------------------------------------------------------
def _environment(summary: dict[str, Any], bench: dict[str, Any] | None) -> list[str]:
    env = summary.get("environment") or {}
    rows: list[tuple[str, Any]] = [
        ("date (UTC)", env.get("date")), ("git commit", env.get("git_commit")),
        ("python", env.get("python")), ("platform", env.get("platform")),
        ("CPU", env.get("cpu")), ("cores", env.get("cores")),
    ]
    for name, version in (env.get("packages") or {}).items():
        rows.append((name, version or "not installed"))
    if bench and bench.get("datetime"):
        rows.append(("pytest-benchmark run", bench["datetime"]))
    for key, value in (summary.get("options") or {}).items():
        if isinstance(value, list):
            value = ", ".join(map(str, value))
        rows.append((f"option `{key}`", "-" if value in (None, "") else value))
    return ["## Environment", "", *_table(("", "value"), rows), ""]


def _by_model(rows: list[dict[str, Any]]) -> list[tuple[str, list[dict[str, Any]]]]:
    """Rows grouped by model (rows of runs before models existed: the tutorial model)."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(str(r.get("model", "tutorial")), []).append(r)
    return list(groups.items())


def _per_model(rows: list[dict[str, Any]], headers: Sequence[str],
               cells: Any) -> list[str]:
    """One table per model (``cells(row)`` gives a row's cells)."""
    lines: list[str] = []
    for model, group in _by_model(rows):
        lines += [f"### Model `{model}`", "", *_table(headers, [cells(r) for r in group]), ""]
    return lines


def _variant(r: dict[str, Any]) -> str:
    return str(r.get("variant", "tuned"))


def _latency(summary: dict[str, Any], bench: dict[str, Any] | None,
             protocols: Sequence[str]) -> list[str]:
    rows = _sorted(_rows(summary, "latency"), protocols)
    if not rows:
        return []
    key = lambda r: (r.get("model", "tutorial"), r.get("protocol"), _variant(r),  # noqa: E731
                     r.get("batch"))
    inproc = {key(r): r.get("median_ms") for r in rows if r.get("deployment") == "inprocess"}

    def cells(r: dict[str, Any]) -> tuple[Any, ...]:
        over = r.get("over_inprocess")
        if over is None and r.get("deployment") != "inprocess":
            base = inproc.get(key(r))
            if base and r.get("median_ms") is not None:
                over = r["median_ms"] / base
        return (_proto(r.get("protocol", "?")), _variant(r), _dep(r), r.get("batch"),
                _num(r.get("median_ms"), ".4g"), _num(r.get("plaintext_median_ms"), ".3g"),
                _num(r.get("private_over_plaintext"), ".3g"), _num(over, ".3g"),
                _num(r.get("first_call_s"), ".3g"), _num(r.get("rounds"), "d"))

    lines = ["## Latency", "",
             "Steady-state private prediction (one call = one batch), median over the "
             "benchmark rounds; the plaintext Keras median is measured in the same test. "
             "Variant *stock* is tf-encrypted's own protocol code, *tuned* adds our speed "
             "changes.", "",
             *_per_model(rows, ("protocol", "variant", "deployment", "batch", "median ms",
                                "plaintext median ms", "private / plaintext",
                                "cluster / in-process", "first call s", "rounds"), cells)]
    plain = [b for b in (bench or {}).get("benchmarks", [])
             if (b.get("extra_info") or {}).get("kind") == "plaintext"]
    if plain:
        lines += ["Plaintext Keras benchmarks (pytest-benchmark groups `plaintext-batch<B>`):", ""]
        lines += _table(("batch", "median ms", "rounds"),
                        ((b["extra_info"].get("batch"), _num(b["stats"]["median"] * 1e3, ".3g"),
                          b["stats"].get("rounds")) for b in
                         sorted(plain, key=lambda b: b["extra_info"].get("batch") or 0)))
        lines.append("")
    return lines


def _accuracy(summary: dict[str, Any], protocols: Sequence[str],
              baseline_path: Path | None) -> list[str]:
    rows = _sorted(_rows(summary, "accuracy"), protocols)
    if not rows:
        return []
    lines = ["## Accuracy", "",
             "Private logits against the plaintext Keras logits of the same test images "
             "(KL: mean KL(softmax(plaintext) || softmax(private))).", "",
             *_per_model(rows, ("protocol", "deployment", "batch", "images",
                                *(label for _, label, _, _ in ACCURACY_METRICS)),
                         lambda r: (_proto(r.get("protocol", "?")), _dep(r), r.get("batch"),
                                    r.get("images"), *(_num(r.get(key), spec) for key, _, spec, _
                                                       in ACCURACY_METRICS)))]
    if baseline_path is not None and Path(baseline_path).is_file():
        name = _shown_path(Path(baseline_path))
        try:
            problems = check_summary(summary, load_baseline(Path(baseline_path)))
        except (ValueError, KeyError, TypeError, OSError) as exc:
            lines += [f"Baseline `{name}` could not be read: {exc}", ""]
        else:
            if problems:
                lines += [f"**Outside the baseline** (`{name}`):", ""]
                lines += [f"- {p}" for p in problems]
            else:
                lines.append(f"All rows are within the bounds of `{name}`.")
            lines.append("")
    return lines


def _communication(summary: dict[str, Any], protocols: Sequence[str]) -> list[str]:
    rows = _sorted(_rows(summary, "communication"), protocols)
    if not rows:
        return []
    def cells(r: dict[str, Any]) -> tuple[Any, ...]:
        links = r.get("links")
        if links:  # exact: {"a->b": {"bytes", "tensors"}}
            detail = ", ".join(f"{n} {v.get('bytes', 0):,} B / {v.get('tensors', 0)}"
                               for n, v in links.items() if v.get("bytes"))
        else:  # older runs: bytes per link only
            parts = r.get("by_link_per_batch") or r.get("by_worker_per_batch") or {}
            detail = ", ".join(f"{n} {_mb(v)}" for n, v in parts.items() if v)
        return (_proto(r.get("protocol", "?")), _variant(r), _dep(r), r.get("batch"),
                _mb(r.get("bytes_per_prediction")), _num(r.get("bytes_per_batch"), ",.0f"),
                _num(r.get("tensors_per_batch"), "d"), _num(r.get("comm_rounds"), "d"),
                _num(r.get("driver_bytes_per_batch"), ",.0f"), detail or "-")

    methods = sorted({str(r.get("method", "-")) for r in rows})
    lines = ["## Communication", "",
             "What the players send each other per prediction (one image) and per call (one "
             "batch): bytes, tensors and sequential communication rounds (the longest chain of "
             "dependent transfers); the driver's traffic to and from the workers (inputs, "
             "results) apart. Per link: bytes / tensors per batch. Method: "
             + "; ".join(methods) + ".", "",
             *_per_model(rows, ("protocol", "variant", "deployment", "batch", "per prediction",
                                "bytes per batch", "tensors per batch", "rounds",
                                "driver bytes per batch", "by link, per batch"), cells)]
    if any(not r.get("bytes_per_batch") for r in rows):
        lines += ["A zero means the method saw no traffic for that row: it did not capture "
                  "the players' messages, not that the protocol sent nothing.", ""]
    return lines


def _memory(summary: dict[str, Any], protocols: Sequence[str]) -> list[str]:
    rows = _sorted(_rows(summary, "memory"), protocols)
    if not rows:
        return []
    table = []
    for r in rows:
        workers = r.get("workers_peak_rss_mb") or {}
        table.append((_proto(r.get("protocol", "?")), _dep(r), r.get("batch"),
                      _num(r.get("driver_peak_rss_mb"), ".0f"),
                      ", ".join(f"{n} {v:.0f}" for n, v in workers.items()) or "-"))
    return ["## Memory", "",
            "Peak resident set size so far (MiB) after the latency benchmark of the row: the "
            "driver's is cumulative over the session, each worker's is its VmHWM.", "",
            *_table(("protocol", "deployment", "batch", "driver peak RSS MiB",
                     "workers peak RSS MiB"), table), ""]


def _cluster(summary: dict[str, Any]) -> list[str]:
    rows = _rows(summary, "cluster")
    if not rows:
        return []
    table = [(r.get("workers"), _num(r.get("start_to_ready_s_median"), ".3g"), r.get("rounds"))
             for r in rows]
    return ["## Cluster start-to-ready", "",
            "Auto-managed cluster: from spawning the worker processes until every one has "
            "reported ready (its TensorFlow server started).", "",
            *_table(("workers", "median s", "rounds"), table), ""]


def _harness_figures(bench: dict[str, Any] | None) -> list[str]:
    sampler = _benchmarks(bench, "sampler")
    overhead = _benchmarks(bench, "harness-overhead")
    if not sampler and not overhead:
        return []
    lines = ["## Sampler and harness overhead", ""]
    if sampler:
        rows = []
        for b in sampler:
            info = b.get("extra_info") or {}
            threads = info.get("threads")
            rows.append((b.get("name"), info.get("dtype", "-"), _num(info.get("elements"), "d"),
                         _num(b["stats"]["median"] * 1e3, ".3g"), _num(info.get("mb_per_s"), ".4g"),
                         "TF default" if threads == 0 else _num(threads, "d")))
        lines += ["Seeded ChaCha20 sampler (our op behind every share):", "",
                  *_table(("benchmark", "dtype", "elements / call", "median ms", "MB/s",
                           "intra-op threads"), rows), ""]
    if overhead:
        rows = []
        for b in overhead:
            info = b.get("extra_info") or {}
            rows.append((b.get("name"), _num(info.get("bare_loop_ms"), ".4g"),
                         _num(info.get("benchmark_ms"), ".4g"),
                         _num(info.get("overhead_pct"), ".3g")))
        lines += ["Harness overhead: benchmarked `predict` against a bare loop on the compiled "
                  "step (same model, batch 1).", "",
                  *_table(("benchmark", "bare loop ms", "benchmarked ms", "overhead %"), rows), ""]
    return lines


def render_markdown(summary: dict[str, Any], bench: dict[str, Any] | None = None,
                    baseline_path: Path | None = BASELINE_PATH) -> str:
    """The Markdown report of a run (sections without data are left out)."""
    date, commit = _title(summary)
    protocols = _protocol_order(summary)
    lines = [f"# Private inference benchmark: {date}, commit {commit}", "",
             f"Generated from `{SUMMARY}`" + (f" and `{BENCHMARK}`" if bench else "")
             + f" by `python -m harness report`; plot: `{REPORT_PNG}`.", ""]
    for section in (_environment(summary, bench), _latency(summary, bench, protocols),
                    _accuracy(summary, protocols, baseline_path),
                    _communication(summary, protocols), _memory(summary, protocols),
                    _cluster(summary), _harness_figures(bench), report_network.section(summary),
                    report_serving.section(summary), report_speed.section(summary),
                    _papers(summary)):
        lines += section
    return "\n".join(lines).rstrip() + "\n"



def _papers(summary: dict[str, Any]) -> list[str]:
    """Ours beside the published figures for the same networks (``papers.json``, cited)."""
    from harness.results import papers  # noqa: PLC0415

    ours = []
    comm = {(r.get("model", "tutorial"), r.get("protocol"), r.get("batch")): r
            for r in _rows(summary, "communication")}
    for row in _rows(summary, "latency"):
        if row.get("deployment") != "cluster" or row.get("variant", "tuned") != "tuned":
            continue
        key = (row.get("model", "tutorial"), row.get("protocol"), row.get("batch"))
        mine = {"model": key[0], "protocol": key[1], "batch": key[2],
                "lan_s": row.get("median_ms", 0) / 1e3, "lan_mark": "measured"}
        if key in comm:
            mine["bytes_per_prediction"] = comm[key].get("bytes_per_prediction")
            if comm[key].get("comm_rounds") is not None:
                mine["rounds"] = comm[key]["comm_rounds"]
        ours.append(mine)
    for row in _rows(summary, "network"):
        profile = str(row.get("network"))
        if profile not in ("lan", "wan"):
            continue
        mark = "emulated" if row.get("delay") == "emulated" else "projected"
        for mine in ours:
            if (mine["model"], mine["protocol"], mine["batch"]) == (
                    "tutorial", row.get("protocol"), row.get("batch")):
                mine[f"{profile}_s"] = row.get("projected_ms", 0) / 1e3
                mine[f"{profile}_mark"] = mark
    if not ours:
        return []
    return ["## Beside the papers", "",
            "Our loopback cluster latency is marked *measured* (four processes on one "
            "2-core machine, not a LAN); published figures are *theirs*, with sources.", "",
            papers.render_markdown(papers.beside_rows(ours)), ""]


# -- files ----------------------------------------------------------------------
def write_report(run_dir: Path, baseline_path: Path | None = BASELINE_PATH) -> Path:
    """Write ``report.md`` and ``report.png`` of a run directory; return the Markdown path.

    Everything is rendered before anything is written: if rendering raises, no file of
    the report is created or changed.
    """
    run_dir = _run_dir(run_dir)
    summary, bench = load_run(run_dir)
    markdown = render_markdown(summary, bench, baseline_path).encode("utf-8")
    plots = {REPORT_PNG: render_plot(summary),
             RTT_PNG: report_network.render_rtt_plot(summary),
             report_serving.PLOT: report_serving.render_plot(summary)}
    md_path = run_dir / REPORT_MD
    for name, png in plots.items():
        if png is not None:
            write_bytes(run_dir / name, png)
    write_bytes(md_path, markdown)
    return md_path


# -- baseline ---------------------------------------------------------------------------
def check_summary(summary: dict[str, Any], baseline: dict[str, Any]) -> list[str]:
    """Violations of a summary's accuracy rows; missing data is reported, not passed."""
    rows = _rows(summary, "accuracy")
    if not rows:
        return ["no accuracy rows in the run: nothing was checked against the baseline"]
    problems = []
    for row in rows:
        protocol = str(row.get("protocol"))
        where = f"[{_dep(row)}, batch {row.get('batch')}, {row.get('images')} images] "
        model = str(row.get("model", "tutorial"))
        if bounds_for(baseline, protocol, model) is None:
            problems.append(f"{where}{model}/{protocol}: no bounds in the baseline (not checked)")
            continue
        problems += [where + p for p in violations(protocol, row, baseline, model)]
    return problems


def check(run_dir: Path, baseline_path: Path = BASELINE_PATH) -> list[str]:
    """Violations of the run's accuracy rows against the baseline (empty when all pass)."""
    summary, _ = load_run(run_dir)
    return check_summary(summary, load_baseline(Path(baseline_path)))



def default_run_dir() -> Path:
    return LATEST_DIR
