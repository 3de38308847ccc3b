"""Projected latency of a private prediction on a network we did not (fully) emulate.

The model::

    projected = compute + rounds x RTT + bytes(busiest link) x overhead / rate

- ``compute``: the measured latency of the same prediction with the links not
  limited (the median of a run on the same cluster with its qdiscs lifted, or on
  loopback), which already contains the CPU time of all parties and the unshaped
  transfers;
- ``rounds x RTT``: each communication round waits one round trip. A round is a
  set of transfers that can only start once the previous round's results arrived
  (the count comes from the traffic analysis, ``harness.inference.comm``).
  TensorFlow moves tensors with a pull RPC (the receiver asks, the sender answers),
  so a full RTT per round is the reading that matches a receiver that asks when it
  needs the tensor; a receiver that asked early waits only the one-way half. The
  term is therefore an upper estimate of latency, ``rounds x RTT / 2`` a lower one;
- ``bytes / rate``: the time the busiest link needs to carry its bytes at the
  link rate. ``overhead`` turns TCP payload into what a rate limiter counts:
  Ethernet, IP and TCP headers (with timestamps) add 66 bytes to each full-size
  1448-byte segment (1514/1448, ~4.6 %).

Which links there are (``topology``):

- ``"star"`` (default; what ``harness.net.shaping`` emulates): every party has one
  link to a switch, with the rate in each direction; a party's uplink carries all
  it sends, its downlink all it receives. The busiest link is the largest of those
  sums;
- ``"mesh"``: every ordered pair of parties has a link of its own; the busiest
  link is the largest single pair.

Parties named in ``unshaped`` (e.g. ``driver``, which sits in the root namespace
of an emulated network and has no shaped link of its own) have no link of their
own: in a star the links of their peers still carry what they exchange; in a mesh
their pairs are left out.

Assumptions, each making the projection simpler than reality:

1. compute, latency and transfer do not overlap (they add up): conservative when a
   protocol overlaps communication with computation;
2. links other than the busiest one work in parallel with it and never hold it up;
   the transfer term is a lower bound on the time the links are busy;
3. a single TCP flow fills a link at its rate whatever the RTT (no slow start, no
   window limit, no loss): optimistic for large RTT x rate (e.g. WAN);
4. the measured compute does not depend on the network; the unshaped transfers it
   contains are counted again in the transfer term (small: veths move GB/s);
5. rounds and bytes per prediction are those measured on loopback with the same
   protocol, model and batch size: the protocol's traffic does not depend on the
   network.

Assumption 2 makes the transfer term a lower bound. Where the traffic comes per round
(``comm["round_links"]``: bytes per link of each round, round k holding the transfers
that are k-th on the longest chain ending with them), ``transfer_sequential_s`` is the
opposite reading: rounds never overlap, and each lasts as long as its busiest link
needs. Real runs fall between the two (a round's transfers start as their own inputs
arrive, not when the whole previous round has), so a report shows both.

Where each transfer's direct predecessors are known (``comm["schedule"]``: link,
bytes, the transfers it waits for), ``transfer_scheduled_s`` replays them instead of
assumptions 1 and 2: the compute is spread evenly over the call, one equal slice
before each level of the longest chain of transfers and one after the last; a
transfer starts one slice after everything it waits for has arrived, once its links
are free (a link carries one transfer at a time, in the order they became ready; in a
star, the sender's uplink and the receiver's downlink); it takes bytes x overhead /
rate, less what the link's token bucket (``burst`` bytes, refilled at the rate while
the link idles, as ``tbf`` does) lets through at once. The replay's makespan minus the
compute is its transfer term.

Where one call's transfers were traced with the links' limits lifted (``comm["timing"]``:
when each was sent and arrived, ``harness.inference.comm_trace``), ``transfer_timed_s``
replays them the same way but with each transfer's own measured lead (the work between the
arrival of what it waits for and its send) instead of an even slice: compute that ran
while other transfers were on the way stays off the critical path.

Plain numbers and dicts in, plain numbers out; no TensorFlow.
"""
from __future__ import annotations

import heapq
from dataclasses import asdict, dataclass
from typing import Any, Iterable, Mapping

