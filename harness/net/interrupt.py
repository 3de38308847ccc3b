"""Ctrl-C that stops a run within seconds, even while TensorFlow holds the main thread.

Python runs a signal handler only when the main thread returns to the interpreter; a
private prediction on a cluster can keep it inside TensorFlow for a long time. The
kernel's signal is also written to a wakeup pipe at once (``signal.set_wakeup_fd``);
a watcher thread reading it stops every live cluster (its workers' sockets close, so
the call in progress fails and the main thread unwinds as usual), and if the process
has not ended within ``grace`` seconds, it removes what the run owns and exits 130.
"""
from __future__ import annotations

import os
import signal
import sys
import threading
import time

_installed = False
_callbacks: list = []


def on_interrupt(callback) -> None:
    """Run ``callback()`` (after the clusters are stopped) when an interrupt forces the exit."""
    _callbacks.append(callback)


def _cleanup() -> None:
    from harness.net import cluster  # noqa: PLC0415

    cluster.stop_all()
    for callback in list(_callbacks):
        try:
            callback()
        except Exception:  # noqa: BLE001  (best effort: the process is going away)
            pass


def _watch(read_fd: int, grace: float) -> None:
    while True:
        try:
            data = os.read(read_fd, 64)
        except OSError:
            return
        if not data:
            return
        if any(sig in (signal.SIGINT, signal.SIGTERM) for sig in data):
            deadline = time.monotonic() + grace
            try:
                _cleanup()
            finally:
                while time.monotonic() < deadline:
                    time.sleep(0.05)
                sys.stderr.write("interrupted: workers stopped, exiting\n")
                sys.stderr.flush()
                os._exit(130)


def install_interrupt_watchdog(grace: float = 1.5) -> bool:
    """Watch SIGINT/SIGTERM from a thread (main thread only; once per process).
    Returns False where it cannot (not the main thread, or a wakeup fd in use)."""
    global _installed
    if _installed:
        return True
    if threading.current_thread() is not threading.main_thread():
        return False
    read_fd, write_fd = os.pipe()
    os.set_blocking(write_fd, False)
    try:
        previous = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    except ValueError:
        os.close(read_fd)
        os.close(write_fd)
        return False
    if previous != -1:  # someone else's: give it back, do without
        signal.set_wakeup_fd(previous)
        os.close(read_fd)
        os.close(write_fd)
        return False
    threading.Thread(target=_watch, args=(read_fd, grace), name="harness-interrupt",
                     daemon=True).start()
    _installed = True
    return True
