"""Real worker processes: start, readiness, cleanup in every exit path, faults, exposure.

Drivers that connect to a cluster run in subprocesses, so this pytest process keeps
its in-process TensorFlow context and can watch the workers from outside.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from harness.net.cluster import Cluster, ClusterError, grpc_answers
from harness.net.procs import child_env, still_running
from harness.inference.private import PLAYERS
from harness.net.worker import EXIT_PORT_BUSY, listening_addresses, split_hostport

pytestmark = [pytest.mark.cluster]

ROOT = Path(__file__).resolve().parent.parent
ENV = child_env()

DRIVER = textwrap.dedent("""
    import json, signal, sys, time
    # Ctrl-C as in a terminal, even when this test runs as a background job (which
    # starts children with SIGINT ignored, and Python then keeps it ignored)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    from harness.tfe import activate; activate()
    from harness.net.cluster import Cluster
    mode = sys.argv[1]
    cluster = Cluster()
    with cluster:
        print(json.dumps([w.process.pid for w in cluster.managed]), flush=True)
        if mode == "raise":
            raise RuntimeError("the driver fails while the cluster runs")
        if mode == "wait":
            time.sleep(600)
""")


_gone = still_running


def _start_driver(mode: str) -> tuple[subprocess.Popen, list[int]]:
    proc = subprocess.Popen([sys.executable, "-c", DRIVER, mode], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, env=ENV, text=True)
    line = proc.stdout.readline()
    assert line, "driver printed no worker PIDs"
    pids = json.loads(line)
    assert len(pids) == len(PLAYERS) and all(psutil.pid_exists(p) for p in pids)
    return proc, pids


def test_cluster_starts_real_workers_and_stops_them():
    with Cluster() as cluster:
        assert list(cluster.hostmap) == list(PLAYERS)
        pids = [w.process.pid for w in cluster.managed]
        for w in cluster.workers:
            assert grpc_answers(w.address), w.name
            cmd = " ".join(psutil.Process(w.process.pid).cmdline())
            assert "harness.net.worker" in cmd and w.name in cmd
        ports = {split_hostport(a)[1] for a in cluster.hostmap.values()}
        assert len(ports) == len(PLAYERS)
    assert _gone(pids) == []


@pytest.mark.parametrize("mode", ["normal", "raise"])
def test_no_worker_survives_driver_exit(mode):
    proc, pids = _start_driver(mode)
    proc.wait(timeout=60)
    assert (proc.returncode == 0) == (mode == "normal")
    assert _gone(pids) == []


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL],
                         ids=["ctrl-c", "sigterm", "sigkill"])
def test_no_worker_survives_driver_signal(sig):
    proc, pids = _start_driver("wait")
    try:
        proc.send_signal(sig)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:  # a hung driver must not outlive the test with its workers
            proc.kill()
            proc.wait()
    assert _gone(pids) == [], f"workers left after {sig.name}"


def test_no_worker_survives_failing_pytest_test(tmp_path):
    pid_file = tmp_path / "pids.json"
    (tmp_path / "test_fails.py").write_text(textwrap.dedent(f"""
        import json
        def test_uses_cluster(cluster):
            with open({str(pid_file)!r}, "w") as fh:
                json.dump([w.process.pid for w in cluster.managed], fh)
            assert False, "deliberate failure with a live cluster"
    """))
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "-p", "conftest", "--rootdir", str(tmp_path),
                           str(tmp_path / "test_fails.py")],
                          cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stdout[-2000:]
    pids = json.loads(pid_file.read_text())
    assert len(pids) == len(PLAYERS)
    assert _gone(pids) == []


def test_killed_worker_fails_the_driver_with_its_name():
    script = textwrap.dedent("""
        import json, os, signal, time
        import numpy as np
        from harness.tfe import activate; activate()
        from harness.net.cluster import Cluster, ClusterError
        from harness.inference.private import PrivateModel
        from models.conv_mnist import load_model
        x = np.zeros((1, 28, 28, 1), np.float32)
        with Cluster() as cluster:
            model = PrivateModel(load_model(batch_size=1), "securenn", cluster=cluster)
            model.predict(x)
            os.kill(cluster.workers[1].process.pid, signal.SIGKILL)
            t0 = time.monotonic()
            try:
                model.predict(x)
                print(json.dumps({"error": None}))
            except ClusterError as exc:
                print(json.dumps({"error": str(exc), "seconds": time.monotonic() - t0}))
    """)
    proc = subprocess.run([sys.executable, "-m", "harness.net.bind", "127.0.0.1", "--",
                           sys.executable, "-c", script], env=ENV, capture_output=True,
                          text=True, timeout=240)
    assert proc.stdout.strip(), proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["error"] is not None, "prediction succeeded with a dead worker"
    assert "server1" in result["error"] and "exited" in result["error"]
    assert result["seconds"] < 30


def test_busy_port_in_auto_mode_uses_another(monkeypatch):
    import harness.net.cluster as cluster_mod

    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen()
    busy = blocker.getsockname()[1]
    real = cluster_mod.free_ports
    calls = []

    def racy_free_ports(host, count):
        calls.append(count)
        ports = real(host, count)
        return [busy] + ports[1:] if len(calls) == 1 else ports

    monkeypatch.setattr(cluster_mod, "free_ports", racy_free_ports)
    try:
        with Cluster() as cluster:
            assert len(calls) == 2, "the cluster did not retry with fresh ports"
            assert busy not in {split_hostport(a)[1] for a in cluster.hostmap.values()}
            assert all(grpc_answers(a) for a in cluster.hostmap.values())
    finally:
        blocker.close()


def _hostmap_file(tmp_path: Path, ports: list[int], host: str = "127.0.0.1") -> Path:
    path = tmp_path / "hostmap.json"
    path.write_text(json.dumps({n: f"{host}:{p}" for n, p in zip(PLAYERS, ports)}))
    return path


def test_busy_port_in_manual_mode_is_a_clear_error(tmp_path):
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen()
    busy = blocker.getsockname()[1]
    try:
        config = _hostmap_file(tmp_path, [busy, busy + 1, busy + 2, busy + 3])
        proc = subprocess.run([sys.executable, "-m", "harness.net.worker", "server0",
                               "--config", str(config)], env=ENV, capture_output=True,
                              text=True, timeout=120)
        assert proc.returncode == EXIT_PORT_BUSY
        assert f"port {busy}" in proc.stderr and "busy" in proc.stderr
        with pytest.raises(ClusterError, match="not a worker"):
            Cluster.manual(config, start_timeout=2).start()
    finally:
        blocker.close()


def test_manual_mode_names_workers_that_never_answer(tmp_path, caplog):
    from harness.net.cluster import free_ports

    config = _hostmap_file(tmp_path, free_ports("127.0.0.1", 4))
    with pytest.raises(ClusterError) as err:
        Cluster.manual(config, start_timeout=1).start()
    for name in PLAYERS:
        assert name in str(err.value)
    assert "python -m harness.net.worker server0 --config" in caplog.text


def test_two_clusters_do_not_collide():
    with Cluster() as first, Cluster() as second:
        a, b = set(first.hostmap.values()), set(second.hostmap.values())
        assert not a & b
        assert all(grpc_answers(addr) for addr in a | b)


def _non_loopback_ipv4() -> str | None:
    for addrs in psutil.net_if_addrs().values():
        for addr in addrs:
            if addr.family == socket.AF_INET and not addr.address.startswith("127."):
                return addr.address
    return None


def test_driver_refuses_to_listen_on_every_interface():
    script = textwrap.dedent("""
        from harness.tfe import activate; activate()
        from harness.net.cluster import Cluster, ClusterError
        with Cluster() as cluster:
            try:
                cluster.connect()
            except ClusterError as exc:
                print("refused:", exc)
    """)
    env = {k: v for k, v in ENV.items() if k not in ("LD_PRELOAD", "HARNESS_BIND_ADDR")}
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                          text=True, timeout=240)
    assert "refused:" in proc.stdout and "every interface" in proc.stdout, proc.stderr[-2000:]


def test_auto_workers_listen_on_loopback_only():
    other = _non_loopback_ipv4()
    with Cluster() as cluster:
        for w in cluster.workers:
            port = split_hostport(w.address)[1]
            assert listening_addresses(port) == {"127.0.0.1"}, w.name
            assert grpc_answers(w.address)
            if other is None:
                continue
            with pytest.raises(OSError):
                socket.create_connection((other, port), timeout=2).close()
    if other is None:
        pytest.skip("this machine has no non-loopback IPv4 address to try from")


def test_private_prediction_on_cluster_matches_plaintext():
    proc = subprocess.run([sys.executable, "-m", "harness", "predict", "--protocol", "securenn",
                           "--deployment", "cluster", "--batch", "1", "--images", "20",
                           "--json"], env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["deployment"] == "cluster" and summary["images"] == 20
    assert summary["argmax_agreement"] == 1.0
    assert summary["max_abs_err"] < 0.1
