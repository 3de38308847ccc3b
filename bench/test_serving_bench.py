"""Private prediction serving, end to end: a client process asks a served model.

Per protocol (SecureNN, ABY3; within ``--protocols``) one ``python -m harness serve``
(server0-2 as workers, the client slot external) and one long-lived client process
(``python -m harness client --stdin``: one image index per line in, one JSON line out)
are started. The benchmark process only writes the index and reads the answer, so the
measured time is the client's request latency: secret-sharing the image in the client,
the servers' private inference, fetching and unmasking the result, plus a pipe round
trip. Groups are ``serving-<protocol>``; ``extra_info`` has the argmax agreement and max
abs error against plaintext Keras, the latency the client measured itself, the owner's
own step time (from its log), the client's first request (one-time trace) and the
sequential throughput.
"""
from __future__ import annotations

import json
import os
import re
import selectors
import signal
import subprocess
import sys
import time
from itertools import count
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytest

from harness.net.cluster import exit_with_parent
from harness.inference.data import load_mnist
from harness.results.metrics import compare
from harness.inference.private import plaintext_predictor
from models.conv_mnist import load_model

REPO = Path(__file__).resolve().parents[1]
SERVING_PROTOCOLS = ("securenn", "aby3")
STEP_LINE = re.compile(r"answered \d+ request\(s\) \(batch \d+, slots [^)]*\) in ([0-9.]+) ms")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "serving_protocol" in metafunc.fixturenames:
        from harness.pytest_plugin import session_of  # noqa: PLC0415

        chosen = session_of(metafunc.config).protocols
        metafunc.parametrize("serving_protocol",
                             [p for p in SERVING_PROTOCOLS if p in chosen], scope="module")


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return env


class Served:
    """A serving model owner and a connected client, both in their own processes."""

    def __init__(self, protocol: str, tmp: Path) -> None:
        self.protocol = protocol
        self.hostmap = tmp / "hostmap.json"
        self.serve_log = tmp / "serve.log"
        self.client_log = tmp / "client.log"
        self.first_request_ms: float | None = None
        self._ids = count()
        self.results: list[tuple[int, dict[str, Any]]] = []
        with open(self.serve_log, "w") as err:
            self.serve = subprocess.Popen(
                [sys.executable, "-m", "harness", "-v", "serve", "--protocol", protocol,
                 "--hostmap-out", str(self.hostmap), "--idle-timeout", "600"],
                stdout=subprocess.DEVNULL, stderr=err, stdin=subprocess.DEVNULL,
                env=_env(), cwd=REPO, preexec_fn=exit_with_parent)
        self.client: subprocess.Popen | None = None
        deadline = time.monotonic() + 300
        while not self.hostmap.exists():
            if self.serve.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"serve did not come up:\n{self._tail(self.serve_log)}")
            time.sleep(0.2)
        with open(self.client_log, "w") as err:
            self.client = subprocess.Popen(
                [sys.executable, "-m", "harness", "client", "--config", str(self.hostmap),
                 "--stdin"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err,
                text=True, bufsize=1, env=_env(), cwd=REPO, preexec_fn=exit_with_parent)
        self._sel = selectors.DefaultSelector()
        self._sel.register(self.client.stdout, selectors.EVENT_READ)
        self.ready = self._read(300)
        assert self.ready.get("ready"), self.ready

    @staticmethod
    def _tail(path: Path, lines: int = 30) -> str:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])

    def _read(self, timeout: float) -> dict[str, Any]:
        if not self._sel.select(timeout):
            raise TimeoutError(f"client silent for {timeout:.0f} s:\n{self._tail(self.client_log)}")
        line = self.client.stdout.readline()
        if not line:
            raise RuntimeError(f"client exited:\n{self._tail(self.client_log)}")
        return json.loads(line)

    def request(self, index: int, timeout: float = 120.0) -> dict[str, Any]:
        self.client.stdin.write(f"{index}\n")
        self.client.stdin.flush()
        answer = self._read(timeout)
        if "error" in answer:
            raise RuntimeError(answer["error"])
        self.results.append((index, answer))
        return answer

    def next_request(self, n_images: int) -> dict[str, Any]:
        return self.request(next(self._ids) % n_images)

    def owner_step_ms(self) -> list[float]:
        return [float(m) for m in STEP_LINE.findall(self.serve_log.read_text(errors="replace"))]

    def close(self) -> None:
        if self.client is not None and self.client.poll() is None:
            try:
                self.client.stdin.close()
                self.client.wait(timeout=30)
            except (OSError, subprocess.TimeoutExpired):
                self.client.kill()
                self.client.wait()
        if self.serve.poll() is None:
            self.serve.send_signal(signal.SIGTERM)
            try:
                self.serve.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.serve.kill()
                self.serve.wait()


