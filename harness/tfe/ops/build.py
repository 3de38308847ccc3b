"""Build and load the harness custom TensorFlow ops (``src/*.cc``).

The library is compiled with g++ against the installed TensorFlow and cached
under ``$HARNESS_OPS_CACHE`` (default ``~/.cache/tfe-harness/ops``) in
``tf<version>-<key>/harness_ops.so``, where ``<key>`` hashes the sources and
the compiler command. ``$HARNESS_CXX`` overrides the compiler (default
``g++``). Every failure raises :class:`OpsUnavailableError`.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import pathlib
import threading
import types

import tensorflow as tf

from harness.native import BuildError, cache_root, compile_cached

__all__ = ["OpsUnavailableError", "build", "library_path", "load"]

logger = logging.getLogger("harness.tfe.ops")

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

_load_lock = threading.Lock()
_module: types.ModuleType | None = None
_module_path: pathlib.Path | None = None


class OpsUnavailableError(BuildError):
    """The custom ops library cannot be built or loaded."""


def _compiler() -> str:
    return os.environ.get("HARNESS_CXX", "g++")


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
    return cache_root() / f"tf{tf.__version__}-{digest.hexdigest()[:16]}" / LIB_NAME


def build(force: bool = False) -> pathlib.Path:
    """Compile the ops library unless cached (or ``force``); return its path."""
    command = _command()
    compile_part, link_flags = command
    # Link flags must follow the sources.
    try:
        return compile_cached(
            _target(command),
            lambda out: [*compile_part, *map(str, _sources()), "-o", out, *link_flags],
            "harness ops", "g++", force=force,
        )
    except BuildError as exc:
        if isinstance(exc, OpsUnavailableError):
            raise
        raise OpsUnavailableError(str(exc)) from exc


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
                    f"{path.parent} and rebuild (python -m harness.tfe.ops)"
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
