"""Load the model to share, by zoo name or from a file, ready for tf-encrypted.

``load_model(name_or_path, batch_size)`` returns a ``tf_keras.Sequential`` with a fixed
batch size, converted and checked by :mod:`harness.inference.convert`. It accepts:

- a zoo name or alias (``models.zoo``: tutorial, A/secureml, B/minionn, C/lenet,
  D/chameleon);
- ``.h5``/``.hdf5``: a whole Keras model (``model.save("m.h5")``), legacy Keras 2 or
  Keras 3 (whose config is rebuilt in legacy Keras, as for ``.keras``);
- ``.keras``: a Keras 3 archive (a zip of ``config.json`` and ``model.weights.h5``); its
  config is read as JSON and rebuilt layer by layer in legacy Keras, the weights read
  with h5py. Keras 3 itself is never imported here: tf-encrypted runs legacy Keras.
  (An archive written by tf_keras, ``keras_version`` 2.x, is read by tf_keras.);
- a SavedModel directory written by legacy Keras (it has ``keras_metadata.pb``).

``load_data(path)`` reads ``--data FILE.npz`` (arrays ``x`` and ``y``). Every refusal
names the file, the layer where there is one, and what to do.
"""
from __future__ import annotations

import inspect
import json
import logging
import os
import zipfile
from pathlib import Path
from typing import Any, Callable

import numpy as np

from harness.errors import InputError, UnsupportedModelError
from harness.inference import convert as _convert

logger = logging.getLogger(__name__)

SUFFIXES = (".keras", ".h5", ".hdf5")
_WHAT_TO_GIVE = ("a zoo name ({zoo}), a Keras model file saved with model.save(): "
                 "'m.keras' (Keras 3) or 'm.h5', or a SavedModel directory written by "
                 "tf_keras")
_MODELS = ("Sequential", "Functional", "Model")


def _keras() -> Any:
    return _convert._keras()


def _zoo_help() -> str:
    from models import zoo  # noqa: PLC0415

    return ", ".join(zoo.names())


def _zoo_name(text: str) -> str | None:
    from models import zoo  # noqa: PLC0415

    try:
        return zoo.get(text).name
    except zoo.UnknownModelError:
        return None


def load(name_or_path: str | os.PathLike[str], batch_size: int = 1, *,
         calibration: np.ndarray | None = None) -> _convert.Conversion:
    """The converted model with what was done to it (``Conversion``)."""
    text = os.fspath(name_or_path)
    path = Path(text)
    if not path.exists():
        name = _zoo_name(text)
        if name is None:
            raise InputError(f"{text}: no such model file or zoo model; give "
                             + _WHAT_TO_GIVE.format(zoo=_zoo_help()) + ".")
        from models import zoo  # noqa: PLC0415

        return _convert.convert(zoo.load(name, batch_size=batch_size), batch_size,
                                where=f"zoo model {name}", calibration=calibration)
    model = read_model(path)
    return _convert.convert(model, batch_size, where=text, calibration=calibration)


def load_model(name_or_path: str | os.PathLike[str], batch_size: int = 1, *,
               calibration: np.ndarray | None = None) -> Any:
    """A ``tf_keras.Sequential`` for ``batch_size``, ready to share (see module doc)."""
    return load(name_or_path, batch_size, calibration=calibration).model


