"""Brand photos pasted into everyday photos: training examples of a product seen in a scene.

Brand training photos are mostly close-ups, everyday ('neither') photos are scenes, so a model
learns "a scene is neither" and calls a shoe in a street photo `neither` (bench/accuracy-notes.md:
1 of 114 such test shoes right before, 57% after training with these composites). Each
train/validation brand photo is pasted, squashed to a square of a random share of the side, at a
random place into a random background photo of its own split (never test), and labelled with its
brand. The output is a manifest (the input's rows plus the composites) for the bottleneck job.
"""

from __future__ import annotations

import argparse
import csv
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from brandlens.errors import ConfigError

SPLITS = ("train", "validation")


@dataclass(frozen=True)
class CompositesConfig:
    input: str
    output: str
    base_uri: str | None = None
    background_label: str = "neither"
    per_photo: int = 1
    scale: tuple[float, float] = (0.25, 0.5)   # the pasted square's side as a share of the canvas side
    canvas: int = 720
    seed: int = 0

    def __post_init__(self):
        lo, hi = self.scale
        if not 0.05 <= lo <= hi <= 1.0:
            raise ConfigError(f"scale must be MIN,MAX with 0.05 <= MIN <= MAX <= 1, got {lo:g},{hi:g}")
        if self.per_photo < 1 or not 64 <= self.canvas <= 4096:
            raise ConfigError("per-photo must be >= 1 and canvas 64..4096 px")

    @staticmethod
    def add_arguments(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--input", required=True, help="labelled manifest (CSV uri,label,split), local")
        parser.add_argument("--output", required=True, help="folder for images/ and manifest.csv (the input's rows + composites)")
        parser.add_argument("--base-uri", default=None, help="folder relative uris resolve against (default: the manifest's)")
        parser.add_argument("--background-label", default="neither", help="label of the photos pasted into (default %(default)s)")
        parser.add_argument("--per-photo", type=int, default=1, help="composites per brand photo (default %(default)s)")
        parser.add_argument("--scale", default="0.25,0.5", metavar="MIN,MAX",
                            help="side of the pasted photo as a share of the canvas side (default %(default)s)")
        parser.add_argument("--canvas", type=int, default=720, help="side of the composite in px (default %(default)s)")
        parser.add_argument("--seed", type=int, default=0)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "CompositesConfig":
        try:
            lo, hi = (float(v) for v in args.scale.split(","))
        except ValueError as exc:
            raise ConfigError(f"--scale must be MIN,MAX, got {args.scale!r}") from exc
        return cls(args.input, args.output, args.base_uri, args.background_label, args.per_photo, (lo, hi), args.canvas,
                   args.seed)


def paste(host: np.ndarray, item: np.ndarray, canvas: int, side: int, x: int, y: int) -> np.ndarray:
    """``host`` squashed to canvas x canvas with ``item`` squashed to side x side at (x, y); uint8 RGB."""
    from PIL import Image

    out = Image.fromarray(host).resize((canvas, canvas), Image.BICUBIC)
    out.paste(Image.fromarray(item).resize((side, side), Image.BICUBIC), (x, y))
    return np.asarray(out)


def _resolve(uri: str, base: Path) -> Path:
    """Absolute, so the written manifest works from its own folder (the bottleneck job resolves against that)."""
    path = Path(uri)
    return (path if path.is_absolute() else base / path).resolve()


def make_composites(config: CompositesConfig) -> dict:
    """Write the composites and the combined manifest; returns counts per split and the photos skipped (with why)."""
    from PIL import Image

    from brandlens.imaging import ImageDecodeError, decode_image

    source = Path(config.input)
    if not source.is_file():
        raise ConfigError(f"{source} is not a manifest file")
    base = Path(config.base_uri) if config.base_uri else source.parent
    with open(source, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or not {"uri", "label", "split"} <= set(rows[0]):
        raise ConfigError(f"{source}: needs a header with uri,label,split and at least one row (the split column keeps "
                          "test photos out of every composite)")
    out, images = Path(config.output), Path(config.output) / "images"
    images.mkdir(parents=True, exist_ok=True)
    rng = random.Random(config.seed)
    combined = [(str(_resolve(r["uri"], base)), r["label"], r["split"]) for r in rows]
    counts, skipped = {}, []
    for split in SPLITS:
        hosts = [r for r in rows if r["split"] == split and r["label"] == config.background_label]
        brands = [r for r in rows if r["split"] == split and r["label"] != config.background_label]
        if brands and not hosts:
            raise ConfigError(f"{source}: no '{config.background_label}' photos in {split} to paste its brand photos into")
        made = 0
        for i, row in enumerate(brands):
            try:
                item = decode_image(_resolve(row["uri"], base).read_bytes())
            except (OSError, ImageDecodeError) as exc:
                skipped.append((row["uri"], f"{type(exc).__name__}: {exc}"))
                continue
            for k in range(config.per_photo):
                host_row = rng.choice(hosts)
                side = int(round(config.canvas * rng.uniform(*config.scale)))
                x, y = rng.randint(0, config.canvas - side), rng.randint(0, config.canvas - side)
                try:
                    host = decode_image(_resolve(host_row["uri"], base).read_bytes())
                except (OSError, ImageDecodeError) as exc:
                    skipped.append((host_row["uri"], f"{type(exc).__name__}: {exc}"))
                    continue
                path = images / f"{split}-{i:05d}-{k}.jpg"
                Image.fromarray(paste(host, item, config.canvas, side, x, y)).save(path, quality=92)
                combined.append((str(path.resolve()), row["label"], split))
                made += 1
        counts[split] = made
    with open(out / "manifest.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["uri", "label", "split"])
        writer.writerows(combined)
    if skipped:
        with open(out / "skipped.csv", "w", newline="") as f:
            csv.writer(f).writerows([("uri", "reason"), *skipped])
    return {"manifest": str(out / "manifest.csv"), "rows": len(rows), "composites": counts, "skipped": len(skipped)}
