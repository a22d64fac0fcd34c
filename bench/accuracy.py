"""Accuracy benchmark: the real product, end to end, on the shared real-photo manifests.

For each manifest in ``../shared/data/manifests`` and each backbone: the bottleneck job
(``beam_jobs.bottlenecks.job.run``) -> the trainer's search (``trainer.search.run_search``:
every head ranked on validation cross-entropy, the best retrained, evaluated once on test
and exported with its error report) -> a table in the study's form, per-class figures and
confusion matrices in ``bench/RESULTS-accuracy.md``.

    .venv/bin/python -m bench.accuracy                      # all manifests, the product defaults
    .venv/bin/python -m bench.accuracy --quick --manifests shoes-binary

The bottleneck cache and finished bottleneck outputs in ``--work-dir`` are reused, so a
second run mostly trains heads. Images are read from ``../shared/data``; nothing is copied.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import logging
import platform
import subprocess
import time
from pathlib import Path

from bench.common import DEFAULT_WORK_DIR, GOALS, MANIFESTS, SHARED_DATA, Features, HeadSearch, manifest_path, run_bottlenecks

log = logging.getLogger("bench.accuracy")
RESULTS = Path(__file__).with_name("RESULTS-accuracy.md")
LEVERS = Path(__file__).with_name("levers-results.json")
NOTES = Path(__file__).with_name("accuracy-notes.md")  # findings of the lever study, cited verbatim
STUDY = [  # the 2016 study's reference figures
    {"run": "study", "test_accuracy": 0.974, "data": "Nike vs Altra (Instagram)", "classification": "binary",
     "backbone": "inception_v3", "options": "last layer retrained"},
    {"run": "study", "test_accuracy": 0.886, "data": "Nike / Altra / neither (Instagram)", "classification": "multiclass",
     "backbone": "inception_v3", "options": "last layer retrained"},
]

# What the benchmark runs per manifest beyond the product defaults (the chosen configuration, see
# accuracy-notes.md): logo-box crops where the data has boxes, and for FlickrLogos-27 also a second
# row with the open-world threshold chosen on validation (the product's --target-precision).
# Since issue 11: every data set gets squashed whole images and the maps entering block 16 of Lite2 (9x9x208,
# the same size as block 19's), and the search chooses on validation between the head alone, blocks 19-20 + head
# (16-18 frozen) and blocks 16-20 + head (one recipe each: a blocks fit costs minutes on this 2-core machine).
# shoes-open is shoes-multiclass plus other brands' shoes relabelled 'neither' (bench.common.COMBINED): the model
# a brand team would deploy.
FEATURES = {"resize_mode": "squash", "crop_fraction": 1.0, "cut": 16}
SEARCH_GRID = ("adapt=head,blocks", "train_from=16,19", "l2=0.01", "learning_rate=0.001")
SEARCH_EXTRA = {"patience": 5, "check_calibrated": True}  # calibrated checks: accuracy-notes.md, sixth round
PLAN: dict[str, dict] = {  # augmented variants where held-out data chose them (accuracy-notes.md, fourth round)
    "shoes-binary": {"augment": 2},
    "shoes-multiclass": {},
    "shoes-open": {},
    "flickrlogos27": {"logo_crops": True, "background_crops": True},
}
QUICK_GRID = ("l2=0.01", "learning_rate=0.001")
JSON_RESULTS = Path(__file__).with_name("results") / "accuracy.json"


def plan_features(manifest: str, backbone: str, args) -> Features:
    plan = PLAN.get(manifest, {})
    default = dict(FEATURES) if backbone.startswith("efficientnet_lite") else {}
    return Features(backbone=backbone, resize_mode=args.resize_mode or default.get("resize_mode"),
                    crop_fraction=args.crop_fraction if args.crop_fraction is not None else default.get("crop_fraction"),
                    augment=plan.get("augment", 0) if args.augment is None else args.augment,
                    logo_crops=plan.get("logo_crops", False) and not args.no_logo_crops,
                    background_crops=plan.get("background_crops", False) and not args.quick,
                    cut=None if args.quick else default.get("cut"), tiles=plan.get("tiles", 0) if args.tiles is None else args.tiles)


def run_one(work: Path, manifest: str, features: Features, search: HeadSearch, export: bool) -> dict:
    from trainer.config import HParams, SearchConfig, TrainConfig
    from trainer.data import load_bottlenecks
    from trainer.search import BEST_DIR, run_search

    started = time.time()
    bottlenecks = run_bottlenecks(work, manifest, features)
    embedded = time.time()
    data = load_bottlenecks(bottlenecks)
    target = search.target_precision if data.neither_label else None
    output = work / "models" / features.tag / (manifest + (f"-tp{target:g}" if target else ""))
    train = TrainConfig(bottlenecks, output, HParams(**search.extra), target_precision=target,
                        image_root=SHARED_DATA, export=export, verify_images=4, overwrite=True)
    rows = run_search(SearchConfig(train, search.grid))
    best = rows[0]
    if export:
        metrics = json.loads((output / BEST_DIR / "metrics.json").read_text())
    else:  # the best run again, without files
        from trainer.train import train_and_evaluate

        run = train_and_evaluate(data, best["hparams"], target)
        metrics = {"labels": data.labels, "test": run.metrics["test"], "validation": run.metrics["validation"],
                   "best_step": run.fit.best_step, "threshold": run.threshold}
    summary = json.loads((bottlenecks / "summary.json").read_text())
    return {
        "manifest": manifest, "features": features, "hparams": best["hparams"], "metrics": metrics,
        "runs": len(rows), "output": str(output), "errors_html": str(output / BEST_DIR / "errors.html") if export else None,
        "backbone_version": summary["backbone"]["version"], "classification": data.classification,
        "train_examples": len(data.splits["train"]), "target_precision": target,
        "seconds": {"bottlenecks": round(embedded - started, 1), "trainer": round(time.time() - embedded, 1),
                    "cnn_images": summary["counts"].get("cnn_images", 0)},
        "rates": rates(output / BEST_DIR / "test_predictions.csv", data.neither_label) if export else {},
    }


def rates(predictions_csv: Path, neither: str | None) -> dict:
    """Brand accuracy, false alarms, 'neither' share and calibration from the chosen model's test predictions.

    Rows whose uri lies under ``other-brand-shoes/`` are also reported on their own: the share of other
    brands' shoes called 'neither', and the brand recall on the rest.
    """
    import csv

    import numpy as np

    from brandlens.metrics import reliability

    with open(predictions_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    labels = [k.split(":", 1)[1] for k in rows[0] if k.startswith("score:")]
    scores = np.array([[float(r[f"score:{lab}"]) for lab in labels] for r in rows])
    y = np.array([labels.index(r["label"]) for r in rows])
    out = {"ece": reliability(scores, y, bins=15)["ece"]}  # 15 equal-width bins, as in accuracy.json

    def share(selected, test) -> float | None:
        chosen = [r for r in rows if selected(r)]
        return round(sum(map(test, chosen)) / len(chosen), 4) if chosen else None

    other = lambda r: "other-brand-shoes/" in r["uri"]  # noqa: E731
    out["test_brand_accuracy"] = share(lambda r: r["label"] != neither, lambda r: r["predicted"] == r["label"])
    if neither:
        out["test_false_alarm_rate"] = share(lambda r: r["label"] == neither and not other(r), lambda r: r["predicted"] != neither)
        out["test_neither_rate"] = share(lambda r: True, lambda r: r["predicted"] == neither)
        if any(map(other, rows)):
            out["other_brand_neither_rate"] = share(other, lambda r: r["predicted"] == neither)
            out["other_brand_count"] = sum(map(other, rows))
            out["other_brand_calls"] = {lab: sum(1 for r in rows if other(r) and r["predicted"] == lab) for lab in labels}
    return out


def json_results(results: list[dict], environment: dict) -> dict:
    """``bench/results/accuracy.json``: one entry per data set (and other-brand-shoes from the shoes-open model)."""
    datasets = {}
    for r in results:
        test, rt = r["metrics"]["test"], r.get("rates", {})
        key = r["manifest"] + (f"@precision{r['target_precision']:g}" if r.get("target_precision") else "")
        datasets[key] = {
            "test_accuracy": test["accuracy"], "test_brand_accuracy": rt.get("test_brand_accuracy"),
            "test_false_alarm_rate": rt.get("test_false_alarm_rate"), "test_neither_rate": rt.get("test_neither_rate"),
            "macro_f1": test.get("macro_f1"), "ece": rt.get("ece"), "train_seconds": r["seconds"]["trainer"],
            "adapt": r["hparams"].adapt, "train_from": r["hparams"].train_from, "test_count": test["count"], "command": environment["command"]}
        if rt.get("other_brand_neither_rate") is not None:
            datasets["other-brand-shoes"] = {
                "test_accuracy": rt["other_brand_neither_rate"], "test_brand_accuracy": None, "test_false_alarm_rate":
                round(1 - rt["other_brand_neither_rate"], 4), "test_neither_rate": rt["other_brand_neither_rate"],
                "macro_f1": None, "ece": None, "train_seconds": r["seconds"]["trainer"], "adapt": r["hparams"].adapt,
                "test_count": rt["other_brand_count"], "calls": rt["other_brand_calls"],
                "model": f"{key} (shoes-multiclass + other brands as neither)", "command": environment["command"]}
            datasets[key]["shoes_multiclass_brand_recall"] = rt.get("test_brand_accuracy")
    return {"datasets": datasets, "commit": environment["commit"], "date": environment["date"],
            "machine": environment["machine"], "seconds": environment["seconds"]}


# --------------------------------------------------------------------------- rendering (pure)

def _pct(value) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _options(result: dict) -> str:
    f: Features = result["features"]
    hp = result["hparams"]
    adapted = f"trained blocks {hp.train_from or f.cut}.. + head" if hp.adapt == "blocks" else "trained the head alone"
    bits = [f.describe(), adapted, f"l2 {hp.l2:g}", f"batch {hp.batch_size}"]
    if hp.class_weights != "none":
        bits.append(f"class weights {hp.class_weights}")
    if getattr(hp, "check_calibrated", False):
        bits.append("calibrated checks")
    if getattr(hp, "label_smoothing", 0):
        bits.append(f"label smoothing {hp.label_smoothing:g}")
    if result.get("target_precision"):
        threshold = result["metrics"].get("threshold") or {}
        bits.append(f"brand threshold {threshold.get('threshold', 0):.3f} (validation precision >= {result['target_precision']:g})")
    return "; ".join(bits)


def results_table(results: list[dict]) -> list[str]:
    """The study's table: run, test accuracy, cross-entropy, steps, learning rate, optimizer, data set, kind, backbone, options."""
    lines = ["| run | test accuracy | cross-entropy | steps | learning rate | optimizer | data set | binary/multiclass | backbone | options | goal | met |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for i, r in enumerate(results, 1):
        test, hp = r["metrics"]["test"], r["hparams"]
        goal = GOALS.get(r["manifest"])
        kind = "binary" if len(r["metrics"]["labels"]) == 2 else "multiclass"
        met = "-" if goal is None else ("yes" if test["accuracy"] >= goal else "no")
        lines.append(f"| b{i} | {_pct(test['accuracy'])} | {test['cross_entropy']:.3f} | {r['metrics']['best_step']} | "
                     f"{hp.learning_rate:g} | {hp.optimizer} | {r['manifest']} ({test['count']} test images) | {kind} | "
                     f"{r['features'].backbone} | {_options(r)} | {_pct(goal)} | {met} |")
    for row in STUDY:
        lines.append(f"| {row['run']} | {_pct(row['test_accuracy'])} | - | - | - | - | {row['data']} | {row['classification']} | "
                     f"{row['backbone']} | {row['options']} | - | - |")
    return lines


def per_class_table(metrics: dict) -> list[str]:
    lines = ["| class | precision | recall | F1 | support |", "|---|---|---|---|---|"]
    for label, c in metrics["test"]["per_class"].items():
        lines.append(f"| {label} | {c['precision']:.3f} | {c['recall']:.3f} | {c['f1']:.3f} | {c['support']} |")
    return lines


def confusion_table(metrics: dict) -> list[str]:
    labels, matrix = metrics["labels"], metrics["test"]["confusion_matrix"]
    short = [label[:10] for label in labels]
    lines = ["| true \\ predicted | " + " | ".join(short) + " |", "|---|" + "---|" * len(labels)]
    for label, row in zip(labels, matrix):
        lines.append(f"| {label} | " + " | ".join(str(v) if v else "." for v in row) + " |")
    return lines


def levers_table(rows: list[dict], manifest: str) -> list[str]:
    mine = [r for r in rows if r["manifest"] == manifest]
    if not mine:
        return []
    lines = ["| features | head | validation accuracy | test accuracy | multi-crop 2x2 (val / test) | chosen l2, lr |",
             "|---|---|---|---|---|---|"]
    for r in sorted(mine, key=lambda r: -r["validation_accuracy"]):
        mc = r.get("multi_crop_2")
        mc_text = f"{_pct(mc['validation']['accuracy'])} / {_pct(mc['test']['accuracy'])}" if mc else "-"
        hp = r["hparams"]
        lines.append(f"| {r['describe']} ({r['features']}) | {r['head']} | {_pct(r['validation_accuracy'])} | "
                     f"{_pct(r['test_accuracy'])} | {mc_text} | {hp['l2']:g}, {hp['learning_rate']:g} |")
    return lines


def top_confusions(metrics: dict, count: int = 5) -> list[str]:
    labels, matrix = metrics["labels"], metrics["test"]["confusion_matrix"]
    pairs = sorted(((matrix[i][j], labels[i], labels[j]) for i in range(len(labels)) for j in range(len(labels))
                    if i != j and matrix[i][j]), reverse=True)[:count]
    return [f"{n} x {a} -> {b}" for n, a, b in pairs]


def render(results: list[dict], environment: dict, levers: list[dict], notes: str = "") -> str:
    out = ["# Accuracy benchmark", "",
           f"Date {environment['date']}, brandlens {environment['version']}, commit {environment['commit']}, "
           f"{environment['machine']}. Command: `{environment['command']}` ({environment['seconds']:.0f} s).", "",
           "Every figure is the real product: bottleneck job -> trainer search (selection on validation "
           "cross-entropy only) -> one evaluation on the fixed test split of `../shared/data/manifests`.", "",
           "## Results", ""]
    out += results_table(results)
    shown_levers = set()
    for r in results:
        m = r["metrics"]
        threshold = f", brand threshold at validation precision {r['target_precision']:g}" if r.get("target_precision") else ""
        out += ["", f"## {r['manifest']} ({r['features'].backbone}, {r['backbone_version']}{threshold})", "",
                f"{r['classification']}; {r['train_examples']} training examples; {r['runs']} heads searched; "
                f"validation accuracy {_pct(m['validation']['accuracy'])}, test accuracy {_pct(m['test']['accuracy'])} "
                f"(argmax {_pct(m['test'].get('argmax_accuracy'))}), macro F1 {m['test'].get('macro_f1', 0):.3f}. "
                f"Times: bottlenecks {r['seconds']['bottlenecks']} s ({r['seconds']['cnn_images']} images through the CNN), "
                f"trainer {r['seconds']['trainer']} s.", ""]
        out += per_class_table(m) + ["", "Confusion matrix (test; rows true, columns predicted):", ""] + confusion_table(m)
        goal = GOALS.get(r["manifest"])
        if goal is not None and m["test"]["accuracy"] < goal:
            out += ["", f"**Goal {_pct(goal)} not met**: best {_pct(m['test']['accuracy'])}. Most frequent errors: "
                    + ", ".join(top_confusions(m)) + "." + (f" Error report: `{r['errors_html']}`." if r.get("errors_html") else "")]
            table = levers_table(levers, r["manifest"]) if r["manifest"] not in shown_levers else []
            shown_levers.add(r["manifest"])
            if table:
                out += ["", "What was tried (bench/levers.py; selection on validation, test shown beside it):", ""] + table
    if notes.strip():
        out += ["", notes.strip()]
    return "\n".join(out) + "\n"


def environment(command: str, seconds: float) -> dict:
    from brandlens import __version__

    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).parent, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True,
                               cwd=Path(__file__).parent).stdout.strip()
        commit += " (with uncommitted changes)" if dirty else ""
    except (OSError, subprocess.CalledProcessError):
        commit = "unknown"
    import os

    return {"date": dt.date.today().isoformat(), "version": __version__, "commit": commit, "command": command,
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}", "seconds": seconds}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.accuracy", description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbones", default="efficientnet_lite2", help="comma-separated (default %(default)s)")
    parser.add_argument("--manifests", default=",".join(MANIFESTS), help="comma-separated (default: all three)")
    parser.add_argument("--work-dir", type=Path, default=DEFAULT_WORK_DIR, help="bottlenecks, cache and models (default %(default)s)")
    parser.add_argument("--output", type=Path, default=RESULTS, help="results file (default bench/RESULTS-accuracy.md)")
    parser.add_argument("--quick", action="store_true", help="one head per data set, no export (a smoke run)")
    parser.add_argument("--resize-mode", default=None, help="override the product's default resize mode")
    parser.add_argument("--crop-fraction", type=float, default=None, help="override the product's default crop")
    parser.add_argument("--augment", type=int, default=None, help="augmented variants per training image (default: the plan)")
    parser.add_argument("--no-logo-crops", action="store_true", help="no logo-box crops for flickrlogos27")
    parser.add_argument("--tiles", type=int, default=None, metavar="N",
                        help="also train on the N x N tiles of the training photos (the bottleneck job's --tiles; default: the plan)")
    parser.add_argument("--target-precision", type=float, default=None,
                        help="open world: brand-score threshold chosen on validation for this precision (default none)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    for noisy in ("apache_beam", "absl", "tensorflow"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    for name in args.manifests.split(","):
        if not manifest_path(name).is_file():
            raise SystemExit(f"real data not available: {manifest_path(name)} (the ../shared folder beside the checkout)")
    started = time.time()
    search = HeadSearch(grid=QUICK_GRID) if args.quick else HeadSearch(grid=SEARCH_GRID, extra=SEARCH_EXTRA)
    results = []
    for backbone in args.backbones.split(","):
        for name in args.manifests.split(","):
            targets = ((args.target_precision,) if args.target_precision is not None
                       else PLAN.get(name, {}).get("target_precisions", (None,)))
            for target in targets:
                result = run_one(args.work_dir, name, plan_features(name, backbone, args),
                                 dataclasses.replace(search, target_precision=target), export=not args.quick)
                log.info("%s %s: test accuracy %.4f", name, backbone, result["metrics"]["test"]["accuracy"])
                results.append(result)
    levers = json.loads(LEVERS.read_text()) if LEVERS.is_file() else []
    command = "python -m bench.accuracy " + " ".join(argv if argv is not None else __import__("sys").argv[1:])
    notes = NOTES.read_text() if NOTES.is_file() else ""
    env = environment(command.strip(), time.time() - started)
    text = render(results, env, levers, notes)
    args.output.write_text(text)
    if not args.quick:
        JSON_RESULTS.parent.mkdir(parents=True, exist_ok=True)
        JSON_RESULTS.write_text(json.dumps(json_results(results, env), indent=2, sort_keys=True) + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
