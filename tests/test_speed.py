"""Speed changes against tf-encrypted's own code, exactly in the ring / field.

Each change in ``harness.tfe.speed`` that computes differently is checked here on random
inputs: our C++ kernels against the TensorFlow ops tf-encrypted runs (element by
element), and the protocol steps they replace against the stock protocol (the revealed
ring elements must be equal, not close). Timings live in ``bench/test_variants.py``.
"""
from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from tf_encrypted.protocol.pond import PondPrivateTensor, PondPublicTensor
from tf_encrypted.protocol.securenn import securenn
from tf_encrypted.tensor import native

from harness.tfe import patching, protocols
from harness.tfe.speed import dealer_relu, fused_compare, ring_conv
from ring_strategies import I64, SETTINGS, fresh_protocol, ring_arrays, transfers

P = 107
BITS = 64


def field_arrays(shape, low=0, dtype=np.int64):
    return hnp.arrays(dtype, shape, elements=st.integers(low, P - 1))


# -- kernels vs the TensorFlow ops they replace -----------------------------------------
@SETTINGS
@given(data=st.data(), rows=st.integers(1, 12), party=st.sampled_from([0, 1]),
       narrow=st.booleans())
def test_compare_share_kernel_equals_tf_ops(data, rows, party, narrow):
    dtype = np.int8 if narrow else np.int64
    x_bits = data.draw(field_arrays((rows, BITS), dtype=dtype))
    r = data.draw(ring_arrays((rows,)))
    beta = data.draw(hnp.arrays(np.int64, (rows,), elements=st.integers(0, 1)))
    edge = data.draw(field_arrays((BITS,), dtype=dtype))
    mask = data.draw(field_arrays((rows, BITS), low=1, dtype=dtype))
    if data.draw(st.booleans()):  # tf-encrypted's edge case: beta = 1 and r = -1
        r[0], beta[0] = -1, 1
    args = [tf.constant(v) for v in (x_bits, r, beta, edge, mask)]
    fused = fused_compare.compare_share(*args, party=party, modulus=P, fused=True,
                                        out_dtype=tf.int64)
    ref = fused_compare.compare_share(*args, party=party, modulus=P, fused=False,
                                      out_dtype=tf.int64)
    np.testing.assert_array_equal(fused.numpy(), ref.numpy())
    assert fused.numpy().min() >= 0 and fused.numpy().max() < P


@SETTINGS
@given(data=st.data(), rows=st.integers(1, 12))
def test_zero_count_and_bits_sub_kernels_equal_tf_ops(data, rows):
    c0 = data.draw(field_arrays((rows, BITS)))
    c1 = (P - c0) % P  # all zeros
    c1[:, data.draw(st.integers(1, BITS - 1)):] += 1
    c1 = data.draw(st.sampled_from([c1 % P, data.draw(field_arrays((rows, BITS)))]))
    for fused in (True, False):
        got = fused_compare.zero_count(tf.constant(c0), tf.constant(c1), P, fused=fused)
        np.testing.assert_array_equal(got.numpy(), ((c0 + c1) % P == 0).sum(axis=-1))
    r = data.draw(ring_arrays((rows,)))
    u = data.draw(field_arrays((rows, BITS), dtype=np.int8))
    bits = ((r.view(np.uint64)[:, None] >> np.arange(BITS, dtype=np.uint64)) & 1)
    expected = (bits.astype(np.int64) - u) % P
    for fused in (True, False):
        got = fused_compare.bits_sub(tf.constant(r), tf.constant(u), P, fused=fused)
        np.testing.assert_array_equal(got.numpy().astype(np.int64), expected)


@SETTINGS
@given(data=st.data(), n=st.integers(1, 3), c=st.integers(1, 4), o=st.integers(1, 5),
       hw=st.tuples(st.integers(1, 9), st.integers(1, 9)),
       k=st.tuples(st.integers(1, 4), st.integers(1, 4)),
       strides=st.tuples(st.integers(1, 3), st.integers(1, 3)),
       padding=st.sampled_from(["SAME", "VALID"]))
def test_ring_conv_equals_tfe_conv(data, n, c, o, hw, k, strides, padding):
    if padding == "VALID" and (k[0] > hw[0] or k[1] > hw[1]):
        k = (min(k[0], hw[0]), min(k[1], hw[1]))
    x = data.draw(ring_arrays((n, c, *hw)))
    w = data.draw(ring_arrays((*k, c, o)))
    factory = native.native_factory(tf.int64)
    stock = patching.original(native, "conv2d")(
        factory.tensor(tf.constant(x)), factory.tensor(tf.constant(w)),
        strides=list(strides), padding=padding)
    ours = ring_conv.ring_conv2d(tf.constant(x), tf.constant(w), list(strides), padding)
    np.testing.assert_array_equal(ours.numpy(), stock.value.numpy())


