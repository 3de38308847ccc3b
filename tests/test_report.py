"""Tests of the run report, the run comparison and the baseline check (``harness.results.report``).

Synthetic ``summary.json``/``benchmark.json`` files in ``tmp_path``; no TensorFlow work.
"""
from __future__ import annotations

import ast
import copy
import json
import struct
from pathlib import Path
from typing import Any

import pytest

from harness import cli
from harness.results import report
from harness.results.baseline import BASELINE_PATH, load_baseline

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TMP_GLOBS = (".report*", "*.tmp")


def _stats(data: list[float]) -> dict[str, Any]:
    """A pytest-benchmark ``stats`` object for these round times (seconds)."""
    ordered = sorted(data)
    n = len(ordered)
    mean = sum(ordered) / n
    var = sum((x - mean) ** 2 for x in ordered) / max(1, n - 1)
    median = ordered[n // 2] if n % 2 else (ordered[n // 2 - 1] + ordered[n // 2]) / 2
    return {"min": ordered[0], "max": ordered[-1], "mean": mean, "stddev": var ** 0.5,
            "rounds": n, "median": median, "iqr": ordered[-1] - ordered[0], "q1": ordered[0],
            "q3": ordered[-1], "iqr_outliers": 0, "stddev_outliers": 0, "outliers": "0;0",
            "ld15iqr": ordered[0], "hd15iqr": ordered[-1], "ops": 1 / mean,
            "total": sum(ordered), "data": data, "iterations": 1}


def _bench_entry(name: str, group: str, data: list[float], **extra: Any) -> dict[str, Any]:
    return {"group": group, "name": name, "fullname": f"bench/x.py::{name}", "params": None,
            "param": None, "extra_info": extra,
            "options": {"disable_gc": False, "timer": "perf_counter", "min_rounds": 5,
                        "max_time": 1.0, "min_time": 5e-06, "warmup": False},
            "stats": _stats(data)}


def _benchmark_json(scale: float = 1.0) -> dict[str, Any]:
    return {
        "machine_info": {"node": "test", "python_implementation": "CPython",
                         "python_version": "3.11.7", "system": "Linux", "release": "6",
                         "machine": "x86_64", "processor": "", "cpu": {"brand_raw": "Test CPU"}},
        "commit_info": {"id": "abc1234", "dirty": False, "project": "tfe-harness",
                        "branch": "main", "time": None, "author_time": None},
        "benchmarks": [
            _bench_entry("test_plaintext_latency[batch1]", "plaintext-batch1",
                         [0.0008, 0.0009, 0.0010], kind="plaintext", batch=1),
            _bench_entry("test_private_latency[securenn-inprocess-batch1]", "securenn-batch1",
                         [0.027 * scale, 0.028 * scale, 0.030 * scale], protocol="securenn",
                         deployment="inprocess", batch=1),
            _bench_entry("test_private_latency[securenn-cluster-batch1]", "securenn-batch1",
                         [0.080 * scale, 0.085 * scale, 0.090 * scale], protocol="securenn",
                         deployment="cluster", batch=1),
            _bench_entry("test_seeded_sampler_int64", "sampler", [0.10, 0.11, 0.12],
                         elements=4194304, dtype="int64", mb_per_s=305.0, threads=2),
            _bench_entry("test_harness_overhead[securenn]", "harness-overhead",
                         [0.0280, 0.0285, 0.0290], bare_loop_ms=27.5, benchmark_ms=28.5,
                         overhead_pct=3.64),
        ],
        "datetime": "2026-11-26T12:00:00.000000+00:00",
        "version": "5.3.1",
    }


def _summary(max_err: float = 0.040, agreement: float = 1.0) -> dict[str, Any]:
    return {
        "schema": 1,
        "environment": {
            "date": "2026-11-26T12:00:00+00:00", "python": "3.11.7", "platform": "Linux-x86_64",
            "cpu": "Test CPU", "cores": 2, "git_commit": "abc1234",
            "packages": {"tensorflow": "2.21.0", "tf-keras": "2.21.0", "tf-encrypted": "0.9.1",
                         "numpy": "2.1.0", "pytest-benchmark": "5.3.1"},
        },
        "options": {"protocols": ["securenn", "aby3"], "deployments": ["inprocess", "cluster"],
                    "batch_sizes": [1], "images": None, "quick": True, "cluster_config": None},
        "accuracy": [
            {"protocol": "securenn", "deployment": "inprocess", "batch": 1, "images": 64,
             "max_abs_err": max_err, "mean_abs_err": 0.0096, "argmax_agreement": agreement,
             "plaintext_accuracy": 0.97, "private_accuracy": 0.97, "kl_divergence": 3.4e-7},
            {"protocol": "aby3", "deployment": "inprocess", "batch": 1, "images": 64,
             "max_abs_err": 0.0029, "mean_abs_err": 0.00073, "argmax_agreement": 1.0,
             "plaintext_accuracy": 0.97, "private_accuracy": 0.97, "kl_divergence": 2.6e-9},
            {"protocol": "securenn", "deployment": "cluster", "batch": 1, "images": 64,
             "max_abs_err": 0.038, "mean_abs_err": 0.0095, "argmax_agreement": 1.0,
             "plaintext_accuracy": 0.97, "private_accuracy": 0.97, "kl_divergence": 3.3e-7},
        ],
        "latency": [
            {"protocol": "securenn", "deployment": "inprocess", "batch": 1, "median_ms": 27.9,
             "plaintext_median_ms": 0.76, "private_over_plaintext": 36.7, "first_call_s": 9.4,
             "rounds": 5},
            {"protocol": "aby3", "deployment": "inprocess", "batch": 1, "median_ms": 21.5,
             "plaintext_median_ms": 0.76, "private_over_plaintext": 28.3, "first_call_s": 11.2,
             "rounds": 5},
            # no over_inprocess key: the report computes it from the in-process row
            {"protocol": "securenn", "deployment": "cluster", "batch": 1, "median_ms": 83.7,
             "plaintext_median_ms": 0.77, "private_over_plaintext": 108.7, "first_call_s": 9.9,
             "rounds": 5, "bytes_per_prediction": 7.1e6},
        ],
        "communication": [
            {"protocol": "securenn", "deployment": "cluster", "batch": 1,
             "bytes_per_prediction": 7.1e6, "bytes_per_batch": 7100000,
             "tensors_per_batch": 107, "comm_rounds": 31, "driver_bytes_per_batch": 250000,
             "links": {"server0->server1": {"bytes": 3000000, "tensors": 50},
                       "server1->server0": {"bytes": 3000000, "tensors": 40},
                       "server2->server0": {"bytes": 1100000, "tensors": 17},
                       "server0->server2": {"bytes": 0, "tensors": 0}},
             "method": "counted from TensorFlow's partitioned graphs"},
        ],
        "memory": [
            {"protocol": "securenn", "deployment": "inprocess", "batch": 1,
             "driver_peak_rss_mb": 1234.5},
            {"protocol": "securenn", "deployment": "cluster", "batch": 1,
             "driver_peak_rss_mb": 1300.0,
             "workers_peak_rss_mb": {"server0": 610.0, "server1": 612.0, "server2": 598.0,
                                     "prediction-client": 450.0}},
        ],
        "cluster": [{"workers": 4, "start_to_ready_s_median": 4.25, "rounds": 2}],
    }


def _run(path: Path, summary: dict[str, Any], bench: dict[str, Any] | None = None) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "summary.json").write_text(json.dumps(summary))
    if bench is not None:
        (path / "benchmark.json").write_text(json.dumps(bench))
    return path


