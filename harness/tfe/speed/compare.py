"""Speed change ``compare-on-server0``: the driver takes no part in SecureNN's compare.

SecureNN's private compare shares one public constant (its edge-case vector) outside
any device scope, i.e. on the driver, which thereby joined the protocol and sent
shares to both servers on every run. Ops without a device of their own now run on
server0. Who can derive what: the value is public; sharing it from server0 instead of
the driver gives server0 nothing it did not have (it knows the constant either way).
"""
from __future__ import annotations

from typing import Any

_original: dict[str, Any] = {}


def remember_original(securenn_module: Any) -> None:
    from harness.tfe.patching import original  # noqa: PLC0415

    _original["compare"] = original(securenn_module, "_private_compare")


def private_compare_on_server0(prot: Any, *args: Any, **kwargs: Any) -> Any:
    import tensorflow as tf  # noqa: PLC0415

    with tf.device(prot.server_0.device_name):
        return _original["compare"](prot, *args, **kwargs)
