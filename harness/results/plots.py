"""The plot of a run's report (``report.png``): latency and communication per protocol.

matplotlib is imported only to draw; no TensorFlow.
"""
from __future__ import annotations

import io
from typing import Any
from harness.results.report_tables import (
    DEPLOYMENT_LABEL, _rows, _sorted, _protocol_order, _title, _dep, _proto)


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