BASELINE = {
    "description": "test bounds",
    "protocols": {
        "securenn": {"argmax_agreement": {"min": 1.0, "tolerance": 0.002},
                     "max_abs_err": {"max": 0.05, "tolerance": 0.01}},
        "aby3": {"max_abs_err": {"max": 0.005, "tolerance": 0.0}},
    },
}


@pytest.fixture()
def baseline_file(tmp_path: Path) -> Path:
    path = tmp_path / "baseline.json"
    path.write_text(json.dumps(BASELINE))
    return path


def _assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    assert width > 200 and height > 100
    assert data[-8:-4] == b"IEND"


def _leftovers(run_dir: Path) -> list[str]:
    return sorted(p.name for g in TMP_GLOBS for p in run_dir.glob(g))


# -- report -----------------------------------------------------------------------------
def test_report_has_tables_and_anchors(tmp_path: Path, baseline_file: Path) -> None:
    run = _run(tmp_path / "run", _summary(), _benchmark_json())
    md_path = report.write_report(run, baseline_path=baseline_file)
    assert md_path == run / "report.md"
    md = md_path.read_text()
    for heading in ("# Private inference benchmark: 2026-11-26T12:00:00+00:00, commit abc1234",
                    "## Environment", "## Latency", "## Accuracy", "## Communication",
                    "## Memory", "## Cluster start-to-ready", "## Sampler and harness overhead",
                    "## Beside the papers"):
        assert heading in md
    # published figures are cited and marked theirs; nothing cites notes outside the repo
    assert "theirs" in md and "petsymposium.org" in md and "team's notes" not in md
    # environment and options
    assert "| tf-encrypted | 0.9.1 |" in md and "| CPU | Test CPU |" in md
    assert "| option `quick` | True |" in md
    # latency: median, plaintext, ratios (cluster/in-process computed: 83.7 / 27.9 = 3)
    assert "### Model `tutorial`" in md
    assert "| SecureNN | tuned | inprocess | 1 | 27.9 | 0.76 | 36.7 | - | 9.4 | 5 |" in md
    assert "| SecureNN | tuned | cluster | 1 | 83.7 | 0.77 | 109 | 3 | 9.9 | 5 |" in md
    # accuracy, communication, memory, cluster, sampler, overhead
    assert ("| ABY3 | inprocess | 1 | 64 | 0.9700 | 0.9700 | 1.0000 | 0.0029 | 0.00073 | "
            "2.6e-09 |") in md
    assert f"All rows are within the bounds of `{baseline_file}`." in md
    assert ("| SecureNN | tuned | cluster | 1 | 7.1 MB | 7,100,000 | 107 | 31 | 250,000 | "
            "server0->server1 3,000,000 B / 50, server1->server0 3,000,000 B / 40, "
            "server2->server0 1,100,000 B / 17 |") in md
    assert "Method: counted from TensorFlow's partitioned graphs." in md
    assert "| SecureNN | inprocess | 1 | 1234 | - |" in md
    assert "server0 610, server1 612, server2 598, prediction-client 450" in md
    assert "| 4 | 4.25 | 2 |" in md
    assert "| 305 |" in md and "| 3.64 |" in md
    # beside the papers: ours (measured) next to their cited figures
    assert "| tutorial | SecureNN | ours | 1 |" in md and "0.0837 s (measured)" in md
    _assert_png(run / "report.png")
    assert _leftovers(run) == []


