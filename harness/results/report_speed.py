"""The speed part of a run's report: stock vs tuned, what each change buys, total memory.

Rows come from ``bench/test_variants.py`` and ``bench/test_floor.py`` (the ``variants``
table of ``summary.json``; ``table == "floor"``: the runtime's floor per prediction):
``table == "variants"`` rows hold each variant's median of one interleaved test, per
model x protocol x deployment x batch; ``table == "changes"`` rows hold stock, tuned,
stock plus one change and tuned minus one change (SecureNN, batch 1). The peak total
RSS comes from ``total_memory`` (``harness.results.rss``). ``section(summary)`` returns
the Markdown lines (empty when the run has none of these). Ratios are taken only
between rows of one test, i.e. measured side by side. No TensorFlow here.
"""
from __future__ import annotations

from typing import Any

TABLE = "variants"
LABELS = {"securenn": "SecureNN", "aby3": "ABY3", "pond": "Pond"}
DEPLOYMENTS = {"inprocess": "in-process", "cluster": "cluster", "manual": "manual cluster"}
# issue 13's targets (tuned vs stock, same run)
TARGET_B1_CLUSTER = 2.0
TARGET_B32_CLUSTER = 2.5
TARGET_CLUSTER_OVER_INPROCESS = 1.5
REGRESSION_MARGIN = 0.90  # tuned slower than 0.90 x stock speed counts as a regression
TARGET_MEMORY_MB = 8 * 1024


def _f(value: Any, spec: str = ".3g") -> str:
    return "-" if value is None else format(value, spec)


