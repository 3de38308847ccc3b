"""Several hosts on one machine: the three servers and the client each in their own
network namespace with its own address, started by hand from one hostmap (manual
mode), and a driver reaching them over a bridge. Needs root and iproute2.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from harness.net.procs import child_env

from harness.inference.private import PLAYERS
from harness.net.worker import READY

pytestmark = [pytest.mark.cluster, pytest.mark.netns]

ROOT = Path(__file__).resolve().parent.parent
ENV = child_env()
PORT = 4000  # the same port on every host: they really are separate hosts


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


@pytest.fixture
def hosts():
    """Four namespaces on a bridge; yields (names, addresses); tears everything down."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("needs root and `ip` (iproute2) to create network namespaces")
    tag = f"{os.getpid() % 10000}"
    subnet = f"10.{200 + os.getpid() % 50}.{os.getpid() % 250}"
    bridge = f"tfebr{tag}"
    names = [f"tfeh{tag}-{i}" for i in range(len(PLAYERS))]
    addresses = [f"{subnet}.{i + 1}" for i in range(len(PLAYERS))]
    made: list[str] = []
    try:
        _ip("link", "add", "name", bridge, "type", "bridge")
        _ip("addr", "add", f"{subnet}.254/24", "dev", bridge)
        _ip("link", "set", bridge, "up")
        for i, (ns, addr) in enumerate(zip(names, addresses)):
            _ip("netns", "add", ns)
            made.append(ns)
            outer, inner = f"tfev{tag}o{i}", f"tfev{tag}i{i}"
            _ip("link", "add", outer, "type", "veth", "peer", "name", inner)
            _ip("link", "set", inner, "netns", ns)
            _ip("link", "set", outer, "master", bridge)
            _ip("link", "set", outer, "up")
            _ip("-n", ns, "addr", "add", f"{addr}/24", "dev", inner)
            _ip("-n", ns, "link", "set", inner, "up")
            _ip("-n", ns, "link", "set", "lo", "up")
    except subprocess.CalledProcessError as exc:
        for ns in made:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        subprocess.run(["ip", "link", "del", bridge], capture_output=True)
        pytest.skip(f"cannot create namespaces here: {exc.stderr.strip()}")
    try:
        yield names, addresses
    finally:
        for ns in names:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        subprocess.run(["ip", "link", "del", bridge], capture_output=True)


def test_servers_and_client_on_separate_hosts(hosts, tmp_path):
    names, addresses = hosts
    config = tmp_path / "hostmap.json"
    config.write_text(json.dumps({p: f"{a}:{PORT}" for p, a in zip(PLAYERS, addresses)}))
    workers = []
    try:
        for ns, player in zip(names, PLAYERS):
            workers.append(subprocess.Popen(
                ["ip", "netns", "exec", ns, sys.executable, "-m", "harness.net.worker", player,
                 "--config", str(config)],
                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=ENV, text=True))
        for proc, player in zip(workers, PLAYERS):
            line = proc.stdout.readline()
            assert line.startswith(READY), f"{player} did not start: {line!r}"
        drive = subprocess.run(
            [sys.executable, "-m", "harness", "predict", "--protocol", "securenn",
             "--deployment", "cluster", "--cluster-config", str(config), "--images", "5",
             "--json"], env=ENV, capture_output=True, text=True, timeout=300)
        assert drive.returncode == 0, drive.stderr[-2000:]
        summary = json.loads(drive.stdout.strip().splitlines()[-1])
        assert summary["argmax_agreement"] == 1.0
        # each worker listens on its own host's address only, not on a wildcard
        for ns, addr in zip(names, addresses):
            ss = subprocess.run(["ip", "netns", "exec", ns, "ss", "-ltnH"],
                                capture_output=True, text=True).stdout
            assert f":{PORT}" in ss and addr in ss and "*:" + str(PORT) not in ss, ss
    finally:
        for proc in workers:
            proc.terminate()
        for proc in workers:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
