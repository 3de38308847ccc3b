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

import io
import logging
import math
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterable, Sequence

from harness.results.baseline import BASELINE_PATH, load_baseline, violations
from harness.results.store import RESULTS_DIR, load_json

logger = logging.getLogger(__name__)

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

# -- published anchors ------------------------------------------------------------------
# Figures of other people's measurements, quoted (via the team's notes,
# /work/shared/TFE-FACTS.md) so that our numbers can be read against them. None of
# these was measured by this harness.
SECURENN_PAPER = "SecureNN paper (Wagh, Gupta, Chandran; PoPETs 2019)"
TFE_POSTER = "TF Encrypted 2018 poster"
PUBLISHED_ANCHORS: tuple[dict[str, Any], ...] = (
    {"source": SECURENN_PAPER, "setting": "3 parties, LAN (0.22 ms ping), MNIST network B",
     "figure": "0.13 s and 8.86 MB per image", "ours": ("securenn", "lan")},
    {"source": SECURENN_PAPER, "setting": "3 parties, LAN (0.22 ms ping), MNIST network D",
     "figure": "0.076 s and 4.05 MB per image", "ours": ("securenn", "lan")},
    {"source": SECURENN_PAPER, "setting": "3 parties, WAN (58 ms ping), MNIST networks",
     "figure": "3.1-3.9 s per image", "ours": ("securenn", "wan")},
    {"source": TFE_POSTER, "setting": "SecureNN, network B", "figure": "243 ms per prediction",
     "ours": ("securenn", "lan")},
    {"source": TFE_POSTER, "setting": "SecureNN, KL divergence to plaintext",
     "figure": "0.0", "ours": ("securenn", "kl")},
)
REFERENCE_SOURCE = ("upstream tf-encrypted 0.9.1 with its own ops built for TF 2.21, seed model, "
                    "same kind of 2-core machine; measured outside this project "
                    "(TFE-FACTS.md, \"Reference figures\")")
# protocol, deployment, batch, first call s, median ms, max abs err, agreement, bytes/prediction
REFERENCE_FIGURES: tuple[tuple[str, str, int, float, float, float, str, str], ...] = (
    ("securenn", "inprocess", 1, 6.5, 17.9, 6.4e-4, "1.0", ""),
    ("securenn", "inprocess", 32, 7.8, 512.0, 8.8e-4, "1.0", ""),
    ("securenn", "cluster", 1, 6.5, 59.7, 6.4e-4, "1.0", "~7.0 MB"),
    ("securenn", "cluster", 32, 7.2, 684.0, 8.0e-4, "1.0", ""),
    ("aby3", "inprocess", 1, 8.0, 15.0, 4.9e-5, "1.0", ""),
    ("aby3", "cluster", 1, 8.5, 76.0, 4.9e-5, "1.0", "~1.65 MB"),
    ("pond", "inprocess", 1, 4.1, 6.2, 1.2, "1.0 (random weights)", ""),
)
REFERENCE_PLAINTEXT = "plaintext Keras eager call of the same model: ~3.6 ms (batch 1)"


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


def _latency(summary: dict[str, Any], bench: dict[str, Any] | None,
             protocols: Sequence[str]) -> list[str]:
    rows = _sorted(_rows(summary, "latency"), protocols)
    if not rows:
        return []
    inproc = {(r.get("protocol"), r.get("batch")): r.get("median_ms") for r in rows
              if r.get("deployment") == "inprocess"}
    table = []
    for r in rows:
        over = r.get("over_inprocess")
        if over is None and r.get("deployment") != "inprocess":
            base = inproc.get((r.get("protocol"), r.get("batch")))
            if base and r.get("median_ms") is not None:
                over = r["median_ms"] / base
        table.append((_proto(r.get("protocol", "?")), _dep(r), r.get("batch"),
                      _num(r.get("median_ms"), ".4g"), _num(r.get("plaintext_median_ms"), ".3g"),
                      _num(r.get("private_over_plaintext"), ".3g"), _num(over, ".3g"),
                      _num(r.get("first_call_s"), ".3g"), _num(r.get("rounds"), "d")))
    lines = ["## Latency", "",
             "Steady-state private prediction (one call = one batch), median over the "
             "benchmark rounds; the plaintext Keras median is measured in the same test.", "",
             *_table(("protocol", "deployment", "batch", "median ms", "plaintext median ms",
                      "private / plaintext", "cluster / in-process", "first call s",
                      "rounds"), table), ""]
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
    table = [(_proto(r.get("protocol", "?")), _dep(r), r.get("batch"), r.get("images"),
              *(_num(r.get(key), spec) for key, _, spec, _ in ACCURACY_METRICS)) for r in rows]
    lines = ["## Accuracy", "",
             "Private logits against the plaintext Keras logits of the same test images "
             "(KL: mean KL(softmax(plaintext) || softmax(private))).", "",
             *_table(("protocol", "deployment", "batch", "images",
                      *(label for _, label, _, _ in ACCURACY_METRICS)), table), ""]
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
    table = []
    for r in rows:
        # by_link_per_batch ("src->dst": bytes); older runs: by_worker_per_batch
        parts = r.get("by_link_per_batch") or r.get("by_worker_per_batch") or {}
        detail = ", ".join(f"{n} {_mb(v)}" for n, v in parts.items() if v) or "-"
        table.append((_proto(r.get("protocol", "?")), _dep(r), r.get("batch"),
                      _mb(r.get("bytes_per_prediction")), _mb(r.get("bytes_per_batch")),
                      _mb(r.get("driver_bytes_per_batch")), detail, r.get("method", "-")))
    lines = ["## Communication", "",
             "Bytes between the players per prediction (one image) and per call (one batch); "
             "the driver's traffic to and from the workers (inputs, results, graph) apart.", "",
             *_table(("protocol", "deployment", "batch", "per prediction", "per batch",
                      "driver <-> workers per batch", "by link / worker, per batch", "method"),
                     table), ""]
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


