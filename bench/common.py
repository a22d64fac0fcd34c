"""Pieces shared by the accuracy benchmark and the lever study (bench/levers.py).

Everything here drives the real product: the bottleneck job (``beam_jobs.bottlenecks.job.run``)
and the trainer's own fitting and evaluation functions. Nothing is copied into the
repository: work folders live outside it, and manifests made here (logo boxes) point at
the shared images by absolute path.
"""

from __future__ import annotations

import csv
import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("BRANDLENS_SHARED", REPO.parent / "shared")) / "data"
MANIFESTS = ("shoes-binary", "shoes-multiclass", "shoes-open", "flickrlogos27")
# Manifests the benchmark puts together: shoes-multiclass plus other brands' shoes as hard 'neither' negatives.
COMBINED = {"shoes-open": ("shoes-multiclass", "other-brand-shoes")}
OTHER_BRANDS = ("asics", "new_balance", "puma", "reebok", "salomon", "vans")  # other-brand-shoes.csv's labels
LOGO_MANIFEST = "flickrlogos27"
ANNOTATION_FILE = "flickrlogos27/flickr_logos_27_dataset_training_set_annotation.txt"
DEFAULT_WORK_DIR = Path(os.environ.get("BRANDLENS_BENCH_DIR", "/tmp/brandlens-bench"))
# The goals, on test.
GOALS = {"shoes-binary": 0.974, "shoes-multiclass": 0.96, "flickrlogos27": 0.90}

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- logo boxes -> manifest

def read_annotations(path: str | Path) -> dict[tuple[str, str], list[tuple[int, int, int, int]]]:
    """FlickrLogos-27's ``file brand subset x1 y1 x2 y2`` lines -> {(brand folder, file): distinct boxes}.

    The header line and malformed or empty boxes (x2 <= x1 or y2 <= y1) are skipped; the same box
    listed in several subsets counts once.
    """
    boxes: dict[tuple[str, str], list] = {}
    for line in Path(path).read_text().splitlines():
        parts = line.split()
        if len(parts) < 7:
            continue
        try:
            x1, y1, x2, y2 = (int(float(v)) for v in parts[3:7])
        except ValueError:
            continue  # the header
        if x2 <= x1 or y2 <= y1 or min(x1, y1) < 0:
            continue
        found = boxes.setdefault((parts[1], parts[0]), [])
        if (x1, y1, x2, y2) not in found:
            found.append((x1, y1, x2, y2))
    return boxes


def logo_manifest(manifest: str | Path, annotations: str | Path, output: str | Path, base_uri: str | Path,
                  splits: tuple[str, ...] = ("train",)) -> dict:
    """Write ``manifest`` with x1,y1,x2,y2 columns: one row per logo box of its ``splits`` rows.

    The bottleneck job treats rows with identical bytes as one image and applies every box of the
    copies that share its label, so an image with three boxes is three rows here and one image (plus
    three logo crops) there. Rows without a box keep empty box cells. Uris become absolute (under
    ``base_uri``) so the manifest works from any folder. Returns counts.
    """
    boxes = read_annotations(annotations)
    rows_out, with_boxes, box_rows = [], 0, 0
    with open(manifest, newline="") as f:
        for row in csv.DictReader(f):
            uri = row["uri"]
            parts = Path(uri).parts
            key = (parts[-2], parts[-1]) if len(parts) >= 2 else None
            absolute = uri if ("://" in uri or Path(uri).is_absolute()) else str(Path(base_uri) / uri)
            found = boxes.get(key, []) if row.get("split") in splits else []
            base = {"uri": absolute, "label": row["label"], "split": row.get("split", "")}
            if found:
                with_boxes += 1
                box_rows += len(found)
                rows_out += [{**base, "x1": b[0], "y1": b[1], "x2": b[2], "y2": b[3]} for b in found]
            else:
                rows_out.append({**base, "x1": "", "y1": "", "x2": "", "y2": ""})
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    with open(output, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["uri", "label", "split", "x1", "y1", "x2", "y2"])
        writer.writeheader()
        writer.writerows(rows_out)
    return {"rows": len(rows_out), "images_with_boxes": with_boxes, "boxes": box_rows}


# --------------------------------------------------------------------------- bottleneck runs

