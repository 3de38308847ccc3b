"""The transfers of one prediction replayed on rate-limited links.

``harness.results.projection`` projects a latency from a few totals; where the traffic
analysis (``harness.inference.comm``) names each transfer, its bytes and the transfers
it directly waits for (``schedule``: ``[[link, bytes, [waits for]], ...]``), the two
replays here play them out on the links instead:

- ``transfer_scheduled_s``: the compute spread evenly over the call, one equal slice
  before each level of the longest chain of transfers and one after the last;
- ``transfer_timed_s``: each transfer with its own measured *lead* (the work from the
  arrival of what it waits for to its being sent), its own duration and the rest of
  the call after it, from one call traced with the links' limits lifted
  (``harness.inference.comm_trace``): compute that ran while other transfers were on
  the way stays off the critical path.

A transfer becomes ready once everything it waits for has arrived and its lead has
passed. It then needs its links (``topology``): in a ``"star"``, the sender's uplink
and the receiver's downlink, each at the rate; in a ``"mesh"``, a link of its own per
ordered pair. Parties in ``unshaped`` (the driver) have no link of their own.

How a link shares its rate (the link model): **fewest bytes left first**. At every
moment each link carries the transfer on it with the fewest bytes still to send, at the
full rate if its other link has that to spare (transfers are served in that order, each
taking what is left on its links); a longer transfer waits, or takes what remains, and
goes on as soon as the short one is through. A link's token bucket (``burst`` bytes,
refilled at the rate while the link carries nothing, as ``tbf`` does) lets a transfer's
first bytes through at once. A transfer arrives when its bytes are through and not
before its *hold* (how long it took with the limits lifted: RPC and copies).

Why this model: TCP on a rate-limited link lets a short transfer through in a few
round trips while a long one keeps most of the rate. In a traced shaped call (SecureNN,
batch 1, 100 Mbit/s), a 4 kB transfer sent 6 ms into the call arrived 4 ms later while a
108 kB one held the same downlink; served one at a time in the order they became ready
(FIFO, this module's model before 2026-12-07), it would have waited 10 ms. Equal shares
for all (max-min fair) instead slows every long transfer while others run. The README
("Projection") gives the comparison of the three on emulated runs; in short, the timed
replay at the issue's rates (1 Gbit/s and 100 Mbit/s, 32 rows from four runs) was within
10 % of the emulated median in every row with this model, against 30 of 32 within 15 %
with FIFO; at the LAN/WAN rates (8 rows, one run) within 14 %, FIFO within 8 %.

Plain numbers and lists in, seconds out; no TensorFlow.
"""
from __future__ import annotations

import heapq
from typing import Any, Iterable, Mapping, Sequence

FULL_FRAME_OVERHEAD = 1514 / 1448  # Ethernet frame / TCP payload of a full 1500-MTU segment
TOPOLOGIES = ("star", "mesh")
# how a link shares its rate, as results record it (rows without it: "one at a time, in
# the order they became ready", before 2026-12-07)
LINK_MODEL = "fewest bytes left first"
_LEFT = 1e-6  # bytes: a transfer with less than this left is through


def check_topology(topology: str) -> None:
    if topology not in TOPOLOGIES:
        raise ValueError(f"topology {topology!r}: use one of {', '.join(TOPOLOGIES)}")


def link_names(sender: str, receiver: str, topology: str, skip: set[str]) -> list[str]:
    """The links a transfer from ``sender`` to ``receiver`` crosses (none for ``skip``ped
    parties' own): ``"<party> up"``/``"<party> down"`` in a star, ``"a->b"`` in a mesh."""
    if topology == "mesh":
        return [] if {sender, receiver} & skip else [f"{sender}->{receiver}"]
    return [f"{p} {d}" for p, d in ((sender, "up"), (receiver, "down")) if p not in skip]


def order(schedule: Any) -> tuple[list[int], list[list[int]], list[int]]:
    """(a topological order, each entry's dependents, each entry's level) of a schedule;
    clear errors for entries that wait for themselves, for nothing there, or in a cycle."""
    n = len(schedule)
    pending = [len(entry[2]) for entry in schedule]
    dependents: list[list[int]] = [[] for _ in range(n)]
    level = [0] * n
    for i, (_link, _bytes, after) in enumerate(schedule):
        for j in after:
            if not 0 <= j < n or j == i:
                raise ValueError(f"schedule entry {i} waits for {j}: not another entry")
            dependents[j].append(i)
    topo = [i for i in range(n) if not pending[i]]
    for i in topo:  # levels: 1 + the longest chain of transfers before
        for d in dependents[i]:
            level[d] = max(level[d], level[i] + 1)
            pending[d] -= 1
            if not pending[d]:
                topo.append(d)
    if len(topo) != n:
        raise ValueError("the schedule has a cycle: transfers that wait for each other")
    return topo, dependents, level


def _rates(left: Mapping[int, float], links: Sequence[list[str]], rate: float) -> dict[int, float]:
    """Each transfer on the wire gets what its links have left, fewest bytes left first."""
    spare: dict[str, float] = {}
    out = {}
    for i in sorted(left, key=lambda i: (left[i], i)):
        got = max(0.0, min(spare.get(k, rate) for k in links[i]))
        out[i] = got
        for k in links[i]:
            spare[k] = spare.get(k, rate) - got
    return out


