"""Harness custom TensorFlow ops (ChaCha20 secure random, bit ops, fused SecureNN steps).

``load()`` compiles the C++ sources in ``src/`` against the installed TensorFlow
(cached) and returns the op module; see :mod:`harness.tfe.ops.build`. Importing this
package does not import TensorFlow: the names below load ``build`` on first use.
"""
from __future__ import annotations

import importlib
from typing import Any

__all__ = ["OpsUnavailableError", "build", "library_path", "load"]


def __getattr__(name: str) -> Any:
    if name not in __all__:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module = importlib.import_module("harness.tfe.ops.build")  # sets .build to the module
    for export in __all__:
        globals()[export] = getattr(module, export)  # ... and this, back to the function
    return globals()[name]
