"""Settings shared by every stage, built once from the command line."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass
from pathlib import Path

from brandlens.backbones import ALL_BACKBONES, DEFAULT_BACKBONE

RESIZE_MODES = ("center_crop", "squash", "pad")  # brandlens.preprocess.RESIZE_MODES (kept free of TensorFlow here)
DEFAULT_RESIZE_MODE = "center_crop"


def default_artifact_root() -> Path:
    """Where materialised backbones live; shared by runs so each is built once."""
    return Path(os.environ.get("BRANDLENS_ARTIFACTS", Path.home() / ".cache" / "brandlens" / "artifacts"))


@dataclass(frozen=True)
class BackboneConfig:
    name: str = DEFAULT_BACKBONE
    artifact_root: Path | str = default_artifact_root()  # a gs:// root publishes artifacts for remote workers
    weights_file: str | None = None
    crop_fraction: float | None = None
    resize_mode: str | None = None  # None: brandlens.preprocess.DEFAULT_RESIZE_MODE
    input_size: int | None = None   # None: the backbone's own input side

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        group = parser.add_argument_group("backbone")
        group.add_argument("--backbone", default=DEFAULT_BACKBONE, choices=ALL_BACKBONES,
                           help="pretrained CNN (default %(default)s; the efficientnet_lite* ones work offline)")
        group.add_argument("--artifacts", default=str(default_artifact_root()),
                           help="folder of materialised backbone artifacts (default %(default)s, or $BRANDLENS_ARTIFACTS)")
        group.add_argument("--weights-file", default=None,
                           help="local ImageNet weights (.h5) for inception_v3 / vgg16 when offline")
        group.add_argument("--crop-fraction", type=float, default=None,
                           help="central crop before resizing (default: input/(input+32) for center_crop, 1.0 otherwise)")
        group.add_argument("--resize-mode", default=None, choices=RESIZE_MODES,
                           help="how an image becomes the square input: center_crop (EfficientNet's evaluation crop), "
                                f"squash (whole image, aspect not kept) or pad (to a grey square); default {DEFAULT_RESIZE_MODE}")
        group.add_argument("--input-size", type=int, default=None, metavar="PX",
                           help="run an efficientnet_lite* backbone at this input side instead of its own (e.g. 390 for "
                                "Lite2's 260): larger feature maps, so small logos cover more cells; about (PX/own)^2 the "
                                "compute. The version gets -sPX")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "BackboneConfig":
        return cls(args.backbone, args.artifacts, args.weights_file, args.crop_fraction, getattr(args, "resize_mode", None),
                   getattr(args, "input_size", None))

    def materialize(self) -> Path:
        from brandlens.backbones.artifact import materialize

        return materialize(self.name, self.artifact_root, self.weights_file, self.crop_fraction, self.resize_mode,
                           self.input_size)
