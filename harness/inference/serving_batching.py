"""Dynamic batching: when the owner starts a batch, and how committed requests become rows.

``BatchWindow`` decides when to run: at once when ``max_batch`` requests wait (or as
many as are still wanted, or one from half of the clients of the last two batches,
at least two), when no further request has come for half as long as the last batch
took, else when the oldest waiting request the owner has seen has waited ``window``
seconds.
A request committed while a batch runs therefore starts at most one batch plus one
window after it was committed, and is answered one batch later.

``plan_batch`` turns the commits the owner dequeued - ``(request id, slot)`` pairs - into
the step's arguments: rows ordered by slot (commit order within a slot), per-slot
counts, and the ids padded to the compiled batch size. Commits with a slot the session
does not have, or an id that cannot be a client's, are refused here and never reach
the servers' step.

Who can derive what: the owner handles only request ids (random numbers the clients
drew) and slot numbers; nothing here touches a share. This module does not import
TensorFlow.
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np


@dataclass
class BatchWindow:
    """The owner's gathering rule (``max_batch`` B, ``window`` in seconds).

    A batch starts as soon as B requests wait, or half of the clients of the last two
    batches (within ``recent`` seconds; rounded up, and at least two of them where
    there are two) have a request waiting, or no new request came for half the time the
    last batch took (``ran``; the others are still unmasking, or gone), or the oldest
    waiting request has waited ``window``. So a lone client is never held back by the
    window, two clients share each batch, and more clients that keep sending settle into
    two groups that take turns: the servers compute one group's batch while the other
    group's clients unmask their results and share their next inputs. Waiting for every client instead (one batch
    of all) left the servers idle while all the clients did that work: on a 2-core
    machine, SecureNN at 8 clients idled 23-27 ms per batch (see README, serving
    load). A client that leaves costs the others half a batch's time per batch while it
    still counts as active: without the quiet rule, a whole window (at the end of a
    load round, where the last clients are fewer than half, the owner waited 300 ms
    for a batch of 3).
    """

    max_batch: int = 1
    window: float = 0.0
    recent: float = 1.0
    _first_seen: float | None = field(default=None, init=False)
    _grown: tuple[int, float] = field(default=(0, 0.0), init=False)  # (waiting, since when)
    _quiet: float | None = field(default=None, init=False)  # s: half the last batch's time
    _history: list[tuple[float, frozenset[int]]] = field(default_factory=list, init=False)

    def __post_init__(self) -> None:
        if self.max_batch < 1:
            raise ValueError("--max-batch must be >= 1")
        if self.window < 0:
            raise ValueError("--batch-window must be >= 0 ms")

    def seen(self, slots: Sequence[int], now: float) -> None:
        """Record the slots of the requests just taken into a batch."""
        self._history = (self._history + [(now, frozenset(int(s) for s in slots))])[-2:]

    def ran(self, seconds: float) -> None:
        """Record how long the batch just run took (sets the quiet rule's wait)."""
        self._quiet = seconds / 2

    def active(self, now: float) -> int:
        """Clients (slots) of the last two batches, if these were recent."""
        found: set[int] = set()
        for when, slots in self._history:
            if now - when <= self.recent:
                found |= slots
        return len(found)

    def quorum(self, now: float) -> int:
        """Waiting requests that start a batch before the window ends: half of the
        recently active clients (rounded up), but two where two or more are active, so
        that a batch is shared whenever it can be (at least 1)."""
        active = self.active(now)
        return max(1, min(active, 2), -(-active // 2))

    def take(self, waiting: int, now: float, wanted: int | None = None) -> int:
        """How many of ``waiting`` committed requests to batch now (0: keep gathering).
        ``wanted``: how many more requests the owner will answer at all."""
        limit = self.max_batch if wanted is None else min(self.max_batch, wanted)
        if waiting <= 0 or limit <= 0:
            self._first_seen, self._grown = None, (0, now)
            return 0
        if self._first_seen is None:
            self._first_seen = now
        if waiting > self._grown[0]:
            self._grown = (waiting, now)
        quiet = self._quiet is not None and now - self._grown[1] >= self._quiet
        if waiting >= min(limit, self.quorum(now)) or quiet or \
                now - self._first_seen >= self.window:
            self._first_seen, self._grown = None, (0, now)
            return min(waiting, limit)
        return 0


def step_size(n: int, sizes: Sequence[int]) -> int:
    """The smallest compiled batch size that holds ``n`` rows."""
    ordered = sorted(sizes)
    at = bisect.bisect_left(ordered, n)
    if at == len(ordered):
        raise ValueError(f"{n} rows exceed the largest compiled batch {ordered[-1]}")
    return ordered[at]


def compiled_sizes(max_batch: int) -> tuple[int, ...]:
    """Batch sizes the owner compiles: the powers of two below B, and B. A lone request
    is not padded, and a partial batch is padded to at most twice its rows (each size
    costs one trace when serving starts)."""
    sizes, b = {max_batch}, 1
    while b < max_batch:
        sizes.add(b)
        b *= 2
    return tuple(sorted(sizes))


@dataclass(frozen=True)
class BatchPlan:
    rids: np.ndarray                  # [size] int64, rows by slot; padding rows are 0
    counts: np.ndarray                # [slots] int32
    rows: tuple[tuple[int, int], ...]  # (rid, slot) of each real row, in row order
    refused: tuple[tuple[int, int], ...]  # malformed commits: (rid, slot)

    @property
    def n(self) -> int:
        return len(self.rows)


def plan_batch(rids: Sequence[int], slots: Sequence[int], n_slots: int,
               size: int | None = None) -> BatchPlan:
    """Rows for the step from dequeued commits; ``size``: the compiled batch (default:
    exactly the accepted rows)."""
    rows, refused = [], []
    for rid, slot in zip((int(r) for r in rids), (int(s) for s in slots)):
        if 0 <= slot < n_slots and rid >= 1:
            rows.append((rid, slot))
        else:
            refused.append((rid, slot))
    rows.sort(key=lambda row: row[1])  # stable: commit order within a slot
    size = len(rows) if size is None else size
    if len(rows) > size:
        raise ValueError(f"{len(rows)} requests do not fit a batch of {size}")
    ids = np.zeros(size, np.int64)
    ids[:len(rows)] = [rid for rid, _ in rows]
    counts = np.bincount([slot for _, slot in rows], minlength=n_slots).astype(np.int32)
    return BatchPlan(ids, counts, tuple(rows), tuple(refused))