@dataclass(frozen=True)
class Features:
    """How the bottlenecks are made: one real bottleneck job per manifest."""

    backbone: str = "efficientnet_lite2"
    resize_mode: str | None = None        # None: the product default
    crop_fraction: float | None = None    # None: the product default for the mode
    augment: int = 0
    logo_crops: bool = False              # flickrlogos27 only: boxes from the annotation file
    cut: int | None = None                # store the maps entering this block (the trainer's --adapt blocks)
    background_crops: bool = False        # flickrlogos27 only: strips outside the logo boxes as 'neither'
    tiles: int = 0                        # multi-crop tiles of training photos, logo photos' by their boxes (--tiles)
    input_size: int | None = None         # None: the backbone's own input side (--input-size)

    @property
    def tag(self) -> str:
        parts = [self.backbone.replace("efficientnet_", ""), self.resize_mode or "default"]
        if self.input_size is not None:
            parts.append(f"s{self.input_size}")
        if self.crop_fraction is not None:
            parts.append(f"c{self.crop_fraction:g}")
        if self.cut is not None:
            parts.append(f"cut{self.cut}")
        if self.background_crops:
            parts.append("bg")
        if self.tiles:
            parts.append(f"tiles{self.tiles}")
        if self.augment:
            parts.append(f"aug{self.augment}")
        if self.logo_crops:
            parts.append("logos")
        return "-".join(parts)

    def describe(self) -> str:
        from brandlens.config import DEFAULT_RESIZE_MODE

        mode = self.resize_mode or DEFAULT_RESIZE_MODE
        bits = [mode + (f" {self.crop_fraction:g}" if self.crop_fraction is not None else "")]
        if self.input_size is not None:
            bits.append(f"{self.input_size} px input")
        if self.augment:
            bits.append(f"{self.augment} augmented variants")
        if self.logo_crops:
            bits.append("logo crops")
        if self.cut is not None:
            bits.append(f"maps at block {self.cut}")
        if self.background_crops:
            bits.append("background strips as neither")
        if self.tiles:
            bits.append(f"{self.tiles}x{self.tiles} tiles (of logo photos by their boxes)")
        return ", ".join(bits)


def manifest_path(name: str) -> Path:
    """A shared manifest; a combined one (``COMBINED``) is checked by its parts."""
    return SHARED_DATA / "manifests" / f"{COMBINED.get(name, (name,))[-1]}.csv"


def combined_manifest(name: str, output: Path) -> Path:
    """The parts of a ``COMBINED`` manifest in one CSV (uri,label,split; uris relative to the shared data)."""
    output.parent.mkdir(parents=True, exist_ok=True)
    with open(output, "w", newline="") as out:
        writer = csv.writer(out)
        writer.writerow(["uri", "label", "split"])
        for part in COMBINED[name]:
            with open(SHARED_DATA / "manifests" / f"{part}.csv", newline="") as f:
                for row in csv.DictReader(f):
                    writer.writerow([row["uri"], row["label"], row["split"]])
    return output


def run_bottlenecks(work: Path, name: str, features: Features, artifact_root: Path | None = None,
                    batch_size: int = 32) -> Path:
    """The real bottleneck job for one manifest; reused when an identical run already finished there."""
    from beam_jobs.bottlenecks.config import BottleneckConfig
    from beam_jobs.bottlenecks.job import run
    from brandlens.config import BackboneConfig, default_artifact_root

    output = work / "bottlenecks" / features.tag / name
    stamp = output / "bench-features.json"
    wanted = json.dumps({**asdict(features), "manifest": name}, sort_keys=True)
    summary = output / "summary.json"
    if stamp.is_file() and stamp.read_text() == wanted and summary.is_file() \
            and json.loads(summary.read_text()).get("status") == "ok":
        log.info("reusing %s", output)
        return output
    source = manifest_path(name)
    label_map = ()
    if name in COMBINED:
        source = combined_manifest(name, work / "manifests" / f"{name}.csv")
        label_map = ((",".join(OTHER_BRANDS), "neither"),)
    if (features.logo_crops or features.background_crops) and name == LOGO_MANIFEST:
        source = work / "manifests" / f"{name}-logo-boxes.csv"
        counts = logo_manifest(manifest_path(name), SHARED_DATA / ANNOTATION_FILE, source, SHARED_DATA)
        log.info("logo manifest %s: %s", source, counts)
    config = BottleneckConfig(
        input=str(source), output=str(output), base_uri=str(SHARED_DATA), augment=features.augment,
        logo_crops=features.logo_crops and name == LOGO_MANIFEST, batch_size=batch_size, cut=features.cut,
        label_map=label_map, background_crops=features.background_crops and name == LOGO_MANIFEST, tiles=features.tiles,
        cache=str(work / "embedding-cache"), overwrite=True,
        backbone=BackboneConfig(features.backbone, artifact_root or default_artifact_root(), None,
                                features.crop_fraction, features.resize_mode, features.input_size))
    run(config)
    stamp.write_text(wanted)
    return output


# --------------------------------------------------------------------------- heads

@dataclass(frozen=True)
class HeadSearch:
    """The trainer's search space the benchmark uses (validation cross-entropy ranks, as ``brandlens search``)."""

    grid: tuple[str, ...] = ("l2=1.0,0.1,0.01,0.001", "learning_rate=0.001,0.0003")
    target_precision: float | None = None
    extra: dict = field(default_factory=dict)   # fixed HParams changes, e.g. class_weights

    def trials(self):
        from trainer.config import HParams
        from trainer.search import candidates, parse_grid

        return candidates(parse_grid(list(self.grid)), HParams(**self.extra))
