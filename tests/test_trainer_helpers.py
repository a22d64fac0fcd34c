"""A small bottleneck folder for the trainer's tests, made by the real bottleneck job.

Generated images (``brandlens.sample``) with fixed splits, embedded by lite0 and
transformed by the job's own TFT step, in-process on the DirectRunner.
"""

from __future__ import annotations

import csv
from pathlib import Path


SPLIT_CYCLE = ("train", "train", "train", "validation", "test", "train", "train", "validation", "test", "train")


def with_fixed_splits(sample) -> Path:
    """The sample's manifest with a split column: SPLIT_CYCLE dealt per label, so every split has every label."""
    with open(sample.manifest) as f:
        rows = list(csv.DictReader(f))
    counters: dict[str, int] = {}
    manifest = sample.root / "manifest-with-splits.csv"
    with open(manifest, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["uri", "label", "split"])
        for row in rows:
            k = counters.get(row["label"], 0)
            counters[row["label"]] = k + 1
            writer.writerow([row["uri"], row["label"], SPLIT_CYCLE[k % len(SPLIT_CYCLE)]])
    return manifest


def run_bottleneck_job(root: Path, artifact_root: Path, per_label: int = 20, brands=("acme", "zenith"),
                       open_world: bool = True, seed: int = 0, augment: int = 1) -> Path:
    """The real bottleneck job (``beam_jobs.bottlenecks.job.run``) on generated images with fixed splits."""
    from beam_jobs.bottlenecks.config import BottleneckConfig
    from beam_jobs.bottlenecks.job import run
    from brandlens.config import BackboneConfig
    from brandlens.sample import make_sample

    sample = make_sample(root / "sample", per_label, tuple(brands), seed, open_world)
    manifest = with_fixed_splits(sample)
    out = root / "bottlenecks"
    run(BottleneckConfig(input=str(manifest), output=str(out), base_uri=str(sample.root), augment=augment,
                         cache=str(root / "cache"), backbone=BackboneConfig("efficientnet_lite0", artifact_root)))
    return out
