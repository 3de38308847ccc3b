"""Port fix: Keras ``MaxPooling2D`` under SecureNN, through the protocol's own max pooling.

tf-encrypted 0.9.1's Keras ``MaxPooling2D.call`` always asks for
``maxpool2d_with_argmax`` (it keeps the argmax for training's backward pass), which only
ABY3 implements; SecureNN has its own ``maxpool2d`` (im2col of the shares, then a tree of
private comparisons), which the layer never reaches. And that ``maxpool2d`` hands its
im2col helper one integer stride (``strides[0]``) where the helper indexes a pair, so it
cannot run either.

- ``MaxPooling2D.call``: ABY3 keeps its own path (with argmax); every other protocol
  calls ``prot.maxpool2d`` on the NCHW-transposed input, as the layer's pooling base class
  does. Pond has no max pooling (its ``maxpool2d`` raises ``NotImplementedError``), so
  ``harness.inference.private`` refuses MaxPooling2D under Pond before sharing.
- SecureNN's ``_im2col`` is given both strides. Same data layout as upstream: the
  ``(B, C, H, W)`` shares are split per channel into ``(B*C, 1, H, W)``, im2col gives one
  column per output position, the max over each column is reshaped to
  ``(out_h, out_w, B, C)`` and transposed back to ``(B, C, out_h, out_w)``.

Inference only: the SecureNN path records no argmax, so ``backward`` (training) is not
available there.
"""
from __future__ import annotations

import math
from typing import Any, Callable

from harness.tfe.patching import replace


def _output_size(height: int, width: int, pool: tuple[int, int], strides: tuple[int, int],
                 padding: str) -> tuple[int, int]:
    if padding == "SAME":
        return math.ceil(height / strides[0]), math.ceil(width / strides[1])
    return (math.ceil((height - pool[0] + 1) / strides[0]),
            math.ceil((width - pool[1] + 1) / strides[1]))


def _im2col(prot: Any, x: Any, pool_size: Any, strides: Any, padding: str) -> Any:
    """SecureNN's max-pooling im2col on both shares, with both strides (upstream passed
    ``strides[0]``, an int, where a pair is indexed)."""
    import tensorflow as tf  # noqa: PLC0415

    x_on_0, x_on_1 = x.unwrapped
    batch, channels, height, width = (int(d) for d in x.shape)
    pool = (int(pool_size[0]), int(pool_size[1]))
    steps = [int(strides[0]), int(strides[1])]
    out_height, out_width = _output_size(height, width, pool, tuple(steps), padding)
    columns = []
    for server, share in ((prot.server_0, x_on_0), (prot.server_1, x_on_1)):
        with tf.device(server.device_name):
            split = share.reshape((batch * channels, 1, height, width))
            columns.append(split.im2col(pool[0], pool[1], steps, padding))
    return columns[0], columns[1], [out_height, out_width, batch, channels]


def _maxpool_call(original: Callable[..., Any]) -> Callable[..., Any]:
    """``MaxPooling2D.call``: ABY3 as upstream, other protocols through ``prot.maxpool2d``."""

    def call(self: Any, inputs: Any) -> Any:
        import tf_encrypted as tfe  # noqa: PLC0415
        from tf_encrypted.protocol.aby3 import ABY3  # noqa: PLC0415

        prot = tfe.get_protocol()
        if isinstance(prot, ABY3):
            return original(self, inputs)
        self._layer_input = inputs
        channels_last = self.data_format != "channels_first"
        x = tfe.transpose(inputs, perm=[0, 3, 1, 2]) if channels_last else inputs
        y = prot.maxpool2d(x, self.pool_size, self.strides, self.padding)
        outputs = tfe.transpose(y, perm=[0, 2, 3, 1]) if channels_last else y
        self._layer_output = (outputs, None)  # no argmax: inference only
        return outputs

    return call


def apply_imported() -> None:
    """Install both fixes (after ``import tf_encrypted``)."""
    from tf_encrypted.keras.layers import pooling  # noqa: PLC0415
    from tf_encrypted.protocol.securenn import securenn  # noqa: PLC0415

    replace(pooling.MaxPooling2D, "call", _maxpool_call, wrap=True)
    replace(securenn, "_im2col", _im2col)
