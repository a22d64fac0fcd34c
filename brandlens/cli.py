"""The ``brandlens`` command: one subcommand per stage; each builds its config once."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from brandlens import __version__
from brandlens.config import BackboneConfig
from brandlens.errors import BrandlensError


def _cmd_backbone(args: argparse.Namespace) -> int:
    from brandlens.backbones.artifact import read_fingerprint

    path = BackboneConfig.from_args(args).materialize()
    print(path)
    print(read_fingerprint(path).to_json())
    return 0


def _cmd_sample(args: argparse.Namespace) -> int:
    from brandlens.sample import make_sample

    sample = make_sample(args.out, args.per_label, tuple(args.brands.split(",")), args.seed, not args.closed_world)
    print(f"wrote {sample.manifest} and {sample.posts} (labels: {', '.join(sample.labels)})")
    return 0


def _cmd_composites(args: argparse.Namespace) -> int:
    from brandlens.composites import CompositesConfig, make_composites

    done = make_composites(CompositesConfig.from_args(args))
    print(f"wrote {done['manifest']}: {done['rows']} rows of the input and composites {done['composites']}"
          + (f"; skipped {done['skipped']} unreadable photos (skipped.csv)" if done["skipped"] else ""))
    return 0


def _cmd_bottlenecks(args: argparse.Namespace) -> int:
    from beam_jobs.bottlenecks.config import BottleneckConfig
    from beam_jobs.bottlenecks.job import run

    summary = run(BottleneckConfig.from_args(args))
    counts = summary["counts"]
    print(f"{summary['output']}: written {counts['written']}, examples {counts['examples']}, "
          f"dead-lettered {counts['dead_lettered']}, duplicates {counts['duplicates']}, "
          f"CNN images {counts['cnn_images']}, cache hits {counts['cache_hits']} in {summary['seconds']['total']} s"
          + (f" (inputs unchanged: run {summary['reused']['run_id']} restored)" if summary.get("reused") else ""))
    return 0


def _cmd_score(args: argparse.Namespace) -> int:
    from beam_jobs.scoring.config import ScoringConfig
    from beam_jobs.scoring.job import run

    return _print_scoring(run(ScoringConfig.from_args(args)))


def _cmd_rescore(args: argparse.Namespace) -> int:
    from beam_jobs.scoring.config import RescoreConfig
    from beam_jobs.scoring.job import rescore

    return _print_scoring(rescore(RescoreConfig.from_args(args)))


def _print_scoring(summary: dict) -> int:
    counts = summary["counts"]
    print(f"{summary['output']}: read {counts['read']}, scored {counts['scored']}, dead-lettered "
          f"{counts['dead_lettered']} with model {summary['model']['version_id']} "
          f"in {summary['seconds']} s (run {summary['run_key']})")
    return 0 if summary["reconciliation"]["ok"] else 1


def _cmd_demo(args: argparse.Namespace) -> int:
    from brandlens.demo import DemoConfig, run_demo

    return run_demo(DemoConfig.from_args(args))


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from brandlens.evaluate import EvaluateConfig, evaluate, summary_text

    config = EvaluateConfig.from_args(args)
    print(summary_text(evaluate(config), config.output))
    return 0


def _cmd_query(args: argparse.Namespace) -> int:
    from brandlens.query import QueryConfig, query

    skipped: list = []
    print(query(QueryConfig.from_args(args), skipped))
    if skipped:
        shown = ", ".join(skipped[:10]) + (f" and {len(skipped) - 10} more" if len(skipped) > 10 else "")
        print(f"note: left out {len(skipped)} files that are not this archive's committed part files: {shown}", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="brandlens", description="Find the photos that show a brand's products, at archive scale.")
    parser.add_argument("--version", action="version", version=f"brandlens {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="debug logging, including TensorFlow's, CUDA's and absl's own messages (hidden by default)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("backbone", help="materialise a pretrained backbone into a versioned artifact",
                       description="Build a pretrained CNN once into <artifacts>/<name>-<hash>/ (SavedModel + fingerprint.json).")
    BackboneConfig.add_arguments(p)
    p.set_defaults(handler=_cmd_backbone)

    p = sub.add_parser("sample", help="generate the small synthetic sample archive",
                       description="Write synthetic brand photos, a labelled manifest and a posts manifest.")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--per-label", type=int, default=24, help="images per label (default %(default)s)")
    p.add_argument("--brands", default="acme,zenith", help="comma-separated brand names (default %(default)s)")
    p.add_argument("--closed-world", action="store_true", help="no 'neither' class")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(handler=_cmd_sample)

    from brandlens.composites import CompositesConfig

    p = sub.add_parser("composites", help="paste brand photos into everyday photos: training examples of a product in a scene",
                       description="For every train/validation brand photo of a manifest, paste it small into a "
                                   "background photo of its split, labelled with the brand; write the input's rows plus "
                                   "these to <output>/manifest.csv for the bottleneck job. Close-up brand photos alone "
                                   "teach a model that a scene is 'neither'.")
    CompositesConfig.add_arguments(p)
    p.set_defaults(handler=_cmd_composites)

    from brandlens.query import QueryConfig

    p = sub.add_parser("query", help="summaries or any SQL over the scoring job's Parquet output (DuckDB)",
                       description="Query the scored posts: the view 'scores' covers every Parquet file under --scores.")
    QueryConfig.add_arguments(p)
    p.set_defaults(handler=_cmd_query)

    from brandlens.evaluate import EvaluateConfig

    p = sub.add_parser("evaluate", help="measure scored posts against your own labels (accuracy, P/R/F1, calibration, thresholds)",
                       description="Compare the scoring job's output with true labels (a carried column or a labels file "
                                   "joined by post id): the trainer's figures, a breakdown by any column, calibration, "
                                   "precision-recall per brand, what each threshold costs, and an HTML report of the errors.",
                       epilog="examples:\n"
                              "  brandlens evaluate --scores archive --truth input_label --by source --output eval\n"
                              "  brandlens evaluate --scores archive --labels my-labels.csv --output eval --target-precision 0.95",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    EvaluateConfig.add_arguments(p)
    p.set_defaults(handler=_cmd_evaluate)

    from beam_jobs.bottlenecks.config import BottleneckConfig

    p = sub.add_parser("bottlenecks", help="embed a labelled image archive into training examples (Beam job)",
                       description="Read labelled images (a folder per label, a manifest, or WebDataset tar shards), "
                                   "embed them with the backbone (cached by content hash), and write GZIP TFRecords per "
                                   "split, a tensorflow-transform analysed on train, dead letters and summary.json.",
                       epilog="examples:\n"
                              "  brandlens bottlenecks --input ../shared/data/manifests/shoes-binary.csv "
                              "--base-uri ../shared/data --output runs/shoes\n"
                              "  brandlens bottlenecks --input photos/ --output runs/photos --augment 2 --splits 0.7,0.15,0.15\n"
                              "  brandlens bottlenecks --input 'gs://bucket/shards/train-*.tar' --labels nike,adidas "
                              "--output gs://bucket/runs/x --runner DataflowRunner --temp-location gs://bucket/tmp "
                              "--beam-arg=--project=my-project --beam-arg=--region=europe-west1 "
                              "--beam-arg=--setup_file=./setup.py",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    BottleneckConfig.add_arguments(p)
    p.set_defaults(handler=_cmd_bottlenecks)

    from beam_jobs.scoring.config import RescoreConfig, ScoringConfig

    p = sub.add_parser("score", help="score archived posts into brand labels in Parquet (Beam job)",
                       description="Score posts (a manifest, an image folder/glob, or WebDataset shards) with an exported "
                                   "model; write Hive-partitioned Parquet, dead letters and a reconciled summary.",
                       epilog="example:\n  brandlens score --input posts.csv --model models/shoes --output archive-scores\n"
                              "  brandlens query --scores archive-scores/scores",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    ScoringConfig.add_arguments(p)
    p.set_defaults(handler=_cmd_score)

    p = sub.add_parser("rescore", help="relabel stored embeddings with a new model's head, without the CNN",
                       description="Read embeddings stored by the bottleneck job (TFRecords) or by 'score "
                                   "--write-embedding' (Parquet) and score them with the new model's head only.")
    RescoreConfig.add_arguments(p)
    p.set_defaults(handler=_cmd_rescore)

    from brandlens.demo import DemoConfig

    p = sub.add_parser("demo", help="run the whole product on the generated sample",
                       description="Generate the sample archive and run every stage on it with the DirectRunner.")
    DemoConfig.add_arguments(p)
    p.set_defaults(handler=_cmd_demo)

    from trainer.cli import register as register_trainer

    register_trainer(sub)

    from brandlens.review.cli import register as register_review

    register_review(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """The command line; ``argv`` given (in-process callers) leaves descriptor 2 unfiltered."""
    from brandlens.quiet import quiet

    args = build_parser().parse_args(argv)
    quiet(args.verbose, native=argv is None)
    try:
        return args.handler(args)
    except BrandlensError as exc:
        print(f"brandlens: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
