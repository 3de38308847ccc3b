"""Private prediction serving: ``share`` a model, ``serve`` requests of a separate client, ``stop``.

The flow of the TF Encrypted tutorial, on our cluster::

    cluster = Cluster(external=("prediction-client",)).start()   # server0-2 as workers
    model = share("models/short-conv-mnist.h5", cluster)            # or a Keras model
    model.serve(num_requests=3)    # a client process asks: harness.inference.client / `python -m harness client`
    model.stop()
    cluster.stop()

Who holds what
--------------
* The model owner (this process) holds the plaintext weights; it secret-shares them onto
  the servers and then only drives the computation. It connects to server0-2 alone:
  TensorFlow contacts every task of the cluster it connects with and would wait for
  ever for a client that is not there, so the client's slot is left out.
* The client process *is* the ``prediction-client`` task of the cluster
  (``harness.inference.client``): it encodes and secret-shares its image on its own device,
  sends the shares straight to the servers' input queues, and reconstructs the logits
  on its own device from output shares it fetches from the servers. The plaintext
  image and logits never leave the client process; the owner's process never receives
  a share of either.
* The output shares are additionally masked with random ring elements the client
  sent (secret-shared) with its request: whoever else collects them all (a stale
  result left for the next client, or the owner) reconstructs ``logits + mask``,
  uniformly random.

Wire format (``Wire``): per session, shared-name FIFO queues (``tfe.queue.TFFIFOQueue``'s
op) on the servers - ``in/<i>`` on each server holding input shares: ``(request id,
input shares held by server i..., output mask share i)``; ``commit`` on server0: the
request id, enqueued by the client after all input shares are in (a client that dies
half-way leaves no commit, and its orphan shares are skipped); ``out/<i>``:
``(request id, masked output share i)``. A descriptor (a string variable on server0)
announces the protocol, shapes and session; ``stop()`` removes it and the queues.

Nothing here ever blocks on an empty or full queue: a blocked queue op in a
TensorFlow worker stalls that worker for every client, for good (measured on TF 2.21),
so every dequeue/enqueue is preceded by a size check, and every wait is a bounded poll.
"""
from __future__ import annotations

import json
import logging
import os
import secrets
import signal
import threading
import time
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from typing import Any, Iterator, Sequence

import numpy as np

from harness.tfe import activate as _activate_tfe

tfe = _activate_tfe()  # this layer runs tf-encrypted: the boundary goes first

import tensorflow as tf  # noqa: E402
from tensorflow.python.ops import gen_data_flow_ops, gen_resource_variable_ops

from harness.inference.private import CLIENT, SERVERS, InputError, activate, check_model, check_protocol
from harness.results.store import write_text

logger = logging.getLogger(__name__)

WIRE_VERSION = 1
DESCRIPTOR_NAME = "harness-serving/descriptor"
DEFAULT_CAPACITY = 16
DEFAULT_REQUEST_TIMEOUT = 10.0


class ServingError(RuntimeError):
    """Serving could not start, continue, or answer; says which party and why."""


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
    factory = protocol.tensor_factory if not _is_aby3(protocol) else protocol.default_factory
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


# -- what owner and client agree on --------------------------------------------------------
@dataclass(frozen=True)
class Wire:
    """The serving session's protocol, shapes and queue names (published in the descriptor)."""

    protocol: str
    session: str
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    capacity: int = DEFAULT_CAPACITY
    version: int = WIRE_VERSION

    @property
    def batch(self) -> int:
        return self.input_shape[0]

    @property
    def layout(self) -> Layout:
        return LAYOUTS[self.protocol]

    @property
    def prefix(self) -> str:
        return f"harness-serving/{self.session}"

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "Wire":
        data = json.loads(text)
        if data.get("version") != WIRE_VERSION:
            raise ServingError(f"the model owner speaks serving version {data.get('version')}, "
                               f"this client {WIRE_VERSION}: use the same harness on both sides")
        data["input_shape"] = tuple(data["input_shape"])
        data["output_shape"] = tuple(data["output_shape"])
        return cls(**data)

    # queue specs: (shared name, component shapes); every component is int64
    def input_queue(self, i: int) -> tuple[str, list[tuple[int, ...]]]:
        held = self.layout.held[i]
        return (f"{self.prefix}/in/{i}",
                [()] + [self.input_shape] * len(held) + [self.output_shape])

    def commit_queue(self) -> tuple[str, list[tuple[int, ...]]]:
        return f"{self.prefix}/commit", [()]

    def output_queue(self, i: int) -> tuple[str, list[tuple[int, ...]]]:
        return f"{self.prefix}/out/{i}", [(), self.output_shape]


