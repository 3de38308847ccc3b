"""Three-server (+ client) TF Encrypted clusters of real worker processes.

``Cluster()`` is auto-managed: it picks free loopback ports, starts one
``python -m harness.net.worker`` process per player, waits until each answers as a
gRPC server, and stops them all on exit. ``Cluster.manual(FILE)`` uses workers
started by hand from a hostmap file: it logs the command to run on each host,
waits for them, and names those that never answered.

``Cluster(network=parse_network("wan"))`` puts each player in a network namespace of
its own with its own address, its link shaped to the profile (``harness.net.shaping``);
the driver reaches them over a bridge, and ``stop()`` removes the network too.

Workers never outlive the driver: ``stop()`` runs on normal exit, exceptions and
Ctrl-C (context manager, ``atexit``); on SIGTERM/SIGKILL of the driver the
workers see their parent vanish and exit by themselves (``--parent-pid``).
"""
from __future__ import annotations

import atexit
import json
import logging
import os
import selectors
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import weakref
from collections import OrderedDict
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

from harness.net import bind
from harness.net.sockets import (driver_host_for, free_ports, grpc_answers,  # noqa: F401
                                  proc_field as _proc_field, tcp_open as _tcp_open,
                                  tcp_sockets as _tcp_sockets)
from harness.net.netprofile import NetworkProfile
from harness.net.shaping import ShapedNetwork
from harness.names import PLAYERS
from harness.net.worker import (EXIT_PORT_BUSY, INTRAOP_ENV, READY, listening_addresses,
                            load_hostmap, split_hostport)

logger = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"


class ClusterError(RuntimeError):
    """A cluster could not be started, reached, or kept alive; names the workers."""


@dataclass
class Worker:
    """One player's worker process (``process`` is None for hand-started workers)."""

    name: str
    address: str
    process: subprocess.Popen | None = None
    log_path: Path | None = None
    external: bool = False  # in the hostmap, but started and checked by someone else

    def alive(self) -> bool:
        return self.process is None or self.process.poll() is None

    def log_tail(self, lines: int = 5) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        text = self.log_path.read_text(errors="replace").strip().splitlines()
        return "\n".join(text[-lines:])


_LIVE: "weakref.WeakSet[Cluster]" = weakref.WeakSet()


@atexit.register
def stop_all() -> None:
    """Stop every cluster this process started (at exit, and on Ctrl-C)."""
    for cluster in list(_LIVE):
        cluster.stop()


