"""Native code the harness compiles itself (our TensorFlow ops, the bind() shim): a
cached, locked, atomic compile step. No TensorFlow here: the networking layer uses it.

Outputs are cached under ``$HARNESS_OPS_CACHE`` (default ``~/.cache/tfe-harness/ops``).
"""
from __future__ import annotations

import fcntl
import logging
import os
import pathlib
import shutil
import subprocess
import tempfile
from typing import Callable

logger = logging.getLogger("harness.native")

_STDERR_TAIL_CHARS = 4000


class BuildError(RuntimeError):
    """A native library could not be built; says what to install or change."""


def cache_root() -> pathlib.Path:
    env = os.environ.get("HARNESS_OPS_CACHE")
    if env:
        return pathlib.Path(env).expanduser()
    return pathlib.Path.home() / ".cache" / "tfe-harness" / "ops"


def _compile(argv_for: Callable[[str], list[str]], target: pathlib.Path, what: str,
             package: str) -> None:
    """Run ``argv_for(temp_output)`` next to ``target``, then rename atomically."""
    fd, tmp = tempfile.mkstemp(prefix=f".{target.stem}-", suffix=".so.tmp", dir=target.parent)
    os.close(fd)
    argv = argv_for(tmp)
    compiler = argv[0]
    logger.info("compiling %s: %s", what, " ".join(argv))
    try:
        if shutil.which(compiler) is None:
            raise BuildError(
                f"compiler {compiler!r} for {what} not found (install it, e.g. "
                f"`apt-get install {package}`, or point HARNESS_CXX/HARNESS_CC at one)"
            )
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, check=False)
        except OSError as exc:
            raise BuildError(
                f"cannot run compiler {compiler!r}: {exc} (install it, e.g. "
                f"`apt-get install {package}`)"
            ) from exc
        if proc.returncode != 0:
            raise BuildError(
                f"compiling {what} failed (exit {proc.returncode}); compiler "
                f"stderr tail:\n{proc.stderr[-_STDERR_TAIL_CHARS:]}"
            )
        os.chmod(tmp, 0o755)  # mkstemp creates 0600; the cache may be shared
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    logger.info("built %s", target)


def compile_cached(target: pathlib.Path, argv_for: Callable[[str], list[str]], what: str,
                   package: str, force: bool = False) -> pathlib.Path:
    """Build ``target`` with ``argv_for(output)`` unless cached (or ``force``).

    One process compiles at a time (a lock file beside the target); the result appears
    only by an atomic rename, so concurrent workers never load a half-written library.
    """
    if target.is_file() and not force:
        logger.debug("using cached %s", target)
        return target
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(target.parent / "build.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if target.is_file() and not force:
                logger.debug("%s was built by another process", target)
            else:
                _compile(argv_for, target, what, package)
    except OSError as exc:
        raise BuildError(f"cannot write ops cache folder {target.parent}: {exc}") from exc
    return target
