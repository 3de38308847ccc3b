"""Port fixes: what tf-encrypted 0.9.1 needs to import and run on a current TensorFlow.

Nothing here changes what the protocols compute or send.

- ABY3 imports ``glob_stateful_parallelism`` and passes ``stateful_parallelism=`` to
  ``while_v2._build_while_op``: both exist only in tf-encrypted's TensorFlow fork. We
  provide the name and drop the keyword.
- The prebuilt custom ops exist only for TF 2.9.1: ``secure_random`` and ``aux`` are
  replaced by modules backed by our own ops (``harness.tfe.ops``); there is no
  insecure fallback. The int128 ring and the TFRecord dataset op are not built: using
  them raises a clear ``NotImplementedError``.
- ``tf.Dimension`` (TF1) in the reshape-and-sum average pooling: replaced by ints.
- Keras 3 cannot run tf-encrypted's Keras layer: legacy Keras 2 (``tf-keras``) is
  selected before TensorFlow is imported.
- onnx and setuptools (``pkg_resources``) are pinned in ``pyproject.toml``.
"""
from __future__ import annotations

import importlib.util
import logging
import os
import pathlib
import sys
from contextlib import contextmanager
from typing import Any, Iterator

from harness.tfe.patching import PatchError, replace


class CompatError(RuntimeError):
    """tf-encrypted cannot be made to run in this interpreter as it is."""


def select_legacy_keras() -> None:
    """tf-encrypted needs Keras 2; TensorFlow picks its Keras at import time."""
    wanted = os.environ.get("TF_USE_LEGACY_KERAS")
    if wanted not in (None, "1", "true", "True"):
        raise CompatError(
            f"TF_USE_LEGACY_KERAS={wanted!r} selects Keras 3, which tf-encrypted cannot use. "
            "Unset it (the harness sets it to 1) and run again."
        )
    if "tensorflow" in sys.modules and wanted is None:
        raise CompatError(
            "TensorFlow was imported before the harness, so it already chose Keras 3. "
            "Call `harness.tfe.activate()` before importing `tensorflow`, or set "
            "TF_USE_LEGACY_KERAS=1 in the environment before starting Python."
        )
    os.environ["TF_USE_LEGACY_KERAS"] = "1"
    try:
        import tf_keras  # noqa: F401  (legacy Keras 2, package tf-keras)
    except ImportError as exc:
        raise CompatError(
            "tf-encrypted needs legacy Keras 2: `pip install tf-keras` matching your "
            "TensorFlow minor version (see pyproject.toml)."
        ) from exc


def provide_while_v2_names() -> None:
    """The name ABY3 imports from tf-encrypted's TensorFlow fork."""
    from tensorflow.python.ops import while_v2  # noqa: PLC0415

    if not hasattr(while_v2, "_build_while_op"):
        raise PatchError("tensorflow.python.ops.while_v2._build_while_op is gone: this "
                         "TensorFlow is newer than the harness supports")
    if not hasattr(while_v2, "glob_stateful_parallelism"):
        while_v2.glob_stateful_parallelism = False


def _without_stateful_parallelism(build: Any) -> Any:
    def _build(*args: Any, stateful_parallelism: Any = None, **kwargs: Any) -> Any:
        del stateful_parallelism  # stock TensorFlow has no such option
        return build(*args, **kwargs)

    return _build


_OP_MODULES = ("tf_encrypted.operations.secure_random.secure_random",
               "tf_encrypted.operations.aux.aux")


def install_op_modules() -> None:
    """Our op-backed wrappers stand where tf-encrypted loads its ``.so`` files."""
    from harness.tfe import aux, secure_random  # noqa: PLC0415  (loads our ops)

    spec = importlib.util.find_spec("tf_encrypted")  # top level: imports nothing
    root = pathlib.Path(spec.origin).parent if spec and spec.origin else None
    for name, ours in zip(_OP_MODULES, (secure_random, aux)):
        upstream = None if root is None else root.joinpath(*name.split(".")[1:]).with_suffix(".py")
        if upstream is None or not upstream.is_file():
            raise PatchError(f"{name} does not exist: this tf-encrypted is not 0.9.1")
        sys.modules[name] = ours


class Unavailable:
    """Stands for a custom-op module we do not build; using it says so."""

    def __init__(self, what: str) -> None:
        self._what = what

    def __getattr__(self, name: str) -> Any:
        raise NotImplementedError(
            f"{self._what} is not provided by the harness's ops (called {name!r}); "
            "only the 64-bit rings and in-memory inputs are supported."
        )


_UNBUILT_OP_WARNINGS = ("tf_i128", "dataset module", "tf_dataset_module")


class _DropUnbuiltOpWarnings(logging.Filter):
    """tf_i128/dataset loaders warn about missing ``.so`` files (one wrongly says
    'insecure randomness'); we replace those modules with ``Unavailable``."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        return not any(marker in text for marker in _UNBUILT_OP_WARNINGS)


@contextmanager
def quiet_unbuilt_op_loaders() -> Iterator[None]:
    tfe_logger = logging.getLogger("tf_encrypted")
    flt = _DropUnbuiltOpWarnings()
    tfe_logger.addFilter(flt)
    try:
        yield
    finally:
        tfe_logger.removeFilter(flt)


def _avgpool2d_reshape_reduce(x: Any, pool_size: tuple[int, int], *args: Any) -> Any:
    """tf-encrypted's reshape-and-sum pooling, with ints for ``tf.Dimension``."""
    del args
    ph, pw = int(pool_size[0]), int(pool_size[1])
    n, c, h, w = (int(d) for d in x.shape)
    return x.reshape([n, c, h // ph, ph, w // pw, pw]).reduce_sum(axis=3).reduce_sum(axis=4)


def apply_imported() -> None:
    """The fixes that need tf-encrypted's modules (after ``import tf_encrypted``)."""
    from tf_encrypted.protocol.aby3 import aby3  # noqa: PLC0415
    from tf_encrypted.protocol.pond import pond  # noqa: PLC0415

    replace(aby3, "_build_while_op", _without_stateful_parallelism, wrap=True)
    replace(pond, "_avgpool2d_reshape_reduce", _avgpool2d_reshape_reduce)
    # the modules by name: their packages export functions of the same names
    tf_i128 = importlib.import_module("tf_encrypted.operations.tf_i128.tf_i128")
    write_record = importlib.import_module("tf_encrypted.operations.dataset.write_record")
    replace(tf_i128, "tf_i128", Unavailable("tf-encrypted's int128 ring (tf_i128)"))
    replace(write_record, "dataset_module", Unavailable("tf-encrypted's TFRecord dataset op"))
