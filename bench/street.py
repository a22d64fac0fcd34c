"""A shoe in a scene: the scoring job on test shoe photos pasted small into everyday test photos.

Each brand test photo of shoes-multiclass is pasted at a third of the side (random place, seeded) into one of
its everyday test photos, and those photos are also scored alone at the same size: the posts a brand team meets
in street photos, which close-up training photos do not show. Every model given is scored by the real scoring
job, whole photo and ``--multi-crop 2``. Nothing here is trained or tuned on.

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


def make_posts(folder: Path, seed: int = 0) -> Path:
    from PIL import Image

    from brandlens.composites import paste
    from brandlens.imaging import decode_image

    with open(SHARED_DATA / "manifests" / "shoes-multiclass.csv", newline="") as f:
        test = [r for r in csv.DictReader(f) if r["split"] == "test"]
    shoes = [r for r in test if r["label"] != "neither"]
    hosts = [r for r in test if r["label"] == "neither"]
    rng, posts = random.Random(seed), []
    (folder / "images").mkdir(parents=True, exist_ok=True)
    read = lambda r: decode_image((SHARED_DATA / r["uri"]).read_bytes())  # noqa: E731
    for i, shoe in enumerate(shoes):
        rgb = paste(read(hosts[i % len(hosts)]), read(shoe), CANVAS, SIDE, rng.randint(0, CANVAS - SIDE),
                    rng.randint(0, CANVAS - SIDE))
        Image.fromarray(rgb).save(folder / "images" / f"shoe-{i:03d}.jpg", quality=90)
        posts.append((f"shoe-{i:03d}", f"images/shoe-{i:03d}.jpg", shoe["label"]))
    for i, host in enumerate(hosts):
        Image.fromarray(read(host)).resize((CANVAS, CANVAS), Image.BICUBIC).save(folder / "images" / f"none-{i:03d}.jpg",
                                                                                quality=90)
        posts.append((f"none-{i:03d}", f"images/none-{i:03d}.jpg", "neither"))
    path = folder / "posts.csv"
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["post_id", "image_uri", "truth"])
        writer.writerows(posts)
    return path


def rates(scores: Path) -> dict:
    import duckdb

    rows = duckdb.sql(f"select truth, label from read_parquet('{scores}/**/*.parquet')").fetchall()
    brand = [(t, p) for t, p in rows if t != "neither"]
    none = [p for t, p in rows if t == "neither"]
    return {"brand_in_scene_right": round(sum(t == p for t, p in brand) / len(brand), 4),
            "brand_in_scene_called_neither": round(sum(p == "neither" for _, p in brand) / len(brand), 4),
            "everyday_called_a_brand": round(sum(p != "neither" for p in none) / len(none), 4),
            "n_brand": len(brand), "n_everyday": len(none)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", required=True, metavar="NAME=EXPORT")
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/brandlens-street"))
    args = parser.parse_args(argv)
    posts = make_posts(args.work_dir)
    results = {}
    for spec in args.model:
        name, _, export = spec.partition("=")
        for crops in (0, 2):
            out = args.work_dir / "scores" / f"{name}-mc{crops}"
            shutil.rmtree(out, ignore_errors=True)
            subprocess.run([sys.executable, "-m", "brandlens.cli", "score", "--input", str(posts), "--model", export,
                            "--output", str(out), "--multi-crop", str(crops)], check=True)
            results[f"{name}, multi-crop {crops}"] = rates(out / "scores")
    command = "PYTHONPATH=$PWD python -m bench.street " + " ".join(argv if argv is not None else sys.argv[1:])
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "street.json").write_text(json.dumps({"results": results, "command": command, "canvas": CANVAS,
                                                     "pasted_side": SIDE}, indent=2, sort_keys=True) + "\n")
    lines = ["# A shoe in a scene (bench/street.py)", "", f"`{command}`", "",
             f"Test shoe photos pasted at {SIDE} of {CANVAS} px into everyday test photos, and those photos alone.", "",
             "| model, scoring | shoe in a scene: right brand | called neither | everyday photos called a brand |",
             "|---|---|---|---|"]
    for key, r in results.items():
        lines.append(f"| {key} | {r['brand_in_scene_right']:.1%} of {r['n_brand']} | {r['brand_in_scene_called_neither']:.1%} | "
                     f"{r['everyday_called_a_brand']:.1%} of {r['n_everyday']} |")
    (RESULTS / "street.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
