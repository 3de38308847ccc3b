"""The model owner's side of serving: share a model once, answer clients' requests in batches.

    cluster = Cluster(players=SERVERS + slot_names(4), external=slot_names(4)).start()
    model = share("models/short-conv-mnist.h5", cluster, max_batch=8, batch_window=0.02)
    model.serve(num_requests=40)   # clients: harness.inference.client / `python -m harness client`
    model.stop()
    cluster.stop()

Who holds what
--------------
* The owner (this process) holds the plaintext weights; it secret-shares them onto the
  servers once, then only drives the computation. It connects to server0-2 alone:
  TensorFlow contacts every task of the cluster it connects with and would wait for
  ever for a client slot nobody holds, so the slots are left out.
* Each client process holds one slot of the cluster (``serving_slots``): it encodes and
  secret-shares its image on its own device, sends the shares straight to its slot's
  input queues on the servers, and reconstructs its logits on its own device from the
  masked output shares it fetches from its slot's output queues. Plaintext images and
  logits never leave their client; the owner never receives a share of either.
* The owner learns, per request, a random id, the slot and the time; per batch, how
  many rows were real. The servers see shares, sizes and the same routing data.
* Output shares are masked with random ring elements the client sent (secret-shared)
  with its request: whoever else collects a result (a stale one left in a slot for the
  next client, another client, the owner) reconstructs ``logits + mask``, uniformly
  random.
* Not covered: TensorFlow's servers are unauthenticated and run any graph a party of
  the cluster sends. A party that runs graphs of its own (a modified client or owner)
  can read whatever the servers hold, e.g. both input shares of another client's
  request; the privacy above holds for parties that run this code (semi-honest),
  as it did with one client.

Batching (``serving_batching``, ``serving_step``): requests committed within
``batch_window`` of each other, up to ``max_batch``, run as one private prediction of
the shared model (compiled for the powers of two below ``max_batch`` and for
``max_batch``; a partial batch is padded with shares of zero to the next size). Each
row keeps its own client's mask and goes to that client's output queue only.
"""
from __future__ import annotations

import logging
import secrets
import threading
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from harness.tfe import activate as _activate_tfe

tfe = _activate_tfe()  # this layer runs tf-encrypted: the boundary goes first

import tensorflow as tf  # noqa: E402
from tensorflow.python.ops import gen_data_flow_ops as dq  # noqa: E402

from harness.inference.private import SERVERS, activate, check_model, check_protocol  # noqa: E402
from harness.inference.serving_batching import (  # noqa: E402
    BatchWindow, compiled_sizes, plan_batch, step_size)
from harness.inference.serving_layout import (  # noqa: E402
    DEFAULT_CAPACITY, ServingDescriptor, ServingError)
from harness.inference.serving_queues import (  # noqa: E402
    Poller, destroy, handle_on, publish_descriptor, queue_size, withdraw_descriptor)
from harness.inference.serving_slots import client_slots  # noqa: E402
from harness.inference.serving_step import build_step  # noqa: E402

logger = logging.getLogger("harness.inference.serving")

DEFAULT_REQUEST_TIMEOUT = 10.0


@dataclass
class ServeStats:
    answered: int = 0     # results computed and put in their client's output queue
    batches: int = 0      # private predictions run
    padded: int = 0       # padding rows computed (batch size minus real rows)
    refused: int = 0      # malformed commits, or committed requests without their shares
    orphans: int = 0      # partial requests of clients that died while sending
    dropped: int = 0      # uncollected results discarded to make room (full output queue)
    uncollected: int = 0  # results nobody had collected when serving ended


