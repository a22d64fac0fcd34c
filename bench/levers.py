"""Lever study: which features and heads move validation (and test) accuracy.

Fast on purpose: one real bottleneck job per (manifest, feature configuration), reused
through the embedding cache and the finished outputs, then many heads trained in-process
with the trainer's own ``train_and_evaluate`` (numpy). Every choice is made on
validation; test is reported beside it, never used to choose.

    .venv/bin/python -m bench.levers --levers resize,augment --heads logistic,label_smoothing --manifests shoes-binary
    .venv/bin/python -m bench.levers --manifests flickrlogos27 --levers logos --target-precision 0.95 --multi-crop 2

Results are appended to ``<work>/levers.jsonl`` and collected into ``bench/levers-results.json``,
which ``bench.accuracy`` cites in RESULTS-accuracy.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from bench.common import DEFAULT_WORK_DIR, GOALS, MANIFESTS, Features, HeadSearch, run_bottlenecks

log = logging.getLogger("bench.levers")
RESULTS_FILE = Path(__file__).with_name("levers-results.json")

BASE = Features()
FEATURE_LEVERS = {
    "resize": [BASE, Features(crop_fraction=1.0), Features(resize_mode="squash"), Features(resize_mode="pad")],
    "augment": [Features(augment=2), Features(augment=4)],
    "logos": [Features(logo_crops=True), Features(augment=2, logo_crops=True),
              Features(resize_mode="squash", logo_crops=True), Features(resize_mode="squash", augment=2, logo_crops=True)],
    "backbones": [Features("efficientnet_lite0", "squash"), Features("efficientnet_lite1", "squash")],
}
HEAD_LEVERS = {
    "logistic": HeadSearch(),
    "balanced": HeadSearch(extra={"class_weights": "balanced"}),
    "label_smoothing": HeadSearch(extra={"label_smoothing": 0.1}),

}


def select(runs: list[dict]) -> dict:
    """The run with the lowest validation cross-entropy (the trainer's search rule)."""
    return min(runs, key=lambda r: (r["validation_cross_entropy"], -r["validation_accuracy"]))


def search_heads(data, search: HeadSearch) -> dict:
    from trainer.train import train_and_evaluate

    runs = []
    for hp in search.trials():
        run = train_and_evaluate(data, hp, search.target_precision if data.neither_label else None)
        v, t = run.metrics["validation"], run.metrics["test"]
        runs.append({"validation_accuracy": v["accuracy"], "validation_cross_entropy": v["cross_entropy"],
                     "test_accuracy": t["accuracy"], "test_cross_entropy": t["cross_entropy"],
                     "test_argmax_accuracy": t["argmax_accuracy"], "steps": run.fit.best_step,
                     "hparams": hp.to_dict(), "_run": run})
    best = select(runs)
    return best


def multi_crop(data, run, grid: int, artifact_root: Path | None = None) -> dict:
    """The scoring job's multi-crop rule on validation and test: whole image plus grid x grid tiles,
    the view with the highest brand score answers (``beam_jobs.scoring.rows``)."""
    from beam_jobs.scoring.rows import best_view, views
    from brandlens.backbones.artifact import load_backbone
    from brandlens.config import default_artifact_root
    from brandlens.imaging import decode_image
    from brandlens.preprocess import prepare
    from trainer import evaluate as ev
    from trainer.data import default_image_root, locate_artifact, read_bytes, resolve_uri
    from trainer.model import predict_scores

    backbone = load_backbone(locate_artifact(data.fingerprint, artifact_root or default_artifact_root()))
    fp = data.fingerprint
    root = default_image_root(data)
    brand_mask = np.array([label != data.neither_label for label in data.labels])
    out = {}
    for split in ("validation", "test"):
        part = data.splits[split]
        chosen = []
        for uri in part.uri:
            rgb = decode_image(read_bytes(resolve_uri(uri, root)))
            prepared = np.stack([backbone.prepare(v) if i == 0 else prepare(v, fp.input_size, 1.0, fp.resize_mode)
                                 for i, v in enumerate(views(rgb, grid))])
            scores = predict_scores(run.fit.weights, backbone.embed(prepared) * data.scale + data.shift)
            chosen.append(scores[best_view(scores, brand_mask)])
        scores = np.stack(chosen)
        metrics = ev.evaluate(scores, part.y, data.labels, data.neither_index, run.threshold_value)
        out[split] = {"accuracy": metrics["accuracy"], "cross_entropy": metrics["cross_entropy"]}
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.levers", description=__doc__.split("\n\n")[0])
    parser.add_argument("--work-dir", type=Path, default=DEFAULT_WORK_DIR)
    parser.add_argument("--manifests", default=",".join(MANIFESTS))
    parser.add_argument("--levers", default="resize", help=f"feature levers: {', '.join(FEATURE_LEVERS)} (comma-separated)")
    parser.add_argument("--heads", default="logistic", help=f"head levers: {', '.join(HEAD_LEVERS)}")
    parser.add_argument("--target-precision", type=float, default=None, help="also try this open-world threshold")
    parser.add_argument("--multi-crop", default="", help="grids to try at test time on the best head, e.g. 2,3")
    parser.add_argument("--features", default="", help="only these feature tags (comma-separated)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    for noisy in ("apache_beam", "absl", "tensorflow"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    logging.getLogger("trainer").setLevel(logging.WARNING)

    from trainer.data import load_bottlenecks

    work = args.work_dir
    work.mkdir(parents=True, exist_ok=True)
    features = [f for lever in args.levers.split(",") if lever for f in FEATURE_LEVERS[lever]]
    if args.features:
        features = [f for f in features if f.tag in args.features.split(",")]
    heads = {name: HEAD_LEVERS[name] for name in args.heads.split(",") if name}
    if args.target_precision:
        heads.update({f"{name}+tp{args.target_precision:g}": replace(h, target_precision=args.target_precision)
                      for name, h in list(heads.items())})
    grids = [int(g) for g in args.multi_crop.split(",") if g]
    for name in args.manifests.split(","):
        for feat in features:
            if feat.logo_crops and name != "flickrlogos27":
                continue
            started = time.time()
            data = load_bottlenecks(run_bottlenecks(work, name, feat))
            for head_name, search in heads.items():
                if search.target_precision and not data.neither_label:
                    continue
                t0 = time.time()
                best = search_heads(data, search)
                row = {"manifest": name, "features": feat.tag, "describe": feat.describe(), "head": head_name,
                       **{k: v for k, v in best.items() if not k.startswith("_")}, "goal": GOALS.get(name),
                       "train_rows": len(data.splits["train"]), "seconds": round(time.time() - t0, 1)}
                for grid in grids:
                    mc = multi_crop(data, best["_run"], grid)
                    row[f"multi_crop_{grid}"] = mc
                print(json.dumps({k: row[k] for k in ("manifest", "features", "head", "validation_accuracy", "test_accuracy")}
                                 | {k: v for k, v in row.items() if k.startswith("multi_crop")}), flush=True)
                with open(work / "levers.jsonl", "a") as f:
                    f.write(json.dumps(row) + "\n")
            log.info("%s %s done in %.0f s", name, feat.tag, time.time() - started)
    collect(work)
    return 0


def collect(work: Path) -> list[dict]:
    """The latest row per (manifest, features, head) into bench/levers-results.json."""
    rows: dict = {}
    path = work / "levers.jsonl"
    for line in path.read_text().splitlines() if path.is_file() else []:
        row = json.loads(line)
        rows[(row["manifest"], row["features"], row["head"])] = row
    ordered = sorted(rows.values(), key=lambda r: (r["manifest"], r["features"], r["head"]))
    RESULTS_FILE.write_text(json.dumps(ordered, indent=1) + "\n")
    return ordered


if __name__ == "__main__":
    raise SystemExit(main())
