"""The owner's serving step: one private prediction for a batch of clients' requests.

``build_step(protocol, shared, desc, devices, batch)`` compiles, for a fixed batch size
B, a TensorFlow function ``step(rids, counts)`` whose work all happens on the servers:

1. assemble (each input server i, alone): for each slot k, take ``counts[k]`` requests
   out of ``in/<k>/<i>`` - the ones with the ids the owner dequeued from ``commit``, in
   order, dropping orphan entries of clients that died while sending - into the
   server's ``stage/<i>`` queue, then pad with zero shares up to B rows and take the B
   rows out as one batch of shares;
2. the shared model runs on the batch (the protocol's own traffic between the servers);
3. deliver (each output server i, alone): row r's output share plus row r's mask share
   goes to ``out/<slot of r>/<i>``. A full output queue (a client that never collects)
   loses its oldest result rather than block the server.

Rows are ordered by slot (and by commit within a slot), so each slot's rows are a
contiguous range and the loops are static: two while loops per slot and server.

Who can derive what:
* The owner sends the servers only request ids and per-slot counts (public routing
  data) and gets back per-row "found" flags and counters; no share crosses to it.
* Each server sees its own shares of B images (the padding rows are shares of zero,
  which it can tell from the ids but which reveal nothing of the others) and of B
  output masks; the protocol's messages are those of an ordinary private prediction.
* Row r's result is masked with the mask its own client drew, and goes to that client's
  queue only; a client that collects another slot's queue (or the owner, or a server
  colluding with the other) reconstructs ``logits + mask``: uniform noise.
* Batching lets the servers and owner see how many requests share a batch and from
  which slots; it adds nothing about images or logits.
"""
from __future__ import annotations

from typing import Any, Sequence

from harness.tfe import activate as _activate_tfe

_activate_tfe()  # this layer runs tf-encrypted: the boundary goes first

import tensorflow as tf  # noqa: E402
from tensorflow.python.ops import gen_data_flow_ops as dq  # noqa: E402

from harness.inference.serving_layout import (  # noqa: E402
    QueueSpec, ServingDescriptor, output_share, raw_to_private)
from harness.inference.serving_queues import queue_handle  # noqa: E402

I64 = tf.int64


def _size(handle: tf.Tensor) -> tf.Tensor:
    return dq.queue_size_v2(handle)


def _take(device: str, inq: tf.Tensor, spec: QueueSpec, rid: tf.Tensor) -> tuple[Any, Any]:
    """Dequeue from ``inq`` until the entry of ``rid`` (never from an empty queue).
    Returns (the entry, or zeros with id -1 if it is not there; entries dropped)."""
    zeros = [tf.zeros(s, I64) for s in spec.shapes[1:]]

    def cond(r: tf.Tensor, *_rest: tf.Tensor) -> tf.Tensor:
        with tf.device(device):
            return tf.logical_and(tf.not_equal(r, rid), _size(inq) > 0)

    def body(_r: tf.Tensor, *rest: tf.Tensor) -> tuple[tf.Tensor, ...]:
        with tf.device(device):
            got = dq.queue_dequeue_v2(inq, [I64] * spec.n)
            got = [tf.ensure_shape(t, s) for t, s in zip(got, spec.shapes)]
            return (*got, rest[-1] + 1)

    # ids are >= 1 (the owner refuses others), so 0 means "nothing dequeued yet"
    out = tf.while_loop(cond, body, (tf.constant(0, I64), *zeros, tf.constant(0, I64)))
    hit = tf.equal(out[0], rid)
    entry = [tf.where(hit, out[0], tf.constant(-1, I64))]
    entry += [tf.where(hit, p, tf.zeros_like(p)) for p in out[1:-1]]
    return entry, out[-1] - tf.cast(hit, I64)


