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
from trainer.model import (ADAPT_BLOCKS, HeadWeights, build_blocks_model, build_head_model, fit_temperature,
                           make_optimizer, predict_scores, set_seed, weights_of)

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"
PREDICTIONS_FILE = "test_predictions.csv"
TENSORBOARD_DIR = "tensorboard"
TRAIN_CHECK_ROWS = 512


@dataclass
class FitResult:
    weights: HeadWeights            # float32, from the best validation check (temperature set when calibrated)
    history: list[dict]             # one row per check: step, epoch, train/validation accuracy and cross-entropy
    best_step: int
    steps_run: int
    stopped_early: bool
    class_weights: dict[str, float]
    logits_fn: object = None        # rows of a SplitData -> float32 logits [N, C] of the best weights (before temperature)

    def logits(self, split: SplitData) -> np.ndarray:
        if self.logits_fn is None:
            w = self.weights.as_float32()
            return np.asarray(split.x, np.float32) @ w.kernel + w.bias
        return self.logits_fn(split)

    def scores(self, split: SplitData) -> np.ndarray:
        """Softmax scores of the best weights, calibrated by their temperature: what the export serves."""
        if not self.weights.adapts_blocks:
            return predict_scores(self.weights, split.x)
        logits = self.logits(split)
        if self.weights.temperature != 1.0:
            logits = logits / np.float32(self.weights.temperature)
        return ev.softmax(logits.astype(np.float32)).astype(np.float32)


@dataclass(frozen=True)
class Blocks:
    """What ``adapt=blocks`` trains from: the backbone's blocks after ``cut`` (artifact variables) and the transform."""

    network: object
    specs: list
    cut: int
    scale: np.ndarray
    shift: np.ndarray


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


def mix_rows(rng: np.random.Generator, alpha: float, x: np.ndarray, targets: np.ndarray, weights: np.ndarray):
    """Mixup: each row becomes lam * itself + (1 - lam) * another row of the batch, inputs, targets and weights alike,
    lam ~ Beta(alpha, alpha) per row (kept >= 0.5, so a row stays mostly itself). On stored maps this is mixup in
    feature space, the one augmentation that needs no pixels."""
    lam = rng.beta(alpha, alpha, len(x)).astype(np.float32)
    lam = np.maximum(lam, 1 - lam)
    partner = rng.permutation(len(x))

    def mix(a: np.ndarray) -> np.ndarray:
        share = lam.reshape((-1,) + (1,) * (a.ndim - 1))
        return share * a + (1 - share) * a[partner]

    return mix(x), mix(targets), mix(weights)


def first_trained_block(blocks: Blocks, hp: HParams) -> int:
    """``hp.train_from`` (or the cut), checked against the blocks the stored maps can reach."""
    first = blocks.cut if hp.train_from is None else hp.train_from
    if not blocks.cut <= first < len(blocks.specs):
        raise ConfigError(f"train-from {first} must lie between the bottlenecks' cut {blocks.cut} and the last block "
                          f"{len(blocks.specs) - 1}")
    return first


def _inputs(split: SplitData, blocks: Blocks | None) -> np.ndarray:
    if blocks is None:
        return split.x
    if split.maps.ndim != 4:
        raise ConfigError("adapt=blocks needs bottlenecks written with --cut (the maps entering the cut block); "
                          "these hold pooled embeddings only")
    return split.maps


