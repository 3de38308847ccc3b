"""Make tf-encrypted 0.9.1 import and run correctly on a current TensorFlow.

``activate()`` runs once, explicitly, before ``tf_encrypted`` is
imported. Each fix is named after its row in ``TFE-FACTS.md``:

1. ``while_v2.glob_stateful_parallelism`` / ``stateful_parallelism=`` only exist
   in tf-encrypted's TensorFlow fork: we provide the name and drop the keyword.
2./3. the prebuilt custom ops only exist for TF 2.9.1: ``secure_random`` and
   ``aux`` are replaced by modules backed by our own ops (``harness.tfe.ops``);
   there is no insecure fallback.
4. ``tf.Dimension`` (TF1) in SecureNN/Pond average pooling: replaced.
5./6. onnx and setuptools (``pkg_resources``) are pinned in ``pyproject.toml``.
7. Keras 3 cannot run tf-encrypted's Keras layer: legacy Keras 2 (``tf-keras``)
   is selected before TensorFlow is imported.
8. ``tf.random_uniform`` in the odd-tensor fallback is unreachable once our
   secure ops are always present.

Beyond the table: ABY3 sets up its pairwise PRF keys once, eagerly, and advances
its nonces in Python, i.e. once per trace. Every run of a compiled function then
reused the same zero-sharing and truncation masks, so one server could subtract
private results of different runs. We make ABY3 draw fresh keys (``secure_seed``,
a stateful op) inside every graph that uses them, so each run gets new masks.

Also beyond the table, for speed: the triple producer sends seeds, not random
tensors (``harness.tfe.triples``), which removes a third of the tensors a
SecureNN prediction sends between processes, and prime-field shares travel as
int8 (``harness.tfe.wire``).
"""
from __future__ import annotations

import logging
import os
import sys
from contextlib import contextmanager
from types import ModuleType
from typing import Any, Iterator

logger = logging.getLogger(__name__)

_applied = False


class CompatError(RuntimeError):
    """tf-encrypted cannot be made to run in this interpreter as it is."""


def _select_legacy_keras() -> None:
    """Row 7: tf-encrypted needs Keras 2; TensorFlow picks Keras at import time."""
    wanted = os.environ.get("TF_USE_LEGACY_KERAS")
    if wanted not in (None, "1", "true", "True"):
        raise CompatError(
            f"TF_USE_LEGACY_KERAS={wanted!r} selects Keras 3, which tf-encrypted cannot use. "
            "Unset it (the harness sets it to 1) and run again."
        )
    if "tensorflow" in sys.modules and wanted is None:
        raise CompatError(
            "TensorFlow was imported before the harness, so it already chose Keras 3. "
            "Call `harness.tfe.activate()` before importing `tensorflow`, or set TF_USE_LEGACY_KERAS=1 in the "
            "environment before starting Python."
        )
    os.environ["TF_USE_LEGACY_KERAS"] = "1"
    try:
        import tf_keras  # noqa: F401  (legacy Keras 2, package tf-keras)
    except ImportError as exc:
        raise CompatError(
            "tf-encrypted needs legacy Keras 2: `pip install tf-keras` matching your "
            "TensorFlow minor version (see pyproject.toml)."
        ) from exc


def _provide_while_v2_names() -> None:
    """Row 1: the name tf-encrypted's ABY3 imports from its TensorFlow fork."""
    from tensorflow.python.ops import while_v2

    if not hasattr(while_v2, "glob_stateful_parallelism"):
        while_v2.glob_stateful_parallelism = False


def _build_while_op_without_stateful_parallelism(build: Any) -> Any:
    def _build(*args: Any, stateful_parallelism: Any = None, **kwargs: Any) -> Any:
        del stateful_parallelism  # stock TensorFlow has no such option
        return build(*args, **kwargs)

    return _build


def _install_op_modules() -> None:
    """Rows 2-3: our op-backed wrappers stand where tf-encrypted loads its ``.so``."""
    from harness.tfe import aux, secure_random

    sys.modules["tf_encrypted.operations.secure_random.secure_random"] = secure_random
    sys.modules["tf_encrypted.operations.aux.aux"] = aux


class _Unavailable:
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
    'insecure randomness'); we replace those modules with ``_Unavailable``."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        return not any(marker in text for marker in _UNBUILT_OP_WARNINGS)


