"""The scoring job's settings: one frozen object, built from the command line once."""

from __future__ import annotations

import argparse
import datetime as dt
from dataclasses import dataclass, field

from beam_jobs.bottlenecks.config import absolute
from beam_jobs.common.defaults import DEFAULT_BATCH_SIZE, DEFAULT_MAX_BYTES, DEFAULT_PROGRESS_INTERVAL_S
from beam_jobs.common.inputs import FORMAT_AUTO, INPUT_FORMATS, InputSpec
from beam_jobs.common.options import RunnerConfig
from brandlens.errors import ConfigError
from brandlens.imaging import DEFAULT_MAX_PIXELS

NAMESPACE = "brandlens.scoring"
DEFAULT_ROWS_PER_FILE = 250_000
SCORES_DIR = "scores"
RUNS_DIR = "runs"


def _timestamp(text: str) -> dt.datetime:
    try:
        value = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO timestamp: {text!r}") from None
    return value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)


def _columns(text: str) -> tuple[str, ...]:
    return tuple(c.strip() for c in text.split(",") if c.strip())


@dataclass(frozen=True)
class OutputConfig:
    """Where and how scored rows are written (shared by scoring and rescoring)."""

    output: str
    rows_per_file: int = DEFAULT_ROWS_PER_FILE
    scored_at: dt.datetime | None = None

    def __post_init__(self):
        object.__setattr__(self, "output", absolute(self.output).rstrip("/"))
        if self.rows_per_file < 1:
            raise ConfigError(f"rows per file must be positive, got {self.rows_per_file}")

    @property
    def scores_dir(self) -> str:
        return f"{self.output}/{SCORES_DIR}"

    def run_dir(self, run: str) -> str:
        return f"{self.output}/{RUNS_DIR}/{run}"

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        group = parser.add_argument_group("output")
        group.add_argument("--output", required=True,
                           help="job folder: scores/ (Parquet, dt=YYYY-MM-DD partitions) and runs/<run>/ (summary, dead letters)")
        group.add_argument("--rows-per-file", type=int, default=DEFAULT_ROWS_PER_FILE,
                           help="target rows per Parquet file within a partition (default %(default)s)")
        group.add_argument("--scored-at", type=_timestamp, default=None,
                           help="the scored_at value (ISO time; default: the job's start); fix it to reproduce a run exactly")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "OutputConfig":
        return cls(args.output, args.rows_per_file, args.scored_at)


