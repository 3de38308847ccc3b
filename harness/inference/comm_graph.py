"""The dependency graph of the partitioned graphs' nodes: longest chains of transfers
and which transfers each node waits for (``harness.inference.comm`` counts with them).

Plain Python on node keys and edge lists; no TensorFlow.
"""
from __future__ import annotations

from collections import deque
from typing import Any, Sequence


class CommError(RuntimeError):
    """A transfer whose size or count cannot be known exactly; says which and why."""


def direct_predecessors(behind: int, waits: Sequence[int]) -> tuple[int, ...]:
    """The transfers of the bit set ``behind`` that no other one of them waits for
    (``waits[j]``: the bit set transfer j waits for): the direct predecessors."""
    found = [j for j in range(behind.bit_length()) if behind >> j & 1]
    covered = 0
    for j in found:
        covered |= waits[j]
    return tuple(j for j in found if not covered >> j & 1)


def longest_chains(nodes: dict, edges: dict,
                    crossing: dict) -> tuple[dict[Any, tuple[int, ...]], dict[Any, int]]:
    """Per node, the most (party, party data, cross-task) transfers on any chain of
    dependencies that ends there: longest paths in the DAG, one per weight; and the
    transfers (bit j: ``crossing``'s transfer j) some chain ending there crosses."""
    indegree = {k: 0 for k in nodes}
    for src, outs in edges.items():
        if src not in nodes:
            raise CommError(f"input {src[1]!r} is not in its partition graph")
        for dst, _ in outs:
            if dst not in nodes:
                raise CommError(f"edge to {dst[1]!r}, which is not in its partition graph")
            indegree[dst] += 1
    best = dict.fromkeys(nodes, (0, 0, 0))
    behind = dict.fromkeys(nodes, 0)
    ready = deque(k for k, d in indegree.items() if d == 0)
    seen = 0
    while ready:
        src = ready.popleft()
        seen += 1
        for dst, weights in edges.get(src, ()):
            best[dst] = tuple(max(d, s + w) for d, s, w in zip(best[dst], best[src], weights))
            crossed = crossing.get((src, dst))
            behind[dst] |= behind[src] | (0 if crossed is None else 1 << crossed)
            indegree[dst] -= 1
            if indegree[dst] == 0:
                ready.append(dst)
    if seen != len(nodes):
        raise CommError("the partition graphs have a cycle: rounds are undefined")
    return best, behind