def fit(train: SplitData, validation: SplitData, labels: list[str], hp: HParams, blocks: Blocks | None = None) -> FitResult:
    """Mini-batch training with Keras optimizers; the same data, hyperparameters and seed give the same weights.

    Validation cross-entropy is checked every ``eval_every`` steps; the best
    check's weights are kept and training stops after ``patience`` checks
    without improvement. ``adapt=blocks`` trains the backbone's blocks at
    ``block_learning_rate_scale`` times the head's learning rate, with
    horizontally mirrored maps as augmentation (``mirror_maps``).
    """
    import keras
    import tensorflow as tf

    if hp.adapt == ADAPT_BLOCKS and blocks is None:
        raise ConfigError("adapt=blocks needs the backbone artifact and bottlenecks written with --cut")
    blocks = blocks if hp.adapt == ADAPT_BLOCKS else None
    set_seed(hp.seed)
    rng = np.random.default_rng(hp.seed)
    x_train, x_val = _inputs(train, blocks), _inputs(validation, blocks)
    n, num_classes = len(train), len(labels)
    per_class = class_weight_vector(hp.class_weights, labels, train.y)
    sample_weight = per_class[train.y].astype(np.float32)
    one_hot = np.eye(num_classes, dtype=np.float32)
    steps_per_epoch = math.ceil(n / hp.batch_size)
    max_steps = hp.steps or hp.epochs * steps_per_epoch
    if blocks is None:
        model, names = build_head_model(x_train.shape[1], num_classes, hp.l2, hp.dropout, hp.seed), None
    else:
        model, names = build_blocks_model(blocks.network, blocks.specs, blocks.cut, x_train.shape[1:], blocks.scale,
                                          blocks.shift, num_classes, hp.l2, hp.dropout, hp.seed,
                                          first_trained_block(blocks, hp))
    head_vars = list(model.get_layer("head").trainable_variables)
    head_ids = {id(v) for v in head_vars}
    block_vars = [v for v in model.trainable_variables if id(v) not in head_ids]
    head_opt = make_optimizer(hp.optimizer, hp.learning_rate)
    block_opt = make_optimizer(hp.optimizer, hp.learning_rate * hp.block_learning_rate_scale) if block_vars else None
    smoothing = float(hp.label_smoothing)

    spec = tf.TensorSpec([None, *x_train.shape[1:]], tf.float32)

    @tf.function(input_signature=[spec, tf.TensorSpec([None, num_classes], tf.float32), tf.TensorSpec([None], tf.float32)])
    def train_step(xb, targets, wb):
        with tf.GradientTape() as tape:
            logits = model(xb, training=True)
            per_row = keras.losses.categorical_crossentropy(targets, logits, from_logits=True, label_smoothing=smoothing)
            loss = tf.reduce_sum(wb * per_row) / tf.cast(tf.shape(xb)[0], tf.float32)
            if model.losses:
                loss = loss + tf.add_n(model.losses)
        grads = tape.gradient(loss, head_vars + block_vars)
        head_opt.apply_gradients(zip(grads[:len(head_vars)], head_vars))
        if block_opt is not None:
            block_opt.apply_gradients(zip(grads[len(head_vars):], block_vars))
        return loss

    @tf.function(input_signature=[spec])
    def infer(xb):
        return model(xb, training=False)

    def logits_of(x: np.ndarray) -> np.ndarray:
        parts = [infer(tf.constant(np.asarray(x[i:i + 256], np.float32))).numpy() for i in range(0, len(x), 256)]
        return np.concatenate(parts) if parts else np.zeros((0, num_classes), np.float32)

    history: list[dict] = []
    best, best_ce, best_step, bad_checks = model.get_weights(), math.inf, 0, 0
    order, position, step, stopped_early = rng.permutation(n), 0, 0, False

    # Train figures on a fixed sample: with adapted blocks a pass over all training maps per check would cost more
    # than the steps between checks.
    train_rows = np.sort(rng.permutation(n)[:TRAIN_CHECK_ROWS]) if blocks is not None and n > TRAIN_CHECK_ROWS else np.arange(n)

    def record() -> None:
        nonlocal best, best_ce, best_step, bad_checks
        row, logits = {"step": step, "epoch": step / steps_per_epoch}, {}
        for name, x, y in (("train", x_train[train_rows], train.y[train_rows]), ("validation", x_val, validation.y)):
            logits[name] = logits_of(x)
            scores = ev.softmax(logits[name])
            row[f"{name}_accuracy"] = ev.accuracy(scores.argmax(axis=1), y)
            row[f"{name}_cross_entropy"] = ev.cross_entropy(scores, y)
        if hp.check_calibrated:
            t = fit_temperature(logits["validation"], validation.y)
            row["validation_calibrated_cross_entropy"] = ev.cross_entropy(ev.softmax(logits["validation"] / np.float32(t)),
                                                                          validation.y)
        history.append(row)
        checked = row["validation_calibrated_cross_entropy" if hp.check_calibrated else "validation_cross_entropy"]
        if checked < best_ce:
            best, best_ce, best_step, bad_checks = model.get_weights(), checked, step, 0
        else:
            bad_checks += 1

    record()
    while step < max_steps:
        if position >= n:
            order, position = rng.permutation(n), 0
        batch = order[position:position + hp.batch_size]
        position += hp.batch_size
        xb = np.asarray(x_train[batch], np.float32)
        if blocks is not None and hp.mirror_maps:
            mirrored = rng.random(len(batch)) < 0.5
            xb[mirrored] = xb[mirrored, :, ::-1]
        targets, wb = one_hot[train.y[batch]], sample_weight[batch]
        if hp.mixup:
            xb, targets, wb = mix_rows(rng, hp.mixup, xb, targets, wb)
        train_step(tf.constant(xb), tf.constant(targets), tf.constant(wb))
        step += 1
        if step % hp.eval_every == 0 or step == max_steps:
            record()
            if hp.patience and bad_checks >= hp.patience:
                stopped_early = step < max_steps
                break
    model.set_weights(best)
    weights = weights_of(model, names)
    logits_fn = None if blocks is None else (lambda split: logits_of(_inputs(split, blocks)))
    if hp.calibrate:
        val_logits = logits_of(x_val) if blocks is not None else np.asarray(x_val, np.float32) @ weights.kernel + weights.bias
        weights.temperature = fit_temperature(val_logits, validation.y)
    log.info("trained %s for %d steps (best validation cross-entropy %.4f at step %d%s; temperature %.3f)",
             "blocks %d.. + head" % first_trained_block(blocks, hp) if blocks else "the head", step, best_ce, best_step,
             ", stopped early" if stopped_early else "", weights.temperature)
    return FitResult(weights, history, best_step, step, stopped_early, dict(zip(labels, map(float, per_class))), logits_fn)


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


