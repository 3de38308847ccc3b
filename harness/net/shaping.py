"""Shaped networks: players in namespaces (``harness.net.netns``), each link limited by tc.

``with ShapedNetwork(profile, players) as net:`` gives every player a namespace and
an address, and shapes both directions of each player's link to the profile's rate
with a token bucket (``tbf``): the egress of the veth end inside the player's
namespace (what the player sends) and of the end on the bridge (what it receives).
A party-to-party path crosses two such links, so it runs at the link rate, and a
player's traffic to all others together shares its own link's rate.

Delay: where the kernel has ``sch_netem``, a ``netem`` qdisc under each ``tbf`` holds
every packet for RTT/2, in each direction of each link; a player-to-player round
trip crosses four such queues (two links, both ways), so it is emulated as 2 x RTT
and the delay per direction is set to RTT/4 for player-to-player paths to see the
profile's RTT. Without ``sch_netem`` (detected at run time, in a scratch
namespace) nothing delays packets: ``describe()`` then says
``"delay": "projected"`` and the RTT has to be added by a model
(``harness.results.projection``). Every figure carries that word.

Rates are counted as tc counts them: Ethernet frames (IP and TCP headers included).
"""
from __future__ import annotations

import functools
import json
import logging
import re
from typing import Any, Sequence

from harness.net import netns
from harness.net.netprofile import NetworkProfile

logger = logging.getLogger(__name__)

MIN_BURST = 32 * 1024  # bytes: at least a few full-size frames (and small GSO bursts)
QUEUE_SECONDS = 0.1  # queue depth of each link, in time at its rate (beyond the burst)


@functools.lru_cache(maxsize=1)
def netem_support() -> tuple[bool, str]:
    """(True, "") if a ``netem`` qdisc can be added here, else (False, why not)."""
    ok, reason = netns.available()
    if not ok:
        return False, reason
    scratch = f"{netns.new_tag()}-netem"
    netns.ip("netns", "add", scratch)
    try:
        netns.ip("-n", scratch, "link", "set", "lo", "up")
        netns.run(["tc", "-n", scratch, "qdisc", "add", "dev", "lo", "root", "netem",
                   "delay", "1ms"])
    except netns.NetnsError as exc:
        return False, f"no sch_netem in this kernel (tc said: {str(exc).rsplit(': ', 1)[-1]})"
    finally:
        netns.ip("netns", "del", scratch, check=False)
    return True, ""


def bucket(rate: float) -> tuple[int, int]:
    """(burst, limit) in bytes for a tbf of ``rate`` bytes/s: a burst of 1 ms at the
    rate (at least ``MIN_BURST``) and a queue of ``QUEUE_SECONDS`` beyond it."""
    burst = max(MIN_BURST, int(rate * 1e-3))
    return burst, burst + int(rate * QUEUE_SECONDS)


_RETRANS = re.compile(r"\bbytes_retrans:(\d+)")
LIFTED_RATE = 100e9 / 8  # bytes/s: a tbf rate no link here comes near (lift())


def shape_commands(dev: str, profile: NetworkProfile, namespace: str | None,
                   delay: float | None, verb: str = "add",
                   rate: float | None = None) -> list[list[str]]:
    """The tc commands that shape ``dev``'s egress (in ``namespace``, None: ours):
    a root ``tbf`` at the profile's rate (or ``rate``, bytes/s), and under it a
    ``netem`` of ``delay`` seconds one way if ``delay`` is given (0: none, but the
    qdisc is kept). ``verb``: ``add``, or ``change`` for qdiscs that exist."""
    tc = ["tc"] + (["-n", namespace] if namespace else [])
    rate = profile.rate if rate is None else rate
    burst, limit = bucket(rate)
    cmds = [tc + ["qdisc", verb, "dev", dev, "root", "handle", "1:", "tbf",
                  "rate", f"{round(rate * 8)}bit", "burst", str(burst), "limit", str(limit)]]
    if delay is not None:
        cmds.append(tc + ["qdisc", verb, "dev", dev, "parent", "1:1", "handle", "10:",
                          "netem", "delay", f"{delay * 1e6:.0f}us", "limit", "100000"])
    return cmds


