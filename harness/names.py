"""Names shared by every layer: players, protocols, deployments, variants (no TensorFlow).

tf-encrypted's players are named in its hostmaps; the three servers compute and the
prediction client owns the input and the result.
"""
from __future__ import annotations

SERVERS = ("server0", "server1", "server2")
CLIENT = "prediction-client"
PLAYERS = SERVERS + (CLIENT,)

PROTOCOLS = ("pond", "securenn", "aby3")
DEPLOYMENTS = ("inprocess", "cluster", "manual")


def parse_choice(kind: str, value: str, choices: tuple[str, ...]) -> str:
    """``value`` normalised if it is one of ``choices``; else ValueError naming them."""
    key = value.strip().lower()
    if key not in choices:
        raise ValueError(f"unknown {kind} {value!r}; choose from {', '.join(choices)}")
    return key
