"""Total memory of a run: the memory of a process and all its descendants, sampled.

A benchmark run is several processes at once (the pytest driver, each cluster's worker
processes, serving helpers); their peaks need not coincide, so adding per-process peaks
overstates the need. ``RssSampler`` sums the memory of the whole process tree at each
sample (every ``interval`` seconds, in a daemon thread) and keeps the largest
simultaneous total.

Two sums are kept. The proportional set size (PSS, Linux ``/proc/PID/smaps_rollup``)
counts a page shared by k processes as 1/k in each, so the PSS of the tree adds up to
the physical memory it uses; it is the figure the memory target is read from. The RSS
sum counts every shared page (TensorFlow's libraries, mapped by every worker) once per
process, so it overstates the total; it is kept beside it. Where smaps_rollup cannot be
read, the PSS figure is absent and the summary says so. At the PSS peak the sampler also
keeps what the total was made of, by role (``role_of``: the driver, cluster workers, a
serving owner, serving clients, the shaped networks' reapers), so a report can say
which phase needs the memory. No TensorFlow here.
"""
from __future__ import annotations

import threading
import time
from typing import Any

import psutil

MB = 1024 * 1024


def pss_bytes(pid: int) -> int | None:
    """The proportional set size of ``pid`` (None where the kernel does not say)."""
    try:
        with open(f"/proc/{pid}/smaps_rollup", "rb") as fh:
            for line in fh:
                if line.startswith(b"Pss:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def role_of(proc: psutil.Process, root: psutil.Process) -> str:
    """What a process of the tree is (the driver, a cluster worker, a serving owner or
    client, a namespace reaper), read from its command line, for the breakdown at the peak."""
    if proc.pid == root.pid:
        return "driver"
    try:
        args = proc.cmdline()
    except psutil.Error:
        return "other"
    if "harness.net.worker" in args:
        return "cluster workers"
    if "harness.net.reaper" in args:
        return "namespace reapers"
    if "harness" in args:  # python -m harness [options] COMMAND ...
        if "client" in args:
            return "serving clients"
        if "serve" in args:
            return "serving owners"
    return "other"


def tree_memory(root: psutil.Process,
                members_pss: list[tuple[psutil.Process, int]] | None = None,
                ) -> tuple[int, int | None, int]:
    """(RSS bytes, PSS bytes or None, processes) now in ``root`` and its live descendants.
    PSS is None when this system does not give it for ``root``; a descendant that has
    just exited (or is a zombie, which holds no memory) counts 0. ``members_pss``, if
    given, receives (process, PSS bytes) of each member."""
    rss, count = 0, 0
    pss = pss_bytes(root.pid)
    try:
        members = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0, None, 0
    for proc in members:
        try:
            rss += proc.memory_info().rss
        except psutil.Error:  # exited between listing and reading
            continue
        count += 1
        if pss is None:
            continue
        mine = pss if proc is root else (pss_bytes(proc.pid) or 0)
        if proc is not root:
            pss += mine
        if members_pss is not None:
            members_pss.append((proc, mine))
    return rss, pss, count


def by_role(members_pss: list[tuple[psutil.Process, int]],
            root: psutil.Process) -> dict[str, list[int]]:
    """role -> [PSS bytes, processes] (``role_of``)."""
    roles: dict[str, list[int]] = {}
    for proc, mine in members_pss:
        entry = roles.setdefault(role_of(proc, root), [0, 0])
        entry[0] += mine
        entry[1] += 1
    return roles


class RssSampler:
    """Samples the total RSS of this process's tree until ``stop()``; a context manager."""

    def __init__(self, interval: float = 0.5, pid: int | None = None) -> None:
        self.interval = interval
        self._root = psutil.Process(pid)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.samples = 0
        self.peak_bytes = 0
        self.peak_processes = 0
        self.peak_at_s = 0.0
        self.peak_pss_bytes: int | None = 0
        self.pss_peak_processes = 0
        self.pss_peak_roles: dict[str, list[int]] = {}
        self._start = 0.0

    def _sample(self) -> None:
        members: list[tuple[psutil.Process, int]] = []
        total, pss, count = tree_memory(self._root, members)
        self.samples += 1
        if pss is None:
            self.peak_pss_bytes = None  # not readable here: no PSS figure at all
        elif self.peak_pss_bytes is not None and pss > self.peak_pss_bytes:
            self.peak_pss_bytes, self.pss_peak_processes = pss, count
            self.pss_peak_roles = by_role(members, self._root)  # command lines: peaks only
        if total > self.peak_bytes:
            self.peak_bytes, self.peak_processes = total, count
            self.peak_at_s = time.monotonic() - self._start

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def start(self) -> "RssSampler":
        self._start = time.monotonic()
        self._sample()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> dict[str, Any]:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._sample()
        return self.summary()

    def summary(self) -> dict[str, Any]:
        pss = self.peak_pss_bytes
        return {
            "peak_total_pss_mb": round(pss / MB, 1) if pss is not None else None,
            "processes_at_pss_peak": self.pss_peak_processes if pss is not None else None,
            "pss_peak_by_role": {role: {"mb": round(b / MB, 1), "processes": n}
                                 for role, (b, n) in sorted(self.pss_peak_roles.items(),
                                                            key=lambda kv: -kv[1][0])}
            if pss is not None else None,
            "peak_total_rss_mb": round(self.peak_bytes / MB, 1),
            "processes_at_peak": self.peak_processes,
            "peak_at_s": round(self.peak_at_s, 1),
            "samples": self.samples,
            "interval_s": self.interval,
            "duration_s": round(time.monotonic() - self._start, 1),
            "method": "sum over the pytest process and all its descendants (cluster "
                      "workers and serving clients included) of the proportional set size "
                      "(/proc/PID/smaps_rollup: a shared page counts 1/k in each of its k "
                      "processes) and, beside it, of the RSS (psutil: shared pages counted in "
                      f"every process), sampled every {self.interval} s; the largest "
                      "simultaneous totals" + ("" if pss is not None else
                                               "; PSS was not readable on this system"),
        }

    def __enter__(self) -> "RssSampler":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
