"""The pytest plugin and the layers: plain pytest is secure, options fail clearly, and the
lower layers and the results commands never import TensorFlow."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PYTEST = Path(sys.executable).with_name("pytest")
# a clean environment: not under the shim, as a user's shell would be
ENV = {k: v for k, v in os.environ.items()
       if k not in ("LD_PRELOAD", "HARNESS_BIND_ADDR", "HARNESS_PYTEST_NO_REEXEC",
                    "PYTEST_ADDOPTS", "PYTEST_CURRENT_TEST")}


def _no_tensorflow(code: str) -> subprocess.CompletedProcess:
    script = code + "\nimport sys\nassert 'tensorflow' not in sys.modules, 'tensorflow imported'\n"
    return subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("module", [
    "harness", "harness.names", "harness.errors", "harness.net.cluster", "harness.net.worker",
    "harness.net.bind", "harness.net.interrupt", "harness.results.report",
    "harness.results.compare", "harness.results.baseline", "harness.results.papers",
    "harness.results.replay",
    "harness.pytest_plugin", "harness.cli", "harness.tfe"])
def test_lower_layers_do_not_import_tensorflow(module):
    proc = _no_tensorflow(f"import {module}")
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_import_harness_changes_nothing():
    proc = _no_tensorflow(textwrap.dedent("""
        import os, sys
        before = dict(os.environ), set(sys.modules)
        import harness
        assert dict(os.environ) == before[0], 'environment changed'
        assert not any(m.startswith(('tf_encrypted', 'tf_keras')) for m in sys.modules)
    """))
    assert proc.returncode == 0, proc.stderr[-2000:]


@pytest.mark.parametrize("command", [["report", "{run}"], ["check-baseline", "{run}"],
                                     ["compare", "{run}", "{run}"]])
def test_results_commands_run_without_tensorflow(tmp_path, command):
    run = tmp_path / "run"
    run.mkdir()
    summary = {"schema": 1, "environment": {}, "options": {}, "latency": [], "memory": [],
               "communication": [], "cluster": [],
               "accuracy": [{"protocol": "securenn", "deployment": "inprocess", "batch": 1,
                             "images": 10, "argmax_agreement": 1.0, "max_abs_err": 0.01,
                             "mean_abs_err": 0.001, "kl_divergence": 1e-7,
                             "plaintext_accuracy": 1.0, "private_accuracy": 1.0}]}
    (run / "summary.json").write_text(json.dumps(summary))
    argv = [c.format(run=run) for c in command]
    proc = _no_tensorflow(f"import sys\nfrom harness.cli import main\nrc = main({argv!r})\n"
                          "print('rc', rc)")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "rc 0" in proc.stdout or "rc 1" in proc.stdout  # check-baseline may flag rows


@pytest.mark.parametrize("option, message", [
    ("--batch-sizes=a", "'a' is not a positive integer"),
    ("--protocols=securenn,spdz", "unknown protocol 'spdz'"),
    ("--images=0", "'0' is not a positive integer"),
    ("--variants=fast", "unknown variant 'fast'"),
    ("--network=100mbps/4x", "--network"),
])
def test_bad_options_are_usage_errors(option, message):
    proc = subprocess.run([str(PYTEST), "bench", "--co", "-q", option, "-p", "no:cacheprovider"],
                          cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 4, proc.stdout[-1000:] + proc.stderr[-1000:]  # usage error
    assert message in proc.stderr, proc.stderr[-1000:]
    assert "Traceback" not in proc.stderr


@pytest.mark.cluster
def test_plain_pytest_driver_listens_on_loopback_only(tmp_path):
    """`pytest` started as a user would (no make, no wrapper) drives a cluster; its own
    TensorFlow server and the workers listen on 127.0.0.1 only."""
    (tmp_path / "test_driver.py").write_text(textwrap.dedent("""
        from harness.net.bind import active
        from harness.net.worker import listening_addresses, split_hostport

        def test_driver(cluster):
            assert active("127.0.0.1"), "pytest did not restart under the bind shim"
            cluster.connect()
            ports = [split_hostport(a)[1] for a in [cluster.driver_address,
                                                    *cluster.hostmap.values()]]
            for port in ports:
                assert listening_addresses(port) == {"127.0.0.1"}, port
    """))
    (tmp_path / "conftest.py").write_text(
        "from harness.tfe import activate\nactivate()\n")
    proc = subprocess.run([str(PYTEST), "-q", "-p", "no:cacheprovider", str(tmp_path)],
                          cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "1 passed" in proc.stdout


@pytest.mark.cluster
def test_ctrl_c_stops_a_plain_pytest_run_within_seconds(tmp_path):
    """Ctrl-C while a benchmark-like loop keeps TensorFlow busy on a cluster: pytest ends
    within seconds (the watchdog stops the workers) and no worker is left."""
    import signal
    import time

    from harness.net.procs import running_workers

    marker = tmp_path / "busy"
    (tmp_path / "test_busy.py").write_text(textwrap.dedent(f"""
        import pathlib
        import numpy as np
        from harness.inference.private import PrivateModel
        from models.conv_mnist import load_model

        def test_busy(cluster):
            model = PrivateModel(load_model(batch_size=8), "securenn", cluster=cluster)
            x = np.zeros((8, 28, 28, 1), np.float32)
            model.predict(x)
            pathlib.Path({str(marker)!r}).write_text("busy")
            for _ in range(100000):
                model.predict(x)
    """))
    (tmp_path / "conftest.py").write_text("from harness.tfe import activate\nactivate()\n")
    proc = subprocess.Popen([str(PYTEST), "-q", "-p", "no:cacheprovider", str(tmp_path)],
                            cwd=tmp_path, env={**ENV, "PYTHONPATH": str(ROOT)},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 400
        while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.5)
        assert marker.exists(), f"never got busy: {proc.communicate(timeout=30)[0][-3000:]}"
        time.sleep(1.0)
        sent = time.monotonic()
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
        took = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    print(f"pytest stopped {took:.2f} s after Ctrl-C")
    assert took < 15, f"pytest took {took:.1f} s to stop after Ctrl-C"
    assert proc.returncode != 0
    assert not running_workers(proc.pid)
