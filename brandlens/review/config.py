"""The review app's settings, built once from the command line."""

from __future__ import annotations

import argparse
import getpass
from dataclasses import dataclass
from pathlib import Path

from brandlens.errors import ConfigError


@dataclass(frozen=True)
class ReviewConfig:
    scores: str
    model: Path | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    corrections: Path | None = None   # default: <archive>/corrections.jsonl beside scores/
    reviewer: str = ""
    image_root: Path = Path(".")
    page_size: int = 48
    max_upload_mb: float = 10.0

    @property
    def corrections_path(self) -> Path:
        return self.corrections or Path(self.scores.rstrip("/")).parent / "corrections.jsonl"

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--scores", required=True, help="the scoring job's Parquet output (ARCHIVE/scores)")
        parser.add_argument("--model", type=Path, default=None, help="an exported model for 'try the model' and its threshold")
        parser.add_argument("--host", default="127.0.0.1", help="address to bind (default %(default)s: this machine only)")
        parser.add_argument("--port", type=int, default=8000, help="port (default %(default)s; 0 picks a free one)")
        parser.add_argument("--corrections", type=Path, default=None,
                            help="the corrections log, JSON lines (default: ARCHIVE/corrections.jsonl)")
        parser.add_argument("--reviewer", default=None, help="default name recorded with corrections (default: your login)")
        parser.add_argument("--image-root", type=Path, default=Path("."),
                            help="folder that relative image uris are relative to (default: the current folder)")
        parser.add_argument("--page-size", type=int, default=48, help="thumbnails per page (default %(default)s)")
        parser.add_argument("--max-upload-mb", type=float, default=10.0, help="largest photo 'try the model' takes (default %(default)s)")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "ReviewConfig":
        if not 1 <= args.page_size <= 500:
            raise ConfigError("--page-size must be between 1 and 500")
        if not 0 <= args.port <= 65535:
            raise ConfigError("--port must be between 0 and 65535")
        try:
            reviewer = args.reviewer or getpass.getuser()
        except (KeyError, OSError):
            reviewer = ""
        return cls(args.scores, args.model, args.host, args.port, args.corrections, reviewer, args.image_root,
                   args.page_size, args.max_upload_mb)
