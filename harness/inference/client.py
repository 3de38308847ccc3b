"""The prediction client: ask a served, secret-shared model for private predictions.

    client = PredictionClient("hostmap.json")   # the file `python -m harness serve` wrote
    logits = client.predict(image)              # one input in the served model's shape
    logits = client.predict(images)             # (n, *shape): n requests in flight

An input may also come in any shape with the same number of values per example (an
MNIST digit as (28, 28) for a model taking (28, 28, 1) or (784,)); the descriptor the
owner publishes names the model's input and output shapes.

This process takes a free client slot of the hostmap (``serving_slots``; it waits its
turn, within ``wait``, when every slot is busy) and becomes that task of the cluster:
its TensorFlow server listens at the slot's address, pinned there by the bind() shim.
Each image is encoded and secret-shared on its own device; the shares, plus random
masks for the result, go straight to the slot's input queues on the servers. The masked
output shares come back from the slot's output queues and are unmasked and decoded
here.

Who can derive what: the image and the logits exist in the clear in this process only.
Each server receives one additive share of the image (or, under ABY3, two of three)
and one share of the masks; the owner receives the request id and the slot. The mask
sum never leaves this process, so nobody else can unmask the result, including another
client that reads this slot's queue. Requests are checked here before anything is
shared (shape, dtype, NaN/inf, pixels in [0, 1]); a refused request never reaches the
servers.
"""
from __future__ import annotations

import logging
import os
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from harness.tfe import activate as _activate_tfe

tfe = _activate_tfe()  # this layer runs tf-encrypted: the boundary goes first

import tensorflow as tf  # noqa: E402
from tensorflow.python.ops import gen_data_flow_ops as dq  # noqa: E402

from harness.inference.private import (  # noqa: E402
    CLIENT, PROTOCOLS, SERVERS, FixedPoint, InputError, check_images)
from harness.inference.serving_layout import (  # noqa: E402
    ServingDescriptor, ServingError, private_to_raw, ring_factory)
from harness.inference.serving_queues import (  # noqa: E402
    handle_on, queue_handle, queue_size, read_descriptor)
from harness.inference.serving_slots import (  # noqa: E402
    SlotClaim, claim_slot, client_bind_host, client_slots, slot_host, slot_index)
from harness.net import bind  # noqa: E402
from harness.net.worker import listening_addresses, load_hostmap, split_hostport  # noqa: E402

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 60.0
DEFAULT_WAIT = 30.0


def as_examples(arr: np.ndarray, example: tuple[int, ...]) -> tuple[np.ndarray, bool]:
    """``arr`` as a batch of inputs of shape ``example``, and whether it was one input:
    exactly ``example`` or ``(n, *example)``, else reshaped where the number of values
    per example matches (one input, or a leading batch dimension)."""
    size = int(np.prod(example))
    if arr.shape == example:
        return arr.reshape(1, *example), True
    if arr.shape[1:] == example:
        return arr, False
    if arr.size == size:
        return arr.reshape(1, *example), True
    if arr.ndim >= 2 and int(np.prod(arr.shape[1:])) == size:
        return arr.reshape(arr.shape[0], *example), False
    raise InputError(f"An input must have the served model's shape {example} ({size} values, "
                     f"or a batch (n, {', '.join(map(str, example))})), got {arr.shape}.")


__all__ = ["PredictionClient", "client_bind_host", "connect_as_client"]

_connected: "tuple[OrderedDict[str, str], SlotClaim] | None" = None  # one cluster per process


def _wait_for_servers(hostmap: "OrderedDict[str, str]", deadline: float) -> None:
    from harness.net.cluster import grpc_answers  # noqa: PLC0415

    missing = list(SERVERS)
    while True:
        missing = [s for s in missing if not grpc_answers(hostmap[s])]
        if not missing:
            return
        if time.monotonic() > deadline:
            raise ServingError(
                "no server answers at " + ", ".join(f"{s} {hostmap[s]}" for s in missing)
                + " : is `python -m harness serve` running with this hostmap?")
        time.sleep(0.2)


