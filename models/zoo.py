"""A registry of named MNIST networks for private inference.

``tutorial`` is the short conv net of TF Encrypted's private-prediction tutorial
(:mod:`models.conv_mnist`); ``A`` to ``D`` are the four MNIST networks of the
SecureNN paper's evaluation (Wagh, Gupta, Chandran, PoPETs 2019; IACR ePrint
2018/442), which the paper takes from SecureML, MiniONN, LeNet and Chameleon.

Every network takes float images of shape (B, 28, 28, 1) in [0, 1], outputs 10
logits (no softmax), and is a ``tf_keras.Sequential`` made only of layers that
TF Encrypted 0.9.1's Keras cloning knows (Conv2D, Dense, MaxPooling2D,
AveragePooling2D, Activation, Flatten), so it can be secret-shared as is.

Measured figures (test accuracy, epochs, seed, value ranges) are read from
``models/zoo.json``, which ``python -m models.train --model NAME`` writes.
TensorFlow is imported lazily: importing this module does not import it.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from models import conv_mnist

if TYPE_CHECKING:  # pragma: no cover
    import tf_keras

__all__ = [
    "INPUT_SHAPE",
    "RECORD_PATH",
    "Network",
    "Recipe",
    "UnknownModelError",
    "file_sha256",
    "get",
    "load",
    "names",
    "read_record",
]

HERE = Path(__file__).resolve().parent
#: Measured figures per network, written by ``python -m models.train``.
RECORD_PATH = HERE / "zoo.json"
#: One image: 28x28 pixels, one channel, floats in [0, 1].
INPUT_SHAPE = (28, 28, 1)

_SECURENN = "Wagh, Gupta, Chandran, SecureNN, PoPETs 2019 (IACR ePrint 2018/442)"


class UnknownModelError(ValueError):
    """A model name that is not in the zoo."""


@dataclass(frozen=True)
class Recipe:
    """Default training recipe (see ``models/train.py``)."""

    epochs: int
    learning_rate: float
    shift: int
    batch_size: int = 32
    seed: int = 1
    weight_decay: float = 0.0


@dataclass(frozen=True)
class Network:
    """One zoo entry: how to build the network and where its trained weights are."""

    name: str
    aliases: tuple[str, ...]
    layers_summary: str
    source: str
    weights_file: str
    paper_accuracy: float | None  # plaintext accuracy reported by the source, as a fraction
    recipe: Recipe
    make_layers: Callable[[Any, dict[str, Any]], list[Any]] | None  # None: models.conv_mnist
    input_shape: tuple[int, int, int] = INPUT_SHAPE

    @property
    def weights_path(self) -> Path:
        """The committed HDF5 weights (``model.save_weights``) of this network."""
        return HERE / self.weights_file

    def build(self, batch_size: int | None = 1) -> "tf_keras.Sequential":
        """The untrained network with ``batch_input_shape=(batch_size, 28, 28, 1)``.

        TF Encrypted needs a fixed batch size; pass ``None`` for a variable one
        (training).
        """
        if self.make_layers is None:
            return conv_mnist.build_model(batch_size)
        keras = conv_mnist._keras()  # selects legacy Keras before TensorFlow loads
        first = {"batch_input_shape": (batch_size, *self.input_shape)}
        return keras.Sequential(
            self.make_layers(keras.layers, first), name=f"securenn_{self.name.lower()}"
        )

    def measured(self) -> dict[str, Any] | None:
        """This network's entry of ``models/zoo.json`` (``None`` if never measured)."""
        return read_record().get(self.name)

    @property
    def measured_accuracy(self) -> float | None:
        """Our plaintext test accuracy of the committed weights, from ``models/zoo.json``."""
        entry = self.measured()
        return None if entry is None else float(entry["test_accuracy"])


def _relu(layers: Any, name: str) -> Any:
    return layers.Activation("relu", name=name)


def _network_a(layers: Any, first: dict[str, Any]) -> list[Any]:
    return [
        layers.Flatten(name="flatten", **first),
        layers.Dense(128, name="fc1"),
        _relu(layers, "relu1"),
        layers.Dense(128, name="fc2"),
        _relu(layers, "relu2"),
        layers.Dense(10, name="logit"),
    ]


def _conv_pool_net(conv1: int, conv2: int, hidden: int) -> Callable[..., list[Any]]:
    """Conv 5x5 -> ReLU -> MaxPool 2x2, twice, then Dense -> ReLU -> Dense(10) (B and C)."""

    def make(layers: Any, first: dict[str, Any]) -> list[Any]:
        return [
            layers.Conv2D(conv1, (5, 5), name="conv1", **first),
            _relu(layers, "relu1"),
            layers.MaxPooling2D((2, 2), name="pool1"),
            layers.Conv2D(conv2, (5, 5), name="conv2"),
            _relu(layers, "relu2"),
            layers.MaxPooling2D((2, 2), name="pool2"),
            layers.Flatten(name="flatten"),
            layers.Dense(hidden, name="fc1"),
            _relu(layers, "relu3"),
            layers.Dense(10, name="logit"),
        ]

    return make


def _network_d(layers: Any, first: dict[str, Any]) -> list[Any]:
    return [
        layers.Conv2D(5, (5, 5), strides=(2, 2), padding="same", name="conv1", **first),
        _relu(layers, "relu1"),
        layers.Flatten(name="flatten"),
        layers.Dense(100, name="fc1"),
        _relu(layers, "relu2"),
        layers.Dense(10, name="logit"),
    ]


