"""The prediction client: ask a served, secret-shared model for private predictions.

    client = PredictionClient("hostmap.json")   # the file `python -m harness serve` wrote
    logits = client.predict(image)              # (28, 28), (28, 28, 1) or (1, 28, 28, 1)

This process becomes the ``prediction-client`` task of the cluster (its TensorFlow
server listens at that slot's address, pinned there by the bind() shim). Its image is
encoded and secret-shared on its own device; the shares, plus random masks for the
result, go straight to the servers' input queues. The masked output shares come back
from the servers and are unmasked and decoded here: neither the servers nor the model
owner see the image or the logits (see ``harness.inference.serving``).

Requests are checked here before anything is shared (shape, dtype, NaN/inf, pixels in
[0, 1]); a refused request never reaches the servers.
"""
from __future__ import annotations

import functools
import logging
import os
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from harness.tfe import activate as _activate_tfe

tfe = _activate_tfe()  # this layer runs tf-encrypted: the boundary goes first

import tensorflow as tf  # noqa: E402
from tensorflow.python.ops import gen_data_flow_ops

from harness.net import bind
from harness.inference.private import CLIENT, PROTOCOLS, SERVERS, FixedPoint, InputError, check_images
from harness.inference.serving import (
    Poller,
    ServingError,
    Wire,
    open_queues,
    private_to_raw,
    queue_handle,
    queue_size,
    read_descriptor,
    ring_factory,
)
from harness.net.worker import listening_addresses, load_hostmap, resolve_ipv4, split_hostport

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 60.0
DEFAULT_WAIT = 30.0
IMAGE_SHAPES = ((28, 28), (28, 28, 1), (1, 28, 28, 1))

_connected: "OrderedDict[str, str] | None" = None  # one cluster per process (TF's context)


def client_bind_host(config: str) -> str:
    """Where the client's own TensorFlow server (its slot) must listen."""
    hostmap = load_hostmap(config)
    if CLIENT not in hostmap:
        raise ValueError(f"hostmap {config} has no {CLIENT!r} slot for the client")
    return resolve_ipv4(split_hostport(hostmap[CLIENT], CLIENT)[0])


def _wait_for_servers(hostmap: "OrderedDict[str, str]", wait: float) -> None:
    from harness.net.cluster import grpc_answers  # noqa: PLC0415

    deadline = time.monotonic() + wait
    missing = list(SERVERS)
    while True:
        missing = [s for s in missing if not grpc_answers(hostmap[s])]
        if not missing:
            return
        if time.monotonic() > deadline:
            raise ServingError(
                "no server answers at " + ", ".join(f"{s} {hostmap[s]}" for s in missing)
                + f" (waited {wait:.0f} s): is `python -m harness serve` running with this "
                "hostmap?")
        time.sleep(0.2)


def connect_as_client(hostmap: "OrderedDict[str, str]", expose: bool = False) -> None:
    """Join the cluster as the ``prediction-client`` task (once per process)."""
    global _connected
    if _connected is not None:
        if _connected != hostmap:
            raise ServingError("this process is already the client of another cluster "
                               "(TensorFlow has one cluster per process)")
        return
    host, port = split_hostport(hostmap[CLIENT], CLIENT)
    addr = resolve_ipv4(host)
    if not (expose or bind.active(addr)):
        raise ServingError(
            f"this process would listen for TensorFlow RPCs on every interface while it holds "
            f"the plaintext image; run it pinned to {addr} (`python -m harness client ...` "
            f"does that itself; or `python -m harness.net.bind {addr} -- python ...`), or pass "
            "expose=True to accept that")
    # a listener, not a bind() probe: the last client's closed connections linger in
    # TIME_WAIT on this port, and gRPC's SO_REUSEPORT would let two clients share it
    if listening_addresses(port):
        raise ServingError(
            f"the {CLIENT} slot {hostmap[CLIENT]} is in use: another prediction client is "
            "running (one client at a time per hostmap), or something else took the port")
    spec = tf.train.ClusterSpec({"tfe": list(hostmap.values())})
    tf.config.experimental_connect_to_cluster(spec, job_name="tfe",
                                              task_index=list(hostmap).index(CLIENT))
    _connected = OrderedDict(hostmap)
    bound = listening_addresses(port)
    if not expose and bound - {addr}:
        raise ServingError(f"the client's server listens on {sorted(bound)}, expected {addr} only")


