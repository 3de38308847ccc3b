"""Tests for our custom TensorFlow ops (``harness.tfe.ops``).

Covers the ChaCha20 keystream against RFC 8439 vectors, the secure random ops
(checked word-for-word against a pure-Python RFC 8439 reference sampler), the
bit ops against numpy references, and the build cache / fail-closed errors.
"""

from __future__ import annotations

import importlib
import pathlib
import stat
import struct
from collections.abc import Iterator

import numpy as np
import pytest
import tensorflow as tf

from harness.tfe import ops as harness_ops

build_module = importlib.import_module("harness.tfe.ops.build")

INT64_MIN = np.iinfo(np.int64).min
INT64_MAX = np.iinfo(np.int64).max
INT32_MIN = np.iinfo(np.int32).min
INT32_MAX = np.iinfo(np.int32).max

# Chi-square critical values for a false-positive rate of 1e-6 per check
# (scipy.stats.chi2.ppf(1 - 1e-6, df)); the checks use fresh OS seeds.
CHI2_CRIT_1E6 = {2: 27.631, 9: 44.811}


@pytest.fixture(scope="module")
def ops():
    return harness_ops.load()


# --------------------------------------------------------------------------
# Pure-Python ChaCha20 (RFC 8439 section 2.3) and reference sampler.
# --------------------------------------------------------------------------

_MASK32 = 0xFFFFFFFF
_SIGMA = (0x61707865, 0x3320646E, 0x79622D32, 0x6B206574)
UNIFORM_NONCE = b"TFEH-uniform"  # the fixed nonce documented in secure_random_ops.cc


def _quarter_round(x: list[int], a: int, b: int, c: int, d: int) -> None:
    for (p, q, r), rot in zip(((a, b, d), (c, d, b), (a, b, d), (c, d, b)), (16, 12, 8, 7)):
        x[p] = (x[p] + x[q]) & _MASK32
        v = x[r] ^ x[p]
        x[r] = ((v << rot) & _MASK32) | (v >> (32 - rot))


def chacha20_block(key: bytes, counter: int, nonce: bytes) -> bytes:
    """One 64-byte ChaCha20 block."""
    state = [*_SIGMA, *struct.unpack("<8I", key), counter, *struct.unpack("<3I", nonce)]
    x = list(state)
    for _ in range(10):
        _quarter_round(x, 0, 4, 8, 12)
        _quarter_round(x, 1, 5, 9, 13)
        _quarter_round(x, 2, 6, 10, 14)
        _quarter_round(x, 3, 7, 11, 15)
        _quarter_round(x, 0, 5, 10, 15)
        _quarter_round(x, 1, 6, 11, 12)
        _quarter_round(x, 2, 7, 8, 13)
        _quarter_round(x, 3, 4, 9, 14)
    return struct.pack("<16I", *((xi + si) & _MASK32 for xi, si in zip(x, state)))


def chacha20_keystream(key: bytes, nonce: bytes, counter: int, num_blocks: int) -> bytes:
    return b"".join(chacha20_block(key, counter + i, nonce) for i in range(num_blocks))


