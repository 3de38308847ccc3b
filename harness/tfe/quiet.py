"""TensorFlow's C++ start-up lines, kept out of sight unless asked for.

TensorFlow 2.21 logs through absl before anything initialises absl logging, so
``TF_CPP_MIN_LOG_LEVEL`` no longer silences its start-up lines (oneDNN notes, CUDA
probing, ``failed call to cuInit`` on a machine without a GPU). While TensorFlow loads
and picks its devices, ``startup()`` sends file descriptor 2 to a temporary file, then
writes back every line that is not such start-up noise: real errors still show.
It filters only when ``TF_CPP_MIN_LOG_LEVEL`` is set above 0 (the harness's commands and
its pytest plugin set 3 unless ``-v`` is given).
"""
from __future__ import annotations

import os
import re
import sys
import tempfile
from contextlib import contextmanager
from typing import Iterator

_NOISE = re.compile(
    r"^(WARNING: All log messages before absl::InitializeLog\(\) is called"
    r"|I\d{4} "                                   # absl INFO lines
    r"|E\d{4} .*(cuInit|cuda|CUDA)"               # no GPU here
    r"|To enable the following instructions:"     # cpu_feature_guard's second line
    r")")


def wanted() -> bool:
    return os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0") not in ("", "0")


@contextmanager
def startup() -> Iterator[None]:
    """Filter TensorFlow's start-up lines from fd 2 inside the block (see module doc)."""
    if not wanted():
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            kept = [line for line in sink.read().decode(errors="replace").splitlines(True)
                    if not _NOISE.match(line)]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()
