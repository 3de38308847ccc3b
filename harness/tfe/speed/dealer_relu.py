"""Speed change ``dealer-relu``: SecureNN's ReLU in four rounds with six transfers.

tf-encrypted's SecureNN ReLU (``relu_with_cmp``: ``drelu = 1 - msb(x)``, then
``drelu * x``) takes about eight dependent rounds and 22 tensors between parties per
layer: server2 sends both halves of an odd-ring mask r, the shares of its bits and of
its lsb; the servers reveal ``c = 2x + r``; one server sends the other the random bit
beta and a 64x larger nonzero mask; server2 reshares the compare bit; then two Beaver
multiplications (``gamma xor delta`` and ``drelu * x``) with their triples and four
openings each. Here, with the same server2 (the dealer) and the same private compare:

1. deal: r's halves and the Beaver mask ``a`` of x are derived at both ends from pair
   keys (``triples.pair_seeds``); server2 sends one server ``bits(r) - u`` (int8), the
   other derives ``u``;
2. open: each server sends the other one tensor, its share of ``c = 2x + r`` (odd ring)
   stacked with its share of ``e = x - a`` (the Beaver opening of x, ahead of time);
3. compare: beta, the zero-search mask and the edge-case share come from a server0/
   server1 pair key; each server sends server2 its share of ``c * mask`` (int8);
4. server2 counts the zeros (``beta' = (x > r) xor beta``), and shares
   ``t = beta' xor lsb(r)`` and ``t * a`` (one server derives its shares, the other gets
   one tensor).

Then ``msb(x) = t xor u`` with ``u = beta xor lsb(c)`` public to both servers, and
``relu = (1 - msb) * (e + a)`` is local: ``(1 - msb) * e`` has e public, and
``msb * a = (1 - 2u) t a + u a`` has u public. No ``gamma * delta`` multiplication and
no opening of ``drelu``. The result is the same ring element as tf-encrypted's exact
ReLU (``tests/test_speed.py``). With ``fused-compare`` the compare runs as our kernels,
without it as the same TensorFlow ops tf-encrypted uses.

Who can derive what (honest-but-curious, non-colluding servers, as SecureNN):
server0/server1 see c (as before), e = x - a with a uniform and unknown to them (a
standard Beaver opening), and uniformly random shares of bits(r), t and t*a; their
pair key gives both of them beta, the mask and the edge-case share, which tf-encrypted
also gives both of them (one samples, sends to the other). Server2 sees the two
shares of c * mask exactly as in tf-encrypted, so it learns beta' as before; it
already knows lsb(r) and a, so sharing t and t*a instead of beta' and lsb(r) tells it
nothing. Server2 never learns the s0/s1 pair key, so beta and the mask stay hidden
from it. The client and the driver take no part.
"""
from __future__ import annotations

import random
from typing import Any

import numpy as np
import tensorflow as tf

from harness.tfe import secure_random
from harness.tfe.speed import fused_compare
from harness.tfe.speed.triples import pair_seeds

NAME = "dealer-relu"
I64 = tf.int64

_original: dict[str, Any] = {}


def _odd_uniform(shape: list[int], seed: tf.Tensor) -> tf.Tensor:
    """tf-encrypted's uniform odd-ring tensor (int64 without -1) for a seed."""
    v = secure_random.seeded_random_uniform(shape, I64.min + 1, I64.max, I64, seed=seed)
    return tf.where(v < 0, v + 1, v)


def _ring_uniform(shape: list[int], seed: tf.Tensor) -> tf.Tensor:
    return secure_random.seeded_random_uniform(shape, I64.min, I64.max, I64, seed=seed)


_field = fused_compare.field_uniform


