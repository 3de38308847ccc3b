"""Processes of the harness seen from outside: worker processes still running, waiting
for PIDs to go, and the environment of a Python child process (no TensorFlow)."""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Iterable

import psutil

REPO = Path(__file__).resolve().parents[2]
WORKER_MODULE = "harness.net.worker"


def child_env(**extra: str) -> dict[str, str]:
    """This process's environment for a Python child that imports the repository's
    packages (``PYTHONPATH``) and keeps TensorFlow's C++ start-up lines quiet; ``extra``
    on top."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    env.update(extra)
    return env


def running_workers(parent_pid: int | None = None) -> list[str]:
    """``pid: command`` of each running harness worker (of ``parent_pid`` if given)."""
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        cmd = " ".join(proc.info["cmdline"] or [])
        if WORKER_MODULE not in cmd or proc.info["status"] == psutil.STATUS_ZOMBIE:
            continue
        if parent_pid is None or f"--parent-pid {parent_pid}" in cmd:
            found.append(f"{proc.pid}: {cmd}")
    return found


def still_running(pids: Iterable[int], within: float = 15.0) -> list[int]:
    """The PIDs still running after waiting up to ``within`` seconds (zombies count as gone)."""
    deadline = time.monotonic() + within
    alive = list(pids)
    while True:
        alive = [p for p in alive if psutil.pid_exists(p)
                 and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
        if not alive or time.monotonic() >= deadline:
            return alive
        time.sleep(0.2)
