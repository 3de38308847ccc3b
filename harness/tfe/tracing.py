"""Compiling a private computation into one TensorFlow graph, fast.

``tfe.function`` wraps ``tf.function`` with AutoGraph on: tracing a SecureNN
prediction then spends most of its time re-transpiling tf-encrypted's Python (about
2,400 functions for the tutorial model), though none of it needs AutoGraph: its loops
are Python loops over static shapes, and ABY3 builds its graph while loops itself
(``while_v2``). ``compile_step`` is ``tfe.function`` with AutoGraph off: the same graph
ops (the equivalence tests compare the results with plaintext for all protocols), traced
in a fraction of the time.
"""
from __future__ import annotations

import functools
import random
from contextlib import contextmanager
from typing import Any, Callable, Iterator

import tensorflow as tf
from tf_encrypted.protocol import protocol as _tfe_protocol


@contextmanager
def fixed_layout(seed: int = 0) -> Iterator[None]:
    """Trace with Python's ``random`` in a fixed state, restored afterwards.

    tf-encrypted (and our ``pair-keys`` change) flip Python coins while tracing to spread
    work between server0 and server1: which of them samples a public mask, which one gets
    the seeded share. The choice is part of the graph every party sees, not a secret, and
    no value depends on it; fixing it makes the same model trace to the same graph, so
    its communication is identical from run to run (``harness.inference.comm``).
    Secret randomness comes from our ops (OS CSPRNG + ChaCha20), never from ``random``.
    """
    state = random.getstate()
    random.seed(seed)
    try:
        yield
    finally:
        random.setstate(state)


def compile_step(func: Callable[..., Any]) -> Callable[..., Any]:
    """``func`` (tfe tensors in, tfe/tf tensors out) compiled once per input signature."""

    @tf.function(autograph=False)
    def graph_function(args: Any, kwargs: Any) -> Any:
        args, kwargs = _tfe_protocol.input_wrap(args, kwargs)
        return _tfe_protocol.unwrap_func(func(*args, **kwargs))

    @functools.wraps(func)
    def call(*args: Any, **kwargs: Any) -> Any:
        args, kwargs = _tfe_protocol.input_unwrap(args, kwargs)
        return _tfe_protocol.wrap_func(graph_function(args, kwargs))

    return call
