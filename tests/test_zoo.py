"""The model zoo (models.zoo): names, documented shapes, committed weights and their accuracy.

Only tf_keras and the offline MNIST loader are needed; tf-encrypted is not activated here.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")  # before TensorFlow loads (legacy Keras 2)

from models import zoo  # noqa: E402

from harness.inference.data import load_mnist  # noqa: E402  (no TensorFlow, no tf-encrypted)

REPO = Path(__file__).resolve().parents[1]

#: Output shape (without the batch axis) of every layer, and the parameter count.
EXPECTED = {
    "tutorial": (
        [(26, 26, 10), (13, 13, 10), (13, 13, 10), (11, 11, 32), (5, 5, 32), (5, 5, 32),
         (3, 3, 64), (1, 1, 64), (1, 1, 64), (64,), (10,)],
        22_158,
    ),
    "A": ([(784,), (128,), (128,), (128,), (128,), (10,)], 118_282),
    "B": (
        [(24, 24, 16), (24, 24, 16), (12, 12, 16), (8, 8, 16), (8, 8, 16), (4, 4, 16),
         (256,), (100,), (100,), (10,)],
        33_542,
    ),
    "C": (
        [(24, 24, 20), (24, 24, 20), (12, 12, 20), (8, 8, 50), (8, 8, 50), (4, 4, 50),
         (800,), (500,), (500,), (10,)],
        431_080,
    ),
    "D": ([(14, 14, 5), (14, 14, 5), (980,), (100,), (100,), (10,)], 99_240),
}
#: Layer classes TF Encrypted 0.9.1's Keras cloning maps without conversion.
SHAREABLE = {"Conv2D", "Dense", "AveragePooling2D", "MaxPooling2D", "Activation", "ReLU",
             "Flatten", "Reshape"}


@pytest.fixture(scope="module")
def mnist():
    return load_mnist()


def test_import_does_not_import_tensorflow() -> None:
    code = "import sys, models.zoo; sys.exit('tensorflow' in sys.modules)"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    assert subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env).returncode == 0


def test_names_and_aliases() -> None:
    assert zoo.names() == ("tutorial", "A", "B", "C", "D")
    for alias, name in [("secureml", "A"), ("minionn", "B"), ("LeNet", "C"),
                        ("chameleon", "D"), ("d", "D"), ("conv_mnist", "tutorial")]:
        assert zoo.get(alias).name == name
    assert zoo.get("tutorial").paper_accuracy is None
    assert [zoo.get(n).paper_accuracy for n in "ABCD"] == [0.934, 0.9877, 0.9915, 0.99]


def test_unknown_name_lists_the_zoo() -> None:
    with pytest.raises(ValueError, match=r"unknown model 'E'; choose one of: tutorial .*"
                       r"A \(secureml\), B \(minionn\), C \(lenet\), D \(chameleon\)"):
        zoo.get("E")
    with pytest.raises(zoo.UnknownModelError):
        zoo.load("resnet")


def test_train_cli_rejects_unknown_model_in_one_line() -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "models.train", "--model", "E"], cwd=REPO,
                          env=env, capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].endswith(
        "unknown model 'E'; choose one of: tutorial (conv_mnist), A (secureml), B (minionn), "
        "C (lenet), D (chameleon)")


@pytest.mark.parametrize("batch_size", [1, 4])
@pytest.mark.parametrize("name", list(EXPECTED))
def test_documented_shapes_and_parameters(name: str, batch_size: int) -> None:
    model = zoo.get(name).build(batch_size)
    shapes, params = EXPECTED[name]
    assert [tuple(layer.output_shape) for layer in model.layers] == [
        (batch_size, *s) for s in shapes
    ]
    assert model.count_params() == params
    assert model.layers[0].get_config()["batch_input_shape"] == (batch_size, 28, 28, 1)
    assert {type(layer).__name__ for layer in model.layers} <= SHAREABLE
    assert model.layers[-1].get_config()["activation"] == "linear"  # logits, no softmax


@pytest.mark.parametrize("name", list(EXPECTED))
def test_committed_weights_reach_the_recorded_accuracy(name: str, mnist) -> None:
    net = zoo.get(name)
    entry = net.measured()
    assert entry is not None, f"no zoo.json entry; run python -m models.train --model {name}"
    assert entry["weights_sha256"] == zoo.file_sha256(net.weights_path), "zoo.json is stale"
    model = zoo.load(name, batch_size=None)
    logits = model.predict(mnist.x_test, batch_size=250, verbose=0)
    accuracy = float(np.mean(np.argmax(logits, axis=1) == mnist.y_test))
    assert accuracy >= net.measured_accuracy - 0.01
    assert net.measured_accuracy >= 0.9
    # Comfortably inside the fixed-point ranges (SecureNN |x| < 3^7, ABY3 |x| < 2^11).
    assert entry["max_abs_activation"] < 2**11 / 8 and entry["max_abs_weight"] < 2**11 / 8


def test_fixed_batch_load_predicts_like_variable_batch(mnist) -> None:
    x = mnist.x_test[:4]
    for name in ("A", "D"):
        fixed = zoo.load(name, batch_size=4).predict(x, verbose=0)
        np.testing.assert_allclose(fixed, zoo.load(name, None).predict(x, verbose=0), atol=1e-5)


def test_missing_or_foreign_weights_say_what_to_do(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(zoo, "HERE", tmp_path)
    with pytest.raises(FileNotFoundError, match="python -m models.train --model B"):
        zoo.load("minionn")
    (tmp_path / zoo.get("B").weights_file).write_bytes(b"not hdf5")
    with pytest.raises(ValueError, match="not an HDF5 file"):
        zoo.load("B")
