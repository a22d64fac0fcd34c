"""The README's main command: the whole product on a sample archive it generates itself.

sample -> backbone artifact -> bottleneck job -> trainer (train, evaluate, export)
-> scoring job -> query, all on the DirectRunner with local files.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from brandlens.config import BackboneConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DemoConfig:
    work_dir: Path
    per_label: int
    backbone: BackboneConfig

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--work-dir", type=Path, default=Path("demo-output"), help="where everything is written (default %(default)s)")
        parser.add_argument("--per-label", type=int, default=40, help="generated images per label (default %(default)s)")
        BackboneConfig.add_arguments(parser)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "DemoConfig":
        return cls(args.work_dir.resolve(), args.per_label, BackboneConfig.from_args(args))


def run_demo(config: DemoConfig) -> int:
    from beam_jobs.bottlenecks.config import BottleneckConfig
    from beam_jobs.bottlenecks.job import run as run_bottlenecks
    from beam_jobs.scoring.config import OutputConfig, ScoringConfig
    from beam_jobs.scoring.job import run as run_scoring
    from brandlens.query import SUMMARIES, QueryConfig, query
    from brandlens.sample import make_sample
    from trainer.config import TrainConfig
    from trainer.train import run_training

    start = time.time()
    work = config.work_dir
    sample = make_sample(work / "sample", config.per_label)
    print(f"[1/5] sample archive: {sample.manifest} ({config.per_label} images x {len(sample.labels)} labels: "
          f"{', '.join(sample.labels)}) and {sample.posts}")

    bottlenecks = run_bottlenecks(BottleneckConfig(input=str(sample.manifest), output=str(work / "bottlenecks"), overwrite=True,
                                                   cache=str(work / "embedding-cache"), backbone=config.backbone))
    counts = bottlenecks["counts"]
    print(f"[2/5] bottleneck job: {counts['read']} images read, examples per split {counts['examples']}, dead-lettered "
          f"{sum(counts['dead_lettered'].values())}, CNN images {counts['cnn_images']}, cache hits {counts['cache_hits']} "
          f"(backbone {bottlenecks['backbone']['version']}) -> {work / 'bottlenecks'}"
          + (f" (inputs unchanged: run {bottlenecks['reused']['run_id']} restored)" if bottlenecks.get("reused") else ""))

    metrics = run_training(TrainConfig(work / "bottlenecks", work / "model", artifact_root=config.backbone.artifact_root, overwrite=True))
    test = metrics["test"]
    print(f"[3/5] trainer: test accuracy {test['accuracy']:.3f}, cross-entropy {test['cross_entropy']:.3f} on "
          f"{test['count']} images ({metrics['classification']}); exported model {metrics.get('version_id')} -> {work / 'model'}")

    scoring = run_scoring(ScoringConfig(input=str(sample.posts), model=str(work / "model"), out=OutputConfig(str(work / "archive"))))
    counts = scoring["counts"]
    print(f"[4/5] scoring job: {counts['read']} posts read, {counts['scored']} scored, "
          f"{sum(counts['dead_lettered'].values())} dead-lettered -> {scoring['output']}")

    print(f"[5/5] brandlens query --scores {scoring['output']}")
    print(query(QueryConfig(scoring["output"], tuple(SUMMARIES), None, 3, "table")))
    summary = {"bottlenecks": str(work / "bottlenecks" / "summary.json"), "model_card": str(work / "model" / "model_card.json"),
               "scoring_summary": f"{work}/archive/runs/{scoring['run_key']}/summary.json"}
    print(f"\nlineage: {json.dumps(summary)}")
    print(f"done in {time.time() - start:.0f} s")
    return 0
