"""Benchmark and verification harness for private inference with TF Encrypted.

Importing ``harness`` applies the compatibility layer (``harness.compat``):
legacy Keras is selected, our secure custom ops are built/loaded, and
tf-encrypted 0.9.1 is imported and patched. Import it before TensorFlow.
"""
from harness import compat as _compat

_compat.apply()

__version__ = "0.1.0"
