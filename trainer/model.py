"""The classifier head: softmax regression on the transformed embedding, in numpy.

The study retrained only the last layer of the CNN; this is that layer. Its
gradient is two lines, so the trainer owns every step (optimizers, dropout,
class weights, L2) without Keras, whose version tensorflow-transform switches per
process. Training runs in float64; the weights are kept in float32, the precision
the exported TF model computes in, so evaluation sees exactly the served model.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from trainer.evaluate import softmax


@dataclass
class HeadWeights:
    kernel: np.ndarray  # [D, C]
    bias: np.ndarray    # [C]

    def copy(self) -> "HeadWeights":
        return HeadWeights(self.kernel.copy(), self.bias.copy())

    def as_float32(self) -> "HeadWeights":
        return HeadWeights(self.kernel.astype(np.float32), self.bias.astype(np.float32))


def zeros(dim: int, num_classes: int) -> HeadWeights:
    """The loss is convex, so a zero start is as good as any and needs no random draw."""
    return HeadWeights(np.zeros((dim, num_classes)), np.zeros(num_classes))


def predict_scores(weights: HeadWeights, x: np.ndarray) -> np.ndarray:
    """Softmax scores [N, C] in float32, as the exported model computes them."""
    w = weights.as_float32()
    logits = np.asarray(x, np.float32) @ w.kernel + w.bias
    return softmax(logits.astype(np.float32)).astype(np.float32)


def loss_and_gradients(weights: HeadWeights, x: np.ndarray, y: np.ndarray, sample_weight: np.ndarray,
                       l2: float, label_smoothing: float = 0.0) -> tuple[float, HeadWeights]:
    """Weighted mean cross-entropy plus ``0.5 * l2 * ||kernel||^2``, and its gradient.

    With ``label_smoothing`` e the target is ``(1 - e)`` on the true class plus ``e / C`` on every class.
    """
    logits = x @ weights.kernel + weights.bias
    p = softmax(logits)
    n = len(y)
    rows = np.arange(n)
    log_p = np.log(np.maximum(p, 1e-300))
    if label_smoothing:
        per_row = -(1.0 - label_smoothing) * log_p[rows, y] - label_smoothing * log_p.mean(axis=1)
    else:
        per_row = -log_p[rows, y]
    loss = float(np.sum(sample_weight * per_row) / n)
    loss += 0.5 * l2 * float(np.sum(weights.kernel ** 2))
    delta = p
    if label_smoothing:
        delta[rows, y] -= 1.0 - label_smoothing
        delta -= label_smoothing / p.shape[1]
    else:
        delta[rows, y] -= 1.0
    delta *= sample_weight[:, None] / n
    return loss, HeadWeights(x.T @ delta + l2 * weights.kernel, delta.sum(axis=0))


class Optimizer:
    """SGD, Adagrad (TF's 0.1 initial accumulator) or Adam (TF's defaults), on HeadWeights."""

    def __init__(self, name: str, learning_rate: float, weights: HeadWeights):
        self.name = name
        self.lr = learning_rate
        self.t = 0
        self.slots = [[np.full_like(p, 0.1 if name == "adagrad" else 0.0), np.zeros_like(p)]
                      for p in (weights.kernel, weights.bias)]

    def apply(self, weights: HeadWeights, grads: HeadWeights) -> None:
        self.t += 1
        for param, grad, slot in zip((weights.kernel, weights.bias), (grads.kernel, grads.bias), self.slots):
            if self.name == "sgd":
                param -= self.lr * grad
            elif self.name == "adagrad":
                slot[0] += grad * grad
                param -= self.lr * grad / (np.sqrt(slot[0]) + 1e-7)
            else:
                b1, b2, eps = 0.9, 0.999, 1e-7
                slot[0] = b1 * slot[0] + (1 - b1) * grad
                slot[1] = b2 * slot[1] + (1 - b2) * grad * grad
                lr = self.lr * np.sqrt(1 - b2 ** self.t) / (1 - b1 ** self.t)
                param -= lr * slot[0] / (np.sqrt(slot[1]) + eps)
