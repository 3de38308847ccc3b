"""Replacing attributes of tf-encrypted's modules and classes, loudly.

Every fix of the boundary goes through ``replace``: it refuses to add an attribute
that is not there (an upstream change must fail here, naming what moved, instead of
leaving our code unused beside a renamed function) and remembers the original, so
tests and the stock variant can reach it.
"""
from __future__ import annotations

from typing import Any, Callable

_ORIGINALS: dict[tuple[int, str], Any] = {}


class PatchError(RuntimeError):
    """What a fix replaces is not where tf-encrypted 0.9.1 had it."""


def _where(owner: Any) -> str:
    return getattr(owner, "__qualname__", None) or getattr(owner, "__name__", repr(owner))


def replace(owner: Any, name: str, new: Any | Callable[[Any], Any], *,
            wrap: bool = False) -> Any:
    """Set ``owner.name`` to ``new`` (or ``new(original)`` with ``wrap``); returns the
    original. Idempotent per (owner, name): a second call replaces again from the
    original, never wraps a wrapper."""
    key = (id(owner), name)
    if key in _ORIGINALS:
        original = _ORIGINALS[key]
    else:
        if not hasattr(owner, name):
            raise PatchError(
                f"{_where(owner)}.{name} does not exist: this tf-encrypted is not the 0.9.1 "
                "the harness was written for (pip install tf-encrypted==0.9.1)"
            )
        original = getattr(owner, name)
        _ORIGINALS[key] = original
    setattr(owner, name, new(original) if wrap else new)
    return original


def original(owner: Any, name: str) -> Any:
    """What ``replace`` found at ``owner.name`` before replacing it."""
    try:
        return _ORIGINALS[(id(owner), name)]
    except KeyError:
        raise PatchError(f"{_where(owner)}.{name} was not replaced") from None
