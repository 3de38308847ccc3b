"""Shaped networks (issue 12): ``--network`` profiles, player namespaces, tc shaping,
cleanup on every exit path, and a cluster on a shaped network.

Namespace tests need root (or uid 0 of a user namespace) and iproute2; they skip
with the reason ``ShapedNetwork.available()`` gives otherwise.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.net import netns
from harness.net.netprofile import LAN, LOOPBACK, WAN, parse_network, parse_networks
from harness.net.shaping import ShapedNetwork, bucket, netem_support, qdiscs
from harness.results.projection import (
    WIRE_RATIO, link_loads, project, transfer_scheduled_s, unexplained, wire_ratios)

ROOT = Path(__file__).resolve().parent.parent
ENV = dict(os.environ, PYTHONPATH=str(ROOT))
PLAYERS = ("server0", "server1", "server2", "prediction-client")


# -- profiles (no privileges needed) --------------------------------------------------
@pytest.mark.parametrize("text, name, rate, rtt", [
    ("loopback", "loopback", None, 0.0),
    ("LAN", "lan", 625e6, 0.22e-3),             # SecureNN (PoPETs 2019): 625 MB/s, 0.22 ms
    ("wan", "wan", 40e6, 58e-3),                # 40 MB/s, 58 ms
    ("100mbit/40ms", "100mbit/40ms", 12.5e6, 0.04),
    ("1gbit/0.5ms", "1gbit/0.5ms", 125e6, 0.5e-3),
    ("100mbps/1s", "100mbps/1s", 100e6, 1.0),   # tc: mbps is megaBYTES per second
    ("8bit/250us", "8bit/250us", 1.0, 250e-6),
    ("1Kibit/.5MS", "1kibit/0.5ms", 128.0, 0.5e-3),
    (" 2.50gbit/10msec ", "2.5gbit/10msec", 312.5e6, 0.01),
])
def test_profiles_parse(text, name, rate, rtt):
    profile = parse_network(text)
    assert profile.name == name
    assert profile.rate == pytest.approx(rate) if rate else profile.rate is None
    assert profile.rtt == pytest.approx(rtt)
    assert profile.shaped == (name != "loopback")
    assert parse_network(profile.name) == profile  # names are parseable and stable


@pytest.mark.parametrize("text, detail", [
    ("100mbps/4x", "unknown time unit 'x'"),
    ("100zbit/4ms", "unknown rate unit 'zbit'"),
    ("100/40ms", ""),                 # a rate needs its unit
    ("100mbit/40", ""),               # and so does the RTT
    ("100mbit", ""),
    ("0mbit/1ms", "at least 8bit"),
    ("1gbit/90s", "60 s"),
    ("-1mbit/1ms", ""),
    ("lan/1ms", ""),
    ("", ""),
])
def test_bad_profiles_say_what_is_accepted(text, detail):
    with pytest.raises(argparse.ArgumentTypeError) as err:
        parse_network(text)
    message = str(err.value)
    assert message.startswith(f"--network: {text!r} is not loopback, lan, wan or RATE/RTT "
                              f"like 100mbit/40ms"), message
    assert detail in message and "\n" not in message


def test_profile_lists():
    assert parse_networks("lan,wan,100mbit/40ms") == (LAN, WAN, parse_network("100mbit/40ms"))
    assert parse_networks("lan, LAN ,loopback") == (LAN, LOOPBACK)
    for bad in ("", "lan,,wan", "lan,moon"):
        with pytest.raises(argparse.ArgumentTypeError, match="^--network: "):
            parse_networks(bad)


def test_argparse_reports_one_line(capsys):
    parser = argparse.ArgumentParser(prog="harness")
    parser.add_argument("--network", type=parse_networks)
    assert parser.parse_args(["--network", "wan"]).network == (WAN,)
    with pytest.raises(SystemExit):
        parser.parse_args(["--network", "100mbps/4x"])
    err = capsys.readouterr().err.strip().splitlines()
    assert "--network: '100mbps/4x' is not loopback, lan, wan or RATE/RTT" in err[-1]


def test_tbf_bucket_is_sane():
    for profile in (LAN, WAN, parse_network("100mbit/1ms"), parse_network("64kbit/1ms")):
        burst, limit = bucket(profile.rate)
        assert burst >= 32 * 1024 and limit > burst
        assert limit - burst == pytest.approx(profile.rate * 0.1, abs=1)


def test_interface_names_fit_linux_limit_for_any_pid():
    hosts = netns.Hosts(PLAYERS)
    hosts.tag = f"{netns.PREFIX}4194304-z"  # the largest pid Linux hands out, last counter
    names = [hosts.bridge] + [hosts.veth(p, end) for p in PLAYERS for end in ("outer", "inner")]
    assert max(map(len, names)) <= netns.IFNAMSIZ
    assert netns.ours(names + ["eth0", "tfebr12", "tfn12x"]) == names
    with pytest.raises(ValueError, match="distinct names"):
        netns.Hosts(["server0", "server0"])
    with pytest.raises(ValueError, match="distinct names"):
        netns.Hosts(["server 0"])


# -- namespaces ----------------------------------------------------------------------
needs_netns = pytest.mark.skipif(not ShapedNetwork.available()[0],
                                 reason=f"shaped networks: {ShapedNetwork.available()[1]}")


def _ours(tag: str) -> dict[str, list[str]]:
    """Everything with ``tag`` that exists now: namespaces, links, qdiscs."""
    qdisc_lines = subprocess.run(["tc", "qdisc", "show"], capture_output=True,
                                 text=True).stdout.splitlines()
    return {"netns": netns.ours(netns.namespaces(), tag),
            "links": netns.ours(netns.links(), tag),
            "qdiscs": [q for q in qdisc_lines if f" dev {tag}" in q]}


def _nothing_left(tag: str) -> bool:
    assert tag.startswith(netns.PREFIX)
    return not any(_ours(tag).values())


def test_unprivileged_user_gets_a_reason():
    if os.geteuid() != 0:
        ok, reason = ShapedNetwork.available()
        assert not ok and "root" in reason
        return
    # as root: ask a nobody subprocess (no user namespace) what it can do
    if shutil.which("setpriv") is None:
        pytest.skip("needs setpriv (Debian package util-linux) to drop privileges")
    for path in (ROOT, Path(sys.executable).resolve()):
        closed = [p for p in (path, *path.parents) if p.is_dir() and not os.stat(p).st_mode & 0o001]
        if closed:
            pytest.skip(f"user nobody cannot reach {closed[0]} (mode "
                        f"{oct(os.stat(closed[0]).st_mode & 0o777)}): the checkout or Python is private")
    code = ("from harness.net.shaping import ShapedNetwork; "
            "print(repr(ShapedNetwork.available()))")
    out = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                          sys.executable, "-c", code], cwd="/",
                         env={k: v for k, v in ENV.items() if k != "LD_PRELOAD"},
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-1000:]
    ok, reason = eval(out.stdout.strip())  # noqa: S307  (our own repr of a tuple)
    assert ok is False and "root" in reason and "unshare" in reason


@pytest.mark.netns
@needs_netns
def test_players_get_namespaces_addresses_and_shaped_links():
    net = ShapedNetwork(parse_network("100mbit/40ms"), PLAYERS)
    with net:
        tag = net.hosts.tag
        found = _ours(tag)
        assert sorted(found["netns"]) == sorted(f"{tag}-{p}" for p in PLAYERS)
        assert f"{tag}b" in found["links"]
        assert {net.hosts.veth(p, "outer") for p in PLAYERS} <= set(found["links"])
        for player in PLAYERS:
            ns = net.namespace(player)
            addrs = subprocess.run(["ip", "-n", ns, "-4", "-o", "addr"], capture_output=True,
                                   text=True).stdout
            assert f"{net.address(player)}/24" in addrs
            for dev, where in ((net.hosts.veth(player, "inner"), ns),
                               (net.hosts.veth(player, "outer"), None)):
                assert "tbf" in qdiscs(dev, where) and "rate 100Mbit" in qdiscs(dev, where)
        assert len({net.address(p) for p in PLAYERS} | {net.driver_address}) == 5
        info = net.describe()
        assert info["network"] == "100mbit/40ms" and info["rate_bytes_per_s"] == 12.5e6
        assert info["delay"] in ("emulated", "projected") and info["qdisc"].startswith("tbf")
        ends = [(net.hosts.veth(p, e), net.namespace(p) if e == "inner" else None)
                for p in PLAYERS for e in ("inner", "outer")]
        before = {dev: qdiscs(dev, where) for dev, where in ends}
        net.lift()  # the compute reference of bench/test_network.py: same qdiscs, no limit
        lifted = [qdiscs(dev, where) for dev, where in ends]
        assert net.lifted and all("tbf" in q and "rate 100Gbit" in q for q in lifted)
        net.lift()  # idempotent
        net.restore()
        assert not net.lifted
        assert {dev: qdiscs(dev, where) for dev, where in ends} == before
    assert _nothing_left(tag), _ours(tag)


@pytest.mark.netns
@needs_netns
def test_exception_inside_removes_everything():
    net = ShapedNetwork(parse_network("1gbit/1ms"), PLAYERS)
    with pytest.raises(ZeroDivisionError):
        with net:
            tag = net.hosts.tag
            # a process left running in a namespace must not keep anything alive
            sleeper = subprocess.Popen(net.exec_prefix("server1") + ["sleep", "600"],
                                       start_new_session=True)
            assert _ours(tag)["netns"]
            1 / 0
    assert sleeper.wait(timeout=10) == -signal.SIGTERM  # stopped by the network's removal
    assert _nothing_left(tag), _ours(tag)


_CREATOR = """
import signal, subprocess, sys, time
# interruptible whatever launched the tests: a shell's background job (``&``, nohup)
# passes SIGINT on ignored, and Python then leaves it so
signal.signal(signal.SIGINT, signal.default_int_handler)
from harness.net.netprofile import parse_network
from harness.net.shaping import ShapedNetwork
net = ShapedNetwork(parse_network("100mbit/40ms"), sys.argv[1:]).start()
subprocess.Popen(net.exec_prefix(sys.argv[1]) + ["sleep", "600"], start_new_session=True)
print(net.hosts.tag, flush=True)
with net:
    time.sleep(600)
