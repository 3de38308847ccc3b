"""Worker entry point: ``python -m harness.net.worker NAME --config FILE``.

Serves player NAME of a tf-encrypted hostmap (JSON, ``RemoteConfig`` format) as
a TensorFlow distributed server (job ``tfe``, task = position in the hostmap)
until SIGTERM/SIGINT, or until its parent disappears when started with
``--parent-pid`` (auto-managed clusters).

TensorFlow's gRPC server always listens on all interfaces and runs any graph
it is sent. The worker therefore runs under our ``bind()`` shim (LD_PRELOAD,
``harness.net.bind``) that pins the listening socket to ``--bind``
(default: this player's own host from the hostmap), and checks the kernel's
socket table before it reports ``READY``: it refuses to serve on a wildcard
address unless ``--bind 0.0.0.0`` was asked for explicitly.
"""
from __future__ import annotations

import argparse
import ipaddress
import json
import logging
import os
import signal
import socket
import sys
import threading
from collections import OrderedDict
from typing import Sequence

logger = logging.getLogger("harness.net.worker")

from harness.net.bind import active, reexec

READY = "HARNESS-WORKER-READY"
EXIT_BAD_CONFIG = 2
EXIT_PORT_BUSY = 3
EXIT_UNSAFE_BIND = 4
# TensorFlow sizes the thread pool that runs the driver's kernels on a worker from
# this variable when its runtime starts (``--threads`` in the server config does not
# reach it). Several workers share few cores: one thread each costs less CPU in
# handoffs than it loses in parallelism (SecureNN batch 1 on 2 cores: ~52 -> ~44 ms).
INTRAOP_ENV = "TF_NUM_INTRAOP_THREADS"


def load_hostmap(path: str) -> "OrderedDict[str, str]":
    """Read a hostmap JSON ({player: "host:port"}, order = task index)."""
    try:
        with open(path, encoding="utf-8") as fh:
            hostmap = json.load(fh, object_pairs_hook=OrderedDict)
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"cannot read hostmap {path!r}: {exc}") from exc
    if not isinstance(hostmap, dict) or not hostmap:
        raise ValueError(f"hostmap {path!r} must be a JSON object of player -> 'host:port'")
    for name, addr in hostmap.items():
        split_hostport(str(addr), f"{path}: {name}")
    return hostmap


def split_hostport(addr: str, what: str = "address") -> tuple[str, int]:
    host, sep, port = addr.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{what}: {addr!r} is not 'host:port'")
    return host.strip("[]"), int(port)


def resolve_ipv4(host: str) -> str:
    """The IPv4 address the worker binds to for ``host`` (names resolved once)."""
    try:
        return str(ipaddress.IPv4Address(host))
    except ValueError:
        return socket.gethostbyname(host)


