"""Shared by the exact ring checks (``test_speed*.py``): hypothesis settings, int64 arrays
that favour the ring's edges (0, +-1, +-2, the extremes) and small values, and a fresh
in-process protocol instance per case."""
from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from tf_encrypted.protocol import protocol as _tfe_protocol

from harness.names import PLAYERS

I64 = np.iinfo(np.int64)
SETTINGS = settings(max_examples=25, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

ring_values = st.one_of(
    st.integers(I64.min, I64.max),
    st.sampled_from([0, 1, -1, -2, 2, I64.min, I64.max, I64.min + 1, I64.max - 1]),
    st.integers(-(2**20), 2**20))


def ring_arrays(shape):
    return hnp.arrays(np.int64, shape, elements=ring_values)


def fresh_protocol(name, changes):
    """Protocol ``name`` with the speed ``changes``, in-process and current, with
    tf-encrypted's global memo cache cleared (no reuse across hypothesis cases)."""
    import tf_encrypted as tfe  # noqa: PLC0415

    from harness.tfe import protocols  # noqa: PLC0415

    tfe.set_config(tfe.LocalConfig(list(PLAYERS)))
    prot = protocols.make(name, changes=changes)
    tfe.set_protocol(prot)
    _tfe_protocol.nodes.clear()
    return prot


def transfers(name, changes, inputs, step):
    """What ``step(prot, *inputs(prot))`` sends between devices when traced for a cluster:
    the set of (tensor name, sending device, receiving device) of every op it adds whose
    input sits on another device. Leaves the in-process config current."""
    from collections import OrderedDict  # noqa: PLC0415

    import tensorflow as tf  # noqa: PLC0415
    import tf_encrypted as tfe  # noqa: PLC0415

    from harness.tfe import protocols  # noqa: PLC0415

    hostmap = OrderedDict((p, f"localhost:{4100 + i}") for i, p in enumerate(PLAYERS))
    graph = tf.Graph()
    try:
        with graph.as_default():
            tfe.set_config(tfe.RemoteConfig(hostmap))
            prot = protocols.make(name, changes=changes)
            tfe.set_protocol(prot)
            _tfe_protocol.nodes.clear()
            args = inputs(prot)
            before = {op.name for op in graph.get_operations()}
            step(prot, *args)
            return {(t.name, t.op.device, op.device) for op in graph.get_operations()
                    if op.name not in before for t in op.inputs if t.op.device != op.device}
    finally:
        tfe.set_config(tfe.LocalConfig(list(PLAYERS)))
