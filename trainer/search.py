"""Hyperparameter search: many heads on the same bottlenecks, ranked on validation.

The table mirrors the study's (run, accuracy, steps, learning rate, optimizer,
data, classification) with validation (and CV) figures only: test is looked at
once, for the chosen run, which is retrained (same seed, so the same weights)
into ``best/`` with the full output, its test metrics and the export.

With ``cv=K`` (``--cv K``) the runs are ranked instead by K-fold
cross-validation over the train and validation splits' original images: every
distinct content hash gets one fold (``assign_folds``), so all variants of an
image land together; augmented variants only ever train, and each original is
scored exactly once per grid point (``cv_folds``). Each fold's head stops early
on its held-out fold, as the final run does on validation. Test is never used to
select; the chosen hyperparameters are then trained and exported exactly as
without ``cv``.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import itertools
import json
import logging
import random
from pathlib import Path

import numpy as np

from brandlens.errors import ConfigError
from trainer.config import SELECT_BY, HParams, SearchConfig
from schemas import bottleneck as bn
from trainer import evaluate as ev
from trainer.data import SplitData, load_bottlenecks
from trainer.model import ADAPT_BLOCKS
from trainer.train import blocks_for, fit, run_training

log = logging.getLogger(__name__)

TABLE_CSV = "search.csv"
TABLE_MD = "search.md"
BEST_DIR = "best"
COLUMNS = ("rank", "run", "validation_accuracy", "validation_cross_entropy",
           "steps", "learning_rate", "optimizer", "batch_size", "l2", "dropout", "class_weights", "adapt", "train_from", "data",
           "classification")
CV_COLUMNS = ("cv_accuracy", "cv_accuracy_std", "cv_cross_entropy", "cv_cross_entropy_std")
_FIELDS = {f.name: f for f in dataclasses.fields(HParams)}


def columns(cv: int = 0) -> tuple[str, ...]:
    """The table's columns: the CV figures follow the validation ones when cross-validation ranks the runs."""
    if not cv:
        return COLUMNS
    at = COLUMNS.index("validation_cross_entropy") + 1
    return COLUMNS[:at] + CV_COLUMNS + COLUMNS[at:]


# --- cross-validation folds (pure: no TensorFlow) -------------------------------------------------

def _hash_order(content_hash: str) -> str:
    return hashlib.sha256(content_hash.encode("utf-8")).hexdigest()


def assign_folds(content_hashes, labels, k: int) -> dict[str, int]:
    """One fold in ``0..k-1`` per distinct content hash, from the hashes alone.

    Stratified by label (a hash takes the smallest label among its rows) and
    balanced: within each label the hashes are ordered by sha256 of the content
    hash and dealt round-robin, the deal continuing across labels. The answer
    depends only on the set of (hash, label) pairs, never on row order.
    """
    if k < 2:
        raise ConfigError(f"cross-validation needs at least 2 folds, got {k}")
    label_of: dict[str, object] = {}
    for h, label in zip(content_hashes, labels):
        h = str(h)
        label_of[h] = label if h not in label_of else min(label_of[h], label)
    folds, position = {}, 0
    for label in sorted(set(label_of.values())):
        for h in sorted((h for h, lab in label_of.items() if lab == label), key=lambda h: (_hash_order(h), h)):
            folds[h] = position % k
            position += 1
    return folds


