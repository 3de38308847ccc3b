"""Build the ``bind()`` shim (``shim/bind_shim.c``) that keeps workers off public interfaces.

Preloaded into every worker (``LD_PRELOAD``) with ``HARNESS_BIND_ADDR`` set, it
rewrites TensorFlow's wildcard listening address to that one address. Plain C,
no TensorFlow; cached beside the ops library, keyed on the source and command.
"""
from __future__ import annotations

import fcntl
import hashlib
import os
import pathlib
import shutil
import subprocess
import tempfile

from harness.ops.build import OpsUnavailableError, _cache_root, logger

SOURCE = pathlib.Path(__file__).resolve().parent / "shim" / "bind_shim.c"
LIB_NAME = "libharness_bind.so"


def build_bind_shim() -> pathlib.Path:
    """Compile the shim unless cached; return the path of the shared object."""
    cc = os.environ.get("HARNESS_CC", "gcc")
    flags = ["-O2", "-shared", "-fPIC", "-Wall", "-Werror"]
    digest = hashlib.sha256(SOURCE.read_bytes() + "\0".join([cc, *flags]).encode())
    target = _cache_root() / f"bind-shim-{digest.hexdigest()[:16]}" / LIB_NAME
    if target.is_file():
        return target
    if shutil.which(cc) is None:
        raise OpsUnavailableError(
            f"C compiler {cc!r} not found; it builds the bind() shim that keeps workers "
            "on loopback (install it, e.g. `apt-get install gcc`, or set HARNESS_CC)"
        )
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / "build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if target.is_file():
            return target
        fd, tmp = tempfile.mkstemp(suffix=".so.tmp", dir=target.parent)
        os.close(fd)
        try:
            proc = subprocess.run([cc, *flags, str(SOURCE), "-o", tmp, "-ldl"],
                                  capture_output=True, text=True, check=False)
            if proc.returncode != 0:
                raise OpsUnavailableError(f"compiling the bind() shim failed:\n{proc.stderr[-4000:]}")
            os.chmod(tmp, 0o755)
            os.replace(tmp, target)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    logger.info("built %s", target)
    return target
