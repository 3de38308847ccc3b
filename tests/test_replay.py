"""The link model of ``harness.results.replay``: fewest bytes left first, token buckets,
and bounds any replay must respect. Plain numbers, no cluster."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.results.projection import link_loads
from harness.results.replay import _replay, order, transfer_scheduled_s

LONG_SHORT = [["server0->server1", 1_000_000, []], ["server2->server1", 10_000, []]]


def _run(schedule, lead, tail, rate=1e6, burst=0.0, hold=None):
    _topo, dependents, _level = order(schedule)
    n = len(schedule)
    return _replay(schedule, dependents, rate, lead, hold or [0.0] * n, tail, burst,
                   "star", {"driver"}, 1.0)


def test_a_short_transfer_passes_a_long_one_on_the_link_they_share():
    """1 MB from server0 and, 0.1 s later, 10 kB from server2, both to server1 at 1 MB/s:
    the short one takes server1's downlink at once (0.1 to 0.11 s) and its tail of 0.5 s
    ends at 0.61 s; the long one resumes and ends at 1.01 s. One at a time in the order
    they became ready, the short one would wait until 1.0 s and the call end at 1.51 s."""
    assert _run(LONG_SHORT, lead=[0.0, 0.1], tail=[0.0, 0.5]) == pytest.approx(1.01)
    # a transfer arrives no sooner than its hold after it was ready
    assert _run(LONG_SHORT, [0.0, 0.1], [0.0, 0.5], hold=[0.0, 0.6]) == pytest.approx(1.2)


def test_a_transfer_takes_what_its_other_link_has_left():
    """server0 -> server1 (100 kB) has fewer bytes than server0 -> server2 (300 kB) and
    goes first on server0's uplink; server2 -> server1 (200 kB) shares nothing with the
    300 kB but server1's downlink with the 100 kB: it waits for it (0.1 s), then runs to
    0.3 s; the 300 kB runs from 0.1 to 0.4 s."""
    schedule = [["server0->server1", 100_000, []], ["server0->server2", 300_000, []],
                ["server2->server1", 200_000, []]]
    assert _run(schedule, [0.0] * 3, [0.0] * 3) == pytest.approx(0.4)
    assert _run(schedule, [0.0] * 3, [0.0, 0.0, 0.5]) == pytest.approx(0.8)


def test_token_buckets_let_a_burst_through_and_refill_while_idle():
    """A 100 kB bucket sends 100 kB of a 300 kB transfer at once (0.2 s at 1 MB/s); after
    0.1 s idle it holds 100 kB again, so the next 100 kB transfer takes no time; after
    0.05 s, 50 kB, and the rest takes 0.05 s. A busy link does not refill."""
    chain = [["server0->server1", 300_000, []], ["server0->server1", 100_000, [0]]]
    assert _run(chain, [0.0, 0.0], [0.0, 0.0], burst=100_000) == pytest.approx(0.3)
    assert _run(chain, [0.0, 0.1], [0.0, 0.0], burst=100_000) == pytest.approx(0.3)
    assert _run(chain, [0.0, 0.05], [0.0, 0.0], burst=100_000) == pytest.approx(0.3)


PARTIES = ["server0", "server1", "server2", "driver"]


@settings(max_examples=80, deadline=None)
@given(n=st.integers(1, 12), data=st.data())
def test_replay_lies_between_the_busiest_link_and_all_bytes_one_after_another(n, data):
    """With no compute, no link can carry its bytes faster than its rate, and the model
    never leaves every link idle while a transfer is ready: the replay takes at least the
    busiest link's bytes / rate and at most all bytes / rate."""
    schedule = []
    for i in range(n):
        waits = data.draw(st.lists(st.integers(0, i - 1), unique=True, max_size=3)) if i else []
        sender, receiver = data.draw(st.permutations(PARTIES))[:2]
        schedule.append([f"{sender}->{receiver}", data.draw(st.integers(0, 10**6)), waits])
    comm = {"links": {}}
    for link, nbytes, _ in schedule:
        comm["links"].setdefault(link, {"bytes": 0})["bytes"] += nbytes
    rate = 1e6
    got = transfer_scheduled_s(schedule, rate, unshaped=["driver"], overhead=1.0)
    busiest = max(link_loads(comm, unshaped=["driver"]).values(), default=0)
    total = sum(nbytes for _, nbytes, _ in schedule)
    assert busiest / rate - 1e-9 <= got <= total / rate + 1e-9