def _rows(summary: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [r for r in summary.get(TABLE) or [] if isinstance(r, dict) and r.get("table") == kind]


def _key(r: dict[str, Any]) -> tuple:
    return (str(r.get("model")), str(r.get("protocol")), str(r.get("deployment")),
            int(r.get("batch") or 0))


def _label(r: dict[str, Any]) -> str:
    return LABELS.get(str(r.get("protocol")), str(r.get("protocol")))


def _groups(rows: list[dict[str, Any]]) -> dict[tuple, dict[str, dict[str, Any]]]:
    out: dict[tuple, dict[str, dict[str, Any]]] = {}
    for r in rows:
        out.setdefault(_key(r), {})[str(r.get("variant"))] = r
    return dict(sorted(out.items()))


def _variants_table(groups: dict[tuple, dict[str, dict[str, Any]]]) -> list[str]:
    names = sorted({v for g in groups.values() for v in g}, key=lambda v: (v != "stock", v))
    lines = ["| model | protocol | deployment | batch | "
             + " | ".join(f"{v} ms (per image)" for v in names)
             + " | tuned x faster | paired | agreement |",
             "|" + "---|" * (7 + len(names))]
    for (model, _, deployment, batch), by_variant in groups.items():
        any_row = next(iter(by_variant.values()))
        cells = [_cell(by_variant.get(v)) for v in names]
        tuned = by_variant.get("tuned", {}).get("speedup_vs_stock")
        paired = by_variant.get("tuned", {}).get("paired_speedup_vs_stock")
        agree = min((r.get("agreement", 1.0) for r in by_variant.values()), default=None)
        lines.append(f"| {model} | {_label(any_row)} | {DEPLOYMENTS.get(deployment, deployment)} "
                     f"| {batch} | " + " | ".join(cells)
                     + f" | {_f(tuned)} | {_f(paired)} | {_f(agree, '.4g')} |")
    return lines


def _cell(r: dict[str, Any] | None) -> str:
    if r is None:
        return "-"
    return f"{_f(r['median_ms'], '.4g')} ({_f(r['per_image_ms'], '.3g')})"


def _cluster_ratios(groups: dict[tuple, dict[str, dict[str, Any]]]
                    ) -> dict[tuple, dict[str, float]]:
    """cluster / in-process median per (model, protocol, batch) and variant. The two come
    from different tests (minutes apart): indicative, not side by side."""
    out: dict[tuple, dict[str, float]] = {}
    for (model, protocol, deployment, batch), by_variant in groups.items():
        if deployment != "cluster":
            continue
        local = groups.get((model, protocol, "inprocess", batch), {})
        for v, r in by_variant.items():
            if v in local and local[v].get("median_ms"):
                ratio = r["median_ms"] / local[v]["median_ms"]
                out.setdefault((model, protocol, batch), {})[v] = ratio
    return out


def _verdict(ok: bool | None) -> str:
    return "-" if ok is None else ("**met**" if ok else "**not met**")


def _targets(groups: dict[tuple, dict[str, dict[str, Any]]],
             ratios: dict[tuple, dict[str, float]]) -> list[str]:
    lines = []
    for (model, protocol, deployment, batch), by_variant in groups.items():
        speedup = by_variant.get("tuned", {}).get("speedup_vs_stock")
        if speedup is None:
            continue
        name = LABELS.get(protocol, protocol)
        if protocol == "securenn" and deployment == "cluster" and batch in (1, 32):
            target = TARGET_B1_CLUSTER if batch == 1 else TARGET_B32_CLUSTER
            lines.append(f"- {model}, SecureNN, cluster, batch {batch}: tuned x{speedup:.2f} "
                         f"faster than stock (target >= {target:g}): {_verdict(speedup >= target)}")
        elif protocol != "securenn":
            lines.append(f"- {model}, {name}, {DEPLOYMENTS.get(deployment, deployment)}, batch "
                         f"{batch}: tuned x{speedup:.2f} of stock's speed (no regression: >= "
                         f"{REGRESSION_MARGIN:g}, the noise margin): "
                         f"{_verdict(speedup >= REGRESSION_MARGIN)}")
    for (model, protocol, batch), by_variant in ratios.items():
        if protocol == "securenn" and batch == 1 and "tuned" in by_variant:
            ratio = by_variant["tuned"]
            lines.append(f"- {model}, SecureNN tuned, batch 1: cluster / in-process {ratio:.2f} "
                         f"(target <= {TARGET_CLUSTER_OVER_INPROCESS:g}; medians of two tests): "
                         f"{_verdict(ratio <= TARGET_CLUSTER_OVER_INPROCESS)}")
    return lines


def _changes_table(rows: list[dict[str, Any]]) -> list[str]:
    lines = []
    by_test: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        by_test.setdefault(_key(r), []).append(r)
    for (model, protocol, deployment, batch), test_rows in sorted(by_test.items()):
        spec = {r.get("spec"): r for r in test_rows}
        stock, tuned = spec.get("stock"), spec.get("tuned")
        if stock is None or tuned is None:
            continue
        lines += [f"{model}, {LABELS.get(protocol, protocol)}, "
                  f"{DEPLOYMENTS.get(deployment, deployment)}, batch {batch}: stock "
                  f"{_f(stock['median_ms'], '.4g')} ms, tuned {_f(tuned['median_ms'], '.4g')} ms "
                  f"(x{_f(tuned.get('speedup_vs_stock'))}).", "",
                  "| change | what it does | stock + it (ms) | x faster than stock | "
                  "tuned - it (ms) | x slower than tuned |", "|" + "---|" * 6]
        changes = sorted({r.get("change") for r in test_rows if r.get("change")})
        for change in changes:
            plus = spec.get(f"stock+{change}", {})
            minus = spec.get(f"tuned-{change}", {})
            summary = plus.get("summary") or minus.get("summary") or ""
            lines.append(f"| `{change}` | {summary} | {_f(plus.get('median_ms'), '.4g')} | "
                         f"{_f(plus.get('buys'))} | {_f(minus.get('median_ms'), '.4g')} | "
                         f"{_f(minus.get('buys'))} |")
        lines.append("")
    return lines


def _floor_table(rows: list[dict[str, Any]]) -> list[str]:
    """``bench/test_floor.py``: in-process, cluster and the cluster's floor (the same
    transfers with no protocol work), timed interleaved in one test."""
    lines = ["| model | protocol | variant | batch | tensors / rounds | in-process ms | "
             "cluster ms | floor ms | cluster / in-process | floor / in-process | "
             "packed: tensors, floor ms |",
             "|" + "---|" * 11]
    for r in sorted(rows, key=lambda r: (*_key(r), str(r.get("variant")))):
        lines.append(
            f"| {r.get('model')} | {_label(r)} | {r.get('variant')} | {r.get('batch')} | "
            f"{r.get('party_tensors')} / {r.get('comm_rounds')} | {_f(r.get('inprocess_ms'), '.4g')} "
            f"| {_f(r.get('cluster_ms'), '.4g')} | {_f(r.get('floor_ms'), '.4g')} | "
            f"{_f(r.get('cluster_over_inprocess'))} | {_f(r.get('floor_over_inprocess'))} | "
            f"{r.get('packed_tensors', '-')}, {_f(r.get('packed_floor_ms'), '.4g')} |")
    return lines


def _floor_verdicts(rows: list[dict[str, Any]]) -> list[str]:
    """What the floor says about the cluster / in-process target (SecureNN tuned, batch 1)."""
    lines = []
    for r in rows:
        if (r.get("protocol"), r.get("variant"), r.get("batch")) != ("securenn", "tuned", 1):
            continue
        ratio, floor = r.get("cluster_over_inprocess"), r.get("floor_over_inprocess")
        if ratio is None or floor is None:
            continue
        if floor > TARGET_CLUSTER_OVER_INPROCESS:
            reach = "out of reach on this runtime with these transfers, whatever the compute"
        elif 1 + floor > TARGET_CLUSTER_OVER_INPROCESS:
            reach = "reachable only if the compute overlaps the runtime's cost"
        else:
            reach = "within reach of the floor"
        lines.append(f"- {r.get('model')}, SecureNN tuned, batch 1: cluster / in-process "
                     f"{ratio:.2f} side by side (target <= {TARGET_CLUSTER_OVER_INPROCESS:g}): "
                     f"{_verdict(ratio <= TARGET_CLUSTER_OVER_INPROCESS)}; the floor alone is "
                     f"{floor:.2f} x in-process, so the target is {reach}")
    return lines + [""] if lines else []


def _memory(summary: dict[str, Any]) -> list[str]:
    mem = summary.get("total_memory") or {}
    rss, pss = mem.get("peak_total_rss_mb"), mem.get("peak_total_pss_mb")
    if rss is None:
        return []
    over = f"{mem.get('samples')} samples over {_f(mem.get('duration_s'), '.0f')} s"
    if pss is None:  # runs from before PSS was sampled, or a system without smaps_rollup
        return [f"- Peak total RSS of the run (all processes at once): {rss:.0f} MB with "
                f"{mem.get('processes_at_peak')} processes, {over} (target <= "
                f"{TARGET_MEMORY_MB} MB): {_verdict(rss <= TARGET_MEMORY_MB)}. "
                f"Method: {mem.get('method')}.", ""]
    return [f"- Peak total memory of the run (all processes at once, PSS): {pss:.0f} MB with "
            f"{mem.get('processes_at_pss_peak')} processes, {over} (target <= "
            f"{TARGET_MEMORY_MB} MB): {_verdict(pss <= TARGET_MEMORY_MB)}. The RSS sum, "
            f"which counts shared library pages once per process, peaked at {rss:.0f} MB "
            f"with {mem.get('processes_at_peak')} processes.{_peak_roles(mem)} Method: "
            f"{mem.get('method')}.", ""]


def _peak_roles(mem: dict[str, Any]) -> str:
    """' At the peak: driver 2600 MB (1 process), ...' (runs that recorded it)."""
    roles = mem.get("pss_peak_by_role") or {}
    parts = [f"{role} {v['mb']:.0f} MB ({v['processes']} process"
             f"{'' if v['processes'] == 1 else 'es'})" for role, v in roles.items()]
    return f" At the peak: {', '.join(parts)}." if parts else ""


def section(summary: dict[str, Any]) -> list[str]:
    """The Markdown lines of the speed section; empty when the run has no such rows."""
    variants, changes = _rows(summary, "variants"), _rows(summary, "changes")
    floor, memory = _rows(summary, "floor"), _memory(summary)
    if not (variants or changes or floor or memory):
        return []
    lines = ["## Stock vs tuned tf-encrypted", "",
             "*stock* is tf-encrypted 0.9.1's own protocol code with the port and security "
             "fixes only; *tuned* adds every speed change of `harness.tfe.speed` that applies. "
             "The variants of one row were timed interleaved in one test (each round calls "
             "each once, rotating the order); medians, and ratios of medians (*paired*: the median "
             "over rounds of stock's time / tuned's time in the same round).", ""]
    if variants:
        groups = _groups(variants)
        lines += _variants_table(groups) + [""]
        ratios = _cluster_ratios(groups)
        if ratios:
            lines += ["cluster / in-process (medians of two tests): " + "; ".join(
                f"{LABELS.get(p, p)} batch {b}: " + ", ".join(
                    f"{v} {r:.2f}" for v, r in sorted(by_v.items()))
                for (_, p, b), by_v in sorted(ratios.items())), ""]
        targets = _targets(groups, ratios)
        if targets:
            lines += ["Targets (issue 13, this run):", "", *targets, ""]
    if changes:
        lines += ["### What each change buys", "",
                  "Each change alone on top of stock, and tuned without it, timed interleaved "
                  "with stock and tuned in one test.", "", *_changes_table(changes)]
    if floor:
        lines += ["### The runtime's floor", "",
                  "*floor*: the same transfers as one prediction (tensors, sizes, links, "
                  "rounds: checked equal to the exact count) with no protocol work, on the "
                  "same cluster, timed interleaved with the prediction in-process and on the "
                  "cluster. The cluster cannot beat it, and where compute and runtime do not "
                  "overlap (two shared cores) it takes about in-process + floor. *packed*: "
                  "the skeleton with each link's transfers of one round sent as one tensor "
                  "(same bytes and rounds), what such packing could at best leave.", "",
                  *_floor_table(floor), "", *_floor_verdicts(floor)]
    if memory:
        lines += ["### Memory", "", *memory]
    return lines
