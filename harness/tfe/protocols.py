"""Protocol instances by name and variant: the one place a tf-encrypted protocol is made.

``make("securenn")`` is the *tuned* variant (every speed change that applies);
``make("securenn", "stock")`` is tf-encrypted's own protocol code with the port and
security fixes only; ``changes=`` picks speed changes one by one (the report's "what each
change buys"). Call after ``tfe.set_config`` (tf-encrypted resets the protocol there).
"""
from __future__ import annotations

from typing import Any, Iterable

from harness.names import PROTOCOLS, parse_choice
from harness.tfe import activate, speed

VARIANTS = ("stock", "tuned")

_CLASSES = {"pond": "Pond", "securenn": "SecureNN", "aby3": "ABY3"}


def resolve_changes(protocol: str, variant: str = "tuned",
                    changes: Iterable[str] | None = None) -> frozenset[str]:
    """The speed changes a (protocol, variant[, changes]) runs; ValueError if unknown."""
    protocol = parse_choice("protocol", protocol, PROTOCOLS)
    variant = parse_choice("variant", variant, VARIANTS)
    if changes is not None:
        return speed.check(protocol, changes)
    return frozenset(speed.names_for(protocol)) if variant == "tuned" else frozenset()


def make(protocol: str, variant: str = "tuned", changes: Iterable[str] | None = None) -> Any:
    """A new protocol instance of ``protocol`` running the given speed changes."""
    chosen = resolve_changes(protocol, variant, changes)
    tfe = activate()
    name = parse_choice("protocol", protocol, PROTOCOLS)
    instance = getattr(tfe.protocol, _CLASSES[name])()
    return speed.configure(instance, name, chosen)