"""


def _start_creator() -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([sys.executable, "-c", _CREATOR, *PLAYERS], env=ENV,
                            stdout=subprocess.PIPE, text=True)
    tag = proc.stdout.readline().strip()
    assert tag.startswith(netns.PREFIX), f"creator did not start (exit {proc.poll()})"
    assert len(_ours(tag)["netns"]) == len(PLAYERS)
    return proc, tag


@pytest.mark.netns
@needs_netns
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signalled_creator_removes_everything(sig):
    proc, tag = _start_creator()
    try:
        proc.send_signal(sig)
        proc.wait(timeout=30)
    finally:
        proc.kill()
        proc.stdout.close()
    assert _nothing_left(tag), _ours(tag)


def _reaper_of(pid: int) -> list[int]:
    import psutil  # noqa: PLC0415

    return [p.pid for p in psutil.process_iter(["cmdline"])
            if (p.info["cmdline"] or [])[1:4] == ["-m", "harness.net.reaper", str(pid)]]


@pytest.mark.netns
@needs_netns
def test_reaper_removes_everything_of_a_killed_creator():
    proc, tag = _start_creator()
    sleepers = netns.processes_in(f"{tag}-{PLAYERS[0]}")
    reapers = _reaper_of(proc.pid)
    assert sleepers and len(reapers) == 1
    proc.kill()  # SIGKILL: the creator itself can clean nothing up
    proc.wait()
    proc.stdout.close()

    def alive() -> list[int]:
        return [p for p in sleepers + reapers if netns.creator_alive(p)]

    deadline = time.monotonic() + 30
    while (alive() or not _nothing_left(tag)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _nothing_left(tag), _ours(tag)  # no other start needed
    assert not alive()  # the sleeper in a namespace, and the reaper itself


@pytest.mark.netns
@needs_netns
def test_next_start_sweeps_what_a_killed_creator_left():
    proc, tag = _start_creator()
    sleeper_ns = f"{tag}-{PLAYERS[0]}"
    sleepers = netns.processes_in(sleeper_ns)
    assert sleepers
    for pid in _reaper_of(proc.pid):  # its reaper killed too (kill -9 of the session)
        os.kill(pid, signal.SIGKILL)
    proc.kill()
    proc.wait()
    proc.stdout.close()
    assert _ours(tag)["netns"] and _ours(tag)["qdiscs"]  # SIGKILL: nothing could clean up
    with ShapedNetwork(LOOPBACK, PLAYERS[:1]) as other:  # the next start sweeps
        assert other.hosts.tag != tag
    assert _nothing_left(tag), _ours(tag)
    deadline = time.monotonic() + 10
    while any(map(netns.creator_alive, sleepers)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(map(netns.creator_alive, sleepers))  # the sweep killed them


_TPUT = """
import socket, sys, time
mode, host, size = sys.argv[1], sys.argv[2], int(sys.argv[3])
if mode == "recv":
    srv = socket.create_server((host, 0))
    print(srv.getsockname()[1], flush=True)
    conn, _ = srv.accept()
    got = 0
    while got < size:
        chunk = conn.recv(1 << 20)
        if not chunk:
            break
        got += len(chunk)
    conn.sendall(b"k" if got == size else b"?")
