"""Speed changes: ours, on top of tf-encrypted 0.9.1, each switchable per protocol instance.

A protocol made by ``harness.tfe.protocols.make(name, variant, changes)`` carries the
names of its enabled changes in ``prot.harness_speed``; the *stock* variant has none and
runs tf-encrypted's own code (with the port and security fixes only). Each change says
in its module who can derive what; the equivalence tests check each one against stock.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

ATTRIBUTE = "harness_speed"


@dataclass(frozen=True)
class Change:
    name: str
    protocols: tuple[str, ...]  # the protocols it applies to
    summary: str


CHANGES: dict[str, Change] = {c.name: c for c in (
    Change("pair-keys", ("pond", "securenn"),
           "triple producer and input owner send one pair key per run; random shares "
           "are derived at both ends (ChaCha20 PRF) instead of sent"),
    Change("narrow-wire", ("pond", "securenn"),
           "prime-field (p = 107) shares cross between parties as int8, not int64"),
    Change("compare-on-server0", ("securenn",),
           "private compare's public constant is shared from server0: the driver takes "
           "no part in the protocol"),
    Change("fused-compare", ("securenn",),
           "SecureNN private compare: each server's part as one C++ kernel on small "
           "integers, server2's zero search as another (was ~40 int64 ops + floormod)"),
    Change("ring-conv", ("pond", "securenn", "aby3"),
           "local int64 convolutions on shares as one direct C++ kernel instead of "
           "transposes + extract_image_patches + int64 matmul"),
    Change("dealer-relu", ("securenn",),
           "SecureNN ReLU in 4 rounds / 6 transfers (was ~8 / 22): masks from pair keys, "
           "x's Beaver opening rides with c's, server2 shares t = beta' xor lsb(r) and t*a"),
    Change("packed-openings", ("pond", "securenn"),
           "the two Beaver openings of a private x private product travel as one tensor "
           "per direction instead of two"),
    Change("packed-carry", ("aby3",),
           "ABY3 carry circuit (sign of a value, every ReLU): each level's two ANDs as one "
           "AND of stacked operands, 21 transfers per carry instead of 36"),
    Change("two-products", ("aby3",),
           "ABY3 private x private conv2d/matmul: x_i (w_i + w_i+1) + x_i+1 w_i, two local "
           "products per server instead of three"),
)}


def names_for(protocol: str) -> tuple[str, ...]:
    """The changes that apply to ``protocol`` (all of them make the *tuned* variant)."""
    return tuple(n for n, c in CHANGES.items() if protocol in c.protocols)


def check(protocol: str, changes: Any) -> frozenset[str]:
    """``changes`` validated for ``protocol``: ValueError naming the known ones."""
    chosen = frozenset(changes)
    unknown = chosen - set(names_for(protocol))
    if unknown:
        raise ValueError(f"unknown speed change(s) {', '.join(sorted(unknown))} for "
                         f"{protocol}; choose from {', '.join(names_for(protocol)) or 'none'}")
    return chosen


def enabled(prot: Any, name: str) -> bool:
    """True if the protocol instance ``prot`` runs speed change ``name``."""
    return name in getattr(prot, ATTRIBUTE, ())


def gated(name: str, ours: Any) -> Any:
    """A replacement for a protocol method: ``ours`` where change ``name`` is enabled for
    the instance (its first argument), else the original."""

    def wrap(original: Any) -> Any:
        def method(prot: Any, *args: Any, **kwargs: Any) -> Any:
            impl = ours if enabled(prot, name) else original
            return impl(prot, *args, **kwargs)

        method.__name__ = getattr(original, "__name__", name)
        method.__doc__ = f"{name} (harness speed change) or tf-encrypted's own"
        return method

    return wrap


def apply_imported() -> None:
    """Install the gated replacements (they do nothing for stock instances)."""
    from tf_encrypted.protocol.aby3 import aby3  # noqa: PLC0415
    from tf_encrypted.protocol.pond import pond  # noqa: PLC0415
    from tf_encrypted.protocol.securenn import securenn  # noqa: PLC0415
    from tf_encrypted.tensor import native  # noqa: PLC0415

    from harness.tfe.patching import replace  # noqa: PLC0415
    from harness.tfe.speed import (compare, dealer_relu, fused_compare,  # noqa: PLC0415
                                   packed_carry, packed_openings, ring_conv, triples,
                                   two_products, wire)

    replace(pond.Pond, "_share", gated("pair-keys", triples.pond_share), wrap=True)
    replace(pond.Pond, "_reconstruct", gated("narrow-wire", wire.reconstruct), wrap=True)
    replace(securenn, "_private_compare",  # fused-compare, else compare-on-server0, else stock
            lambda stock: gated("fused-compare", fused_compare.private_compare)(
                gated("compare-on-server0", compare.private_compare_on_server0)(stock)),
            wrap=True)
    compare.remember_original(securenn)
    ring_conv.install(native)
    dealer_relu.install(securenn)
    packed_openings.install(pond)
    packed_carry.install(aby3)
    two_products.install(aby3)


def configure(prot: Any, protocol: str, changes: frozenset[str]) -> Any:
    """Mark ``prot`` with its changes and give it what they need (e.g. its triple source)."""
    setattr(prot, ATTRIBUTE, changes)
    if "pair-keys" in changes:
        from harness.tfe.speed.triples import SeededTripleSource  # noqa: PLC0415

        prot.triple_source = SeededTripleSource(prot.triple_source.producer, prot.server_0,
                                                prot.server_1, narrow="narrow-wire" in changes)
    return prot
