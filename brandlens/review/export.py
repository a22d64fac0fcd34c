"""``brandlens corrections``: the corrections log -> a labelled manifest the bottleneck job reads.

Each corrected post becomes one row (``uri,label``) with its latest correction's
first true label (the trainer is single-label; posts given several are counted).
With ``--base-manifest`` the training manifest is carried over and a corrected
image replaces its row there (keeping its split; a changed label drops its logo
box), so the next ``brandlens bottlenecks`` run trains on the corrected labels.
"""

from __future__ import annotations

import argparse
import csv
import os
from dataclasses import dataclass
from pathlib import Path

from brandlens.errors import ConfigError
from brandlens.review.corrections import WRONG, CorrectionLog

BOX_COLUMNS = ("x1", "y1", "x2", "y2", "box")


@dataclass(frozen=True)
class ExportConfig:
    corrections: Path
    output: Path
    base_manifest: Path | None
    image_root: Path

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--corrections", type=Path, required=True, help="the review app's corrections log (JSON lines)")
        parser.add_argument("--output", type=Path, required=True, help="manifest CSV to write (uri,label[,...])")
        parser.add_argument("--base-manifest", type=Path, default=None,
                            help="a training manifest (CSV) to carry over, corrected images replacing their rows")
        parser.add_argument("--image-root", type=Path, default=Path("."),
                            help="folder that relative image uris in the corrections are relative to (default: the current folder)")

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "ExportConfig":
        return cls(args.corrections, args.output, args.base_manifest, args.image_root)


def _absolute(uri: str, root: Path) -> str:
    return uri if "://" in uri or os.path.isabs(uri) else os.path.normpath(os.path.abspath(root / uri))


def _manifest_base(manifest: Path, first_uri: str) -> Path:
    """The folder a manifest's relative uris resolve against: the nearest ancestor holding the first one (as the jobs do)."""
    for folder in [manifest.resolve().parent, *manifest.resolve().parent.parents]:
        if (folder / first_uri).exists():
            return folder
    return manifest.resolve().parent


def read_base(manifest: Path) -> tuple[list[str], list[dict]]:
    if manifest.suffix.lower() != ".csv":
        raise ConfigError(f"--base-manifest {manifest}: only CSV manifests can be carried over")
    try:
        with open(manifest, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            rows = list(reader)
            columns = list(reader.fieldnames or [])
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ConfigError(f"cannot read --base-manifest {manifest}: {exc}") from None
    if "uri" not in columns or "label" not in columns:
        raise ConfigError(f"--base-manifest {manifest} needs 'uri' and 'label' columns (has {', '.join(columns)})")
    if rows:
        base = _manifest_base(manifest, rows[0]["uri"])
        for row in rows:
            row["uri"] = _absolute(row["uri"], base)
    return columns, rows


def export(config: ExportConfig) -> dict:
    """Write the manifest atomically; return counts for the summary line."""
    latest = CorrectionLog(config.corrections).latest()
    if not latest:
        raise ConfigError(f"no corrections in {config.corrections}")
    columns, base_rows = read_base(config.base_manifest) if config.base_manifest else (["uri", "label"], [])
    corrected = {}
    for c in latest.values():
        corrected[_absolute(c.image_uri, config.image_root)] = c
    rows, replaced = [], 0
    for row in base_rows:
        c = corrected.pop(row["uri"], None)
        if c is not None:
            replaced += 1
            row = dict(row, label=c.labels[0])
            if c.verdict == WRONG:
                row.update({k: "" for k in BOX_COLUMNS if k in row})
        rows.append(row)
    rows += [{"uri": uri, "label": c.labels[0]} for uri, c in sorted(corrected.items())]
    config.output.parent.mkdir(parents=True, exist_ok=True)
    tmp = config.output.with_name(f".{config.output.name}.tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns, restval="", extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, config.output)
    values = list(latest.values())
    return {"output": str(config.output), "rows": len(rows), "corrected_posts": len(values),
            "right": sum(c.verdict != WRONG for c in values), "wrong": sum(c.verdict == WRONG for c in values),
            "replaced_base_rows": replaced, "added_rows": len(rows) - len(base_rows),
            "several_labels_first_kept": sum(len(c.labels) > 1 for c in values)}