def _replay(schedule: Any, dependents: list[list[int]], rate: float, lead: list[float],
            hold: list[float], tail: list[float], burst: float, topology: str,
            skip: set[str], overhead: float) -> float:
    """When the call ends: entry i is ready ``lead[i]`` after the last transfer it waits
    for has arrived (after the start if none), crosses its links as the module docstring
    says, arrives no sooner than ``hold[i]`` after it was ready; the call ends ``tail[i]``
    after the last arrival."""
    n = len(schedule)
    links = []
    for entry in schedule:
        sender, _, receiver = str(entry[0]).partition("->")
        links.append(link_names(sender.strip(), receiver.strip(), topology, skip))
    tokens = {k: float(burst) for ks in links for k in ks}
    pending = [len(entry[2]) for entry in schedule]
    floor = [0.0] * n
    events = [(lead[i], 0, i) for i in range(n) if not pending[i]]  # 0: ready, 1: arrived
    heapq.heapify(events)
    left: dict[int, float] = {}  # bytes still to send, of the transfers on the wire
    now = end = 0.0
    while events or left:
        rates = _rates(left, links, rate)
        through = {i: now + left[i] / r for i, r in rates.items() if r > 0}
        until = min([*through.values(), *(events[0][:1] if events else [])],
                    default=float("inf"))
        busy = {k for i in left for k in links[i]}
        for k in tokens.keys() - busy:  # idle links refill their buckets
            tokens[k] = min(burst, tokens[k] + rate * (until - now))
        for i, r in rates.items():
            left[i] -= r * (until - now)
        now = until
        # those due now are through, whatever rounding left of them
        for i in [i for i, b in left.items() if through.get(i, now + 1) <= now or b <= _LEFT]:
            del left[i]
            heapq.heappush(events, (max(now, floor[i]), 1, i))
        while events and events[0][0] <= now:
            _, kind, i = heapq.heappop(events)
            if kind == 0:
                floor[i] = now + hold[i]
                size = schedule[i][1] * overhead
                at_once = min([size, *(tokens[k] for k in links[i])])
                for k in links[i]:
                    tokens[k] -= at_once
                if links[i] and size - at_once > _LEFT:
                    left[i] = size - at_once
                else:
                    heapq.heappush(events, (floor[i], 1, i))
                continue
            end = max(end, now + tail[i])
            for d in dependents[i]:  # events come in time order: the last arrival is now
                pending[d] -= 1
                if not pending[d]:
                    heapq.heappush(events, (now + lead[d], 0, d))
    return end


def transfer_scheduled_s(schedule: Any, rate: float | None, compute_s: float = 0.0,
                         burst: float = 0.0, topology: str = "star",
                         unshaped: Iterable[str] = (),
                         overhead: float = FULL_FRAME_OVERHEAD) -> float:
    """The transfer term of the replay of ``schedule`` on links of ``rate`` bytes/s
    (None: unlimited), the compute spread evenly over the levels: the makespan minus
    ``compute_s``."""
    check_topology(topology)
    _topo, dependents, level = order(schedule)
    if rate is None:
        return 0.0
    gap = compute_s / (max(level, default=-1) + 2)
    n = len(schedule)
    end = _replay(schedule, dependents, rate, [gap] * n, [0.0] * n, [gap] * n, burst,
                  topology, set(unshaped), overhead)
    return max(end, compute_s) - compute_s


def transfer_timed_s(schedule: Any, timing: Mapping[str, Any], rate: float | None,
                     compute_s: float, burst: float = 0.0, topology: str = "star",
                     unshaped: Iterable[str] = (),
                     overhead: float = FULL_FRAME_OVERHEAD) -> float:
    """The transfer term of the *timed* replay: ``schedule`` replayed with each
    transfer's compute measured in one call with the links' limits lifted.

    ``timing`` (``harness.inference.comm_trace``): ``call_s`` (that call's duration),
    ``sent`` and ``arrived`` (per entry, seconds after its start, or None). Per entry,
    its *lead* is the time from the arrival of the last transfer it waits for (the start
    if none) to its being sent; *hold* is how long it took with the limits lifted, a
    floor on it shaped; *tail*, the time from its arrival to the end of the call. A
    missing time counts as no lead and no hold. All three are scaled by
    ``compute_s / call_s`` (the traced call gives the shape, the median the scale), so
    the replay with unlimited links gives back ``compute_s``.
    """
    check_topology(topology)
    topo, dependents, _level = order(schedule)
    if rate is None:
        return 0.0
    n, call = len(schedule), timing.get("call_s")
    sent, arrived = timing.get("sent"), timing.get("arrived")
    if not isinstance(call, (int, float)) or not call > 0 or not isinstance(sent, list) \
            or not isinstance(arrived, list) or len(sent) != n or len(arrived) != n:
        raise ValueError(f"timing must be {{'call_s': > 0, 'sent': [{n} times or None], "
                         "'arrived': [...]}} for this schedule")
    scale = compute_s / call
    lead, hold, tail = [0.0] * n, [0.0] * n, [0.0] * n
    got = [0.0] * n
    for i in topo:
        before = max((got[j] for j in schedule[i][2]), default=0.0)
        out = before if sent[i] is None else max(before, sent[i])
        got[i] = out if arrived[i] is None else max(out, arrived[i])
        lead[i], hold[i] = (out - before) * scale, (got[i] - out) * scale
        tail[i] = max(0.0, call - got[i]) * scale
    end = _replay(schedule, dependents, rate, lead, hold, tail, burst, topology,
                  set(unshaped), overhead)
    return max(end, compute_s) - compute_s
