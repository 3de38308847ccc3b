"""Speed change ``two-products``: ABY3's private x private products with two local
products per server, not three.

In ABY3 server i holds the replicated shares (x_i, x_{i+1}) and (w_i, w_{i+1}) and
computes its additive share of x * w (a convolution or a matrix product) as
``x_i w_i + x_i w_{i+1} + x_{i+1} w_i``; tf-encrypted runs the three products. The
product is linear in each argument, so the same ring element is
``x_i (w_i + w_{i+1}) + x_{i+1} w_i``: two products and one addition of the (small)
weight shares. In Z_2^64 distributivity holds exactly, so every share, and hence the
result, is the same ring element as stock's (checked in ``tests/test_speed_aby3.py``).
For the tutorial model the convolutions are a third of an ABY3 prediction's CPU time
in-process.

Who can derive what: nothing changes. Each server computes the same value from the same
shares it already holds; the zero-sharing mask, the re-sharing transfer and the
truncation that follow are tf-encrypted's own.
"""
from __future__ import annotations

from typing import Any, Callable

NAME = "two-products"


def _product(prot: Any, x: Any, y: Any, local: Callable[[Any, Any], Any], scope: str) -> Any:
    import tensorflow as tf  # noqa: PLC0415
    from tf_encrypted.protocol.aby3.aby3_tensors import ABY3PrivateTensor  # noqa: PLC0415

    xs, ys = x.unwrapped, y.unwrapped
    with tf.name_scope(scope):
        part = [None, None, None]
        for i in range(3):
            with tf.device(prot.servers[i].device_name):
                part[i] = local(xs[i][0], ys[i][0] + ys[i][1]) + local(xs[i][1], ys[i][0])
        masks = prot._gen_zero_sharing(part[0].shape)
        z = [[None, None], [None, None], [None, None]]
        for i in range(3):
            with tf.device(prot.servers[i].device_name):
                z[i][0] = part[i] + masks[i]
        for i in range(3):  # re-sharing: server i receives server i+1's share
            with tf.device(prot.servers[i].device_name):
                z[i][1] = z[(i + 1) % 3][0].identity()
        z = ABY3PrivateTensor(prot, z, x.is_scaled or y.is_scaled, x.share_type)
        return prot.truncate(z) if x.is_scaled and y.is_scaled else z


def conv2d(prot: Any, x: Any, w: Any, strides: Any, padding: str) -> Any:
    """``_conv2d_private_private`` of tf-encrypted's ABY3 with two convolutions a server."""
    return _product(prot, x, w, lambda a, b: a.conv2d(b, strides, padding), "conv2d")


def matmul(prot: Any, x: Any, y: Any) -> Any:
    """``_matmul_private_private`` of tf-encrypted's ABY3 with two matmuls a server."""
    return _product(prot, x, y, lambda a, b: a.matmul(b), "matmul")


def install(aby3_module: Any) -> None:
    """Route ABY3's private x private conv2d and matmul through ours where enabled."""
    from harness.tfe.patching import replace  # noqa: PLC0415
    from harness.tfe.speed import gated  # noqa: PLC0415

    replace(aby3_module, "_conv2d_private_private", gated(NAME, conv2d), wrap=True)
    replace(aby3_module, "_matmul_private_private", gated(NAME, matmul), wrap=True)
