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
bytes, the transfers it waits for), ``harness.results.replay`` replays them instead of
assumptions 1 and 2: ``transfer_scheduled_s`` with the compute spread evenly over the
call, ``transfer_timed_s`` (where one call was traced with the links' limits lifted,
``comm["timing"]``) with each transfer's own measured compute. Both share one link
model; see that module.

Plain numbers and dicts in, plain numbers out; no TensorFlow.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Iterable, Mapping

from harness.results.replay import (  # noqa: F401 (transfer_*: part of this module's API)
    FULL_FRAME_OVERHEAD, check_topology, link_names, transfer_scheduled_s,
    transfer_timed_s)

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
    check_topology(topology)
    skip = set(unshaped)
    loads: dict[str, int] = {}
    for _key, sender, receiver, nbytes in _links(comm):
        for name in link_names(sender, receiver, topology, skip):
            loads[name] = loads.get(name, 0) + nbytes
    return loads


def wire_ratios(comm: Mapping[str, Any], wire: Mapping[str, int],
                unshaped: Iterable[str] = (),
                resent: Mapping[str, int] | None = None) -> dict[str, dict[str, Any]]:
    """Counted payload next to what each star link's rate limiter let through, per call.

    ``comm``: the counted traffic of one call (as ``link_loads``); ``wire``: frame bytes
    per link name (``"<party> up"``/``"<party> down"``) over one call, e.g. the
    difference of two ``ShapedNetwork.link_bytes()`` readings around it; ``resent``:
    payload bytes TCP retransmitted per link over the same call
    (``ShapedNetwork.resent_bytes()``, per sender's uplink). Per link: ``counted``
    payload, ``wire`` bytes, ``resent`` payload, ``ratio`` = wire / counted and
    ``ratio_less_resent`` = (wire - resent x ``FULL_FRAME_OVERHEAD``) / counted (None
    where nothing was counted). The ratio is the overhead that turns payload into
    frames: 1514/1448 for full-size TCP segments, plus the ACKs of what the party moves
    the other way, RPC headers and small control messages. A retransmitted segment
    crossed the uplink twice if it was lost after it (or resent needlessly), once if its
    own uplink's queue dropped it, so the two ratios bound the overhead. A ratio below 1
    means the links carried less than we counted; far above the overhead, that traffic
    went uncounted.
    """
    counted = link_loads(comm, "star", unshaped)
    resent = resent or {}
    out = {}
    for name in sorted(set(counted) | set(wire)):
        c, w, r = counted.get(name, 0), wire.get(name), max(0, resent.get(name, 0))
        bad = not c or w is None
        out[name] = {"counted": c, "wire": w, "resent": r,
                     "ratio": None if bad else w / c,
                     "ratio_less_resent": None if bad else (w - r * FULL_FRAME_OVERHEAD) / c}
    return out


def checked_ratios(wire: Mapping[str, Mapping[str, Any]]) -> dict[str, float]:
    """The wire / counted ratios of ``wire_ratios`` held to ``WIRE_RATIO``: links with at
    least ``WIRE_CHECKED_BYTES`` counted and a reading."""
    return {k: v["ratio"] for k, v in wire.items()
            if v.get("ratio") is not None and v.get("counted", 0) >= WIRE_CHECKED_BYTES}


def unexplained(wire: Mapping[str, Mapping[str, Any]]) -> dict[str, Mapping[str, Any]]:
    """The links of ``checked_ratios`` whose reading the count cannot explain: even with
    every retransmitted byte counted once (``ratio_less_resent``) more than
    ``WIRE_RATIO`` allows, or even with all of them twice (``ratio``) less."""
    low, high = WIRE_RATIO
    return {k: wire[k] for k, ratio in checked_ratios(wire).items()
            if ratio < low or wire[k].get("ratio_less_resent", ratio) > high}


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
