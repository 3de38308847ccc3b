"""When each transfer of one call happened, read from TensorFlow's rendezvous log.

Started with ``TRACE_ENV`` in its environment (``TF_CPP_VMODULE=base_rendezvous_mgr=2``),
every TensorFlow process of a cluster (its workers inherit the variables) logs one line
per transfer when the sender's tensor is ready (``BaseRemoteRendezvous Send <key>``) and
one when the receiver has it (``RemoteRendezvous Finished ... <key>``), with a wall-clock
time in microseconds. The key (``src device;incarnation;dst device;tensor;frame``)
names the same transfer as ``harness.inference.comm`` (sender, receiver, rendezvous
tensor name). All processes run on one machine, so their clocks agree.

``LogMark(paths)`` remembers where the logs end; ``mark.times(names, players, t0, t1)``
reads what was written since and returns, per counted transfer, when it was sent and
when it arrived, in seconds after ``t0`` (the call's start; ``t1`` its end). A transfer
without a line (e.g. a result fetched outside the function) is ``None``.

``out_of_order(schedule, timing)`` checks the count's dependencies against the trace: a
transfer that the count says waits for another must not be sent before that one has
arrived. Any pair that was is a dependency (and so a round) the runtime does not have.

The lines cost a few microseconds each (tens to hundreds per call): a SecureNN batch of
32 on a 1 Gbit/s-shaped cluster timed 189.5 ms with them and 182.6 ms without, within
the run-to-run spread (2026-12-06). No TensorFlow import: plain text in, numbers out.
"""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Sequence

TRACE_ENV = {"TF_CPP_MIN_LOG_LEVEL": "0", "TF_CPP_VMODULE": "base_rendezvous_mgr=2"}
DRIVER = "driver"
DRIVER_JOB = "/job:localhost"

_LINE = re.compile(r"^[IWE]\d+ \d+:\d+:(\d+\.\d+) +\d+ base_rendezvous_mgr\.cc:\d+\] (.*)$")
_TASK = re.compile(r"/task:(\d+)")
_SENT = "BaseRemoteRendezvous Send"
_ARRIVED = "RemoteRendezvous Finished"


def _party(device: str, players: Sequence[str]) -> str | None:
    if device.startswith(DRIVER_JOB):
        return DRIVER
    task = _TASK.search(device)
    index = int(task.group(1)) if task else -1
    return players[index] if 0 <= index < len(players) else None


def parse(text: str, players: Sequence[str]) -> tuple[dict, dict]:
    """({(sender, receiver, tensor): time sent}, {...: time arrived}) from log text;
    ``players``: the workers' names in task order (the hostmap's)."""
    sent: dict[tuple[str, str, str], float] = {}
    arrived: dict[tuple[str, str, str], float] = {}
    for line in text.splitlines():
        found = _LINE.match(line)
        if not found:
            continue
        when, message = float(found.group(1)), found.group(2)
        table = sent if message.startswith(_SENT) else (
            arrived if message.startswith(_ARRIVED) else None)
        key = next((w for w in message.split() if w.count(";") == 4), None)
        if table is None or key is None:
            continue
        src, _incarnation, dst, tensor, _frame = key.split(";")
        sender, receiver = _party(src, players), _party(dst, players)
        if sender and receiver:
            table[(sender, receiver, tensor)] = when
    return sent, arrived


class LogMark:
    """Where the logs at ``paths`` end now; ``times()`` reads what came after."""

    def __init__(self, paths: Sequence[str | os.PathLike]):
        self.offsets = {Path(p): Path(p).stat().st_size for p in paths}

    def text(self) -> str:
        parts = []
        for path, offset in self.offsets.items():
            with open(path, "rb") as f:
                f.seek(offset)
                parts.append(f.read().decode(errors="replace"))
        return "\n".join(parts)

    def times(self, names: Sequence[Sequence[str]], players: Sequence[str], t0: float,
              t1: float) -> dict[str, Any]:
        """``{"call_s", "sent", "arrived"}``: per transfer of ``names`` ((sender,
        receiver, tensor), in the count's order), seconds after ``t0`` or None."""
        sent, arrived = parse(self.text(), players)

        def offset(table: dict, name: Sequence[str]) -> float | None:
            when = table.get(tuple(name))
            return None if when is None else round(when - t0, 6)

        return {"call_s": t1 - t0, "sent": [offset(sent, n) for n in names],
                "arrived": [offset(arrived, n) for n in names]}


def out_of_order(schedule: Sequence[Sequence[Any]], timing: dict[str, Any],
                 tolerance: float = 5e-4) -> tuple[int, list[tuple[int, int]]]:
    """(pairs checked, pairs (i, j) where transfer i, which waits for j according to
    ``schedule``, was sent more than ``tolerance`` seconds before j arrived)."""
    sent, arrived = timing["sent"], timing["arrived"]
    checked, wrong = 0, []
    for i, entry in enumerate(schedule):
        for j in entry[2]:
            if sent[i] is None or arrived[j] is None:
                continue
            checked += 1
            if sent[i] < arrived[j] - tolerance:
                wrong.append((i, j))
    return checked, wrong
