"""The fixed-point range check: refuse a model the ring would wrap, naming the layer.

tf-encrypted encodes every value in fixed point (SecureNN and Pond: base 3, |x| < 3^7;
ABY3: base 2, |x| < 2^11) and wraps silently outside: the prediction is then garbage with
no error. ``check_ranges`` runs before anything is shared: every layer's weights must be
inside the range, and every layer's output on a calibration batch (64 test digits when
the input holds 784 values) inside the range divided by a safety margin (the calibration
batch does not show the worst input). Average pooling is checked on its window sums,
which tf-encrypted computes before scaling.

Pond's ReLU is a degree-8 polynomial: its x^8 term leaves the range once |x| > 3^(7/8)
(about 2.6), which trained models pass (the tutorial's reach ~18). That is Pond by
design (an approximation), so it is logged as a warning naming the layer, not refused.
"""
from __future__ import annotations

import functools
import logging
import math
from typing import Any

import numpy as np

from harness.errors import InputError, UnsupportedModelError

logger = logging.getLogger(__name__)

#: Calibration activations must stay below the protocol's range divided by this.
RANGE_MARGIN = 4.0
CALIBRATION_SIZE = 64


@functools.lru_cache(maxsize=4)
def _digits(size: int) -> np.ndarray:
    from harness.inference.data import load_mnist  # noqa: PLC0415

    return load_mnist().x_test[:size]


def calibration_batch(shape: tuple[int, ...], size: int = CALIBRATION_SIZE) -> np.ndarray:
    """``size`` inputs of per-example ``shape``: MNIST test digits when ``shape`` holds 784
    values (28x28x1, 784, 28x28), else uniform noise in [0, 1) from a fixed seed."""
    shape = tuple(int(d) for d in shape)
    if math.prod(shape) == 784:
        return _digits(size).reshape(size, *shape).copy()
    logger.info("no digits of shape %s: calibrating on uniform noise in [0, 1)", shape)
    return np.random.default_rng(20190807).random((size, *shape), dtype=np.float32)


def check_ranges(model: Any, fixed_point: Any, protocol: str,
                 calibration: np.ndarray | None = None, margin: float = RANGE_MARGIN) -> None:
    """Refuse (before sharing) a model whose weights, or whose activations on a calibration
    batch, leave ``fixed_point``'s range |x| < max_abs (activations: with ``margin``):
    tf-encrypted's ring would wrap silently and predict garbage. Names the layer."""
    limit = float(fixed_point.max_abs)
    encoding = f"{protocol}'s fixed-point encoding (|x| < {limit:g})"
    for layer in model.layers:
        kind = type(layer).__name__
        for w in layer.get_weights():
            if not np.all(np.isfinite(w)):
                raise InputError(f"Model weights of layer {layer.name!r} ({kind}) contain NaN "
                                 "or inf; fix the model before sharing.")
            peak = float(np.max(np.abs(w))) if w.size else 0.0
            if peak >= limit:
                raise InputError(
                    f"Model weights of layer {layer.name!r} ({kind}) reach |w| = {peak:g}, "
                    f"outside {encoding}; the ring would wrap silently. Rescale the weights.")
    shape = tuple(int(d) for d in model.input_shape[1:])
    x = calibration_batch(shape) if calibration is None else np.asarray(calibration, np.float32)
    safe = limit / margin
    for layer in model.layers:
        kind = type(layer).__name__
        if protocol == "pond" and kind == "Activation" and \
                layer.get_config()["activation"] == "relu":
            _warn_pond_relu(layer, float(np.max(np.abs(x))) if x.size else 0.0, limit)
        x = np.asarray(layer(x, training=False))
        peak = float(np.max(np.abs(x))) if x.size else 0.0
        if kind == "AveragePooling2D":  # tf-encrypted sums the window, then scales
            peak *= math.prod(layer.get_config()["pool_size"])
        if not peak < safe:
            raise UnsupportedModelError(
                f"Layer {layer.name!r} ({kind}) reaches |x| = {peak:.4g} on {len(x)} "
                f"calibration inputs, beyond the safe range {safe:g} ({encoding}, margin "
                f"{margin:g}): the ring would wrap silently and predictions would be wrong. "
                "Rescale the inputs or weights (e.g. normalise the inputs to [0, 1]) or "
                "retrain with smaller activations.")


def _warn_pond_relu(layer: Any, peak_in: float, limit: float) -> None:
    if peak_in**8 >= limit:
        logger.warning(
            "pond: layer %r (%s) gets |x| up to %.3g on the calibration batch; Pond's "
            "polynomial ReLU computes x^8 = %.3g, outside its range |x| < %g, so its outputs "
            "will be far from ReLU's (use securenn or aby3 for exact ReLU)",
            layer.name, type(layer).__name__, peak_in, peak_in**8, limit)