def _find(rows: list[dict[str, Any]], protocol: str, deployment: str,
          batch: int | None = None) -> dict[str, Any] | None:
    for r in rows:
        if r.get("protocol") == protocol and r.get("deployment") == deployment and (
                batch is None or r.get("batch") == batch):
            return r
    return None


def _ours_lan(summary: dict[str, Any]) -> str:
    latency = _rows(summary, "latency")
    for dep in ("manual", "cluster"):
        row = _find(latency, "securenn", dep, 1)
        if row is not None:
            per = row.get("bytes_per_prediction")
            extra = f", {_mb(per)} per prediction" if per else ""
            where = ("4 processes on loopback" if dep == "cluster"
                     else "hand-started workers (--cluster-config)")
            return f"{_num(row.get('median_ms'), '.4g')} ms{extra} (SecureNN, {where}, batch 1)"
    row = _find(latency, "securenn", "inprocess", 1)
    if row is not None:
        return f"{_num(row.get('median_ms'), '.4g')} ms (SecureNN in-process, batch 1; no network)"
    return "not measured in this run"


def _ours_kl(summary: dict[str, Any]) -> str:
    rows = [r for r in _rows(summary, "accuracy") if r.get("protocol") == "securenn"]
    if not rows:
        return "not measured in this run"
    return "; ".join(f"{_num(r.get('kl_divergence'), '.2g')} ({_dep(r)}, {r.get('images')} images)"
                     for r in rows)


def _anchors(summary: dict[str, Any]) -> list[str]:
    ours = {"lan": _ours_lan(summary), "kl": _ours_kl(summary),
            "wan": "not measured (no WAN deployment in this harness)"}
    published = [(a["source"], a["setting"], a["figure"], ours[a["ours"][1]])
                 for a in PUBLISHED_ANCHORS]
    latency, accuracy = _rows(summary, "latency"), _rows(summary, "accuracy")
    reference = []
    for proto, dep, batch, first, median, err, agree, traffic in REFERENCE_FIGURES:
        lat = _find(latency, proto, dep, batch)
        acc = _find(accuracy, proto, dep, batch) or _find(accuracy, proto, dep)
        reference.append((
            _proto(proto), DEPLOYMENT_LABEL.get(dep, dep), batch,
            f"{first:g} s", f"{median:g} ms", f"{err:.2g}", agree, traffic or "-",
            f"{_num(lat.get('first_call_s'), '.2g')} s" if lat else "-",
            f"{_num(lat.get('median_ms'), '.4g')} ms" if lat else "-",
            _num(acc.get("max_abs_err"), ".2g") if acc else "-",
            _num(acc.get("argmax_agreement"), ".4g") if acc else "-",
            _mb(lat.get("bytes_per_prediction")) if lat and lat.get("bytes_per_prediction")
            else "-",
        ))
    return [
        "## Published anchors", "",
        "> **Their figures, not measured here.** The \"their\" columns quote other people's "
        "measurements with their source (as collected in the team's notes, TFE-FACTS.md); "
        "different hardware, networks, models and code. They give orders of magnitude to read "
        "our numbers against, not targets. Only the \"ours\" columns come from this run.", "",
        *_table(("source (theirs)", "setting (theirs)", "their figure", "ours, this run"),
                published), "",
        f"Reference figures, *theirs*: {REFERENCE_SOURCE}. {REFERENCE_PLAINTEXT[0].upper()}"
        f"{REFERENCE_PLAINTEXT[1:]}.", "",
        *_table(("protocol", "deployment", "batch", "their first call", "their median",
                 "their max abs err", "their agreement", "their bytes / prediction",
                 "our first call", "our median", "our max abs err", "our agreement",
                 "our bytes / prediction"), reference), "",
    ]


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
                    _cluster(summary), _harness_figures(bench), _anchors(summary)):
        lines += section
    return "\n".join(lines).rstrip() + "\n"


# -- plot -------------------------------------------------------------------------------
def _short(value: float, fmt: str) -> str:
    return f"{value:.0f}" if abs(value) >= 100 else format(value, fmt)


