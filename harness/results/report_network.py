"""The shaped-network part of a run's report: emulated next to projected latency, and
latency against round-trip time (rows of ``bench/test_network.py``; no TensorFlow).

The projection (``harness.results.projection``): compute (the same prediction on the same
cluster with its links unshaped; older runs: on loopback) + rounds x
RTT + the busiest link's bytes / rate. Where the kernel shapes bandwidth but cannot delay
(no ``sch_netem``), the emulated run has the rate limit only: it is compared with the
projection without the RTT term (the model's error), and the RTT term is projected.
"""
from __future__ import annotations

import io
from typing import Any

from harness.results.projection import WIRE_CHECKED_BYTES, checked_ratios
from harness.results.report_tables import _num, _proto, _rows, _table

RTT_RANGE_MS = (0.0, 100.0)


def _error(r: dict[str, Any], key: str = "projected_without_rtt_ms") -> float | None:
    measured, model = r.get("emulated_ms"), r.get(key)
    if not measured or model is None:
        return None
    return 100.0 * (model - measured) / measured


def _compute_ms(r: dict[str, Any]) -> float | None:
    """The row's compute reference: ``compute_ms``, or ``loopback_ms`` in older runs."""
    return r.get("compute_ms", r.get("loopback_ms"))


def section(summary: dict[str, Any]) -> list[str]:
    rows = _rows(summary, "network")
    if not rows:
        return []
    table = []
    for r in rows:
        rate = r.get("rate_bytes_per_s")
        table.append((r.get("model", "tutorial"), _proto(r.get("protocol", "?")),
                      r.get("network"), r.get("batch"),
                      _num(rate / 1e6 if rate else None, ".4g"),
                      _num((r.get("rtt_s") or 0) * 1e3, ".3g"), r.get("delay", "-"),
                      _num(_compute_ms(r), ".4g"), _num(r.get("emulated_ms"), ".4g"),
                      _num(r.get("projected_without_rtt_ms"), ".4g"), _num(_error(r), "+.3g"),
                      _num(r.get("projected_sequential_without_rtt_ms"), ".4g"),
                      _num(r.get("projected_scheduled_without_rtt_ms"), ".4g"),
                      _num(_error(r, SCHEDULED), "+.3g"),
                      _num(r.get(TIMED), ".4g"), _num(_error(r, TIMED), "+.3g"),
                      _num(r.get("projected_ms"), ".4g"),
                      _num((r.get("projection") or {}).get("rounds"), "d"), _wire(r)))
    return ["## Shaped networks", "",
            "Cluster players in their own network namespaces, each link shaped with `tc`. "
            "*emulated*: measured on the shaped links; *projected*: compute + rounds "
            "x RTT + busiest link's bytes / rate. Where delay is *projected* (the kernel has no "
            "`sch_netem`), the emulated run has the rate limit only and is compared with the "
            "projection without its RTT term (model error); the full projection adds the "
            "rounds x RTT. *compute*: the same prediction on the same cluster with its links' "
            "limits lifted, timed interleaved with the shaped calls (runs before "
            "2026-12-06: a loopback cluster). "
            "*rounds sequential*: the same projection if no two rounds overlapped (each "
            "round as long as its busiest link needs): the upper reading of the transfer "
            "term, where the projection's busiest link is the lower. *scheduled*: each "
            "transfer replayed on its links once the transfers it waits for have arrived "
            "(the traffic analysis names them), each link serving the transfer with the "
            "fewest bytes left first while the others wait or take what its other link "
            "leaves (rows from before 2026-12-07: one at a time, in the order they became "
            "ready), with the compute spread evenly between the levels of transfers and each "
            "link's token bucket (the emulation's tbf burst) letting small transfers through "
            "at once. "
            "*timed*: the same replay, but each transfer's lead (from the arrival of what "
            "it waits for to its being sent), its own duration and the rest of the call "
            "after it are those of a call traced with the links' limits lifted "
            "(TensorFlow's rendezvous log), scaled to the compute median. "
            "*wire / counted*: the frame bytes each link's tbf let through during one shaped "
            "call (tc's counters) over the payload we counted for that link, lowest and "
            f"highest of the links with at least {WIRE_CHECKED_BYTES // 1024} KiB counted: "
            "1514/1448 = 1.046 is what TCP/IP and Ethernet headers of full-size segments add, "
            "and ACKs and RPC headers add a little more; what TCP retransmitted in that call "
            "(ss, per sender) is shown beside it, and may have crossed an uplink twice.", "",
            *_table(("model", "protocol", "network", "batch", "rate MB/s", "RTT ms", "delay",
                     "compute ms", "emulated ms", "projected w/o RTT ms", "model error %",
                     "rounds sequential w/o RTT ms", "scheduled w/o RTT ms",
                     "scheduled error %", "timed w/o RTT ms", "timed error %",
                     "projected ms", "rounds", "wire / counted"), table),
            "", *_within(rows, "Projection (busiest link)"),
            *_within(rows, "Scheduled projection", SCHEDULED),
            *_within(rows, "Timed projection", TIMED)]


