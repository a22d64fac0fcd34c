"""Metrics, calibration, precision-recall and the open-world threshold, as pure numpy functions.

Shared by the trainer (``metrics.json``) and ``brandlens evaluate`` (the scoring job's output
against a person's labels), so both report the same figures for the same scores. Kept free
of TensorFlow so the numbers are checkable by hand, and so the threshold rule here is the
same one the exported model runs in TF ops.
"""

from __future__ import annotations

import numpy as np

EPSILON = 1e-12  # log(0) guard for cross-entropy from softmax scores
TOP_SCORES = 5  # scores listed per error


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


def error_rows(scores: np.ndarray, y: np.ndarray, predicted: np.ndarray, labels: list[str], uris) -> list[dict]:
    """The wrong answers, most confident first: those are the ones to look at."""
    rows = []
    for i in np.flatnonzero(predicted != y):
        order = np.argsort(-scores[i], kind="stable")[:TOP_SCORES]
        rows.append({"uri": str(uris[i]), "label": labels[y[i]], "predicted": labels[predicted[i]],
                     "confidence": float(scores[i, predicted[i]]),
                     "top": [(labels[j], float(scores[i, j])) for j in order]})
    rows.sort(key=lambda r: -r["confidence"])
    return rows


def reliability(scores: np.ndarray, y: np.ndarray, bins: int = 10) -> dict:
    """Calibration of the top score: equal-width bins of max softmax score vs argmax accuracy, and the ECE.

    ECE (expected calibration error) = sum over bins of (share of rows) x |accuracy - mean top score|;
    0 is perfectly calibrated. Bins are (lo, hi], the first one [0, hi].
    """
    if bins < 1:
        raise ValueError(f"bins must be positive, got {bins}")
    top = scores.max(axis=1) if len(y) else np.zeros(0)
    correct = scores.argmax(axis=1) == y if len(y) else np.zeros(0, bool)
    edges = np.linspace(0.0, 1.0, bins + 1)
    index = np.clip(np.digitize(top, edges[1:-1], right=True), 0, bins - 1)
    rows, ece = [], 0.0
    for b in range(bins):
        members = index == b
        count = int(members.sum())
        confidence = float(top[members].mean()) if count else None
        acc = float(correct[members].mean()) if count else None
        if count:
            ece += count / len(y) * abs(acc - confidence)
        rows.append({"low": float(edges[b]), "high": float(edges[b + 1]), "count": count, "confidence": confidence, "accuracy": acc})
    return {"ece": float(ece) if len(y) else float("nan"), "bins": rows}


def pr_curve(score: np.ndarray, positive: np.ndarray) -> dict:
    """One-vs-rest precision-recall points at every distinct score (highest first) and the average precision.

    AP = sum over points of (recall gain) x precision, the step-wise area (as scikit-learn defines it);
    NaN without positives.
    """
    order = np.argsort(-score, kind="stable")
    s, pos = score[order], positive[order].astype(np.int64)
    tp = np.cumsum(pos)
    last = np.r_[np.flatnonzero(np.diff(s) != 0), len(s) - 1] if len(s) else np.zeros(0, np.int64)  # ties form one point
    tp, k = tp[last], last + 1
    positives = int(positive.sum())
    precision = tp / k
    recall = tp / positives if positives else np.full(len(tp), np.nan)
    gains = np.diff(np.r_[0.0, recall]) if positives else recall
    ap = float(np.sum(gains * precision)) if positives else float("nan")
    return {"thresholds": s[last].tolist(), "precision": precision.tolist(), "recall": recall.tolist(),
            "average_precision": ap, "positives": positives}


def threshold_table(scores: np.ndarray, y: np.ndarray, neither_index: int, thresholds) -> list[dict]:
    """What each threshold on the top brand score costs: brand precision and recall, and the share called neither."""
    rows = []
    for t in thresholds:
        predicted = apply_threshold(scores, neither_index, float(t))
        precision, count = brand_precision(y, predicted, neither_index)
        rows.append({"threshold": float(t), "brand_precision": precision, "brand_recall": _brand_recall(y, predicted, neither_index),
                     "share_neither": float(np.mean(predicted == neither_index)) if len(y) else float("nan"),
                     "brand_predictions": count})
    return rows
