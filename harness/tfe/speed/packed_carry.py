"""Speed change ``packed-carry``: ABY3's carry circuit with one AND per level, not two.

ABY3 finds the sign of a shared value (``msb``, hence every ReLU and comparison) with a
carry circuit over boolean shares: the bits are split into halves ``k`` times (64, 32,
..., 1), and each level computes ``G = G_hi ^ (G_lo & P_hi)`` and ``P = P_lo & P_hi``:
two private ANDs, each re-sharing once (one tensor from each server to the next:
three transfers). tf-encrypted runs them as two separate ANDs of the same round. Here
both operand pairs are stacked into one tensor and go through one AND of the stacked
shape; the last level, whose ``P`` nothing uses, runs the ``G`` AND alone. For 64-bit
values: 7 ANDs (21 transfers) per carry instead of 12 (36), in the same 7 rounds, with
the same bytes.

Who can derive what: nothing changes. The stacked AND is ABY3's AND applied
elementwise to twice as many elements: each element of the product is re-shared with
its own fresh zero-sharing mask (``_gen_zero_sharing`` of the stacked shape), so each
server receives, element for element, a uniformly masked value exactly as in the two
separate ANDs; which element is a ``G`` and which a ``P`` term is public, as it is in
tf-encrypted's circuit.
"""
from __future__ import annotations

from typing import Any

NAME = "packed-carry"


def carry(prot: Any, x: Any, y: Any, pos: int | None = None) -> Any:
    """tf-encrypted's ``_carry_computation`` (ABY3), with the two ANDs of each level
    as one AND of the stacked operands. Same result bits; fresh shares."""
    import tensorflow as tf  # noqa: PLC0415
    from tf_encrypted.protocol.aby3 import aby3  # noqa: PLC0415

    assert x.backing_dtype == y.backing_dtype
    factories = aby3.factories
    with tf.name_scope("carry"):
        if pos is None:
            pos = x.backing_dtype.nbits - 1
        if pos < 0:
            return aby3._zeros_public(prot, x.shape, False, aby3.ShareType.PUBLIC, factories[1])
        k = aby3.next_power_of_two(pos + 1)  # the bit length the circuit works on
        if k != pos + 1:
            x, y = x << (k - pos - 1), y << (k - pos - 1)
        if k != x.backing_dtype.nbits:
            x, y = x.cast(factories[k]), y.cast(factories[k])
        g = x & y
        p = x ^ y
        while k > 1:
            gs = prot.bit_split_and_gather(g, 2).cast(factories[k // 2])
            ps = prot.bit_split_and_gather(p, 2).cast(factories[k // 2])
            if k == 2:  # the last level: its P is not used
                g = gs[1] ^ (gs[0] & ps[1])
            else:
                both = prot.stack([gs[0], ps[0]], axis=0) & prot.stack([ps[1], ps[1]], axis=0)
                g, p = gs[1] ^ both[0], both[1]
            k //= 2
        # G holds the carry into the next position
        g = g & prot.define_constant(1, apply_scaling=False, factory=g.backing_dtype)
        g.is_scaled = False
        return g


def install(aby3_module: Any) -> None:
    """Route ABY3's carry circuit through ``carry`` where the protocol runs this change."""
    from harness.tfe.patching import replace  # noqa: PLC0415
    from harness.tfe.speed import gated  # noqa: PLC0415

    replace(aby3_module, "_carry_computation", gated(NAME, carry), wrap=True)