@dataclass(frozen=True)
class ScoringConfig:
    input: str
    model: str
    out: OutputConfig
    input_format: str = FORMAT_AUTO
    base_uri: str | None = None
    id_column: str = "post_id"
    uri_column: str = "image_uri"
    date_column: str = "posted_at"
    carry: tuple[str, ...] | None = None  # None: every other input column
    batch_size: int = DEFAULT_BATCH_SIZE
    multi_crop: int = 0
    write_embedding: bool = False
    max_bytes: int = DEFAULT_MAX_BYTES
    max_pixels: int = DEFAULT_MAX_PIXELS
    progress_interval: float = DEFAULT_PROGRESS_INTERVAL_S
    max_dead_letter_share: float | None = None  # None: commit whatever share was dead-lettered
    runner: RunnerConfig = field(default_factory=RunnerConfig)

    def __post_init__(self):
        if self.max_dead_letter_share is not None and not 0.0 <= self.max_dead_letter_share <= 1.0:
            raise ConfigError(f"max dead-letter share must be in [0, 1], got {self.max_dead_letter_share}")
        object.__setattr__(self, "input", absolute(self.input))
        object.__setattr__(self, "model", absolute(self.model))
        object.__setattr__(self, "base_uri", absolute(self.base_uri))
        if self.input_format not in INPUT_FORMATS:
            raise ConfigError(f"unknown input format {self.input_format!r}; choose one of {', '.join(INPUT_FORMATS)}")
        for name in ("batch_size", "max_bytes", "max_pixels"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        if not 0 <= self.multi_crop <= 4:
            raise ConfigError(f"multi-crop grid must be 0 (off) to 4, got {self.multi_crop}")

    @property
    def input_spec(self) -> InputSpec:
        return InputSpec(self.input, self.input_format, self.base_uri, self.uri_column)

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        io = parser.add_argument_group("input")
        io.add_argument("--input", required=True,
                        help="posts manifest (.csv/.jsonl/.parquet with post id and image uri columns), a folder or glob of "
                             "images (the post id is then the uri), or WebDataset tar shards; local or gs://")
        io.add_argument("--input-format", choices=INPUT_FORMATS, default=FORMAT_AUTO, help="default %(default)s: from the name")
        io.add_argument("--base-uri", default=None, help="folder relative image uris resolve against (default: the manifest's)")
        io.add_argument("--id-column", default="post_id", help="manifest column of the post id (default %(default)s)")
        io.add_argument("--uri-column", default="image_uri", help="manifest column of the image uri (default %(default)s)")
        io.add_argument("--date-column", default="posted_at",
                        help="column whose date partitions the output (default %(default)s; absent: the run date)")
        io.add_argument("--carry", type=_columns, default=None,
                        help="comma-separated input columns carried to the output (default: all other manifest columns)")
        parser.add_argument("--model", required=True, help="the trainer's export folder (serving/, head/, model_card.json)")
        OutputConfig.add_arguments(parser)
        work = parser.add_argument_group("scoring")
        work.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE, help="images per model call (default %(default)s)")
        work.add_argument("--multi-crop", type=int, default=0, metavar="N",
                          help="also score an NxN grid of tiles and keep the most brand-like view (default 0: off)")
        work.add_argument("--write-embedding", action="store_true",
                          help="add the backbone embedding column, so a later 'rescore' needs no CNN")
        work.add_argument("--max-bytes", type=int, default=DEFAULT_MAX_BYTES, help="larger files are dead-lettered")
        work.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, help="larger images are dead-lettered")
        work.add_argument("--progress-interval", type=float, default=DEFAULT_PROGRESS_INTERVAL_S,
                          help="seconds between progress lines per worker (default %(default)s)")
        work.add_argument("--max-dead-letter-share", type=float, default=None, metavar="F",
                          help="commit nothing (the previous output stays) when more than this share of the posts read "
                               "is dead-lettered (default: no limit)")
        RunnerConfig.add_arguments(parser)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "ScoringConfig":
        return cls(
            input=args.input, model=args.model, out=OutputConfig.from_args(args), input_format=args.input_format,
            base_uri=args.base_uri, id_column=args.id_column, uri_column=args.uri_column, date_column=args.date_column,
            carry=args.carry, batch_size=args.batch_size, multi_crop=args.multi_crop, write_embedding=args.write_embedding,
            max_bytes=args.max_bytes, max_pixels=args.max_pixels, progress_interval=args.progress_interval,
            max_dead_letter_share=args.max_dead_letter_share,
            runner=RunnerConfig.from_args(args),
        )

    def describe(self) -> dict:
        return {
            "input": self.input, "input_format": self.input_spec.resolved_format, "model": self.model,
            "id_column": self.id_column, "uri_column": self.uri_column, "date_column": self.date_column,
            "carry": list(self.carry) if self.carry is not None else None, "batch_size": self.batch_size,
            "multi_crop": self.multi_crop, "write_embedding": self.write_embedding, "rows_per_file": self.out.rows_per_file,
            "max_dead_letter_share": self.max_dead_letter_share,
            "runner": self.runner.runner,
        }


@dataclass(frozen=True)
class RescoreConfig:
    embeddings: str
    model: str
    out: OutputConfig
    batch_size: int = 4096
    runner: RunnerConfig = field(default_factory=RunnerConfig)
    progress_interval: float = DEFAULT_PROGRESS_INTERVAL_S

    def __post_init__(self):
        object.__setattr__(self, "embeddings", absolute(self.embeddings))
        object.__setattr__(self, "model", absolute(self.model))
        if self.batch_size < 1:
            raise ConfigError(f"batch size must be positive, got {self.batch_size}")

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--embeddings", required=True,
                            help="stored embeddings: the bottleneck job's output folder (its examples/), a glob of its "
                                 "TFRecords, or a scoring output written with --write-embedding (its scores/ folder)")
        parser.add_argument("--model", required=True, help="the new export folder (its head/ is used; no CNN runs)")
        OutputConfig.add_arguments(parser)
        parser.add_argument("--batch-size", type=int, default=4096, help="embeddings per head call (default %(default)s)")
        parser.add_argument("--progress-interval", type=float, default=DEFAULT_PROGRESS_INTERVAL_S,
                            help="seconds between progress lines per worker (default %(default)s)")
        RunnerConfig.add_arguments(parser)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "RescoreConfig":
        return cls(args.embeddings, args.model, OutputConfig.from_args(args), args.batch_size, RunnerConfig.from_args(args),
                   args.progress_interval)
