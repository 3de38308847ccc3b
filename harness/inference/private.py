"""Secret-share a Keras model under a TF Encrypted protocol and predict privately.

One ``PrivateModel`` = one protocol instance, one shared copy of the weights and
one compiled (``tfe.function``) prediction step for a fixed batch size. The
input is secret-shared by the ``prediction-client`` player and the logits are
reconstructed on that player only (``define_output``): the servers never see
the plaintext image or the result.
"""
from __future__ import annotations

import functools
import logging
import time
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from harness.tfe import activate as _activate_tfe

tfe = _activate_tfe()  # this layer runs tf-encrypted: the boundary goes first

import tensorflow as tf  # noqa: E402

logger = logging.getLogger(__name__)

from harness.names import CLIENT, PLAYERS, SERVERS  # noqa: E402,F401  (re-exported)

from harness.names import PROTOCOLS as _PROTOCOL_NAMES  # noqa: E402
from harness.tfe import protocols as _protocols  # noqa: E402
from harness.inference.convert import layer_problem  # noqa: E402
from harness.inference.ranges import check_ranges  # noqa: E402
from harness.tfe.tracing import compile_step, fixed_layout  # noqa: E402

# name -> factory of the default (tuned) protocol instance
PROTOCOLS: dict[str, Callable[[], Any]] = {
    name: functools.partial(_protocols.make, name) for name in _PROTOCOL_NAMES}

# Keras layer classes tf-encrypted can share, per protocol. Pond has no max pooling and
# no relu_with_cmp (tf-encrypted's ReLU layer); SecureNN's max pooling runs through
# harness.tfe.layers. harness.inference.models converts ReLU to Activation("relu").
_COMMON_LAYERS = frozenset(
    {"Conv2D", "Dense", "AveragePooling2D", "Activation", "Flatten", "Reshape", "InputLayer"}
)
SUPPORTED_LAYERS: dict[str, frozenset[str]] = {
    "pond": _COMMON_LAYERS,
    "securenn": _COMMON_LAYERS | {"MaxPooling2D", "ReLU"},
    "aby3": _COMMON_LAYERS | {"MaxPooling2D", "ReLU"},
}
SUPPORTED_ACTIVATIONS = frozenset({"relu", "linear"})
# Layers harness.inference.models.load_model converts (folds, removes or rewrites).
_CONVERTED = frozenset({"BatchNormalization", "ReLU", "Dropout", "SpatialDropout2D",
                        "GaussianNoise", "GaussianDropout", "AlphaDropout"})


from harness.errors import InputError, UnsupportedModelError  # noqa: E402,F401  (re-exported)


@dataclass(frozen=True)
class FixedPoint:
    """A protocol's fixed-point encoding: values ``|x| < base**integral``, step ``base**-fractional``."""

    base: int
    integral: int
    fractional: int

    @property
    def max_abs(self) -> float:
        return float(self.base**self.integral)

    @property
    def resolution(self) -> float:
        return float(self.base) ** -self.fractional

    @classmethod
    def of(cls, protocol: Any) -> "FixedPoint":
        cfg = protocol.fixedpoint_config
        return cls(cfg.scaling_base, cfg.precision_integral, cfg.precision_fractional)


def protocol_names() -> tuple[str, ...]:
    return tuple(PROTOCOLS)


def check_protocol(name: str) -> str:
    """Normalise and validate a protocol name."""
    key = name.strip().lower()
    if key not in PROTOCOLS:
        raise InputError(
            f"Unknown protocol {name!r}; choose one of: {', '.join(PROTOCOLS)}."
        )
    return key


def check_model(model: tf.keras.Model, protocol: str) -> None:
    """Refuse models tf-encrypted cannot share under ``protocol``, naming the layer."""
    protocol = check_protocol(protocol)
    supported = SUPPORTED_LAYERS[protocol]
    if not isinstance(model, tf.keras.Sequential):
        raise UnsupportedModelError(
            f"tf-encrypted can only share Sequential models, got {type(model).__name__}."
        )
    for layer in model.layers:
        kind = type(layer).__name__
        if kind not in supported:
            raise UnsupportedModelError(
                f"Layer {layer.name!r} ({kind}) cannot be shared under {protocol}. "
                f"Supported layers: {', '.join(sorted(supported - {'InputLayer'}))}."
                + (" Load the model with harness.inference.models.load_model, which "
                   f"converts {kind} for you." if kind in _CONVERTED else "")
            )
        activation = getattr(layer, "activation", None)
        act_name = getattr(activation, "__name__", None)
        if act_name is not None and act_name not in SUPPORTED_ACTIVATIONS:
            raise UnsupportedModelError(
                f"Layer {layer.name!r} uses activation {act_name!r}; supported under "
                f"{protocol}: {', '.join(sorted(SUPPORTED_ACTIVATIONS))}."
                + (" A final softmax does not change the argmax: remove it and compare "
                   "logits." if act_name == "softmax" else "")
            )
        problem = layer_problem(layer)
        if problem:
            raise UnsupportedModelError(f"Layer {layer.name!r} ({kind}) {problem}")
    batch = model.layers[0].input_shape[0] if model.layers else None
    if batch is None:
        raise UnsupportedModelError(
            "tf-encrypted needs a fixed batch size: build the first layer with "
            "batch_input_shape=(B, ...) (models.conv_mnist.build_model(batch_size=B))."
        )


