"""The README's main command: the whole product on a sample it generates itself."""

from __future__ import annotations

import argparse
import csv
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

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
        parser.add_argument("--per-label", type=int, default=24, help="generated images per label (default %(default)s)")
        BackboneConfig.add_arguments(parser)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "DemoConfig":
        return cls(args.work_dir, args.per_label, BackboneConfig.from_args(args))


def _embed_sample(backbone, manifest: Path) -> tuple[np.ndarray, list[str]]:
    from brandlens.imaging import decode_image

    rows = list(csv.DictReader(open(manifest)))
    images = [backbone.prepare(decode_image((manifest.parent / r["uri"]).read_bytes())) for r in rows]
    embeddings = np.concatenate([backbone.embed(np.stack(images[i:i + 32])) for i in range(0, len(images), 32)])
    return embeddings, [r["label"] for r in rows]


def _nearest_centroid_loo(embeddings: np.ndarray, labels: list[str]) -> float:
    """Leave-one-out nearest-centroid accuracy: do the features separate the labels?"""
    x = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)
    y = np.array(labels)
    correct = 0
    for i in range(len(y)):
        mask = np.arange(len(y)) != i
        names = sorted(set(y[mask]))
        centroids = np.stack([x[mask & (y == n)].mean(0) for n in names])
        correct += names[int(np.argmax(centroids @ x[i]))] == y[i]
    return correct / len(y)


def run_demo(config: DemoConfig) -> int:
    from brandlens.backbones.artifact import load_backbone
    from brandlens.sample import make_sample

    start = time.time()
    sample = make_sample(config.work_dir / "sample", config.per_label)
    print(f"[1] sample archive: {sample.manifest} ({config.per_label} images x {len(sample.labels)} labels: {', '.join(sample.labels)})")
    artifact = config.backbone.materialize()
    backbone = load_backbone(artifact)
    print(f"[2] backbone artifact: {artifact} (version {backbone.fingerprint.version}, {backbone.fingerprint.embedding_dim}-d)")
    embeddings, labels = _embed_sample(backbone, sample.manifest)
    accuracy = _nearest_centroid_loo(embeddings, labels)
    print(f"[3] embedded {len(labels)} images; nearest-centroid leave-one-out accuracy on the embeddings: {accuracy:.3f}")
    print(f"done in {time.time() - start:.1f} s")
    return 0