@dataclass(eq=False)
class Cluster:
    """Workers for ``players`` (default: server0-2 and the prediction client)."""

    players: tuple[str, ...] = PLAYERS
    external: tuple[str, ...] = ()  # players in the hostmap that run elsewhere (a client)
    host: str = LOOPBACK
    start_timeout: float = 60.0
    threads: int = 1
    config_file: Path | None = None  # manual mode when set
    network: NetworkProfile | None = None  # shaped: each player in a namespace of its own
    workers: list[Worker] = field(default_factory=list, init=False)
    shaped: ShapedNetwork | None = field(default=None, init=False, repr=False)
    _unpin: str | None = field(default=None, init=False, repr=False)
    _tmp: Path | None = field(default=None, init=False, repr=False)
    _config: Any = field(default=None, init=False, repr=False)
    driver_address: str | None = field(default=None, init=False)  # the driver's own TF server

    @classmethod
    def manual(cls, config_file: str | os.PathLike, start_timeout: float = 120.0,
               external: tuple[str, ...] = ()) -> "Cluster":
        """Workers started by hand from ``config_file`` (a hostmap JSON)."""
        hostmap = load_hostmap(str(config_file))
        return cls(players=tuple(hostmap), external=external, start_timeout=start_timeout,
                   config_file=Path(config_file))

    @property
    def auto_managed(self) -> bool:
        return self.config_file is None

    @property
    def managed(self) -> list[Worker]:
        """Workers this cluster starts (all but the external players)."""
        return [w for w in self.workers if not w.external]

    @property
    def config_path(self) -> Path | None:
        """The hostmap JSON the workers were started with (share it with a client)."""
        if self.config_file is not None:
            return self.config_file
        return None if self._tmp is None else self._tmp / "hostmap.json"

    @property
    def hostmap(self) -> "OrderedDict[str, str]":
        return OrderedDict((w.name, w.address) for w in self.workers)

    def __enter__(self) -> "Cluster":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    # -- start ---------------------------------------------------------------------
    def start(self) -> "Cluster":
        """Start (or, in manual mode, wait for) every worker; returns self."""
        if self.workers:
            return self
        if self.network is not None and not self.auto_managed:
            raise ClusterError("a shaped network needs an auto-managed cluster: drop the "
                               "hostmap file or the network")
        _LIVE.add(self)
        try:
            if self.auto_managed:
                self._start_auto()
            else:
                self._await_manual()
        except BaseException:
            self.stop()
            raise
        logger.info("cluster ready: %s", dict(self.hostmap))
        return self

    def _start_auto(self, attempts: int = 3) -> None:
        env = {**bind.shim_env(self.host), INTRAOP_ENV: str(self.threads)}
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # worker logs: our lines, not CUDA probing
        _remove_stale_tmp()
        self._tmp = Path(tempfile.mkdtemp(prefix=f"{_TMP_PREFIX}{os.getpid()}-"))
        if self.network is not None and self.network.shaped:
            self.shaped = ShapedNetwork(self.network, self.players).start()
        for attempt in range(1, attempts + 1):
            ports = free_ports(self.host, len(self.players))
            self.workers = [Worker(n, f"{self._host(n)}:{p}", external=n in self.external)
                            for n, p in zip(self.players, ports)]
            config = self._tmp / "hostmap.json"
            config.write_text(json.dumps(self.hostmap, indent=2))
            for w in self.managed:
                w.log_path = self._tmp / f"{w.name}.log"
                cmd = [sys.executable, "-m", "harness.net.worker", w.name, "--config", str(config),
                       "--threads", str(self.threads), "--parent-pid", str(os.getpid())]
                with open(w.log_path, "wb") as log:
                    w.process = subprocess.Popen(
                        self._prefix(w.name) + cmd, stdout=subprocess.PIPE, stderr=log,
                        stdin=subprocess.DEVNULL, env={**env, bind.ENV: self._host(w.name)},
                        start_new_session=True,
                    )
            busy = self._await_ready_lines()
            if not busy:
                return
            logger.info("ports taken meanwhile by others (%s); retry %d", busy, attempt)
            self._terminate()
        raise ClusterError(f"could not find free ports on {self.host} after {attempts} tries")

    def _host(self, player: str) -> str:
        """The address ``player``'s worker listens on: its namespace's, or ``host``."""
        return self.shaped.address(player) if self.shaped is not None else self.host

    def _prefix(self, player: str) -> list[str]:
        return self.shaped.exec_prefix(player) if self.shaped is not None else []

    def _await_ready_lines(self) -> list[str]:
        """Wait for each worker's READY line; returns workers whose port got taken."""
        deadline = time.monotonic() + self.start_timeout
        waiting = {w.process.stdout.fileno(): w for w in self.managed}
        busy: list[str] = []
        with selectors.DefaultSelector() as sel:
            for fd, w in waiting.items():
                sel.register(w.process.stdout, selectors.EVENT_READ, w)
            while waiting:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise ClusterError(
                        "workers not ready after %.0f s: %s" % (
                            self.start_timeout, self._describe(waiting.values()))
                    )
                for key, _ in sel.select(timeout=min(left, 0.5)):
                    w = key.data
                    line = w.process.stdout.readline().decode(errors="replace")
                    if line.startswith(READY):
                        sel.unregister(w.process.stdout)
                        del waiting[key.fd]
                    elif not line:  # EOF: the worker exited
                        sel.unregister(w.process.stdout)
                        del waiting[key.fd]
                        if w.process.wait() == EXIT_PORT_BUSY:
                            busy.append(w.name)
                        else:
                            raise ClusterError(f"worker failed to start: {self._describe([w])}")
        for w in self.managed:
            if not busy and not grpc_answers(w.address):
                raise ClusterError(f"worker reported ready but does not answer: "
                                   f"{self._describe([w])}")
        return busy

    def manual_instructions(self) -> str:
        """The command to run on each host of a manual cluster."""
        cfg = shlex.quote(str(self.config_file))
        return "\n".join(
            f"  on {split_hostport(addr)[0]}:  python -m harness.net.worker {name} --config {cfg}"
            for name, addr in load_hostmap(str(self.config_file)).items()
            if name not in self.external
        )

    def _await_manual(self) -> None:
        hostmap = load_hostmap(str(self.config_file))
        self.workers = [Worker(n, a, external=n in self.external) for n, a in hostmap.items()]
        logger.warning("manual cluster: start these workers (waiting up to %.0f s):\n%s",
                       self.start_timeout, self.manual_instructions())
        deadline = time.monotonic() + self.start_timeout
        missing = self.managed
        while missing and time.monotonic() < deadline:
            missing = [w for w in missing if not grpc_answers(w.address)]
            if missing:
                time.sleep(0.5)
        if missing:
            occupied = [w for w in missing if _tcp_open(w.address)]
            detail = "; ".join(
                f"{w.name} at {w.address}: "
                + ("the port is taken by something that is not a worker"
                   if w in occupied else "nothing answers")
                for w in missing
            )
            raise ClusterError(f"workers never answered within {self.start_timeout:.0f} s: "
                               f"{detail}. Start them with:\n{self.manual_instructions()}")

    # -- use -----------------------------------------------------------------------
    def check(self) -> None:
        """Raise ``ClusterError`` naming any worker that is no longer running/answering."""
        dead = [w for w in self.workers if not w.external and (
            not w.alive() or (w.process is None and not grpc_answers(w.address)))]
        if dead:
            raise ClusterError(f"worker(s) down: {self._describe(dead)}")

    def driver_host(self) -> str:
        """The address this driver serves tensors to the workers on."""
        return driver_host_for(self.hostmap.values())

    def connect(self, expose_driver: bool = False) -> Any:
        """Connect this (driver) process to the workers (once); returns the tf-encrypted config.

        The driver runs a TensorFlow server of its own (job ``localhost``) that the
        workers fetch inputs from. It must run under the bind() shim for
        ``driver_host()`` (``python -m harness ...`` and the Makefile arrange that;
        otherwise ``python -m harness.net.bind ADDR -- python ...``), or TensorFlow would
        listen on every interface; ``expose_driver=True`` accepts that knowingly.
        """
        if self._config is not None:
            return self._config
        import tensorflow as tf  # noqa: PLC0415
        import tf_encrypted as tfe  # noqa: PLC0415

        if not self.workers:
            self.start()
        self.check()
        host = self.driver_host()
        if self.shaped is not None and bind.ENV in os.environ:  # under the shim, which reads
            self._unpin = os.environ[bind.ENV]  # this at bind(): our server on the bridge only
            os.environ[bind.ENV] = host
        if not (expose_driver or bind.active(host)):
            raise ClusterError(
                f"this driver would listen for TensorFlow RPCs on every interface: call "
                f"harness.net.bind.loopback_driver({host!r}) at the top of your script, or run "
                f"it as `python -m harness.net.bind {host} -- python SCRIPT` (pytest and the "
                f"harness's commands do this themselves); expose_driver=True accepts the risk"
            )
        port = free_ports(host, 1)[0]
        # External players (a client) are left out: TensorFlow contacts every task it is
        # given and waits for ever for one that is not up. Tasks keep their hostmap index.
        tasks = {i: w.address for i, w in enumerate(self.workers) if not w.external}
        spec = tf.train.ClusterSpec({"tfe": tasks, "localhost": [f"{host}:{port}"]})
        tf.config.experimental_connect_to_cluster(spec, job_name="localhost", task_index=0)
        self.driver_address = f"{host}:{port}"
        if not expose_driver and listening_addresses(port) - {host}:
            raise ClusterError(f"driver listens on {sorted(listening_addresses(port))}, "
                               f"expected only {host}")
        self._config = tfe.RemoteConfig(self.hostmap)
        return self._config

    @contextmanager
    def guard(self) -> Iterator[None]:
        """Turn TensorFlow's network errors during a call into a ``ClusterError`` that
        names the worker(s) that died."""
        import tensorflow as tf  # noqa: PLC0415

        try:
            yield
        except (tf.errors.UnavailableError, tf.errors.AbortedError,
                tf.errors.CancelledError) as exc:
            self.check()
            raise ClusterError(f"a cluster call failed while all workers run: {exc}") from exc

    def traffic(self) -> dict[tuple[str, str], int]:
        """TCP payload bytes sent so far on each live connection, by (sender, receiver);
        parties are the workers' player names and ``driver`` (this process).

        Read from the kernel's per-socket counters (``ss -tinp``, tcp_info
        ``bytes_sent``); connections that closed in between are not counted.
        """
        owners = {w.process.pid: w.name for w in self.managed
                  if w.process is not None and w.alive()}
        owners[os.getpid()] = "driver"
        sockets = _tcp_sockets()
        sent: dict[tuple[str, str], int] = {}
        for (local, peer), (pid, nbytes) in sockets.items():
            peer_pid = sockets.get((peer, local), (None,))[0]
            if pid in owners and peer_pid in owners:
                key = (owners[pid], owners[peer_pid])
                sent[key] = sent.get(key, 0) + nbytes
        return sent

    def peak_rss_mb(self) -> dict[str, float]:
        """Peak resident memory (VmHWM) of each running worker, in MiB."""
        return {w.name: _proc_field(w.process.pid, "status", "VmHWM") / 1024
                for w in self.managed if w.process is not None and w.alive()}

    # -- stop ----------------------------------------------------------------------
    def _terminate(self, grace: float = 5.0) -> None:
        procs = [w.process for w in self.workers if w.process is not None]
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for proc in procs:
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()

    def stop(self) -> None:
        """Stop every auto-managed worker and remove temporary files (idempotent)."""
        if self.auto_managed:
            self._terminate()
        if self.shaped is not None:
            self.shaped.stop()
            self.shaped = None
        if self._unpin is not None:
            os.environ[bind.ENV], self._unpin = self._unpin, None
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None
        self.workers = []
        self._config = None
        _LIVE.discard(self)

    def _describe(self, workers: Iterable[Worker]) -> str:
        parts = []
        for w in workers:
            state = "running"
            if w.process is not None and w.process.poll() is not None:
                state = f"exited with {w.process.returncode}"
            tail = w.log_tail()
            parts.append(f"{w.name} ({w.address}, {state})" + (f":\n{tail}" if tail else ""))
        return "; ".join(parts)


def exit_with_parent() -> None:
    """``preexec_fn`` for helper processes (serve, clients) started by a test or benchmark:
    the kernel sends them SIGTERM when the starting thread's process dies (Linux prctl)."""
    import ctypes  # noqa: PLC0415

    pr_set_pdeathsig = 1
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


_TMP_PREFIX = "tfe-cluster-"


def _remove_stale_tmp() -> None:
    """Remove the temp folders of clusters whose driver was killed (it could not)."""
    for folder in Path(tempfile.gettempdir()).glob(f"{_TMP_PREFIX}*-*"):
        pid = folder.name[len(_TMP_PREFIX):].split("-", 1)[0]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            shutil.rmtree(folder, ignore_errors=True)
