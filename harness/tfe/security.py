"""Security fixes: tf-encrypted 0.9.1 behaviour that would leak, corrected for every variant.

ABY3 sets up its pairwise PRF keys once, eagerly, and advances its nonces in Python,
i.e. once per trace. Every run of a compiled function then reused the same
zero-sharing and truncation masks, so one server could subtract private results of
different runs. ABY3 now draws fresh keys (``secure_seed``, a stateful op, OS CSPRNG)
inside every graph that uses them, so each run gets new masks. Who can derive what:
as upstream intends, each pair of servers shares its key for that run only.

(The randomness itself is ours too: ``harness.tfe.secure_random``, OS CSPRNG seeds
expanded with ChaCha20, no fallback; installed by the port fixes.)
"""
from __future__ import annotations

from typing import Any

from harness.tfe.patching import replace

_ABY3_KEY_ACCESSORS = ("pairwise_keys", "pairwise_nonces", "b2a_keys_1", "b2a_keys_2",
                       "b2a_nonce")


def _keys_per_graph(accessor: Any) -> Any:
    """ABY3 key accessor that (re)initialises the keys in each graph being built, so the
    seeds are ops of that graph, drawn afresh on every run; eager code keeps eager keys
    (their nonces do advance per op)."""

    def access(self: Any) -> Any:
        import tensorflow as tf  # noqa: PLC0415

        if self.keys_initialized:
            where = "eager" if tf.executing_eagerly() else tf.compat.v1.get_default_graph()
            if getattr(self, "_harness_keys_made_in", "eager") is not where:
                self.initialize_keys()
                self._harness_keys_made_in = where
        return accessor(self)

    return access


def apply_imported() -> None:
    from tf_encrypted.protocol.aby3 import aby3  # noqa: PLC0415

    for name in _ABY3_KEY_ACCESSORS:
        replace(aby3.ABY3, name, _keys_per_graph, wrap=True)
