"""Every brand in the photo, measured on the product itself: trained exports scored by the real scoring job.

    PYTHONPATH=$PWD python -m bench.multibrand_product --model NAME=EXPORT [--model NAME=EXPORT ...]

bench/localisation.py measures heads fitted on cached maps; this runs what a user runs. The posts are
bench.localisation's composites of FlickrLogos-27 test photos (two brands side by side, one pasted small into
the other) and the 270 test photos themselves; each export (e.g. ``python -m bench.accuracy --manifests
flickrlogos27 [--tiles 2]``'s ``best``) scores them with the scoring job (DirectRunner) with and without
``--multi-crop 2``, whose tile thresholds come from the export's model card. From the Parquet output: both brands
in ``brands`` on the composites, an extra brand on single-brand test photos, a brand on logo-free test photos,
and the label's accuracy on the test photos (brand accuracy, logo-free photos called a brand). Test photos only
measure here; nothing is chosen on them. Also each export's own evidence (pointing game, box IoU) on the annotated
validation photos.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

from bench.common import REPO, SHARED_DATA
from bench.localisation import NEITHER, collect, composites, localisation_rates

log = logging.getLogger("bench.multibrand_product")
RESULTS_JSON = REPO / "bench" / "results" / "multibrand_product.json"
RESULTS_MD = REPO / "bench" / "results" / "multibrand_product.md"
GRID = 2


def make_posts(folder: Path) -> tuple[Path, dict]:
    """posts.csv (post_id, image_uri) of the composites (saved as JPEG) and the test photos, and each post's truth."""
    from PIL import Image

    from brandlens.imaging import decode_image

    images = folder / "images"
    images.mkdir(parents=True, exist_ok=True)
    test = collect()["test"]
    rows, truth = [], {}
    for i, comp in enumerate(composites(test, lambda p: decode_image(Path(p).read_bytes()), 1.0)):
        post = f"comp{i:04d}"
        Image.fromarray(comp["rgb"]).save(images / f"{post}.jpg", quality=92)
        rows.append({"post_id": post, "image_uri": str(images / f"{post}.jpg")})
        truth[post] = {"kind": comp["kind"], "labels": list(comp["labels"])}
    for i, photo in enumerate(test):
        post = f"test{i:04d}"
        rows.append({"post_id": post, "image_uri": str(photo["path"])})
        truth[post] = {"kind": "test", "labels": [] if photo["label"] == NEITHER else [photo["label"]]}
    posts = folder / "posts.csv"
    with posts.open("w", newline="") as f:
        writer = csv.DictWriter(f, ["post_id", "image_uri"])
        writer.writeheader()
        writer.writerows(rows)
    return posts, truth


def measure(found: dict[str, tuple[str, set[str]]], truth: dict) -> dict:
    """Rates from each post's (label, brands) against its truth (pure)."""
    both = {"side_by_side": [], "pasted_small": []}
    extra, logo_free_brand, right, brand_right, false_alarm = [], [], [], [], []
    for post, t in truth.items():
        label, brands = found[post]
        if t["kind"] in both:
            both[t["kind"]].append(set(t["labels"]) <= brands)
            continue
        true = t["labels"][0] if t["labels"] else NEITHER
        right.append(label == true)
        if t["labels"]:
            brand_right.append(label == true)
            extra.append(bool(brands - {true, label}))
        else:
            false_alarm.append(label != NEITHER)
            logo_free_brand.append(bool(brands))
    rate = lambda v: round(sum(v) / len(v), 6) if v else None  # noqa: E731
    return {"multi_brand_recall": rate(both["side_by_side"] + both["pasted_small"]),
            "multi_brand_recall_by_kind": {k: rate(v) for k, v in both.items()},
            "single_brand_false_extra_rate": rate(extra), "logo_free_with_a_brand": rate(logo_free_brand),
            "test_accuracy": rate(right), "test_brand_accuracy": rate(brand_right), "test_false_alarm_rate": rate(false_alarm),
            "n_composites": sum(len(v) for v in both.values()), "n_test": len(right)}


def score(posts: Path, model: str, output: Path, multi_crop: int) -> tuple[dict, float]:
    """The scoring job on the posts; each post's (label, set of brands) from its Parquet output, and the job's seconds."""
    import duckdb

    from beam_jobs.scoring.config import OutputConfig, ScoringConfig
    from beam_jobs.scoring.job import run

    summary = run(ScoringConfig(input=str(posts), model=model, out=OutputConfig(str(output)), multi_crop=multi_crop))
    rows = duckdb.sql(f"select post_id, label, brands from read_parquet('{output}/scores/**/*.parquet', "
                      "hive_partitioning=1)").fetchall()
    return {post: (label, {b["label"] for b in brands or []}) for post, label, brands in rows}, summary["seconds"]


