"""Seed-compressed Beaver triples for Pond and SecureNN.

tf-encrypted's triple producer (server2) samples every mask share and every
random product share as a full tensor and sends it over the network: in a
SecureNN prediction these are 54 of the 167 tensors that cross between
processes. A random share needs no transfer, only its seed: this is the usual
seed compression of the triple phase. Producer and receiver expand the same
seed with ChaCha20, so the receiver holds exactly the values it held before.

Seeds come from one key per (producer, receiver) pair and graph: a fresh
256-bit OS-CSPRNG key (``SecureSeed``, drawn again on every run of a compiled
function) from which seed number i is derived with a ChaCha20 PRF
(``HarnessDeriveSeed``). Only that key crosses from producer to receiver, once
per run. What the receiver can compute from it is exactly the set of random
shares it would have been sent; no other party ever gets it. A product share
(``ab - r``) is still sent in full, to the other server.
"""
from __future__ import annotations

import secrets
import weakref
from contextlib import nullcontext
from typing import Any

import tensorflow as tf

from harness.compat import secure_random, wire

_PairKey = list  # [key tensor, next seed index]

# graph -> {(producer device, receiver device): [key, next index]}
_KEYS: "weakref.WeakKeyDictionary[Any, dict[tuple[str, str], _PairKey]]" = (
    weakref.WeakKeyDictionary())


def pair_seeds(producer: str | None, receiver: str) -> tuple[tf.Tensor, tf.Tensor]:
    """A fresh seed for one random tensor the ``producer`` device (None: the current
    one) hands to the ``receiver`` device: the same seed, on each of the two."""
    if tf.executing_eagerly():  # no graph to share a key in: one key per seed
        with nullcontext() if producer is None else tf.device(producer):
            key = secure_random.secure_seed(name="pair-key")
        index = 0
    else:
        producer = wire.current_device() if producer is None else producer
        per_graph = _KEYS.setdefault(tf.compat.v1.get_default_graph(), {})
        slot = per_graph.get((producer, receiver))
        if slot is None:
            # outside any control dependencies of the first user: later users
            # elsewhere in the graph must not wait for them
            with tf.control_dependencies(None), tf.device(producer):
                key = secure_random.secure_seed(name="pair-key")
            slot = per_graph[(producer, receiver)] = [key, 0]
        key, index = slot
        slot[1] += 1
    seeds = []
    for device in (producer, receiver):
        with nullcontext() if device is None else tf.device(device):
            seeds.append(secure_random.derive_seed(key, index))
    return seeds[0], seeds[1]


def _servers(source: Any) -> tuple[Any, Any]:
    if source.player0 is None or source.player1 is None:
        raise RuntimeError("triple source has no servers: create it through a Pond protocol")
    return source.player0, source.player1


def mask(self: Any, backing_dtype: Any, shape: Any) -> tuple[Any, Any, Any]:
    """``BaseTripleSource.mask``: ``a = a0 + a1`` on the producer, ``a0``/``a1`` expanded
    from seeds on server0/server1."""
    server0, server1 = _servers(self)
    with tf.name_scope("triple-generation"):
        seeds0 = pair_seeds(self.producer.device_name, server0.device_name)
        seeds1 = pair_seeds(self.producer.device_name, server1.device_name)
        with tf.device(self.producer.device_name):
            a0 = backing_dtype.sample_seeded_uniform(shape, seeds0[0])
            a1 = backing_dtype.sample_seeded_uniform(shape, seeds1[0])
            a = a0 + a1
        with tf.device(server0.device_name):
            d0 = backing_dtype.sample_seeded_uniform(shape, seeds0[1])
        with tf.device(server1.device_name):
            d1 = backing_dtype.sample_seeded_uniform(shape, seeds1[1])
    d0, d1 = self._build_queues(d0, d1)
    return a, d0, d1


def share(self: Any, secret: Any) -> tuple[Any, Any]:
    """``BaseTripleSource._share``: one server's share is expanded from a seed, the
    other (``secret - r``) is sent; which one alternates at random, as upstream."""
    server0, server1 = _servers(self)
    seeded_first = secrets.randbelow(2) == 0
    seeded = server0 if seeded_first else server1
    with tf.name_scope("share"):
        seeds = pair_seeds(self.producer.device_name, seeded.device_name)
        with tf.device(self.producer.device_name):
            rest = secret - secret.factory.sample_seeded_uniform(secret.shape, seeds[0])
        with tf.device(seeded.device_name):
            r = secret.factory.sample_seeded_uniform(secret.shape, seeds[1])
    return (r, rest) if seeded_first else (rest, r)


def pond_share(self: Any, secret: Any) -> tuple[Any, Any]:
    """``Pond._share``: the owner (the current device) derives one server's share from
    a pair seed and sends the other server ``secret - r``; upstream sent a fresh seed
    per tensor. Which server gets the seed alternates at random, as upstream."""
    seeded_first = secrets.randbelow(2) == 0
    seeded, other = ((self.server_0, self.server_1) if seeded_first
                     else (self.server_1, self.server_0))
    with tf.name_scope("share"):
        seeds = pair_seeds(None, seeded.device_name)
        rest = secret - secret.factory.sample_seeded_uniform(secret.shape, seeds[0])
        with tf.device(seeded.device_name):
            r = secret.factory.sample_seeded_uniform(secret.shape, seeds[1])
        rest = wire.send(rest, other.device_name)
    return (r, rest) if seeded_first else (rest, r)


def attach_servers(init: Any) -> Any:
    """Wrap ``Pond.__init__`` so its triple source knows the two servers it serves."""

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        source = self.triple_source
        if source.player0 is None and source.player1 is None:
            source.player0, source.player1 = self.server_0, self.server_1

    return __init__