FULL_FRAME_OVERHEAD = 1514 / 1448  # Ethernet frame / TCP payload of a full 1500-MTU segment
TOPOLOGIES = ("star", "mesh")
# ``wire_ratios``: links that carry at least this much counted payload per call are held
# to WIRE_RATIO (on smaller ones, RPC headers and control messages, which the count
# leaves out, weigh more)
WIRE_CHECKED_BYTES = 256 * 1024
# wire bytes / counted payload of such a link: at least the payload itself; at most
# full-frame headers (1514/1448), an ACK per segment of up to twice as much reverse
# traffic (2 x 66/1448) and RPC framing. Outside it, the count is wrong.
WIRE_RATIO = (1.0, 1.25)


@dataclass(frozen=True)
class Projection:
    """A projected latency (seconds) and its parts."""

    total_s: float
    compute_s: float
    latency_s: float  # rounds x RTT
    transfer_s: float  # busiest link's bytes x overhead / rate
    rounds: int
    rtt_s: float
    rate_bytes_per_s: float | None
    busiest_link: str | None  # e.g. "server0 up" (star) or "server0->server1" (mesh)
    busiest_link_bytes: int
    total_bytes: int
    topology: str
    transfer_sequential_s: float | None = None  # rounds one after another (upper bound)
    transfer_scheduled_s: float | None = None  # the transfers replayed on the links
    transfer_timed_s: float | None = None  # replayed with the compute of a traced call

    @property
    def total_sequential_s(self) -> float | None:
        """The projection with ``transfer_sequential_s`` as its transfer term."""
        if self.transfer_sequential_s is None:
            return None
        return self.compute_s + self.latency_s + self.transfer_sequential_s

    @property
    def total_scheduled_s(self) -> float | None:
        """The projection with ``transfer_scheduled_s`` as its transfer term."""
        if self.transfer_scheduled_s is None:
            return None
        return self.compute_s + self.latency_s + self.transfer_scheduled_s

    @property
    def total_timed_s(self) -> float | None:
        """The projection with ``transfer_timed_s`` as its transfer term."""
        if self.transfer_timed_s is None:
            return None
        return self.compute_s + self.latency_s + self.transfer_timed_s

    @property
    def latency_lower_s(self) -> float:
        """The latency term if every round waited only one way (RTT/2)."""
        return self.latency_s / 2

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "latency_lower_s": self.latency_lower_s,
                "total_sequential_s": self.total_sequential_s,
                "total_scheduled_s": self.total_scheduled_s,
                "total_timed_s": self.total_timed_s}


def link_loads(comm: Mapping[str, Any], topology: str = "star",
               unshaped: Iterable[str] = ()) -> dict[str, int]:
    """Bytes each link carries, from ``{"links": {"a->b": {"bytes": N, ...}}, ...}``.

    ``star``: ``"<party> up"`` (all it sends) and ``"<party> down"`` (all it
    receives), for every party not in ``unshaped``; ``mesh``: one entry per pair.
    """
    _check_topology(topology)
    skip = set(unshaped)
    loads: dict[str, int] = {}
    for _key, sender, receiver, nbytes in _links(comm):
        for name in _link_names(sender, receiver, topology, skip):
            loads[name] = loads.get(name, 0) + nbytes
    return loads


def wire_ratios(comm: Mapping[str, Any], wire: Mapping[str, int],
                unshaped: Iterable[str] = ()) -> dict[str, dict[str, Any]]:
    """Counted payload next to what each star link's rate limiter let through, per call.

    ``comm``: the counted traffic of one call (as ``link_loads``); ``wire``: frame bytes
    per link name (``"<party> up"``/``"<party> down"``) over one call, e.g. the
    difference of two ``ShapedNetwork.link_bytes()`` readings around it. Per link:
    ``counted`` payload, ``wire`` bytes and ``ratio`` = wire / counted (None where
    nothing was counted). The ratio is the overhead that turns payload into frames:
    1514/1448 for full-size TCP segments, plus the ACKs of what the party moves the
    other way, RPC headers and small control messages. A ratio below 1 means the links
    carried less than we counted; far above the overhead, that traffic went uncounted.
    """
    counted = link_loads(comm, "star", unshaped)
    out = {}
    for name in sorted(set(counted) | set(wire)):
        c, w = counted.get(name, 0), wire.get(name)
        out[name] = {"counted": c, "wire": w,
                     "ratio": None if not c or w is None else w / c}
    return out