def blocks_for(data: BottleneckData, hp: HParams, artifact_root) -> Blocks | None:
    """The backbone's blocks after the data's cut, from the artifact, when ``hp`` adapts them."""
    if hp.adapt != ADAPT_BLOCKS:
        return None
    if data.cut is None:
        raise ConfigError(f"adapt=blocks needs bottlenecks written with --cut; {data.root} holds pooled embeddings only "
                          "(rerun 'brandlens bottlenecks' with --cut N)")
    from brandlens.backbones.artifact import load_backbone
    from trainer.data import locate_artifact

    backbone = load_backbone(locate_artifact(data.fingerprint, artifact_root))
    return Blocks(backbone.network, backbone.block_specs, backbone.check_cut(data.cut), data.scale, data.shift)


def train_and_evaluate(data: BottleneckData, hp: HParams, target_precision: float | None = None,
                       blocks: Blocks | None = None, fitted: FitResult | None = None,
                       threshold: dict | None = None) -> RunResult:
    """Fit (unless ``fitted``, the same run done already), pick the threshold on validation, then score test once.

    ``threshold``: one chosen already (the search's, on cross-validated scores), used instead.
    """
    if target_precision is not None and data.neither_label is None:
        raise ConfigError("--target-precision needs an open world (a 'neither' class in the data); this data is closed world")
    result = fitted or fit(data.splits["train"], data.splits["validation"], data.labels, hp, blocks)
    validation = data.splits["validation"]
    result_scores = {"validation": result.scores(validation)}
    if threshold is None and target_precision is not None:
        threshold = {**ev.choose_threshold(result_scores["validation"], validation.y, data.neither_index, target_precision),
                     "chosen_on": f"validation ({len(validation)} images)"}
    if threshold is not None and not threshold["reached"]:
        log.warning("no threshold reaches brand precision %.3f on %s; using %.4f (precision %.3f)",
                    threshold["target_precision"], threshold["chosen_on"], threshold["threshold"], threshold["precision"])
    run = RunResult(hp, result, threshold, result_scores)
    test = data.splits["test"]
    run.scores["test"] = result.scores(test)
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


def run_training(config: TrainConfig, data: BottleneckData | None = None, fitted: FitResult | None = None,
                 threshold: dict | None = None) -> dict:
    """The ``brandlens train`` command: returns what it wrote into metrics.json.

    ``fitted``: the search's own fit of these hyperparameters on this data (same seed, so the same weights),
    which is then not trained again. ``threshold``: the search's, chosen on cross-validated scores.
    """
    from trainer import report

    started = time.time()
    if data is None:
        data = load_bottlenecks(config.bottlenecks, config.neither_label)
    artifact = None
    if config.export:
        from trainer.data import locate_artifact

        artifact = locate_artifact(data.fingerprint, config.artifact_root)  # fail before training, not after
    _prepare_output(config.output, config.overwrite)
    run = train_and_evaluate(data, config.hparams, config.target_precision,
                             None if fitted else blocks_for(data, config.hparams, config.artifact_root), fitted, threshold)
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
    report.write_all(output, data, run, config.image_root, artifact)
    if config.export:
        from trainer.export import export_model

        card = export_model(config, data, run, metrics)
        metrics["version_id"] = card["version_id"]
    (output / METRICS_FILE).write_text(json.dumps(metrics, indent=2, sort_keys=True))
    test = metrics["test"]
    log.info("test accuracy %.4f, cross-entropy %.4f (%d images) in %.1f s", test["accuracy"], test["cross_entropy"],
             test["count"], time.time() - started)
    return metrics
