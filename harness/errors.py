"""Errors every layer can raise or catch without importing TensorFlow."""
from __future__ import annotations


class InputError(ValueError):
    """Input the harness refuses before any sharing, with what to do about it."""


class UnsupportedModelError(InputError):
    """The model has a layer or setting tf-encrypted cannot run privately."""
