"""The serving-under-load part of a run's report: table, targets and plot (``serving_load``).

Rows come from ``bench/test_serving_load.py``: C concurrent client processes x R
requests each against one served model, with batching off (``--max-batch 1``) or on.
``section(summary)`` is the Markdown section (a list of lines, empty without rows),
``render_plot(summary)`` the PNG of throughput and p95 latency against C (None without
rows), and ``write_files(run_dir)`` writes both beside the report as
``serving_load.md`` / ``serving_load.png``.

Ratios are taken within the run only: the single-client sequential row (C = 1, batching
off) of the same protocol is the baseline for throughput and latency.

This module does not import TensorFlow (matplotlib only to draw).
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from harness.results.store import load_json, write_bytes

TABLE = "serving_load"
MARKDOWN = "serving_load.md"
PLOT = "serving_load.png"
LABELS = {"securenn": "SecureNN", "aby3": "ABY3", "pond": "Pond"}
# the targets at 8 clients with batching: throughput over the single client's
TARGET_SPEEDUP = {"aby3": 3.0, "securenn": 1.7}
TARGET_P95_OVER_SINGLE = 3.0
TARGET_CLIENTS = 8


def rows(summary: dict[str, Any]) -> list[dict[str, Any]]:
    found = [r for r in summary.get(TABLE) or [] if isinstance(r, dict)]
    return sorted(found, key=lambda r: (str(r.get("protocol")), bool(r.get("batching")),
                                        int(r.get("clients") or 0)))


def _baseline(table: list[dict[str, Any]], protocol: str) -> dict[str, Any] | None:
    return next((r for r in table if r.get("protocol") == protocol and r.get("clients") == 1
                 and not r.get("batching")), None)


def _f(value: Any, spec: str = ".3g") -> str:
    return "-" if value is None else format(value, spec)


def _ratio(a: Any, b: Any) -> float | None:
    return a / b if a is not None and b else None


def _throughput(r: dict[str, Any]) -> str:
    """The median round, and the range over rounds where there were several."""
    rates = [x for x in r.get("throughput_rps_rounds") or [] if x is not None]
    text = _f(r.get("throughput_rps"))
    return f"{text} ({min(rates):.3g}-{max(rates):.3g})" if len(rates) > 1 else text


def _mode(r: dict[str, Any]) -> str:
    if not r.get("batching"):
        return "off"
    return f"B={r.get('max_batch')}, {_f(r.get('window_ms'), '.0f')} ms"


def section(summary: dict[str, Any]) -> list[str]:
    table = rows(summary)
    if not table:
        return []
    lines = ["## Serving under load", "",
             "C client processes, each sending R requests one after another (closed loop), "
             "against one served model on the auto-managed loopback cluster. Latency is what "
             "each client measured per request (sharing, queueing, batch, unmasking), its "
             "percentiles over the answers of all rounds; throughput counts correct answers "
             "over a round's wall time: the median round, with the slowest and fastest in "
             "brackets (C x R x rounds says how many). Every result is "
             "checked against the plaintext logits of its own image: *wrong* = argmax differs, "
             "*refused* = the request got an error back, *lost* = no answer. x single = over "
             "the single-client sequential row (C = 1, batching off) of the same run; the "
             "batching modes run minutes apart, so on a shared machine their ratios carry "
             "that noise. Owner columns (medians per batch): the private prediction, the "
             "servers idle before the batch's first request arrived (clients fetching, "
             "unmasking, sending the next one: the clients share the machine's cores), and "
             "the wait for the batch to fill. Client columns (medians per request): sharing "
             "and sending, fetching and unmasking, polls for the result (each one RPC), and "
             "the client process's CPU.", "",
             "| protocol | batching | C x R | throughput /s | x single | p50 ms | p95 ms | "
             "p99 ms | p95 / single p50 | mean batch | owner step / idle / gathering ms | "
             "client send / receive ms | polls | client CPU ms | refused | lost | wrong | "
             "agreement |",
             "|" + "---|" * 18]
    verdicts = []
    for r in table:
        base = _baseline(table, r.get("protocol"))
        speedup = _ratio(r.get("throughput_rps"), (base or {}).get("throughput_rps"))
        p95 = _ratio(r.get("latency_ms_p95"), (base or {}).get("latency_ms_p50"))
        lines.append(" | ".join([
            f"| {LABELS.get(r.get('protocol'), r.get('protocol'))}", _mode(r),
            f"{r.get('clients')} x {r.get('requests_per_client')} x {r.get('rounds') or 1}",
            _throughput(r), _f(speedup), _f(r.get("latency_ms_p50"), ".4g"),
            _f(r.get("latency_ms_p95"), ".4g"), _f(r.get("latency_ms_p99"), ".4g"), _f(p95),
            _f(r.get("mean_batch")),
            " / ".join(_f(r.get(f"owner_{k}_ms_median"), ".0f")
                       for k in ("step", "idle", "gather")),
            " / ".join(_f(r.get(f"client_{k}_ms_median"), ".0f") for k in ("send", "receive")),
            _f(r.get("client_polls_median"), ".2g"), _f(r.get("client_cpu_ms_median"), ".2g"),
            str(r.get("refused")), str(r.get("lost")),
            str(r.get("wrong")), _f(r.get("argmax_agreement"), ".4g")]) + " |")
        target = TARGET_SPEEDUP.get(str(r.get("protocol")))
        if r.get("batching") and r.get("clients") == TARGET_CLIENTS and target and base:
            clean = not (r.get("refused") or r.get("lost") or r.get("wrong"))
            ok = clean and speedup is not None and speedup >= target and \
                p95 is not None and p95 <= TARGET_P95_OVER_SINGLE
            verdicts.append(
                f"- {LABELS.get(r['protocol'], r['protocol'])}, {TARGET_CLIENTS} clients with "
                f"batching: throughput x{_f(speedup)} (target >= {target:g}), p95 / single "
                f"latency {_f(p95)} (target <= {TARGET_P95_OVER_SINGLE:g}), "
                f"{r.get('refused')} refused / {r.get('lost')} lost / {r.get('wrong')} wrong: "
                + ("**met**" if ok else "**not met**"))
    lines.append("")
    if verdicts:
        lines += ["Targets (issue 14, this run):", "", *verdicts, ""]
    lines += [f"Plot: `{PLOT}` (throughput and p95 latency against C).", ""]
    return lines


def render_plot(summary: dict[str, Any]) -> bytes | None:
    """PNG: throughput and p95 latency against the number of clients, per protocol and
    batching mode; None when the run has no serving-load rows."""
    table = rows(summary)
    if not table:
        return None
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: PLC0415
    from matplotlib.figure import Figure  # noqa: PLC0415

    fig = Figure(figsize=(11, 4.5), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax_tp, ax_lat = fig.subplots(1, 2)
    series: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in table:
        series.setdefault((str(r.get("protocol")), _mode(r)), []).append(r)
    for (protocol, mode), points in series.items():
        points = sorted(points, key=lambda r: r.get("clients") or 0)
        xs = [p.get("clients") for p in points]
        label = f"{LABELS.get(protocol, protocol)}, batching {mode}"
        style = "-o" if mode != "off" else "--s"
        ax_tp.plot(xs, [p.get("throughput_rps") for p in points], style, label=label)
        ax_lat.plot(xs, [p.get("latency_ms_p95") for p in points], style, label=label)
    for ax, title, ylabel in ((ax_tp, "Throughput", "correct predictions / s"),
                              (ax_lat, "Client-observed p95 latency", "ms")):
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("concurrent clients C")
        ax.set_ylabel(ylabel)
        ax.set_xticks(sorted({r.get("clients") for r in table}))
        ax.grid(alpha=0.3)
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=8)
    env = summary.get("environment") or {}
    fig.suptitle(f"Private prediction serving under load: {env.get('date', '')}, commit "
                 f"{env.get('git_commit', '')}", fontsize=11)
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def write_files(run_dir: Path, summary: dict[str, Any] | None = None) -> list[Path]:
    """Write ``serving_load.md`` and ``serving_load.png`` into ``run_dir`` (from its
    ``summary.json`` unless ``summary`` is given); nothing without serving-load rows.
    Both are rendered before either is written."""
    run_dir = Path(run_dir)
    if summary is None:
        summary = load_json(run_dir / "summary.json")
    lines = section(summary)
    png = render_plot(summary)
    if not lines or png is None:
        return []
    return [write_bytes(run_dir / PLOT, png),
            write_bytes(run_dir / MARKDOWN,
                        "\n".join(["# " + lines[0][3:], *lines[1:]]).encode("utf-8"))]
