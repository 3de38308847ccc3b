"""Speed change ``packed-openings``: both Beaver openings of a product in one tensor.

A private x private product (elementwise, matmul, conv2d) in Pond and SecureNN masks
both operands (``Pond.mask``: ``alpha = x - a``, ``beta = y - b``) and opens each: every
server sends the other its share of alpha and, separately, its share of beta, in the
same round. Between processes each tensor costs a fixed amount of CPU and a gRPC
message whatever its size, so here each server sends one tensor holding both shares
(flattened and concatenated), which the other splits again. Same values, same round;
half the openings' tensors (the tutorial model: 8 of 54 per SecureNN prediction).

Who can derive what: each server receives exactly the two shares it received before,
in one message; nothing else is sent, revealed or sampled differently.
"""
from __future__ import annotations

from typing import Any

import tensorflow as tf

NAME = "packed-openings"


def _flat(t: Any) -> tf.Tensor:
    return tf.reshape(t.value, [-1])


def mask_both(prot: Any, x: Any, y: Any) -> tuple[Any, Any] | None:
    """``(prot.mask(x), prot.mask(y))`` with one transfer per direction; None when this
    does not apply (an operand already masked in this graph, or mixed ring types)."""
    from tf_encrypted.protocol import protocol as tfe_protocol  # noqa: PLC0415
    from tf_encrypted.protocol.pond import PondMaskedTensor  # noqa: PLC0415

    nodes = tfe_protocol.nodes
    if (x is y or ("mask", x) in nodes or ("mask", y) in nodes
            or x.backing_dtype is not y.backing_dtype):
        return None
    factory = x.backing_dtype
    servers = (prot.server_0.device_name, prot.server_1.device_name)
    with tf.name_scope("mask"):
        triples = [prot.triple_source.mask(t.backing_dtype, t.shape) for t in (x, y)]
        with tf.name_scope("online"):
            mine, masks = [], []
            for i, device in enumerate(servers):
                with tf.device(device):
                    own = [trip[1 + i].identity() for trip in triples]
                    alphas = [t.unwrapped[i] - m for t, m in zip((x, y), own)]
                    masks.append(own)
                    mine.append((alphas, tf.concat([_flat(a) for a in alphas], axis=0)))
            opened = []
            for i, device in enumerate(servers):
                with tf.device(device):
                    other = tf.split(tf.identity(mine[1 - i][1]),
                                     [x.shape.num_elements(), y.shape.num_elements()])
                    opened.append([
                        alpha + factory.tensor(tf.reshape(part, t.shape)) if i == 0
                        else factory.tensor(tf.reshape(part, t.shape)) + alpha
                        for t, alpha, part in zip((x, y), mine[i][0], other)])
    out = []
    for k, t in enumerate((x, y)):
        masked = PondMaskedTensor(prot, t, triples[k][0], masks[0][k], masks[1][k],
                                  opened[0][k], opened[1][k], t.is_scaled)
        nodes[("mask", t)] = masked
        out.append(masked)
    return out[0], out[1]


def _packed(kind: str) -> Any:
    def product(prot: Any, x: Any, y: Any, *args: Any) -> Any:
        from harness.tfe.patching import original  # noqa: PLC0415
        from tf_encrypted.protocol.pond import pond  # noqa: PLC0415

        both = mask_both(prot, x, y)
        if both is None:
            return original(pond, f"_{kind}_private_private")(prot, x, y, *args)
        return getattr(prot, kind)(both[0], both[1], *args)

    product.__name__ = f"_{kind}_private_private"
    return product


def install(pond_module: Any) -> None:
    """Gate Pond's private x private ``mul``, ``matmul`` and ``conv2d`` per instance."""
    from harness.tfe.patching import replace  # noqa: PLC0415
    from harness.tfe.speed import gated  # noqa: PLC0415

    for kind in ("mul", "matmul", "conv2d"):
        replace(pond_module, f"_{kind}_private_private", gated(NAME, _packed(kind)), wrap=True)
