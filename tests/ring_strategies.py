"""Hypothesis settings and strategies for exact ring checks (``test_speed*.py``): int64
arrays that favour the ring's edges (0, +-1, +-2, the extremes) and small values."""
from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

I64 = np.iinfo(np.int64)
SETTINGS = settings(max_examples=25, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

ring_values = st.one_of(
    st.integers(I64.min, I64.max),
    st.sampled_from([0, 1, -1, -2, 2, I64.min, I64.max, I64.min + 1, I64.max - 1]),
    st.integers(-(2**20), 2**20))


def ring_arrays(shape):
    return hnp.arrays(np.int64, shape, elements=ring_values)