def connect_as_client(hostmap: "OrderedDict[str, str]", expose: bool = False,
                      wait: float = DEFAULT_WAIT, where: str = "the hostmap") -> SlotClaim:
    """Take a free client slot and join the cluster as that task (once per process)."""
    global _connected
    if _connected is not None:
        if _connected[0] != hostmap:
            raise ServingError("this process is already a client of another cluster "
                               "(TensorFlow has one cluster per process)")
        return _connected[1]
    host = slot_host(hostmap, where)
    if not (expose or bind.active(host)):
        raise ServingError(
            f"this process would listen for TensorFlow RPCs on every interface while it holds "
            f"the plaintext image; run it pinned to {host} (`python -m harness client ...` "
            f"does that itself; or `python -m harness.net.bind {host} -- python ...`), or pass "
            "expose=True to accept that")
    claim = claim_slot(hostmap, host, wait, where)
    names = list(hostmap)
    tasks = {names.index(s): hostmap[s] for s in SERVERS}
    tasks[names.index(claim.name)] = claim.address
    spec = tf.train.ClusterSpec({"tfe": tasks})
    tf.config.experimental_connect_to_cluster(spec, job_name="tfe",
                                              task_index=names.index(claim.name))
    _connected = (OrderedDict(hostmap), claim)
    port = split_hostport(claim.address, claim.name)[1]
    bound = listening_addresses(port)
    if not expose and bound - {host}:
        raise ServingError(f"the client's server listens on {sorted(bound)}, expected {host} only")
    logger.info("took client slot %d (%s at %s)", claim.index, claim.name, claim.address)
    return claim


def client_view(hostmap: "OrderedDict[str, str]", mine: str) -> "OrderedDict[str, str]":
    """The hostmap as tf-encrypted must see it here: our slot is the ``prediction-client``
    player (task indices unchanged); the other slots get names nothing uses."""
    view: "OrderedDict[str, str]" = OrderedDict()
    for name, address in hostmap.items():
        k = slot_index(name)
        view[CLIENT if name == mine else (f"other-slot-{k}" if k is not None else name)] = address
    return view


@dataclass
class Pending:
    """A request sent and committed; its result is fetched with ``receive``."""

    rid: int
    mask_sum: tf.Tensor  # stays in this process: the results are masked with it
    sent_at: float