def check_values(name: str, values: np.ndarray, fp: FixedPoint) -> None:
    """Refuse NaN/inf and values the fixed-point ring cannot hold (it would wrap silently)."""
    if not np.all(np.isfinite(values)):
        raise InputError(f"{name} contains NaN or inf; clean the data before sharing.")
    peak = float(np.max(np.abs(values))) if values.size else 0.0
    if peak >= fp.max_abs:
        raise InputError(
            f"{name} has |value| up to {peak:g}, outside the fixed-point range |x| < "
            f"{fp.max_abs:g} (base {fp.base}, {fp.integral} integral digits); the ring would "
            "wrap silently. Rescale the inputs or weights."
        )


def check_images(images: Any, batch_size: int, fp: FixedPoint,
                 input_shape: tuple[int, ...] = (28, 28, 1)) -> np.ndarray:
    """Validate a batch of inputs for a model taking ``input_shape`` per example (the
    tutorial's 28x28x1 unless given); returns it as float32."""
    arr = np.asarray(images)
    if arr.dtype.kind not in "fiu":
        raise InputError(f"Images must be numeric, got dtype {arr.dtype}.")
    expected = (batch_size, *(int(d) for d in input_shape))
    if arr.shape != expected:
        raise InputError(
            f"Images must have shape {expected} (a batch of {batch_size}, then the model's "
            f"input shape {tuple(expected[1:])}), got {arr.shape}."
        )
    arr = arr.astype(np.float32)
    check_values("Image batch", arr, fp)
    return arr


def activate(config: Any, protocol: str, model: tf.keras.Model, variant: str = "tuned",
             changes: Any = None) -> tuple[Any, FixedPoint]:
    """Make ``protocol`` (its ``variant``/``changes``, ``harness.tfe.protocols``)
    tf-encrypted's current one on ``config`` and check that the model's weights fit its
    fixed-point range (weights, and every layer's activations on a calibration batch,
    ``ranges.check_ranges``); returns the protocol and its encoding."""
    tfe.set_config(config)  # resets the protocol: config first
    instance = _protocols.make(protocol, variant, changes)
    tfe.set_protocol(instance)
    fixed_point = FixedPoint.of(instance)
    check_ranges(model, fixed_point, protocol)
    return instance, fixed_point


@dataclass
class Timing:
    """Wall-clock seconds of the first (build + trace) call."""

    first_call_s: float = float("nan")


class PrivateModel:
    """A Keras Sequential model secret-shared under one protocol, compiled once."""

    def __init__(self, model: tf.keras.Model, protocol: str = "securenn",
                 cluster: Any = None, variant: str = "tuned", changes: Any = None) -> None:
        """``cluster``: a started ``harness.net.cluster.Cluster`` (None: all players
        in-process); ``variant``/``changes``: stock or tuned protocol code
        (``harness.tfe.protocols``)."""
        self.protocol_name = check_protocol(protocol)
        check_model(model, self.protocol_name)
        self.batch_size = int(model.layers[0].input_shape[0])
        self.input_shape = tuple(int(d) for d in model.input_shape)
        self.cluster = cluster
        self.config = cluster.connect() if cluster is not None else tfe.LocalConfig(list(PLAYERS))
        self.variant = variant
        self.protocol, self.fixed_point = activate(self.config, self.protocol_name, model,
                                                   variant, changes)
        self.timing = Timing()
        with tf.name_scope(f"share-{self.protocol_name}"):
            self._shared = tfe.keras.models.clone_model(model)
        forget_memo()
        self._step = self._make_step()

    def _make_step(self) -> Callable[[tf.Tensor], Any]:
        shared = self._shared

        @compile_step
        def step(images: tf.Tensor) -> tf.Tensor:
            x = tfe.define_private_input(CLIENT, lambda: images)
            logits = shared(x)
            revealed: list[tf.Tensor] = []

            def to_client(plain: tf.Tensor) -> None:
                revealed.append(tf.identity(plain))

            tfe.define_output(CLIENT, [logits], to_client)
            return revealed[0]

        return step

    def zeros(self) -> np.ndarray:
        """A batch of zeros of the model's input shape (e.g. to trace the first call)."""
        return np.zeros(self.input_shape, np.float32)

    def predict(self, images: Any) -> np.ndarray:
        """Private logits of one batch (exactly ``batch_size`` images)."""
        arr = check_images(images, self.batch_size, self.fixed_point, self.input_shape[1:])
        first = np.isnan(self.timing.first_call_s)
        if first:  # tracing uses tf-encrypted's global config and protocol: make them ours
            tfe.set_config(self.config)
            tfe.set_protocol(self.protocol)
        start = time.perf_counter()
        with self.cluster.guard() if self.cluster is not None else nullcontext(), \
                fixed_layout() if first else nullcontext():  # the same graph every run
            result = self._step(tf.constant(arr)).numpy()
        if first:
            forget_memo()
            self.timing.first_call_s = time.perf_counter() - start
            logger.info("%s: first call (build + trace) %.2f s",
                        self.protocol_name, self.timing.first_call_s)
        return result


def forget_memo() -> None:
    """Empty tf-encrypted's global memo of protocol ops (``protocol.nodes``), which it
    never empties: sharing a model runs an eager forward pass whose tensors the memo
    then keeps alive for good (SecureNN batch 32, stock: about 1.4 GB per model). Its
    entries only serve the graph being built, so a model drops them once it is shared
    and once it is traced."""
    from tf_encrypted.protocol import protocol as _tfe_protocol  # noqa: PLC0415

    _tfe_protocol.nodes.clear()


def plaintext_predictor(model: tf.keras.Model) -> Callable[[np.ndarray], np.ndarray]:
    """The plaintext baseline: the same Keras model, compiled once with ``tf.function``."""
    fn = tf.function(lambda x: model(x, training=False))

    def predict(images: np.ndarray) -> np.ndarray:
        return fn(tf.constant(images, dtype=tf.float32)).numpy()

    return predict