def cv_folds(content_hash, variant, y, k: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(training rows, scored rows) per fold, as index arrays into the given rows.

    A fold scores its originals only; it trains on every row (augmented variants
    included) of the other folds, so no variant of a scored image is trained on.
    """
    content_hash = np.asarray(content_hash).astype(str)
    variant = np.asarray(variant).astype(str)
    original = variant == bn.ORIGINAL_VARIANT
    if int(original.sum()) < k:
        raise ConfigError(f"--cv {k} needs at least {k} original images in train+validation, found {int(original.sum())}")
    # Originals decide a hash's label first, so variant-only hashes cannot reorder the originals' deal.
    fold_of = assign_folds(content_hash[original], np.asarray(y)[original], k)
    extra = sorted(set(content_hash[~original]) - set(fold_of))
    fold_of.update({h: int(_hash_order(h), 16) % k for h in extra})
    fold = np.array([fold_of[h] for h in content_hash], np.int64)
    return [(np.flatnonzero(fold != i), np.flatnonzero((fold == i) & original)) for i in range(k)]


def pool_splits(*splits: SplitData) -> SplitData:
    """Rows of several splits as one (the CV pool)."""
    return SplitData(*(np.concatenate([getattr(s, f.name) for s in splits]) for f in dataclasses.fields(SplitData)))


def cross_validate(pool: SplitData, labels: list[str], hp: HParams,
                   folds: list[tuple[np.ndarray, np.ndarray]], blocks=None, out_of_fold: dict | None = None) -> dict:
    """Mean and (population) standard deviation over folds of the held-out accuracy and cross-entropy.

    ``out_of_fold``, when given, receives each scored row's held-out scores
    (``{"rows": index array, "scores": [N, C]}``): what thresholds are chosen on.
    """
    acc, ce, rows, scored = [], [], [], []
    for train_rows, scored_rows in folds:
        held = pool.select(scored_rows)
        result = fit(pool.select(train_rows), held, labels, hp, blocks)
        scores = result.scores(held)
        acc.append(ev.accuracy(scores.argmax(axis=1), held.y))
        ce.append(ev.cross_entropy(scores, held.y))
        rows.append(scored_rows)
        scored.append(scores)
    if out_of_fold is not None:
        out_of_fold.update(rows=np.concatenate(rows), scores=np.concatenate(scored))
    return {"cv_accuracy": float(np.mean(acc)), "cv_accuracy_std": float(np.std(acc)),
            "cv_cross_entropy": float(np.mean(ce)), "cv_cross_entropy_std": float(np.std(ce))}


def cv_threshold(row: dict, pool: SplitData, data, target_precision: float | None, k: int) -> dict | None:
    """The brand threshold for ``target_precision`` chosen on a run's out-of-fold scores, with the recall it costs.

    Every train+validation original is scored once by a model that did not train on
    it, so the threshold rests on all of them rather than on the validation split
    alone (a few dozen photos per brand). The answer also gives the out-of-fold brand
    recall without any threshold, so the cost of the target reads off directly.
    """
    if target_precision is None:
        return None
    if data.neither_index is None:
        raise ConfigError("--target-precision needs an open world (a 'neither' class in the data); this data is closed world")
    scores, y = row["out_of_fold"]["scores"], pool.y[row["out_of_fold"]["rows"]]
    threshold = ev.choose_threshold(scores, y, data.neither_index, target_precision)
    argmax = ev.evaluate(scores, y, data.labels, data.neither_index)
    return {**threshold, "chosen_on": f"{k}-fold out-of-fold scores of {len(y)} train+validation originals",
            "brand_recall_without_threshold": argmax.get("brand_recall")}


def parse_grid(specs: list[str]) -> dict[str, list]:
    """``['learning_rate=0.1,0.01', 'optimizer=sgd,adam']`` -> typed value lists per HParams field."""
    grid: dict[str, list] = {}
    for spec in specs:
        name, sep, values = spec.partition("=")
        name = name.strip().replace("-", "_")
        if not sep or name not in _FIELDS or not values.strip():
            raise ConfigError(f"bad --grid {spec!r}: use name=v1,v2,... with a name from {', '.join(_FIELDS)}")
        kind = _FIELDS[name].type
        parsed = []
        for raw in values.split(";" if name == "class_weights" else ","):
            raw = raw.strip()
            try:
                if "None" in str(kind) and raw.lower() == "none":
                    parsed.append(None)
                elif "bool" in str(kind):
                    if raw.lower() not in ("true", "false", "1", "0", "yes", "no"):
                        raise ValueError(raw)
                    parsed.append(raw.lower() in ("true", "1", "yes"))
                elif "float" in str(kind):
                    parsed.append(float(raw))
                elif "int" in str(kind):
                    parsed.append(int(raw))
                else:
                    parsed.append(raw)
            except ValueError as exc:
                raise ConfigError(f"bad value {raw!r} for {name} in --grid {spec!r}") from exc
        grid[name] = parsed
    return grid


def candidates(grid: dict[str, list], base: HParams, random_count: int | None = None, seed: int = 0) -> list[HParams]:
    """Every distinct grid combination, or ``random_count`` of them drawn without replacement.

    Settings that only matter to adapted blocks (``train_from``) are dropped from
    head-only points, so ``adapt=head,blocks`` x ``train_from=16,19`` is three runs.
    """
    names = sorted(grid)
    trials: list[HParams] = []
    for values in itertools.product(*(grid[n] for n in names)):
        hp = base.replace(**dict(zip(names, values)))
        hp = hp if hp.adapt == ADAPT_BLOCKS else hp.replace(train_from=None)
        if hp not in trials:
            trials.append(hp)
    if random_count is not None and random_count < len(trials):
        trials = random.Random(seed).sample(trials, random_count)
    return trials


def _rank_key(row: dict, select_by: str, cv: int = 0):
    prefix = "cv" if cv else "validation"
    if select_by == "accuracy":
        return (-row[f"{prefix}_accuracy"], row[f"{prefix}_cross_entropy"], row["run"])
    return (row[f"{prefix}_cross_entropy"], -row[f"{prefix}_accuracy"], row["run"])


def run_search(config: SearchConfig) -> list[dict]:
    """Train every candidate, write search.csv / search.md ranked on validation, export the best."""
    if config.select_by not in SELECT_BY:
        raise ConfigError(f"select-by must be one of {SELECT_BY}")
    if config.cv < 0 or config.cv == 1:
        raise ConfigError(f"--cv must be 0 (off) or at least 2 folds, got {config.cv}")
    tc = config.train
    output = Path(tc.output)
    if output.exists() and any(output.iterdir()) and not tc.overwrite:
        raise ConfigError(f"output folder {output} is not empty; choose another or pass --overwrite")
    data = load_bottlenecks(tc.bottlenecks, tc.neither_label)
    trials = candidates(parse_grid(list(config.grid)), tc.hparams, config.random_count, tc.hparams.seed)
    pool = folds = None
    if config.cv:
        pool = pool_splits(data.splits["train"], data.splits["validation"])
        folds = cv_folds(pool.content_hash, pool.variant, pool.y, config.cv)
        log.info("%d-fold cross-validation over %d train+validation rows (%d originals scored)", config.cv, len(pool),
                 sum(len(scored) for _, scored in folds))
    rows = []
    blocks_cache: dict = {}
    for i, hp in enumerate(trials, 1):
        if hp.adapt not in blocks_cache:
            blocks_cache[hp.adapt] = blocks_for(data, hp, tc.artifact_root)
        blocks = blocks_cache[hp.adapt]
        result = fit(data.splits["train"], data.splits["validation"], data.labels, hp, blocks)
        validation = data.splits["validation"]
        v = ev.evaluate(result.scores(validation), validation.y, data.labels, data.neither_index)
        rows.append({"run": f"r{i:03d}", "validation_accuracy": v["accuracy"], "validation_cross_entropy": v["cross_entropy"],
                     "steps": result.best_step, "learning_rate": hp.learning_rate, "optimizer": hp.optimizer,
                     "batch_size": hp.batch_size, "l2": hp.l2, "dropout": hp.dropout, "class_weights": hp.class_weights,
                     "adapt": hp.adapt, "train_from": hp.train_from, "data": Path(data.root).name, "classification": data.classification, "hparams": hp,
                     "fit": result})
        log.info("run %d/%d: validation cross-entropy %.4f, accuracy %.4f", i, len(trials), v["cross_entropy"], v["accuracy"])
        if config.cv:
            rows[-1]["out_of_fold"] = {}
            rows[-1].update(cross_validate(pool, data.labels, hp, folds, blocks, rows[-1]["out_of_fold"]))
            log.info("run %d/%d: %d-fold CV cross-entropy %.4f +- %.4f, accuracy %.4f +- %.4f", i, len(trials), config.cv,
                     rows[-1]["cv_cross_entropy"], rows[-1]["cv_cross_entropy_std"], rows[-1]["cv_accuracy"],
                     rows[-1]["cv_accuracy_std"])
    rows.sort(key=lambda r: _rank_key(r, config.select_by, config.cv))
    for rank, row in enumerate(rows, 1):
        row["rank"] = rank
    best = rows[0]
    threshold = cv_threshold(best, pool, data, tc.target_precision, config.cv) if config.cv else None
    chosen = None
    if tc.export:
        chosen = run_training(dataclasses.replace(tc, output=output / BEST_DIR, hparams=best["hparams"], overwrite=True), data,
                              best["fit"], threshold)
    output.mkdir(parents=True, exist_ok=True)
    write_tables(output, rows, config.select_by, config.cv, best["run"], chosen and chosen["test"])
    (output / "best_hparams.json").write_text(json.dumps({"run": best["run"], **best["hparams"].to_dict()}, indent=2))
    return rows


def _cell(value) -> str:
    return f"{value:.4f}" if isinstance(value, float) and not value.is_integer() else str(value)


def write_tables(output: Path, rows: list[dict], select_by: str, cv: int = 0, chosen: str | None = None,
                 chosen_test: dict | None = None) -> None:
    cols = columns(cv)
    with open(output / TABLE_CSV, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(cols)
        for row in rows:
            writer.writerow([row[c] for c in cols])
    ranked_by = (f"mean {cv}-fold cross-validation {select_by.replace('_', '-')} over the train+validation originals "
                 "(std over folds alongside)" if cv else f"validation {select_by.replace('_', '-')}")
    lines = [f"Runs ranked by {ranked_by}; test is looked at once, for the chosen run.", "",
             "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_cell(row[c]) for c in cols) + " |" for row in rows]
    if chosen_test:
        lines += ["", f"Chosen: {chosen}. Its test accuracy {chosen_test['accuracy']:.4f}, cross-entropy "
                      f"{chosen_test['cross_entropy']:.4f} on {chosen_test['count']} images (best/metrics.json)."]
    (output / TABLE_MD).write_text("\n".join(lines) + "\n")
