"""Fit the head with early stopping, evaluate once on test, write everything a person needs.

``fit`` and ``train_and_evaluate`` are numpy only (the search calls them many
times); ``run_training`` adds the files: metrics, plots, TensorBoard logs, the
error report and the export.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from brandlens.errors import ConfigError
from trainer import evaluate as ev
from trainer.config import HParams, TrainConfig, parse_class_weights
from trainer.data import BottleneckData, SplitData, load_bottlenecks
from trainer.model import HeadWeights, Optimizer, loss_and_gradients, predict_scores, zeros

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"
PREDICTIONS_FILE = "test_predictions.csv"
TENSORBOARD_DIR = "tensorboard"


@dataclass
class FitResult:
    weights: HeadWeights            # float32, from the best validation check
    history: list[dict]             # one row per check: step, epoch, train/validation accuracy and cross-entropy
    best_step: int
    steps_run: int
    stopped_early: bool
    class_weights: dict[str, float]


def class_weight_vector(spec: str, labels: list[str], y: np.ndarray) -> np.ndarray:
    parsed = parse_class_weights(spec)
    if parsed == "none":
        return np.ones(len(labels))
    if parsed == "balanced":
        counts = np.bincount(y, minlength=len(labels)).astype(np.float64)
        return np.where(counts > 0, len(y) / (len(labels) * np.maximum(counts, 1)), 0.0)
    unknown = sorted(set(parsed) - set(labels))
    if unknown:
        raise ConfigError(f"class weights name unknown label(s) {unknown}; the labels are {labels}")
    return np.array([parsed.get(label, 1.0) for label in labels])


def _check(weights: HeadWeights, split: SplitData) -> tuple[float, float]:
    scores = predict_scores(weights, split.x)
    return ev.accuracy(scores.argmax(axis=1), split.y), ev.cross_entropy(scores, split.y)


def fit(train: SplitData, validation: SplitData, labels: list[str], hp: HParams) -> FitResult:
    """Mini-batch training; the same data, hyperparameters and seed give the same weights."""
    rng = np.random.default_rng(hp.seed)
    x = train.x.astype(np.float64)
    n = len(train)
    per_class = class_weight_vector(hp.class_weights, labels, train.y)
    sample_weight = per_class[train.y]
    steps_per_epoch = math.ceil(n / hp.batch_size)
    max_steps = hp.steps or hp.epochs * steps_per_epoch
    weights = zeros(x.shape[1], len(labels))
    optimizer = Optimizer(hp.optimizer, hp.learning_rate, weights)
    history: list[dict] = []
    best, best_ce, best_step, bad_checks = weights.as_float32(), math.inf, 0, 0
    order, position = rng.permutation(n), 0
    stopped_early = False
    step = 0

    def record() -> None:
        nonlocal best, best_ce, best_step, bad_checks
        current = weights.as_float32()
        train_acc, train_ce = _check(current, train)
        val_acc, val_ce = _check(current, validation)
        history.append({"step": step, "epoch": step / steps_per_epoch, "train_accuracy": train_acc,
                        "train_cross_entropy": train_ce, "validation_accuracy": val_acc, "validation_cross_entropy": val_ce})
        if val_ce < best_ce:
            best, best_ce, best_step, bad_checks = current, val_ce, step, 0
        else:
            bad_checks += 1

    record()
    while step < max_steps:
        if position >= n:
            order, position = rng.permutation(n), 0
        batch = order[position:position + hp.batch_size]
        position += hp.batch_size
        xb = x[batch]
        if hp.dropout:
            xb = xb * (rng.random(xb.shape) >= hp.dropout) / (1.0 - hp.dropout)
        _, grads = loss_and_gradients(weights, xb, train.y[batch], sample_weight[batch], hp.l2, hp.label_smoothing)
        optimizer.apply(weights, grads)
        step += 1
        if step % hp.eval_every == 0 or step == max_steps:
            record()
            if hp.patience and bad_checks >= hp.patience:
                stopped_early = step < max_steps
                break
    log.info("trained %d steps (best validation cross-entropy %.4f at step %d%s)", step, best_ce, best_step,
             ", stopped early" if stopped_early else "")
    return FitResult(best, history, best_step, step, stopped_early, dict(zip(labels, map(float, per_class))))


@dataclass
class RunResult:
    hparams: HParams
    fit: FitResult
    threshold: dict | None                    # choose_threshold's answer, or None
    scores: dict[str, np.ndarray] = field(default_factory=dict)   # validation and test
    metrics: dict[str, dict] = field(default_factory=dict)

    @property
    def threshold_value(self) -> float | None:
        return None if self.threshold is None else self.threshold["threshold"]


def train_and_evaluate(data: BottleneckData, hp: HParams, target_precision: float | None = None) -> RunResult:
    """Fit, pick the threshold on validation, then score test once with everything fixed."""
    if target_precision is not None and data.neither_label is None:
        raise ConfigError("--target-precision needs an open world (a 'neither' class in the data); this data is closed world")
    result = fit(data.splits["train"], data.splits["validation"], data.labels, hp)
    validation = data.splits["validation"]
    result_scores = {"validation": predict_scores(result.weights, validation.x)}
    threshold = None
    if target_precision is not None:
        threshold = ev.choose_threshold(result_scores["validation"], validation.y, data.neither_index, target_precision)
        if not threshold["reached"]:
            log.warning("no threshold reaches brand precision %.3f on validation; using %.4f (precision %.3f)",
                        target_precision, threshold["threshold"], threshold["precision"])
    run = RunResult(hp, result, threshold, result_scores)
    test = data.splits["test"]
    run.scores["test"] = predict_scores(result.weights, test.x)
    for split in ("validation", "test"):
        run.metrics[split] = ev.evaluate(run.scores[split], data.splits[split].y, data.labels, data.neither_index,
                                         run.threshold_value)
    return run


def write_tensorboard(history: list[dict], log_dir: Path) -> None:
    """The study's curves: accuracy and cross-entropy per step, train and validation as two runs.

    Written with ``tf.summary.write`` and the scalars plugin's metadata, which is what
    ``tf.summary.scalar`` does, because that one needs the tensorboard package installed.
    """
    import tensorflow as tf
    from tensorflow.core.framework import summary_pb2

    metadata = summary_pb2.SummaryMetadata(plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars"),
                                           data_class=summary_pb2.DATA_CLASS_SCALAR)
    for run in ("train", "validation"):
        writer = tf.summary.create_file_writer(str(log_dir / run))
        with writer.as_default():
            for row in history:
                for metric in ("accuracy", "cross_entropy"):
                    tf.summary.write(metric, tf.constant(row[f"{run}_{metric}"], tf.float32), step=row["step"], metadata=metadata)
        writer.close()


def write_predictions(path: Path, data: BottleneckData, scores: np.ndarray, threshold: float | None) -> None:
    """Every test image's label, answer and scores (9 significant digits: exact float32)."""
    test = data.splits["test"]
    predicted = ev.apply_threshold(scores, data.neither_index, threshold)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["uri", "content_hash", "label", "predicted", "confidence"] + [f"score:{lab}" for lab in data.labels])
        for i in range(len(test)):
            writer.writerow([test.uri[i], test.content_hash[i], data.labels[test.y[i]], data.labels[predicted[i]],
                             f"{scores[i, predicted[i]]:.9g}"] + [f"{s:.9g}" for s in scores[i]])


