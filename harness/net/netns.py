"""Network namespaces for players: one namespace, one address, one veth each, on a bridge.

``Hosts(players)`` builds, in the current (driver's) namespace, a bridge with the
driver's address and, per player, a network namespace holding one end of a veth
pair whose other end is a port of the bridge::

    driver (this process) -- bridge 10.A.B.254/24 -+- veth -- [ns server0 10.A.B.1]
                                                   +- veth -- [ns server1 10.A.B.2]
                                                   +- ...

Only addresses inside these namespaces (and the bridge's) are ever traffic targets.

Every name carries a tag ``tfn<PID>-<K>`` of the creating process (``K``: a
per-process counter), so that ``sweep()``, called before anything is created,
removes what creators that died without cleaning up (SIGKILL) left behind:
their namespaces (and processes still in them), veths and bridges. Interface names
stay within Linux's 15 characters: ``tfn<PID>-<K>b`` (bridge), ``tfn<PID>-<K>o<I>``
(bridge end of player I's veth), ``tfn<PID>-<K>i<I>`` (player end). Namespaces
(no length limit) are ``tfn<PID>-<K>-<player>``.

Cleanup runs on ``stop()``: context-manager exit (normal, exception, Ctrl-C),
``atexit``, and SIGTERM (if this process had no SIGTERM handler, one is installed
that removes every live network and then dies of SIGTERM as before). If the creator
is killed outright (SIGKILL), its reaper (``harness.net.reaper``) removes them as
soon as it is gone, and failing that the next start's ``sweep()``.

Needs ``ip`` (iproute2) and CAP_NET_ADMIN + CAP_SYS_ADMIN: root, or uid 0 of an
unprivileged user namespace with a writable ``/run/netns`` (e.g. inside
``unshare -rnm`` after mounting a tmpfs on ``/run``). ``available()`` says why not.
"""
from __future__ import annotations

import atexit
import functools
import os
import re
import shutil
import signal
import subprocess
import threading
import time
import weakref
from typing import Callable, Iterable, Sequence

from harness.net import reaper

PREFIX = "tfn"
IFNAMSIZ = 15  # usable characters of a Linux interface name
_TAG = re.compile(rf"^{PREFIX}(\d+)-([0-9a-z])")
_PLAYER = re.compile(r"^[A-Za-z0-9_.-]+$")
_DIGITS = "0123456789abcdefghijklmnopqrstuvwxyz"
_counter = iter(range(10 ** 9))
_lock = threading.Lock()


class NetnsError(RuntimeError):
    """Namespaces or links could not be created; the message says which command failed."""


def ip(*args: str, check: bool = True, timeout: float = 30.0) -> str:
    """Run ``ip ARGS...``; returns stdout, raises ``NetnsError`` with stderr on failure."""
    return run(["ip", *args], check=check, timeout=timeout)


def run(cmd: Sequence[str], check: bool = True, timeout: float = 30.0) -> str:
    proc = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)
    if check and proc.returncode != 0:
        detail = (proc.stderr or proc.stdout).strip().splitlines()
        raise NetnsError(f"`{' '.join(cmd)}` failed: {detail[-1] if detail else proc.returncode}")
    return proc.stdout


