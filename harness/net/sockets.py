"""Sockets of the players: free ports, readiness, listening addresses, traffic counters.

No TensorFlow. Readiness is gRPC's own: a channel to the worker becomes READY only after
the HTTP/2 handshake with a gRPC server.
"""
from __future__ import annotations

import shutil
import socket
import subprocess
from pathlib import Path
from typing import Iterable

from harness.net.worker import split_hostport

LOOPBACK = "127.0.0.1"


class SocketError(RuntimeError):
    """A measurement of the sockets could not be made (a tool is missing)."""


def grpc_answers(address: str, timeout: float = 1.0) -> bool:
    """True if a gRPC server answers at ``host:port`` within ``timeout`` seconds (its
    channel becomes READY: TCP and the HTTP/2 handshake done)."""
    import grpc  # noqa: PLC0415  (grpcio, installed with TensorFlow)

    host, port = split_hostport(address)
    with grpc.insecure_channel(f"{host}:{port}") as channel:
        try:
            grpc.channel_ready_future(channel).result(timeout=timeout)
        except grpc.FutureTimeoutError:
            return False
    return True


def free_ports(host: str, count: int) -> list[int]:
    """``count`` distinct ports that were free on ``host`` a moment ago."""
    socks = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((host, 0))
            socks.append(sock)
        return [s.getsockname()[1] for s in socks]
    finally:
        for sock in socks:
            sock.close()


def driver_host_for(addresses: Iterable[str]) -> str:
    """Loopback for workers on this machine, else the local address the kernel routes
    towards the first worker (a UDP ``connect`` sends nothing)."""
    hosts = [split_hostport(a)[0] for a in addresses]
    if not hosts or set(hosts) <= {LOOPBACK, "localhost"}:
        return LOOPBACK
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect((hosts[0], 9))
        return probe.getsockname()[0]


def proc_field(pid: int, table: str, key: str) -> int:
    """An integer field of /proc/PID/{io,status} (kB for status sizes)."""
    for line in Path(f"/proc/{pid}/{table}").read_text().splitlines():
        name, _, value = line.partition(":")
        if name == key:
            return int(value.split()[0])
    raise KeyError(f"{key} not in /proc/{pid}/{table}")


def tcp_sockets() -> dict[tuple[str, str], tuple[int, int]]:
    """Established TCP sockets: (local, peer) address -> (owner pid, bytes sent). Keyed by
    both ends: every connection a server accepts shares its local address."""
    if shutil.which("ss") is None:
        raise SocketError("measuring traffic needs `ss` (Debian package iproute2)")
    out = subprocess.run(["ss", "-tinpHn", "state", "established"], capture_output=True,
                         text=True, check=True).stdout
    found: dict[tuple[str, str], tuple[int, int]] = {}
    head: list[str] | None = None
    for line in out.splitlines():
        if not line.startswith(("\t", " ")):
            head = line.split()
            continue
        if head is None or len(head) < 5 or "pid=" not in line + " ".join(head):
            continue
        pid = int(" ".join(head).split("pid=", 1)[1].split(",", 1)[0])
        nbytes = next((int(f.split(":", 1)[1]) for f in line.split()
                       if f.startswith("bytes_sent:")), 0)
        found[(head[2], head[3])] = (pid, nbytes)
        head = None
    return found


def tcp_open(address: str) -> bool:
    host, port = split_hostport(address)
    try:
        socket.create_connection((host, port), timeout=1.0).close()
    except OSError:
        return False
    return True