@SETTINGS
@given(seed=hnp.arrays(np.int32, (8,)), n=st.integers(0, 3000),
       field=st.sampled_from([(0, 107), (1, 107), (0, 2), (-128, 128), (5, 7)]))
def test_field_uniform_is_chacha20_bytes_with_rejection(seed, n, field):
    """HarnessFieldUniform = ChaCha20 keystream bytes (nonce "TFEH-field8u"), byte b
    accepted iff b < floor(256 / range) * range, value low + b mod range."""
    low, high = field
    span = high - low
    got = fused_compare.field_uniform([n], tf.constant(seed), high, low=low).numpy()
    ops = fused_compare._ops()  # noqa: SLF001
    nonce = tf.constant(np.frombuffer(b"TFEH-field8u", np.uint32).astype(np.int32))
    blocks = 16 * (n // (64 * 16) + 2)
    stream = ops.harness_chacha20_keystream(tf.constant(seed), nonce, tf.constant(0, tf.int64),
                                            tf.constant(blocks, tf.int64)).numpy()
    stream = stream.astype(np.int64)
    accepted = stream[stream < (256 // span) * span]
    assert accepted.size >= n
    np.testing.assert_array_equal(got, (low + accepted[:n] % span).astype(np.int8))


def test_field_uniform_is_uniform():
    seed = tf.constant(np.arange(8, dtype=np.int32))
    got = fused_compare.field_uniform([107 * 2000], seed, 107, low=1).numpy()
    counts = np.bincount(got.astype(np.int64), minlength=107)
    assert counts[0] == 0 and got.min() == 1 and got.max() == 106
    expected = got.size / 106
    chi2 = float(((counts[1:] - expected) ** 2 / expected).sum())
    assert chi2 < 200  # 105 degrees of freedom: mean 105, sd ~14.5


# -- protocol steps vs stock ---------------------------------------------------------------
def _protocol(changes):
    return fresh_protocol("securenn", changes)


def _private(prot, factory, value, is_scaled):
    """A PondPrivateTensor of raw ring/field ``value`` split at random."""
    rand = np.random.default_rng().integers(I64.min, I64.max, size=value.shape,
                                            dtype=np.int64, endpoint=True)
    if factory is prot.prime_factory:
        rand %= factory.modulus
        rest = (value - rand) % factory.modulus
    else:
        rest = (value.view(np.uint64) - rand.view(np.uint64)).view(np.int64)
    shares = []
    for server, part in ((prot.server_0, rand), (prot.server_1, rest)):
        with tf.device(server.device_name):
            shares.append(factory.tensor(tf.constant(part)))
    return PondPrivateTensor(prot, *shares, is_scaled)


def _public(prot, factory, value):
    parts = []
    for server in (prot.server_0, prot.server_1):
        with tf.device(server.device_name):
            parts.append(factory.tensor(tf.constant(value)))
    return PondPublicTensor(prot, *parts, False)


def _revealed(x):
    return np.asarray(x.reveal().unwrapped[0].value)


@SETTINGS
@given(data=st.data(), rows=st.integers(1, 10))
def test_fused_private_compare_equals_stock(data, rows):
    x = data.draw(ring_arrays((rows,)))
    r = data.draw(ring_arrays((rows,)))
    beta = data.draw(hnp.arrays(np.int64, (rows,), elements=st.integers(0, 1)))
    if data.draw(st.booleans()):
        r[0], beta[0] = -1, 1
    x_bits = ((x.view(np.uint64)[:, None] >> np.arange(BITS, dtype=np.uint64)) & 1)
    results = []
    for changes in ((), ("fused-compare",)):
        prot = _protocol(changes)
        got = securenn._private_compare(
            prot, _private(prot, prot.prime_factory, x_bits.astype(np.int64), False),
            _public(prot, prot.tensor_factory, r), _public(prot, prot.prime_factory, beta))
        results.append(_revealed(got))
    np.testing.assert_array_equal(results[1], results[0])


@SETTINGS
@given(data=st.data(), shape=st.sampled_from([(1,), (7,), (2, 3), (2, 2, 3)]),
       fused=st.booleans())
def test_dealer_relu_equals_stock_relu(data, shape, fused):
    """Exact ReLU and its derivative, ring element for element, for |x| < 2^62, including
    tf-encrypted's quirk at -1 (both give relu(-1) = -1). Beyond 2^62 tf-encrypted's msb
    depends on whether the shares wrap in the odd ring, i.e. on the randomness: there
    neither is exact, and they need not agree."""
    x = data.draw(hnp.arrays(np.int64, shape, elements=st.one_of(
        st.integers(-(2**62) + 1, 2**62 - 1), st.integers(-(2**20), 2**20),
        st.sampled_from([0, 1, -1, 2, -2, 2**62 - 1, -(2**62) + 1]))))
    results = {}
    changes_by_variant = {"stock": (),
                          "dealer": ("dealer-relu", "fused-compare") if fused else ("dealer-relu",)}
    for variant, changes in changes_by_variant.items():
        prot = _protocol(changes)
        relu, drelu = prot.relu_with_cmp(_private(prot, prot.tensor_factory, x, True))
        results[variant] = (_revealed(relu), _revealed(drelu))
    for got, want in zip(results["dealer"], results["stock"]):
        np.testing.assert_array_equal(got, want)
    exact = x != -1
    np.testing.assert_array_equal(results["stock"][0][exact], np.maximum(x, 0)[exact])
    np.testing.assert_array_equal(results["stock"][1][exact], (x >= 0)[exact])


def test_dealer_relu_shares_are_fresh_per_run():
    """Compiled once, run twice on the same input: the output shares differ (masks and
    pair keys are drawn again on every run), the revealed values do not."""
    prot = _protocol(("dealer-relu", "fused-compare", "pair-keys"))
    x = np.arange(-6, 6, dtype=np.int64) * 1000

    @tf.function(autograph=False)
    def step():
        relu, _ = prot.relu_with_cmp(_private(prot, prot.tensor_factory, x, True))
        return [s.value for s in relu.unwrapped]

    a, b = [np.asarray(v) for v in step()], [np.asarray(v) for v in step()]
    assert not np.array_equal(a[0], b[0])
    total = lambda s: (s[0].view(np.uint64) + s[1].view(np.uint64)).view(np.int64)  # noqa: E731
    np.testing.assert_array_equal(total(a), np.maximum(x, 0))
    np.testing.assert_array_equal(total(b), np.maximum(x, 0))


def test_dealer_relu_sends_six_tensors_per_layer():
    """On cluster devices: one tensor server2 -> one server (bit shares), one each way
    between the servers (c and e stacked), one from each server to server2, one back
    (t and t*a stacked); pair keys cross once per run."""
    sent = {(t, dst) for t, _src, dst in transfers(
        "securenn", ("dealer-relu", "fused-compare"),
        lambda prot: [_private(prot, prot.tensor_factory, np.zeros((4, 5), np.int64), True)],
        lambda prot, x: prot.relu_with_cmp(x)) if "pair-key" not in t}
    assert len(sent) == 6, sorted(sent)
    assert dealer_relu.NAME in protocols.resolve_changes("securenn")


@SETTINGS
@given(data=st.data(), kind=st.sampled_from(["mul", "matmul", "conv2d"]),
       packed=st.booleans())
def test_packed_openings_products_equal_stock(data, kind, packed):
    """Unscaled private x private products (no truncation, so exact): the packed openings
    give the same ring elements as stock, and as numpy's wrapping arithmetic."""
    shapes = {"mul": ((3, 4), (3, 4)), "matmul": ((2, 5), (5, 3)),
              "conv2d": ((1, 2, 5, 5), (3, 3, 2, 4))}[kind]
    x, y = (data.draw(ring_arrays(s)) for s in shapes)
    results = []
    for changes in ((), ("packed-openings", "ring-conv") if packed else ("packed-openings",)):
        prot = _protocol(changes)
        a, b = (_private(prot, prot.tensor_factory, v, False) for v in (x, y))
        z = getattr(prot, kind)(a, b, *(((1, 1), "VALID") if kind == "conv2d" else ()))
        results.append(_revealed(z))
    np.testing.assert_array_equal(results[1], results[0])
    with np.errstate(over="ignore"):
        if kind == "mul":
            np.testing.assert_array_equal(results[0], x * y)
        elif kind == "matmul":
            u = x.view(np.uint64)[:, :, None] * y.view(np.uint64)[None, :, :]
            np.testing.assert_array_equal(results[0], u.sum(axis=1).view(np.int64))


def test_packed_openings_send_one_tensor_each_way():
    def operands(prot):
        return [_private(prot, prot.tensor_factory, np.ones(shape, np.int64), False)
                for shape in ((2, 3), (3, 4))]

    counts = {}
    for changes in ((), ("packed-openings",)):
        servers = None

        def product(prot, a, b):
            nonlocal servers
            servers = {prot.server_0.device_name, prot.server_1.device_name}
            prot.matmul(a, b)

        sent = transfers("securenn", changes, operands, product)
        counts[bool(changes)] = len({(t, dst) for t, src, dst in sent if {src, dst} == servers})
    assert counts == {False: 4, True: 2}, counts


def test_report_speed_section_renders_targets_and_changes():
    from harness.results import report_speed

    def row(deployment, batch, variant, ms, **extra):
        return {"table": "variants", "model": "tutorial", "protocol": "securenn",
                "deployment": deployment, "batch": batch, "variant": variant,
                "median_ms": ms, "per_image_ms": ms / batch, "agreement": 1.0, **extra}

    summary = {"variants": [
        row("inprocess", 1, "stock", 50.0), row("inprocess", 1, "tuned", 10.0,
                                                speedup_vs_stock=5.0),
        row("cluster", 1, "stock", 100.0), row("cluster", 1, "tuned", 40.0,
                                               speedup_vs_stock=2.5),
        {"table": "changes", "model": "tutorial", "protocol": "securenn",
         "deployment": "inprocess", "batch": 1, "spec": "stock", "median_ms": 50.0},
        {"table": "changes", "model": "tutorial", "protocol": "securenn",
         "deployment": "inprocess", "batch": 1, "spec": "tuned", "median_ms": 10.0},
        {"table": "changes", "model": "tutorial", "protocol": "securenn",
         "deployment": "inprocess", "batch": 1, "spec": "stock+ring-conv",
         "change": "ring-conv", "median_ms": 40.0, "buys": 1.25, "summary": "direct conv"},
    ], "total_memory": {"peak_total_rss_mb": 3000.0, "processes_at_peak": 5, "samples": 9,
                        "duration_s": 4.0, "method": "psutil"}}
    text = "\n".join(report_speed.section(summary))
    assert "cluster, batch 1: tuned x2.50 faster than stock (target >= 2): **met**" in text
    assert "cluster / in-process 4.00 (target <= 1.5" in text and "**not met**" in text
    assert "| `ring-conv` | direct conv | 40 | 1.25 |" in text
    assert "3000 MB with 5 processes" in text
    assert report_speed.section({}) == []
    summary["total_memory"].update(peak_total_pss_mb=9000.0, processes_at_pss_peak=6,
                                   peak_total_rss_mb=12000.0, pss_peak_by_role={
                                       "serving clients": {"mb": 4500.0, "processes": 8},
                                       "driver": {"mb": 2600.0, "processes": 1}})
    text = "\n".join(report_speed.section(summary))
    assert "At the peak: serving clients 4500 MB (8 processes), driver 2600 MB (1 " \
           "process)." in text
    assert "(all processes at once, PSS): 9000 MB with 6 processes" in text
    assert "(target <= 8192 MB): **not met**" in text and "peaked at 12000 MB" in text


def test_memory_sampler_sums_a_process_tree(tmp_path) -> None:
    """Two children holding 200 MB each (written, so resident): the sampled PSS total
    of the tree counts both, and stays below the RSS sum (shared pages count 1/k)."""
    import subprocess  # noqa: PLC0415
    import sys  # noqa: PLC0415
    import time  # noqa: PLC0415

    from harness.results.rss import RssSampler  # noqa: PLC0415

    hold = "import sys, time; b = bytearray(200 << 20); b[::4096] = b'x' * len(b[::4096]); " \
           "print('ok', flush=True); sys.stdin.read()"
    kids = [subprocess.Popen([sys.executable, "-c", hold], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True) for _ in range(2)]
    try:
        assert all(k.stdout.readline().strip() == "ok" for k in kids)
        with RssSampler(interval=0.05) as sampler:
            time.sleep(0.3)
        got = sampler.summary()
    finally:
        for k in kids:
            k.stdin.close()
            k.wait(timeout=30)
    if got["peak_total_pss_mb"] is None:
        pytest.skip("this kernel has no /proc/PID/smaps_rollup")
    assert got["peak_total_pss_mb"] >= 400, got
    assert got["peak_total_pss_mb"] <= got["peak_total_rss_mb"], got
    assert got["processes_at_pss_peak"] >= 3, got
    roles = got["pss_peak_by_role"]  # the children are neither workers nor clients
    assert roles["other"]["processes"] == 2 and roles["other"]["mb"] >= 400, roles
    assert roles["driver"]["processes"] == 1, roles
