"""The serving session's shared-name queues and descriptor on the servers, and polling.

Queues are ``tfe.queue.TFFIFOQueue``'s op without its Python wrapper (that one destroys
the shared queue when the Python object dies, i.e. when any client exits). The owner
creates them; clients open them by name; ``stop()`` destroys them.

Nothing here ever blocks on an empty or full queue: a blocked queue op in a TensorFlow
worker stalls that worker for every party, for good (measured on TF 2.21). Every
dequeue/enqueue is preceded by a size check (outside a graph) or guarded by one in the
same graph, and every wait is a bounded poll.

Who can derive what: nothing new; these are handles, sizes and the public descriptor.
Queue sizes (how many requests wait) are visible to every party of the cluster.
"""
from __future__ import annotations

import time

from harness.tfe import activate as _activate_tfe

_activate_tfe()  # this layer runs tf-encrypted: the boundary goes first

import tensorflow as tf  # noqa: E402
from tensorflow.python.ops import gen_data_flow_ops, gen_resource_variable_ops  # noqa: E402

from harness.inference.serving_layout import QueueSpec, ServingDescriptor  # noqa: E402

DESCRIPTOR_NAME = "harness-serving/descriptor"


def queue_handle(spec: QueueSpec) -> tf.Tensor:
    """The shared-name FIFO queue ``spec`` on the current device (created if missing)."""
    return gen_data_flow_ops.fifo_queue_v2(component_types=[tf.int64] * spec.n,
                                           shapes=[list(s) for s in spec.shapes],
                                           capacity=spec.capacity, shared_name=spec.name)


def handle_on(device: str, spec: QueueSpec) -> tf.Tensor:
    with tf.device(device):
        return queue_handle(spec)


def destroy(device: str, handle: tf.Tensor) -> None:
    with tf.device(device):
        gen_resource_variable_ops.destroy_resource_op(handle, ignore_lookup_error=True)


def queue_size(device: str, handle: tf.Tensor) -> int:
    """Elements waiting in the queue ``handle`` on ``device``."""
    with tf.device(device):
        return int(gen_data_flow_ops.queue_size_v2(handle).numpy())


def dequeue(device: str, handle: tf.Tensor, n_components: int) -> list[tf.Tensor]:
    """One element (call only after a size check). The result stays on ``device`` until
    someone reads it (``.numpy()``): discarding it moves nothing."""
    with tf.device(device):
        return gen_data_flow_ops.queue_dequeue_v2(handle, [tf.int64] * n_components)


def descriptor_handle() -> tf.Tensor:
    return gen_resource_variable_ops.var_handle_op(dtype=tf.string, shape=[],
                                                   shared_name=DESCRIPTOR_NAME)


def publish_descriptor(server0: str, desc: ServingDescriptor) -> None:
    with tf.device(server0):
        gen_resource_variable_ops.assign_variable_op(descriptor_handle(),
                                                     tf.constant(desc.to_json()))


def withdraw_descriptor(server0: str) -> None:
    with tf.device(server0):
        gen_resource_variable_ops.destroy_resource_op(descriptor_handle(),
                                                      ignore_lookup_error=True)


def read_descriptor(server0: str) -> ServingDescriptor | None:
    """The serving session announced on server0, or None if nothing is served there."""
    with tf.device(server0):
        handle = descriptor_handle()
        try:
            text = gen_resource_variable_ops.read_variable_op(handle, tf.string)
            return ServingDescriptor.from_json(text.numpy().decode())
        except (tf.errors.NotFoundError, tf.errors.FailedPreconditionError,
                tf.errors.InvalidArgumentError):
            return None


class Poller:
    """Sleep between polls: 2 ms in the first second after activity, 10 ms until 10 s,
    then 50 ms (each poll is an RPC; a request arriving after a pause waits one sleep)."""

    STEPS = ((1.0, 0.002), (10.0, 0.01), (float("inf"), 0.05))  # (idle up to s, sleep s)

    def __init__(self) -> None:
        self.since = time.monotonic()

    def reset(self) -> None:
        self.since = time.monotonic()

    def sleep(self) -> None:
        idle = time.monotonic() - self.since
        time.sleep(next(pause for upto, pause in self.STEPS if idle < upto))