def evidence_on_validation(export: str) -> dict:
    """The export's own evidence for the true brand on FlickrLogos-27's annotated validation photos: the share whose
    strongest point lies in a logo box (pointing game), whose box has IoU >= 0.5 with one, and the median box area."""
    import numpy as np
    import tensorflow as tf

    from bench.common import ANNOTATION_FILE, read_annotations
    from brandlens import evidence as ev
    from brandlens.imaging import decode_image
    from brandlens.preprocess import prepare
    from schemas import model as contract

    card = json.loads((Path(export) / contract.MODEL_CARD).read_text())
    labels, backbone = card["labels"], card["backbone"]
    crop, mode = backbone["crop_fraction"], backbone["resize_mode"]
    serving = tf.saved_model.load(str(Path(export) / contract.SERVING_DIR)).signatures[contract.SIG_IMAGES]
    annotations = read_annotations(SHARED_DATA / ANNOTATION_FILE)
    items, sizes, outs, y = [], [], [], []
    for row in csv.DictReader((SHARED_DATA / "manifests" / "flickrlogos27.csv").open()):
        key = (Path(row["uri"]).parent.name, Path(row["uri"]).name)
        if row["split"] != "validation" or key not in annotations:
            continue
        rgb = decode_image((SHARED_DATA / row["uri"]).read_bytes())
        image = prepare(rgb, backbone["input_size"], crop, mode)
        outs.append({k: v.numpy()[0] for k, v in serving(**{contract.INPUT_IMAGES: tf.constant(image[None])}).items()
                     if k in (contract.OUT_EVIDENCE_POINTS, contract.OUT_EVIDENCE_BOXES)})
        items.append({"boxes": annotations[key]})
        sizes.append(rgb.shape[:2])
        y.append(labels.index(row["label"]))
    out = {k: np.stack([o[k] for o in outs]) for k in outs[0]}
    rates = localisation_rates(items, sizes, out, y, crop, mode)
    areas = [ev.box_area(ev.input_box_to_image(out[contract.OUT_EVIDENCE_BOXES][i, y[i]], *sizes[i], crop, mode))
             for i in range(len(y))]
    return {"n_photos": rates["n_photos"], "pointing_game": round(rates["pointing_game"], 6),
            "box_iou50_rate": round(rates["box_iou50_rate"], 6), "median_box_area": round(float(np.median(areas)), 6)}


def render(result: dict) -> str:
    lines = ["# Every brand in the photo, on the product (bench/multibrand_product.py)", "",
             f"`{result['command']}`, {result['date']}, commit {result['commit']}. Real exports scored by the scoring job "
             f"(DirectRunner) on {result['n_composites']} composites of FlickrLogos-27 test photos and the "
             f"{result['n_test']} test photos; `--multi-crop {GRID}` uses the tile thresholds of each model card.", "",
             "| model | scoring | both brands (side by side / pasted small) | extra brand, single-brand photos | "
             "logo-free photos with a brand | test accuracy | brand accuracy | logo-free called a brand | job s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, runs in result["models"].items():
        for how, r in runs.items():
            kinds = r["multi_brand_recall_by_kind"]
            lines.append(f"| {name} | {how} | {r['multi_brand_recall']:.3f} ({kinds['side_by_side']:.3f} / "
                         f"{kinds['pasted_small']:.3f}) | {r['single_brand_false_extra_rate']:.3f} | "
                         f"{r['logo_free_with_a_brand']:.3f} | {r['test_accuracy']:.3f} | {r['test_brand_accuracy']:.3f} | "
                         f"{r['test_false_alarm_rate']:.3f} | {r['seconds']:.0f} |")
    lines += ["", "Goals (issue 15): both brands >= 0.8 with <= 0.05 extra brands on single-brand photos.", "",
              "Each export's own evidence for the true brand on the annotated validation photos (bench/localisation.py "
              "measures a frozen head by cross-validation on the training photos instead):", "",
              "| model | photos | pointing game | box IoU >= 0.5 | median box area |", "|---|---|---|---|---|"]
    for name, e in result.get("evidence_on_validation", {}).items():
        lines.append(f"| {name} | {e['n_photos']} | {e['pointing_game']:.3f} | {e['box_iou50_rate']:.3f} | "
                     f"{e['median_box_area']:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.multibrand_product", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", action="append", required=True, metavar="NAME=EXPORT",
                        help="an export to measure, named for the table (repeat for several)")
    parser.add_argument("--work-dir", type=Path, default=None, help="posts and scoring outputs (default: a temporary folder)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    for noisy in ("apache_beam", "absl", "tensorflow"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if not (SHARED_DATA / "manifests" / "flickrlogos27.csv").is_file():
        raise SystemExit(f"real data not available: {SHARED_DATA} (the ../shared folder beside the checkout)")
    models = dict(m.split("=", 1) for m in args.model)
    from bench.accuracy import environment

    started = time.time()
    with tempfile.TemporaryDirectory(prefix="multibrand-") as tmp:
        work = args.work_dir or Path(tmp)
        posts, truth = make_posts(work / "posts")
        out: dict = {}
        for name, export in models.items():
            out[name] = {}
            for how, multi_crop in (("whole photo", 0), (f"--multi-crop {GRID}", GRID)):
                found, seconds = score(posts, export, work / f"{name}-{multi_crop}", multi_crop)
                out[name][how] = {**measure(found, truth), "seconds": seconds, "model": export}
                log.info("%s, %s: %s", name, how, out[name][how])
    evidence = {name: evidence_on_validation(export) for name, export in models.items()}
    command = "PYTHONPATH=$PWD python -m bench.multibrand_product " + " ".join(argv if argv is not None else sys.argv[1:])
    env = environment(command, time.time() - started)
    first = next(iter(next(iter(out.values())).values()))
    result = {**env, "models": out, "n_composites": first["n_composites"], "n_test": first["n_test"],
              "evidence_on_validation": evidence}
    RESULTS_JSON.parent.mkdir(parents=True, exist_ok=True)
    RESULTS_JSON.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    RESULTS_MD.write_text(render(result))
    print(render(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
