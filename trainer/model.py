"""What the trainer adapts: the softmax head alone, or the backbone's last blocks and the head (Keras).

``head``: a dense softmax layer on the transformed pooled embedding (the study's
"last layer"). ``blocks``: the backbone's blocks from the bottleneck job's cut
onwards, its 1x1 head convolution, mean pooling, the same transform and the dense
layer, trained on the stored maps entering the cut block and initialised from the
backbone artifact. Both are Keras 3 models (``import keras``, which a process that
imported tensorflow-transform still gets; its ``tf.keras`` would be Keras 2), trained
with Keras optimizers; the export rebuilds the same computation from plain TF ops so
the SavedModels load in Keras 2 and Keras 3 processes alike.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from trainer.evaluate import softmax

ADAPT_HEAD = "head"
ADAPT_BLOCKS = "blocks"
ADAPT_MODES = (ADAPT_HEAD, ADAPT_BLOCKS)
# Held-out sets are small: a perfectly separated one would drive the temperature to 0 (certainty), so it is bounded.
MIN_TEMPERATURE, MAX_TEMPERATURE = 0.25, 10.0


@dataclass
class HeadWeights:
    """The dense layer, and (``blocks`` mode) the trained blocks: ``{block index: {part: (kernel, bias)}}``."""

    kernel: np.ndarray  # [D, C]
    bias: np.ndarray    # [C]
    blocks: dict = field(default_factory=dict)
    conv_head: tuple | None = None  # (kernel [1, 1, c, D], bias [D]) of the backbone's head convolution
    temperature: float = 1.0        # scores = softmax(logits / temperature): calibration fitted after training

    def copy(self) -> "HeadWeights":
        return HeadWeights(self.kernel.copy(), self.bias.copy(), {i: dict(b) for i, b in self.blocks.items()},
                           self.conv_head, self.temperature)

    def as_float32(self) -> "HeadWeights":
        cast = lambda pair: tuple(np.asarray(a, np.float32) for a in pair)  # noqa: E731
        return HeadWeights(self.kernel.astype(np.float32), self.bias.astype(np.float32),
                           {i: {k: cast(v) for k, v in b.items()} for i, b in self.blocks.items()},
                           None if self.conv_head is None else cast(self.conv_head), float(self.temperature))

    @property
    def adapts_blocks(self) -> bool:
        return bool(self.blocks)


def predict_scores(weights: HeadWeights, x: np.ndarray) -> np.ndarray:
    """Softmax scores [N, C] in float32 from transformed embeddings, as the exported head computes them."""
    w = weights.as_float32()
    logits = np.asarray(x, np.float32) @ w.kernel + w.bias
    if w.temperature != 1.0:
        logits = logits / np.float32(w.temperature)
    return softmax(logits.astype(np.float32)).astype(np.float32)


def set_seed(seed: int) -> None:
    import keras

    keras.utils.set_random_seed(seed)


def build_head_model(dim: int, num_classes: int, l2: float, dropout: float, seed: int):
    """Transformed embedding -> logits. The L2 term is ``0.5 * l2 * ||kernel||^2``, as the flag says."""
    import keras

    inputs = keras.Input((dim,), name="embedding_scaled")
    x = keras.layers.Dropout(dropout, seed=seed)(inputs) if dropout else inputs
    logits = keras.layers.Dense(num_classes, kernel_initializer="zeros", name="head",
                                kernel_regularizer=keras.regularizers.L2(0.5 * l2) if l2 else None)(x)
    return keras.Model(inputs, logits, name="brandlens_head")


def build_blocks_model(network, specs, cut: int, map_shape, scale, shift, num_classes: int, l2: float, dropout: float,
                       seed: int, train_from: int | None = None):
    """Map entering block ``cut`` -> logits: the backbone's remaining blocks (weights from ``network``) and a new head.

    Blocks ``cut .. train_from - 1`` run frozen (the artifact's weights), so maps
    stored at one cut serve every adaptation depth from there on. Returns
    (model, names): ``names`` maps each layer after the cut to its place in the
    backbone (``("block", i, part)`` or ``("conv_head",)``), for the export.
    """
    train_from = cut if train_from is None else train_from
    import keras

    relu6 = lambda name: keras.layers.ReLU(max_value=6.0, name=name)  # noqa: E731
    inputs = keras.Input(tuple(map_shape), name="cut_map")
    x, names, layers = inputs, {}, []

    def conv(filters, weights, name, where, trainable=True):
        layer = keras.layers.Conv2D(filters, 1, padding="same", name=name, trainable=trainable)
        layers.append((layer, weights))
        names[name] = where
        return layer

    for i in range(cut, len(specs)):
        kernel, stride, expand, cin, cout = specs[i]
        block, trains = network.blocks[i], i >= train_from
        h = x
        if "expand" in block:
            h = relu6(f"b{i}_expand_relu6")(conv(cin * expand, block["expand"], f"b{i}_expand", ("block", i, "expand"),
                                                  trains)(h))
        dw = keras.layers.DepthwiseConv2D(kernel, strides=stride, padding="same", name=f"b{i}_depthwise", trainable=trains)
        layers.append((dw, block["depthwise"]))
        names[f"b{i}_depthwise"] = ("block", i, "depthwise")
        h = relu6(f"b{i}_dw_relu6")(dw(h))
        h = conv(cout, block["project"], f"b{i}_project", ("block", i, "project"), trains)(h)
        x = keras.layers.Add(name=f"b{i}_residual")([h, x]) if stride == 1 and cin == cout else h
    x = relu6("head_relu6")(conv(int(network.head[0].shape[-1]), network.head, "conv_head", ("conv_head",))(x))
    pooled = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    scaled = keras.ops.add(keras.ops.multiply(pooled, np.asarray(scale, np.float32)), np.asarray(shift, np.float32))
    if dropout:
        scaled = keras.layers.Dropout(dropout, seed=seed)(scaled)
    logits = keras.layers.Dense(num_classes, kernel_initializer="zeros", name="head",
                                kernel_regularizer=keras.regularizers.L2(0.5 * l2) if l2 else None)(scaled)
    model = keras.Model(inputs, logits, name="brandlens_blocks")
    for layer, (kernel, bias) in layers:
        layer.set_weights([np.asarray(kernel, np.float32), np.asarray(bias, np.float32)])
    return model, names


def weights_of(model, names: dict | None = None) -> HeadWeights:
    """The trained model's parameters in the export's terms."""
    dense = model.get_layer("head")
    kernel, bias = (np.asarray(w, np.float32) for w in dense.get_weights())
    out = HeadWeights(kernel, bias)
    for name, where in (names or {}).items():
        pair = tuple(np.asarray(w, np.float32) for w in model.get_layer(name).get_weights())
        if where[0] == "conv_head":
            out.conv_head = pair
        else:
            out.blocks.setdefault(where[1], {})[where[2]] = pair
    return out


def make_optimizer(name: str, learning_rate: float):
    """SGD, Adagrad (TF's 0.1 initial accumulator) or Adam (TF's defaults), from Keras."""
    import keras

    if name == "sgd":
        return keras.optimizers.SGD(learning_rate)
    if name == "adagrad":
        return keras.optimizers.Adagrad(learning_rate, initial_accumulator_value=0.1, epsilon=1e-7)
    return keras.optimizers.Adam(learning_rate, epsilon=1e-7)


def fit_temperature(logits: np.ndarray, y: np.ndarray) -> float:
    """The temperature T minimising the cross-entropy of softmax(logits / T) on held-out rows (1-d search).

    Calibration changes no argmax; it makes a score mean what it says, so a
    threshold chosen for a precision keeps its meaning across models. Held-out
    rows that the model gets all right carry no evidence of over- or
    underconfidence (their cross-entropy only falls as T -> 0, which would make
    every later error a certain one): then T stays 1.
    """
    logits = np.asarray(logits, np.float64)
    rows = np.arange(len(y))
    if len(y) == 0 or np.all(logits.argmax(axis=1) == y):
        return 1.0

    def nll(t: float) -> float:
        z = logits / t
        z = z - z.max(axis=1, keepdims=True)
        return float(np.mean(np.log(np.exp(z).sum(axis=1)) - z[rows, y]))

    grid = np.exp(np.linspace(np.log(MIN_TEMPERATURE), np.log(MAX_TEMPERATURE), 121))
    best = min(grid, key=nll)
    lo, hi = best / 1.06, best * 1.06
    for _ in range(40):  # golden-section refinement around the best grid point
        a, b = hi - (hi - lo) / 1.618, lo + (hi - lo) / 1.618
        lo, hi = (lo, b) if nll(a) < nll(b) else (a, hi)
    return float(np.clip((lo + hi) / 2, MIN_TEMPERATURE, MAX_TEMPERATURE))
