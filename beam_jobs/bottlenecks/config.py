"""The bottleneck job's settings: one frozen object, built from the command line once."""

from __future__ import annotations

import argparse
import os
import posixpath
from dataclasses import dataclass, field

from beam_jobs.bottlenecks.augment import DEFAULT_LOGO_MARGIN
from beam_jobs.bottlenecks.labels import parse_label_map
from beam_jobs.bottlenecks.splits import DEFAULT_FRACTIONS, check_fractions, parse_fractions
from beam_jobs.common.defaults import DEFAULT_BATCH_SIZE, DEFAULT_MAX_BYTES, DEFAULT_PROGRESS_INTERVAL_S
from beam_jobs.common.inputs import FORMAT_AUTO, INPUT_FORMATS, InputSpec
from beam_jobs.common.options import RunnerConfig
from brandlens.config import BackboneConfig
from brandlens.errors import ConfigError
from brandlens.imaging import DEFAULT_MAX_PIXELS

NAMESPACE = "brandlens.bottlenecks"
CACHE_FOLDER_NAME = "embedding-cache"


def absolute(path: str | None) -> str | None:
    """Local paths made absolute (workers may run elsewhere); URLs unchanged."""
    if path is None or "://" in path:
        return path
    return os.path.abspath(os.path.expanduser(path))


def default_cache(output: str) -> str:
    """``<output>/../embedding-cache``: shared by the runs written next to each other."""
    return posixpath.join(posixpath.dirname(output.rstrip("/")), CACHE_FOLDER_NAME)


def _labels_arg(text: str) -> tuple[str, ...]:
    labels = tuple(label.strip() for label in text.split(",") if label.strip())
    if len(set(labels)) != len(labels):
        raise argparse.ArgumentTypeError(f"a label is repeated in {text!r}")
    return labels