@pytest.fixture(scope="module")
def served(serving_protocol: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    deployment = Served(serving_protocol, tmp_path_factory.mktemp(f"serving-{serving_protocol}"))
    try:
        start = time.perf_counter()
        deployment.request(0, timeout=300)  # the client's one-time trace
        deployment.first_request_ms = (time.perf_counter() - start) * 1e3
        yield deployment
    finally:
        deployment.close()
    import psutil  # noqa: PLC0415

    left = [p.pid for p in psutil.process_iter(["cmdline"])
            if f"--parent-pid {deployment.serve.pid}" in " ".join(p.info["cmdline"] or [])]
    assert not left, f"workers left behind by serve: {left}"


def _accuracy(served: Served, results: list[tuple[int, dict[str, Any]]]) -> dict[str, float]:
    split = load_mnist()
    idx = np.array([i for i, _ in results])
    private = np.array([r["logits"] for _, r in results], dtype=np.float64)
    plain = plaintext_predictor(load_model(batch_size=1))
    expected = np.concatenate([plain(split.x_test[i:i + 1]) for i in idx])
    agreement = compare(private, expected, split.y_test[idx])
    return {"images": agreement.images, "argmax_agreement": agreement.argmax_agreement,
            "max_abs_err": agreement.max_abs_err, "mean_abs_err": agreement.mean_abs_err}


def test_serving_latency(benchmark, served, serving_protocol, options):
    """One private prediction request, as the client sees it (sequential, batch 1)."""
    benchmark.group = f"serving-{serving_protocol}"
    n_images = 16 if options.quick else 64
    rounds = 8 if options.quick else 40
    before = len(served.results)
    benchmark.pedantic(served.next_request, args=(n_images,), rounds=rounds, warmup_rounds=1,
                       iterations=1)
    mine = served.results[before:]
    inside = [r["latency_ms"] for _, r in mine]
    steps = served.owner_step_ms()
    benchmark.extra_info.update(
        kind="serving-latency", protocol=serving_protocol, batch=1,
        client_measured_ms_median=float(np.median(inside)),
        owner_step_ms_median=float(np.median(steps[1:])) if len(steps) > 1 else None,
        first_request_ms=served.first_request_ms,
        client_connect_s=served.ready.get("connect_s"),
        **_accuracy(served, mine))


def test_serving_throughput(benchmark, served, serving_protocol, options):
    """Sequential requests per second: one client, ``k`` requests back to back per round."""
    benchmark.group = f"serving-{serving_protocol}"
    k = 5 if options.quick else 20
    rounds = 2 if options.quick else 3
    before = len(served.results)

    def burst() -> None:
        for _ in range(k):
            served.next_request(64)

    benchmark.pedantic(burst, rounds=rounds, warmup_rounds=0, iterations=1)
    benchmark.extra_info.update(
        kind="serving-throughput", protocol=serving_protocol, batch=1, requests_per_round=k,
        requests_per_s=k / benchmark.stats.stats.median,
        **_accuracy(served, served.results[before:]))
