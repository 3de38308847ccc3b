"""Throughput of our seeded ChaCha20 sampler (the op behind every share)."""
from __future__ import annotations

import tensorflow as tf

from harness.tfe import ops

ELEMENTS = 1 << 22  # 4 Mi int64 = 32 MiB per call


def test_seeded_sampler_int64(benchmark):
    lib = ops.load()
    seed = lib.secure_seed()
    lo = tf.constant(tf.int64.min, tf.int64)
    hi = tf.constant(tf.int64.max, tf.int64)

    @tf.function
    def sample():
        return lib.secure_seeded_random_uniform([ELEMENTS], seed, lo, hi)

    sample()
    benchmark.group = "sampler"
    benchmark.pedantic(lambda: sample().numpy(), rounds=10, warmup_rounds=1, iterations=1)
    mb_s = ELEMENTS * 8 / benchmark.stats.stats.median / 1e6
    benchmark.extra_info.update(elements=ELEMENTS, dtype="int64", mb_per_s=mb_s,
                                threads=tf.config.threading.get_intra_op_parallelism_threads())