def queue_handle(spec: tuple[str, list[tuple[int, ...]]], capacity: int) -> tf.Tensor:
    """The shared-name FIFO queue ``spec`` on the current device (created if missing).

    The op of ``tfe.queue.TFFIFOQueue``, without its Python wrapper: that one destroys
    the shared queue when the Python object dies, i.e. when any client exits.
    """
    name, shapes = spec
    return gen_data_flow_ops.fifo_queue_v2(component_types=[tf.int64] * len(shapes),
                                           shapes=[list(s) for s in shapes],
                                           capacity=capacity, shared_name=name)


@dataclass
class Queues:
    """Handles of a session's queues: input shares per server, output shares, commits."""

    inputs: dict[int, tf.Tensor]
    outputs: dict[int, tf.Tensor]
    commit: tf.Tensor


def open_queues(wire: "Wire", devices: Sequence[str]) -> Queues:
    """Handles of every queue of ``wire``'s session, each on its server's device."""
    lay = wire.layout

    def on(i: int, spec: tuple[str, list[tuple[int, ...]]]) -> tf.Tensor:
        with tf.device(devices[i]):
            return queue_handle(spec, wire.capacity)

    return Queues(inputs={i: on(i, wire.input_queue(i)) for i in lay.input_servers},
                  outputs={i: on(i, wire.output_queue(i)) for i in lay.output_servers},
                  commit=on(0, wire.commit_queue()))


def destroy(handle: tf.Tensor) -> None:
    gen_resource_variable_ops.destroy_resource_op(handle, ignore_lookup_error=True)


def queue_size(device: str, handle: tf.Tensor) -> int:
    """Elements waiting in the queue ``handle`` on ``device``."""
    with tf.device(device):
        return int(gen_data_flow_ops.queue_size_v2(handle).numpy())


def descriptor_handle() -> tf.Tensor:
    return gen_resource_variable_ops.var_handle_op(dtype=tf.string, shape=[],
                                                   shared_name=DESCRIPTOR_NAME)


def read_descriptor(server0_device: str) -> Wire | None:
    """The serving session announced on server0, or None if nothing is served there."""
    with tf.device(server0_device):
        handle = descriptor_handle()
        try:
            text = gen_resource_variable_ops.read_variable_op(handle, tf.string)
            return Wire.from_json(text.numpy().decode())
        except (tf.errors.NotFoundError, tf.errors.FailedPreconditionError,
                tf.errors.InvalidArgumentError):
            return None


class Poller:
    """Sleep between polls: short right after activity, longer when idle."""

    def __init__(self, fast: float = 0.002, slow: float = 0.05, ramp: float = 1.0) -> None:
        self.fast, self.slow, self.ramp = fast, slow, ramp
        self.since = time.monotonic()

    def reset(self) -> None:
        self.since = time.monotonic()

    def sleep(self) -> None:
        idle = time.monotonic() - self.since
        time.sleep(self.fast if idle < self.ramp else self.slow)


