"""Build and load the harness custom TensorFlow ops (``src/*.cc``).

The library is compiled with g++ against the installed TensorFlow and cached
under ``$HARNESS_OPS_CACHE`` (default ``~/.cache/tfe-harness/ops``) in
``tf<version>-<key>/harness_ops.so``, where ``<key>`` hashes the sources and
the compiler command. ``$HARNESS_CXX`` overrides the compiler (default
``g++``). Every failure raises :class:`OpsUnavailableError`.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import logging
import os
import pathlib
import shutil
import subprocess
import tempfile
import threading
import types
from typing import Callable

import tensorflow as tf

__all__ = ["OpsUnavailableError", "build", "compile_cached", "library_path", "load"]

logger = logging.getLogger("harness.ops")

SRC_DIR = pathlib.Path(__file__).resolve().parent / "src"
LIB_NAME = "harness_ops.so"
# Our flags on top of TensorFlow's; the -Wno-* silence TF-header noise so a
# failing build's stderr tail shows our errors.
BASE_FLAGS = (
    "-O3",
    "-shared",
    "-fPIC",
    "-Wall",
    "-Wno-deprecated-declarations",
    "-Wno-interference-size",
    "-Wno-sign-compare",
)
_STDERR_TAIL_CHARS = 4000

_load_lock = threading.Lock()
_module: types.ModuleType | None = None
_module_path: pathlib.Path | None = None


class OpsUnavailableError(RuntimeError):
    """The custom ops library cannot be built or loaded."""


def _compiler() -> str:
    return os.environ.get("HARNESS_CXX", "g++")


def _cache_root() -> pathlib.Path:
    env = os.environ.get("HARNESS_OPS_CACHE")
    if env:
        return pathlib.Path(env).expanduser()
    return pathlib.Path.home() / ".cache" / "tfe-harness" / "ops"


def _sources() -> list[pathlib.Path]:
    sources = sorted(SRC_DIR.glob("*.cc"))
    if not sources:
        raise OpsUnavailableError(f"no C++ sources found in {SRC_DIR}")
    return sources


def _tf_flags() -> tuple[list[str], list[str]]:
    """TensorFlow compile and link flags, after checking headers and library exist."""
    include = pathlib.Path(tf.sysconfig.get_include())
    if not (include / "tensorflow" / "core" / "framework" / "op_kernel.h").is_file():
        raise OpsUnavailableError(
            f"TensorFlow C++ headers not found under {include}; reinstall the "
            f"full TensorFlow wheel (pip install --force-reinstall "
            f"tensorflow=={tf.__version__})"
        )
    lib_dir = pathlib.Path(tf.sysconfig.get_lib())
    if not any(lib_dir.glob("libtensorflow_framework.so*")):
        raise OpsUnavailableError(
            f"libtensorflow_framework.so not found in {lib_dir}; reinstall the "
            f"full TensorFlow wheel (pip install --force-reinstall "
            f"tensorflow=={tf.__version__})"
        )
    return list(tf.sysconfig.get_compile_flags()), list(tf.sysconfig.get_link_flags())


def _command() -> tuple[list[str], list[str]]:
    """(compiler with compile flags, link flags); both are part of the cache key."""
    compile_flags, link_flags = _tf_flags()
    return [_compiler(), *BASE_FLAGS, *compile_flags], link_flags


def _target(command: tuple[list[str], list[str]]) -> pathlib.Path:
    """Cache path keyed on 16 hex digits of sha256(sources, headers, command)."""
    digest = hashlib.sha256()
    for path in sorted(SRC_DIR.iterdir()):
        if path.suffix in (".cc", ".h") and path.is_file():
            digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    digest.update("\0".join([*command[0], *command[1]]).encode())
    return _cache_root() / f"tf{tf.__version__}-{digest.hexdigest()[:16]}" / LIB_NAME


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
            raise OpsUnavailableError(
                f"compiler {compiler!r} for {what} not found (install it, e.g. "
                f"`apt-get install {package}`, or point HARNESS_CXX/HARNESS_CC at one)"
            )
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, check=False)
        except OSError as exc:
            raise OpsUnavailableError(
                f"cannot run compiler {compiler!r}: {exc} (install it, e.g. "
                f"`apt-get install {package}`)"
            ) from exc
        if proc.returncode != 0:
            raise OpsUnavailableError(
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
        raise OpsUnavailableError(f"cannot write ops cache folder {target.parent}: {exc}") from exc
    return target


def build(force: bool = False) -> pathlib.Path:
    """Compile the ops library unless cached (or ``force``); return its path."""
    command = _command()
    compile_part, link_flags = command
    # Link flags must follow the sources.
    return compile_cached(
        _target(command),
        lambda out: [*compile_part, *map(str, _sources()), "-o", out, *link_flags],
        "harness ops", "g++", force=force,
    )


def load() -> types.ModuleType:
    """Build if needed and load the ops module (once per process)."""
    global _module, _module_path
    with _load_lock:
        if _module is None:
            path = build()
            try:
                _module = tf.load_op_library(str(path))
            except (tf.errors.OpError, OSError) as exc:
                raise OpsUnavailableError(
                    f"loading {path} failed: {exc}; delete the cache folder "
                    f"{path.parent} and rebuild (python -m harness.ops.build)"
                ) from exc
            _module_path = path
            logger.info("loaded harness ops from %s", path)
        return _module


def library_path() -> pathlib.Path:
    """Path of the loaded library, or of the (built if needed) cached one."""
    with _load_lock:
        if _module_path is not None:
            return _module_path
    return build()


def main() -> None:
    """Build (``--force`` to rebuild) and print the library path."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--force", action="store_true", help="rebuild even if cached")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    print(build(force=args.force))


if __name__ == "__main__":
    main()