def reference_uniform(seed: np.ndarray, n: int, minval: int, maxval: int, word_bits: int) -> list[int]:
    """The sampler as specified: rejection below the largest multiple of the range."""
    key = seed.astype("<i4").tobytes()
    span = maxval - minval
    limit = (2**word_bits // span) * span
    word_bytes = word_bits // 8

    def words() -> Iterator[int]:
        counter = 0
        while True:
            block = chacha20_block(key, counter, UNIFORM_NONCE)
            counter += 1
            for i in range(0, 64, word_bytes):
                yield int.from_bytes(block[i : i + word_bytes], "little")

    out: list[int] = []
    for w in words():
        if len(out) == n:
            return out
        if w < limit:
            out.append(minval + w % span)
    return out


# RFC 8439 section 2.3.2 (block function) and 2.4.2 (encryption) vectors.
RFC_KEY = bytes(range(32))
RFC_BLOCK_NONCE = bytes.fromhex("000000090000004a00000000")
RFC_BLOCK = bytes.fromhex(
    "10f1e7e4d13b5915500fdd1fa32071c4c7d1f4c733c068030422aa9ac3d46c4e"
    "d2826446079faa0914c2d705d98b02a2b5129cd1de164eb9cbd083e8a2503c4e"
)
RFC_ENC_NONCE = bytes.fromhex("000000000000004a00000000")
RFC_PLAINTEXT = (
    b"Ladies and Gentlemen of the class of '99: If I could offer you only one tip "
    b"for the future, sunscreen would be it."
)
RFC_CIPHERTEXT = bytes.fromhex(
    "6e2e359a2568f98041ba0728dd0d6981e97e7aec1d4360c20a27afccfd9fae0b"
    "f91b65c5524733ab8f593dabcd62b3571639d624e65152ab8f530c359f0861d8"
    "07ca0dbf500d6a6156a38e088a22b65e52bc514d16ccf806818ce91ab7793736"
    "5af90bbf74a35be6b40b8eedf2785e42874d"
)


def _words(data: bytes) -> tf.Tensor:
    return tf.constant(np.frombuffer(data, "<i4").astype(np.int32))


def _cpp_keystream(ops, key: bytes, nonce: bytes, counter: int, num_blocks: int) -> bytes:
    out = ops.harness_chacha20_keystream(
        _words(key), _words(nonce), tf.constant(counter, tf.int64), tf.constant(num_blocks, tf.int64)
    )
    return out.numpy().tobytes()


def test_reference_chacha20_matches_rfc() -> None:
    assert chacha20_block(RFC_KEY, 1, RFC_BLOCK_NONCE) == RFC_BLOCK
    stream = chacha20_keystream(RFC_KEY, RFC_ENC_NONCE, 1, 2)
    assert bytes(p ^ k for p, k in zip(RFC_PLAINTEXT, stream)) == RFC_CIPHERTEXT


def test_keystream_op_rfc_block_vector(ops) -> None:
    assert _cpp_keystream(ops, RFC_KEY, RFC_BLOCK_NONCE, 1, 1) == RFC_BLOCK


def test_keystream_op_rfc_encryption_vector(ops) -> None:
    stream = _cpp_keystream(ops, RFC_KEY, RFC_ENC_NONCE, 1, 2)
    assert bytes(p ^ k for p, k in zip(RFC_PLAINTEXT, stream)) == RFC_CIPHERTEXT


def test_keystream_op_matches_reference_across_batches(ops) -> None:
    key = bytes(range(100, 132))
    nonce = bytes(range(7, 19))
    # 37 blocks: spans several internal batches, ending at the last counter value.
    counter = 2**32 - 37
    assert _cpp_keystream(ops, key, nonce, counter, 37) == chacha20_keystream(key, nonce, counter, 37)


def test_keystream_op_rejects_counter_overflow(ops) -> None:
    with pytest.raises(tf.errors.InvalidArgumentError, match="2\\^32"):
        _cpp_keystream(ops, RFC_KEY, RFC_ENC_NONCE, 2**32 - 1, 2)


DERIVE_NONCE = b"TFEH-derived"  # the fixed nonce documented in secure_random_ops.cc


@pytest.mark.parametrize("index", [0, 1, 17, 2**32 - 1])
def test_derive_seed_is_the_chacha20_prf(ops, index) -> None:
    key = bytes(range(200, 232))
    key_words = tf.constant(np.frombuffer(key, dtype="<i4"))
    got = ops.harness_derive_seed(key_words, tf.constant(index, tf.int64)).numpy()
    want = np.frombuffer(chacha20_block(key, index, DERIVE_NONCE)[:32], dtype="<i4")
    assert got.dtype == np.int32 and np.array_equal(got, want)


def test_derive_seed_separates_indices_and_keys(ops) -> None:
    key = ops.secure_seed()
    seeds = {tuple(ops.harness_derive_seed(key, tf.constant(i, tf.int64)).numpy())
             for i in range(64)}
    assert len(seeds) == 64
    other = ops.harness_derive_seed(ops.secure_seed(), tf.constant(0, tf.int64)).numpy()
    assert tuple(other) not in seeds


@pytest.mark.parametrize("key, index, message", [
    (np.zeros(7, np.int32), 0, "shape \\[8\\]"),
    (np.zeros(8, np.int32), -1, "2\\^32"),
    (np.zeros(8, np.int32), 2**32, "2\\^32"),
])
def test_derive_seed_invalid_arguments(ops, key, index, message) -> None:
    with pytest.raises((tf.errors.InvalidArgumentError, ValueError), match=message):
        ops.harness_derive_seed(tf.constant(key), tf.constant(index, tf.int64))


# --------------------------------------------------------------------------
# Secure random ops.
# --------------------------------------------------------------------------

SEED = np.array([0x01234567, -0x76543210, 42, -1, 0, 7, 0x7FFFFFFF, INT32_MIN], np.int32)


def _seeded(ops, n: int, minval: int, maxval: int, dtype: tf.DType, seed: np.ndarray = SEED) -> np.ndarray:
    return ops.secure_seeded_random_uniform(
        [n], tf.constant(seed), tf.constant(minval, dtype), tf.constant(maxval, dtype)
    ).numpy()


@pytest.mark.parametrize(
    ("dtype", "minval", "maxval", "word_bits"),
    [
        (tf.int8, -128, 127, 32),
        (tf.int16, -5, 300, 32),
        (tf.int32, -(2**31), 2**30, 32),  # range 3 * 2^30: a quarter of words rejected
        (tf.int32, INT32_MIN, INT32_MAX, 32),
        (tf.int32, 3, 10, 32),
        (tf.int64, -7, 1000, 64),
        (tf.int64, INT64_MIN, 2**62, 64),  # range 3 * 2^62: a quarter rejected
        (tf.int64, INT64_MIN, INT64_MAX, 64),
        (tf.int64, -(2**40), 2**41 + 3, 64),
    ],
)
def test_seeded_matches_reference_sampler(ops, dtype, minval, maxval, word_bits) -> None:
    n = 300
    got = _seeded(ops, n, minval, maxval, dtype)
    assert got.dtype == dtype.as_numpy_dtype
    assert got.tolist() == reference_uniform(SEED, n, minval, maxval, word_bits)


def test_seeded_deterministic_and_seed_sensitive(ops) -> None:
    a = _seeded(ops, 10_000, INT64_MIN, INT64_MAX, tf.int64)
    b = _seeded(ops, 10_000, INT64_MIN, INT64_MAX, tf.int64)
    other = SEED.copy()
    other[3] ^= 1
    c = _seeded(ops, 10_000, INT64_MIN, INT64_MAX, tf.int64, seed=other)
    np.testing.assert_array_equal(a, b)
    assert np.mean(a == c) < 0.01


@pytest.mark.parametrize(
    ("dtype", "minval", "maxval"),
    [
        (tf.int32, -1000, 1000),
        (tf.int32, INT32_MIN, INT32_MAX),
        (tf.int32, -50, -40),
        (tf.int64, -(2**50), 3),
        (tf.int64, INT64_MIN, INT64_MAX),
        (tf.int64, INT64_MIN, INT64_MIN + 3),
        (tf.int64, INT64_MAX - 3, INT64_MAX),
        (tf.int32, 0, 2),
        (tf.int64, 0, 2),
        (tf.int32, 5, 6),
        (tf.int64, 5, 6),
    ],
)
def test_seeded_values_in_range(ops, dtype, minval, maxval) -> None:
    values = _seeded(ops, 20_000, minval, maxval, dtype)
    assert values.min() >= minval
    assert values.max() < maxval
    span = maxval - minval
    if span <= 10:
        assert set(values.tolist()) == set(range(minval, maxval))
    else:
        assert values.min() < minval + span // 8 and values.max() > maxval - span // 8


def _chi_square(counts: np.ndarray) -> float:
    expected = counts.sum() / counts.size
    return float(((counts - expected) ** 2 / expected).sum())


def test_seeded_chi_square_small_range(ops) -> None:
    seed = ops.secure_seed().numpy()
    values = _seeded(ops, 100_000, -3, 7, tf.int32, seed=seed)
    counts = np.bincount(values + 3, minlength=10)
    assert _chi_square(counts) < CHI2_CRIT_1E6[9]


@pytest.mark.parametrize(
    ("dtype", "minval", "span"),
    [(tf.int32, INT32_MIN, 3 * 2**30), (tf.int64, INT64_MIN, 3 * 2**62)],
)
def test_seeded_no_modulo_bias(ops, dtype, minval, span) -> None:
    # Plain `word mod span` would put half the mass in the first third.
    seed = ops.secure_seed().numpy()
    values = _seeded(ops, 60_000, minval, minval + span, dtype, seed=seed)
    thirds = ((values.astype(object) - minval) // (span // 3)).astype(np.int64)
    counts = np.bincount(thirds, minlength=3)
    assert counts.size == 3
    assert _chi_square(counts) < CHI2_CRIT_1E6[2]


def test_seeded_output_shapes(ops) -> None:
    seed = tf.constant(SEED)
    lo, hi = tf.constant(0, tf.int64), tf.constant(9, tf.int64)
    out = ops.secure_seeded_random_uniform(tf.constant([2, 0, 3], tf.int64), seed, lo, hi)
    assert out.shape == (2, 0, 3)
    assert ops.secure_seeded_random_uniform([], seed, lo, hi).shape == ()
    prefix = ops.secure_seeded_random_uniform([4, 5], seed, lo, hi).numpy().ravel()
    np.testing.assert_array_equal(prefix, _seeded(ops, 20, 0, 9, tf.int64))

    @tf.function(input_signature=[tf.TensorSpec([2], tf.int32)])
    def dynamic(shape):
        static = ops.secure_seeded_random_uniform([3, 4], seed, lo, hi)
        assert static.shape == (3, 4)
        out = ops.secure_seeded_random_uniform(shape, seed, lo, hi)
        assert out.shape.rank == 2
        return out

    assert dynamic(tf.constant([6, 7])).shape == (6, 7)


def _uniform_error_cases():
    s8 = SEED
    return [
        ([3], SEED[:7], 0, 5, "seed must have shape \\[8\\]"),
        ([3], s8.reshape(2, 4), 0, 5, "seed must have shape \\[8\\]"),
        ([3], s8, 5, 5, "minval < maxval"),
        ([3], s8, 6, 5, "minval < maxval"),
        ([-1, 3], s8, 0, 5, "non-negative"),
        ([[3]], s8, 0, 5, "1-D"),
        ([3], s8, [0, 1], 5, "minval must be a scalar"),
        ([3], s8, 0, [5], "maxval must be a scalar"),
    ]


@pytest.mark.parametrize(("shape", "seed", "minval", "maxval", "message"), _uniform_error_cases())
def test_seeded_invalid_arguments(ops, shape, seed, minval, maxval, message) -> None:
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        ops.secure_seeded_random_uniform(
            tf.constant(shape, tf.int32),
            tf.constant(seed, tf.int32),
            tf.constant(minval, tf.int64),
            tf.constant(maxval, tf.int64),
        )


@pytest.mark.parametrize(("shape", "minval", "maxval", "message"), [
    ([3], 5, 5, "minval < maxval"),
    ([-2], 0, 5, "non-negative"),
    ([3], [0, 1], 5, "minval must be a scalar"),
])
def test_unseeded_invalid_arguments(ops, shape, minval, maxval, message) -> None:
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        ops.secure_random_uniform(
            tf.constant(shape, tf.int32), tf.constant(minval, tf.int32), tf.constant(maxval, tf.int32)
        )


def test_secure_random_uniform_fresh_per_run(ops) -> None:
    lo, hi = tf.constant(INT64_MIN, tf.int64), tf.constant(INT64_MAX, tf.int64)
    a = ops.secure_random_uniform([1000], lo, hi).numpy()
    b = ops.secure_random_uniform([1000], lo, hi).numpy()
    assert not np.array_equal(a, b)
    small = ops.secure_random_uniform(tf.constant([50, 40], tf.int64), tf.constant(-3, tf.int8),
                                      tf.constant(4, tf.int8)).numpy()
    assert small.shape == (50, 40) and small.dtype == np.int8
    assert small.min() == -3 and small.max() == 3

    @tf.function
    def twice():
        return ops.secure_random_uniform([64], lo, hi), ops.secure_random_uniform([64], lo, hi)

    x1, y1 = twice()
    x2, _ = twice()
    assert not np.array_equal(x1, y1)
    assert not np.array_equal(x1, x2)


def test_secure_seed(ops) -> None:
    a, b = ops.secure_seed(), ops.secure_seed()
    assert a.shape == (8,) and a.dtype == tf.int32
    assert not np.array_equal(a, b)

    @tf.function
    def two_seeds():
        return ops.secure_seed(), ops.secure_seed()

    s1, t1 = two_seeds()
    s2, t2 = two_seeds()
    assert s1.shape == (8,)
    assert not np.array_equal(s1, t1)
    assert not np.array_equal(s1, s2)
    assert not np.array_equal(t1, t2)


# --------------------------------------------------------------------------
# Bit ops.
# --------------------------------------------------------------------------


def _unsigned(x: np.ndarray) -> np.ndarray:
    return x.view(np.dtype(f"u{x.dtype.itemsize}"))


def _width(x: np.ndarray) -> int:
    return x.dtype.itemsize * 8


def ref_bit_gather(x: np.ndarray, start: int, stride: int) -> np.ndarray:
    u = _unsigned(x)
    one = u.dtype.type(1)
    out = np.zeros_like(u)
    for j, bit in enumerate(range(start, _width(x), stride)):
        out |= ((u >> u.dtype.type(bit)) & one) << u.dtype.type(j)
    return out.view(x.dtype)


def ref_bit_reverse(x: np.ndarray) -> np.ndarray:
    u = _unsigned(x)
    width = _width(x)
    one = u.dtype.type(1)
    out = np.zeros_like(u)
    for d in range(width):
        out |= ((u >> u.dtype.type(d)) & one) << u.dtype.type(width - 1 - d)
    return out.view(x.dtype)


def ref_xor_indices(x: np.ndarray) -> np.ndarray:
    u = _unsigned(x)
    out = np.zeros(x.shape, np.int64)
    for d in range(_width(x)):
        out ^= np.where((u >> u.dtype.type(d)) & u.dtype.type(1), d, 0)
    return out.astype(x.dtype)


@pytest.fixture(scope="module", params=[np.int8, np.int16, np.int32, np.int64],
                ids=["int8", "int16", "int32", "int64"])
def random_ints(request) -> np.ndarray:
    info = np.iinfo(request.param)
    rng = np.random.default_rng(20240601)
    edge = np.array([0, 1, -1, 2, info.min, info.max, info.min + 1, info.max - 1], request.param)
    body = rng.integers(info.min, info.max, size=(10, 50), dtype=request.param, endpoint=True)
    return np.concatenate([edge, body.ravel()]).reshape(4, 127)


def test_aux_examples(ops) -> None:
    x = tf.constant([0xAAAA, 0x425F32EA92, 0x2], tf.int64)
    assert ops.bit_gather(x, start=0, stride=2).numpy().tolist() == [0, 0x8F484, 0]
    assert ops.bit_gather(x, start=1, stride=2).numpy().tolist() == [0xFF, 0x135F9, 1]
    assert ops.bit_split_and_gather(x, stride=2).numpy().tolist() == [[0, 0x8F484, 0], [0xFF, 0x135F9, 1]]
    assert ops.bit_reverse(tf.constant([1], tf.int64)).numpy().tolist() == [INT64_MIN]
    assert ops.bit_reverse(tf.constant([1], tf.int32)).numpy().tolist() == [INT32_MIN]
    assert ops.xor_indices(tf.constant([0b1110, -1], tf.int64)).numpy().tolist() == [1 ^ 2 ^ 3, 0]


def test_bit_gather_all_starts_and_strides(ops, random_ints) -> None:
    x = tf.constant(random_ints)
    for stride in range(1, 5):
        for start in range(_width(random_ints)):
            got = ops.bit_gather(x, start=start, stride=stride).numpy()
            np.testing.assert_array_equal(got, ref_bit_gather(random_ints, start, stride),
                                          err_msg=f"start={start} stride={stride}")


def test_bit_split_and_gather(ops, random_ints) -> None:
    x = tf.constant(random_ints)
    for stride in range(1, 5):
        got = ops.bit_split_and_gather(x, stride=stride).numpy()
        assert got.shape == (stride, *random_ints.shape)
        for i in range(stride):
            np.testing.assert_array_equal(got[i], ref_bit_gather(random_ints, i, stride))


def test_bit_reverse_and_xor_indices(ops, random_ints) -> None:
    x = tf.constant(random_ints)
    np.testing.assert_array_equal(ops.bit_reverse(x).numpy(), ref_bit_reverse(random_ints))
    np.testing.assert_array_equal(ops.xor_indices(x).numpy(), ref_xor_indices(random_ints))


@pytest.mark.parametrize(("dtype", "call", "message"), [
    (tf.int64, lambda o, x: o.bit_gather(x, start=64, stride=1), "start must be in \\[0, 64\\)"),
    (tf.int32, lambda o, x: o.bit_gather(x, start=32, stride=1), "start must be in \\[0, 32\\)"),
    (tf.int64, lambda o, x: o.bit_gather(x, start=-1, stride=1), "start must be"),
    (tf.int64, lambda o, x: o.bit_gather(x, start=0, stride=0), "stride must be >= 1"),
    (tf.int32, lambda o, x: o.bit_split_and_gather(x, stride=0), "stride must be >= 1"),
    (tf.int32, lambda o, x: o.bit_split_and_gather(x, stride=33), "stride must be <= 32"),
])
def test_aux_invalid_attrs(ops, dtype, call, message) -> None:
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        call(ops, tf.constant([1, 2], dtype))


# --------------------------------------------------------------------------
# Build and load.
# --------------------------------------------------------------------------


def test_build_is_cached(ops, monkeypatch) -> None:
    path = harness_ops.build()
    mtime = path.stat().st_mtime_ns
    assert path.name == "harness_ops.so" and path.parent.name.startswith(f"tf{tf.__version__}-")
    assert harness_ops.library_path() == path
    def no_compile(*_args: object) -> None:
        raise AssertionError("build() recompiled a cached library")

    import harness.native  # noqa: PLC0415  (the compile step the ops build uses)

    monkeypatch.setattr(harness.native, "_compile", no_compile)
    assert harness_ops.build() == path
    assert path.stat().st_mtime_ns == mtime
    assert harness_ops.load() is ops


def test_missing_compiler_fails_closed(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("HARNESS_OPS_CACHE", str(tmp_path))
    monkeypatch.setenv("HARNESS_CXX", "/nonexistent/g++")
    with pytest.raises(harness_ops.OpsUnavailableError, match="apt-get install g\\+\\+") as info:
        harness_ops.build()
    assert "/nonexistent/g++" in str(info.value)
    assert not list(tmp_path.rglob("*.so*"))


def test_missing_tf_headers_fail_closed(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("HARNESS_OPS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(tf.sysconfig, "get_include", lambda: str(tmp_path))
    with pytest.raises(harness_ops.OpsUnavailableError, match="TensorFlow C\\+\\+ headers not found"):
        harness_ops.build()


def test_compile_error_reports_stderr(monkeypatch, tmp_path) -> None:
    fake = tmp_path / "fake-g++"
    fake.write_text("#!/bin/sh\necho 'fake.cc:1: error: no such luck' >&2\nexit 1\n")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("HARNESS_OPS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HARNESS_CXX", str(fake))
    with pytest.raises(harness_ops.OpsUnavailableError, match="no such luck"):
        harness_ops.build()
    leftovers = [p for p in (tmp_path / "cache").rglob("*") if p.suffix in (".so", ".tmp")]
    assert not leftovers


def test_load_failure_fails_closed(monkeypatch, tmp_path) -> None:
    bogus = tmp_path / "harness_ops.so"
    bogus.write_bytes(b"not an ELF file")
    monkeypatch.setattr(build_module, "_module", None)
    monkeypatch.setattr(build_module, "build", lambda force=False: pathlib.Path(bogus))
    with pytest.raises(harness_ops.OpsUnavailableError, match="loading .* failed"):
        build_module.load()