def test_quick_run_omits_missing_sections(tmp_path: Path) -> None:
    summary = _summary()
    summary["accuracy"] = [r for r in summary["accuracy"] if r["deployment"] == "inprocess"]
    summary["latency"] = [r for r in summary["latency"] if r["deployment"] == "inprocess"]
    summary["communication"] = summary["memory"] = summary["cluster"] = []
    run = _run(tmp_path / "quick", summary)  # no benchmark.json either
    md = report.write_report(run, baseline_path=None).read_text()
    assert "## Latency" in md and "## Accuracy" in md
    for heading in ("## Communication", "## Memory", "## Cluster", "## Sampler",
                    "## Beside the papers"):
        assert heading not in md
    _assert_png(run / "report.png")


def test_empty_summary_still_renders(tmp_path: Path) -> None:
    summary = {"schema": 1, "environment": {}, "options": {}, "accuracy": [], "latency": [],
               "communication": [], "memory": [], "cluster": []}
    run = _run(tmp_path / "empty", summary)
    md = report.write_report(run, baseline_path=None).read_text()
    assert "## Latency" not in md and "## Accuracy" not in md
    _assert_png(run / "report.png")


def test_write_report_leaves_nothing_when_the_plot_fails(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    run = _run(tmp_path / "run", _summary(), _benchmark_json())

    def broken(summary: dict[str, Any]) -> bytes:
        raise RuntimeError("plot exploded")

    monkeypatch.setattr(report, "render_plot", broken)
    with pytest.raises(RuntimeError, match="plot exploded"):
        report.write_report(run)
    assert sorted(p.name for p in run.iterdir()) == ["benchmark.json", "summary.json"]


def test_write_report_keeps_old_report_when_rename_fails(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    run = _run(tmp_path / "run", _summary())
    (run / "report.md").write_text("old report\n")

    def no_rename(src: str, dst: str) -> None:
        raise OSError("disk full")

    from harness.results import store

    monkeypatch.setattr(store.os, "replace", no_rename)
    with pytest.raises(OSError, match="disk full"):
        report.write_report(run)
    assert (run / "report.md").read_text() == "old report\n"
    assert not (run / "report.png").exists()
    assert _leftovers(run) == []


def test_report_module_does_not_import_tensorflow() -> None:
    for module in (report, report.load_baseline.__module__, "harness.results.store"):
        name = module if isinstance(module, str) else module.__name__
        source = Path(__import__(name, fromlist=["_"]).__file__).read_text()
        imported = set()
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.Import):
                imported |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module:
                imported.add(node.module.split(".")[0])
        assert not imported & {"tensorflow", "tf_encrypted", "tf_keras", "keras"}, name


def test_cli_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = _run(tmp_path / "run", _summary())
    assert cli.main(["report", str(run)]) == 0
    out = capsys.readouterr().out.split()
    assert out == [str(run / "report.md"), str(run / "report.png")]
    _assert_png(run / "report.png")
    assert cli.main(["report", str(tmp_path / "missing")]) == 2
    assert "no such file" in capsys.readouterr().err


# -- compare ----------------------------------------------------------------------------
def test_compare_shows_deltas(tmp_path: Path, baseline_file: Path) -> None:
    run_a = _run(tmp_path / "a", _summary(), _benchmark_json())
    run_b = _run(tmp_path / "b", _summary(max_err=0.080, agreement=0.984375),
                 _benchmark_json(scale=1.5))
    text = report.compare(run_a, run_b, baseline_path=baseline_file)
    # pytest-benchmark's own table, grouped by benchmark group
    assert "```text" in text and "benchmark 'securenn-batch1'" in text
    assert "test_private_latency[securenn-cluster-batch1]" in text
    assert "benchmark 'sampler'" in text
    # our latency medians from the summaries
    assert "| SecureNN | inprocess | 1 | 27.9 | 27.9 | 1 |" in text
    # accuracy a -> b with delta, direction and the baseline flag
    assert ("| SecureNN | inprocess | max_abs_err | 0.04 | 0.08 | +0.04 (+100.0%) | "
            "b outside baseline, worse |") in text
    assert ("| SecureNN | inprocess | argmax_agreement | 1.0000 | 0.9844 | -0.0156 (-1.6%) | "
            "b outside baseline, worse |") in text
    assert "| ABY3 | inprocess | max_abs_err | 0.0029 | 0.0029 | +0 (+0.0%) | = |" in text
    assert "**Run b is worse than the baseline:**" in text
    assert "securenn max_abs_err: 0.08 is above the baseline maximum 0.05 (tolerance 0.01)" in text


def test_compare_without_benchmark_json(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                        baseline_file: Path) -> None:
    run_a = _run(tmp_path / "a", _summary(), _benchmark_json())
    run_b = _run(tmp_path / "b", _summary())
    assert cli.main(["compare", str(run_a), str(run_b), "--baseline", str(baseline_file)]) == 0
    out = capsys.readouterr().out
    assert f"No pytest-benchmark comparison: missing {run_b / 'benchmark.json'}" in out
    assert "Run b is within the baseline." in out


# -- baseline check ---------------------------------------------------------------------
def test_check_flags_values_outside_bounds(tmp_path: Path, baseline_file: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    run = _run(tmp_path / "bad", _summary(max_err=0.0601))
    problems = report.check(run, baseline_file)
    assert problems == ["[inprocess, batch 1, 64 images] securenn max_abs_err: 0.0601 is above "
                        "the baseline maximum 0.05 (tolerance 0.01)"]
    assert cli.main(["check-baseline", str(run), "--baseline", str(baseline_file)]) == 1
    out = capsys.readouterr().out
    assert "max_abs_err" in out and "0.0601" in out and "0.05" in out


def test_check_passes_inside_bounds(tmp_path: Path, baseline_file: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    # 0.0599 is above the max but inside its tolerance; agreement exactly at the bound
    run = _run(tmp_path / "good", _summary(max_err=0.0599, agreement=0.998))
    assert report.check(run, baseline_file) == []
    assert cli.main(["check-baseline", str(run), "--baseline", str(baseline_file)]) == 0
    assert capsys.readouterr().out.strip() == "ok"


def test_check_reports_missing_data(tmp_path: Path, baseline_file: Path) -> None:
    summary = _summary()
    summary["accuracy"][1]["protocol"] = "pond"  # no bounds for pond in this baseline
    problems = report.check(_run(tmp_path / "a", summary), baseline_file)
    assert problems == ["[inprocess, batch 1, 64 images] tutorial/pond: no bounds in the baseline "
                        "(not checked)"]
    summary["accuracy"] = []
    problems = report.check(_run(tmp_path / "b", summary), baseline_file)
    assert problems and "no accuracy rows" in problems[0]


# -- the committed baseline -------------------------------------------------------------
def _row(protocol: str, images: int, **metrics: float) -> dict[str, Any]:
    return {"protocol": protocol, "deployment": "inprocess", "batch": 1, "images": images,
            **metrics}


# Figures measured on 200 test images, batch 1, in-process.
MEASURED = {
    "securenn": dict(max_abs_err=0.040, mean_abs_err=0.0096, argmax_agreement=1.0,
                     private_accuracy=0.965, plaintext_accuracy=0.965, kl_divergence=3.4e-7),
    "aby3": dict(max_abs_err=0.0029, mean_abs_err=0.00073, argmax_agreement=1.0,
                 private_accuracy=0.965, plaintext_accuracy=0.965, kl_divergence=2.6e-9),
    "pond": dict(max_abs_err=76.0, mean_abs_err=8.0, argmax_agreement=0.19,
                 private_accuracy=0.2, plaintext_accuracy=0.965, kl_divergence=8.25),
}


# The same on the whole split (1,000 images, batch 32) and on the first 64 (--quick).
MEASURED_FULL = {
    "securenn": dict(max_abs_err=0.0496, mean_abs_err=0.00962, argmax_agreement=1.0,
                     private_accuracy=0.964, plaintext_accuracy=0.964, kl_divergence=3.62e-7),
    "aby3": dict(max_abs_err=0.00334, mean_abs_err=0.000724, argmax_agreement=1.0,
                 private_accuracy=0.964, plaintext_accuracy=0.964, kl_divergence=3.36e-9),
    "pond": dict(max_abs_err=120.65, mean_abs_err=8.0015, argmax_agreement=0.216,
                 private_accuracy=0.219, plaintext_accuracy=0.964, kl_divergence=8.4395),
}
MEASURED_QUICK = {
    "securenn": dict(max_abs_err=0.0410, mean_abs_err=0.00953, argmax_agreement=1.0,
                     private_accuracy=1.0, plaintext_accuracy=1.0, kl_divergence=1.10e-7),
    "aby3": dict(max_abs_err=0.00292, mean_abs_err=0.000735, argmax_agreement=1.0,
                 private_accuracy=1.0, plaintext_accuracy=1.0, kl_divergence=8.3e-10),
    "pond": dict(max_abs_err=47.79, mean_abs_err=7.82, argmax_agreement=0.234375,
                 private_accuracy=0.234375, plaintext_accuracy=1.0, kl_divergence=7.60),
}


@pytest.mark.parametrize(("images", "figures"), [(200, MEASURED), (1000, MEASURED_FULL),
                                                 (64, MEASURED_QUICK)])
def test_committed_baseline_accepts_measured_figures(tmp_path: Path, images: int,
                                                     figures: dict[str, dict[str, float]]) -> None:
    baseline = load_baseline(BASELINE_PATH)
    assert set(baseline["protocols"]) == {"securenn", "aby3", "pond"}
    assert baseline["description"]
    for bounds in baseline["protocols"].values():
        for bound in bounds.values():
            assert "tolerance" in bound and ("min" in bound or "max" in bound)
    rows = [_row(p, images, **m) for p, m in figures.items()]
    summary = {**_summary(), "accuracy": rows}
    assert report.check(_run(tmp_path / "run", summary), BASELINE_PATH) == []


def test_committed_baseline_allows_securenn_one_near_tie_in_the_full_split() -> None:
    baseline = load_baseline(BASELINE_PATH)
    row = _row("securenn", 1000, **{**MEASURED["securenn"], "argmax_agreement": 0.999})
    assert report.check_summary({"accuracy": [row]}, baseline) == []
    row["argmax_agreement"] = 0.998  # two disagreements
    assert len(report.check_summary({"accuracy": [row]}, baseline)) == 1


@pytest.mark.parametrize(("protocol", "metric", "value"), [
    ("securenn", "argmax_agreement", 0.995),  # 5 disagreements in 1,000 images
    ("securenn", "max_abs_err", 0.5),         # a lost fractional digit
    ("securenn", "mean_abs_err", 0.05),
    ("aby3", "max_abs_err", 0.05),            # ABY3 error as large as SecureNN's
    ("aby3", "argmax_agreement", 0.984375),   # 1 disagreement in 64 images
    ("pond", "max_abs_err", 200.0),           # the approximation got worse
    ("pond", "argmax_agreement", 0.02),
])
def test_committed_baseline_catches_regressions(protocol: str, metric: str,
                                                value: float) -> None:
    baseline = load_baseline(BASELINE_PATH)
    row = copy.deepcopy(_row(protocol, 1000, **MEASURED[protocol]))
    row[metric] = value
    problems = report.check_summary({"accuracy": [row]}, baseline)
    assert len(problems) == 1 and metric in problems[0] and f"{value:.6g}" in problems[0]


def test_network_rows_give_emulated_projected_table_and_rtt_plot(tmp_path: Path) -> None:
    summary = _summary()
    summary["network"] = [{
        "protocol": "securenn", "batch": 1, "network": "wan", "rate_bytes_per_s": 40e6,
        "rtt_s": 0.058, "delay": "projected", "qdisc": "tbf", "emulated_ms": 100.0,
        "compute_ms": 82.0, "loopback_ms": 80.0, "projected_without_rtt_ms": 90.0,
        "projected_ms": 1714.0,
        "projected_sequential_without_rtt_ms": 120.0, "projected_scheduled_without_rtt_ms": 105.0,
        "projected_timed_without_rtt_ms": 97.0,
        "projection": {"rounds": 28, "transfer_s": 0.01},
        "wire": {"server0 up": {"counted": 400_000, "wire": 420_000, "ratio": 1.05},
                 "server1 down": {"counted": 500_000, "wire": 540_000, "ratio": 1.08},
                 "server2 up": {"counted": 1_000, "wire": 3_000, "ratio": 3.0}}}]
    run = _run(tmp_path / "net", summary)
    md = report.write_report(run, baseline_path=None).read_text()
    assert "## Shaped networks" in md
    assert ("| tutorial | SecureNN | wan | 1 | 40 | 58 | projected | 82 | 100 | 90 | -10 "
            "| 120 | 105 | +5 | 97 | -3 | 1714 | 28 | 1.050-1.080 |") in md
    assert ("Projection (busiest link) within 15 % of the emulated run (w/o RTT) in 1 of 1 rows; "
            "largest error -10 %") in md
    assert "Scheduled projection within 15 % of the emulated run (w/o RTT) in 1 of 1 rows" in md
    assert "Timed projection within 15 % of the emulated run (w/o RTT) in 1 of 1 rows" in md
    assert "1.714 s (projected)" in md  # WAN column beside the papers
    _assert_png(run / "latency_vs_rtt.png")
    del summary["network"][0]["compute_ms"]  # a run from before the same-cluster reference
    old = report.write_report(_run(tmp_path / "old", summary), baseline_path=None).read_text()
    assert "| projected | 80 | 100 |" in old
    for key in ("projected_timed_without_rtt_ms", "wire"):  # runs before the timed replay
        del summary["network"][0][key]
    older = report.write_report(_run(tmp_path / "older", summary), baseline_path=None).read_text()
    assert "| +5 | - | - | 1714 | 28 | - |" in older
