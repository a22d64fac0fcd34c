"""Hyperparameter search: many heads on the same bottlenecks, ranked on validation.

The table mirrors the study's (run, test accuracy, steps, learning rate,
optimizer, data, classification). Test figures are reported for every run but
never used to rank; the best run by validation is retrained (same seed, so the
same weights) into ``best/`` with the full output and export.
"""

from __future__ import annotations

import csv
import dataclasses
import itertools
import json
import logging
import random
from pathlib import Path

from brandlens.errors import ConfigError
from trainer.config import SELECT_BY, HParams, SearchConfig
from trainer.data import load_bottlenecks
from trainer.train import run_training, train_and_evaluate

log = logging.getLogger(__name__)

TABLE_CSV = "search.csv"
TABLE_MD = "search.md"
BEST_DIR = "best"
COLUMNS = ("rank", "run", "test_accuracy", "test_cross_entropy", "validation_accuracy", "validation_cross_entropy",
           "steps", "learning_rate", "optimizer", "batch_size", "l2", "dropout", "class_weights", "data", "classification")
_FIELDS = {f.name: f for f in dataclasses.fields(HParams)}


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
                if name == "steps" and raw.lower() == "none":
                    parsed.append(None)
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
    """Every grid combination, or ``random_count`` of them drawn without replacement."""
    names = sorted(grid)
    combos = [dict(zip(names, values)) for values in itertools.product(*(grid[n] for n in names))]
    if random_count is not None and random_count < len(combos):
        combos = random.Random(seed).sample(combos, random_count)
    return [base.replace(**combo) for combo in combos]


def _rank_key(row: dict, select_by: str):
    if select_by == "accuracy":
        return (-row["validation_accuracy"], row["validation_cross_entropy"], row["run"])
    return (row["validation_cross_entropy"], -row["validation_accuracy"], row["run"])


def run_search(config: SearchConfig) -> list[dict]:
    """Train every candidate, write search.csv / search.md ranked on validation, export the best."""
    if config.select_by not in SELECT_BY:
        raise ConfigError(f"select-by must be one of {SELECT_BY}")
    tc = config.train
    output = Path(tc.output)
    if output.exists() and any(output.iterdir()) and not tc.overwrite:
        raise ConfigError(f"output folder {output} is not empty; choose another or pass --overwrite")
    data = load_bottlenecks(tc.bottlenecks, tc.neither_label)
    trials = candidates(parse_grid(list(config.grid)), tc.hparams, config.random_count, tc.hparams.seed)
    rows = []
    for i, hp in enumerate(trials, 1):
        run = train_and_evaluate(data, hp, tc.target_precision)
        v, t = run.metrics["validation"], run.metrics["test"]
        rows.append({"run": f"r{i:03d}", "test_accuracy": t["accuracy"], "test_cross_entropy": t["cross_entropy"],
                     "validation_accuracy": v["accuracy"], "validation_cross_entropy": v["cross_entropy"],
                     "steps": run.fit.best_step, "learning_rate": hp.learning_rate, "optimizer": hp.optimizer,
                     "batch_size": hp.batch_size, "l2": hp.l2, "dropout": hp.dropout, "class_weights": hp.class_weights,
                     "data": Path(data.root).name, "classification": data.classification, "hparams": hp})
        log.info("run %d/%d: validation cross-entropy %.4f, accuracy %.4f", i, len(trials), v["cross_entropy"], v["accuracy"])
    rows.sort(key=lambda r: _rank_key(r, config.select_by))
    for rank, row in enumerate(rows, 1):
        row["rank"] = rank
    best = rows[0]
    if tc.export:
        run_training(dataclasses.replace(tc, output=output / BEST_DIR, hparams=best["hparams"], overwrite=True), data)
    output.mkdir(parents=True, exist_ok=True)
    write_tables(output, rows, config.select_by)
    (output / "best_hparams.json").write_text(json.dumps({"run": best["run"], **best["hparams"].to_dict()}, indent=2))
    return rows


def _cell(value) -> str:
    return f"{value:.4f}" if isinstance(value, float) and not value.is_integer() else str(value)


def write_tables(output: Path, rows: list[dict], select_by: str) -> None:
    with open(output / TABLE_CSV, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(COLUMNS)
        for row in rows:
            writer.writerow([row[c] for c in COLUMNS])
    lines = [f"Runs ranked by validation {select_by.replace('_', '-')}; test figures are reported, never used to select.", "",
             "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(_cell(row[c]) for c in COLUMNS) + " |" for row in rows]
    (output / TABLE_MD).write_text("\n".join(lines) + "\n")
