"""The trainer's metrics: the pure functions live in :mod:`brandlens.metrics`, shared with ``brandlens evaluate``."""

from brandlens.metrics import (EPSILON, accuracy, apply_threshold, brand_precision, choose_threshold,  # noqa: F401
                               confusion_matrix, cross_entropy, evaluate, per_class, softmax)
