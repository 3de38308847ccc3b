"""The tf-encrypted boundary: ``activate()`` makes tf-encrypted 0.9.1 run here.

Nothing happens on import. ``activate()`` (once per process, before TensorFlow is
imported) checks the installed tf-encrypted and TensorFlow versions against the ones
this boundary was written for, selects legacy Keras, builds/loads our C++ ops, imports
tf-encrypted and applies, each through ``patching.replace`` (which fails loudly if
upstream moved what it replaces):

- ``ports``: what the port to a current TensorFlow needs;
- ``security``: fixes of upstream behaviour that would leak (every variant gets them);
- ``speed``: our speed changes, installed gated: a protocol instance runs them only if
  it was made with them (``protocols.make(name, variant="tuned")``); *stock* runs
  tf-encrypted's own protocol code.
"""
from __future__ import annotations

import logging
import sys
from importlib import metadata
from types import ModuleType

from harness.tfe.patching import PatchError
from harness.tfe.ports import CompatError

__all__ = ["CompatError", "PatchError", "activate", "SUPPORTED"]

logger = logging.getLogger(__name__)

#: The versions this boundary was written and tested for.
SUPPORTED = {"tf-encrypted": ("0.9.1",), "tensorflow": ("2.15", "2.16", "2.17", "2.18", "2.19",
                                                         "2.20", "2.21")}

_active: ModuleType | None = None


def _installed(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def check_versions() -> None:
    """CompatError naming both versions unless they are ones we were written for."""
    tfe_v, tf_v = _installed("tf-encrypted"), _installed("tensorflow")
    tf_minor = ".".join(tf_v.split(".")[:2])
    if tfe_v not in SUPPORTED["tf-encrypted"] or tf_minor not in SUPPORTED["tensorflow"]:
        raise CompatError(
            f"the harness runs tf-encrypted {', '.join(SUPPORTED['tf-encrypted'])} on "
            f"TensorFlow {SUPPORTED['tensorflow'][0]}-{SUPPORTED['tensorflow'][-1]}; found "
            f"tf-encrypted {tfe_v} and TensorFlow {tf_v}. Install the pinned stack: "
            "pip install -c constraints/tf-2.21.txt -e ."
        )


def activate() -> ModuleType:
    """Apply every fix once and return ``tf_encrypted``; safe to call again.
    Raises ``CompatError`` (or ``PatchError``) if tf-encrypted cannot run here."""
    global _active
    if _active is not None:
        return _active
    if "tf_encrypted" in sys.modules:
        raise CompatError(
            "tf_encrypted was imported before the harness could patch it. "
            "Call `harness.tfe.activate()` first (it imports tf_encrypted for you)."
        )
    from harness.tfe import layers, ports, quiet, security, speed  # noqa: PLC0415

    check_versions()
    with quiet.startup():
        ports.select_legacy_keras()
        import tensorflow as tf  # noqa: PLC0415

        tf.config.list_logical_devices()  # device set-up (and CUDA probing) happens now
        ports.provide_while_v2_names()
        ports.install_op_modules()
        with ports.quiet_unbuilt_op_loaders():
            import tf_encrypted as tfe  # noqa: PLC0415
    ports.apply_imported()
    layers.apply_imported()
    security.apply_imported()
    speed.apply_imported()
    _active = tfe
    logger.debug("tf-encrypted %s activated", getattr(tfe, "__version__", "?"))
    return tfe
