"""Our replacement for ``tf_encrypted.operations.secure_random.secure_random``.

tf-encrypted's own wrapper looks for a prebuilt ``.so`` next to the package and,
when it is missing, leaves the module as ``None`` while logging that it "falls
back" to insecure randomness (it does not: ``secure_seed()`` then crashes).
This module keeps the same public API but is backed by the ops we compile
ourselves (``harness.tfe.ops``): randomness comes from ``getrandom`` expanded with
ChaCha20. There is no fallback; if the ops cannot be built, importing fails.
"""
from __future__ import annotations

from typing import Any

import tensorflow as tf
from tensorflow.python.framework import dtypes

from harness.tfe import ops as _ops

secure_random_module = _ops.load()

_INT_DTYPES = (dtypes.int8, dtypes.int16, dtypes.int32, dtypes.int64)


def supports_secure_randomness() -> bool:
    """Always true: the harness refuses to run without its secure ops."""
    return True


def supports_seeded_randomness() -> bool:
    """Always true: the harness refuses to run without its secure ops."""
    return True


def _bounds(dtype: Any, minval: Any, maxval: Any) -> tuple[tf.Tensor, tf.Tensor]:
    dtype = dtypes.as_dtype(dtype)
    if dtype not in _INT_DTYPES:
        raise ValueError(f"Invalid dtype {dtype!r}: secure sampling is for integer dtypes")
    if maxval is None:
        raise ValueError(f"Must specify maxval for integer dtype {dtype!r}")
    return (
        tf.convert_to_tensor(minval, dtype=dtype, name="min"),
        tf.convert_to_tensor(maxval, dtype=dtype, name="max"),
    )


def seeded_random_uniform(shape, minval=0, maxval=None, dtype=tf.int32, seed=None, name=None):
    """Uniform integers in [minval, maxval), a deterministic function of a 256-bit seed."""
    if seed is None:
        raise ValueError("Seed must be passed")
    lo, hi = _bounds(dtype, minval, maxval)
    return secure_random_module.secure_seeded_random_uniform(shape, seed, lo, hi, name=name)


def random_uniform(shape, minval=0, maxval=None, dtype=tf.int32, name=None):
    """Uniform integers in [minval, maxval) from a fresh OS seed on every run."""
    lo, hi = _bounds(dtype, minval, maxval)
    return secure_random_module.secure_random_uniform(shape, lo, hi, name=name)


def secure_seed(name=None):
    """A fresh 256-bit seed (int32[8]) from the OS CSPRNG, drawn on every run."""
    return secure_random_module.secure_seed(name=name)


def derive_seed(key, index, name=None):
    """Seed number ``index`` (a Python int in [0, 2^32)) derived from a 256-bit key with
    a ChaCha20 PRF; see ``harness.tfe.triples``."""
    return secure_random_module.harness_derive_seed(
        key, tf.constant(index, tf.int64), name=name)


def _no_int128(*_args, **_kwargs):
    raise NotImplementedError(
        "The int128 ring (fixedpoint_config='high' / ABY3 int128) is not supported by "
        "the harness's ops; use the default 64-bit fixed-point configuration."
    )


i128_seeded_random_uniform = _no_int128
i128_random_uniform = _no_int128