def read_predictions(path: Path) -> tuple[list[dict], list[str]]:
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    labels = [k.split(":", 1)[1] for k in (rows[0].keys() if rows else []) if k.startswith("score:")]
    return rows, labels


def _prepare_output(output: Path, overwrite: bool) -> None:
    if output.exists() and any(output.iterdir()):
        if not overwrite:
            raise ConfigError(f"output folder {output} is not empty; choose another or pass --overwrite")
        shutil.rmtree(output)
    output.mkdir(parents=True, exist_ok=True)


def run_training(config: TrainConfig, data: BottleneckData | None = None) -> dict:
    """The ``brandlens train`` command: returns what it wrote into metrics.json."""
    from trainer import report

    started = time.time()
    if data is None:
        data = load_bottlenecks(config.bottlenecks, config.neither_label)
    if config.export:
        from trainer.data import locate_artifact

        locate_artifact(data.fingerprint, config.artifact_root)  # fail before training, not after
    _prepare_output(config.output, config.overwrite)
    run = train_and_evaluate(data, config.hparams, config.target_precision)
    metrics = {
        "labels": data.labels,
        "neither_label": data.neither_label,
        "classification": data.classification,
        "threshold": run.threshold,
        "best_step": run.fit.best_step,
        "steps_run": run.fit.steps_run,
        "stopped_early": run.fit.stopped_early,
        "class_weights": run.fit.class_weights,
        "validation": run.metrics["validation"],
        "test": run.metrics["test"],
        "history": run.fit.history,
    }
    output = config.output
    write_tensorboard(run.fit.history, output / TENSORBOARD_DIR)
    write_predictions(output / PREDICTIONS_FILE, data, run.scores["test"], run.threshold_value)
    report.write_all(output, data, run, config.image_root)
    if config.export:
        from trainer.export import export_model

        card = export_model(config, data, run, metrics)
        metrics["version_id"] = card["version_id"]
    (output / METRICS_FILE).write_text(json.dumps(metrics, indent=2, sort_keys=True))
    test = metrics["test"]
    log.info("test accuracy %.4f, cross-entropy %.4f (%d images) in %.1f s", test["accuracy"], test["cross_entropy"],
             test["count"], time.time() - started)
    return metrics
