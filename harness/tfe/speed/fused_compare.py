"""Speed change ``fused-compare``: SecureNN's private compare as one kernel per party.

tf-encrypted computes each server's part of the private compare (the bits of the
public ``s = r + beta``, their XOR with the shared bits of ``x``, a reversed exclusive
cumulative sum, the edge case, the multiplicative mask) as some 40 int64 TensorFlow
ops over ``[..., 64]`` tensors, each followed by a ``floormod`` by p = 107: about two
thirds of the CPU time of a SecureNN prediction. Our ops (``harness/tfe/ops/src/
securenn_ops.cc``) compute the same field elements in one pass on small integers:

- ``HarnessCompareShare`` on server0 and server1: that party's share of ``c * mask``;
- ``HarnessZeroCount`` on server2: the number of zeros of ``c * mask`` per value.

The graph keeps tf-encrypted's structure otherwise: the same values cross between the
same parties; the zero-search mask, which server0 samples and sends to server1, is
sampled directly as int8 (an eighth of the bytes; the field elements are the same).

Who can derive what: each party computes, from the inputs it already held, exactly the
shares tf-encrypted computes there (``tests/test_speed.py`` checks them element by
element against tf-encrypted's own ops); nothing else is sent or revealed.
"""
from __future__ import annotations

from typing import Any

import tensorflow as tf

from harness.tfe import secure_random

NAME = "fused-compare"
BITS = 64
EDGE_CASE = [0] + [1] * (BITS - 1)  # tf-encrypted's c for beta = 1, s = 0 (r = -1)


def _ops() -> Any:
    return secure_random.secure_random_module  # the one library of our ops


def field_uniform(shape: Any, seed: tf.Tensor, modulus: int, low: int = 0) -> tf.Tensor:
    """Uniform int8 elements of [low, modulus) from a seed (``HarnessFieldUniform``:
    ChaCha20, one keystream byte per candidate, rejection sampling, no bias)."""
    return _ops().harness_field_uniform(tf.constant(list(shape), tf.int32), seed,
                                        low=low, range=modulus - low)


def compare_share(x_bits: tf.Tensor, r: tf.Tensor, beta: tf.Tensor, edge: tf.Tensor,
                  mask: tf.Tensor, party: int, modulus: int, fused: bool = True,
                  out_dtype: tf.DType = tf.int8) -> tf.Tensor:
    """Party ``party``'s share of the masked comparison vector ``c * mask`` (mod p).

    ``x_bits``: its share of the bits of x, ``[..., 64]``; ``r``: the public int64 value
    compared with; ``beta``: the public random bits; ``edge``: its share of the edge-case
    vector (64); ``mask``: the public nonzero mask. ``fused=False`` computes the same
    with TensorFlow ops, step by step as tf-encrypted does (the reference)."""
    if fused:
        return _ops().harness_compare_share(
            x_bits, r, beta, tf.cast(edge, x_bits.dtype), mask, party=party,
            modulus=modulus, Tout=out_dtype)
    return tf.cast(_compare_share_reference(x_bits, r, beta, edge, mask, party, modulus),
                   out_dtype)


def _compare_share_reference(x_bits, r, beta, edge, mask, party, p):
    mod = lambda v: tf.math.floormod(v, p)  # noqa: E731
    i64 = lambda v: tf.cast(v, tf.int64)  # noqa: E731
    x, beta, mask, edge = mod(i64(x_bits)), mod(i64(beta)), mod(i64(mask)), mod(i64(edge))
    s = r + beta  # select(beta, r, r + 1) in the int64 ring
    s_bits = tf.bitwise.bitwise_and(
        tf.bitwise.right_shift(tf.expand_dims(s, -1), tf.range(BITS, dtype=tf.int64)), 1)
    public = s_bits if party == 0 else tf.zeros_like(s_bits)  # public terms: party 0
    w = mod(x + public - mod(2 * mod(x * s_bits)))  # x xor s
    w_sum = mod(tf.cumsum(w, axis=-1, reverse=True, exclusive=True))
    sign = tf.expand_dims(mod(1 - 2 * beta), -1)  # select(beta, 1, -1)
    c = mod(mod((public - x) * sign) + (1 if party == 0 else 0) + w_sum)
    edge_case = tf.expand_dims(beta * tf.cast(tf.equal(s, 0), tf.int64), -1)
    c = mod(c + edge_case * mod(edge - c))  # select(edge_case, c, edge)
    return mod(c * mask)


def zero_count(c0: tf.Tensor, c1: tf.Tensor, modulus: int, fused: bool = True) -> tf.Tensor:
    """How many of the 64 entries of ``c0 + c1`` (mod p) are zero, per value (int64)."""
    if fused:
        return _ops().harness_zero_count(c0, tf.cast(c1, c0.dtype), modulus=modulus)
    d = tf.math.floormod(tf.cast(c0, tf.int64) + tf.cast(c1, tf.int64), modulus)
    return tf.reduce_sum(tf.cast(tf.equal(d, 0), tf.int64), axis=-1)


def bits_sub(r: tf.Tensor, u: tf.Tensor, modulus: int, fused: bool = True,
             out_dtype: tf.DType = tf.int8) -> tf.Tensor:
    """``bits(r) - u`` (mod p): the share of the bits of ``r`` whose other share is ``u``."""
    if fused:
        return _ops().harness_bits_sub(r, u, modulus=modulus, Tout=out_dtype)
    bits = tf.bitwise.bitwise_and(
        tf.bitwise.right_shift(tf.expand_dims(r, -1), tf.range(BITS, dtype=tf.int64)), 1)
    return tf.cast(tf.math.floormod(bits - tf.cast(u, tf.int64), modulus), out_dtype)


def private_compare(prot: Any, x_bits: Any, r: Any, beta: Any) -> Any:
    """``securenn._private_compare`` with the fused kernels; same arguments and result
    (the ring shares of "r < x" xor beta, per value, made by server2)."""
    from tf_encrypted.protocol.pond import PondPrivateTensor  # noqa: PLC0415

    if not r.shape.as_list():  # stock broadcasts a scalar to shape (1,): keep its result
        from harness.tfe.speed.compare import private_compare_on_server0  # noqa: PLC0415

        return private_compare_on_server0(prot, x_bits, r, beta)
    p = prot.prime_factory.modulus
    servers = (prot.server_0, prot.server_1)
    with tf.name_scope("private_compare"):
        with tf.device(prot.server_0.device_name):
            # tf-encrypted's edge-case constant, shared as it shares it (from server0)
            edge_raw = prot.prime_factory.tensor(tf.constant([EDGE_CASE], tf.int64))
            edge = prot._share_and_wrap(edge_raw, False)  # noqa: SLF001
            mask = field_uniform(x_bits.shape.as_list(), secure_random.secure_seed(), p, low=1)
        masked = []
        for i, server in enumerate(servers):
            with tf.device(server.device_name):
                masked.append(compare_share(
                    x_bits.unwrapped[i].value, r.unwrapped[i].value,
                    beta.unwrapped[i].value, tf.reshape(edge.unwrapped[i].value, [BITS]),
                    tf.identity(mask), party=i, modulus=p))
        with tf.device(prot.server_2.device_name):
            count = zero_count(masked[0], masked[1], p)
            result = prot._share_and_wrap(prot.tensor_factory.tensor(count), False)  # noqa: SLF001
    assert isinstance(result, PondPrivateTensor)
    return result
