"""``python -m harness predict`` with a model by name or file and inputs from an .npz."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np

from harness.inference.data import load_mnist
from harness.net.procs import REPO, child_env


def _predict(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness", "predict", "--json", *args],
                          cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=600)


def test_zoo_model_on_user_data_agrees(tmp_path):
    split = load_mnist()
    data = tmp_path / "digits.npz"
    np.savez(data, x=split.x_test[100:108], y=split.y_test[100:108])
    proc = _predict("--model", "A", "--data", str(data), "--protocol", "securenn",
                    "--images", "8", "--batch", "4")
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["model"] == "A" and summary["images"] == 8
    assert summary["argmax_agreement"] == 1.0


def test_bad_data_file_is_one_clear_line(tmp_path):
    data = tmp_path / "bad.npz"
    np.savez(data, images=np.zeros((2, 28, 28, 1), np.float32))  # no x / y arrays
    proc = _predict("--model", "tutorial", "--data", str(data), "--images", "2")
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "bad.npz" in errors[0], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr


def test_unknown_model_name_lists_the_zoo():
    proc = _predict("--model", "Z", "--images", "1")
    assert proc.returncode == 2
    assert "tutorial" in proc.stderr and "Traceback" not in proc.stderr
