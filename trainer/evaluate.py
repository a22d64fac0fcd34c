"""Metrics and the open-world threshold, as pure numpy functions of scores and labels.

Kept free of TensorFlow so the numbers in ``metrics.json`` are checkable by hand,
and so the threshold rule here is the same one the exported model runs in TF ops.
"""

from __future__ import annotations

import numpy as np

EPSILON = 1e-12  # log(0) guard for cross-entropy from softmax scores


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def cross_entropy(scores: np.ndarray, y: np.ndarray) -> float:
    """Mean negative log-probability of the true class."""
    if len(y) == 0:
        return float("nan")
    p = scores[np.arange(len(y)), y]
    return float(-np.mean(np.log(np.maximum(p, EPSILON))))


def accuracy(predicted: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(predicted == y)) if len(y) else float("nan")


def confusion_matrix(y: np.ndarray, predicted: np.ndarray, num_classes: int) -> np.ndarray:
    """Rows are the true class, columns the predicted one."""
    matrix = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(matrix, (y, predicted), 1)
    return matrix


def per_class(matrix: np.ndarray, labels: list[str]) -> dict[str, dict]:
    """Precision, recall, F1 and support per class; 0.0 where a ratio has no denominator."""
    tp = np.diag(matrix).astype(np.float64)
    predicted = matrix.sum(axis=0)
    support = matrix.sum(axis=1)
    out = {}
    for i, label in enumerate(labels):
        precision = tp[i] / predicted[i] if predicted[i] else 0.0
        recall = tp[i] / support[i] if support[i] else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        out[label] = {"precision": float(precision), "recall": float(recall), "f1": float(f1),
                      "support": int(support[i]), "predicted": int(predicted[i])}
    return out


def apply_threshold(scores: np.ndarray, neither_index: int | None, threshold: float | None) -> np.ndarray:
    """Argmax, except that a brand whose score is below ``threshold`` falls back to 'neither'.

    The study preferred missing a brand to claiming a false one; this is that rule.
    """
    top = scores.argmax(axis=1)
    if threshold is None or neither_index is None:
        return top
    confident = scores[np.arange(len(top)), top] >= threshold
    return np.where((top != neither_index) & ~confident, neither_index, top)


def brand_precision(y: np.ndarray, predicted: np.ndarray, neither_index: int) -> tuple[float, int]:
    """Micro precision over predictions that name a brand, and how many there are."""
    claimed = predicted != neither_index
    count = int(claimed.sum())
    return (float(np.mean(predicted[claimed] == y[claimed])) if count else 1.0), count


def choose_threshold(scores: np.ndarray, y: np.ndarray, neither_index: int, target_precision: float) -> dict:
    """The lowest threshold whose brand precision on these (validation) scores reaches the target.

    The lowest one keeps the most brand predictions. Candidates are 0 and every top
    score of a brand prediction. When no candidate reaches the target, the one with
    the best precision is returned with ``reached: False`` so the caller can say so.
    """
    top = scores.argmax(axis=1)
    top_scores = scores[np.arange(len(top)), top]
    candidates = np.unique(np.concatenate([[0.0], top_scores[top != neither_index]]))
    best = None
    for t in candidates:
        predicted = apply_threshold(scores, neither_index, float(t))
        precision, count = brand_precision(y, predicted, neither_index)
        recall = _brand_recall(y, predicted, neither_index)
        row = {"threshold": float(t), "precision": precision, "brand_predictions": count, "brand_recall": recall}
        if precision >= target_precision:
            return {**row, "target_precision": target_precision, "reached": True}
        if best is None or precision > best["precision"]:
            best = row
    return {**best, "target_precision": target_precision, "reached": False}


def _brand_recall(y: np.ndarray, predicted: np.ndarray, neither_index: int) -> float:
    """Share of true brand images that get their own brand."""
    brands = y != neither_index
    return float(np.mean(predicted[brands] == y[brands])) if brands.any() else float("nan")


def evaluate(scores: np.ndarray, y: np.ndarray, labels: list[str], neither_index: int | None = None,
             threshold: float | None = None) -> dict:
    """Everything ``metrics.json`` reports for one split.

    Accuracy, the per-class figures and the confusion matrix follow the threshold
    rule (the model's actual answers); ``argmax_accuracy`` is without it.
    Cross-entropy is a property of the scores and ignores the threshold.
    """
    predicted = apply_threshold(scores, neither_index, threshold)
    matrix = confusion_matrix(y, predicted, len(labels))
    classes = per_class(matrix, labels)
    result = {
        "count": int(len(y)),
        "accuracy": accuracy(predicted, y),
        "argmax_accuracy": accuracy(scores.argmax(axis=1), y),
        "cross_entropy": cross_entropy(scores, y),
        "macro_f1": float(np.mean([c["f1"] for c in classes.values()])) if labels else float("nan"),
        "per_class": classes,
        "confusion_matrix": matrix.tolist(),
    }
    if neither_index is not None:
        precision, count = brand_precision(y, predicted, neither_index)
        result["brand_precision"] = precision
        result["brand_predictions"] = count
        result["brand_recall"] = _brand_recall(y, predicted, neither_index)
    return result


def expected_calibration_error(scores: np.ndarray, y: np.ndarray, bins: int = 15) -> float:
    """|accuracy - confidence| of the top score, averaged over equal-width confidence bins weighted by their rows."""
    if len(y) == 0:
        return float("nan")
    confidence = scores.max(axis=1)
    correct = scores.argmax(axis=1) == y
    which = np.minimum((confidence * bins).astype(int), bins - 1)
    total = 0.0
    for b in range(bins):
        rows = which == b
        if rows.any():
            total += rows.sum() * abs(correct[rows].mean() - confidence[rows].mean())
    return float(total / len(y))
