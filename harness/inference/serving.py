"""Private prediction serving: ``share`` a model, ``serve`` many clients' requests, ``stop``.

The flow of the TF Encrypted tutorial, on our cluster, with K concurrent clients::

    python -m harness serve --clients 4 --max-batch 8 --batch-window 20 --hostmap-out hm.json
    python -m harness client --config hm.json --image 7        # up to 4 of these at once

The parts, each one job:

* ``serving_slots``: client slots in the hostmap, and how a client takes one (no TF);
* ``serving_layout``: the serving descriptor owner and clients agree on, and how shares
  of a private tensor sit on the servers;
* ``serving_queues``: the session's queues and descriptor on the servers, polling;
* ``serving_batching``: when the owner starts a batch, and rows from commits (no TF);
* ``serving_step``: the compiled step: assemble a batch from the slots' queues on the
  servers, run the shared model, deliver each masked result to its own slot;
* ``serving_owner``: ``SharedModel`` / ``share``: the owner's loop and statistics;
* this module: the ``serve`` command (a cluster with K external client slots).

Who can derive what is stated in each of those modules; in short: a client's image and
logits exist in the clear only in that client's process; servers hold shares, the owner
holds routing data (ids, slots, batch sizes, times); a result is masked so that only
its own client can unmask it.
"""
from __future__ import annotations

import json
import signal
from contextlib import contextmanager
from typing import Any, Iterator

from harness.inference.private import CLIENT, SERVERS, InputError, check_model, check_protocol
from harness.inference.serving_layout import (  # noqa: F401  (re-exported)
    DEFAULT_CAPACITY, LAYOUTS, Layout, ServingDescriptor, ServingError, output_share,
    private_to_raw, raw_to_private, ring_factory)
from harness.inference.serving_owner import (  # noqa: F401  (re-exported)
    DEFAULT_REQUEST_TIMEOUT, ServeStats, SharedModel, load_keras, share)
from harness.inference.serving_queues import (  # noqa: F401  (re-exported)
    Poller, queue_handle, queue_size, read_descriptor)
from harness.inference.serving_slots import check_clients, client_slots, slot_names
from harness.results.store import write_text

DEFAULT_CLIENTS = 4


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    def handler(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def _cluster(config: str | None, clients: int | None, start_timeout: float) -> Any:
    from harness.net.cluster import Cluster  # noqa: PLC0415
    from harness.net.worker import load_hostmap  # noqa: PLC0415

    if config:
        slots = client_slots(load_hostmap(config), f"hostmap {config}")
        if clients is not None and clients != len(slots):
            raise InputError(f"hostmap {config} has {len(slots)} client slot(s) "
                             f"({', '.join(slots)}); --clients {clients} needs {clients}: "
                             "add slots to the hostmap or drop --clients")
        return Cluster.manual(config, external=tuple(slots), start_timeout=start_timeout)
    slots = slot_names(check_clients(DEFAULT_CLIENTS if clients is None else clients))
    return Cluster(players=SERVERS + slots, external=slots, start_timeout=start_timeout)


def run_serve(protocol: str = "securenn", num_requests: int | None = None,
              config: str | None = None, weights: str | None = None,
              hostmap_out: str | None = None, idle_timeout: float | None = None,
              request_timeout: float = DEFAULT_REQUEST_TIMEOUT,
              start_timeout: float = 120.0, clients: int | None = None, max_batch: int = 1,
              batch_window_ms: float = 20.0, model: str = "tutorial") -> int:
    """Stand up (or join) a cluster, share ``model`` (a zoo name or a model file;
    ``weights``: other weights for the tutorial model), serve, stop everything; returns
    the number of requests answered."""
    from harness.inference.models import load_model  # noqa: PLC0415

    protocol = check_protocol(protocol)
    if num_requests is not None and num_requests < 0:
        raise InputError("--num-requests must be >= 0")
    if max_batch < 1:
        raise InputError("--max-batch must be >= 1")
    if batch_window_ms < 0:
        raise InputError("--batch-window must be >= 0 ms")
    if weights is not None and model != "tutorial":
        raise InputError("--weights is for the tutorial model; give other models as files "
                         "(--model FILE)")
    name = str(model)
    keras_model = load_keras(weights) if weights else load_model(name, 1)
    check_model(keras_model, protocol)  # refused before any worker starts
    cluster = _cluster(config, clients, start_timeout)
    with _sigterm_as_interrupt():
        try:
            cluster.start()
            model = share(keras_model, cluster, protocol, max_batch=max_batch,
                          batch_window=batch_window_ms / 1e3)
            try:
                text = json.dumps(dict(cluster.hostmap), indent=2)
                where = write_text(hostmap_out, text) if hostmap_out else cluster.config_path
                print(f"SERVING model={name} protocol={protocol} session={model.desc.session} "
                      f"clients={model.desc.slots} max_batch={max_batch} hostmap={where}",
                      flush=True)
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


__all__ = ["CLIENT", "SharedModel", "ServingDescriptor", "ServingError", "run_serve", "share"]