def _odd_add(x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
    """Addition modulo 2^64 - 1 on int64 representatives without -1 (tf-encrypted's)."""
    flip = tf.constant(I64.min, I64)
    wrapped = tf.bitwise.bitwise_xor(-2 - y, flip) < tf.bitwise.bitwise_xor(x, flip)
    return x + y + tf.cast(wrapped, I64)


def _odd_cast(x: tf.Tensor) -> tf.Tensor:
    """A ring share read in the odd ring (tf-encrypted maps -1 to 0)."""
    return tf.where(tf.equal(x, -1), tf.zeros_like(x), x)


def _deal(prot: Any, shape: list[int], p: int, bits_to: int, fused: bool) -> dict:
    s2 = prot.server_2.device_name
    servers = (prot.server_0.device_name, prot.server_1.device_name)
    k_r = [pair_seeds(s2, s) for s in servers]
    k_a = [pair_seeds(s2, s) for s in servers]
    k_bits = pair_seeds(s2, servers[1 - bits_to])
    with tf.name_scope("deal"), tf.device(s2):
        r = _odd_add(_odd_uniform(shape, k_r[0][0]), _odd_uniform(shape, k_r[1][0]))
        a = _ring_uniform(shape, k_a[0][0]) + _ring_uniform(shape, k_a[1][0])
        u = _field(shape + [fused_compare.BITS], k_bits[0], p)
        bits_sent = fused_compare.bits_sub(r, u, p, fused=fused)
        rlsb = tf.bitwise.bitwise_and(r, 1)
    return {"r": [k[1] for k in k_r], "a": [k[1] for k in k_a], "bits_seed": k_bits[1],
            "bits_sent": bits_sent, "rlsb": rlsb, "a_sum": a}


def relu_with_cmp(prot: Any, x: Any, **kwargs: Any) -> tuple[Any, Any]:
    """``SecureNN.relu_with_cmp`` (ReLU and its 0/1 derivative, both private)."""
    from tf_encrypted.protocol.pond import PondPrivateTensor  # noqa: PLC0415

    from harness.tfe.speed import enabled  # noqa: PLC0415

    shape = x.shape.as_list()
    # stock splits huge tensors (memory), and gives a scalar shape (1,): keep both as is
    unusual = not shape or int(np.prod(shape)) > kwargs.get("max_size", 2500000)
    if (not isinstance(x, PondPrivateTensor) or x.backing_dtype is not prot.tensor_factory
            or prot.tensor_factory.modulus != 2**64 or unusual):
        return _original["relu_with_cmp"](prot, x, **kwargs)
    fused = enabled(prot, fused_compare.NAME)
    p = prot.prime_factory.modulus
    s2 = prot.server_2.device_name
    servers = (prot.server_0.device_name, prot.server_1.device_name)
    # who gets sent tensors: load balancing, public (traced in a fixed state: see
    # harness.tfe.tracing.fixed_layout), so the same model sends the same per link
    bits_to, t_to = int(random.random() < 0.5), int(random.random() < 0.5)
    with tf.name_scope("relu"):
        deal = _deal(prot, shape, p, bits_to, fused)
        with tf.name_scope("open"):
            mine = []
            for i, device in enumerate(servers):
                with tf.device(device):
                    xi = x.unwrapped[i].value
                    xo = _odd_cast(xi)
                    ai = _ring_uniform(shape, deal["a"][i])
                    zi = _odd_add(_odd_add(xo, xo), _odd_uniform(shape, deal["r"][i]))
                    mine.append((tf.stack([zi, xi - ai]), ai))
            opened = []
            for i, device in enumerate(servers):
                with tf.device(device):
                    other = tf.identity(mine[1 - i][0])
                    opened.append((_odd_add(mine[i][0][0], other[0]),  # c = 2x + r
                                   mine[i][0][1] + other[1]))  # e = x - a
        with tf.name_scope("compare"):
            k01 = [pair_seeds(servers[0], servers[1]) for _ in range(3)]
            masked, betas = [], []
            for i, device in enumerate(servers):
                with tf.device(device):
                    beta = _field(shape, k01[0][i], 2)
                    mask = _field(shape + [fused_compare.BITS], k01[1][i], p, low=1)
                    v = _field([fused_compare.BITS], k01[2][i], p)
                    if i == 0:  # the edge-case vector minus server1's share v
                        const = tf.constant(fused_compare.EDGE_CASE, tf.int32)
                        edge = tf.cast(tf.math.floormod(const - tf.cast(v, tf.int32), p),
                                       tf.int8)
                    else:
                        edge = v
                    if i == bits_to:
                        x_bits = tf.identity(deal["bits_sent"])
                    else:
                        x_bits = _field(shape + [fused_compare.BITS], deal["bits_seed"], p)
                    masked.append(fused_compare.compare_share(
                        x_bits, opened[i][0], beta, edge, mask, party=i, modulus=p,
                        fused=fused))
                    betas.append(beta)
        with tf.name_scope("zero-search"):
            k_t = [pair_seeds(s2, servers[1 - t_to]) for _ in range(2)]
            with tf.device(s2):
                count = fused_compare.zero_count(masked[0], masked[1], p, fused=fused)
                t = tf.bitwise.bitwise_xor(count, deal["rlsb"])
                sent = tf.stack([t - _ring_uniform(shape, k_t[0][0]),
                                 t * deal["a_sum"] - _ring_uniform(shape, k_t[1][0])])
        with tf.name_scope("combine"):
            outs, drelus = [], []
            for i, device in enumerate(servers):
                with tf.device(device):
                    if i == t_to:
                        got = tf.identity(sent)
                        ti, tai = got[0], got[1]
                    else:
                        ti = _ring_uniform(shape, k_t[0][1])
                        tai = _ring_uniform(shape, k_t[1][1])
                    c, e = opened[i]
                    u = tf.bitwise.bitwise_xor(tf.cast(betas[i], I64),
                                               tf.bitwise.bitwise_and(c, 1))
                    one_minus_2u = 1 - 2 * u
                    msb = ti * one_minus_2u + (u if i == 0 else 0)  # t xor u
                    drelu = (1 if i == 0 else 0) - msb
                    ai = mine[i][1]
                    msb_a = one_minus_2u * tai + u * ai  # (t xor u) * a
                    outs.append(e * drelu + ai - msb_a)  # drelu * (e + a)
                    drelus.append(drelu)
    f = prot.tensor_factory
    relu = PondPrivateTensor(prot, f.tensor(outs[0]), f.tensor(outs[1]), x.is_scaled)
    drelu = PondPrivateTensor(prot, f.tensor(drelus[0]), f.tensor(drelus[1]), False)
    return relu, drelu


def install(securenn_module: Any) -> None:
    """Gate ``SecureNN.relu_with_cmp`` (and so ``relu``) per protocol instance."""
    from harness.tfe.patching import replace  # noqa: PLC0415
    from harness.tfe.speed import gated  # noqa: PLC0415

    _original["relu_with_cmp"] = replace(securenn_module.SecureNN, "relu_with_cmp",
                                         gated(NAME, relu_with_cmp), wrap=True)