def build_functions(protocol: Any, desc: ServingDescriptor, devices: Sequence[str], me: str,
                    slot: int, player: Any = CLIENT) -> tuple[Any, Any]:
    """The client's two compiled steps.

    ``send(image, rid) -> mask_sum``: encode and share ``image`` on this device ``me``,
    draw the output masks here, enqueue each server's shares and mask share in our
    slot's input queue on that server, then commit ``(rid, slot)`` on server0.
    ``mask_sum`` stays here. ``receive(mask_sum) -> (ids, logits)``: dequeue one masked
    output share per server from our slot's output queues, unmask and decode on ``me``.
    ``player``: tf-encrypted's player (or its name) whose device ``me`` is.
    """
    lay = desc.layout
    factory = ring_factory(protocol)

    @tf.function(autograph=False)
    def send(image: tf.Tensor, rid: tf.Tensor) -> tf.Tensor:
        # encode + share on this device; the shares land on the servers
        x = protocol.define_private_input(player, lambda: image)
        raw = private_to_raw(protocol, x)
        with tf.device(me), tf.name_scope("output-mask"):
            masks = [factory.sample_uniform(desc.logits_shape).value
                     for _ in lay.output_servers]
        enqueued = []
        for i in lay.input_servers:
            with tf.device(devices[i]):
                q = queue_handle(desc.input_queue(slot, i))
                enqueued.append(dq.queue_enqueue_v2(q, [rid, *raw[i], masks[i]]))
        with tf.control_dependencies(enqueued), tf.device(devices[0]):
            commit = dq.queue_enqueue_v2(queue_handle(desc.commit_queue()),
                                         [rid, tf.constant(slot, tf.int64)])
        with tf.control_dependencies([commit]), tf.device(me):
            return tf.add_n(masks)

    @tf.function(autograph=False)
    def receive(mask_sum: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        ids, shares = [], []
        for i in lay.output_servers:
            with tf.device(devices[i]):
                q = queue_handle(desc.output_queue(slot, i))
                rid, share = dq.queue_dequeue_v2(q, [tf.int64, tf.int64])
            ids.append(rid)
            shares.append(share)
        with tf.device(me), tf.name_scope("unmask"):  # unmask and decode here only
            ring = tf.add_n(shares) - mask_sum
            logits = protocol._decode(factory.tensor(ring, encode=False), True)
            return tf.stack(ids), tf.cast(logits, tf.float32)

    return send, receive


class PredictionClient:
    """Private predictions from the model served on the cluster of ``config_path``."""

    def __init__(self, config_path: str | os.PathLike, timeout: float = DEFAULT_TIMEOUT,
                 wait: float = DEFAULT_WAIT, expose: bool = False) -> None:
        self.config_path = str(config_path)
        self.timeout = timeout
        where = f"hostmap {self.config_path}"
        try:
            hostmap = load_hostmap(self.config_path)
        except ValueError as exc:
            raise InputError(str(exc)) from None
        client_slots(hostmap, where)  # servers and slots are all there
        start = time.perf_counter()
        deadline = time.monotonic() + wait
        _wait_for_servers(hostmap, deadline)
        self.slot = connect_as_client(hostmap, expose, max(0.0, deadline - time.monotonic()),
                                      where)
        self.config = tfe.RemoteConfig(client_view(hostmap, self.slot.name))
        tfe.set_config(self.config)
        self.devices = [self.config.get_player(s).device_name for s in SERVERS]
        self.device = self.config.get_player(CLIENT).device_name
        self.desc = self._await_descriptor(deadline, wait)
        if self.slot.index >= self.desc.slots:
            raise ServingError(f"slot {self.slot.name} is not served: the model owner serves "
                               f"{self.desc.slots} slot(s) of this hostmap")
        self.protocol = PROTOCOLS[self.desc.protocol]()
        tfe.set_protocol(self.protocol)
        self.fixed_point = FixedPoint.of(self.protocol)
        lay, k = self.desc.layout, self.slot.index
        self._in = {i: handle_on(self.devices[i], self.desc.input_queue(k, i))
                    for i in lay.input_servers}
        self._out = {i: handle_on(self.devices[i], self.desc.output_queue(k, i))
                     for i in lay.output_servers}
        self._send_fn, self._receive_fn = build_functions(
            self.protocol, self.desc, self.devices, self.device, k)
        self._handshake()
        # an upper bound on the entries in our slot's input queues (our requests not yet
        # answered, partial ones of an earlier client in this slot): measured when it
        # reaches the capacity, so a send never meets a full queue (it would block a server)
        self._queued = self._input_backlog()
        self._expect = 0.0  # s from sending to the first poll for the result (``_learn``)
        self._answered = 0
        self.timing: dict[str, float] = {}  # of the last request: send, ready, receive (ms)
        self.connect_s = time.perf_counter() - start
        logger.info("client of %s (%s, session %s, slot %d) ready in %.1f s", self.config_path,
                    self.desc.protocol, self.desc.session, k, self.connect_s)

    @property
    def wire(self) -> ServingDescriptor:  # the name of earlier versions
        return self.desc

    def _await_descriptor(self, deadline: float, wait: float) -> ServingDescriptor:
        while True:
            desc = read_descriptor(self.devices[0])
            if desc is not None:
                return desc
            if time.monotonic() > deadline:
                raise ServingError(f"no model is being served on {SERVERS[0]} "
                                   f"(waited {wait:.0f} s for `python -m harness serve`)")
            time.sleep(0.2)

    def _handshake(self, within: float = 10.0) -> None:
        """A data-free round trip between this slot and every server, retried. A server
        that talked to the slot's previous client keeps a broken connection to this
        address for a moment (gRPC's reconnect backoff); a request sent then would fail
        half-way, so none is sent until every server reaches us."""
        devices, me = self.devices, self.device

        @tf.function(autograph=False)
        def ping(x: tf.Tensor) -> tf.Tensor:
            echoes = []
            for d in devices:
                with tf.device(d):
                    echoes.append(tf.identity(x) + 1)
            with tf.device(me):
                return tf.add_n(echoes)

        deadline = time.monotonic() + within
        while True:
            try:
                with tf.device(me):
                    ping(tf.constant(0, tf.int64)).numpy()
                return
            except (tf.errors.UnavailableError, tf.errors.AbortedError,
                    tf.errors.CancelledError) as exc:
                if time.monotonic() > deadline:
                    raise ServingError(f"the servers cannot reach this client's slot "
                                       f"{self.slot.address}: {exc.message}") from exc
                logger.info("servers not yet reaching slot %s; retrying", self.slot.address)
                time.sleep(0.25)

    def _input_backlog(self) -> int:
        return max(queue_size(self.devices[i], h) for i, h in self._in.items())

    # -- requests ------------------------------------------------------------------------
    def prepare(self, image: Any) -> np.ndarray:
        """Validate one input or a batch of the served model's input shape; returns
        float32 ``(n, *shape)``."""
        arr = np.asarray(image)
        if arr.dtype.kind not in "fiu":
            raise InputError(f"Images must be numeric, got dtype {arr.dtype}.")
        arr, _ = as_examples(arr, self.example_shape)
        arr = check_images(arr, arr.shape[0], self.fixed_point, self.example_shape)
        low, high = float(arr.min()), float(arr.max())
        if low < 0.0 or high > 1.0:
            raise InputError(f"Pixel values must lie in [0, 1], got [{low:g}, {high:g}] "
                             "(scale 0..255 images by 1/255).")
        return arr

    def send(self, image: Any) -> Pending:
        """Validate, secret-share and send one image; returns what ``receive`` needs."""
        arr = self.prepare(image)
        if arr.shape[0] != 1:
            raise InputError(f"send() takes one image, got {arr.shape[0]}; use predict()")
        if self._queued >= self.desc.capacity:
            self._queued = self._input_backlog()
            if self._queued >= self.desc.capacity:
                raise ServingError("this slot's request queues on the servers are full; "
                                   "collect results before sending more")
        tfe.set_protocol(self.protocol)
        rid = secrets.randbits(62) + 1
        sent_at = time.perf_counter()
        self._queued += 1  # before sending: one that fails half-way may leave an entry
        mask_sum = self._send_fn(tf.constant(arr), tf.constant(rid, tf.int64))
        self.timing = {"send_ms": (time.perf_counter() - sent_at) * 1e3}
        return Pending(rid, mask_sum, sent_at)

    @property
    def example_shape(self) -> tuple[int, ...]:
        """The served model's input shape, one example."""
        return tuple(self.desc.image_shape[1:])

    def _results_ready(self) -> bool:
        """One poll (one RPC): the owner's step fills every output server's queue for
        a request in the same step, so the last server's queue stands for all of them;
        ``receive`` then dequeues from each (a dequeue waits for an entry)."""
        last = self.desc.layout.output_servers[-1]
        return queue_size(self.devices[last], self._out[last]) > 0

    def _learn(self, sent_at: float, missed_at: float | None) -> None:
        """When to poll first next time. Each poll is an RPC that costs the servers CPU
        the computation needs, and a late first poll delays the client (and, under
        batching, the next batch): aim just below when results have been arriving.
        A first poll that found the result may have been late: halve. Else the result
        came after the last empty poll: start a little before that next time."""
        if missed_at is None:
            self._expect *= 0.5
        else:
            self._expect = 0.9 * (missed_at - sent_at)

    def receive(self, pending: Pending, timeout: float | None = None) -> np.ndarray:
        """Wait (bounded) for the request's result; returns its logits, shape (1, 10)."""
        timeout = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        next_check = time.monotonic() + 2.0
        # no poll before results are expected (``_learn``), then one every few ms
        early = pending.sent_at + self._expect - time.perf_counter()
        if early > 0:
            time.sleep(early)
        interval = min(0.01, max(0.002, self._expect / 8))
        polls, missed_at = 0, None
        while True:
            polls += 1
            if self._results_ready():
                ready_at = time.perf_counter()
                ids, logits = self._receive_fn(pending.mask_sum)
                ids = ids.numpy()
                if np.all(ids == pending.rid):
                    self._queued = max(0, self._queued - 1)  # answered: its entry is gone
                    now_pc = time.perf_counter()
                    self.timing.update(ready_ms=(ready_at - pending.sent_at) * 1e3,
                                       receive_ms=(now_pc - ready_at) * 1e3, polls=polls)
                    self._answered += 1
                    if self._answered > 1:  # the first one traced our functions
                        self._learn(pending.sent_at, missed_at)
                    return logits.numpy()
                logger.info("skipped a stale result (request %x, not ours)", int(ids[0]))
                continue
            missed_at = time.perf_counter()
            now = time.monotonic()
            if now > deadline:
                raise ServingError(f"no answer within {timeout:.0f} s (request {pending.rid:x}); "
                                   "is the model owner still serving?")
            if now > next_check:
                next_check = now + 2.0
                desc = read_descriptor(self.devices[0])
                if desc is None or desc.session != self.desc.session:
                    raise ServingError("the model owner stopped serving before answering "
                                       f"request {pending.rid:x}")
            time.sleep(interval)

    def predict(self, image: Any, timeout: float | None = None) -> np.ndarray:
        """Private logits of one image (shape (10,)) or of a batch ((n, 10)); a batch's
        requests are in flight together, so the owner can batch them."""
        arr = np.asarray(image)
        single = arr.dtype.kind not in "fiu" or as_examples(arr, self.example_shape)[1]
        arr = self.prepare(arr)
        out: list[np.ndarray] = []
        try:
            pending: list[Pending] = []
            for row in arr:
                if self._queued >= self.desc.capacity and pending:
                    out.append(self.receive(pending.pop(0), timeout))
                pending.append(self.send(row[None]))
            out += [self.receive(p, timeout) for p in pending]
        except tf.errors.NotFoundError as exc:  # stop() withdrew the queues
            raise ServingError("the model owner stopped serving (its queues are gone)") from exc
        except (tf.errors.UnavailableError, tf.errors.AbortedError,
                tf.errors.CancelledError) as exc:
            raise ServingError(f"lost the servers during the request: {exc.message}") from exc
        logits = np.concatenate(out)
        return logits[0] if single else logits
