"""The ``review`` and ``corrections`` subcommands (registered by ``brandlens.cli``)."""

from __future__ import annotations

import argparse

from brandlens.errors import BrandlensError


def _cmd_review(args: argparse.Namespace) -> int:
    from brandlens.review.config import ReviewConfig

    config = ReviewConfig.from_args(args)
    try:
        from brandlens.review.app import serve
    except ImportError as exc:
        raise BrandlensError(f"the review app needs its web packages ({exc.name} is missing): "
                             "pip install -c constraints.txt -e '.[review]'") from None
    return serve(config)


def _cmd_corrections(args: argparse.Namespace) -> int:
    from brandlens.review.export import ExportConfig, export

    summary = export(ExportConfig.from_args(args))
    print(f"{summary['output']}: {summary['rows']} rows; {summary['corrected_posts']} corrected posts "
          f"({summary['right']} right, {summary['wrong']} wrong), {summary['replaced_base_rows']} base rows relabelled, "
          f"{summary['added_rows']} added, {summary['several_labels_first_kept']} with several labels (first kept)")
    return 0


def register(sub) -> None:
    from brandlens.review.config import ReviewConfig
    from brandlens.review.export import ExportConfig

    p = sub.add_parser("review", help="a local web app to browse, check and correct the scored posts",
                       description="Serve the scored archive on http://127.0.0.1:PORT/: a filterable grid, each post with "
                                   "its scores and lineage, corrections (append-only JSON lines), an uncertain-first "
                                   "queue, charts, and 'try the model' with --model.",
                       epilog="example:\n  brandlens review --scores demo-output/archive/scores --model demo-output/model",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    ReviewConfig.add_arguments(p)
    p.set_defaults(handler=_cmd_review)

    p = sub.add_parser("corrections", help="turn the review app's corrections into a training manifest",
                       description="Write a manifest (uri,label) the bottleneck job reads: every corrected post with its "
                                   "true label, optionally merged into the training manifest it corrects.",
                       epilog="example:\n  brandlens corrections --corrections demo-output/archive/corrections.jsonl "
                              "--base-manifest demo-output/sample/manifest.csv --output demo-output/retrain.csv",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    ExportConfig.add_arguments(p)
    p.set_defaults(handler=_cmd_corrections)
