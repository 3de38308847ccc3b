"""Your model, not only the tutorial's: model files in, converted, checked, shared.

Real models trained a little on the offline digits, real files (legacy Keras HDF5, Keras 3
``.keras`` written by Keras 3 itself in a subprocess), real secret sharing (SecureNN
in-process).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import zipfile

import numpy as np
import pytest
import tf_encrypted as tfe

from harness.errors import InputError, UnsupportedModelError
from harness.inference import models as hm
from harness.inference.data import load_mnist
from harness.inference.private import PrivateModel, check_images

DIGITS = 20
pytestmark = pytest.mark.filterwarnings("ignore:You are saving your model as an HDF5 file")


@pytest.fixture(scope="module")
def mnist():
    return load_mnist()


@pytest.fixture(scope="module")
def keras():
    import tf_keras

    return tf_keras


def _train(model, keras, mnist, epochs=2, flat=False):
    x = mnist.x_train[:2000]
    model.compile(keras.optimizers.Adam(3e-3),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x.reshape(len(x), -1) if flat else x, mnist.y_train[:2000], epochs=epochs,
              batch_size=64, verbose=0)
    return model


@pytest.fixture(scope="module")
def h5_model(tmp_path_factory, keras, mnist):
    """Conv2D, BatchNormalization, ReLU, Dropout, MaxPooling2D, Flatten, Dense: saved whole."""
    keras.utils.set_random_seed(3)
    layers = keras.layers
    model = keras.Sequential([
        layers.Conv2D(6, (3, 3), input_shape=(28, 28, 1), name="conv"),
        layers.BatchNormalization(name="bn"),
        layers.ReLU(name="relu"),
        layers.Dropout(0.25, name="drop"),
        layers.MaxPooling2D((2, 2), name="pool"),
        layers.Flatten(name="flat"),
        layers.Dense(10, name="logits"),
    ])
    _train(model, keras, mnist, epochs=1)
    path = tmp_path_factory.mktemp("h5") / "m.h5"
    model.save(path)
    return path, model


def _agreement(private: np.ndarray, plain: np.ndarray) -> float:
    return float(np.mean(np.argmax(private, 1) == np.argmax(plain, 1)))


def test_h5_model_is_converted_and_agrees_under_securenn(h5_model, mnist):
    path, original = h5_model
    conversion = hm.load(path, DIGITS)
    steps = " | ".join(conversion.steps)
    assert "folded BatchNormalization 'bn' into Conv2D 'conv'" in steps
    assert "removed Dropout 'drop'" in steps
    kinds = [type(layer).__name__ for layer in conversion.model.layers]
    assert kinds == ["Conv2D", "Activation", "MaxPooling2D", "Flatten", "Dense"]
    assert conversion.model.input_shape == (DIGITS, 28, 28, 1)
    assert conversion.max_abs_diff < 1e-4

    images = mnist.x_test[:DIGITS]
    plain = original.predict(images, verbose=0)
    private = PrivateModel(conversion.model, "securenn").predict(images)
    assert _agreement(private, plain) == 1.0
    assert np.max(np.abs(private - plain)) < 0.1


KERAS3_SCRIPT = textwrap.dedent("""
    import os, sys
    import numpy as np
    import keras
    from keras import layers
    assert keras.__version__.startswith("3."), keras.__version__
    out = sys.argv[1]
    data = np.load(os.path.join(out, "digits.npz"))
    keras.utils.set_random_seed(5)
    seq = keras.Sequential([
        keras.Input((28, 28, 1)),
        layers.Conv2D(4, 3, name="conv"),
        layers.BatchNormalization(name="bn"),
        layers.ReLU(name="relu"),
        layers.Dropout(0.2, name="drop"),
        layers.MaxPooling2D(2, name="pool"),
        layers.Flatten(name="flat"),
        layers.Dense(16, activation="relu", name="hidden"),
        layers.Dense(10, name="logits"),
    ])
    seq.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    seq.fit(data["x"], data["y"], epochs=1, batch_size=64, verbose=0)
    seq.save(os.path.join(out, "seq.keras"))
    seq.save(os.path.join(out, "seq.h5"))  # Keras 3's legacy HDF5: a Keras 3 config inside
    inp = keras.Input((784,))
    h = layers.Dense(32, activation="relu", name="d1")(inp)
    fun = keras.Model(inp, layers.Dense(10, name="d2")(h))
    fun.save(os.path.join(out, "chain.keras"))
    a, b = layers.Dense(8, name="left")(inp), layers.Dense(8, name="right")(inp)
    keras.Model(inp, layers.Dense(10)(layers.Add(name="join")([a, b]))).save(
        os.path.join(out, "branch.keras"))
    np.savez(os.path.join(out, "logits.npz"), seq=seq.predict(data["probe"], verbose=0),
             chain=fun.predict(data["probe"].reshape(-1, 784), verbose=0))
