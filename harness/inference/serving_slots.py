"""Client slots of a served model: K places in the hostmap for K concurrent clients.

A TensorFlow task can only be reached at the address its cluster spec names, so each
client process *is* one task of the serving cluster: slot 0 is ``prediction-client``
(the name of the one-client hostmaps), slot k > 0 ``prediction-client-k``. ``serve
--clients K`` writes K slots; a client takes the first free one on its machine and
holds it until it exits. A client that finds every slot busy waits (its ``--wait``
bound) and says so once on stderr.

Taking a slot is atomic: a client binds an abstract Unix socket named after the slot's
address (Linux; no file, and the kernel frees it when the process exits, however it
exits). It then also checks that nothing listens on the slot's port (a client of an
older harness, or another program), because gRPC's listener uses SO_REUSEPORT and two
processes could otherwise share one slot.

Who can derive what: slots change nothing about the data. The slot a request came from
is visible to the servers and the model owner (it routes the result), as the request's
arrival time always was; it says nothing about the image or the logits.

This module does not import TensorFlow (the command line picks the client's listening
address with it before anything heavy is loaded).
"""
from __future__ import annotations

import logging
import re
import socket
import time
from collections import OrderedDict
from typing import Callable, Mapping

from harness.names import CLIENT, SERVERS
from harness.net.worker import listening_addresses, load_hostmap, resolve_ipv4, split_hostport

logger = logging.getLogger(__name__)

MAX_SLOTS = 16  # each slot adds two loops per server to the serving step's graph
_SLOT_RE = re.compile(re.escape(CLIENT) + r"(?:-(\d+))?$")


class ServingError(RuntimeError):
    """Serving could not start, continue, or answer; says which party and why."""


def slot_name(k: int) -> str:
    """Hostmap name of client slot ``k``."""
    return CLIENT if k == 0 else f"{CLIENT}-{k}"


def slot_index(name: str) -> int | None:
    """The slot number of a hostmap name, or None if it is not a client slot."""
    m = _SLOT_RE.fullmatch(name)
    if m is None:
        return None
    k = int(m.group(1) or 0)
    return k if slot_name(k) == name else None  # "prediction-client-0" is not a slot name


def slot_names(k: int) -> tuple[str, ...]:
    return tuple(slot_name(i) for i in range(k))


def client_slots(hostmap: Mapping[str, str], where: str = "the hostmap") -> list[str]:
    """The client slot names of a hostmap, in slot order; they must be 0..K-1."""
    found = sorted((slot_index(n), n) for n in hostmap if slot_index(n) is not None)
    if not found:
        raise ServingError(f"{where} has no {CLIENT!r} slot for a client")
    if [k for k, _ in found] != list(range(len(found))):
        raise ServingError(f"{where}: client slots must be {CLIENT}, {CLIENT}-1, ... without "
                           f"gaps; found {', '.join(n for _, n in found)}")
    if len(found) > MAX_SLOTS:
        raise ServingError(f"{where} has {len(found)} client slots; at most {MAX_SLOTS}")
    missing = [s for s in SERVERS if s not in hostmap]
    if missing:
        raise ServingError(f"{where} lacks {', '.join(missing)}")
    return [n for _, n in found]


def check_clients(k: int) -> int:
    if not 1 <= k <= MAX_SLOTS:
        raise ValueError(f"--clients must be between 1 and {MAX_SLOTS}, got {k}")
    return k


def _is_local(ip: str) -> bool:
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind((ip, 0))
    except OSError:
        return False
    return True


def slot_host(hostmap: Mapping[str, str], where: str = "the hostmap") -> str:
    """The address this machine's client listens on: the first slot host that is a
    local address (else the first slot's, as a one-client hostmap always had it)."""
    hosts = list(OrderedDict.fromkeys(
        resolve_ipv4(split_hostport(hostmap[n], n)[0]) for n in client_slots(hostmap, where)))
    return next((h for h in hosts if _is_local(h)), hosts[0])


def client_bind_host(config: str) -> str:
    """Where the client's own TensorFlow server (its slot) must listen."""
    try:
        return slot_host(load_hostmap(config), f"hostmap {config}")
    except ServingError as exc:
        raise ValueError(str(exc)) from None


class SlotClaim:
    """A slot held by this process until ``release()`` or exit (an abstract socket)."""

    def __init__(self, index: int, name: str, address: str, sock: socket.socket) -> None:
        self.index, self.name, self.address, self._sock = index, name, address, sock

    def release(self) -> None:
        self._sock.close()


def _try_claim(address: str) -> socket.socket | None:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind("\0harness-client-slot/" + address)
    except OSError:
        sock.close()
        return None
    return sock


def claim_slot(hostmap: Mapping[str, str], host: str, wait: float, where: str = "the hostmap",
               announce: Callable[[str], None] | None = None) -> SlotClaim:
    """Take the first free client slot at ``host``; wait up to ``wait`` s for one.

    ``announce`` is told once (one line) when every slot is busy and we start waiting.
    """
    names = [n for n in client_slots(hostmap, where)
             if resolve_ipv4(split_hostport(hostmap[n], n)[0]) == host]
    if not names:
        raise ServingError(f"{where} has no client slot at {host}")
    announce = announce or logger.warning
    deadline = time.monotonic() + wait
    announced = False
    while True:
        for name in names:
            address = hostmap[name]
            sock = _try_claim(address)
            if sock is None:
                continue
            if listening_addresses(split_hostport(address, name)[1]):
                sock.close()  # taken by something that is not a client of this harness
                continue
            return SlotClaim(slot_index(name), name, address, sock)
        left = deadline - time.monotonic()
        if left <= 0:
            raise ServingError(
                f"all {len(names)} client slot(s) of {where} at {host} stayed in use for "
                f"{wait:.0f} s (one client per slot): retry later, raise --wait, or serve "
                "with more --clients")
        if not announced:
            announced = True
            announce(f"all {len(names)} client slot(s) of {where} are in use: waiting up to "
                     f"{left:.0f} s for one to free")
        time.sleep(0.1)