@contextmanager
def _quiet_unbuilt_op_loaders() -> Iterator[None]:
    tfe_logger = logging.getLogger("tf_encrypted")
    flt = _DropUnbuiltOpWarnings()
    tfe_logger.addFilter(flt)
    try:
        yield
    finally:
        tfe_logger.removeFilter(flt)


def _avgpool2d_reshape_reduce(x: Any, pool_size: tuple[int, int], *args: Any) -> Any:
    """Row 4: tf-encrypted's reshape-and-sum pooling, with ints for ``tf.Dimension``."""
    del args
    ph, pw = int(pool_size[0]), int(pool_size[1])
    n, c, h, w = (int(d) for d in x.shape)
    return x.reshape([n, c, h // ph, ph, w // pw, pw]).reduce_sum(axis=3).reduce_sum(axis=4)


_ABY3_KEY_ACCESSORS = ("pairwise_keys", "pairwise_nonces", "b2a_keys_1", "b2a_keys_2",
                       "b2a_nonce")


def _keys_per_graph(accessor: Any) -> Any:
    """ABY3 key accessor that (re)initialises the keys in each graph being built, so the
    seeds are ops of that graph, drawn afresh on every run; eager code keeps eager keys
    (their nonces do advance per op)."""

    def access(self: Any) -> Any:
        import tensorflow as tf  # noqa: PLC0415

        if self.keys_initialized:
            where = "eager" if tf.executing_eagerly() else tf.compat.v1.get_default_graph()
            if getattr(self, "_harness_keys_made_in", "eager") is not where:
                self.initialize_keys()
                self._harness_keys_made_in = where
        return accessor(self)

    return access


def _compare_on_server0(private_compare: Any) -> Any:
    """SecureNN's private compare shares one public constant (its edge-case vector)
    outside any device scope, i.e. on the driver, which thereby joined the protocol
    and sent shares to both servers on every run. Ops without a device of their own
    now run on server0 (sharing a public value reveals nothing to it)."""

    def compare(prot: Any, *args: Any, **kwargs: Any) -> Any:
        import tensorflow as tf  # noqa: PLC0415

        with tf.device(prot.server_0.device_name):
            return private_compare(prot, *args, **kwargs)

    return compare


def _patch_imported(tfe: ModuleType) -> None:
    from tf_encrypted.operations.dataset import write_record
    from tf_encrypted.operations.tf_i128 import tf_i128
    from tf_encrypted.protocol.aby3 import aby3
    from tf_encrypted.protocol.pond import pond, triple_sources
    from tf_encrypted.protocol.securenn import securenn

    from harness.tfe import triples, wire

    aby3._build_while_op = _build_while_op_without_stateful_parallelism(aby3._build_while_op)
    for name in _ABY3_KEY_ACCESSORS:
        setattr(aby3.ABY3, name, _keys_per_graph(getattr(aby3.ABY3, name)))
    pond._avgpool2d_reshape_reduce = _avgpool2d_reshape_reduce
    pond.Pond.__init__ = triples.attach_servers(pond.Pond.__init__)
    pond.Pond._share = triples.pond_share
    pond.Pond._reconstruct = wire.reconstruct
    securenn._private_compare = _compare_on_server0(securenn._private_compare)
    triple_sources.BaseTripleSource.mask = triples.mask
    triple_sources.BaseTripleSource._share = triples.share
    tf_i128.tf_i128 = _Unavailable("tf-encrypted's int128 ring (tf_i128)")
    write_record.dataset_module = _Unavailable("tf-encrypted's TFRecord dataset op")


def activate() -> ModuleType:
    """Apply every fix once and return ``tf_encrypted``; safe to call again.
    Raises ``CompatError`` if impossible."""
    global _applied
    if _applied:
        return sys.modules["tf_encrypted"]
    if "tf_encrypted" in sys.modules:
        raise CompatError(
            "tf_encrypted was imported before the harness could patch it. "
            "Call `harness.tfe.activate()` first (it imports tf_encrypted for you)."
        )
    _select_legacy_keras()
    _provide_while_v2_names()
    _install_op_modules()
    with _quiet_unbuilt_op_loaders():
        import tf_encrypted as tfe
    _patch_imported(tfe)
    _applied = True
    logger.debug("tf-encrypted %s patched for TensorFlow", getattr(tfe, "__version__", "?"))
    return tfe
