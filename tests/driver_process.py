"""Run a test module's ``--driver`` part in a process of its own, under the loopback
bind() shim, and return the JSON it prints last (the cluster tests that need a fresh
TensorFlow context: ``test_comm``, ``test_skeleton``)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ENV = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="2")


def run_driver(test_file: str, timeout: float = 900) -> dict:
    """``python -m harness.net.bind 127.0.0.1 -- python TEST_FILE --driver``; fails the
    test with the driver's last log lines if it exits non-zero."""
    cmd = [sys.executable, "-m", "harness.net.bind", "127.0.0.1", "--",
           sys.executable, str(Path(test_file).resolve()), "--driver"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=timeout)
    tail = "\n".join(proc.stderr.strip().splitlines()[-20:])
    assert proc.returncode == 0, f"driver failed:\n{tail}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def two_outputs(server0: str, server1: str):
    """A plain ``tf.function`` over two servers that leaves both its results on workers:
    ``w = v + 1`` on server0, ``(w, 2 w)`` from server1."""
    import tensorflow as tf  # noqa: PLC0415  (drivers only: the tests' process stays light)

    @tf.function
    def fn(v):
        with tf.device(server0):
            w = v + 1.0
        with tf.device(server1):
            return w, w * 2.0

    return fn
