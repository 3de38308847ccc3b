"""The compatibility layer: tf-encrypted imports and runs on our stack, fails closed."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import tf_encrypted as tfe
from tf_encrypted.operations import aux, secure_random

import harness.tfe.aux as our_aux
import harness.tfe.secure_random as our_random
from harness.net.procs import child_env

ROOT = Path(__file__).resolve().parent.parent
ENV = child_env()


def _python(code: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], env={**ENV, **env},
                          capture_output=True, text=True, timeout=300)


def test_tf_encrypted_uses_our_ops():
    assert secure_random.secure_seed is our_random.secure_seed
    assert aux.bit_gather is our_aux.bit_gather
    assert secure_random.supports_secure_randomness()
    seed = secure_random.secure_seed()
    assert seed.shape == (8,) and seed.dtype.name == "int32"


def test_import_prints_no_insecure_randomness_warning():
    proc = _python("from harness.tfe import activate; activate(); import tf_encrypted; print(tf_encrypted.__version__)")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "insecure" not in (proc.stdout + proc.stderr).lower()
    assert proc.stdout.strip().endswith("0.9.1")


def test_keras3_already_loaded_is_a_clear_error():
    env = {k: v for k, v in ENV.items() if k != "TF_USE_LEGACY_KERAS"}
    proc = subprocess.run([sys.executable, "-c", "import tensorflow; from harness.tfe import activate; activate()"], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "Call `harness.tfe.activate()` before importing `tensorflow`" in proc.stderr


def test_missing_compiler_fails_closed(tmp_path):
    proc = _python("from harness.tfe import activate; activate()", HARNESS_CXX="/nonexistent/g++",
                   HARNESS_OPS_CACHE=str(tmp_path))
    assert proc.returncode != 0
    assert "OpsUnavailableError" in proc.stderr and "g++" in proc.stderr
    assert "insecure" not in proc.stderr.lower()


def test_avgpool_reshape_path_runs_under_securenn():
    """Port fix: pool == strides and even H, W took the tf.Dimension path."""
    import numpy as np
    import tensorflow as tf

    tfe.set_config(tfe.LocalConfig(["server0", "server1", "server2"]))
    tfe.set_protocol(tfe.protocol.SecureNN())
    x = np.arange(16, dtype=np.float32).reshape(1, 1, 4, 4) / 16  # NCHW, as tf-encrypted pools
    pooled = tfe.avgpool2d(tfe.define_private_variable(tf.constant(x)), (2, 2), (2, 2), "VALID")
    expected = x.reshape(1, 1, 2, 2, 2, 2).mean(axis=(3, 5))
    np.testing.assert_allclose(pooled.reveal().to_native(), expected, atol=1e-3)
