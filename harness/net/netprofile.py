"""Network profiles: what ``--network`` means.

A profile is a link rate and a round-trip time that every player's link gets when
a cluster runs on a shaped network (``harness.net.shaping``):

- ``loopback``: no shaping at all (players on 127.0.0.1, the default);
- ``lan`` and ``wan``: the settings of the SecureNN paper (Wagh, Gupta and
  Chandran, "SecureNN: 3-Party Secure Computation for Neural Network Training",
  PoPETs 2019, section on the experimental setup): LAN 625 MB/s with 0.22 ms
  ping, WAN 40 MB/s with 58 ms ping;
- ``RATE/RTT``, e.g. ``100mbit/40ms`` or ``1gbit/0.5ms``.

Rates use tc's units and convention (tc(8), "RATES"): ``bit``, ``kbit``,
``mbit``, ``gbit``, ``tbit`` are bits per second; ``bps``, ``kbps``, ``mbps``,
``gbps``, ``tbps`` are *bytes* per second (so ``mbps`` is megabytes/s, not
megabits/s); ``kibit``/``kibps`` and the like are binary (1024) multiples; case
does not matter. Times: ``s``, ``ms``, ``us`` (also ``sec``, ``msec``, ``usec``).
A unit is required on both parts.

No TensorFlow here: the module is imported by argument parsers.
"""
from __future__ import annotations

import argparse
import re
from dataclasses import dataclass

# tc's rate suffixes in bits per second (iproute2 lib/utils.c), SI and IEC.
_RATE_BITS = {"bit": 1, "bps": 8}
for _i, (_si, _iec) in enumerate((("k", "ki"), ("m", "mi"), ("g", "gi"), ("t", "ti")), 1):
    _RATE_BITS[f"{_si}bit"] = 1000 ** _i
    _RATE_BITS[f"{_si}bps"] = 8 * 1000 ** _i
    _RATE_BITS[f"{_iec}bit"] = 1024 ** _i
    _RATE_BITS[f"{_iec}bps"] = 8 * 1024 ** _i

_TIME_SECONDS = {"s": 1.0, "sec": 1.0, "secs": 1.0,
                 "ms": 1e-3, "msec": 1e-3, "msecs": 1e-3,
                 "us": 1e-6, "usec": 1e-6, "usecs": 1e-6}

_NUMBER = r"(\d+(?:\.\d*)?|\.\d+)"
_CUSTOM = re.compile(rf"^{_NUMBER}([a-z]+)/{_NUMBER}([a-z]+)$")

_USAGE = "loopback, lan, wan or RATE/RTT like 100mbit/40ms"


@dataclass(frozen=True)
class NetworkProfile:
    """A link rate (bytes/s; ``None``: unshaped) and a round-trip time (seconds)."""

    name: str
    rate: float | None
    rtt: float

    @property
    def shaped(self) -> bool:
        """True if players need namespaces of their own (anything but loopback)."""
        return self.name != "loopback"

    @property
    def rate_bits(self) -> int | None:
        """The rate in bits per second as tc takes it (``NNNbit``), or None."""
        return None if self.rate is None else max(1, round(self.rate * 8))

    def as_dict(self) -> dict[str, object]:
        return {"name": self.name, "rate_bytes_per_s": self.rate, "rtt_s": self.rtt}

    def __str__(self) -> str:
        return self.name


LOOPBACK = NetworkProfile("loopback", None, 0.0)
# SecureNN (PoPETs 2019), experimental setup: 625 MB/s, 0.22 ms ping; 40 MB/s, 58 ms ping.
LAN = NetworkProfile("lan", 625e6, 0.22e-3)
WAN = NetworkProfile("wan", 40e6, 58e-3)
NAMED = {p.name: p for p in (LOOPBACK, LAN, WAN)}


def _bad(text: str, why: str = "") -> argparse.ArgumentTypeError:
    detail = f" ({why})" if why else ""
    return argparse.ArgumentTypeError(f"--network: {text!r} is not {_USAGE}{detail}")


def parse_network(text: str) -> NetworkProfile:
    """One profile from ``loopback``, ``lan``, ``wan`` or ``RATE/RTT``.

    Raises ``argparse.ArgumentTypeError`` (one line, saying what is accepted), so it
    can serve as an argparse ``type=`` directly.
    """
    key = str(text).strip().lower()
    if key in NAMED:
        return NAMED[key]
    match = _CUSTOM.match(key)
    if not match:
        raise _bad(text)
    rate_num, rate_unit, rtt_num, rtt_unit = match.groups()
    if rate_unit not in _RATE_BITS:
        raise _bad(text, f"unknown rate unit {rate_unit!r}; use bit, kbit, mbit, gbit "
                         f"(bits/s) or bps, kbps, mbps, gbps (bytes/s)")
    if rtt_unit not in _TIME_SECONDS:
        raise _bad(text, f"unknown time unit {rtt_unit!r}; use s, ms or us")
    bits = float(rate_num) * _RATE_BITS[rate_unit]
    if bits < 8:
        raise _bad(text, "the rate must be at least 8bit, one byte per second")
    rtt = float(rtt_num) * _TIME_SECONDS[rtt_unit]
    if rtt > 60:
        raise _bad(text, "a round trip longer than 60 s is surely a typo")
    return NetworkProfile(f"{_trim(rate_num)}{rate_unit}/{_trim(rtt_num)}{rtt_unit}",
                          bits / 8, rtt)


def parse_networks(text: str) -> tuple[NetworkProfile, ...]:
    """A comma-separated list of profiles (``lan,wan,100mbit/40ms``), duplicates dropped."""
    parts = [p.strip() for p in str(text).split(",")]
    if not any(parts):
        raise argparse.ArgumentTypeError(f"--network: empty list; give one or more of {_USAGE}, "
                                         f"separated by commas")
    if not all(parts):
        raise argparse.ArgumentTypeError(f"--network: {text!r} has an empty item; give one or "
                                         f"more of {_USAGE}, separated by commas")
    seen: dict[str, NetworkProfile] = {}
    for part in parts:
        profile = parse_network(part)
        seen.setdefault(profile.name, profile)
    return tuple(seen.values())


def _trim(number: str) -> str:
    """``"1.50"`` -> ``"1.5"``, ``"2."`` -> ``"2"``, ``".5"`` -> ``"0.5"`` (stable names)."""
    if "." in number:
        number = number.rstrip("0").rstrip(".")
    if number.startswith("."):
        number = "0" + number
    return number or "0"
