"""Build the ``bind()`` shim (``shim_src/bind_shim.c``) that keeps workers off public interfaces.

Preloaded into every worker (``LD_PRELOAD``) with ``HARNESS_BIND_ADDR`` set, it
rewrites TensorFlow's wildcard listening address to that one address. Plain C,
no TensorFlow; cached beside the ops library, keyed on the source and command.
"""
from __future__ import annotations

import hashlib
import os
import pathlib

from harness.native import cache_root, compile_cached

SOURCE = pathlib.Path(__file__).resolve().parent / "shim_src" / "bind_shim.c"
LIB_NAME = "libharness_bind.so"


def build_bind_shim() -> pathlib.Path:
    """Compile the shim unless cached; return the path of the shared object."""
    cc = os.environ.get("HARNESS_CC", "gcc")
    flags = ["-O2", "-shared", "-fPIC", "-Wall", "-Werror"]
    digest = hashlib.sha256(SOURCE.read_bytes() + "\0".join([cc, *flags]).encode())
    target = cache_root() / f"bind-shim-{digest.hexdigest()[:16]}" / LIB_NAME
    return compile_cached(target, lambda out: [cc, *flags, str(SOURCE), "-o", out, "-ldl"],
                          "the bind() shim that keeps workers on loopback", "gcc")