def checked_ratios(wire: Mapping[str, Mapping[str, Any]]) -> dict[str, float]:
    """The wire / counted ratios of ``wire_ratios`` held to ``WIRE_RATIO``: links with at
    least ``WIRE_CHECKED_BYTES`` counted and a reading."""
    return {k: v["ratio"] for k, v in wire.items()
            if v.get("ratio") is not None and v.get("counted", 0) >= WIRE_CHECKED_BYTES}


def _link_names(sender: str, receiver: str, topology: str, skip: set[str]) -> list[str]:
    if topology == "mesh":
        return [] if {sender, receiver} & skip else [f"{sender}->{receiver}"]
    return [f"{p} {d}" for p, d in ((sender, "up"), (receiver, "down")) if p not in skip]


def _order(schedule: Any) -> tuple[list[int], list[list[int]], list[int]]:
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
    order = [i for i in range(n) if not pending[i]]
    for i in order:  # levels: 1 + the longest chain of transfers before
        for d in dependents[i]:
            level[d] = max(level[d], level[i] + 1)
            pending[d] -= 1
            if not pending[d]:
                order.append(d)
    if len(order) != n:
        raise ValueError("the schedule has a cycle: transfers that wait for each other")
    return order, dependents, level


def _replay(schedule: Any, dependents: list[list[int]], rate: float, lead: list[float],
            hold: list[float], tail: list[float], burst: float, topology: str,
            skip: set[str], overhead: float) -> float:
    """Makespan of the transfers on their links: entry i is ready ``lead[i]`` after the
    last transfer it waits for has arrived (after the start if none), waits for its links
    (one transfer at a time each, in the order they became ready), takes its bytes at the
    rate less what the links' token buckets hold, and takes ``hold[i]`` at least; the
    call ends ``tail[i]`` after the last arrival."""
    pending = [len(entry[2]) for entry in schedule]
    ready_at = [0.0] * len(schedule)
    heap = [(lead[i], i) for i in range(len(schedule)) if not pending[i]]
    heapq.heapify(heap)
    free: dict[str, float] = {}
    tokens: dict[str, float] = {}
    end = 0.0
    while heap:
        ready, i = heapq.heappop(heap)
        sender, _, receiver = str(schedule[i][0]).partition("->")
        links = _link_names(sender.strip(), receiver.strip(), topology, skip)
        start = max([ready, *(free.get(k, 0.0) for k in links)])
        size, takes = schedule[i][1] * overhead, 0.0
        for k in links:  # the bucket refilled since the link's last transfer ended
            held = min(burst, tokens.get(k, burst) + rate * (start - free.get(k, 0.0)))
            takes = max(takes, max(0.0, size - held) / rate)
            tokens[k] = max(0.0, held - size)
        for k in links:
            free[k] = start + takes
        done = max(start + takes, ready + hold[i])
        end = max(end, done + tail[i])
        for d in dependents[i]:
            ready_at[d] = max(ready_at[d], done)
            pending[d] -= 1
            if not pending[d]:
                heapq.heappush(heap, (ready_at[d] + lead[d], d))
    return end


def _check_topology(topology: str) -> None:
    if topology not in TOPOLOGIES:
        raise ValueError(f"topology {topology!r}: use one of {', '.join(TOPOLOGIES)}")


