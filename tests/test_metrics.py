"""Accuracy figures: KL divergence and agreement against hand-computed values."""
from __future__ import annotations

import math

import numpy as np

from harness.results import metrics


def test_kl_of_identical_logits_is_zero():
    logits = np.random.default_rng(0).normal(size=(5, 10)) * 20
    assert metrics.kl_divergence(logits, logits) == 0.0


def test_kl_matches_a_hand_computation():
    p, q = np.array([[0.0, math.log(3)]]), np.array([[0.0, 0.0]])  # softmax: (1/4, 3/4), (1/2, 1/2)
    expected = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)
    assert math.isclose(metrics.kl_divergence(p, q), expected, rel_tol=1e-12)


def test_kl_stays_finite_for_far_apart_logits():
    p, q = np.array([[0.0, 800.0]]), np.array([[800.0, 0.0]])
    assert math.isclose(metrics.kl_divergence(p, q), 800.0, rel_tol=1e-9)


def test_agreement_counts_argmax_and_errors():
    plain = np.array([[0.0, 1.0], [2.0, 0.0], [0.0, 3.0]])
    private = plain + np.array([[0.0, 0.1], [0.0, 2.5], [0.0, -0.5]])
    row = metrics.compare(private, plain, np.array([1, 0, 0])).as_dict()
    assert row["argmax_agreement"] == 2 / 3 and math.isclose(row["max_abs_err"], 2.5)
    assert row["plaintext_accuracy"] == 2 / 3 and row["private_accuracy"] == 1 / 3


def test_interleaved_rotates_and_runs_before_untimed() -> None:
    """Each round calls every function once, in a rotating order; ``before[name]`` runs
    just before each call of ``name`` and is not part of its time."""
    import time  # noqa: PLC0415

    class Bench:  # pytest-benchmark's pedantic, as interleaved uses it
        def pedantic(self, fn, rounds, warmup_rounds, iterations):
            for _ in range(warmup_rounds + rounds):
                fn()

    order: list[str] = []
    times = metrics.interleaved(
        {"a": lambda: order.append("a"), "b": lambda: order.append("b")}, Bench(), 3,
        before={"b": lambda: (order.append("lift"), time.sleep(0.05))})
    assert order == ["a", "lift", "b", "lift", "b", "a", "a", "lift", "b", "lift", "b", "a"]
    assert len(times["a"]) == len(times["b"]) == 3  # the warm-up round is dropped
    assert max(times["b"]) < 0.05  # the sleep in before is not timed
