"""Total memory of a run: the resident set of a process and all its descendants, sampled.

A benchmark run is several processes at once (the pytest driver, each cluster's worker
processes, serving helpers); their peaks need not coincide, so adding per-process peaks
overstates the need. ``RssSampler`` sums the RSS of the whole process tree at each
sample (psutil, every ``interval`` seconds, in a daemon thread) and keeps the largest
simultaneous total. No TensorFlow here.
"""
from __future__ import annotations

import threading
import time
from typing import Any

import psutil

MB = 1024 * 1024


def tree_rss(root: psutil.Process) -> tuple[int, int]:
    """(bytes, processes) resident now in ``root`` and its live descendants."""
    total, count = 0, 0
    try:
        members = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0, 0
    for proc in members:
        try:
            total += proc.memory_info().rss
            count += 1
        except psutil.Error:  # exited between listing and reading
            continue
    return total, count


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
        self._start = 0.0

    def _sample(self) -> None:
        total, count = tree_rss(self._root)
        self.samples += 1
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
        return {
            "peak_total_rss_mb": round(self.peak_bytes / MB, 1),
            "processes_at_peak": self.peak_processes,
            "peak_at_s": round(self.peak_at_s, 1),
            "samples": self.samples,
            "interval_s": self.interval,
            "duration_s": round(time.monotonic() - self._start, 1),
            "method": "psutil: sum of the RSS of the pytest process and all its descendants "
                      f"(cluster workers included), sampled every {self.interval} s; the "
                      "largest simultaneous total",
        }

    def __enter__(self) -> "RssSampler":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
