"""Accuracy and latency figures comparing private logits with plaintext ones."""
from __future__ import annotations

import resource
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable, Iterable, Mapping

import numpy as np
from scipy.special import log_softmax, softmax  # noqa: F401  (softmax: re-exported)


def kl_divergence(p_logits: np.ndarray, q_logits: np.ndarray) -> float:
    """Mean KL(softmax(p) || softmax(q)) over rows, in nats (from log-softmaxes, so
    no probability underflows to a log of zero)."""
    log_p = log_softmax(np.asarray(p_logits, np.float64), axis=-1)
    log_q = log_softmax(np.asarray(q_logits, np.float64), axis=-1)
    return float(np.mean(np.sum(np.exp(log_p) * (log_p - log_q), axis=-1)))


@dataclass(frozen=True)
class Agreement:
    """How closely private logits follow the plaintext ones over a set of images."""

    images: int
    max_abs_err: float
    mean_abs_err: float
    argmax_agreement: float
    plaintext_accuracy: float
    private_accuracy: float
    kl_divergence: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def compare(private: np.ndarray, plaintext: np.ndarray, labels: np.ndarray) -> Agreement:
    """Compare logits of the same images; ``labels`` are the true digits."""
    if private.shape != plaintext.shape or len(labels) != len(private):
        raise ValueError(
            f"shape mismatch: private {private.shape}, plaintext {plaintext.shape}, "
            f"labels {np.shape(labels)}"
        )
    if len(private) == 0:
        raise ValueError("no images to compare")
    err = np.abs(private.astype(np.float64) - plaintext.astype(np.float64))
    p_arg, q_arg = plaintext.argmax(-1), private.argmax(-1)
    return Agreement(
        images=len(private),
        max_abs_err=float(err.max()),
        mean_abs_err=float(err.mean()),
        argmax_agreement=float(np.mean(p_arg == q_arg)),
        plaintext_accuracy=float(np.mean(p_arg == labels)),
        private_accuracy=float(np.mean(q_arg == labels)),
        kl_divergence=kl_divergence(plaintext, private),
    )


def median_ms(seconds: Iterable[float]) -> float:
    """Median of durations given in seconds, in milliseconds."""
    values = list(seconds)
    if not values:
        raise ValueError("no timings")
    return float(np.median(values) * 1e3)


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def interleaved(calls: Mapping[str, Callable[[], Any]], benchmark: Any,
                rounds: int, before: Mapping[str, Callable[[], Any]] | None = None,
                ) -> dict[str, list[float]]:
    """Seconds per call of each of ``calls``, timed *interleaved*: every round (one
    pytest-benchmark ``pedantic`` round) calls each once, in a rotating order, so all
    see the same machine speed. ``before[name]``, if given, runs just before each call
    of ``name``, untimed (e.g. to put a shared resource in the state that call needs).
    One warm-up round, not returned."""
    names = list(calls)
    times: dict[str, list[float]] = {n: [] for n in names}
    turn = [0]

    def one_round() -> None:
        k = turn[0] % len(names)
        turn[0] += 1
        for name in names[k:] + names[:k]:
            if before and name in before:
                before[name]()
            start = time.perf_counter()
            calls[name]()
            times[name].append(time.perf_counter() - start)

    benchmark.pedantic(one_round, rounds=rounds, warmup_rounds=1, iterations=1)
    return {n: t[1:] for n, t in times.items()}
