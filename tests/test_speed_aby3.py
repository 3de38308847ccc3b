"""ABY3's speed changes against tf-encrypted's own ABY3, exactly in the ring.

``packed-carry`` (the carry circuit behind every sign, ReLU and comparison),
``ring-conv`` (local convolutions) and ``two-products`` (two local products a server in
a private x private product) on random replicated shares: the revealed ring
elements of the tuned protocol equal stock's and plain wrapping arithmetic's, element
for element. Timings live in ``bench/test_variants.py``.
"""
from __future__ import annotations

import numpy as np
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st
from tf_encrypted.protocol.aby3 import ABY3PrivateTensor
from tf_encrypted.protocol.aby3.aby3_tensors import ShareType

from harness.tfe import protocols
from harness.tfe.speed import packed_carry, two_products
from ring_strategies import I64, SETTINGS, fresh_protocol, ring_arrays, transfers


def _protocol(changes):
    return fresh_protocol("aby3", changes)


def _shared(prot, value, boolean=False):
    """A replicated ABY3 sharing of raw int64 ``value``: x = x0 + x1 + x2 (or x0 ^ x1 ^ x2),
    server i holds (x_i, x_{i+1})."""
    rng = np.random.default_rng()
    x0, x1 = (rng.integers(I64.min, I64.max, size=value.shape, dtype=np.int64, endpoint=True)
              for _ in range(2))
    if boolean:
        x2 = value ^ x0 ^ x1
    else:
        x2 = (value.view(np.uint64) - x0.view(np.uint64) - x1.view(np.uint64)).view(np.int64)
    parts = (x0, x1, x2)
    shares = [[None, None] for _ in range(3)]
    for i in range(3):
        with tf.device(prot.servers[i].device_name):
            shares[i] = [prot.default_factory.tensor(tf.constant(parts[(i + j) % 3]))
                         for j in range(2)]
    kind = ShareType.BOOLEAN if boolean else ShareType.ARITHMETIC
    return ABY3PrivateTensor(prot, shares, False, kind)


def _revealed(x):
    return np.asarray(x.reveal().to_native())


@settings(SETTINGS, max_examples=10)
@given(data=st.data(), shape=st.sampled_from([(1,), (7,), (2, 3), (2, 2, 3)]))
def test_packed_carry_sign_and_relu_equal_stock(data, shape):
    """The sign (msb) and ReLU of any int64, stock and packed: equal, and exact except
    tf-encrypted's ReLU at -2^63 (both give -2^63: x - x * msb wraps there)."""
    x = data.draw(ring_arrays(shape))
    results = {}
    for variant, changes in (("stock", ()), ("packed", (packed_carry.NAME,))):
        prot = _protocol(changes)
        shared = _shared(prot, x)
        results[variant] = (_revealed(prot.msb(shared)), _revealed(prot.relu(shared)))
    for got, want in zip(results["packed"], results["stock"]):
        np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(results["packed"][0].astype(bool), x < 0)
    exact = x != I64.min
    np.testing.assert_array_equal(results["packed"][1][exact], np.maximum(x, 0)[exact])


@SETTINGS
@given(data=st.data(), pos=st.sampled_from([0, 1, 2, 6, 7, 30, 31, 62, 63]))
def test_packed_carry_equals_the_carry_of_an_addition(data, pos):
    """carry(x, y, pos) on boolean shares: the carry out of bit ``pos`` when adding the
    low pos+1 bits of x and y (what bit extraction needs at every position)."""
    x, y = data.draw(ring_arrays((5,))), data.draw(ring_arrays((5,)))
    results = []
    for changes in ((), (packed_carry.NAME,)):
        prot = _protocol(changes)
        carry = prot.carry(_shared(prot, x, True), _shared(prot, y, True), pos)
        results.append(_revealed(carry).astype(np.int64))
    low = (1 << (pos + 1)) - 1
    want = [((int(a) & low) + (int(b) & low)) >> (pos + 1) for a, b in zip(x, y)]
    np.testing.assert_array_equal(results[1], results[0])
    np.testing.assert_array_equal(results[1], want)


@SETTINGS
@given(data=st.data(), strides=st.sampled_from([(1, 1), (2, 2)]),
       padding=st.sampled_from(["SAME", "VALID"]))
def test_conv2d_changes_equal_stock(data, strides, padding):
    """Unscaled private x private convolutions (no truncation, so exact): ring-conv,
    two-products and both give stock's ring elements."""
    x, w = data.draw(ring_arrays((1, 2, 5, 5))), data.draw(ring_arrays((3, 3, 2, 3)))
    results = []
    for changes in ((), ("ring-conv",), (two_products.NAME,), ("ring-conv", two_products.NAME)):
        prot = _protocol(changes)
        z = prot.conv2d(_shared(prot, x), _shared(prot, w), strides, padding)
        results.append(_revealed(z))
    for got in results[1:]:
        np.testing.assert_array_equal(got, results[0])


@SETTINGS
@given(data=st.data(), m=st.integers(1, 4), k=st.integers(1, 6), n=st.integers(1, 4))
def test_two_products_matmul_equals_stock_and_numpy(data, m, k, n):
    x, y = data.draw(ring_arrays((m, k))), data.draw(ring_arrays((k, n)))
    results = []
    for changes in ((), (two_products.NAME,)):
        prot = _protocol(changes)
        results.append(_revealed(prot.matmul(_shared(prot, x), _shared(prot, y))))
    np.testing.assert_array_equal(results[1], results[0])
    products = x.view(np.uint64)[:, :, None] * y.view(np.uint64)[None, :, :]
    np.testing.assert_array_equal(results[1], products.sum(axis=1).view(np.int64))


def test_packed_carry_sends_seven_ands_per_sign():
    """On cluster devices, one 64-bit sign: 7 re-sharing ANDs (21 tensors) in the carry
    instead of 13 (39; the graph keeps stock's unused last P), plus the 6 of the rest."""
    counts = {}
    for changes in ((), (packed_carry.NAME,)):
        sent = transfers("aby3", changes,
                         lambda prot: [prot.define_private_variable(np.zeros((4, 5)))],
                         lambda prot, x: prot.msb(x))
        counts[changes] = len({(t, dst) for t, _src, dst in sent})
    assert counts == {(): 45, (packed_carry.NAME,): 27}, counts
    assert packed_carry.NAME in protocols.resolve_changes("aby3")