SCHEDULED = "projected_scheduled_without_rtt_ms"
TIMED = "projected_timed_without_rtt_ms"


def _wire(r: dict[str, Any]) -> str:
    """Lowest-highest wire / counted ratio of the row's well-filled links ('-': none)."""
    wire = r.get("wire") or {}
    ratios = list(checked_ratios(wire).values())
    if not ratios:
        return "-"
    resent = sum(v.get("resent") or 0 for v in wire.values())
    size = f"{resent / 1e6:.3g} MB" if resent >= 1e5 else f"{resent / 1e3:.3g} kB"
    return f"{min(ratios):.3f}-{max(ratios):.3f}" + (f" ({size} resent)" if resent else "")


def _within(rows: list[dict[str, Any]], what: str, key: str = "projected_without_rtt_ms",
            bound: float = 15.0) -> list[str]:
    """How many shaped rows a projection met within ``bound`` percent."""
    errors = [e for e in (_error(r, key) for r in rows) if e is not None]
    if not errors:
        return []
    inside = sum(abs(e) <= bound for e in errors)
    return [f"{what} within {bound:g} % of the emulated run (w/o RTT) in {inside} of "
            f"{len(errors)} rows; largest error {max(errors, key=abs):+.0f} %.", ""]


def _lines(summary: dict[str, Any]) -> dict[str, tuple[float, float, int]]:
    """(model and) protocol -> (compute ms, transfer ms at the slowest profile,
    rounds), batch 1 only."""
    rows = [r for r in _rows(summary, "network") if r.get("batch", 1) == 1]
    several = len({r.get("model", "tutorial") for r in rows}) > 1
    out: dict[str, tuple[float, float, int]] = {}
    for r in rows:
        proj = r.get("projection") or {}
        if _compute_ms(r) is None or proj.get("rounds") is None:
            continue
        label = _proto(str(r.get("protocol")))
        out[f"{r.get('model', 'tutorial')} {label}" if several else label] = (
            float(_compute_ms(r)),
                                       1e3 * float(proj.get("transfer_s") or 0.0),
                                       int(proj["rounds"]))
    return out


def render_rtt_plot(summary: dict[str, Any]) -> bytes | None:
    """Projected latency against RTT per protocol (None without network rows): where the
    lines cross, the protocol with fewer rounds overtakes the one with less compute."""
    lines = _lines(summary)
    if not lines:
        return None
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    lo, hi = RTT_RANGE_MS
    for label, (compute, transfer, rounds) in sorted(lines.items()):
        ax.plot([lo, hi], [compute + transfer + rounds * lo, compute + transfer + rounds * hi],
                label=f"{label} ({rounds} rounds)")
    ax.set_xlabel("round-trip time (ms)")
    ax.set_ylabel("projected latency per prediction (ms)")
    ax.set_title("Projected latency against RTT (batch 1)")
    ax.legend()
    ax.grid(alpha=0.3)
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()