# -- names and leftovers -------------------------------------------------------------
def creator_alive(pid: int) -> bool:
    """True while process ``pid`` runs (a zombie, dead but not yet reaped, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            stat = fh.read()
    except OSError:
        return True
    return stat.rsplit(")", 1)[-1].split()[:1] != ["Z"]


def namespaces() -> list[str]:
    """Names of the named network namespaces (``ip netns list``)."""
    return [line.split()[0] for line in ip("netns", "list", check=False).splitlines()
            if line.strip()]


def links() -> list[str]:
    """Interface names in this namespace, without ``@peer`` suffixes."""
    out = ip("-o", "link", "show", check=False)
    return [line.split(":", 2)[1].strip().split("@", 1)[0]
            for line in out.splitlines() if line.count(":") >= 2]


def ours(names: Iterable[str], tag: str | None = None) -> list[str]:
    """The names carrying a tag of ours (of ``tag`` only, if given)."""
    return [n for n in names if _TAG.match(n) and (tag is None or n.startswith(tag))]


def sweep(log: Callable[[str], None] | None = None) -> list[str]:
    """Remove namespaces and links whose creating process is gone; returns their names."""
    removed = []
    for ns in ours(namespaces()):
        pid = int(_TAG.match(ns).group(1))
        if not creator_alive(pid):
            kill_processes_in(ns, grace=0.0)
            ip("netns", "del", ns, check=False)
            removed.append(ns)
    for name in ours(links()):
        pid = int(_TAG.match(name).group(1))
        if not creator_alive(pid) and name in links():  # a pair may be gone with its peer
            ip("link", "del", name, check=False)
            removed.append(name)
    if removed and log is not None:
        log(f"removed leftovers of dead creators: {', '.join(removed)}")
    return removed


def processes_in(ns: str) -> list[int]:
    return [int(p) for p in ip("netns", "pids", ns, check=False).split() if p.isdigit()]


def kill_processes_in(ns: str, grace: float = 3.0) -> None:
    """SIGTERM, then after ``grace`` seconds SIGKILL, every process left in ``ns``."""
    pids = processes_in(ns)
    for sig in ((signal.SIGTERM, signal.SIGKILL) if grace > 0 else (signal.SIGKILL,)):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace
        while pids and time.monotonic() < deadline:
            time.sleep(0.05)
            pids = [p for p in pids if creator_alive(p)]
        if not pids:
            return


def new_tag() -> str:
    """A tag no existing name uses: ``tfn<PID>-<K>``."""
    taken = set(namespaces()) | set(links())
    with _lock:
        for _ in _DIGITS:
            tag = f"{PREFIX}{os.getpid()}-{_DIGITS[next(_counter) % len(_DIGITS)]}"
            if not ours(taken, tag):
                return tag
    raise NetnsError(f"this process already has {len(_DIGITS)} networks: stop some first")


# -- availability --------------------------------------------------------------------
@functools.lru_cache(maxsize=1)
def available() -> tuple[bool, str]:
    """(True, "") if namespaces can be made here, else (False, a reason to show)."""
    missing = [t for t in ("ip", "tc") if shutil.which(t) is None]
    if missing:
        return False, f"needs {' and '.join(missing)} (Debian package iproute2)"
    hint = ("run as root, or as uid 0 of a user namespace with a writable /run/netns "
            "(e.g. `unshare -rnm` and a tmpfs mounted on /run)")
    if os.geteuid() != 0:
        return False, f"network namespaces need CAP_NET_ADMIN and CAP_SYS_ADMIN: {hint}"
    probe = f"{new_tag()}-probe"
    try:
        ip("netns", "add", probe)
    except NetnsError as exc:
        return False, f"cannot create a network namespace ({exc}): {hint}"
    ip("netns", "del", probe, check=False)
    return True, ""


# -- the hosts -----------------------------------------------------------------------
def _subnet(tag: str) -> str:
    """A 10.A.B.0/24 no address or route of this namespace uses (A in 100..199)."""
    used = set()
    for line in (ip("-4", "-o", "addr", check=False) + ip("-4", "route", check=False)).splitlines():
        for word in line.replace("/", " ").split():
            if word.count(".") == 3 and word.startswith("10."):
                used.add(".".join(word.split(".")[:3]))
    start = (os.getpid() * 37 + sum(map(ord, tag))) % (100 * 256)
    for i in range(100 * 256):
        n = (start + i) % (100 * 256)
        candidate = f"10.{100 + n // 256}.{n % 256}"
        if candidate not in used:
            return candidate
    raise NetnsError("no free 10.x.y.0/24 subnet for the bridge")


_LIVE: "weakref.WeakSet[Hosts]" = weakref.WeakSet()


class Hosts:
    """One namespace per player on a bridge; see the module docstring."""

    def __init__(self, players: Sequence[str]):
        players = tuple(players)
        bad = [p for p in players if not _PLAYER.match(p)]
        if not players or bad or len(set(players)) != len(players) or len(players) > 36:
            raise ValueError(f"players must be 1 to 36 distinct names of letters, digits, "
                             f"'_', '.', '-'; got {list(players)}")
        self.players = players
        self.tag = ""
        self.subnet = ""
        self._made: list[tuple[str, str]] = []  # ("ns"|"link", name), creation order

    # names and addresses
    def namespace(self, player: str) -> str:
        return f"{self.tag}-{player}"

    def veth(self, player: str, end: str) -> str:
        """Player's veth: ``end`` "outer" (on the bridge) or "inner" (in its namespace)."""
        index = _DIGITS[self.players.index(player)]
        name = f"{self.tag}{'o' if end == 'outer' else 'i'}{index}"
        assert len(name) <= IFNAMSIZ, name
        return name

    @property
    def bridge(self) -> str:
        return f"{self.tag}b"

    def address(self, player: str) -> str:
        if player not in self.players:
            raise KeyError(f"{player!r} has no namespace here (players: {', '.join(self.players)})")
        return f"{self.subnet}.{self.players.index(player) + 1}"

    @property
    def driver_address(self) -> str:
        return f"{self.subnet}.254"

    def exec_prefix(self, player: str) -> list[str]:
        """Prepend to a command to run it inside ``player``'s namespace."""
        self.address(player)  # validates
        return ["ip", "netns", "exec", self.namespace(player)]

    @property
    def running(self) -> bool:
        return bool(self._made)

    # lifecycle
    def create(self) -> None:
        ok, reason = available()
        if not ok:
            raise NetnsError(reason)
        sweep()
        reaper.watch()  # removes what this process leaves if it is killed (SIGKILL too)
        self.tag = new_tag()
        self.subnet = _subnet(self.tag)
        _LIVE.add(self)
        _install_sigterm_cleanup()
        try:
            self._add("link", self.bridge, "link", "add", "name", self.bridge, "type", "bridge")
            ip("addr", "add", f"{self.driver_address}/24", "dev", self.bridge)
            ip("link", "set", self.bridge, "up")
            for player in self.players:
                ns, outer, inner = (self.namespace(player), self.veth(player, "outer"),
                                    self.veth(player, "inner"))
                self._add("ns", ns, "netns", "add", ns)
                self._add("link", outer, "link", "add", outer, "type", "veth",
                          "peer", "name", inner, "netns", ns)
                ip("link", "set", outer, "master", self.bridge)
                ip("link", "set", outer, "up")
                ip("-n", ns, "addr", "add", f"{self.address(player)}/24", "dev", inner)
                ip("-n", ns, "link", "set", inner, "up")
                ip("-n", ns, "link", "set", "lo", "up")
        except BaseException:
            self.remove()
            raise

    def _add(self, kind: str, name: str, *args: str) -> None:
        ip(*args)
        self._made.append((kind, name))

    def remove(self) -> None:
        """Remove everything this object made, processes left in its namespaces too
        (idempotent; errors are ignored so that every part is tried)."""
        made, self._made = self._made, []
        for kind, name in reversed(made):
            if kind == "ns":
                kill_processes_in(name)
        for kind, name in reversed(made):
            if kind == "link":
                ip("link", "del", name, check=False)
            else:
                ip("netns", "del", name, check=False)
        _LIVE.discard(self)

    def leftovers(self) -> list[str]:
        """Names of this object's tag that still exist (empty after ``remove()``)."""
        return ours(namespaces() + links(), self.tag) if self.tag else []

    def __enter__(self) -> "Hosts":
        self.create()
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def __repr__(self) -> str:
        return f"Hosts({list(self.players)}, tag={self.tag!r}, subnet={self.subnet!r})"


@atexit.register
def _remove_all() -> None:
    for hosts in list(_LIVE):
        hosts.remove()


def _on_sigterm(signum: int, _frame: object) -> None:
    _remove_all()
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.kill(os.getpid(), signal.SIGTERM)


def _install_sigterm_cleanup() -> None:
    """If SIGTERM would kill this process outright, clean up first (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _on_sigterm)
