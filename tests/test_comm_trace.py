"""The rendezvous trace (``harness.inference.comm_trace``) and the timed replay it feeds
(``harness.results.projection.transfer_timed_s``): plain text and numbers, no cluster."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.inference.comm_trace import LogMark, out_of_order, parse
from harness.results.projection import project, transfer_timed_s

PLAYERS = ("server0", "server1", "server2")
DEV = "/job:tfe/replica:0/task:{}/device:CPU:0"
DRIVER_DEV = "/job:localhost/replica:0/task:0/device:CPU:0"


def _line(when: float, message: str, src: str, dst: str, tensor: str) -> str:
    key = f"{src};1a2b3c;{dst};{tensor};0:0"
    return (f"I0000 00:00:{when:.6f}   4242 base_rendezvous_mgr.cc:163] {message} "
            f"0x7f00 {key}")


def test_parse_reads_sends_and_arrivals_of_players_and_driver():
    text = "\n".join([
        _line(100.010, "BaseRemoteRendezvous Send", DEV.format(0), DEV.format(1), "edge_7_a/b"),
        _line(100.002, "RemoteRendezvous Recv", DEV.format(0), DEV.format(1), "edge_7_a/b"),
        _line(100.030, "RemoteRendezvous Finished Remote Recv", DEV.format(0), DEV.format(1),
              "edge_7_a/b"),
        _line(100.001, "BaseRemoteRendezvous Send", DRIVER_DEV, DEV.format(2), "edge_1_args"),
        _line(100.050, "BaseRemoteRendezvous Send", DEV.format(9), DEV.format(1), "edge_9_x"),
        "W0000 00:00:100.060000  4242 other.cc:1] BaseRemoteRendezvous Send not ours",
        "I0000 00:00:100.070000  4242 base_rendezvous_mgr.cc:1] a line without a key",
    ])
    sent, arrived = parse(text, PLAYERS)
    assert sent == {("server0", "server1", "edge_7_a/b"): 100.010,
                    ("driver", "server2", "edge_1_args"): 100.001}
    assert arrived == {("server0", "server1", "edge_7_a/b"): 100.030}


def test_log_mark_reads_only_what_came_after(tmp_path):
    logs = [tmp_path / "server0.log", tmp_path / "server1.log"]
    old = _line(99.0, "BaseRemoteRendezvous Send", DEV.format(0), DEV.format(1), "edge_7_a")
    logs[0].write_text(old + "\n")
    logs[1].write_text("")
    mark = LogMark(logs)
    with open(logs[0], "a") as f:
        f.write(_line(100.004, "BaseRemoteRendezvous Send", DEV.format(0), DEV.format(1),
                      "edge_7_a") + "\n")
    with open(logs[1], "a") as f:
        f.write(_line(100.009, "RemoteRendezvous Finished", DEV.format(0), DEV.format(1),
                      "edge_7_a") + "\n")
    names = [("server0", "server1", "edge_7_a"), ("server1", "server2", "edge_8_b")]
    got = mark.times(names, PLAYERS, t0=100.0, t1=100.02)
    assert got["call_s"] == pytest.approx(0.02)
    assert got["sent"] == [pytest.approx(0.004), None]
    assert got["arrived"] == [pytest.approx(0.009), None]


CHAIN = [["server0->server1", 1_000_000, []], ["server1->server2", 500_000, [0]]]


def test_timed_replay_puts_the_measured_compute_on_each_path():
    """Traced (0.1 s): entry 0 sent at 0.02 s, arrived 0.03; entry 1 sent 0.05, arrived
    0.06. Leads 0.02 and 0.02, holds 0.01, tails 0.07 and 0.04; compute median 0.2 s
    doubles them. At 1 MB/s: entry 0 from 0.04 to 1.04 s, entry 1 from 1.08 to 1.58,
    the call ends 0.08 later: 1.66 s, a transfer term of 1.46 s."""
    timing = {"call_s": 0.1, "sent": [0.02, 0.05], "arrived": [0.03, 0.06]}
    got = transfer_timed_s(CHAIN, timing, 1e6, 0.2, overhead=1.0)
    assert got == pytest.approx(1.46)
    # unlimited links give back the compute: nothing added
    assert transfer_timed_s(CHAIN, timing, 1e15, 0.2, overhead=1.0) == pytest.approx(0, abs=1e-9)
    # an entry without times has no lead and no hold: it goes at once after entry 0
    missing = {"call_s": 0.1, "sent": [0.02, None], "arrived": [0.03, None]}
    assert transfer_timed_s(CHAIN, missing, 1e6, 0.2, overhead=1.0) == pytest.approx(1.48)
    # through project(): the timed total beside the others
    comm = {"links": {"server0->server1": {"bytes": 1_000_000},
                      "server1->server2": {"bytes": 500_000}}, "rounds": 2,
            "schedule": CHAIN, "timing": timing}
    p = project(0.2, comm, rate=1e6, rtt_s=0.001, overhead=1.0)
    assert p.transfer_timed_s == pytest.approx(1.46)
    assert p.as_dict()["total_timed_s"] == pytest.approx(0.2 + 0.002 + 1.46)
    assert project(0.2, {**comm, "timing": None}, 1e6, 0.0).transfer_timed_s is None


def test_out_of_order_finds_a_send_before_what_it_waits_for():
    timing = {"call_s": 0.1, "sent": [0.02, 0.05], "arrived": [0.03, 0.06]}
    assert out_of_order(CHAIN, timing) == (1, [])
    early = {"call_s": 0.1, "sent": [0.02, 0.025], "arrived": [0.03, 0.06]}
    assert out_of_order(CHAIN, early) == (1, [(1, 0)])
    assert out_of_order(CHAIN, {**early, "sent": [0.02, 0.0299]}) == (1, [])  # within 0.5 ms
    assert out_of_order(CHAIN, {**early, "arrived": [None, 0.06]}) == (0, [])


@pytest.mark.parametrize("timing", [
    {"call_s": 0.0, "sent": [0.0, 0.0], "arrived": [0.0, 0.0]},
    {"call_s": 0.1, "sent": [0.0], "arrived": [0.0, 0.0]},
    {"sent": [0.0, 0.0], "arrived": [0.0, 0.0]},
])
def test_timed_replay_rejects_timings_of_another_schedule(timing):
    with pytest.raises(ValueError, match="timing must be"):
        transfer_timed_s(CHAIN, timing, 1e6, 0.2)


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 8), data=st.data())
def test_timed_replay_on_unlimited_links_gives_back_the_compute(n, data):
    """Whatever the chain of waits and the traced times (within the call), replaying
    them on links without a limit adds nothing to the compute median."""
    schedule = []
    for i in range(n):
        waits = data.draw(st.lists(st.integers(0, i - 1), unique=True, max_size=2)) if i else []
        link = data.draw(st.sampled_from(["server0->server1", "server1->server2",
                                          "server2->server0", "driver->server0"]))
        schedule.append([link, data.draw(st.integers(0, 10**6)), waits])
    times = st.one_of(st.none(), st.floats(0, 0.1))
    timing = {"call_s": 0.1, "sent": data.draw(st.lists(times, min_size=n, max_size=n)),
              "arrived": data.draw(st.lists(times, min_size=n, max_size=n))}
    compute = data.draw(st.floats(0.001, 1.0))
    got = transfer_timed_s(schedule, timing, 1e18, compute, unshaped=["driver"])
    assert got == pytest.approx(0.0, abs=1e-9)
    assert transfer_timed_s(schedule, timing, 1e6, compute, unshaped=["driver"]) >= 0