def read_model(path: str | os.PathLike[str]) -> Any:
    """The model in a file or SavedModel directory as legacy Keras, not yet converted."""
    path = Path(path)
    if path.is_dir():
        return _read_saved_model(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file; give " + _WHAT_TO_GIVE.format(zoo=_zoo_help()))
    suffix = path.suffix.lower()
    if suffix == ".keras":
        return _read_keras_archive(path)
    if suffix in (".h5", ".hdf5"):
        return _read_hdf5(path)
    raise InputError(f"{path}: unknown model file type {suffix or '(no extension)'!r}; give "
                     + _WHAT_TO_GIVE.format(zoo=_zoo_help()) + ".")


# --- the three file formats ---------------------------------------------------------------

def _read_saved_model(path: Path) -> Any:
    if not (path / "saved_model.pb").is_file():
        raise InputError(f"{path}: a directory, but not a SavedModel (no saved_model.pb).")
    if not (path / "keras_metadata.pb").is_file():
        raise InputError(
            f"{path}: a SavedModel without Keras metadata (written by tf.saved_model.save or "
            "Keras 3's model.export()), so its layers cannot be read back. Save the Keras "
            "model itself: model.save('m.keras') or model.save('m.h5').")
    return _tf_keras_load(path)


def _tf_keras_load(path: Path) -> Any:
    try:
        return _keras().models.load_model(path, compile=False)
    except (ValueError, TypeError, KeyError, OSError, AttributeError) as exc:
        raise InputError(f"{path}: legacy Keras cannot read this model ({exc}). Re-save it "
                         "with model.save('m.keras') from Keras 3 or model.save('m.h5').") from exc


def _h5py() -> Any:
    import h5py  # noqa: PLC0415

    return h5py


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _read_hdf5(path: Path) -> Any:
    h5py = _h5py()
    if not h5py.is_hdf5(path):
        raise InputError(f"{path}: not an HDF5 file (corrupt, or not written by Keras "
                         "model.save('m.h5')).")
    try:
        with h5py.File(path, "r") as f:
            attrs = dict(f.attrs)
            if "model_config" not in attrs:
                raise InputError(
                    f"{path}: holds weights only (model.save_weights), no model. Save the whole "
                    "model with model.save('m.h5') or model.save('m.keras'), or give a zoo name.")
            version = _text(attrs.get("keras_version", ""))
            config = json.loads(_text(attrs["model_config"]))
            if version.startswith("3."):
                return keras3_model(config, _legacy_h5_weights(f, path), path)
    except (OSError, ValueError, KeyError) as exc:
        if isinstance(exc, InputError):
            raise
        raise InputError(f"{path}: cannot read this HDF5 model file ({exc}); it may be "
                         "corrupt. Re-save it with model.save('m.h5').") from exc
    _check_classes(config, path)
    return _tf_keras_load(path)


def _read_keras_archive(path: Path) -> Any:
    if not zipfile.is_zipfile(path):
        raise InputError(f"{path}: not a Keras archive (a .keras file is a zip of config.json "
                         "and model.weights.h5); the file is corrupt or not a .keras model.")
    h5py = _h5py()
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
            missing = {"config.json", "model.weights.h5"} - names
            if missing:
                raise InputError(f"{path}: the archive lacks {', '.join(sorted(missing))}; "
                                 "re-save the model with model.save('m.keras').")
            config = json.loads(archive.read("config.json"))
            meta = json.loads(archive.read("metadata.json")) if "metadata.json" in names else {}
            by_tf_keras = str(meta.get("keras_version", "3.")).startswith("2.")
            if not by_tf_keras:
                with archive.open("model.weights.h5") as raw, h5py.File(raw, "r") as f:
                    return keras3_model(config, _archive_weights(f), path)
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
        if isinstance(exc, InputError):
            raise
        raise InputError(f"{path}: cannot read this Keras archive ({exc}); it may be "
                         "corrupt. Re-save it with model.save('m.keras').") from exc
    _check_classes(config, path)  # written by tf_keras (keras_version 2.x): it reads its own
    return _tf_keras_load(path)


def _archive_weights(f: Any) -> Callable[[str], list[np.ndarray] | None]:
    """Keras 3 ``model.weights.h5``: ``layers/<path>/vars/<i>``, the layer's name an
    attribute of its ``vars`` group."""
    by_name: dict[str, list[np.ndarray]] = {}
    layers = f.get("layers")
    if layers is not None:
        for key in layers:
            group = layers[key].get("vars")
            if group is not None:
                name = _text(group.attrs.get("name", key))
                by_name[name] = [np.asarray(group[str(i)]) for i in range(len(group))]
    return by_name.get


def _legacy_h5_weights(f: Any, path: Path) -> Callable[[str], list[np.ndarray] | None]:
    """Keras 3's legacy ``.h5``: ``model_weights/<layer>`` lists its ``weight_names``."""
    if "model_weights" not in f:
        raise InputError(f"{path}: the file has a model config but no weights.")
    root = f["model_weights"]

    def weights(name: str) -> list[np.ndarray] | None:
        if name not in root:
            return None
        group = root[name]
        return [np.asarray(group[_text(n)]) for n in group.attrs.get("weight_names", [])]

    return weights


# --- Keras 3 configs, rebuilt in legacy Keras -----------------------------------------------

def _entries(config: dict[str, Any], path: Path) -> list[dict[str, Any]]:
    kind = config.get("class_name")
    inner = config.get("config", {})
    if kind == "Sequential":
        return list(inner["layers"])
    if kind in ("Functional", "Model") and "layers" in inner:
        by_name = {e.get("name") or e["config"]["name"]: e for e in inner["layers"]}
        return [by_name[name] for name in _convert.plain_chain(inner, str(path))]
    raise UnsupportedModelError(
        f"{path}: the model is a {kind} (subclassed or custom), which has no layer graph to "
        "rebuild; save a Sequential or functional model.")


def _check_classes(config: dict[str, Any], path: Path) -> None:
    """Refuse layers legacy Keras does not know, naming them, before Keras tries."""
    keras = _keras()
    for entry in config.get("config", {}).get("layers", []):
        kind = entry.get("class_name")
        name = entry.get("name") or entry.get("config", {}).get("name")
        if kind in _MODELS:
            raise _convert._refuse(str(path), name, kind, "is a model nested in the model; put "
                                   "its layers in the outer model.")
        if not hasattr(keras.layers, kind):
            raise _convert._refuse(str(path), name, kind,
                                   "is not a Keras layer legacy Keras knows (a custom layer?). "
                                   f"Supported: {_convert._supported_text()}.")


def _parameters(cls: type) -> set[str]:
    """Keyword arguments a legacy layer class takes, its base classes' included."""
    names = {"name", "trainable"}
    for klass in cls.__mro__:
        if "__init__" in vars(klass) and klass is not object:
            names |= set(inspect.signature(klass.__init__).parameters)
    return names - {"self", "args", "kwargs"}


def _legacy_layer(entry: dict[str, Any], path: Path) -> Any:
    keras = _keras()
    kind, cfg = entry["class_name"], entry.get("config", {})
    name = entry.get("name") or cfg.get("name")
    module = entry.get("module") or "keras.layers"
    if not module.startswith("keras.layers") or entry.get("registered_name") not in (None, kind):
        raise _convert._refuse(str(path), name, kind, f"is a custom layer ({module}); only "
                               f"Keras' own layers can be rebuilt. {_convert._supported_text()}.")
    accepted = _parameters(getattr(keras.layers, kind))
    legacy: dict[str, Any] = {}
    for key, value in cfg.items():
        if key == "dtype" or key.endswith(("_initializer", "_regularizer", "_constraint")):
            continue  # weights come from the file; regularizers only matter in training
        if key in accepted:
            legacy[key] = value
        elif value not in (None, False, 0, [], {}, ""):
            raise _convert._refuse(str(path), name, kind,
                                   f"sets {key}={value!r}, a Keras 3 option legacy Keras "
                                   "cannot rebuild; save the model without it.")
    if isinstance(legacy.get("activation"), dict):
        raise _convert._refuse(str(path), name, kind, "uses a custom activation; use a named "
                               "one such as 'relu'.")
    try:
        return getattr(keras.layers, kind).from_config(legacy)
    except (TypeError, ValueError) as exc:
        raise _convert._refuse(str(path), name, kind, f"cannot be rebuilt in legacy Keras "
                               f"({exc}).") from exc


def _batch_shape(entries: list[dict[str, Any]], path: Path) -> list[Any]:
    for entry in entries:
        cfg = entry.get("config", {})
        shape = cfg.get("batch_shape") or cfg.get("batch_input_shape")
        if shape is None:
            shape = (entry.get("build_config") or {}).get("input_shape")
        if shape is not None:
            return list(shape)
    raise UnsupportedModelError(f"{path}: the model has no input shape (never built); build "
                                "it with an Input layer, e.g. Input(shape=(28, 28, 1)).")


def keras3_model(config: dict[str, Any], weights_of: Callable[[str], list[np.ndarray] | None],
                 path: Path) -> Any:
    """A Keras 3 model config (Sequential or plain-chain functional) and its weights,
    rebuilt as a legacy ``tf_keras.Sequential`` (not yet converted)."""
    _check_classes(config, path)
    entries = _entries(config, path)
    shape = _batch_shape(entries, path)
    keras = _keras()
    chain = [e for e in entries if e["class_name"] != "InputLayer"]
    layers = [_legacy_layer(e, path) for e in chain]
    model = keras.Sequential([keras.layers.InputLayer(batch_input_shape=shape), *layers],
                             name=config.get("config", {}).get("name", "model"))
    for layer in layers:
        arrays = weights_of(layer.name)
        expected = [tuple(w.shape) for w in layer.weights]
        found = [tuple(a.shape) for a in arrays or []]
        if expected and found != expected:
            raise _convert._refuse(str(path), layer.name, type(layer).__name__,
                                   f"has weights of shapes {found or 'none'} in the file where "
                                   f"the layer needs {expected}; the file is inconsistent. "
                                   "Re-save the model.")
        if expected:
            layer.set_weights([a.astype(np.float32) for a in arrays or []])
    logger.info("%s: Keras 3 model rebuilt in legacy Keras (%d layers)", path, len(layers))
    return model


# --- data ------------------------------------------------------------------------------------

_DATA_HELP = "an .npz with arrays x (inputs, one per row) and y (integer labels)"


def load_data(path: str | os.PathLike[str],
              input_shape: tuple[int, ...] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``--data FILE.npz``: inputs ``x`` (float32) and labels ``y`` (int64), checked against
    the model's per-example ``input_shape`` when given."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such data file; --data takes {_DATA_HELP}.")
    try:
        loaded = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise InputError(f"{path}: cannot read it as .npz ({exc}); --data takes {_DATA_HELP}.") \
            from exc
    if not isinstance(loaded, np.lib.npyio.NpzFile):
        raise InputError(f"{path}: a single array, not an .npz archive; --data takes {_DATA_HELP}.")
    with loaded as npz:
        missing = [k for k in ("x", "y") if k not in npz.files]
        if missing:
            raise InputError(f"{path}: lacks array(s) {', '.join(missing)} (has "
                             f"{', '.join(sorted(npz.files)) or 'none'}); --data takes "
                             f"{_DATA_HELP}.")
        try:
            x, y = npz["x"], npz["y"]
        except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
            raise InputError(f"{path}: cannot read its arrays ({exc}).") from exc
    if x.dtype.kind not in "fiu" or x.ndim < 2 or len(x) == 0:
        raise InputError(f"{path}: x must be a numeric array of at least one input, shape "
                         f"(N, ...); got dtype {x.dtype}, shape {x.shape}.")
    if y.dtype.kind not in "iu" or y.shape != (len(x),):
        raise InputError(f"{path}: y must hold one integer label per input, shape ({len(x)},); "
                         f"got dtype {y.dtype}, shape {y.shape}.")
    if input_shape is not None and tuple(x.shape[1:]) != tuple(input_shape):
        raise InputError(f"{path}: each input has shape {tuple(x.shape[1:])}, but the model "
                         f"takes {tuple(input_shape)}; reshape x to (N, "
                         f"{', '.join(map(str, input_shape))}).")
    x = x.astype(np.float32)
    if not np.all(np.isfinite(x)):
        raise InputError(f"{path}: x contains NaN or inf; clean the data.")
    return x, y.astype(np.int64)