_NETWORKS = (
    Network(
        name="tutorial",
        aliases=("conv_mnist",),
        layers_summary="3x (Conv 3x3 -> AvgPool 2x2 -> ReLU) with 10/32/64 channels, "
        "Flatten 64, Dense 64->10",
        source="TF Encrypted's private-prediction tutorial network (models/conv_mnist.py)",
        weights_file=conv_mnist.WEIGHTS_PATH.name,
        paper_accuracy=None,
        recipe=Recipe(epochs=80, learning_rate=3e-3, shift=2),
        make_layers=None,
    ),
    Network(
        name="A",
        aliases=("secureml",),
        layers_summary="Flatten 784, Dense 784->128, ReLU, Dense 128->128, ReLU, Dense 128->10",
        source=f"{_SECURENN}, network A (from SecureML, Mohassel and Zhang, IEEE S&P 2017)",
        weights_file="securenn-a-mnist.h5",
        paper_accuracy=0.934,
        recipe=Recipe(epochs=40, learning_rate=1e-3, shift=1),
        make_layers=_network_a,
    ),
    Network(
        name="B",
        aliases=("minionn",),
        layers_summary="Conv 5x5 1->16, ReLU, MaxPool 2x2, Conv 5x5 16->16, ReLU, MaxPool 2x2, "
        "Flatten 256, Dense 256->100, ReLU, Dense 100->10",
        source=f"{_SECURENN}, network B (from MiniONN, Liu, Juuti, Lu, Asokan, ACM CCS 2017)",
        weights_file="securenn-b-mnist.h5",
        paper_accuracy=0.9877,
        recipe=Recipe(epochs=60, learning_rate=2e-3, shift=2),
        make_layers=_conv_pool_net(16, 16, 100),
    ),
    Network(
        name="C",
        aliases=("lenet",),
        layers_summary="Conv 5x5 1->20, ReLU, MaxPool 2x2, Conv 5x5 20->50, ReLU, MaxPool 2x2, "
        "Flatten 800, Dense 800->500, ReLU, Dense 500->10",
        source=f"{_SECURENN}, network C (LeNet, LeCun, Bottou, Bengio, Haffner, Proc. IEEE 1998)",
        weights_file="securenn-c-mnist.h5",
        paper_accuracy=0.9915,
        recipe=Recipe(epochs=30, learning_rate=1e-3, shift=2),
        make_layers=_conv_pool_net(20, 50, 500),
    ),
    Network(
        name="D",
        aliases=("chameleon",),
        layers_summary="Conv 5x5 stride 2 1->5 padding same (14x14x5), ReLU, Flatten 980, "
        "Dense 980->100, ReLU, Dense 100->10",
        source=f"{_SECURENN}, network D (from Chameleon, Riazi et al., ACM AsiaCCS 2018)",
        weights_file="securenn-d-mnist.h5",
        paper_accuracy=0.99,
        recipe=Recipe(epochs=40, learning_rate=2e-3, shift=2),
        make_layers=_network_d,
    ),
)
_BY_KEY = {key.lower(): net for net in _NETWORKS for key in (net.name, *net.aliases)}


def names() -> tuple[str, ...]:
    """The canonical network names, in registry order."""
    return tuple(net.name for net in _NETWORKS)


def _described() -> str:
    return ", ".join(
        f"{net.name} ({', '.join(net.aliases)})" if net.aliases else net.name for net in _NETWORKS
    )


def get(name: str) -> Network:
    """The network called ``name`` or one of its aliases (case-insensitive).

    Raises :class:`UnknownModelError` (a ``ValueError``) listing the known names.
    """
    net = _BY_KEY.get(str(name).strip().lower())
    if net is None:
        raise UnknownModelError(f"unknown model {name!r}; choose one of: {_described()}")
    return net


def load(name: str, batch_size: int | None = 1) -> "tf_keras.Sequential":
    """Build network ``name`` for ``batch_size`` and load its committed weights.

    Raises ``FileNotFoundError`` if the weights were never trained (with the
    command that trains them) and ``ValueError`` if the file does not fit.
    """
    net = get(name)
    path = net.weights_path
    if not path.is_file():
        raise FileNotFoundError(
            f"weights of model {net.name} not found: {path.name}; "
            f"train them with: python -m models.train --model {net.name}"
        )
    if net.make_layers is None:
        return conv_mnist.load_model(path, batch_size)
    import h5py

    if not h5py.is_hdf5(path):
        raise ValueError(f"weights of model {net.name} ({path.name}) are not an HDF5 file")
    model = net.build(batch_size)
    try:
        model.load_weights(path)
    except (OSError, ValueError, KeyError) as exc:
        raise ValueError(
            f"cannot load {path.name} into model {net.name}: {exc}; "
            f"retrain with: python -m models.train --model {net.name} --overwrite"
        ) from exc
    return model


def read_record(path: str | os.PathLike[str] = RECORD_PATH) -> dict[str, dict[str, Any]]:
    """The measured figures per network name (empty if the file does not exist)."""
    path = Path(path)
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read {path.name}: {exc}; rerun python -m models.train") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{path.name} must hold a JSON object keyed by model name")
    return data


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file (ties a zoo.json entry to the weights it measured)."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()
