"""Our replacement for ``tf_encrypted.operations.aux.aux``: bit ops ABY3 needs.

Same public API as tf-encrypted's wrapper, backed by ``harness.tfe.ops``; it has no
silent ``None`` module: if the ops cannot be built, importing fails.
"""
from __future__ import annotations

import tensorflow as tf

from harness.tfe import ops as _ops

aux_module = _ops.load()


def bit_gather(x: tf.Tensor, start: int, stride: int) -> tf.Tensor:
    """Bits ``start, start+stride, ...`` of each element, packed into the low bits."""
    return aux_module.bit_gather(x, start=start, stride=stride)


def bit_split_and_gather(x: tf.Tensor, stride: int) -> tf.Tensor:
    """``stack([bit_gather(x, i, stride) for i in range(stride)])``."""
    return aux_module.bit_split_and_gather(x, stride=stride)


def bit_reverse(x: tf.Tensor) -> tf.Tensor:
    """Reverse the bit order of each element over the dtype's width."""
    return aux_module.bit_reverse(x)


def xor_indices(x: tf.Tensor) -> tf.Tensor:
    """XOR of the indices of the set bits of each element."""
    return aux_module.xor_indices(x)