def transfer_scheduled_s(schedule: Any, rate: float | None, compute_s: float = 0.0,
                         burst: float = 0.0, topology: str = "star",
                         unshaped: Iterable[str] = (),
                         overhead: float = FULL_FRAME_OVERHEAD) -> float:
    """The transfer term of the replay of ``schedule`` (``[[link, bytes, [waits for]],
    ...]``) on links of ``rate`` bytes/s, the compute spread evenly over the levels (see
    the module docstring)."""
    _check_topology(topology)
    order, dependents, level = _order(schedule)
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
    if none) to its being sent: the work on that path, which the even spread of
    ``transfer_scheduled_s`` has to guess; *hold* is how long it took with the limits
    lifted (RPC and copies), a floor on it shaped; *tail*, the time from its arrival to
    the end of the call. A missing time counts as no lead and no hold. All three are
    scaled by ``compute_s / call_s`` (the traced call gives the shape, the median the
    scale), so the replay with unlimited links gives back ``compute_s``.
    """
    _check_topology(topology)
    order, dependents, _level = _order(schedule)
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
    for i in order:
        before = max((got[j] for j in schedule[i][2]), default=0.0)
        out = before if sent[i] is None else max(before, sent[i])
        got[i] = out if arrived[i] is None else max(out, arrived[i])
        lead[i], hold[i] = (out - before) * scale, (got[i] - out) * scale
        tail[i] = max(0.0, call - got[i]) * scale
    end = _replay(schedule, dependents, rate, lead, hold, tail, burst, topology,
                  set(unshaped), overhead)
    return max(end, compute_s) - compute_s


def project(compute_s: float, comm: Mapping[str, Any], rate: float | None, rtt_s: float,
            topology: str = "star", unshaped: Iterable[str] = (),
            overhead: float = FULL_FRAME_OVERHEAD, burst: float = 0.0) -> Projection:
    """Projected latency of one prediction (see the module docstring).

    ``compute_s``: measured latency with unlimited links (median, seconds); ``comm``: the traffic
    of one prediction, ``{"links": {"a->b": {"bytes": int, "tensors": int}},
    "rounds": int}``; ``rate``: link rate in bytes/s (None: unlimited); ``rtt_s``:
    round-trip time in seconds; ``burst``: each link's token bucket in bytes (the
    replay only).
    """
    if not compute_s >= 0:
        raise ValueError(f"compute_s must be a measured time >= 0 s, got {compute_s!r}")
    if rate is not None and not rate > 0:
        raise ValueError(f"rate must be > 0 bytes/s or None (unlimited), got {rate!r}")
    if not rtt_s >= 0:
        raise ValueError(f"rtt_s must be >= 0 s, got {rtt_s!r}")
    if not overhead >= 1:
        raise ValueError(f"overhead multiplies payload into frame bytes: >= 1, got {overhead!r}")
    rounds = comm.get("rounds") if isinstance(comm, Mapping) else None
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 0:
        raise ValueError(f"comm['rounds'] must be an int >= 0, got {rounds!r}")
    loads = link_loads(comm, topology, unshaped)
    busiest = max(loads, key=lambda k: (loads[k], k)) if loads else None
    busiest_bytes = loads[busiest] if busiest else 0
    transfer = 0.0 if rate is None else busiest_bytes * overhead / rate
    latency = rounds * rtt_s
    sequential = None
    per_round = comm.get("round_links")
    if per_round is not None:
        peaks = [max(link_loads({"links": {k: {"bytes": n} for k, n in r.items()}},
                                topology, unshaped).values(), default=0) for r in per_round]
        sequential = 0.0 if rate is None else sum(peaks) * overhead / rate
    schedule = comm.get("schedule")
    scheduled = None if schedule is None else transfer_scheduled_s(
        schedule, rate, compute_s, burst, topology, unshaped, overhead)
    timing = comm.get("timing")
    timed = None if schedule is None or timing is None else transfer_timed_s(
        schedule, timing, rate, compute_s, burst, topology, unshaped, overhead)
    return Projection(
        total_s=compute_s + latency + transfer, compute_s=compute_s, latency_s=latency,
        transfer_s=transfer, rounds=rounds, rtt_s=rtt_s, rate_bytes_per_s=rate,
        busiest_link=busiest, busiest_link_bytes=busiest_bytes,
        total_bytes=sum(n for *_, n in _links(comm)), topology=topology,
        transfer_sequential_s=sequential, transfer_scheduled_s=scheduled,
        transfer_timed_s=timed,
    )


def _links(comm: Mapping[str, Any]) -> list[tuple[str, str, str, int]]:
    """(key, sender, receiver, bytes) of each link entry; clear errors for bad shapes."""
    links = comm.get("links") if isinstance(comm, Mapping) else None
    if not isinstance(links, Mapping):
        raise ValueError("comm must be a dict like {'links': {'server0->server1': "
                         "{'bytes': int, 'tensors': int}}, 'rounds': int}")
    out = []
    for key, entry in links.items():
        sender, sep, receiver = str(key).partition("->")
        nbytes = entry.get("bytes") if isinstance(entry, Mapping) else None
        if not sep or not sender or not receiver:
            raise ValueError(f"comm link {key!r}: name links 'sender->receiver'")
        if isinstance(nbytes, bool) or not isinstance(nbytes, int) or nbytes < 0:
            raise ValueError(f"comm link {key!r}: 'bytes' must be an int >= 0, got {nbytes!r}")
        out.append((str(key), sender.strip(), receiver.strip(), nbytes))
    return out