# -- the bind() shim -----------------------------------------------------------------------
def build_step(protocol: Any, shared: Any, wire: Wire, devices: Sequence[str]) -> Any:
    """The owner's serving step for request ``rid``, all of it on the servers: dequeue
    the request's shares on each input server (skipping orphans of clients that died
    while sending), run the shared model, enqueue the masked output shares. Returns
    ``(rid, skipped per input server)``: nothing else reaches the owner."""
    lay = wire.layout
    n_held = {i: len(lay.held[i]) for i in lay.input_servers}

    @tf.function
    def step(rid: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        raw: list[list[tf.Tensor]] = [[] for _ in SERVERS]
        masks: dict[int, tf.Tensor] = {}
        skipped = []
        for i in lay.input_servers:
            name, shapes = wire.input_queue(i)
            with tf.device(devices[i]):
                q = queue_handle((name, shapes), wire.capacity)
                dtypes = [tf.int64] * len(shapes)

                def body(_rid, *_rest, q=q, dtypes=dtypes, i=i):
                    with tf.device(devices[i]):
                        got = gen_data_flow_ops.queue_dequeue_v2(q, dtypes)
                        return (got[0], *got[1:], _rest[-1] + 1)

                first = gen_data_flow_ops.queue_dequeue_v2(q, dtypes)
                out = tf.while_loop(lambda r, *_: tf.not_equal(r, rid), body,
                                    (first[0], *first[1:], tf.constant(0, tf.int64)))
                for k in range(n_held[i]):
                    out_k = tf.ensure_shape(out[1 + k], wire.input_shape)
                    raw[i].append(out_k)
                masks[i] = out[1 + n_held[i]]
                skipped.append(out[-1])
        x = raw_to_private(protocol, raw)
        logits = shared(x)
        enqueues = []
        for i in lay.output_servers:
            with tf.device(devices[i]):
                share = output_share(protocol, logits, i)
                masked = share + tf.ensure_shape(masks[i], wire.output_shape)
                q = queue_handle(wire.output_queue(i), wire.capacity)
                enqueues.append(gen_data_flow_ops.queue_enqueue_v2(q, [rid, masked]))
        with tf.control_dependencies(enqueues):
            return tf.identity(rid), tf.stack(skipped)

    return step


# -- the owner's side ------------------------------------------------------------------------
@dataclass
class ServeStats:
    served: int = 0          # answered and collected by the client
    uncollected: int = 0     # answered, but the client never fetched the result in time
    orphans: int = 0         # partial requests of clients that died while sending
    dropped: int = 0         # refused because the output queues were full


class SharedModel:
    """A model secret-shared on the cluster's servers, ready to serve private predictions."""

    def __init__(self, model: Any, cluster: Any, protocol: str = "securenn",
                 capacity: int = DEFAULT_CAPACITY, warm_up: bool = True,
                 expose_driver: bool = False) -> None:
        self.protocol_name = check_protocol(protocol)
        check_model(model, self.protocol_name)
        if CLIENT not in cluster.players:
            raise ServingError(f"the cluster has no {CLIENT!r} slot for the client")
        if CLIENT not in cluster.external:
            raise ServingError(
                f"the {CLIENT!r} slot must be external (the client process serves it): "
                f"Cluster(external=({CLIENT!r},)) or Cluster.manual(FILE, external=({CLIENT!r},))")
        missing = [s for s in SERVERS if s not in cluster.players]
        if missing:
            raise ServingError(f"the cluster lacks {', '.join(missing)}")
        self.cluster = cluster
        # the owner connects to the servers only (Cluster.connect leaves external players out)
        self.config = cluster.connect(expose_driver=expose_driver)
        self.hostmap = OrderedDict(cluster.hostmap)
        self.protocol, self.fixed_point = activate(self.config, self.protocol_name, model)
        self.devices = [self.config.get_player(s).device_name for s in SERVERS]
        batch = int(model.layers[0].input_shape[0])
        self.wire = Wire(self.protocol_name, secrets.token_hex(8),
                         (batch,) + tuple(int(d) for d in model.input_shape[1:]),
                         (batch,) + tuple(int(d) for d in model.output_shape[1:]), capacity)
        self.stats = ServeStats()
        self._stop = threading.Event()
        self._serving = False
        start = time.perf_counter()
        with tf.name_scope(f"share-{self.protocol_name}"):
            self._shared = tfe.keras.models.clone_model(model)
        self._open_queues()
        self._step = self._make_step()
        if warm_up:
            self._warm_up()
        self._publish()
        logger.info("%s: model shared on %s in %.1f s (session %s)", self.protocol_name,
                    ", ".join(SERVERS), time.perf_counter() - start, self.wire.session)

    # queues ------------------------------------------------------------------------------
    def _open_queues(self) -> None:
        queues = open_queues(self.wire, self.devices)
        self._in, self._out, self._commit = queues.inputs, queues.outputs, queues.commit

    def _publish(self) -> None:
        with tf.device(self.devices[0]):
            handle = descriptor_handle()
            gen_resource_variable_ops.assign_variable_op(handle, tf.constant(self.wire.to_json()))

    def _make_step(self) -> Any:
        return build_step(self.protocol, self._shared, self.wire, self.devices)

    def _warm_up(self) -> None:
        """Run the step once on throw-away shares (zeros), so the first client does not
        wait for tracing; its output is dequeued on the servers and never leaves them."""
        start = time.perf_counter()
        lay, w = self.wire.layout, self.wire
        rid = tf.constant(-1, tf.int64)
        for i in lay.input_servers:
            with tf.device(self.devices[i]):
                parts = [tf.constant(-1, tf.int64)] + [
                    tf.zeros(w.input_shape, tf.int64) for _ in lay.held[i]] + [
                    tf.zeros(w.output_shape, tf.int64)]
                gen_data_flow_ops.queue_enqueue_v2(self._in[i], parts)
        self._step(rid)
        for i in lay.output_servers:
            with tf.device(self.devices[i]):
                gen_data_flow_ops.queue_dequeue_v2(self._out[i], [tf.int64, tf.int64])
        logger.info("%s: serving step traced and run once in %.1f s", self.protocol_name,
                    time.perf_counter() - start)

    # serving ----------------------------------------------------------------------------
    def serve(self, num_requests: int | None = None, idle_timeout: float | None = None,
              request_timeout: float = DEFAULT_REQUEST_TIMEOUT) -> int:
        """Answer ``num_requests`` private predictions (None: until ``stop()``/Ctrl-C).

        Returns the number served (results the client collected). Returns early, with
        fewer, when no request arrives for ``idle_timeout`` seconds, on Ctrl-C, or when
        ``stop()`` is called (from another thread). A client that does not collect its
        result within ``request_timeout`` seconds is logged and skipped.
        """
        if self._stop.is_set():
            raise ServingError("this shared model was stopped; share it again")
        if num_requests is not None and num_requests < 0:
            raise ValueError("num_requests must be >= 0")
        served = 0
        self._serving = True
        logger.info("serving %s requests (%s, session %s)",
                    "unlimited" if num_requests is None else num_requests,
                    self.protocol_name, self.wire.session)
        try:
            while num_requests is None or served < num_requests:
                with self.cluster.guard():  # a dead worker: a ClusterError that names it
                    rid = self._next_request(idle_timeout)
                    if rid is None:
                        break
                    answered = self._answer(rid, request_timeout)
                if answered:
                    served += 1
                    self.stats.served += 1
        except KeyboardInterrupt:
            logger.warning("interrupted")
        finally:
            self._serving = False
        logger.info("served %d request(s)", served)
        return served

    def _next_request(self, idle_timeout: float | None) -> int | None:
        poll = Poller()
        deadline = None if idle_timeout is None else time.monotonic() + idle_timeout
        while not self._stop.is_set():
            if queue_size(self.devices[0], self._commit) > 0:
                with tf.device(self.devices[0]):
                    rid = gen_data_flow_ops.queue_dequeue_v2(self._commit, [tf.int64])[0]
                return int(rid.numpy())
            if deadline is not None and time.monotonic() > deadline:
                logger.info("no request for %.0f s: serving ends", idle_timeout)
                return None
            poll.sleep()
        return None

    def _answer(self, rid: int, request_timeout: float) -> bool:
        lay = self.wire.layout
        full = [i for i in lay.output_servers
                if queue_size(self.devices[i], self._out[i]) >= self.wire.capacity]
        if full:
            # never enqueue into a full queue (it would block the server); the client
            # pops stale results while it waits, so this clears itself
            self.stats.dropped += 1
            logger.error("request %x dropped: output queues full of %d uncollected results",
                         rid, self.wire.capacity)
            self._drop_request(rid)
            return False
        start = time.perf_counter()
        _, skipped = self._step(tf.constant(rid, tf.int64))
        skipped = int(np.max(skipped.numpy()))
        if skipped:
            self.stats.orphans += skipped
            logger.warning("skipped %d partial request(s) of client(s) that died while "
                           "sending", skipped)
        computed = time.perf_counter() - start
        poll = Poller()
        deadline = time.monotonic() + request_timeout
        while True:
            left = [i for i in lay.output_servers if queue_size(self.devices[i], self._out[i])]
            if not left:
                logger.info("request %x answered in %.1f ms (collected after %.1f ms)", rid,
                            computed * 1e3, (time.perf_counter() - start) * 1e3)
                return True
            if time.monotonic() > deadline or self._stop.is_set():
                self.stats.uncollected += 1
                logger.warning("request %x: the client did not collect its result within "
                               "%.0f s (gone?); serving the next request", rid, request_timeout)
                return False
            poll.sleep()

    def _drop_request(self, rid: int) -> None:
        """Remove a committed request's input shares without computing (skips orphans)."""
        lay, w = self.wire.layout, self.wire
        for i in lay.input_servers:
            with tf.device(self.devices[i]):
                while queue_size(self.devices[i], self._in[i]):
                    got = gen_data_flow_ops.queue_dequeue_v2(self._in[i], [tf.int64] * len(
                        w.input_queue(i)[1]))
                    if int(got[0].numpy()) == rid:
                        break

    # stopping ---------------------------------------------------------------------------
    def stop(self) -> None:
        """Stop serving (a running ``serve`` returns within a poll) and withdraw the model's
        queues and descriptor from the servers; the shared weights go with the workers."""
        if self._stop.is_set():
            return
        self._stop.set()
        deadline = time.monotonic() + 5.0
        while self._serving and time.monotonic() < deadline and \
                threading.current_thread() is not threading.main_thread():
            time.sleep(0.01)
        try:
            with tf.device(self.devices[0]):
                destroy(descriptor_handle())
                destroy(self._commit)
            for i, h in list(self._in.items()) + list(self._out.items()):
                with tf.device(self.devices[i]):
                    destroy(h)
        except tf.errors.OpError as exc:  # workers already gone: nothing left to withdraw
            logger.info("stop: could not withdraw the queues (%s)", exc.message)
        logger.info("stopped serving (session %s): %s", self.wire.session, asdict(self.stats))


def load_keras(model_or_weights: Any, batch_size: int = 1) -> Any:
    """A Keras model as given, or ``models.conv_mnist`` with HDF5 weights from a path."""
    if isinstance(model_or_weights, (str, os.PathLike)):
        from models.conv_mnist import load_model  # noqa: PLC0415

        return load_model(model_or_weights, batch_size=batch_size)
    return model_or_weights


def share(model_or_weights_path: Any, cluster: Any, protocol: str = "securenn",
          batch_size: int = 1, **kwargs: Any) -> SharedModel:
    """Secret-share a Keras model (or ``conv_mnist`` weights at a path) on ``cluster``."""
    return SharedModel(load_keras(model_or_weights_path, batch_size), cluster, protocol, **kwargs)


# -- the `serve` command ---------------------------------------------------------------------
@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    def handler(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def run_serve(protocol: str = "securenn", num_requests: int | None = None,
              config: str | None = None, weights: str | None = None,
              hostmap_out: str | None = None, idle_timeout: float | None = None,
              request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
              start_timeout: float = 120.0) -> int:
    """Stand up (or join) a cluster, share the model, serve, stop everything; returns served."""
    from harness.net.cluster import Cluster  # noqa: PLC0415
    from models.conv_mnist import WEIGHTS_PATH  # noqa: PLC0415

    protocol = check_protocol(protocol)
    if num_requests is not None and num_requests < 0:
        raise InputError("--num-requests must be >= 0")
    keras_model = load_keras(weights or WEIGHTS_PATH)
    if config:
        cluster = Cluster.manual(config, external=(CLIENT,), start_timeout=start_timeout)
    else:
        cluster = Cluster(external=(CLIENT,), start_timeout=start_timeout)
    with _sigterm_as_interrupt():
        try:
            cluster.start()
            model = share(keras_model, cluster, protocol)
            try:
                text = json.dumps(dict(cluster.hostmap), indent=2)
                where = write_text(hostmap_out, text) if hostmap_out else cluster.config_path
                print(f"SERVING protocol={protocol} session={model.wire.session} "
                      f"hostmap={where}", flush=True)
                print(f"client: python -m harness client --config {where} --image 0",
                      flush=True)
                served = model.serve(num_requests, idle_timeout=idle_timeout,
                                     request_timeout=request_timeout)
            finally:
                model.stop()
        finally:
            cluster.stop()
    print(f"SERVED {served}", flush=True)
    return served
