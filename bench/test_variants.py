"""Stock vs tuned tf-encrypted, side by side in one run, and what each speed change buys.

The CPU of this machine is shared and its speed moves a lot between minutes, so the
variants of one (model, protocol, deployment, batch) are timed *interleaved*: every
round calls each variant once, in a rotating order, and each variant's median is taken
over its rounds. Ratios of medians from one test are what the report quotes.

- ``test_variants``: the variants of ``--variants`` (needs at least two, e.g.
  ``--variants stock,tuned``; the full suite compares stock and tuned unless ``--variants``
  says otherwise), per protocol x deployment x batch; rows in the
  ``variants`` table with ``table == "variants"``.
- ``test_change_table``: SecureNN, batch 1: stock, tuned, stock plus one change and
  tuned minus one change, for every speed change that applies; rows with
  ``table == "changes"``.

Every variant's logits are compared with plaintext (argmax agreement) in the same test.
"""
from __future__ import annotations

from functools import partial
from typing import Any

import numpy as np
import pytest

from harness.inference.evaluate import fill_batch
from harness.results.metrics import interleaved
from harness.tfe import speed


def _rounds(options: Any, batch: int) -> int:
    if options.quick:
        return 5
    return 30 if batch == 1 else 8


def _paired(times: dict[str, list[float]], base: str, name: str) -> float | None:
    """Median over rounds of base's time / name's time in the same round (robust to the
    machine's speed drifting between rounds)."""
    if base not in times:
        return None
    return float(np.median(np.asarray(times[base]) / np.asarray(times[name])))


def _agreement(model: Any, plain_argmax: np.ndarray, x: np.ndarray) -> float:
    return float(np.mean(np.argmax(model.predict(x), axis=1) == plain_argmax))


def _base_row(model: str, protocol: str, deployment: str, batch: int) -> dict[str, Any]:
    return {"model": model, "protocol": protocol, "deployment": deployment, "batch": batch}


def test_variants(benchmark, models, recorder, model, protocol, deployment, batch,
                  test_split, options):
    variants = list(options.compared_variants)
    if len(variants) < 2:
        pytest.skip("needs two variants or more: --variants stock,tuned (the full suite's default)")
    benchmark.group = f"{model}-{protocol}-variants-{deployment}-batch{batch}"
    built = {v: models.private(model, protocol, deployment, batch, v) for v in variants}
    x = fill_batch(test_split[0], batch)
    plain_argmax = np.argmax(models.plaintext(model, batch)(x), axis=1)
    rounds = _rounds(options, batch)
    times = interleaved({v: partial(m.predict, x) for v, m in built.items()}, benchmark, rounds)
    medians = {v: float(np.median(t)) * 1e3 for v, t in times.items()}
    stock = medians.get("stock")
    rows = []
    for v in variants:
        row = {**_base_row(model, protocol, deployment, batch), "table": "variants",
               "variant": v, "changes": sorted(built[v].protocol.harness_speed),
               "median_ms": medians[v], "per_image_ms": medians[v] / batch,
               "rounds": len(times[v]),
               "agreement": _agreement(built[v], plain_argmax, x)}
        if stock is not None:
            row["speedup_vs_stock"] = stock / medians[v]
            row["paired_speedup_vs_stock"] = _paired(times, "stock", v)
        rows.append(row)
    recorder.variants.extend(rows)
    benchmark.extra_info.update({f"{r['variant']}_median_ms": r["median_ms"] for r in rows})
    _check_agreement(protocol, rows)


def _check_agreement(protocol: str, rows: list[dict[str, Any]]) -> None:
    """Exact-ReLU protocols agree with plaintext on every image; Pond's ReLU is a
    polynomial approximation (by design), so its agreement is only recorded."""
    if protocol != "pond":
        assert all(r["agreement"] == 1.0 for r in rows), rows


def _change_specs(protocol: str) -> dict[str, frozenset[str]]:
    names = frozenset(speed.names_for(protocol))
    specs = {"stock": frozenset(), "tuned": names}
    for name in sorted(names):
        specs[f"stock+{name}"] = frozenset({name})
    for name in sorted(names):
        specs[f"tuned-{name}"] = names - {name}
    return specs


def test_change_table(benchmark, models, clusters, recorder, model, protocol, deployment,
                      batch, test_split, options):
    """What each change buys: SecureNN batch 1, one change added to stock / removed from
    tuned at a time, all timed interleaved in this test."""
    if protocol != "securenn" or batch != 1 or not {"stock", "tuned"} <= set(options.compared_variants):
        pytest.skip("the change table is for securenn, batch 1, with --variants stock,tuned")
    from harness.inference.private import PrivateModel  # noqa: PLC0415

    benchmark.group = f"{model}-{protocol}-changes-{deployment}-batch{batch}"
    keras = models.keras(model, batch)
    cluster = clusters.cluster(deployment, protocol)
    specs = _change_specs(protocol)
    built = {}
    for spec, changes in specs.items():
        private = PrivateModel(keras, protocol, cluster=cluster, changes=changes)
        private.predict(private.zeros())  # build + trace
        built[spec] = private
    x = fill_batch(test_split[0], batch)
    plain_argmax = np.argmax(models.plaintext(model, batch)(x), axis=1)
    times = interleaved({s: partial(m.predict, x) for s, m in built.items()}, benchmark,
                        _rounds(options, batch))
    medians = {s: float(np.median(t)) * 1e3 for s, t in times.items()}
    rows = []
    for spec, changes in specs.items():
        base, _, change = spec.partition("+") if "+" in spec else spec.partition("-")
        row = {**_base_row(model, protocol, deployment, batch), "table": "changes",
               "spec": spec, "base": base, "change": change or None,
               "changes": sorted(changes), "median_ms": medians[spec],
               "speedup_vs_stock": medians["stock"] / medians[spec],
               "paired_speedup_vs_stock": _paired(times, "stock", spec),
               "rounds": len(times[spec]),
               "agreement": _agreement(built[spec], plain_argmax, x)}
        if change:
            row["summary"] = speed.CHANGES[change].summary
        if change and base == "stock":
            row["buys"] = medians["stock"] / medians[spec]  # x faster than stock with it
        elif change:
            row["buys"] = medians[spec] / medians["tuned"]  # x slower than tuned without it
        rows.append(row)
    recorder.variants.extend(rows)
    benchmark.extra_info.update({r["spec"]: r["median_ms"] for r in rows})
    del built
    _check_agreement(protocol, rows)
