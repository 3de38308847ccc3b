"""Run a process with its wildcard listening sockets pinned to one address.

TensorFlow's gRPC servers, the workers' and the driver's own (a driver connected
to a cluster serves tensors to the workers), always listen on every interface.
``python -m harness.net.bind ADDR -- CMD ...`` runs CMD under our ``bind()`` shim
(``harness/ops/shim/bind_shim.c``, via ``LD_PRELOAD``) so such sockets listen on
ADDR only. The harness's own entry points (``python -m harness``, workers, the
Makefile) use it for themselves.
"""
from __future__ import annotations

import os
import sys
from typing import Sequence

ENV = "HARNESS_BIND_ADDR"


def shim_env(bind: str, env: dict[str, str] | None = None) -> dict[str, str]:
    """``env`` (default: ours) plus the shim, preloaded, pinning wildcard binds to ``bind``."""
    from harness.net.shim import build_bind_shim  # noqa: PLC0415

    out = dict(os.environ if env is None else env)
    shim = str(build_bind_shim())
    preload = [p for p in out.get("LD_PRELOAD", "").split() if p and p != shim]
    out["LD_PRELOAD"] = " ".join([shim, *preload])
    out[ENV] = bind
    return out


def active(bind: str) -> bool:
    """True if this process started under the shim pinned to ``bind``."""
    from harness.net.shim import LIB_NAME  # noqa: PLC0415

    return os.environ.get(ENV) == bind and LIB_NAME in os.environ.get("LD_PRELOAD", "")


def reexec(bind: str, argv: Sequence[str], force: bool = False) -> None:
    """Replace this process by ``python argv...`` under the shim, unless already there
    (``force``: even then, e.g. to restart with a changed environment)."""
    if force or not active(bind):
        os.execve(sys.executable, [sys.executable, *argv], shim_env(bind))


def loopback_driver(bind: str = "127.0.0.1") -> None:
    """For a script of your own that drives a cluster: call it first thing. It restarts
    the script once under the shim (same interpreter, arguments and environment), so
    the driver's TensorFlow server listens on ``bind`` only; under the shim it returns
    at once. Raises RuntimeError if TensorFlow is already loaded (too late to restart
    cleanly)."""
    if active(bind):
        return
    if "tensorflow" in sys.modules:
        raise RuntimeError(
            "call harness.net.bind.loopback_driver() before TensorFlow is imported, or run "
            f"the script as `python -m harness.net.bind {bind} -- python SCRIPT`")
    sys.stdout.flush()
    sys.stderr.flush()
    argv = list(getattr(sys, "orig_argv", [sys.executable, *sys.argv]))
    os.execve(sys.executable, [sys.executable, *argv[1:]], shim_env(bind))


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) < 3 or args[1] != "--":
        print("usage: python -m harness.net.bind ADDR -- COMMAND [ARGS...]", file=sys.stderr)
        return 2
    bind, command = args[0], args[2:]
    os.execvpe(command[0], command, shim_env(bind))
    return 127  # not reached


if __name__ == "__main__":
    raise SystemExit(main())
