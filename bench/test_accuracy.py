"""Accuracy of private prediction against the plaintext Keras logits, with the CI gate.

For every protocol: plaintext and private top-1 accuracy, argmax agreement, max/mean
absolute logit error and KL divergence of the softmaxes over the test images
(``--images``; the whole split by default). In-process rows are checked against
``results/baseline.json``; a cluster deployment is checked for the same agreement
on a subset.
"""
from __future__ import annotations

from harness.results import metrics
from harness.results.baseline import load_baseline, violations
from harness.inference.evaluate import timed_batches

CLUSTER_IMAGES = 64


def _batch(options) -> int:
    return max(options.batch_sizes)


def test_accuracy(benchmark, models, recorder, model, protocol, deployment, test_split, options):
    images, labels = test_split
    if deployment != "inprocess":
        images, labels = images[:CLUSTER_IMAGES], labels[:CLUSTER_IMAGES]
    batch = _batch(options)
    name = model
    model = models.private(name, protocol, deployment, batch)
    benchmark.group = "accuracy"
    progress = _progress(len(images), f"{protocol}/{deployment}")
    private, _ = benchmark.pedantic(timed_batches, args=(images, batch, model.predict, progress),
                                    rounds=1, iterations=1)
    plain, _ = timed_batches(images, batch, models.plaintext(name, batch))
    agreement = metrics.compare(private, plain, labels)
    row = {"model": name, "protocol": protocol, "deployment": deployment, "batch": batch,
           **agreement.as_dict()}
    recorder.accuracy.append(row)
    benchmark.extra_info.update(row)
    problems = violations(protocol, row, load_baseline(), name)
    assert not problems, "accuracy regression:\n" + "\n".join(problems)


def _progress(total: int, label: str):
    """Log progress every ~10% (pytest shows it live with -o log_cli=true)."""
    import logging  # noqa: PLC0415

    log = logging.getLogger("harness.bench")
    state = {"done": 0, "next": max(1, total // 10)}

    def step(n: int) -> None:
        state["done"] += n
        if state["done"] >= state["next"] or state["done"] == total:
            log.info("%s: %d/%d images", label, state["done"], total)
            state["next"] += max(1, total // 10)

    return step