def _assemble(desc: ServingDescriptor, i: int, device: str, rids: tf.Tensor,
              counts: tf.Tensor, starts: tf.Tensor, batch: int) -> tuple[list[tf.Tensor], Any]:
    """On server i: the batch's rows of input shares and masks; orphans dropped."""
    stage_spec = desc.stage_queue(i)
    stage = queue_handle(stage_spec)

    def drain_cond(c: tf.Tensor) -> tf.Tensor:
        with tf.device(device):
            return _size(stage) > 0

    def drain_body(c: tf.Tensor) -> tf.Tensor:
        with tf.device(device):
            got = dq.queue_dequeue_v2(stage, [I64] * stage_spec.n)
            with tf.control_dependencies(got):
                return c + 1

    # leftovers of a step that failed half-way would shift every row: clear them first
    token = tf.while_loop(drain_cond, drain_body, (tf.constant(0, I64),))[0]
    orphans = token * 0
    for k in range(desc.slots):
        spec = desc.input_queue(k, i)
        inq = queue_handle(spec)

        def cond(t: tf.Tensor, _o: tf.Tensor, k: int = k) -> tf.Tensor:
            with tf.device(device):
                return t < counts[k]

        def body(t: tf.Tensor, o: tf.Tensor, k: int = k, inq: tf.Tensor = inq,
                 spec: QueueSpec = spec) -> tuple[tf.Tensor, tf.Tensor]:
            with tf.device(device):
                entry, dropped = _take(device, inq, spec, rids[starts[k] + t])
                put = dq.queue_enqueue_v2(stage, entry)
                with tf.control_dependencies([put]):
                    return t + 1, o + dropped

        # the previous slot's loop result feeds this loop: rows stay in slot order
        orphans = tf.while_loop(cond, body, (tf.constant(0, tf.int32), orphans))[1]
    with tf.control_dependencies([orphans]):
        pad = batch - tf.reduce_sum(counts)
        fill = [tf.fill([pad], tf.constant(-1, I64))]
        fill += [tf.zeros(tf.concat([[pad], s], 0), I64) for s in stage_spec.shapes[1:]]
        padded = dq.queue_enqueue_many_v2(stage, fill)
    with tf.control_dependencies([padded]):
        rows = dq.queue_dequeue_many_v2(stage, batch, [I64] * stage_spec.n)
    return list(rows), orphans


def _deliver(desc: ServingDescriptor, i: int, device: str, row_ids: tf.Tensor,
             masked: tf.Tensor, counts: tf.Tensor, starts: tf.Tensor) -> tf.Tensor:
    """On server i: each row's masked output share into its slot's output queue."""
    dropped = tf.constant(0, I64)
    for k in range(desc.slots):
        spec = desc.output_queue(k, i)
        outq = queue_handle(spec)

        def room_cond(d: tf.Tensor, outq: tf.Tensor = outq, spec: QueueSpec = spec) -> tf.Tensor:
            with tf.device(device):
                return _size(outq) >= spec.capacity

        def room_body(d: tf.Tensor, outq: tf.Tensor = outq) -> tf.Tensor:
            with tf.device(device):
                got = dq.queue_dequeue_v2(outq, [I64, I64])
                with tf.control_dependencies(got):
                    return d + 1

        def cond(t: tf.Tensor, _d: tf.Tensor, k: int = k) -> tf.Tensor:
            with tf.device(device):
                return t < counts[k]

        def body(t: tf.Tensor, d: tf.Tensor, k: int = k, outq: tf.Tensor = outq,
                 room_cond: Any = room_cond, room_body: Any = room_body
                 ) -> tuple[tf.Tensor, tf.Tensor]:
            with tf.device(device):
                d = tf.while_loop(room_cond, room_body, (d,))[0]
                row = starts[k] + t
                with tf.control_dependencies([d]):
                    put = dq.queue_enqueue_v2(outq, [row_ids[row], masked[row:row + 1]])
                with tf.control_dependencies([put]):
                    return t + 1, tf.identity(d)

        dropped = tf.while_loop(cond, body, (tf.constant(0, tf.int32), dropped))[1]
    return dropped


def build_step(protocol: Any, shared: Any, desc: ServingDescriptor, devices: Sequence[str],
               batch: int) -> Any:
    """``step(rids[batch] int64, counts[slots] int32) -> (found, orphans, dropped)``:
    ``found[s, r]`` is True where input server s had row r's shares; ``orphans[s]`` the
    partial entries server s dropped; ``dropped[s]`` uncollected results it discarded."""
    lay = desc.layout
    image, logits = desc.image_shape[1:], desc.logits_shape[1:]

    @tf.function(autograph=False)
    def step(rids: tf.Tensor, counts: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        raw: list[list[tf.Tensor]] = [[] for _ in devices]
        routing, masks, row_ids, found, orphans = {}, {}, {}, [], []
        for i in lay.input_servers:
            with tf.device(devices[i]):
                r_i, c_i = tf.identity(rids), tf.identity(counts)
                starts = tf.cumsum(c_i, exclusive=True)
                routing[i] = (c_i, starts)
                rows, dropped = _assemble(desc, i, devices[i], r_i, c_i, starts, batch)
                row_ids[i] = rows[0]
                raw[i] = [tf.reshape(t, (batch, *image)) for t in rows[1:-1]]
                masks[i] = tf.reshape(rows[-1], (batch, *logits))
                found.append(rows[0] > 0)
                orphans.append(dropped)
        x = raw_to_private(protocol, raw)
        y = shared(x)
        dropped_results = []
        for i in lay.output_servers:
            with tf.device(devices[i]):
                masked = output_share(protocol, y, i) + masks[i]
                c_i, starts = routing[i]
                dropped_results.append(
                    _deliver(desc, i, devices[i], row_ids[i], masked, c_i, starts))
        return tf.stack(found), tf.stack(orphans), tf.stack(dropped_results)

    return step
