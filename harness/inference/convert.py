"""Make a real Keras model shareable by tf-encrypted, and prove the result unchanged.

``convert(model, batch_size)`` turns a legacy-Keras (``tf_keras``) model, Sequential or a
functional model that is a plain chain, into the ``tf_keras.Sequential`` tf-encrypted's
``clone_model`` can share:

- inference no-ops are removed (Dropout and its kin, GaussianNoise, ActivityRegularization,
  ``Activation("linear")``);
- BatchNormalization is folded into the Conv2D/Dense right before it
  (``w' = w * g / sqrt(v + eps)``, ``b' = (b - m) * g / sqrt(v + eps) + beta``);
- activations given inline (``Dense(..., activation="relu")``) become their own
  ``Activation`` layer, and a default ``ReLU`` layer becomes ``Activation("relu")``
  (tf-encrypted's ReLU layer needs ``relu_with_cmp``, which Pond lacks);
- regularizers and constraints (training only) are dropped; the first layer gets
  ``batch_input_shape=(batch_size, ...)``.

Then the logits of the converted model are compared with the original's on a calibration
batch (``calibration_batch``: test digits when the input holds 784 values); a difference
above ``tolerance`` (relative to the logits' size) refuses the model. Anything else is
refused naming the layer and what to do (``layer_problem`` also serves
``private.check_model``).
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from harness.errors import UnsupportedModelError
from harness.inference.ranges import calibration_batch

logger = logging.getLogger(__name__)

#: Layers removed: they do nothing at inference.
NO_OPS = frozenset({"Dropout", "SpatialDropout1D", "SpatialDropout2D", "SpatialDropout3D",
                    "GaussianDropout", "GaussianNoise", "AlphaDropout", "ActivityRegularization"})
#: Layers kept as they are (tf-encrypted has a private counterpart).
KEPT = frozenset({"Conv2D", "Dense", "Flatten", "Reshape", "MaxPooling2D", "AveragePooling2D",
                  "Activation"})
#: Layers converted (folded or rewritten).
CONVERTED = frozenset({"BatchNormalization", "ReLU", "InputLayer"})
_TRAINING_ONLY = ("kernel_regularizer", "bias_regularizer", "activity_regularizer",
                  "kernel_constraint", "bias_constraint")
#: Converted logits may differ from the original's by this much (times max(1, |logits|)).
TOLERANCE = 1e-4


def _keras() -> Any:
    from models.conv_mnist import _keras as keras  # noqa: PLC0415  (selects legacy Keras)

    return keras()


def _refuse(where: str, layer: str, kind: str, why: str) -> UnsupportedModelError:
    return UnsupportedModelError(f"{where}: layer {layer!r} ({kind}) {why}")


def _supported_text() -> str:
    return (f"layers tf-encrypted can share: {', '.join(sorted(KEPT | {'ReLU'}))}; converted "
            f"for you: BatchNormalization (after Conv2D/Dense), {', '.join(sorted(NO_OPS))}")


# --- which layers, in which order -------------------------------------------------------

def _sources(node: Any) -> list[str]:
    """Names of the layers feeding one call of a layer, from a functional config node
    (Keras 2: ``[[name, node, tensor, kwargs], ...]``; Keras 3: ``{"args": [...]}`` with
    ``__keras_tensor__`` entries)."""
    found: list[str] = []

    def visit(obj: Any) -> None:
        if isinstance(obj, dict):
            if obj.get("class_name") == "__keras_tensor__":
                found.append(obj["config"]["keras_history"][0])
                return
            for value in obj.values():
                visit(value)
        elif isinstance(obj, (list, tuple)):
            if len(obj) >= 3 and isinstance(obj[0], str) and all(
                    isinstance(v, int) for v in obj[1:3]):
                found.append(obj[0])
                return
            for value in obj:
                visit(value)

    visit(node)
    return found


def plain_chain(config: dict[str, Any], where: str) -> list[str]:
    """Layer names of a functional model's config, input to output, if it is a plain
    chain (one input, one output, each layer fed by the one before it, no layer used
    twice); else ``UnsupportedModelError`` naming the layer where it branches."""
    entries = {entry.get("name") or entry["config"]["name"]: entry for entry in config["layers"]}
    inputs, outputs = _sources(config.get("input_layers")), _sources(config.get("output_layers"))
    if len(inputs) != 1 or len(outputs) != 1:
        raise UnsupportedModelError(
            f"{where}: the model has {len(inputs)} inputs and {len(outputs)} outputs; "
            "tf-encrypted shares a chain of layers with one input and one output.")
    feeds: dict[str, list[str]] = {name: [] for name in entries}
    for name, entry in entries.items():
        nodes = entry.get("inbound_nodes") or []
        if len(nodes) > 1:
            raise _refuse(where, name, entry["class_name"],
                          f"is called {len(nodes)} times (a shared layer); tf-encrypted "
                          "shares a plain chain of layers. Give each call its own layer.")
        sources = _sources(nodes[0]) if nodes else []
        if len(sources) > 1:
            raise _refuse(where, name, entry["class_name"],
                          f"joins {len(sources)} branches ({', '.join(sources)}): a branching "
                          "model cannot be shared by tf-encrypted's Sequential models. Only "
                          "plain chains of layers can be converted.")
        for source in sources:
            feeds.setdefault(source, []).append(name)
    order = [inputs[0]]
    while order[-1] != outputs[0]:
        nxt = feeds.get(order[-1], [])
        if len(nxt) != 1:
            what = entries[order[-1]]["class_name"] if order[-1] in entries else "?"
            raise _refuse(where, order[-1], what,
                          f"feeds {len(nxt)} layers ({', '.join(nxt) or 'none'}): a branching "
                          "model cannot be shared; only plain chains of layers can be converted.")
        order.append(nxt[0])
    stray = sorted(set(entries) - set(order))
    if stray:
        raise _refuse(where, stray[0], entries[stray[0]]["class_name"],
                      "is off the chain from input to output; remove it.")
    return order


def chain_layers(model: Any, where: str) -> list[Any]:
    """The layers of a Sequential or plain-chain functional tf_keras model, in order."""
    keras = _keras()
    if isinstance(model, keras.Sequential):
        layers = list(model.layers)
    elif isinstance(model, keras.Model) and getattr(model, "_is_graph_network", False):
        names = plain_chain(model.get_config(), where)
        layers = [model.get_layer(name) for name in names]
    else:
        raise UnsupportedModelError(
            f"{where}: a subclassed {type(model).__name__} model has no layer graph to "
            "convert; rebuild it as a Sequential or functional model.")
    for layer in layers:
        if isinstance(layer, keras.Model):
            raise _refuse(where, layer.name, type(layer).__name__,
                          "is a model nested in the model; put its layers in the outer model.")
    return layers


# --- conversion --------------------------------------------------------------------------

@dataclass
class _Spec:
    kind: str
    config: dict[str, Any]
    weights: list[np.ndarray] = field(default_factory=list)
    origin: str = ""  # what the user's model calls it, if not the layer itself

    def describe(self) -> str:
        return self.origin or f"{self.kind} {self.config['name']!r}"


@dataclass
class Conversion:
    """The shareable model, what was done to get it and how far its logits moved."""

    model: Any
    steps: list[str]
    max_abs_diff: float
    calibration_size: int


def _fold_batchnorm(spec: _Spec, layer: Any, where: str) -> str:
    cfg = layer.get_config()
    axis = cfg["axis"][0] if isinstance(cfg["axis"], (list, tuple)) else cfg["axis"]
    rank = len(layer.input_shape)
    if len(np.atleast_1d(cfg["axis"])) != 1 or axis not in (-1, rank - 1):
        raise _refuse(where, layer.name, "BatchNormalization",
                      f"normalises axis {cfg['axis']}, not the channels (last axis); it cannot "
                      "be folded into the layer before it.")
    values = [np.asarray(w, np.float64) for w in layer.get_weights()]
    gamma = values.pop(0) if cfg["scale"] else 1.0
    beta = values.pop(0) if cfg["center"] else 0.0
    mean, var = values
    scale = gamma / np.sqrt(var + cfg["epsilon"])
    kernel = np.asarray(spec.weights[0], np.float64) * scale
    bias = np.asarray(spec.weights[1], np.float64) if spec.config["use_bias"] else 0.0
    spec.weights = [kernel.astype(np.float32), ((bias - mean) * scale + beta).astype(np.float32)]
    spec.config["use_bias"] = True
    return f"folded BatchNormalization {layer.name!r} into {spec.kind} {spec.config['name']!r}"


def _convert_layer(layer: Any, specs: list[_Spec], where: str) -> str | None:
    """Append what ``layer`` becomes to ``specs``; returns the step done (None: kept)."""
    kind = type(layer).__name__
    if kind == "InputLayer":
        return None
    if kind in NO_OPS:
        return f"removed {kind} {layer.name!r} (no-op at inference)"
    if kind == "BatchNormalization":
        before = specs[-1] if specs else None
        if before is None or before.kind not in ("Conv2D", "Dense") \
                or before.config.get("activation") != "linear":
            after = f"after {before.describe()}" if before else "first"
            raise _refuse(where, layer.name, kind,
                          f"comes {after}: only a BatchNormalization right after a Conv2D or "
                          "Dense (before its activation) can be folded. Move it there, or "
                          "fold it into the weights yourself.")
        return _fold_batchnorm(before, layer, where)
    if kind == "ReLU":
        cfg = layer.get_config()
        if cfg.get("max_value") is not None or cfg.get("negative_slope") or cfg.get("threshold"):
            raise _refuse(where, layer.name, kind,
                          f"is clipped or leaky (max_value={cfg.get('max_value')}, negative_slope"
                          f"={cfg.get('negative_slope')}, threshold={cfg.get('threshold')}); "
                          "only the plain ReLU has a private counterpart.")
        specs.append(_Spec("Activation", {"name": layer.name, "activation": "relu"},
                           origin=f"ReLU {layer.name!r}"))
        return f"ReLU {layer.name!r} -> Activation('relu')"
    if kind not in KEPT:
        raise _refuse(where, layer.name, kind,
                      "has no private counterpart in tf-encrypted. Supported: "
                      f"{_supported_text()}.")
    cfg = layer.get_config()
    for key in ("batch_input_shape", "input_shape", "batch_shape"):
        cfg.pop(key, None)
    steps = []
    dropped = [key for key in _TRAINING_ONLY if cfg.get(key) is not None]
    for key in _TRAINING_ONLY:
        cfg.pop(key, None)
    if dropped:
        steps.append(f"dropped {', '.join(dropped)} of {layer.name!r} (training only)")
    activation = cfg.get("activation")
    if activation is not None and not isinstance(activation, str):
        raise _refuse(where, layer.name, kind, f"uses a custom activation ({activation!r}); "
                      "use a named one such as 'relu'.")
    if kind == "Activation" and activation == "linear":
        return f"removed Activation {layer.name!r} ('linear', a no-op)"
    if kind in ("Conv2D", "Dense") and activation not in (None, "linear"):
        cfg["activation"] = "linear"
        specs.append(_Spec(kind, cfg, layer.get_weights()))
        specs.append(_Spec("Activation", {"name": f"{layer.name}_{activation}",
                                          "activation": activation},
                           origin=f"the {activation!r} activation of {kind} {layer.name!r}"))
        steps.append(f"split activation {activation!r} out of {kind} {layer.name!r}")
    else:
        specs.append(_Spec(kind, cfg, layer.get_weights()))
    return "; ".join(steps) or None


def _build(specs: list[_Spec], batch_shape: tuple[Any, ...], name: str) -> Any:
    keras = _keras()
    layers = []
    for index, spec in enumerate(specs):
        cfg = dict(spec.config)
        if index == 0:
            cfg["batch_input_shape"] = batch_shape
        layers.append(getattr(keras.layers, spec.kind).from_config(cfg))
    model = keras.Sequential(layers, name=name)
    for layer, spec in zip(layers, specs):
        if spec.weights:
            layer.set_weights(spec.weights)
    return model


def input_shape_of(model: Any, where: str) -> tuple[int, ...]:
    """The per-example input shape the model declares (every dimension fixed)."""
    try:
        shape = model.input_shape
    except (AttributeError, RuntimeError) as exc:
        raise UnsupportedModelError(
            f"{where}: the model has no input shape (never built); build it with an Input "
            "layer, e.g. Input(shape=(28, 28, 1)).") from exc
    if isinstance(shape, list):
        raise UnsupportedModelError(f"{where}: the model has {len(shape)} inputs; tf-encrypted "
                                    "shares a model with one input.")
    rest = tuple(shape[1:])
    if not rest or any(d is None for d in rest):
        raise UnsupportedModelError(
            f"{where}: the model's input shape {tuple(shape)} is not fixed; tf-encrypted needs "
            "every dimension but the batch known (build it with Input(shape=(28, 28, 1))).")
    return tuple(int(d) for d in rest)


def convert(model: Any, batch_size: int, *, where: str = "model",
            calibration: np.ndarray | None = None, tolerance: float = TOLERANCE) -> Conversion:
    """A shareable ``tf_keras.Sequential`` for ``batch_size``, checked against ``model``."""
    layers = chain_layers(model, where)
    shape = input_shape_of(model, where)
    specs: list[_Spec] = []
    steps = []
    for layer in layers:
        step = _convert_layer(layer, specs, where)
        if step:
            steps.append(step)
    if not specs:
        raise UnsupportedModelError(f"{where}: the model has no layer to share.")
    converted = _build(specs, (int(batch_size), *shape), name=model.name)
    for layer in converted.layers:
        problem = layer_problem(layer)
        if problem:
            raise _refuse(where, layer.name, type(layer).__name__, problem)
    calib = calibration_batch(shape) if calibration is None else np.asarray(calibration, np.float32)
    before = np.asarray(model(calib, training=False), np.float64)
    after = np.asarray(converted(calib, training=False), np.float64)
    diff = float(np.max(np.abs(before - after))) if before.size else 0.0
    scale = max(1.0, float(np.max(np.abs(before))) if before.size else 0.0)
    if not diff <= tolerance * scale:
        raise UnsupportedModelError(
            f"{where}: the converted model's logits differ from the original's by {diff:.3g} "
            f"(> {tolerance:g} x {scale:.3g}) on {len(calib)} calibration inputs after: "
            f"{'; '.join(steps) or 'no change'}. It is not shared; please report this model.")
    logger.info("%s: converted (%s); logits moved by %.2g on %d calibration inputs", where,
                "; ".join(steps) or "no change", diff, len(calib))
    return Conversion(converted, steps, diff, len(calib))


# --- what tf-encrypted computes differently ---------------------------------------------

def _pool_pads(layer: Any) -> bool:
    _, height, width, _ = layer.input_shape
    cfg = layer.get_config()
    if cfg["padding"] != "same":
        return False
    (ph, pw), (sh, sw) = cfg["pool_size"], cfg["strides"]
    need_h = max((math.ceil(height / sh) - 1) * sh + ph - height, 0)
    need_w = max((math.ceil(width / sw) - 1) * sw + pw - width, 0)
    return bool(need_h or need_w)


def layer_problem(layer: Any) -> str | None:
    """Why tf-encrypted would compute this (kept) layer differently from Keras, if it would."""
    kind = type(layer).__name__
    cfg = layer.get_config()
    if cfg.get("data_format", "channels_last") != "channels_last":
        return "uses data_format='channels_first'; re-save the model channels_last."
    if kind == "Conv2D":
        if tuple(cfg["dilation_rate"]) != (1, 1) or cfg.get("groups", 1) != 1:
            return "is dilated or grouped, which tf-encrypted's conv2d does not do."
        if cfg["kernel_size"][0] != cfg["kernel_size"][1] or cfg["strides"][0] != cfg["strides"][1]:
            return (f"has kernel {tuple(cfg['kernel_size'])} and strides {tuple(cfg['strides'])}; "
                    "tf-encrypted's conv2d needs square kernels and equal strides.")
    if kind == "Dense" and len(layer.input_shape) != 2:
        return (f"gets an input of shape {layer.input_shape}; tf-encrypted's Dense takes "
                "(batch, features): put a Flatten before it.")
    if kind in ("MaxPooling2D", "AveragePooling2D") and _pool_pads(layer):
        return ("pads its input (padding='same' with windows past the edge), which is not "
                "supported: tf-encrypted pads with zeros where Keras ignores the padding. "
                "Use padding='valid'.")
    return None