def qdiscs(dev: str, namespace: str | None = None) -> str:
    """``tc qdisc show dev DEV`` (in ``namespace``), for checks and reports."""
    tc = ["tc"] + (["-n", namespace] if namespace else [])
    return netns.run(tc + ["qdisc", "show", "dev", dev], check=False)


class ShapedNetwork:
    """Players in namespaces of their own, each link shaped to ``profile``.

    ``address(player)``, ``exec_prefix(player)``, ``driver_address`` (this process
    reaches the players from there), ``describe()``; ``stop()`` (also on exit,
    atexit and SIGTERM) removes namespaces, veths, bridge and qdiscs.
    """

    def __init__(self, profile: NetworkProfile, players: Sequence[str]):
        self.profile = profile
        self.hosts = netns.Hosts(players)
        self._delay: str | None = None
        self._delay_s: float | None = None
        self._note = ""
        self._lifted = True  # no qdisc of ours yet

    @staticmethod
    def available() -> tuple[bool, str]:
        """(True, "") if this process can create shaped networks, else (False, why)."""
        return netns.available()

    # -- lifecycle -----------------------------------------------------------------
    def start(self) -> "ShapedNetwork":
        if self.hosts.running:
            return self
        self.hosts.create()
        try:
            self._shape()
        except BaseException:
            self.hosts.remove()
            raise
        logger.info("shaped network up: %s", self.describe())
        return self

    def _shape(self) -> None:
        if self.profile.rate is None:  # namespaces without any qdisc of ours
            self._delay, self._note = "emulated", "unshaped: the veths' own speed and latency"
            return
        delay = None
        if self.profile.rtt > 0:
            has_netem, why = netem_support()
            if has_netem:
                delay = self.profile.rtt / 4
                self._delay, self._note = "emulated", "netem: RTT/4 per queue, 4 queues a round trip"
            else:
                self._delay = "projected"
                self._note = "delay not emulated (no sch_netem): projected"
                logger.warning("%s: %s; %s", self.profile.name, self._note, why)
        else:
            self._delay, self._note = "emulated", "no delay asked for"
        self._delay_s = delay
        for dev, namespace in self._ends():
            for cmd in shape_commands(dev, self.profile, namespace, delay):
                netns.run(cmd)
        self._lifted = False

    def _ends(self) -> list[tuple[str, str | None]]:
        """(veth, namespace or None: ours) of both ends of every player's link."""
        return [(dev, namespace) for _name, dev, namespace in self._directions()]

    def _directions(self) -> list[tuple[str, str, str | None]]:
        """("<player> up" or "<player> down", the veth whose egress carries it, its
        namespace or None: ours): the inner end sends what the player sends, the outer
        end what it receives."""
        return [(f"{player} {direction}", self.hosts.veth(player, end), namespace)
                for player in self.hosts.players
                for end, direction, namespace in (
                    ("inner", "up", self.hosts.namespace(player)), ("outer", "down", None))]

    def lift(self) -> None:
        """Lift the limits: every link's tbf to ``LIFTED_RATE`` (and its netem, if any,
        to no delay). The same processes, connections, veths and qdiscs then run without
        limit, e.g. for a compute reference timed on the very cluster that is shaped.
        The qdiscs stay (``change``, not ``del``): with them deleted, a SecureNN batch of
        32 timed 167 ms on a cluster whose LAN-rate (625 MB/s) shaped calls took 146 ms
        (one run, 2026-12-06), so the reference keeps the qdiscs the shaped run goes
        through. ``restore()`` undoes it."""
        self._set(lifted=True)

    def restore(self) -> None:
        """Shape every link to the profile again, after ``lift()``."""
        self._set(lifted=False)

    def _set(self, lifted: bool) -> None:
        if self._lifted == lifted or self.profile.rate is None or not self.hosts.running:
            return
        delay = None if self._delay_s is None else (0.0 if lifted else self._delay_s)
        for dev, namespace in self._ends():
            for cmd in shape_commands(dev, self.profile, namespace, delay, "change",
                                      LIFTED_RATE if lifted else None):
                netns.run(cmd)
        self._lifted = lifted

    @property
    def lifted(self) -> bool:
        """True while ``lift()`` has the links' limits lifted."""
        return self._lifted

    def stop(self) -> None:
        """Remove everything (idempotent)."""
        self.hosts.remove()
        self._lifted = True

    def __enter__(self) -> "ShapedNetwork":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- use -----------------------------------------------------------------------
    def address(self, player: str) -> str:
        return self.hosts.address(player)

    def exec_prefix(self, player: str) -> list[str]:
        return self.hosts.exec_prefix(player)

    def namespace(self, player: str) -> str:
        return self.hosts.namespace(player)

    @property
    def driver_address(self) -> str:
        return self.hosts.driver_address

    @property
    def players(self) -> tuple[str, ...]:
        return self.hosts.players

    def link_bytes(self) -> dict[str, int]:
        """Bytes each link's ``tbf`` has let through since the network started:
        ``"<player> up"`` (the egress of the player's own veth end: all it sends) and
        ``"<player> down"`` (the egress of the outer end: all it receives), counted as the
        rate limiter counts them (frames: Ethernet, IP and TCP headers, ACKs and every
        other packet included). Differences of two readings give the bytes on the wire
        in between; ``lift()``/``restore()`` keep the counters. Empty while unshaped."""
        if self.profile.rate is None or not self.hosts.running:
            return {}
        out = {}
        for name, dev, namespace in self._directions():
            tc = ["tc"] + (["-n", namespace] if namespace else [])
            shown = json.loads(netns.run(tc + ["-s", "-j", "qdisc", "show", "dev", dev]) or "[]")
            tbf = [q for q in shown if q.get("kind") == "tbf"]
            if len(tbf) != 1:
                raise netns.NetnsError(f"{name}: expected one tbf of ours, found {len(tbf)}")
            out[name] = int(tbf[0]["bytes"])
        return out

    def resent_bytes(self) -> dict[str, int]:
        """Payload bytes each player's TCP connections have retransmitted so far
        (``"<player> up"``: the sum of ``bytes_retrans`` over the sockets ``ss`` shows in
        its namespace). A retransmitted segment lost beyond the sender's uplink (or resent
        needlessly) crossed that uplink twice, once if its own queue dropped it; differences
        of two readings give what a call resent (sockets closed in between drop out).
        Empty while unshaped."""
        if self.profile.rate is None or not self.hosts.running:
            return {}
        out = {}
        for player in self.players:
            shown = netns.run(["ip", "netns", "exec", self.namespace(player), "ss", "-tinH"])
            out[f"{player} up"] = sum(int(n) for n in _RETRANS.findall(shown))
        return out

    def describe(self) -> dict[str, Any]:
        """What the players' links are: rate, RTT, whether delay is emulated or projected."""
        shaped = self.profile.rate is not None
        burst, limit = bucket(self.profile.rate) if shaped else (None, None)
        qdisc = None
        if shaped:
            qdisc = "tbf+netem" if self._note.startswith("netem") else "tbf"
        return {
            "network": self.profile.name,
            "rate_bytes_per_s": self.profile.rate,
            "rtt_s": self.profile.rtt,
            "delay": self._delay,
            "delay_note": self._note,
            "qdisc": qdisc,
            "burst_bytes": burst,
            "queue_limit_bytes": limit,
            "shaped_links": "each player's veth, both directions" if shaped else None,
            "driver_address": self.driver_address if self.hosts.running else None,
            "addresses": ({p: self.address(p) for p in self.players}
                          if self.hosts.running else {}),
        }

    def __repr__(self) -> str:
        return f"ShapedNetwork({self.profile.name}, {self.hosts!r})"
