"""The small convolutional MNIST network of the TF Encrypted private-prediction tutorial.

Built with legacy Keras 2 (``tf_keras``), which is what TF Encrypted works with.
TensorFlow is imported lazily, so importing this module is cheap and does not
fix the Keras flavour before ``TF_USE_LEGACY_KERAS`` is set.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    import tf_keras

__all__ = ["WEIGHTS_PATH", "build_model", "load_model"]

logger = logging.getLogger(__name__)

#: Trained weights committed next to this file (HDF5, written by ``model.save_weights``).
WEIGHTS_PATH = Path(__file__).with_name("short-conv-mnist.h5")


def _keras():
    """Import and return ``tf_keras``, making sure TensorFlow will use legacy Keras too."""
    if "tensorflow" not in sys.modules:
        # Same guard as harness.tfe: tf.keras must resolve to tf_keras for TF Encrypted.
        os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
    elif os.environ.get("TF_USE_LEGACY_KERAS") not in ("1", "true", "True"):
        logger.warning(
            "tensorflow was imported without TF_USE_LEGACY_KERAS=1: tf.keras is Keras 3, "
            "but this model is built with tf_keras (legacy Keras 2)"
        )
    import tf_keras

    return tf_keras


def build_model(batch_size: int | None = 1) -> "tf_keras.Sequential":
    """Build the (untrained) tutorial network; outputs 10 logits (no softmax).

    ``batch_size`` fixes the first dimension of ``batch_input_shape`` (TF
    Encrypted's model cloning needs a static input shape); pass ``None`` for a
    variable batch size, e.g. for training.
    """
    keras = _keras()
    layers = keras.layers
    return keras.Sequential(
        [
            layers.Conv2D(10, (3, 3), batch_input_shape=(batch_size, 28, 28, 1)),
            layers.AveragePooling2D((2, 2)),
            layers.Activation("relu"),
            layers.Conv2D(32, (3, 3)),
            layers.AveragePooling2D((2, 2)),
            layers.Activation("relu"),
            layers.Conv2D(64, (3, 3)),
            layers.AveragePooling2D((2, 2)),
            layers.Activation("relu"),
            layers.Flatten(),
            layers.Dense(10, name="logit"),
        ]
    )


def load_model(
    weights: str | os.PathLike[str] = WEIGHTS_PATH, batch_size: int | None = 1
) -> "tf_keras.Sequential":
    """Build the network for ``batch_size`` and load HDF5 ``weights`` into it.

    Raises ``FileNotFoundError`` if the file does not exist and ``ValueError``
    if it is not a readable HDF5 weights file for this architecture.
    """
    path = Path(weights)
    if not path.is_file():
        raise FileNotFoundError(f"model weights not found: {path}")
    import h5py

    if not h5py.is_hdf5(path):
        raise ValueError(
            f"model weights {path} are not an HDF5 file "
            "(expected one written by model.save_weights(<name>.h5))"
        )
    model = build_model(batch_size)
    try:
        model.load_weights(path)
    except (OSError, ValueError, KeyError) as exc:
        raise ValueError(
            f"cannot load model weights from {path}: {exc} "
            "(expected HDF5 weights of models.conv_mnist.build_model)"
        ) from exc
    logger.debug("loaded weights %s (batch_size=%s)", path, batch_size)
    return model