else:
    conn = socket.create_connection((host, int(sys.argv[4])))
    start = time.perf_counter()
    conn.sendall(b"x" * size)
    assert conn.recv(1) == b"k"
    print(time.perf_counter() - start)
"""


@pytest.mark.netns
@needs_netns
@pytest.mark.parametrize("sender", ["server0", "driver"])
def test_tbf_limits_the_link(sender):
    """4 MB at 100mbit: 4e6 * 1514/1448 frame bytes / 12.5e6 B/s = ~0.334 s (unshaped
    veths move it in a few ms). Generous bounds: the CPU is shared."""
    size = 4_000_000
    expected = size * 1514 / 1448 / 12.5e6
    with ShapedNetwork(parse_network("100mbit/40ms"), PLAYERS) as net:
        before, resent_before = net.link_bytes(), net.resent_bytes()
        dest = net.address("server1")
        recv = subprocess.Popen(net.exec_prefix("server1") + [
            sys.executable, "-c", _TPUT, "recv", dest, str(size)],
            stdout=subprocess.PIPE, text=True)
        try:
            port = recv.stdout.readline().strip()
            prefix = [] if sender == "driver" else net.exec_prefix(sender)
            send = subprocess.run(prefix + [sys.executable, "-c", _TPUT, "send", dest,
                                            str(size), port],
                                  capture_output=True, text=True, timeout=60)
            assert send.returncode == 0, send.stderr[-1000:]
            seconds = float(send.stdout)
            wire = {k: n - before[k] for k, n in net.link_bytes().items()}
            resent = {k: n - resent_before[k] for k, n in net.resent_bytes().items()}
        finally:
            recv.kill()
            recv.wait()
            recv.stdout.close()
    print(f"4 MB at 100mbit from {sender}: {seconds:.3f} s (expected ~{expected:.3f} s); "
          f"tbf counters: {wire}")
    assert 0.8 * expected < seconds < 3 * expected
    # the receiver's downlink (and a player sender's uplink) counted the frames of the
    # 4 MB: payload x 1514/1448 and a few handshake packets; the ACKs go back up
    # server1's link (and down a player sender's), the other links carry next to nothing
    moved = ["server1 down"] + ([] if sender == "driver" else [f"{sender} up"])
    acks = ["server1 up"] + ([] if sender == "driver" else [f"{sender} down"])
    for link in moved:
        assert size * 1514 / 1448 <= wire[link] < size * 1.1, (link, wire)
    for link in acks:
        assert 0 < wire[link] < size * 0.05, (link, wire)
    assert all(n < 20_000 for k, n in wire.items() if k not in moved + acks), wire
    assert set(wire) == {f"{p} {d}" for p in PLAYERS for d in ("up", "down")}
    # each player's TCP retransmissions (ss, in its namespace): a few segments at most
    assert set(resent) == {f"{p} up" for p in PLAYERS}
    assert all(0 <= n < size * 0.05 for n in resent.values()), resent


@pytest.mark.netns
@needs_netns
def test_netem_detection_is_honest():
    """Our detection agrees with a direct attempt in a scratch namespace, and a shaped
    network with a round trip says whether its delay is emulated or projected."""
    direct = subprocess.run(["unshare", "-n", "tc", "qdisc", "add", "dev", "lo", "root",
                             "netem", "delay", "1ms"], capture_output=True, text=True)
    has_netem, reason = netem_support()
    assert has_netem == (direct.returncode == 0), (reason, direct.stderr)
    assert has_netem or "sch_netem" in reason
    with ShapedNetwork(parse_network("1gbit/2ms"), PLAYERS[:2]) as net:
        info = net.describe()
        inner = qdiscs(net.hosts.veth("server0", "inner"), net.namespace("server0"))
    if has_netem:
        assert info["delay"] == "emulated" and "netem" in inner and info["qdisc"] == "tbf+netem"
    else:
        assert info["delay"] == "projected" and "netem" not in inner
        assert info["delay_note"] == "delay not emulated (no sch_netem): projected"


# -- projection (no privileges) ------------------------------------------------------
COMM = {"links": {"server0->server1": {"bytes": 1_000_000, "tensors": 10},
                  "server1->server0": {"bytes": 500_000, "tensors": 5},
                  "server2->server0": {"bytes": 700_000, "tensors": 3},
                  "driver->server0": {"bytes": 100, "tensors": 1}},
        "rounds": 30}


def test_projection_adds_compute_rounds_and_busiest_link():
    p = project(0.04, COMM, rate=12.5e6, rtt_s=0.04, overhead=1.0)
    # star: server0's downlink carries 500k + 700k + 100 bytes, more than any other
    assert p.busiest_link == "server0 down" and p.busiest_link_bytes == 1_200_100
    assert p.latency_s == pytest.approx(30 * 0.04)
    assert p.transfer_s == pytest.approx(1_200_100 / 12.5e6)
    assert p.total_s == pytest.approx(0.04 + 1.2 + 1_200_100 / 12.5e6)
    assert p.total_bytes == 2_200_100 and p.latency_lower_s == pytest.approx(0.6)
    mesh = project(0.04, COMM, rate=12.5e6, rtt_s=0.04, topology="mesh", unshaped=["driver"])
    assert mesh.busiest_link == "server0->server1"
    assert mesh.transfer_s == pytest.approx(1e6 * 1514 / 1448 / 12.5e6)  # frame overhead
    assert link_loads(COMM, unshaped=["driver"]).get("driver up") is None
    unlimited = project(0.05, COMM, rate=None, rtt_s=0.0)
    assert unlimited.total_s == 0.05 and unlimited.as_dict()["transfer_s"] == 0.0
    assert p.transfer_sequential_s is None and p.total_sequential_s is None


def test_projection_of_rounds_one_after_another():
    """With per-round traffic: each round lasts as long as its own busiest link needs.
    Round 1: server0 sends 300k to server1 and 200k to server2 (server0 up: 500k);
    round 2: server1 sends 700k to server0 (server1 up / server0 down: 700k)."""
    comm = {"links": {"server0->server1": {"bytes": 300_000}, "server0->server2": {"bytes": 200_000},
                      "server1->server0": {"bytes": 700_000}}, "rounds": 2,
            "round_links": [{"server0->server1": 300_000, "server0->server2": 200_000},
                            {"server1->server0": 700_000}]}
    p = project(0.01, comm, rate=1e6, rtt_s=0.0, overhead=1.0)
    assert p.transfer_s == pytest.approx(0.7)  # busiest link over the whole call
    assert p.transfer_sequential_s == pytest.approx(0.5 + 0.7)
    assert p.total_sequential_s == pytest.approx(0.01 + 1.2)
    assert p.as_dict()["total_sequential_s"] == pytest.approx(1.21)


def test_projection_replays_the_transfers_on_their_links():
    """Round 1: server0 sends 300k to server1 and 200k to server2, both on server0's
    uplink: the one with fewer bytes first (to 0.2 s), then the 300k. server2 -> server1
    (100k) waits for the 200k; from 0.2 s it has fewer bytes left than the 300k on
    server1's downlink and takes it (to 0.3 s), so the 300k ends at 0.6 s; server1 ->
    server0 (700k) waits for the 300k: 0.6 + 0.7 = 1.3 s, more than the rounds one after
    another (1.2 s): serving the shorter transfers first delays the one the 700k needs."""
    comm = {"links": {"server0->server1": {"bytes": 300_000},
                      "server0->server2": {"bytes": 200_000},
                      "server2->server1": {"bytes": 100_000},
                      "server1->server0": {"bytes": 700_000}}, "rounds": 2,
            "round_links": [{"server0->server1": 300_000, "server0->server2": 200_000},
                            {"server1->server0": 700_000, "server2->server1": 100_000}],
            "schedule": [["server0->server1", 300_000, []], ["server0->server2", 200_000, []],
                         ["server2->server1", 100_000, [1]], ["server1->server0", 700_000, [0]]]}
    p = project(0.01, comm, rate=1e6, rtt_s=0.0, overhead=1.0)
    assert p.transfer_s == pytest.approx(0.7) and p.transfer_sequential_s == pytest.approx(1.2)
    assert p.transfer_scheduled_s == pytest.approx(1.3)
    assert p.as_dict()["total_scheduled_s"] == pytest.approx(1.31)
    # the driver has no link of its own: in a star its peer's link carries what it
    # sends (0.1 s on server0's downlink); in a mesh its pairs take no time
    driver = [["driver->server0", 100_000, []], ["server0->server1", 300_000, [0]]]
    assert transfer_scheduled_s(driver, 1e6, unshaped=["driver"],
                                overhead=1.0) == pytest.approx(0.4)
    assert transfer_scheduled_s(driver, 1e6, topology="mesh", unshaped=["driver"],
                                overhead=1.0) == pytest.approx(0.3)
    # a token bucket of 100k lets that much through at once; 0.9 s of compute spread
    # over the two levels (0.3 s before each, 0.3 s after) refills it before the second
    assert transfer_scheduled_s(driver, 1e6, 0.0, 100_000, topology="mesh", unshaped=["driver"],
                                overhead=1.0) == pytest.approx(0.2)
    assert transfer_scheduled_s(driver, 1e6, 0.9, 100_000, unshaped=["driver"],
                                overhead=1.0) == pytest.approx(0.2)
    assert transfer_scheduled_s(comm["schedule"], None) == 0.0
    with pytest.raises(ValueError, match="cycle"):
        transfer_scheduled_s([["a->b", 1, [1]], ["b->a", 1, [0]]], 1e6)


def test_wire_ratios_put_counted_payload_beside_the_tbf_counters():
    """server0 sends 300k to server1 and the driver 100k to server0: in a star, server0's
    uplink, server1's downlink and server0's downlink carry them; a link we counted
    nothing for keeps its wire bytes and no ratio, and a link without a reading no ratio."""
    comm = {"links": {"server0->server1": {"bytes": 300_000},
                      "driver->server0": {"bytes": 100_000}}, "rounds": 1}
    wire = {"server0 up": 314_000, "server1 down": 320_000, "server0 down": 104_600,
            "server1 up": 9_000}
    got = wire_ratios(comm, wire, unshaped=["driver"])
    assert got["server0 up"] == {"counted": 300_000, "wire": 314_000, "resent": 0,
                                 "ratio": pytest.approx(314 / 300),
                                 "ratio_less_resent": pytest.approx(314 / 300)}
    assert got["server0 down"]["ratio"] == pytest.approx(1.046)
    assert got["server1 up"] == {"counted": 0, "wire": 9_000, "resent": 0, "ratio": None,
                                 "ratio_less_resent": None}
    # a retransmitted segment may have crossed the sender's uplink twice: the two ratios
    # bound the overhead
    again = wire_ratios(comm, {**wire, "server0 up": 314_000 + 1514 * 50},
                        unshaped=["driver"], resent={"server0 up": 1448 * 50})
    assert again["server0 up"]["resent"] == 72_400
    assert again["server0 up"]["ratio_less_resent"] == pytest.approx(314 / 300)
    assert again["server0 up"]["ratio"] == pytest.approx((314_000 + 75_700) / 300_000)
    assert set(got) == {"server0 up", "server0 down", "server1 up", "server1 down"}
    assert wire_ratios(comm, {}, unshaped=["driver"])["server1 down"]["ratio"] is None
    assert WIRE_RATIO[0] <= 1514 / 1448 <= WIRE_RATIO[1]


def test_unexplained_allows_for_retransmissions_and_nothing_else():
    """A link with 1 MB counted must read 1.0-1.25 of it on the wire; what TCP resent
    may have crossed it once or twice, so a reading is explained if any count of those
    bytes between once and twice puts it in the band."""
    comm = {"links": {"server0->server1": {"bytes": 1_000_000}}, "rounds": 1}

    def off(wire: int, resent: int = 0) -> set[str]:
        got = wire_ratios(comm, {"server0 up": wire, "server1 down": 1_050_000},
                          resent={"server0 up": resent})
        return set(unexplained(got))

    assert off(1_050_000) == set()
    assert off(1_300_000) == {"server0 up"}  # uncounted traffic
    assert off(1_300_000, resent=100_000) == set()  # 1.195 without the resent frames
    assert off(1_600_000, resent=100_000) == {"server0 up"}  # 1.495 even so
    assert off(950_000) == {"server0 up"}  # less than we counted
    assert off(1_100_000, resent=300_000) == set()  # resent once: 1.10; twice: 0.79


@pytest.mark.parametrize("comm, message", [
    ({"links": {}}, "rounds"),
    ({"links": {"server0": {"bytes": 1}}, "rounds": 1}, "sender->receiver"),
    ({"links": {"a->b": {"bytes": 1.5}}, "rounds": 1}, "'bytes' must be an int"),
    ({"links": [], "rounds": 1}, "comm must be a dict like"),
])
def test_projection_rejects_bad_traffic(comm, message):
    with pytest.raises(ValueError, match=message):
        project(0.1, comm, rate=1e6, rtt_s=0.01)
    with pytest.raises(ValueError, match="topology"):
        project(0.1, COMM, rate=1e6, rtt_s=0.01, topology="ring")


# -- a cluster on a shaped network ---------------------------------------------------
_NET_DRIVER = """
import json, subprocess, sys
from harness.tfe import activate
activate()
from harness.inference.evaluate import run
from harness.net.cluster import Cluster
from harness.net.netprofile import parse_network
with Cluster(network=parse_network(sys.argv[1])) as cluster:
    net = cluster.shaped
    print(net.hosts.tag, flush=True)
    listening = {w.name: subprocess.run(net.exec_prefix(w.name) + ["ss", "-ltnH"],
                                        capture_output=True, text=True).stdout
                 for w in cluster.managed}
    summary = run("securenn", "cluster", batch=1, images=int(sys.argv[2]),
                  cluster=cluster).summary()
    print(json.dumps({"summary": summary, "hostmap": cluster.hostmap, "listening": listening,
                      "network": net.describe(), "driver": cluster.driver_host()}), flush=True)
