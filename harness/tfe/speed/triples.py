"""Speed change ``pair-keys``: seed-compressed Beaver triples and input shares (Pond, SecureNN).

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

import itertools
import random
import weakref
from contextlib import nullcontext
from typing import Any

import tensorflow as tf

from tf_encrypted.protocol.pond.triple_sources import OnlineTripleSource

from harness.tfe import secure_random
from harness.tfe.speed import wire

# graph -> {(producer device, receiver device): (key, seed indices)}
_KEYS: "weakref.WeakKeyDictionary[Any, dict[tuple[str, str], tuple[tf.Tensor, Any]]]" = (
    weakref.WeakKeyDictionary())


def _on(device: str | None) -> Any:
    """``tf.device(device)``, or no change for None (the current device)."""
    return nullcontext() if device is None else tf.device(device)


def pair_seeds(producer: str | None, receiver: str) -> tuple[tf.Tensor, tf.Tensor]:
    """A fresh seed for one random tensor the ``producer`` device (None: the current
    one) hands to the ``receiver`` device: the same seed, on each of the two."""
    if tf.executing_eagerly():  # no graph to share a key in: one key per seed
        with _on(producer):
            key = secure_random.secure_seed(name="pair-key")
        index = 0
    else:
        producer = wire.current_device() if producer is None else producer
        per_graph = _KEYS.setdefault(tf.compat.v1.get_default_graph(), {})
        if (producer, receiver) not in per_graph:
            # outside any control dependencies of the first user: later users
            # elsewhere in the graph must not wait for them
            with tf.control_dependencies(None), tf.device(producer):
                key = secure_random.secure_seed(name="pair-key")
            per_graph[(producer, receiver)] = (key, itertools.count())
        key, indices = per_graph[(producer, receiver)]
        index = next(indices)
    seeds = []
    for device in (producer, receiver):
        with _on(device):
            seeds.append(secure_random.derive_seed(key, index))
    return seeds[0], seeds[1]


def _sample(factory: Any, shape: Any, seed: tf.Tensor, device: str | None) -> Any:
    with _on(device):
        return factory.sample_seeded_uniform(shape, seed)


def _split(secret: Any, owner: str | None, server0: Any, server1: Any,
           narrow: bool) -> tuple[Any, Any]:
    """Shares of ``secret`` (held on ``owner``; None: the current device) for the two
    servers: one expanded from a pair seed where it is used, the other ``secret - r``
    sent from the owner (``narrow``: small-field values as int8, ``wire``). Which server
    gets the seed alternates at random, as upstream."""
    seeded_first = random.random() < 0.5  # load balancing, public: see trace_layout
    seeded, other = (server0, server1) if seeded_first else (server1, server0)
    with tf.name_scope("share"):
        seeds = pair_seeds(owner, seeded.device_name)
        with _on(owner):
            rest = secret - _sample(secret.factory, secret.shape, seeds[0], None)
        r = _sample(secret.factory, secret.shape, seeds[1], seeded.device_name)
        rest = wire.send(rest, other.device_name, narrow=narrow)
    return (r, rest) if seeded_first else (rest, r)


class SeededTripleSource(OnlineTripleSource):
    """tf-encrypted's online triple source (the producer, server2, makes every triple),
    sending pair keys instead of random tensors; given to a protocol instance by
    ``harness.tfe.speed.configure``."""

    def __init__(self, producer: Any, server0: Any, server1: Any, narrow: bool) -> None:
        super().__init__(producer)
        self.player0, self.player1 = server0, server1
        self.narrow = narrow

    def mask(self, backing_dtype: Any, shape: Any) -> tuple[Any, Any, Any]:
        """``a = a0 + a1`` on the producer, ``a0``/``a1`` expanded from seeds on
        server0/server1."""
        producer = self.producer.device_name
        with tf.name_scope("triple-generation"):
            halves = []
            for server in (self.player0, self.player1):
                seeds = pair_seeds(producer, server.device_name)
                halves.append((_sample(backing_dtype, shape, seeds[0], producer),
                               _sample(backing_dtype, shape, seeds[1], server.device_name)))
            with tf.device(producer):
                a = halves[0][0] + halves[1][0]
        d0, d1 = self._build_queues(halves[0][1], halves[1][1])
        return a, d0, d1

    def _share(self, secret: Any) -> tuple[Any, Any]:
        """The producer's split of a product (``_split``)."""
        return _split(secret, self.producer.device_name, self.player0, self.player1,
                      self.narrow)


def pond_share(self: Any, secret: Any) -> tuple[Any, Any]:
    """``Pond._share``: the owner (the current device) splits ``secret`` (``_split``);
    upstream sent a fresh seed per tensor."""
    from harness.tfe.speed import enabled  # noqa: PLC0415

    return _split(secret, None, self.server_0, self.server_1, enabled(self, "narrow-wire"))
