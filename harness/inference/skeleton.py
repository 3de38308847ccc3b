"""The distributed runtime's floor for one computation's communication pattern.

``Skeleton(comm, players)`` compiles a ``tf.function`` for the connected cluster that
makes the transfers of ``comm`` (a ``harness.inference.comm.Communication``, e.g.
``count_prediction``'s) and nothing else: every transfer moves a tensor of the same
dtype and shape from the same sender to the same receiver, and is sent only once the
transfers it waits for (``Transfer.after``) have arrived at its sender. Payloads are
filled tensors; the only work besides the transfers is one fill per transfer and one
scalar read per arrival.

Calling it costs what TensorFlow's remote runtime (the call to every task, gRPC per
transfer, rendezvous, the executor) takes for that pattern on this cluster with no
protocol work: the private computation's cluster time can only approach it. The
benchmarks time it interleaved with the prediction it copies (``bench/test_floor.py``).
``Skeleton.counted()`` checks the copy: its own partition graphs, counted the same way,
hold the same transfers per link, bytes and rounds.

``packed(comm)`` gives the same communication with each link's transfers of one round
as one tensor: its skeleton's time is what that packing could at best leave.

Nothing private is involved: payloads are zeros drawn from a random op.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any, Sequence

import tensorflow as tf

from harness.inference.comm import DRIVER, DRIVER_JOB, PLAYER_JOB, Communication, count


def device_of(player: str, players: Sequence[str]) -> str:
    """The CPU device of a player (``driver``: the calling process)."""
    if player == DRIVER:
        return f"/job:{DRIVER_JOB}/replica:0/task:0/device:CPU:0"
    return f"/job:{PLAYER_JOB}/replica:0/task:{list(players).index(player)}/device:CPU:0"


def packed(comm: Communication) -> Communication:
    """The same communication with each link's transfers of one round (``level``) as one
    int8 tensor of their bytes, waiting for what any of them waited for: what sending
    everything a player sends another in the same round as one tensor would leave.
    Results the driver fetches stay as they are; a group of control transfers only stays
    one control transfer."""
    groups: dict[Any, list[int]] = {}
    for i, t in enumerate(comm.transfers):
        key = i if t.fetched else (t.sender, t.receiver, t.level)
        groups.setdefault(key, []).append(i)
    where = {i: n for n, members in enumerate(groups.values()) for i in members}
    out = []
    for n, members in enumerate(groups.values()):
        first = comm.transfers[members[0]]
        after = tuple(sorted({where[j] for i in members for j in comm.transfers[i].after}))
        if len(members) == 1:
            out.append(replace(first, after=after))
            continue
        nbytes = sum(comm.transfers[i].nbytes for i in members)
        control = all(comm.transfers[i].control for i in members)
        out.append(replace(first, tensor=f"packed:{n}", dtype="int8", shape=(nbytes,),
                           nbytes=nbytes, control=control, after=after))
    return Communication(out, comm.rounds, comm.data_rounds, comm.rounds_with_driver)


def _summary(arrived: tf.Tensor) -> tf.Tensor:
    """A scalar that depends on an arrived tensor (0 for an empty one)."""
    flat = tf.reshape(arrived, [-1])[:1]
    return tf.reduce_sum(tf.cast(flat, tf.int64))


def _root(after: tf.Tensor | None = None) -> tf.Tensor:
    """A zero that no optimisation can fold away: a draw from [0, 1). Random ops are
    stateful (never pruned: the call waits for them) but not ordered among each other,
    so they add no control edges between tasks; ``after`` makes it wait for a value."""
    top = tf.constant(1, tf.int64) if after is None else 1 + tf.abs(after) // (2 ** 62)
    return tf.random.uniform([], 0, top, dtype=tf.int64)


class Skeleton:
    """The transfers of one call of a computation, with no computation."""

    def __init__(self, comm: Communication, players: Sequence[str]) -> None:
        self.comm = comm
        self.players = list(players)
        self._fn = tf.function(self._body)

    def _body(self) -> list[tf.Tensor]:
        transfers = self.comm.transfers
        order = sorted(range(len(transfers)), key=lambda i: (transfers[i].level, i))
        arrived: dict[int, tf.Tensor] = {}
        waited_for = {j for t in transfers for j in t.after}
        roots: dict[str, tf.Tensor] = {}
        outputs: list[tf.Tensor] = []
        for i in order:
            t = transfers[i]
            with tf.device(device_of(t.sender, self.players)):
                if t.sender not in roots:
                    roots[t.sender] = _root()
                waits = [arrived[j] for j in t.after if transfers[j].receiver == t.sender]
                base = tf.add_n([roots[t.sender] + i] + waits)
                if t.control:  # a stateful source, which Grappler never merges or moves
                    payload = _root(base)
                else:
                    payload = tf.fill(t.shape, tf.cast(base, tf.as_dtype(t.dtype)))
            if t.fetched:
                outputs.append(payload)  # a result left on a worker: the call fetches it
                continue
            with tf.device(device_of(t.receiver, self.players)):
                if t.control:  # an empty message standing for a control dependency
                    with tf.control_dependencies([payload]):
                        arrived[i] = tf.identity(_root())
                else:
                    arrived[i] = _summary(tf.identity(payload))
                if i not in waited_for:  # the end of a chain: kept from pruning
                    _root(arrived[i])
        return outputs

    def __call__(self) -> Any:
        """One call: every transfer once; returns once all have arrived."""
        return [out.numpy() for out in self._fn()]

    def counted(self) -> Communication:
        """The skeleton's own communication, counted from its partition graphs."""
        return count(self._fn, players=self.players)
