"""The trainer's settings: typed, frozen, built once from the command line."""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from pathlib import Path

from brandlens.config import default_artifact_root
from brandlens.errors import ConfigError
from trainer.model import ADAPT_MODES

OPTIMIZERS = ("sgd", "adagrad", "adam")
DEFAULT_NEITHER = "neither"
SELECT_BY = ("cross_entropy", "accuracy")


@dataclass(frozen=True)
class HParams:
    """What decides the head's weights; together with the data and seed, a run is repeatable.

    ``l2`` is the coefficient of ``0.5 * l2 * ||W||^2`` added to the mean batch loss.
    ``class_weights`` is ``none``, ``balanced`` (inverse training frequency) or
    ``label=weight,...`` (unnamed labels weigh 1). ``steps`` wins over ``epochs``
    when both are set. Validation cross-entropy is checked every ``eval_every``
    steps; training stops after ``patience`` checks without improvement (0: never)
    and the best checked weights are kept.
    """

    learning_rate: float = 0.001
    optimizer: str = "adam"
    steps: int | None = None
    epochs: int = 100
    batch_size: int = 64
    dropout: float = 0.0
    l2: float = 0.01
    class_weights: str = "none"
    patience: int = 10
    eval_every: int = 20
    seed: int = 0
    label_smoothing: float = 0.0
    adapt: str = "head"
    block_learning_rate_scale: float = 0.1
    mirror_maps: bool = True
    calibrate: bool = True
    train_from: int | None = None   # adapt=blocks: the first trained block (None: the bottlenecks' cut)
    check_calibrated: bool = False  # early stopping on validation cross-entropy after each check's own temperature
    mixup: float = 0.0              # Beta(alpha, alpha) of mixup between training rows (0: off)

    def __post_init__(self):
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}")
        if not self.learning_rate > 0:
            raise ConfigError(f"learning rate must be > 0, got {self.learning_rate}")
        if self.steps is not None and self.steps <= 0:
            raise ConfigError(f"steps must be > 0, got {self.steps}")
        if self.epochs <= 0 or self.batch_size <= 0 or self.eval_every <= 0 or self.patience < 0:
            raise ConfigError("epochs, batch size and eval-every must be > 0 and patience >= 0")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.l2 < 0:
            raise ConfigError(f"l2 must be >= 0, got {self.l2}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ConfigError(f"label smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.adapt not in ADAPT_MODES:
            raise ConfigError(f"adapt must be one of {', '.join(ADAPT_MODES)}, got {self.adapt!r}")
        if self.train_from is not None and self.train_from < 1:
            raise ConfigError(f"train-from must be a block number >= 1, got {self.train_from}")
        if self.mixup < 0:
            raise ConfigError(f"mixup must be >= 0, got {self.mixup}")
        if not self.block_learning_rate_scale > 0:
            raise ConfigError(f"block learning rate scale must be > 0, got {self.block_learning_rate_scale}")
        parse_class_weights(self.class_weights)

    def replace(self, **changes) -> "HParams":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        d = HParams()
        g = parser.add_argument_group("hyperparameters")
        g.add_argument("--learning-rate", type=float, default=d.learning_rate, help="step size (default %(default)s)")
        g.add_argument("--optimizer", choices=OPTIMIZERS, default=d.optimizer,
                       help="sgd and adagrad as in the study, or adam (default %(default)s)")
        g.add_argument("--steps", type=int, default=None, help="training steps; overrides --epochs")
        g.add_argument("--epochs", type=int, default=d.epochs, help="passes over the training set (default %(default)s)")
        g.add_argument("--batch-size", type=int, default=d.batch_size, help="default %(default)s")
        g.add_argument("--dropout", type=float, default=d.dropout, help="dropout rate on the features (default %(default)s)")
        g.add_argument("--l2", type=float, default=d.l2, help="L2 penalty 0.5*l2*||W||^2 (default %(default)s)")
        g.add_argument("--class-weights", default=d.class_weights,
                       help="none, balanced, or label=weight,... (default %(default)s)")
        g.add_argument("--patience", type=int, default=d.patience,
                       help="early stopping: validation checks without a lower cross-entropy (0: off; default %(default)s)")
        g.add_argument("--eval-every", type=int, default=d.eval_every, help="steps between validation checks (default %(default)s)")
        g.add_argument("--seed", type=int, default=d.seed, help="makes a run repeatable (default %(default)s)")
        g.add_argument("--label-smoothing", type=float, default=d.label_smoothing,
                       help="share of the target spread over all classes (default %(default)s)")
        g.add_argument("--adapt", choices=ADAPT_MODES, default=d.adapt,
                       help="what is trained: the head alone, or also the backbone's blocks after the bottlenecks' --cut "
                            "(default %(default)s)")
        g.add_argument("--block-learning-rate-scale", type=float, default=d.block_learning_rate_scale,
                       help="--adapt blocks: the blocks' learning rate as a multiple of the head's (default %(default)s)")
        g.add_argument("--train-from", type=int, default=None, metavar="BLOCK",
                       help="--adapt blocks: the first block trained; the blocks between the bottlenecks' --cut and it run "
                            "frozen (default: the cut). One set of maps serves every depth: --grid train_from=16,19")
        g.add_argument("--check-calibrated", action="store_true",
                       help="early stopping compares validation cross-entropy after fitting each check's softmax "
                            "temperature: overconfidence, which calibration removes anyway, no longer ends training")
        g.add_argument("--mixup", type=float, default=d.mixup, metavar="ALPHA",
                       help="train on mixtures of two rows (stored maps or embeddings) and their labels, the share "
                            "drawn from Beta(ALPHA, ALPHA) (default %(default)s: off; 0.2-0.4 usual)")
        g.add_argument("--no-mirror-maps", action="store_true",
                       help="--adapt blocks: do not mirror the stored maps at random while training")
        g.add_argument("--no-calibrate", action="store_true",
                       help="do not fit a softmax temperature on validation (scores stay the raw softmax)")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "HParams":
        return cls(args.learning_rate, args.optimizer, args.steps, args.epochs, args.batch_size, args.dropout,
                   args.l2, args.class_weights, args.patience, args.eval_every, args.seed,
                   getattr(args, "label_smoothing", 0.0), getattr(args, "adapt", "head"),
                   getattr(args, "block_learning_rate_scale", 0.1), not getattr(args, "no_mirror_maps", False),
                   not getattr(args, "no_calibrate", False), getattr(args, "train_from", None),
                   getattr(args, "check_calibrated", False), getattr(args, "mixup", 0.0))


def parse_class_weights(spec: str) -> str | dict[str, float]:
    """``'none'``, ``'balanced'`` or a {label: weight} dict."""
    spec = spec.strip()
    if spec in ("none", "balanced"):
        return spec
    weights = {}
    for part in spec.split(","):
        label, sep, value = part.partition("=")
        try:
            weight = float(value)
        except ValueError:
            weight = -1.0
        if not sep or not label.strip() or weight <= 0:
            raise ConfigError(f"class weights must be none, balanced or label=weight,... with weights > 0; got {spec!r}")
        weights[label.strip()] = weight
    return weights


@dataclass(frozen=True)
class TrainConfig:
    """One training run: where from, where to, how."""

    bottlenecks: Path
    output: Path
    hparams: HParams = HParams()
    artifact_root: Path = default_artifact_root()
    neither_label: str = DEFAULT_NEITHER
    target_precision: float | None = None
    image_root: Path | None = None
    export: bool = True
    verify_images: int = 8
    overwrite: bool = False

    def __post_init__(self):
        if self.target_precision is not None and not 0.0 < self.target_precision <= 1.0:
            raise ConfigError(f"target precision must be in (0, 1], got {self.target_precision}")

    @staticmethod
    def add_data_arguments(parser: argparse.ArgumentParser) -> None:
        g = parser.add_argument_group("data")
        g.add_argument("--bottlenecks", required=True, help="the bottleneck job's output folder (local or gs://)")
        g.add_argument("--artifacts", default=str(default_artifact_root()),
                       help="folder of backbone artifacts; the one named in backbone.json is used (default %(default)s)")
        g.add_argument("--neither-label", default=DEFAULT_NEITHER,
                       help="the open-world class; open world iff the data has it (default %(default)s)")
        g.add_argument("--image-root", type=Path, default=None,
                       help="folder that relative image URIs are resolved against (default: from the bottleneck summary)")
        g.add_argument("--target-precision", type=float, default=None,
                       help="open world only: pick on validation the lowest brand-score threshold reaching this "
                            "brand precision; below it a prediction falls back to the neither label")

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--output", required=True, help="folder for the model, metrics, plots and logs (local or gs://)")
        parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
        parser.add_argument("--no-export", action="store_true", help="train and evaluate only")
        parser.add_argument("--verify-images", type=int, default=8,
                            help="test images rescored through the exported model as a check (default %(default)s)")
        TrainConfig.add_data_arguments(parser)
        HParams.add_arguments(parser)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "TrainConfig":
        return cls(Path(args.bottlenecks), Path(args.output), HParams.from_args(args), Path(args.artifacts), args.neither_label,
                   args.target_precision, args.image_root, not args.no_export, args.verify_images, args.overwrite)


@dataclass(frozen=True)
class SearchConfig:
    train: TrainConfig          # the data, base hyperparameters and where the best run is written
    grid: tuple[str, ...]
    random_count: int | None = None
    select_by: str = "cross_entropy"
    cv: int = 0                 # K-fold cross-validation over train+validation originals ranks the runs; 0: validation ranks

    @staticmethod
    def add_arguments(parser) -> None:
        parser.add_argument("--output", required=True, help="folder for the tables and best/ (local or gs://)")
        parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
        parser.add_argument("--grid", action="append", default=[], metavar="NAME=V1,V2",
                            help="values to try for a hyperparameter, e.g. --grid l2=0.1,0.01 --grid optimizer=sgd,adam "
                                 "(class_weights values are separated by ';'); repeatable")
        parser.add_argument("--random", type=int, default=None, metavar="N", help="try N random grid points instead of all")
        parser.add_argument("--select-by", choices=SELECT_BY, default="cross_entropy",
                            help="validation figure that ranks the runs (default %(default)s)")
        parser.add_argument("--cv", type=int, default=0, metavar="K",
                            help="rank the runs by K-fold cross-validation over the train+validation originals (folds by "
                                 "content hash, augmented variants train only); the best run is then trained as without "
                                 "--cv. 0 (default): rank on validation")
        parser.add_argument("--no-export", action="store_true", help="do not retrain and export the best run")
        parser.add_argument("--verify-images", type=int, default=8, help="test images the best export is checked on")
        TrainConfig.add_data_arguments(parser)
        HParams.add_arguments(parser)

    @classmethod
    def from_args(cls, args) -> "SearchConfig":
        train = TrainConfig(Path(args.bottlenecks), Path(args.output), HParams.from_args(args), Path(args.artifacts), args.neither_label,
                            args.target_precision, args.image_root, not args.no_export, args.verify_images, args.overwrite)
        return cls(train, tuple(args.grid), args.random, args.select_by, args.cv)