""")


@pytest.fixture(scope="module")
def keras3_files(tmp_path_factory, mnist):
    """Models written by Keras 3 itself (TensorFlow's default Keras), not by tf_keras."""
    out = tmp_path_factory.mktemp("keras3")
    np.savez(out / "digits.npz", x=mnist.x_train[:1000], y=mnist.y_train[:1000],
             probe=mnist.x_test[:64])
    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    env["CUDA_VISIBLE_DEVICES"] = ""
    run = subprocess.run([sys.executable, "-c", KERAS3_SCRIPT, str(out)], env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    return out, np.load(out / "logits.npz")


def test_keras3_archive_is_rebuilt_in_legacy_keras(keras3_files, mnist):
    out, logits = keras3_files
    config = json.loads(zipfile.ZipFile(out / "seq.keras").read("config.json"))
    assert config["class_name"] == "Sequential"  # really Keras 3's format
    conversion = hm.load(out / "seq.keras", 4)
    kinds = [type(layer).__name__ for layer in conversion.model.layers]
    assert kinds == ["Conv2D", "Activation", "MaxPooling2D", "Flatten", "Dense", "Activation",
                     "Dense"]
    ours = conversion.model.predict(mnist.x_test[:64], verbose=0)
    np.testing.assert_allclose(ours, logits["seq"], atol=1e-4)
    assert _agreement(ours, logits["seq"]) == 1.0
    from_h5 = hm.load_model(out / "seq.h5", 4).predict(mnist.x_test[:64], verbose=0)
    np.testing.assert_allclose(from_h5, logits["seq"], atol=1e-4)


def test_keras3_functional_chain_converts_and_branching_is_refused(keras3_files, mnist):
    out, logits = keras3_files
    model = hm.load_model(out / "chain.keras", 8)
    assert model.input_shape == (8, 784)
    np.testing.assert_allclose(model.predict(mnist.x_test[:64].reshape(64, 784), verbose=0),
                               logits["chain"], atol=1e-4)
    with pytest.raises(UnsupportedModelError, match="'join' \\(Add\\) joins 2 branches"):
        hm.load_model(out / "branch.keras", 1)


def test_flat_input_model_runs_privately(tmp_path, keras, mnist):
    keras.utils.set_random_seed(4)
    model = keras.Sequential([keras.layers.Dense(32, activation="relu", input_shape=(784,)),
                              keras.layers.Dense(10)])
    _train(model, keras, mnist, epochs=1, flat=True)
    model.save(tmp_path / "flat.h5")
    loaded = hm.load_model(tmp_path / "flat.h5", DIGITS)
    private = PrivateModel(loaded, "securenn")
    images = mnist.x_test[:DIGITS].reshape(DIGITS, 784)
    with pytest.raises(InputError, match=r"input shape \(784,\)"):
        private.predict(mnist.x_test[:DIGITS])
    assert _agreement(private.predict(images), model.predict(images, verbose=0)) == 1.0


def test_colour_input_model_runs_privately(tmp_path, keras):
    """A 32x32x3 input: calibrated on seeded noise in [0, 1), shared, predicted."""
    keras.utils.set_random_seed(6)
    L = keras.layers
    model = keras.Sequential([L.Conv2D(4, (3, 3), strides=(2, 2), activation="relu",
                                       input_shape=(32, 32, 3)),
                              L.AveragePooling2D((3, 3)), L.Flatten(), L.Dense(10)])
    model.save(tmp_path / "colour.keras")  # tf_keras' own .keras: a Keras 2 config inside
    loaded = hm.load_model(tmp_path / "colour.keras", 4)
    assert loaded.input_shape == (4, 32, 32, 3)
    images = np.random.default_rng(1).random((4, 32, 32, 3), dtype=np.float32)
    private = PrivateModel(loaded, "securenn").predict(images)
    plain = model.predict(images, verbose=0)
    assert _agreement(private, plain) == 1.0 and np.max(np.abs(private - plain)) < 0.05


def test_functional_chain_becomes_sequential(tmp_path, keras, mnist):
    inp = keras.Input((28, 28, 1))
    x = keras.layers.Conv2D(4, (3, 3), activation="relu")(inp)
    x = keras.layers.AveragePooling2D((2, 2))(x)
    x = keras.layers.Flatten()(keras.layers.Dropout(0.5)(x))
    model = keras.Model(inp, keras.layers.Dense(10)(x))
    model.save(tmp_path / "chain.h5")
    converted = hm.load_model(tmp_path / "chain.h5", 2)
    assert isinstance(converted, keras.Sequential)
    probe = mnist.x_test[:16]
    np.testing.assert_allclose(converted.predict(probe, verbose=0),
                               model.predict(probe, verbose=0), atol=1e-5)
    model.save(tmp_path / "saved_model")  # a SavedModel directory, as tf_keras writes it
    from_dir = hm.load_model(tmp_path / "saved_model", 2)
    np.testing.assert_allclose(from_dir.predict(probe, verbose=0),
                               model.predict(probe, verbose=0), atol=1e-5)
    import tensorflow as tf

    tf.saved_model.save(tf.Module(), str(tmp_path / "bare"))
    with pytest.raises(InputError, match="bare: a SavedModel without Keras metadata"):
        hm.load_model(tmp_path / "bare", 1)


def test_branching_functional_is_refused_naming_the_layer(tmp_path, keras):
    inp = keras.Input((784,))
    left, right = keras.layers.Dense(8)(inp), keras.layers.Dense(8)(inp)
    joined = keras.layers.Concatenate(name="merge")([left, right])
    keras.Model(inp, keras.layers.Dense(10)(joined)).save(tmp_path / "branch.h5")
    with pytest.raises(UnsupportedModelError, match=r"branch\.h5: layer 'merge'"):
        hm.load_model(tmp_path / "branch.h5", 1)


def test_layers_without_a_private_counterpart_are_refused(tmp_path, keras):
    L = keras.layers
    cases = {
        "leaky": [L.Flatten(input_shape=(28, 28, 1)), L.Dense(8), L.LeakyReLU(name="leaky")],
        "late_bn": [L.Flatten(input_shape=(28, 28, 1)), L.Dense(8, activation="relu"),
                    L.BatchNormalization(name="late_bn")],
        "relu6": [L.Flatten(input_shape=(28, 28, 1)), L.ReLU(max_value=6.0, name="relu6")],
    }
    class Doubler(keras.layers.Layer):
        def call(self, x):
            return 2 * x

    cases["mine"] = [L.Flatten(input_shape=(28, 28, 1)), Doubler(name="mine")]
    for name, layers in cases.items():
        keras.Sequential(layers).save(tmp_path / f"{name}.h5")
        with pytest.raises(UnsupportedModelError, match=f"layer '{name}'"):
            hm.load_model(tmp_path / f"{name}.h5", 1)


def test_bad_files_are_refused_naming_the_file(tmp_path, keras, h5_model):
    garbage = tmp_path / "garbage.h5"
    garbage.write_bytes(b"\x89HDF\r\n\x1a\n" + os.urandom(512))
    truncated = tmp_path / "truncated.keras"
    data = (h5_model[0]).read_bytes()
    truncated.write_bytes(b"PK\x03\x04" + data[:300])
    nozip = tmp_path / "empty.keras"
    with zipfile.ZipFile(nozip, "w") as archive:
        archive.writestr("metadata.json", "{}")
    weights_only = tmp_path / "weights.h5"
    h5_model[1].save_weights(weights_only)
    onnx = tmp_path / "m.onnx"
    onnx.write_bytes(b"\x08\x07")
    cases = [(garbage, "corrupt"), (truncated, "not a Keras archive"),
             (nozip, "lacks config.json"), (weights_only, "weights only"),
             (onnx, "unknown model file type '.onnx'"),
             (tmp_path / "missing.h5", "no such model file or zoo model")]
    for path, message in cases:
        with pytest.raises(InputError, match=message) as err:
            hm.load_model(path, 1)
        assert path.name in str(err.value)


def test_out_of_range_models_are_refused_before_sharing(monkeypatch, keras, h5_model):
    def no_sharing(_model):
        raise AssertionError("sharing started")

    monkeypatch.setattr(tfe.keras.models, "clone_model", no_sharing)
    model = hm.load_model(h5_model[0], 1)
    kernel, bias = model.get_layer("logits").get_weights()
    huge = kernel.copy()
    huge[0, 0] = 3000.0  # beyond SecureNN's |x| < 3^7 = 2187
    model.get_layer("logits").set_weights([huge, bias])
    with pytest.raises(InputError, match="Model weights of layer 'logits'"):
        PrivateModel(model, "securenn")
    # weights in range (1000 < 3^7), but the activations they make are not (> 3^7 / 4)
    model.get_layer("logits").set_weights([kernel, bias + 1000.0])
    with pytest.raises(UnsupportedModelError, match="Layer 'logits' .* wrap"):
        PrivateModel(model, "securenn")
    # ABY3's range is 2^11: the same model is refused there too, naming the layer
    with pytest.raises(UnsupportedModelError, match="Layer 'logits'"):
        PrivateModel(model, "aby3")


def test_images_follow_the_model_input_shape():
    from harness.inference.private import FixedPoint

    fp = FixedPoint(3, 7, 8)
    assert check_images(np.zeros((2, 32, 32, 3)), 2, fp, (32, 32, 3)).dtype == np.float32
    with pytest.raises(InputError, match=r"\(2, 784\)"):
        check_images(np.zeros((2, 28, 28, 1)), 2, fp, (784,))


def test_load_data(tmp_path):
    good = tmp_path / "d.npz"
    np.savez(good, x=np.zeros((3, 784), np.uint8), y=np.arange(3))
    x, y = hm.load_data(good, (784,))
    assert x.dtype == np.float32 and y.dtype == np.int64 and x.shape == (3, 784)
    np.savez(tmp_path / "nolabels.npz", x=np.zeros((3, 784)))
    np.savez(tmp_path / "short.npz", x=np.zeros((3, 784)), y=np.arange(2))
    np.save(tmp_path / "single.npy", np.zeros(3))
    cases = [("nolabels.npz", "lacks array\\(s\\) y"), ("short.npz", "one integer label"),
             ("single.npy", "cannot read it as .npz|single array"), ("none.npz", "no such")]
    for name, message in cases:
        with pytest.raises(InputError, match=message):
            hm.load_data(tmp_path / name)
    with pytest.raises(InputError, match=r"takes \(28, 28, 1\)"):
        hm.load_data(good, (28, 28, 1))