"""


@pytest.mark.cluster
@pytest.mark.netns
@pytest.mark.slow
@needs_netns
def test_securenn_prediction_on_a_shaped_network():
    proc = subprocess.Popen(
        [sys.executable, "-m", "harness.net.bind", "127.0.0.1", "--", sys.executable, "-c",
         _NET_DRIVER, "1gbit/1ms", "4"],
        env=dict(ENV, TF_CPP_MIN_LOG_LEVEL="2"), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=600)
    finally:
        proc.kill()
    assert proc.returncode == 0, err[-3000:]
    tag, result = out.strip().splitlines()[-2:]
    result = json.loads(result)
    assert result["summary"]["argmax_agreement"] == 1.0, result["summary"]
    assert result["summary"]["images"] == 4
    net = result["network"]
    assert net["network"] == "1gbit/1ms" and net["qdisc"].startswith("tbf")
    assert net["delay"] in ("emulated", "projected")
    assert result["driver"] == net["driver_address"]
    for player, address in result["hostmap"].items():
        host, port = address.rsplit(":", 1)
        assert host == net["addresses"][player] != "127.0.0.1"
        # the worker listens on its namespace's address only, never on a wildcard
        sockets = [line.split()[3].replace("[::ffff:", "").replace("]", "")
                   for line in result["listening"][player].splitlines()]
        assert sockets == [address], (player, result["listening"][player])
    print(f"SecureNN batch 1 on {net['network']} ({net['delay']} delay): median "
          f"{result['summary']['latency_ms_median']:.1f} ms, argmax agreement "
          f"{result['summary']['argmax_agreement']}")
    assert _nothing_left(tag), _ours(tag)