class SharedModel:
    """A model secret-shared on the cluster's servers, serving its client slots."""

    def __init__(self, model: Any, cluster: Any, protocol: str = "securenn",
                 capacity: int = DEFAULT_CAPACITY, warm_up: bool = True,
                 expose_driver: bool = False, max_batch: int = 1,
                 batch_window: float = 0.0) -> None:
        self.protocol_name = check_protocol(protocol)
        check_model(model, self.protocol_name)
        self.window = BatchWindow(max_batch, batch_window)
        slots = client_slots(cluster.hostmap, "the cluster")
        inside = [s for s in slots if s not in cluster.external]
        if inside:
            raise ServingError(f"client slot(s) {', '.join(inside)} must be external (a client "
                               "process holds each): Cluster(external=...) or "
                               "Cluster.manual(FILE, external=...)")
        self.cluster = cluster
        self.config = cluster.connect(expose_driver=expose_driver)  # servers only
        self.protocol, self.fixed_point = activate(self.config, self.protocol_name, model)
        self.devices = [self.config.get_player(s).device_name for s in SERVERS]
        self.desc = ServingDescriptor(
            self.protocol_name, secrets.token_hex(8), len(slots), max_batch,
            (1,) + tuple(int(d) for d in model.input_shape[1:]),
            (1,) + tuple(int(d) for d in model.output_shape[1:]), capacity)
        self.stats = ServeStats()
        self._stop = threading.Event()
        self._serving = False
        start = time.perf_counter()
        with tf.name_scope(f"share-{self.protocol_name}"):
            self._shared = tfe.keras.models.clone_model(model)  # callable at any batch size
        self._handles = [(i, spec, handle_on(self.devices[i], spec))
                         for i, spec in self.desc.all_queues()]
        self._commit = self._handles[0][2]
        self._steps = {b: build_step(self.protocol, self._shared, self.desc, self.devices, b)
                       for b in compiled_sizes(max_batch)}
        if warm_up:
            self._warm_up()
        publish_descriptor(self.devices[0], self.desc)
        logger.info("%s: model shared on %s in %.1f s (session %s, %d client slot(s), "
                    "batches of up to %d within %.0f ms)", self.protocol_name,
                    ", ".join(SERVERS), time.perf_counter() - start, self.desc.session,
                    self.desc.slots, max_batch, batch_window * 1e3)

    @property
    def wire(self) -> ServingDescriptor:  # the name of earlier versions
        return self.desc

    def _warm_up(self) -> None:
        """Run each compiled step on padding only (shares of zero made on the servers),
        so the first client does not wait for tracing: twice, the second time to log
        what a batch of that size costs."""
        for size, step in self._steps.items():
            times = []
            for _ in range(2):
                start = time.perf_counter()
                step(tf.zeros([size], tf.int64), tf.zeros([self.desc.slots], tf.int32))
                times.append(time.perf_counter() - start)
            logger.info("%s: serving step for batch %d traced and run in %.1f s, then in "
                        "%.0f ms", self.protocol_name, size, times[0], times[1] * 1e3)

    # serving ------------------------------------------------------------------------------
    def serve(self, num_requests: int | None = None, idle_timeout: float | None = None,
              request_timeout: float = DEFAULT_REQUEST_TIMEOUT) -> int:
        """Answer ``num_requests`` private predictions (None: until ``stop()``/Ctrl-C).

        Returns the number answered (exactly ``num_requests`` unless it ends early: no
        request for ``idle_timeout`` s, Ctrl-C, or ``stop()`` from another thread).
        Before returning it gives clients up to ``request_timeout`` s to collect the
        results still waiting in their queues.
        """
        if self._stop.is_set():
            raise ServingError("this shared model was stopped; share it again")
        if num_requests is not None and num_requests < 0:
            raise ValueError("num_requests must be >= 0")
        answered = 0
        self._serving = True
        logger.info("serving %s requests (%s, session %s)",
                    "unlimited" if num_requests is None else num_requests,
                    self.protocol_name, self.desc.session)
        try:
            poll, last = Poller(), time.monotonic()
            first_seen = None  # when the owner first saw a request of the next batch
            while (num_requests is None or answered < num_requests) and not self._stop.is_set():
                wanted = None if num_requests is None else num_requests - answered
                with self.cluster.guard():  # a dead worker: a ClusterError that names it
                    waiting = queue_size(self.devices[0], self._commit)
                    now = time.monotonic()
                    first_seen = (first_seen or now) if waiting else None
                    take = self.window.take(waiting, now, wanted)
                    if take:
                        answered += self._run_batch(take, (first_seen - last, now - first_seen))
                        poll.reset()
                        last, first_seen = time.monotonic(), None
                        continue
                if waiting:
                    poll.reset()
                elif idle_timeout is not None and time.monotonic() - last > idle_timeout:
                    logger.info("no request for %.0f s: serving ends", idle_timeout)
                    break
                poll.sleep()
            if num_requests is not None and answered >= num_requests:
                self._await_collection(request_timeout)
        except KeyboardInterrupt:
            logger.warning("interrupted")
        finally:
            self._serving = False
        logger.info("served %d request(s)", answered)
        return answered

    def _run_batch(self, take: int, before: tuple[float, float] = (0.0, 0.0)) -> int:
        """Dequeue ``take`` commits and answer them in one batch; returns answered.
        ``before``: (s idle since the last batch, s spent gathering this one)."""
        with tf.device(self.devices[0]):
            rids, slots = dq.queue_dequeue_many_v2(self._commit, take, [tf.int64, tf.int64])
        rids, slots = rids.numpy(), slots.numpy()  # routing data only: ids and slots
        plan = plan_batch(rids, slots, self.desc.slots)
        self.window.seen([s for _, s in plan.rows], time.monotonic())
        if plan.refused:
            self.stats.refused += len(plan.refused)
            logger.warning("refused %d malformed request(s) (%s out of range)",
                           len(plan.refused), ", ".join(
                               f"slot {s}" if not 0 <= s < self.desc.slots else f"id {r}"
                               for r, s in plan.refused))
        if not plan.n:
            return 0
        size = step_size(plan.n, self._steps)
        plan = plan_batch(rids, slots, self.desc.slots, size)
        start = time.perf_counter()
        found, orphans, dropped = self._steps[size](tf.constant(plan.rids),
                                                    tf.constant(plan.counts))
        found = np.all(found.numpy(), axis=0)[:plan.n]
        orphans, dropped = int(np.max(orphans.numpy())), int(np.max(dropped.numpy()))
        ms = (time.perf_counter() - start) * 1e3
        self.window.ran(ms / 1e3)
        answered = int(found.sum())
        self.stats.batches += 1
        self.stats.answered += answered
        self.stats.padded += size - plan.n
        if answered < plan.n:
            self.stats.refused += plan.n - answered
            logger.warning("refused %d request(s) committed without their shares",
                           plan.n - answered)
        if orphans:
            self.stats.orphans += orphans
            logger.warning("skipped %d partial request(s) of client(s) that died while "
                           "sending", orphans)
        if dropped:
            self.stats.dropped += dropped
            logger.warning("discarded %d uncollected result(s) of a client that does not "
                           "collect them (its output queue was full)", dropped)
        logger.info("answered %d request(s) (batch %d, slots %s) in %.1f ms; before it "
                    "%.1f ms idle, %.1f ms gathering", answered, size,
                    ",".join(str(s) for _, s in plan.rows), ms, before[0] * 1e3, before[1] * 1e3)
        return answered

    def _waiting_results(self) -> int:
        """Results in the slots' output queues on server0 (every result has a share there)."""
        return sum(queue_size(self.devices[0], h) for i, spec, h in self._handles
                   if i == 0 and "/out/" in spec.name)

    def _await_collection(self, timeout: float) -> None:
        """Give clients up to ``timeout`` s to collect their results (stop() removes them)."""
        deadline = time.monotonic() + timeout
        while not self._stop.is_set():
            with self.cluster.guard():
                left = self._waiting_results()
            if not left:
                return
            if time.monotonic() > deadline:
                self.stats.uncollected += left
                logger.warning("%d result(s) not collected within %.0f s (client gone?)",
                               left, timeout)
                return
            time.sleep(0.02)

    # stopping -----------------------------------------------------------------------------
    def stop(self) -> None:
        """Stop serving (a running ``serve`` returns within a batch) and withdraw the
        model's queues and descriptor from the servers; the shared weights go with the
        workers."""
        if self._stop.is_set():
            return
        self._stop.set()
        deadline = time.monotonic() + 10.0
        while self._serving and time.monotonic() < deadline and \
                threading.current_thread() is not threading.main_thread():
            time.sleep(0.01)
        try:
            withdraw_descriptor(self.devices[0])
            for i, _spec, handle in self._handles:
                destroy(self.devices[i], handle)
        except tf.errors.OpError as exc:  # workers already gone: nothing left to withdraw
            logger.info("stop: could not withdraw the queues (%s)", exc.message)
        logger.info("stopped serving (session %s): %s", self.desc.session, asdict(self.stats))


def load_keras(model_or_weights: Any, batch_size: int = 1) -> Any:
    """A Keras model as given, or ``models.conv_mnist`` with HDF5 weights from a path."""
    import os  # noqa: PLC0415

    if isinstance(model_or_weights, (str, os.PathLike)):
        from models.conv_mnist import load_model  # noqa: PLC0415

        return load_model(model_or_weights, batch_size=batch_size)
    return model_or_weights


def share(model_or_weights_path: Any, cluster: Any, protocol: str = "securenn",
          batch_size: int = 1, **kwargs: Any) -> SharedModel:
    """Secret-share a Keras model (or ``conv_mnist`` weights at a path) on ``cluster``."""
    return SharedModel(load_keras(model_or_weights_path, batch_size), cluster, protocol, **kwargs)