def _bars(ax: Any, groups: list[str], series: dict[str, dict[int, float]], fmt: str) -> None:
    width = 0.8 / max(1, len(series))
    for i, (label, values) in enumerate(series.items()):
        xs = sorted(values)
        positions = [x - 0.4 + width * (i + 0.5) for x in xs]
        heights = [max(values[x], 1e-12) for x in xs]
        bars = ax.bar(positions, heights, width * 0.9, label=label)
        ax.bar_label(bars, labels=[_short(values[x], fmt) for x in xs], fontsize=7, padding=1)
    ax.set_xticks(range(len(groups)), groups, fontsize=8)
    ax.set_xlim(-0.6, len(groups) - 0.4)
    ax.set_yscale("log")
    ax.grid(axis="y", which="major", alpha=0.3)
    if series:
        ax.legend(fontsize=8)


def _empty(ax: Any, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="grey")
    ax.set_xticks([])
    ax.set_yticks([])


def render_plot(summary: dict[str, Any]) -> bytes:
    """PNG bytes: latency per protocol and batch by deployment; max abs logit error."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: PLC0415
    from matplotlib.figure import Figure  # noqa: PLC0415

    protocols = _protocol_order(summary)
    fig = Figure(figsize=(12, 5), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax_lat, ax_err = fig.subplots(1, 2, width_ratios=(2.2, 1))

    latency = _sorted(_rows(summary, "latency"), protocols)
    keys = list(dict.fromkeys((r.get("protocol"), r.get("batch")) for r in latency))
    if keys:
        series: dict[str, dict[int, float]] = {}
        for r in latency:
            if r.get("median_ms") is not None:
                series.setdefault(DEPLOYMENT_LABEL.get(_dep(r), _dep(r)), {})[
                    keys.index((r.get("protocol"), r.get("batch")))] = float(r["median_ms"])
        _bars(ax_lat, [f"{_proto(p)}\nbatch {b}" for p, b in keys], series, ".3g")
        plain = {}
        for r in latency:
            if r.get("plaintext_median_ms"):
                plain.setdefault(keys.index((r.get("protocol"), r.get("batch"))),
                                 float(r["plaintext_median_ms"]))
        if plain:
            xs = list(plain)
            ax_lat.hlines(list(plain.values()), [x - 0.42 for x in xs], [x + 0.42 for x in xs],
                          colors="black", linestyles="dashed", linewidth=1.2, zorder=3,
                          label="plaintext Keras (same batch)")
            ax_lat.legend(fontsize=8)
        ax_lat.set_ylabel("median latency per call, ms (log)")
        ax_lat.set_title("Private prediction latency", fontsize=10)
    else:
        _empty(ax_lat, "no latency rows in this run")

    accuracy = _sorted(_rows(summary, "accuracy"), protocols)
    protos = list(dict.fromkeys(r.get("protocol") for r in accuracy))
    if protos:
        err: dict[str, dict[int, float]] = {}
        for r in accuracy:
            if r.get("max_abs_err") is not None:
                err.setdefault(DEPLOYMENT_LABEL.get(_dep(r), _dep(r)), {})[
                    protos.index(r.get("protocol"))] = float(r["max_abs_err"])
        _bars(ax_err, [_proto(str(p)) for p in protos], err, ".2g")
        ax_err.set_ylabel("max |private - plaintext| logit (log)")
        ax_err.set_title("Max abs logit error", fontsize=10)
    else:
        _empty(ax_err, "no accuracy rows in this run")

    date, commit = _title(summary)
    fig.suptitle(f"TF Encrypted private inference: {date}, commit {commit}", fontsize=11)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


# -- files ------------------------------------------------------------------------------
def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o644)  # a report is for reading (mkstemp creates 0600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_report(run_dir: Path, baseline_path: Path | None = BASELINE_PATH) -> Path:
    """Write ``report.md`` and ``report.png`` of a run directory; return the Markdown path.

    Everything is rendered before anything is written: if rendering raises, no file of
    the report is created or changed.
    """
    run_dir = _run_dir(run_dir)
    summary, bench = load_run(run_dir)
    markdown = render_markdown(summary, bench, baseline_path).encode("utf-8")
    png = render_plot(summary)
    md_path = run_dir / REPORT_MD
    _write_atomic(run_dir / REPORT_PNG, png)
    _write_atomic(md_path, markdown)
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
        if protocol not in baseline["protocols"]:
            problems.append(f"{where}{protocol}: no bounds in the baseline (not checked)")
            continue
        problems += [where + p for p in violations(protocol, row, baseline)]
    return problems


def check(run_dir: Path, baseline_path: Path = BASELINE_PATH) -> list[str]:
    """Violations of the run's accuracy rows against the baseline (empty when all pass)."""
    summary, _ = load_run(run_dir)
    return check_summary(summary, load_baseline(Path(baseline_path)))


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


def default_run_dir() -> Path:
    return LATEST_DIR
