"""The namespace reaper: removes what a process's shaped networks left (namespaces, the
processes in them, veths, bridges and with them their qdiscs) as soon as that process
is gone, however it ended: SIGKILL too, which no handler of its own can catch.

``watch()`` (called by ``netns.Hosts.create``) starts, once per process, a small child
in a session of its own (a Ctrl-C in the terminal does not reach it) holding the read
end of a pipe whose write end only the watched process holds (it is not inherited by
its other children). When the watched process ends, by any means, the kernel closes
the write end; the reaper reads end-of-file, waits until that process no longer runs,
runs ``netns.sweep()``, which removes only what belongs to creators that are gone, and
exits. It listens on nothing and touches nothing else; after a normal exit, which has
cleaned up already, it finds nothing to remove.

Without it, leftovers of a killed driver stayed until the next start swept them (that
sweep is kept: the reaper can be killed too, e.g. by ``kill -9`` of its session).
"""
from __future__ import annotations

import os
import subprocess
import sys
import threading

from harness.net.procs import child_env, still_running

_lock = threading.Lock()
_watching: dict[int, int] = {}  # watched PID -> write end of its reaper's pipe


def watch() -> None:
    """Start this process's reaper if it has none (a forked child gets its own)."""
    me = os.getpid()
    with _lock:
        if me in _watching:
            return
        read_end, write_end = os.pipe()  # both not inheritable (PEP 446)
        try:
            subprocess.Popen([sys.executable, "-m", __name__, str(me), str(read_end)],
                             pass_fds=(read_end,), start_new_session=True,
                             stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                             env=child_env())
        except BaseException:
            os.close(write_end)
            raise
        finally:
            os.close(read_end)
        _watching[me] = write_end


def _reap(pid: int, read_end: int, patience: float = 30.0) -> None:
    from harness.net import netns  # noqa: PLC0415

    while os.read(read_end, 4096):  # nothing is ever written: returns at end-of-file
        pass
    still_running([pid], within=patience)  # its descriptors close before it has quite exited
    netns.sweep(log=lambda line: print(f"harness reaper of {pid}: {line}", file=sys.stderr))


if __name__ == "__main__":
    _reap(int(sys.argv[1]), int(sys.argv[2]))
