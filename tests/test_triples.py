"""Seed-compressed triples (``harness.tfe.speed.triples``): what crosses between parties.

The property tests in ``test_sharing.py`` check that products, matmuls, convolutions
and ReLUs built from these triples are still right and freshly random on every run;
here we check the communication itself, on graphs placed as on a real cluster.
"""
from __future__ import annotations

from collections import OrderedDict, defaultdict

import numpy as np
import pytest
import tensorflow as tf
import tf_encrypted as tfe

from harness.inference.private import CLIENT, PLAYERS
from harness.tfe import protocols
from harness.tfe.speed import triples

HOSTMAP = OrderedDict((name, f"localhost:{4000 + i}") for i, name in enumerate(PLAYERS))
PRODUCER, SERVER0, SERVER1 = (f"/job:tfe/replica:0/task:{i}/device:CPU:0" for i in (2, 0, 1))


def _cluster_graph(protocol: str, variant: str = "tuned") -> tf.Graph:
    """A private matmul, product and (SecureNN) ReLU, placed on the hostmap's devices.
    Graph mode: ops get their devices without any worker running."""
    graph = tf.Graph()
    with graph.as_default():
        tfe.set_config(tfe.RemoteConfig(HOSTMAP))
        prot = protocols.make(protocol, variant)
        tfe.set_protocol(prot)
        x = prot.define_private_input(CLIENT, lambda: tf.constant(np.ones((3, 4))))
        w = prot.define_private_variable(np.ones((4, 2)))
        y = prot.matmul(x, w) * x[:, :2]
        if protocol == "securenn":
            prot.relu(y)
    return graph


def _crossing(graph: tf.Graph) -> dict[tuple[str, str], set[tf.Tensor]]:
    """(from device, to device) -> the distinct tensors sent along it."""
    sent: dict[tuple[str, str], set[tf.Tensor]] = defaultdict(set)
    for op in graph.get_operations():
        for t in op.inputs:
            if t.op.device != op.device:
                sent[(t.op.device, op.device)].add(t)
    return sent


@pytest.fixture(autouse=True)
def _restore_config():
    yield
    tfe.set_config(tfe.LocalConfig(list(PLAYERS)))


@pytest.mark.parametrize("protocol", ["pond", "securenn"])
def test_producer_sends_keys_not_random_tensors(protocol):
    sent = _crossing(_cluster_graph(protocol))
    for server in (SERVER0, SERVER1):
        from_producer = sent[(PRODUCER, server)]
        keys = [t for t in from_producer if "pair-key" in t.name]
        assert len(keys) == 1, f"one pair key per run from the producer to {server}"
        random = [t.name for t in from_producer if "RandomUniform" in t.op.type]
        assert not random, f"random tensors sent instead of seeds: {random}"
    # the client shares its input the same way: one key to one server, the rest to the other
    client = "/job:tfe/replica:0/task:3/device:CPU:0"
    to_servers = sent[(client, SERVER0)] | sent[(client, SERVER1)]
    assert sum("pair-key" in t.name for t in to_servers) == 1
    assert not [t for t in to_servers if "RandomUniform" in t.op.type]


@pytest.mark.parametrize("protocol", ["pond", "securenn"])
def test_stock_variant_sends_random_tensors(protocol):
    """The baseline the test above improves on: the stock variant runs tf-encrypted's own
    triple source, which sends every random share as a tensor."""
    sent = _crossing(_cluster_graph(protocol, "stock"))
    assert any("RandomUniform" in t.op.type for t in sent[(PRODUCER, SERVER0)])
    assert not any("pair-key" in t.name for t in sent[(PRODUCER, SERVER0)])


def test_pair_seeds_agree_and_are_fresh_per_run():
    @tf.function
    def seeds():
        first = triples.pair_seeds("/device:CPU:0", "/device:CPU:0")
        second = triples.pair_seeds("/device:CPU:0", "/device:CPU:0")
        return [*first, *second]

    p1, r1, p2, r2 = (s.numpy() for s in seeds())
    assert np.array_equal(p1, r1) and np.array_equal(p2, r2), "both ends expand one seed"
    assert not np.array_equal(p1, p2), "seeds of one run must differ"
    again = seeds()[0].numpy()
    assert not np.array_equal(p1, again), "a new run must draw a new key"


def test_pair_seeds_in_eager_mode_are_fresh():
    a, b = triples.pair_seeds(None, "/device:CPU:0")
    c, _ = triples.pair_seeds(None, "/device:CPU:0")
    assert np.array_equal(a.numpy(), b.numpy())
    assert not np.array_equal(a.numpy(), c.numpy())


# ----------------------------------------------------------------------------------
# Small-field shares on the wire (harness.tfe.speed.wire)
# ----------------------------------------------------------------------------------

def _is_prime_field_mod(tensor: tf.Tensor) -> bool:
    op = tensor.op
    if op.type != "FloorMod" or op.inputs[1].op.type != "Const":
        return False
    return int(tf.get_static_value(op.inputs[1])) < 2**15


def test_securenn_sends_prime_field_shares_as_int8():
    from harness.tfe.speed import wire

    graph = _cluster_graph("securenn")
    prot = tfe.get_protocol()
    assert wire.wire_dtype(prot.prime_factory) == tf.int8
    assert wire.wire_dtype(prot.tensor_factory) is None, "ring shares travel as they are"
    sent = set().union(*_crossing(graph).values())
    wide = [t.name for t in sent if _is_prime_field_mod(t)]
    assert not wide, f"prime-field shares sent as int64: {wide}"
    assert any(t.dtype == tf.int8 for t in sent)


def test_narrowing_keeps_field_elements():
    """Any int64 representative (negative, above the modulus) arrives as the same
    element of Z_p, in [0, p)."""
    from harness.tfe.speed import wire
    from tf_encrypted.tensor import native_factory

    prime = native_factory(tf.int64, 107)
    values = np.array([-2**63, -108, -107, -1, 0, 1, 106, 107, 2**63 - 1], dtype=np.int64)

    @tf.function
    def through_the_wire(v):
        with tf.device("/device:CPU:0"):
            x = prime.tensor(v)
        return wire.narrow_on_sender(x)

    small = through_the_wire(tf.constant(values)).numpy()
    assert small.dtype == np.int8
    assert np.array_equal(small.astype(np.int64), np.mod(values, 107))


def test_driver_takes_no_part_in_securenn():
    """Upstream's private compare shared a public constant outside any device scope, so
    the driver drew randomness and sent shares to both servers on every run. (The
    weights in this graph are the driver's own, shared from it on purpose.)"""
    graph = _cluster_graph("securenn")
    unplaced = [o.name for o in graph.get_operations()
                if not o.device and o.name.startswith("relu/") and o.type in ("SecureSeed", "SecureSeededRandomUniform",
                                               "HarnessDeriveSeed")]
    assert not unplaced, unplaced