@dataclass
class Pending:
    """A request sent and committed; its result is fetched with ``receive``."""

    rid: int
    mask_sum: tf.Tensor  # stays in this process: the results are masked with it
    sent_at: float


@functools.lru_cache(maxsize=1)
def _test_split() -> Any:
    from harness.inference.data import load_mnist  # noqa: PLC0415

    return load_mnist()


def load_image(spec: str) -> tuple[np.ndarray, int | None]:
    """An image by test-split index (with its label) or from a ``.npy`` file."""
    text = str(spec).strip()
    if text.lstrip("-").isdigit():
        split = _test_split()
        index = int(text)
        if not 0 <= index < len(split.x_test):
            raise InputError(f"image index {index} is outside the test split "
                             f"(0..{len(split.x_test) - 1})")
        return split.x_test[index], int(split.y_test[index])
    path = Path(text)
    if not path.is_file():
        raise InputError(f"image {text!r} is neither a test-split index nor a .npy file")
    try:
        return np.load(path, allow_pickle=False), None
    except (ValueError, OSError, EOFError) as exc:
        raise InputError(f"cannot read image {path} as a .npy array: {exc}") from exc


def build_functions(protocol: Any, wire: Wire, devices: Sequence[str], me: str
                    ) -> tuple[Any, Any]:
    """The client's two compiled steps.

    ``send(image, rid) -> mask_sum``: encode and share ``image`` on this device ``me``,
    draw the output masks here, enqueue each server's shares and mask share on that
    server, then commit ``rid`` on server0. ``mask_sum`` stays here.
    ``receive(mask_sum) -> (ids, logits)``: dequeue one masked output share per server,
    unmask and decode on ``me``.
    """
    lay = wire.layout
    factory = ring_factory(protocol)

    @tf.function
    def send(image: tf.Tensor, rid: tf.Tensor) -> tf.Tensor:
        # encode + share on this device; the shares land on the servers
        x = protocol.define_private_input(CLIENT, lambda: image)
        raw = private_to_raw(protocol, x)
        with tf.device(me), tf.name_scope("output-mask"):
            masks = [factory.sample_uniform(wire.output_shape).value
                     for _ in lay.output_servers]
        enqueued = []
        for i in lay.input_servers:
            with tf.device(devices[i]):
                q = queue_handle(wire.input_queue(i), wire.capacity)
                enqueued.append(
                    gen_data_flow_ops.queue_enqueue_v2(q, [rid, *raw[i], masks[i]]))
        with tf.control_dependencies(enqueued), tf.device(devices[0]):
            commit = gen_data_flow_ops.queue_enqueue_v2(
                queue_handle(wire.commit_queue(), wire.capacity), [rid])
        with tf.control_dependencies([commit]), tf.device(me):
            return tf.add_n(masks)

    @tf.function
    def receive(mask_sum: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        ids, shares = [], []
        for i in lay.output_servers:
            with tf.device(devices[i]):
                q = queue_handle(wire.output_queue(i), wire.capacity)
                rid, share = gen_data_flow_ops.queue_dequeue_v2(q, [tf.int64, tf.int64])
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
        hostmap = load_hostmap(self.config_path)
        missing = [p for p in (*SERVERS, CLIENT) if p not in hostmap]
        if missing:
            raise ServingError(f"hostmap {self.config_path} lacks {', '.join(missing)}")
        start = time.perf_counter()
        _wait_for_servers(hostmap, wait)
        connect_as_client(hostmap, expose)
        self.config = tfe.RemoteConfig(hostmap)
        tfe.set_config(self.config)
        self.devices = [self.config.get_player(s).device_name for s in SERVERS]
        self.device = self.config.get_player(CLIENT).device_name
        self.wire = self._await_descriptor(wait)
        self.protocol = PROTOCOLS[self.wire.protocol]()
        tfe.set_protocol(self.protocol)
        self.fixed_point = FixedPoint.of(self.protocol)
        self._handles()
        self._send_fn, self._receive_fn = self._make_functions()
        self.connect_s = time.perf_counter() - start
        logger.info("client of %s (%s, session %s) ready in %.1f s", self.config_path,
                    self.wire.protocol, self.wire.session, self.connect_s)

    def _await_descriptor(self, wait: float) -> Wire:
        deadline = time.monotonic() + wait
        while True:
            wire = read_descriptor(self.devices[0])
            if wire is not None:
                return wire
            if time.monotonic() > deadline:
                raise ServingError(f"no model is being served on {SERVERS[0]} "
                                   f"(waited {wait:.0f} s for `python -m harness serve`)")
            time.sleep(0.2)

    def _handles(self) -> None:
        queues = open_queues(self.wire, self.devices)
        self._in, self._out, self._commit = queues.inputs, queues.outputs, queues.commit

    def _make_functions(self) -> tuple[Any, Any]:
        return build_functions(self.protocol, self.wire, self.devices, self.device)

    # -- requests ------------------------------------------------------------------------
    def prepare(self, image: Any) -> np.ndarray:
        """Validate an image (or a batch of ``wire.batch`` images) for sending."""
        arr = np.asarray(image)
        if arr.dtype.kind not in "fiu":
            raise InputError(f"Images must be numeric, got dtype {arr.dtype}.")
        if self.wire.batch == 1 and arr.shape in IMAGE_SHAPES:
            arr = arr.reshape(1, 28, 28, 1)
        arr = check_images(arr, self.wire.batch, self.fixed_point)
        low, high = float(arr.min()), float(arr.max())
        if low < 0.0 or high > 1.0:
            raise InputError(f"Pixel values must lie in [0, 1], got [{low:g}, {high:g}] "
                             "(scale 0..255 images by 1/255).")
        return arr

    def send(self, image: Any) -> Pending:
        """Validate, secret-share and send one request; returns what ``receive`` needs."""
        arr = self.prepare(image)
        tfe.set_protocol(self.protocol)
        cap = self.wire.capacity
        if any(queue_size(self.devices[i], h) >= cap for i, h in self._in.items()) or \
                queue_size(self.devices[0], self._commit) >= cap:
            raise ServingError("the servers' request queues are full; try again later")
        rid = secrets.randbits(62) + 1
        sent_at = time.perf_counter()
        mask_sum = self._send_fn(tf.constant(arr), tf.constant(rid, tf.int64))
        return Pending(rid, mask_sum, sent_at)

    def receive(self, pending: Pending, timeout: float | None = None) -> np.ndarray:
        """Wait (bounded) for the request's result; returns the logits, shape (batch, 10)."""
        timeout = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        poll, next_check = Poller(), time.monotonic() + 2.0
        outs = self.wire.layout.output_servers
        while True:
            if all(queue_size(self.devices[i], self._out[i]) > 0 for i in outs):
                ids, logits = self._receive_fn(pending.mask_sum)
                ids = ids.numpy()
                if np.all(ids == pending.rid):
                    return logits.numpy()
                logger.info("skipped a stale result (request %x, not ours)", int(ids[0]))
                continue
            now = time.monotonic()
            if now > deadline:
                raise ServingError(f"no answer within {timeout:.0f} s (request {pending.rid:x}); "
                                   "is the model owner still serving?")
            if now > next_check:
                next_check = now + 2.0
                wire = read_descriptor(self.devices[0])
                if wire is None or wire.session != self.wire.session:
                    raise ServingError("the model owner stopped serving before answering "
                                       f"request {pending.rid:x}")
            poll.sleep()

    def predict(self, image: Any, timeout: float | None = None) -> np.ndarray:
        """Private logits of one image (shape (10,)) or of a batch ((batch, 10))."""
        single = np.ndim(image) < 4
        try:
            logits = self.receive(self.send(image), timeout)
        except tf.errors.NotFoundError as exc:  # stop() withdrew the queues
            raise ServingError("the model owner stopped serving (its queues are gone)") from exc
        except (tf.errors.UnavailableError, tf.errors.AbortedError,
                tf.errors.CancelledError) as exc:
            raise ServingError(f"lost the servers during the request: {exc.message}") from exc
        return logits[0] if single else logits


# -- the `client` command ----------------------------------------------------------------
def check_pixels(arr: np.ndarray) -> None:
    """The checks that need no protocol: dtype, a single image's shape, NaN, [0, 1]."""
    if arr.dtype.kind not in "fiu":
        raise InputError(f"Images must be numeric, got dtype {arr.dtype}.")
    if arr.shape not in IMAGE_SHAPES and not (arr.ndim == 4 and arr.shape[1:] == (28, 28, 1)):
        raise InputError(f"An image must have shape (28, 28), (28, 28, 1) or (1, 28, 28, 1), "
                         f"got {arr.shape}.")
    if not np.all(np.isfinite(arr)):
        raise InputError("Image contains NaN or inf.")
    if arr.size and (arr.min() < 0 or arr.max() > 1):
        raise InputError(f"Pixel values must lie in [0, 1], got [{arr.min():g}, {arr.max():g}] "
                         "(scale 0..255 images by 1/255).")


def _result(spec: str, label: int | None, logits: np.ndarray, seconds: float) -> dict[str, Any]:
    flat = np.asarray(logits, dtype=np.float64).reshape(-1, logits.shape[-1])
    out: dict[str, Any] = {"image": spec, "logits": flat[0].tolist() if len(flat) == 1
                           else flat.tolist(),
                           "prediction": int(flat[0].argmax()) if len(flat) == 1
                           else flat.argmax(-1).tolist(),
                           "latency_ms": seconds * 1e3}
    if label is not None:
        out["label"] = label
    return out


def _print(result: dict[str, Any]) -> None:
    label = f" (label {result['label']})" if "label" in result else ""
    print(f"image {result['image']}{label}: prediction {result['prediction']}, "
          f"{result['latency_ms']:.1f} ms")
    print("  logits " + " ".join(f"{v:+.4f}" for v in np.ravel(result["logits"])))


def _serve_stdin(client: PredictionClient) -> int:
    """One request per line of stdin (an image spec), one JSON line back per request."""
    import json  # noqa: PLC0415
    import sys  # noqa: PLC0415

    print(json.dumps({"ready": True, "protocol": client.wire.protocol,
                      "session": client.wire.session, "connect_s": client.connect_s}),
          flush=True)
    for line in sys.stdin:
        spec = line.strip()
        if not spec:
            break
        try:
            image, label = load_image(spec)
            check_pixels(np.asarray(image))
            start = time.perf_counter()
            logits = client.predict(image)
            print(json.dumps(_result(spec, label, logits, time.perf_counter() - start)),
                  flush=True)
        except InputError as exc:
            print(json.dumps({"image": spec, "error": str(exc)}), flush=True)
    return 0


def run_client(config: str, images: list[str], repeat: int = 1, as_json: bool = False,
               timeout: float = DEFAULT_TIMEOUT, wait: float = DEFAULT_WAIT,
               stdin: bool = False) -> int:
    """``python -m harness client``: request private predictions, print the logits."""
    import json  # noqa: PLC0415

    if repeat < 1:
        raise InputError("--repeat must be >= 1")
    if not stdin and not images:
        raise InputError("give --image PATH_OR_INDEX (repeatable) or --stdin")
    loaded = [(spec, *load_image(spec)) for spec in images]
    for spec, image, _ in loaded:  # refuse bad input before touching the cluster
        try:
            check_pixels(np.asarray(image))
        except InputError as exc:
            raise InputError(f"image {spec}: {exc}") from None
    client = PredictionClient(config, timeout=timeout, wait=wait)
    if stdin:
        return _serve_stdin(client)
    prepared = [(spec, client.prepare(image), label) for spec, image, label in loaded]
    results, start = [], time.perf_counter()
    for _ in range(repeat):
        for spec, arr, label in prepared:
            t0 = time.perf_counter()
            logits = client.predict(arr if arr.shape[0] > 1 else arr[0])
            results.append(_result(spec, label, logits, time.perf_counter() - t0))
    total = time.perf_counter() - start
    lat = [r["latency_ms"] for r in results]
    summary = {"protocol": client.wire.protocol, "session": client.wire.session,
               "connect_s": client.connect_s, "requests": results,
               "latency_ms_first": lat[0], "latency_ms_median": float(np.median(lat)),
               "latency_ms_median_warm": float(np.median(lat[1:])) if len(lat) > 1 else None,
               "throughput_rps": len(results) / total if total > 0 else None}
    if as_json:
        print(json.dumps(summary))
    else:
        for r in results:
            _print(r)
        print(f"{len(results)} request(s), median {summary['latency_ms_median']:.1f} ms, "
              f"{summary['throughput_rps']:.2f} requests/s")
    return 0
