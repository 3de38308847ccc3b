"""In-process private prediction of the seed model, and refusal of bad input before sharing."""
from __future__ import annotations

import numpy as np
import pytest
import tf_encrypted as tfe

from harness.inference.data import load_mnist
from harness.inference.evaluate import fill_batch, timed_batches
from harness.results.metrics import compare
from harness.inference.private import (InputError, PrivateModel, UnsupportedModelError, check_images,
                             check_model, check_protocol, plaintext_predictor, protocol_names)
from models.conv_mnist import build_model, load_model

IMAGES = 16


@pytest.fixture(scope="module")
def split():
    data = load_mnist()
    return data.x_test[:IMAGES], data.y_test[:IMAGES]


@pytest.fixture(scope="module")
def keras_model():
    return load_model(batch_size=1)


@pytest.fixture(scope="module", params=protocol_names())
def private_model(request, keras_model):
    return PrivateModel(keras_model, request.param)


def test_private_logits_follow_plaintext(private_model, keras_model, split):
    images, labels = split
    private, _ = timed_batches(images, 1, private_model.predict)
    plain, _ = timed_batches(images, 1, plaintext_predictor(keras_model))
    result = compare(private, plain, labels)
    assert np.all(np.isfinite(private))
    if private_model.protocol_name == "pond":
        pytest.skip("Pond approximates ReLU: see test_pond_follows_its_polynomial_relu")
    assert result.argmax_agreement == 1.0
    bound = {"securenn": 0.1, "aby3": 0.01}[private_model.protocol_name]
    assert result.max_abs_err < bound
    assert private_model.timing.first_call_s > 0


# Pond's ReLU (pond.py): a degree-8 Chebyshev polynomial, coefficients of x^0, x^1, x^2, x^4, ...
POND_RELU = (0.44015372000819103, 0.5, 0.11217537671414643, -0.0013660836712429923,
             9.009136367360004e-06, -2.1097433984e-08)


def pond_relu(x: np.ndarray) -> np.ndarray:
    x2 = x * x
    w = POND_RELU
    return w[0] + w[1] * x + w[2] * x2 + w[3] * x2**2 + w[4] * x2**3 + w[5] * x2**4


def test_pond_follows_its_polynomial_relu(keras_model, split):
    """Pond computes the model with its polynomial in place of ReLU. With the trained
    weights, pre-activations reach ~18 and x^8 leaves the fixed-point range (wraps), so
    the check uses the same network with weights halved (intermediates stay below ~5)."""
    import tf_keras as keras

    small = build_model(batch_size=1)
    small.set_weights([w * 0.5 for w in keras_model.get_weights()])
    model = PrivateModel(small, "pond")
    for image in split[0][:4]:
        expected = image[None]
        for layer in small.layers:
            is_relu = isinstance(layer, keras.layers.Activation)
            expected = pond_relu(expected) if is_relu else layer(expected).numpy()
        np.testing.assert_allclose(model.predict(image[None]), expected, atol=0.05)


def test_prediction_is_compiled_once(private_model, split):
    images, _ = split
    private_model.predict(fill_batch(images, 1))
    first = private_model.timing.first_call_s
    private_model.predict(fill_batch(images[1:], 1))
    assert private_model.timing.first_call_s == first  # built and traced once


def test_unknown_protocol_names_the_choices():
    with pytest.raises(InputError, match="pond, securenn, aby3"):
        check_protocol("spdz")


@pytest.mark.parametrize("layer", ["padded_maxpool", "softmax", "batchnorm"])
def test_unsupported_layer_is_named(layer):
    import tf_keras as keras

    first = keras.layers.Conv2D(4, (3, 3), batch_input_shape=(1, 28, 28, 1))
    extra = {
        "padded_maxpool": keras.layers.MaxPooling2D((3, 3), padding="same", name="the_pool"),
        "softmax": keras.layers.Dense(10, activation="softmax", name="the_pool"),
        "batchnorm": keras.layers.BatchNormalization(name="the_pool"),
    }[layer]
    model = keras.Sequential([first, extra])
    with pytest.raises(UnsupportedModelError, match="the_pool") as err:
        check_model(model, "securenn")
    assert "Supported" in str(err.value) or "supported" in str(err.value)


def test_maxpool_is_refused_under_pond_only():
    """SecureNN max-pools through its own maxpool2d (harness.tfe.layers); Pond has none."""
    import tf_keras as keras

    model = keras.Sequential([keras.layers.Conv2D(4, (3, 3), batch_input_shape=(1, 28, 28, 1)),
                              keras.layers.MaxPooling2D((2, 2))])
    with pytest.raises(UnsupportedModelError, match="MaxPooling2D"):
        check_model(model, "pond")
    check_model(model, "securenn")
    check_model(model, "aby3")


def test_variable_batch_size_is_refused():
    with pytest.raises(UnsupportedModelError, match="batch_input_shape"):
        check_model(build_model(batch_size=None), "securenn")


@pytest.mark.parametrize(("images", "message"), [
    (np.zeros((1, 28, 28)), "shape"),
    (np.zeros((2, 28, 28, 1)), "shape"),
    (np.full((1, 28, 28, 1), "x"), "numeric"),
    (np.full((1, 28, 28, 1), np.nan), "NaN"),
    (np.full((1, 28, 28, 1), np.inf), "NaN or inf"),
    (np.full((1, 28, 28, 1), 3000.0), "fixed-point range"),
    (np.full((1, 28, 28, 1), -2187.0), "fixed-point range"),
])
def test_bad_images_are_refused(images, message):
    from harness.inference.private import FixedPoint

    with pytest.raises(InputError, match=message):
        check_images(images, 1, FixedPoint(3, 7, 8))


def test_bad_input_refused_before_any_sharing(monkeypatch, keras_model):
    """Out-of-range weights fail before tf-encrypted clones (shares) the model."""
    def no_sharing(_model):
        raise AssertionError("sharing started")

    monkeypatch.setattr(tfe.keras.models, "clone_model", no_sharing)
    weights = keras_model.get_weights()
    big = build_model(batch_size=1)
    big.set_weights([w * 5000 for w in weights])
    with pytest.raises(InputError, match="Model weights"):
        PrivateModel(big, "securenn")
    with pytest.raises(InputError, match="Unknown protocol"):
        PrivateModel(keras_model, "nope")


def test_predict_refuses_bad_batch(private_model):
    with pytest.raises(InputError, match="NaN"):
        private_model.predict(np.full((1, 28, 28, 1), np.nan, np.float32))
