"""Harness custom TensorFlow ops (ChaCha20 secure random, bit ops).

``load()`` compiles the C++ sources in ``src/`` against the installed
TensorFlow (cached) and returns the op module; see :mod:`harness.tfe.ops.build`.
"""

from harness.tfe.ops.build import OpsUnavailableError, build, library_path, load

__all__ = ["OpsUnavailableError", "build", "library_path", "load"]
