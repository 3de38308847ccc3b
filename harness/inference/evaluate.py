"""One measured run: private vs plaintext prediction of the same test images."""
from __future__ import annotations

import logging
import time
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from harness.results import metrics
from harness.inference.data import load_mnist
from harness.inference.private import PrivateModel, check_protocol, plaintext_predictor
from harness.inference import models
from models.conv_mnist import load_model as load_tutorial

logger = logging.getLogger(__name__)

DEPLOYMENTS = ("inprocess", "cluster")


@dataclass
class Run:
    """Logits and per-batch timings of one protocol/deployment/batch-size run."""

    protocol: str
    deployment: str
    batch: int
    first_call_s: float
    private_logits: np.ndarray
    plaintext_logits: np.ndarray
    labels: np.ndarray
    private_seconds: list[float]
    plaintext_seconds: list[float]

    def summary(self) -> dict[str, Any]:
        agreement = metrics.compare(self.private_logits, self.plaintext_logits, self.labels)
        return {
            "protocol": self.protocol,
            "deployment": self.deployment,
            "batch": self.batch,
            "images": agreement.images,
            "first_call_s": self.first_call_s,
            "latency_ms_median": metrics.median_ms(self.private_seconds),
            "plaintext_latency_ms_median": metrics.median_ms(self.plaintext_seconds),
            "max_abs_err": agreement.max_abs_err,
            "mean_abs_err": agreement.mean_abs_err,
            "argmax_agreement": agreement.argmax_agreement,
            "plaintext_accuracy": agreement.plaintext_accuracy,
            "private_accuracy": agreement.private_accuracy,
            "kl_divergence": agreement.kl_divergence,
        }


def timed_batches(images: np.ndarray, batch: int, fn: Callable[[np.ndarray], np.ndarray],
                  progress: Callable[[int], None] | None = None
                  ) -> tuple[np.ndarray, list[float]]:
    """Run ``fn`` over fixed-size batches (last one zero-padded); return outputs and seconds."""
    outs, seconds = [], []
    for start in range(0, len(images), batch):
        chunk = images[start:start + batch]
        n = len(chunk)
        if n < batch:
            pad = np.zeros((batch - n,) + chunk.shape[1:], dtype=chunk.dtype)
            chunk = np.concatenate([chunk, pad])
        t0 = time.perf_counter()
        out = fn(chunk)
        seconds.append(time.perf_counter() - t0)
        outs.append(out[:n])
        if progress is not None:
            progress(n)
    return np.concatenate(outs), seconds


def fill_batch(images: np.ndarray, batch: int) -> np.ndarray:
    """Exactly ``batch`` images: the first ones, cycled if there are fewer."""
    return images[np.arange(batch) % len(images)]


def run(protocol: str, deployment: str = "inprocess", batch: int = 1, images: int = 200,
        weights: str | None = None, cluster: Any = None, cluster_config: str | None = None,
        progress: Callable[[int], None] | None = None, model: str = "tutorial",
        data: str | None = None, variant: str = "tuned") -> Run:
    """Share ``model`` (a zoo name or a model file; ``weights``: other weights for the
    tutorial model) under ``protocol`` and predict ``images`` test inputs privately: the
    offline MNIST test split, or the arrays ``x``, ``y`` of ``data`` (an ``.npz``).

    ``deployment="cluster"`` uses ``cluster`` if given, else the hand-started workers of
    ``cluster_config`` (manual mode), else an auto-managed cluster started and stopped here.
    """
    protocol = check_protocol(protocol)
    if deployment not in DEPLOYMENTS:
        raise ValueError(f"Unknown deployment {deployment!r}; choose one of {DEPLOYMENTS}.")
    if batch < 1 or images < 1:
        raise ValueError("batch and images must be positive")
    if weights is not None:
        if model != "tutorial":
            raise ValueError("--weights is for the tutorial model; give other models as files")
        keras = load_tutorial(weights, batch_size=batch)
    else:
        keras = models.load_model(model, batch)
    if data is not None:
        x, y = models.load_data(data, tuple(keras.input_shape[1:]))
    else:
        split = load_mnist()
        x, y = split.x_test, split.y_test
    if len(x) < images:
        logger.warning("only %d test inputs available (asked for %d): using %d",
                       len(x), images, len(x))
    x, y = x[:images], y[:images]
    model = keras
    plain = plaintext_predictor(model)
    plain(fill_batch(x, batch))
    with ExitStack() as stack:
        if deployment == "cluster" and cluster is None:
            from harness.net.cluster import Cluster  # noqa: PLC0415  (only this path needs it)

            cluster = stack.enter_context(Cluster.manual(cluster_config) if cluster_config
                                          else Cluster())
        private = PrivateModel(model, protocol, variant=variant,
                               cluster=cluster if deployment == "cluster" else None)
        private.predict(fill_batch(x, batch))
        private_logits, private_s = timed_batches(x, batch, private.predict, progress)
    plain_logits, plain_s = timed_batches(x, batch, plain)
    return Run(protocol, deployment, batch, private.timing.first_call_s, private_logits, plain_logits, y,
               private_s, plain_s)
