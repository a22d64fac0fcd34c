"""Real-world probes for the shoe models: a shoe in a scene, another brand's shoe in a scene, and real photos
from another source.

* Each brand test photo of shoes-multiclass, and each test photo of other-brand-shoes (truth `neither`), is pasted
  at a third of the side (random place, seeded) into one of shoes-multiclass's everyday test photos, and those
  photos are also scored alone at the same size: the posts a brand team meets in street photos, which close-up
  training photos do not show.
* FlickrLogos-27's test photos (real Flickr photos, another source than every shoe set; a recipe may train on its
  train/validation photos, never on these): each adidas or nike photo should get that brand, each photo of another
  brand's logo (Puma's among them) and each logo-free photo `neither`.

Every model given is scored by the real scoring job, whole photo and ``--multi-crop 2``. Nothing here is trained on.

    PYTHONPATH=$PWD .venv/bin/python -m bench.street --model NAME=EXPORT [--model NAME=EXPORT ...]
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import shutil
import subprocess
import sys
from pathlib import Path

from bench.common import SHARED_DATA

RESULTS = Path(__file__).with_name("results")
CANVAS, SIDE = 720, 240
# probe kind -> what its share of posts right measures
KINDS = {
    "scene": "shoe of a known brand in a scene: right brand",
    "scene_other": "another brand's shoe in a scene: called neither",
    "everyday": "everyday photo: called neither",
    "logo": "FlickrLogos-27 test photo of a known brand's logo: right brand",
    "logo_other": "FlickrLogos-27 test photo of another brand's logo: called neither",
    "logo_free": "FlickrLogos-27 logo-free test photo: called neither",
}


def _rows(manifest: str) -> list[dict]:
    with open(SHARED_DATA / "manifests" / f"{manifest}.csv", newline="") as f:
        return list(csv.DictReader(f))


def make_posts(folder: Path, seed: int = 0) -> Path:
    """The probe's posts manifest (post_id, image_uri, truth, kind); the composites are written under ``folder``."""
    from PIL import Image

    from brandlens.composites import paste
    from brandlens.imaging import decode_image

    test = [r for r in _rows("shoes-multiclass") if r["split"] == "test"]
    shoes = [r for r in test if r["label"] != "neither"]
    others = [r for r in _rows("other-brand-shoes") if r["split"] == "test"]
    hosts = [r for r in test if r["label"] == "neither"]
    rng, posts = random.Random(seed), []
    (folder / "images").mkdir(parents=True, exist_ok=True)
    read = lambda r: decode_image((SHARED_DATA / r["uri"]).read_bytes())  # noqa: E731
    for prefix, kind, items in (("shoe", "scene", shoes), ("other", "scene_other", others)):
        for i, shoe in enumerate(items):
            rgb = paste(read(hosts[i % len(hosts)]), read(shoe), CANVAS, SIDE, rng.randint(0, CANVAS - SIDE),
                        rng.randint(0, CANVAS - SIDE))
            Image.fromarray(rgb).save(folder / "images" / f"{prefix}-{i:03d}.jpg", quality=90)
            posts.append((f"{prefix}-{i:03d}", f"images/{prefix}-{i:03d}.jpg", shoe["label"] if kind == "scene" else "neither",
                          kind))
    for i, host in enumerate(hosts):
        Image.fromarray(read(host)).resize((CANVAS, CANVAS), Image.BICUBIC).save(folder / "images" / f"none-{i:03d}.jpg",
                                                                                quality=90)
        posts.append((f"none-{i:03d}", f"images/none-{i:03d}.jpg", "neither", "everyday"))
    for i, row in enumerate(_rows("flickrlogos27")):
        if row["split"] != "test":  # a recipe may train on the rest (its 'neither' rows are the shoe sets' Flickr8k)
            continue
        if row["label"] in ("adidas", "nike"):
            kind, truth = "logo", row["label"]
        else:
            kind, truth = ("logo_free" if row["label"] == "neither" else "logo_other"), "neither"
        posts.append((f"fl27-{i:04d}", str(SHARED_DATA / row["uri"]), truth, kind))
    path = folder / "posts.csv"
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["post_id", "image_uri", "truth", "kind"])
        writer.writerows(posts)
    return path


def rates(scores: Path, labels: set[str]) -> dict:
    """Per probe kind: the share right (the brand where the truth is one the model knows, else `neither`)."""
    import duckdb

    rows = duckdb.sql(f"select kind, truth, label from read_parquet('{scores}/**/*.parquet')").fetchall()
    out = {}
    for kind in KINDS:
        mine = [(t if t in labels else "neither", p) for k, t, p in rows if k == kind]
        if mine:
            out[kind] = {"right": round(sum(t == p for t, p in mine) / len(mine), 4), "n": len(mine)}
    brand = [p for k, _, p in rows if k == "scene"]
    if brand:
        out["scene"]["called_neither"] = round(sum(p == "neither" for p in brand) / len(brand), 4)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", required=True, metavar="NAME=EXPORT")
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/brandlens-street"))
    args = parser.parse_args(argv)
    posts = make_posts(args.work_dir)
    results = {}
    for spec in args.model:
        name, _, export = spec.partition("=")
        labels = set(json.loads((Path(export) / "model_card.json").read_text())["labels"])
        for crops in (0, 2):
            out = args.work_dir / "scores" / f"{name}-mc{crops}"
            shutil.rmtree(out, ignore_errors=True)
            subprocess.run([sys.executable, "-m", "brandlens.cli", "score", "--input", str(posts), "--model", export,
                            "--output", str(out), "--multi-crop", str(crops)], check=True)
            results[f"{name}, multi-crop {crops}"] = rates(out / "scores", labels)
    write_results(results, "PYTHONPATH=$PWD python -m bench.street " + " ".join(argv if argv is not None else sys.argv[1:]))
    return 0


def write_results(results: dict, command: str) -> None:
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "street.json").write_text(json.dumps({"results": results, "command": command, "canvas": CANVAS,
                                                     "pasted_side": SIDE, "kinds": KINDS}, indent=2, sort_keys=True) + "\n")
    lines = ["# Real-world probes for the shoe models (bench/street.py)", "", f"`{command}`", "",
             f"Test shoe photos (shoes-multiclass's brands, and other-brand-shoes') pasted at {SIDE} of {CANVAS} px into "
             "everyday test photos, those photos alone, and FlickrLogos-27's test photos (another source). "
             "Each cell: the share right, of n.", "",
             "| model, scoring | " + " | ".join(KINDS.values()) + " |", "|---|" + "---|" * len(KINDS)]
    for key, r in results.items():
        lines.append(f"| {key} | " + " | ".join(f"{r[k]['right']:.1%} of {r[k]['n']}" if k in r else "-" for k in KINDS)
                     + " |")
    (RESULTS / "street.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    raise SystemExit(main())