def port_is_free(addr: str, port: int) -> bool:
    """True unless a socket is bound to the port (TIME_WAIT leftovers do not count,
    as for gRPC's own SO_REUSEADDR listener)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((addr, port))
        except OSError:
            return False
    return True


def listening_addresses(port: int) -> set[str]:
    """Local addresses with a TCP socket in LISTEN state on ``port`` (this network
    namespace; IPv4-mapped IPv6 addresses as IPv4, a wildcard as ``0.0.0.0``/``::``)."""
    import psutil  # noqa: PLC0415

    found: set[str] = set()
    for conn in psutil.net_connections(kind="tcp"):
        if conn.status != psutil.CONN_LISTEN or not conn.laddr or conn.laddr.port != port:
            continue
        address = ipaddress.ip_address(conn.laddr.ip.split("%")[0])
        mapped = getattr(address, "ipv4_mapped", None)
        found.add(str(mapped or address))
    return found


def _watch_parent(parent_pid: int, stop: threading.Event) -> None:
    """Exit when the parent that started us is gone (killed drivers leave no workers)."""
    while not stop.wait(0.5):
        if os.getppid() != parent_pid:
            logger.warning("parent %d is gone; worker exits", parent_pid)
            os._exit(0)


def serve(name: str, hostmap: "OrderedDict[str, str]", bind: str, threads: int,
          parent_pid: int | None) -> int:
    if name not in hostmap:
        logger.error("player %r is not in the hostmap (players: %s)", name, ", ".join(hostmap))
        return EXIT_BAD_CONFIG
    _, port = split_hostport(hostmap[name], name)
    if not port_is_free(bind, port):
        logger.error("port %d on %s is busy: stop what holds it or pick another port "
                     "in the config", port, bind)
        return EXIT_PORT_BUSY
    if bind != "0.0.0.0" and not active(bind):
        logger.error("the bind() shim is not active (LD_PRELOAD); start workers with "
                     "harness.net.cluster or `python -m harness.net.worker`, which sets it up")
        return EXIT_UNSAFE_BIND

    stop = threading.Event()
    if parent_pid is not None:
        threading.Thread(target=_watch_parent, args=(parent_pid, stop), daemon=True).start()

    from harness.tfe import activate  # noqa: PLC0415

    activate()  # our ops must be registered here: the driver's graphs run them on us
    import tensorflow as tf  # noqa: PLC0415

    cluster = tf.train.ClusterSpec({"tfe": list(hostmap.values())})
    config = tf.compat.v1.ConfigProto(
        intra_op_parallelism_threads=threads, inter_op_parallelism_threads=threads
    )
    server = tf.distribute.Server(cluster, job_name="tfe",
                                  task_index=list(hostmap).index(name), config=config,
                                  start=True)
    bound = listening_addresses(port)
    if bind != "0.0.0.0" and bound != {bind}:
        logger.error("server for %s listens on %s, expected only %s: refusing to serve",
                     name, sorted(bound) or "nothing", bind)
        return EXIT_UNSAFE_BIND
    print(f"{READY} {name} {bind}:{port} pid={os.getpid()}", flush=True)
    logger.info("%s serving on %s (%s)", name, server.target, ", ".join(sorted(bound)))

    def _stop(signum: int, _frame: object) -> None:
        logger.info("%s: signal %d, stopping", name, signum)
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    stop.wait()
    sys.stdout.flush()
    os._exit(0)  # TensorFlow servers cannot be stopped cleanly; leave at once


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m harness.net.worker", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name", help="player name in the hostmap (e.g. server0)")
    p.add_argument("--config", required=True, help="hostmap JSON file")
    p.add_argument("--bind", default=None,
                   help="IPv4 address to listen on (default: this player's host in the "
                        "hostmap; 0.0.0.0 exposes the worker on every interface)")
    p.add_argument("--threads", type=int, default=1,
                   help="TensorFlow intra/inter-op threads, also set as $TF_NUM_INTRAOP_THREADS "
                        "(default 1: several workers share few cores)")
    p.add_argument("--parent-pid", type=int, default=None,
                   help="exit when this process is no longer our parent")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format=f"%(levelname)s {args.name}: %(message)s")
    try:
        hostmap = load_hostmap(args.config)
        host, _ = split_hostport(hostmap.get(args.name, "x:1"), args.name)
        bind = resolve_ipv4(args.bind or host)
    except (ValueError, OSError) as exc:
        logger.error("%s", exc)
        return EXIT_BAD_CONFIG
    # TensorFlow reads the thread count once and `harness` has imported it by now:
    # restart if it is not in place yet (auto-managed workers get it from the start).
    restart = os.environ.get(INTRAOP_ENV) != str(args.threads)
    os.environ[INTRAOP_ENV] = str(args.threads)
    me = [sys.executable, "-m", "harness.net.worker", *argv]
    if bind != "0.0.0.0":
        reexec(bind, me[1:], force=restart)  # returns only if nothing had to change
    elif restart:
        os.execv(sys.executable, me)
    return serve(args.name, hostmap, bind, args.threads, args.parent_pid)


if __name__ == "__main__":
    raise SystemExit(main())
