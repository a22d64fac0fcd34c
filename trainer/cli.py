"""The trainer's subcommands (train, search, predict), registered on ``brandlens``'s parser."""

from __future__ import annotations

import argparse
from pathlib import Path


def _cmd_train(args: argparse.Namespace) -> int:
    from trainer.config import TrainConfig
    from trainer.staging import staged
    from trainer.train import run_training

    output = args.output
    with staged(args) as local:
        metrics = run_training(TrainConfig.from_args(local))
    test = metrics["test"]
    print(f"{output}: test accuracy {test['accuracy']:.4f}, cross-entropy {test['cross_entropy']:.4f} "
          f"({test['count']} images, {metrics['classification']}){', model ' + metrics['version_id'] if 'version_id' in metrics else ''}")
    return 0


def _cmd_search(args: argparse.Namespace) -> int:
    from trainer.config import SearchConfig
    from trainer.search import TABLE_MD, run_search
    from trainer.staging import staged

    with staged(args) as local:
        rows = run_search(SearchConfig.from_args(local))
        print((local.output / TABLE_MD).read_text())
    best = rows[0]
    cv = getattr(args, "cv", 0)
    chosen_by = f"{cv}-fold cross-validation on train+validation" if cv else "validation"
    figure = (f"CV accuracy {best['cv_accuracy']:.4f}, cross-entropy {best['cv_cross_entropy']:.4f}" if cv else
              f"validation accuracy {best['validation_accuracy']:.4f}, cross-entropy {best['validation_cross_entropy']:.4f}")
    print(f"best by {chosen_by}: {best['run']} ({figure}); its test figures are in best/metrics.json")
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from trainer.predict import format_prediction, predict

    failed = 0
    for p in predict(args.model, args.paths, args.batch_size, args.explain):
        print(format_prediction(p, args.explain is not None))
        failed += p.error is not None
    return 1 if failed else 0


def register(sub) -> None:
    """Add ``train``, ``search`` and ``predict`` to the ``brandlens`` subparsers."""
    from trainer.config import SearchConfig, TrainConfig

    p = sub.add_parser(
        "train", help="train, evaluate and export the classifier head on bottlenecks",
        description="Train a softmax head on a bottleneck folder (closed or open world from its labels), stop early on "
                    "validation cross-entropy, evaluate once on test, and write metrics.json, plots, TensorBoard logs, "
                    "an HTML report of the test errors and the export (serving/, head/, model_card.json).")
    TrainConfig.add_arguments(p)
    p.set_defaults(handler=_cmd_train)

    p = sub.add_parser(
        "search", help="hyperparameter search ranked on validation",
        description="Train one head per grid point (or --random N of them), rank on validation, write search.csv and "
                    "search.md like the study's table, and retrain and export the best run into <output>/best.")
    SearchConfig.add_arguments(p)
    p.set_defaults(handler=_cmd_search)

    p = sub.add_parser(
        "predict", help="score image files or folders with an exported model",
        description="Print, for each image, the model's answer, every label with its score (highest first) and every "
                    "brand found in it with its box.")
    p.add_argument("model", type=Path, help="an export folder (with serving/ and model_card.json)")
    p.add_argument("paths", type=Path, nargs="+", help="image files or folders (searched recursively)")
    p.add_argument("--batch-size", type=int, default=32, help="images per model call (default %(default)s)")
    p.add_argument("--explain", type=Path, default=None, metavar="DIR",
                   help="also write each photo with its heat map and brand boxes as DIR/<name>.png")
    p.set_defaults(handler=_cmd_predict)
