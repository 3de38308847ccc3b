"""What the model owner and its clients agree on: the serving descriptor and share layouts.

``ServingDescriptor`` is published by the owner (a string variable on server0) and read
by every client: protocol, session, number of client slots, the owner's largest batch,
one request's input and output shapes, and the names of the session's queues:

* ``in/<slot>/<i>`` on input server i: ``(request id, input shares held by server i...,
  output mask share i)``, enqueued by the client in that slot;
* ``commit`` on server0: ``(request id, slot)``, enqueued by a client once all of its
  input shares are in (a client that dies half-way leaves no commit);
* ``stage/<i>``: the owner's batch being assembled on server i (the serving step only);
* ``out/<slot>/<i>``: ``(request id, masked output share i)`` for the client in ``slot``.

Each slot has its own input and output queues: one client per slot, so a client's
requests are in order in its own queues, and no client ever dequeues another's result.

Who can derive what from these tensors: every input and output element is one additive
share of a ring element (uniform on its own), and every output share is masked with a
share of random ring elements the client chose; only the client, which holds the masks'
sum, can unmask its own result (``harness.inference.serving_step``).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any, Sequence

from harness.tfe import activate as _activate_tfe

tfe = _activate_tfe()  # this layer runs tf-encrypted: the boundary goes first

import tensorflow as tf  # noqa: E402

from harness.inference.serving_slots import ServingError  # noqa: E402

DESCRIPTOR_VERSION = 2
DEFAULT_CAPACITY = 16  # requests one client may have in flight
IMAGE_SHAPE = (1, 28, 28, 1)
LOGITS_SHAPE = (1, 10)


# -- layout of a private tensor over the servers ------------------------------------------
@dataclass(frozen=True)
class Layout:
    """Additive shares of a secret (``n_shares``) and which ones server i holds (``held[i]``).

    Pond/SecureNN: x = x0 + x1, server0 holds x0, server1 x1 (server2 only helps).
    ABY3 (replicated): x = x0 + x1 + x2, server i holds (x_i, x_{i+1}).
    Output share i is returned by server i.
    """

    n_shares: int
    held: tuple[tuple[int, ...], ...]

    @property
    def input_servers(self) -> tuple[int, ...]:
        return tuple(i for i, h in enumerate(self.held) if h)

    @property
    def output_servers(self) -> tuple[int, ...]:
        return tuple(range(self.n_shares))


LAYOUTS = {
    "pond": Layout(2, ((0,), (1,), ())),
    "securenn": Layout(2, ((0,), (1,), ())),
    "aby3": Layout(3, ((0, 1), (1, 2), (2, 0))),
}


def _is_aby3(protocol: Any) -> bool:
    return isinstance(protocol, tfe.protocol.ABY3)


def private_to_raw(protocol: Any, x: Any) -> list[list[tf.Tensor]]:
    """The raw ring tensors of private ``x`` per server (each placed on that server)."""
    if _is_aby3(protocol):
        return [[x.shares[i][0].value, x.shares[i][1].value] for i in range(3)]
    if hasattr(x, "unmasked"):
        x = x.unmasked
    s0, s1 = x.unwrapped
    return [[s0.value], [s1.value], []]


def raw_to_private(protocol: Any, raw: Sequence[Sequence[tf.Tensor]]) -> Any:
    """Inverse of ``private_to_raw`` (a scaled arithmetic sharing)."""
    factory = ring_factory(protocol)
    if _is_aby3(protocol):
        from tf_encrypted.protocol.aby3.aby3_tensors import ABY3PrivateTensor, ShareType

        shares = [[factory.tensor(t, encode=False) for t in raw[i]] for i in range(3)]
        return ABY3PrivateTensor(protocol, shares, True, ShareType.ARITHMETIC)
    from tf_encrypted.protocol.pond.pond import PondPrivateTensor

    return PondPrivateTensor(protocol, factory.tensor(raw[0][0], encode=False),
                             factory.tensor(raw[1][0], encode=False), True)


def output_share(protocol: Any, x: Any, i: int) -> tf.Tensor:
    """Additive share i of private ``x``, on server i."""
    return private_to_raw(protocol, x)[i][0]


def ring_factory(protocol: Any) -> Any:
    return protocol.default_factory if _is_aby3(protocol) else protocol.tensor_factory


# -- the descriptor --------------------------------------------------------------------------
@dataclass(frozen=True)
class QueueSpec:
    """A shared-name FIFO queue: its name, component shapes (all int64) and capacity."""

    name: str
    shapes: tuple[tuple[int, ...], ...]
    capacity: int

    @property
    def n(self) -> int:
        return len(self.shapes)


@dataclass(frozen=True)
class ServingDescriptor:
    """A serving session as the owner announces it to clients (JSON on server0)."""

    protocol: str
    session: str
    slots: int = 1
    max_batch: int = 1
    image_shape: tuple[int, ...] = IMAGE_SHAPE
    logits_shape: tuple[int, ...] = LOGITS_SHAPE
    capacity: int = DEFAULT_CAPACITY
    version: int = DESCRIPTOR_VERSION

    @property
    def layout(self) -> Layout:
        return LAYOUTS[self.protocol]

    @property
    def prefix(self) -> str:
        return f"harness-serving/{self.session}"

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "ServingDescriptor":
        data = json.loads(text)
        if data.get("version") != DESCRIPTOR_VERSION:
            raise ServingError(f"the model owner speaks serving version {data.get('version')}, "
                               f"this client {DESCRIPTOR_VERSION}: use the same harness on both "
                               "sides")
        data["image_shape"] = tuple(data["image_shape"])
        data["logits_shape"] = tuple(data["logits_shape"])
        return cls(**data)

    # queues: every component is int64
    def _request_parts(self, i: int) -> tuple[tuple[int, ...], ...]:
        return ((),) + (self.image_shape,) * len(self.layout.held[i]) + (self.logits_shape,)

    def input_queue(self, slot: int, i: int) -> QueueSpec:
        return QueueSpec(f"{self.prefix}/in/{slot}/{i}", self._request_parts(i), self.capacity)

    def stage_queue(self, i: int) -> QueueSpec:
        return QueueSpec(f"{self.prefix}/stage/{i}", self._request_parts(i), self.max_batch)

    def commit_queue(self) -> QueueSpec:
        # each slot commits at most `capacity` requests ahead (its input queue's size)
        return QueueSpec(f"{self.prefix}/commit", ((), ()), self.slots * self.capacity)

    def output_queue(self, slot: int, i: int) -> QueueSpec:
        return QueueSpec(f"{self.prefix}/out/{slot}/{i}", ((), self.logits_shape), self.capacity)

    def all_queues(self) -> list[tuple[int, QueueSpec]]:
        """(server index, spec) of every queue of the session."""
        lay = self.layout
        found = [(0, self.commit_queue())]
        found += [(i, self.stage_queue(i)) for i in lay.input_servers]
        for k in range(self.slots):
            found += [(i, self.input_queue(k, i)) for i in lay.input_servers]
            found += [(i, self.output_queue(k, i)) for i in lay.output_servers]
        return found