def _fractions_arg(text: str) -> tuple[float, float, float]:
    try:
        return parse_fractions(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _label_map_arg(specs) -> tuple[tuple[str, str], ...]:
    try:
        return parse_label_map(specs)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


@dataclass(frozen=True)
class BottleneckConfig:
    input: str
    output: str
    input_format: str = FORMAT_AUTO
    base_uri: str | None = None
    uri_column: str = "uri"
    labels: tuple[str, ...] = ()
    split_fractions: tuple[float, float, float] = DEFAULT_FRACTIONS
    augment: int = 0
    logo_crops: bool = False
    logo_margin: float = DEFAULT_LOGO_MARGIN
    background_crops: bool = False  # strips of logo photos outside their boxes, as background_label examples
    background_label: str = "neither"
    tiles: int = 0  # the scoring job's multi-crop tiles (grid per side) of training photos; logo photos' by their boxes
    label_map: tuple[tuple[str, str], ...] = ()  # (from, to): labels renamed before --labels is checked
    cut: int | None = None  # also store the backbone's map entering this block (for the trainer's --adapt blocks)
    batch_size: int = DEFAULT_BATCH_SIZE
    cache: str | None = None  # None: default_cache(output)
    use_cache: bool = True
    max_bytes: int = DEFAULT_MAX_BYTES
    max_pixels: int = DEFAULT_MAX_PIXELS
    num_shards: int = 0
    overwrite: bool = False
    progress_interval: float = DEFAULT_PROGRESS_INTERVAL_S
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    runner: RunnerConfig = field(default_factory=RunnerConfig)

    def __post_init__(self):
        set_ = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731 (frozen)
        set_("input", absolute(self.input))
        set_("output", absolute(self.output).rstrip("/"))
        set_("base_uri", absolute(self.base_uri))
        set_("cache", absolute(self.cache) if self.cache else default_cache(self.output))
        set_("labels", tuple(self.labels))
        try:
            set_("split_fractions", check_fractions(self.split_fractions))
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        if self.input_format not in INPUT_FORMATS:
            raise ConfigError(f"unknown input format {self.input_format!r}; choose one of {', '.join(INPUT_FORMATS)}")
        for name in ("augment", "num_shards"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("batch_size", "max_bytes", "max_pixels"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        if self.logo_margin < 0:
            raise ConfigError(f"logo margin must be >= 0, got {self.logo_margin}")
        if self.tiles and not 2 <= self.tiles <= 4:
            raise ConfigError(f"tiles must be 0 (off) or a grid of 2 to 4 per side, as the scoring job's --multi-crop; got {self.tiles}")
        if self.cut is not None and self.cut < 1:
            raise ConfigError(f"cut must be a block number >= 1, got {self.cut}")
        try:
            set_("label_map", parse_label_map(f"{a}={b}" for a, b in self.label_map))
        except ValueError as exc:
            raise ConfigError(str(exc)) from None

    @property
    def input_spec(self) -> InputSpec:
        return InputSpec(self.input, self.input_format, self.base_uri, self.uri_column)

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        io = parser.add_argument_group("input and output")
        io.add_argument("--input", required=True,
                        help="a folder whose sub-folders are the labels, a manifest (.csv/.jsonl/.parquet with uri,label"
                             "[,split][,x1,y1,x2,y2]), or WebDataset tar shards (a glob such as 'shards/*.tar'); local or gs://")
        io.add_argument("--input-format", choices=INPUT_FORMATS, default=FORMAT_AUTO,
                        help="how --input is laid out (default %(default)s: from its name)")
        io.add_argument("--base-uri", default=None,
                        help="folder that a manifest's relative uris resolve against (default: the manifest's own folder)")
        io.add_argument("--uri-column", default="uri", help="manifest column holding the image uri (default %(default)s)")
        io.add_argument("--output", required=True,
                        help="output folder: examples/, transformed/, transform/, dead_letters/, summary.json, backbone.json")
        io.add_argument("--overwrite", action="store_true", help="replace the outputs of an earlier run in --output")
        io.add_argument("--num-shards", type=int, default=0, help="TFRecord shards per split (default 0: the runner decides)")

        data = parser.add_argument_group("labels, splits and augmentation")
        data.add_argument("--labels", type=_labels_arg, default=(),
                          help="comma-separated allowed labels; other labels are dead-lettered (default: any label)")
        data.add_argument("--splits", type=_fractions_arg, default=DEFAULT_FRACTIONS, metavar="TRAIN,VAL,TEST",
                          help="fractions for images without a manifest split, assigned by content hash (default 0.8,0.1,0.1)")
        data.add_argument("--label-map", action="append", default=[], metavar="FROM[,FROM...]=TO",
                          help="rename labels before anything else, e.g. --label-map asics,puma,vans=neither to add other "
                               "brands' photos as hard negatives of an open world; repeatable")
        data.add_argument("--augment", type=int, default=0, metavar="N",
                          help="N deterministic variants (crop, flip, colour) per training image (default %(default)s)")
        data.add_argument("--logo-crops", action="store_true",
                          help="one extra training example per logo box (x1,y1,x2,y2 in the manifest), cropped around it")
        data.add_argument("--background-crops", action="store_true",
                          help="training photos with logo boxes also give their strips outside every box (left, right, "
                               "top, bottom; each >= 30%% across and 15%% of the area) as --background-label examples: "
                               "photos without the brand from the same source as the brand photos")
        data.add_argument("--tiles", type=int, default=0, metavar="N",
                          help="also train on the N x N overlapping tiles that the scoring job's --multi-crop N scores, of "
                               "every training photo: a photo without logo boxes labels its tiles as itself (tiles of "
                               "'neither' photos teach that a part of an everyday photo is no brand); a photo with boxes "
                               "labels a tile holding >= half a box as its brand, one holding < a tenth of every box as "
                               "--background-label (with --background-crops), and leaves out tiles that cut a logo "
                               "(default 0: off)")
        data.add_argument("--background-label", default="neither",
                          help="label of the background strips (default %(default)s: the open-world class)")
        data.add_argument("--logo-margin", type=float, default=DEFAULT_LOGO_MARGIN,
                          help="context around a logo box, as a fraction of its size (default %(default)s)")

        work = parser.add_argument_group("embedding and cache")
        work.add_argument("--cut", type=int, default=None, metavar="BLOCK",
                          help="also store the backbone's feature map entering this block (EfficientNet-Lite; e.g. 19 of "
                               "lite2's 0..20), so 'brandlens train --adapt blocks' can train the blocks after it")
        work.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE, help="images per CNN batch (default %(default)s)")
        work.add_argument("--cache", default=None,
                          help="embedding cache folder (default: <output>/../embedding-cache, shared by sibling runs); it also "
                               "keeps each finished run (.runs/), which a rerun with the same input bytes, settings, "
                               "backbone and code restores instead of running")
        work.add_argument("--no-cache", action="store_true", help="neither read nor write the embedding cache")
        work.add_argument("--max-bytes", type=int, default=DEFAULT_MAX_BYTES,
                          help="larger files are dead-lettered as too_large (default %(default)s)")
        work.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                          help="larger images are dead-lettered as too_large (default %(default)s)")
        work.add_argument("--progress-interval", type=float, default=DEFAULT_PROGRESS_INTERVAL_S,
                          help="seconds between progress lines per worker (default %(default)s)")
        BackboneConfig.add_arguments(parser)
        RunnerConfig.add_arguments(parser)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "BottleneckConfig":
        return cls(
            input=args.input, output=args.output, input_format=args.input_format, base_uri=args.base_uri,
            uri_column=args.uri_column, labels=args.labels, split_fractions=args.splits, augment=args.augment,
            logo_crops=args.logo_crops, logo_margin=args.logo_margin, background_crops=args.background_crops,
            background_label=args.background_label, tiles=args.tiles, label_map=_label_map_arg(args.label_map),
            cut=args.cut, batch_size=args.batch_size, cache=args.cache,
            use_cache=not args.no_cache, max_bytes=args.max_bytes, max_pixels=args.max_pixels,
            num_shards=args.num_shards, overwrite=args.overwrite, progress_interval=args.progress_interval,
            backbone=BackboneConfig.from_args(args), runner=RunnerConfig.from_args(args),
        )

    def describe(self) -> dict:
        """The settings that shaped the output, for the run summary."""
        return {
            "input": self.input, "input_format": self.input_spec.resolved_format, "base_uri": self.base_uri,
            "uri_column": self.uri_column,
            "labels": list(self.labels), "split_fractions": list(self.split_fractions), "augment": self.augment,
            "logo_crops": self.logo_crops, "logo_margin": self.logo_margin,
            "background_crops": self.background_crops, "background_label": self.background_label, "tiles": self.tiles, "batch_size": self.batch_size,
            "label_map": dict(self.label_map), "cut": self.cut,
            "cache": self.cache if self.use_cache else None, "max_bytes": self.max_bytes, "max_pixels": self.max_pixels,
            "runner": self.runner.runner, "backbone": self.backbone.name,
        }
