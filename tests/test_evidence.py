"""Brand evidence: exact class activation maps, boxes, several brands per photo, and where they surface
(backbone artifact, export, predict --explain, scoring Parquet, query summaries, error report)."""

from __future__ import annotations

import csv
import datetime as dt
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from beam_jobs.scoring.rows import score_row, tile_boxes, view_boxes_to_photo
from brandlens import evidence as ev
from schemas import model as contract
from schemas import scores as schema

AT = dt.datetime(2026, 11, 29, 12, 0, tzinfo=dt.timezone.utc)


def _planted(h=9, w=9, rows=slice(2, 5), cols=slice(5, 8)):
    """A map whose channel 1 (class 1's evidence) is strong in one block and channel 0 weak everywhere."""
    fmap = np.zeros((1, h, w, 3), np.float32)
    fmap[..., 0] = 1.0
    fmap[0, rows, cols, 1] = 6.0
    head = (np.ones(3, np.float32), np.zeros(3, np.float32), np.eye(3, dtype=np.float32), np.zeros(3, np.float32))
    return fmap, head


# --- pure functions -----------------------------------------------------------------------------------

def test_location_logits_average_exactly_to_the_pooled_logits():
    rng = np.random.default_rng(0)
    fmap = rng.normal(size=(3, 5, 7, 16)).astype(np.float32)
    scale, shift = rng.uniform(0.5, 2, 16).astype(np.float32), rng.normal(size=16).astype(np.float32)
    kernel, bias = rng.normal(size=(16, 4)).astype(np.float32), rng.normal(size=4).astype(np.float32)
    maps = ev.location_logits(fmap, scale, shift, kernel, bias).numpy()
    pooled = (fmap.mean(axis=(1, 2)) * scale + shift) @ kernel + bias
    assert maps.shape == (3, 5, 7, 4) and np.allclose(maps.mean(axis=(1, 2)), pooled, atol=1e-5)


def test_the_planted_block_is_the_box_the_point_and_a_confident_region():
    fmap, head = _planted()
    out = {k: v.numpy()[0] for k, v in ev.evidence(fmap, *head).items()}
    x1, y1, x2, y2 = out[ev.OUT_BOXES][1]
    # Cells 5..7 of 9 columns and 2..4 of 9 rows, give or take the bilinear blur of a quarter cell.
    assert abs(x1 - 5 / 9) < 0.06 and abs(x2 - 8 / 9) < 0.06 and abs(y1 - 2 / 9) < 0.06 and abs(y2 - 5 / 9) < 0.06
    px, py = out[ev.OUT_POINTS][1]
    assert 5 / 9 <= px <= 8 / 9 and 2 / 9 <= py <= 5 / 9
    assert abs(out[ev.OUT_AREAS][1] - (x2 - x1) * (y2 - y1)) < 1e-6
    global_score = np.exp(fmap.mean(axis=(1, 2))[0]) / np.exp(fmap.mean(axis=(1, 2))[0]).sum()
    assert out[ev.OUT_REGION_SCORES][1] > 0.99 > 0.5 > global_score[1]
    fx1, fy1, fx2, fy2 = out[ev.OUT_BOXES][2]  # class 2's map is flat: its box is one cell, not empty
    assert fx2 > fx1 and fy2 > fy1 and out[ev.OUT_AREAS][2] == pytest.approx(1 / 18 ** 2, rel=1e-4)


def test_two_separate_blocks_keep_the_peak_ones_region():
    fmap, head = _planted(rows=slice(0, 2), cols=slice(0, 2))
    fmap[0, 6:9, 6:9, 1] = 5.0  # a weaker second blob, not connected to the peak
    box = ev.evidence(fmap, *head)[ev.OUT_BOXES].numpy()[0, 1]
    assert box[2] < 0.35 and box[3] < 0.35


def test_boxes_map_back_from_the_input_to_the_photo():
    # 100 high, 200 wide: the centre crop is the middle square, the pad square adds 50 rows above and below.
    assert np.allclose(ev.input_box_to_image([0, 0, 1, 1], 100, 200, 1.0, "center_crop"), [0.25, 0, 0.75, 1])
    assert np.allclose(ev.input_box_to_image([0.5, 0.5], 100, 200, 1.0, "center_crop"), [0.5, 0.5])
    assert np.allclose(ev.input_box_to_image([0, 0.25, 1, 0.75], 100, 200, 1.0, "pad"), [0, 0, 1, 1])
    assert np.allclose(ev.input_box_to_image([0.1, 0.2, 0.3, 0.4], 100, 200, 1.0, "squash"), [0.1, 0.2, 0.3, 0.4])
    assert np.allclose(ev.input_box_to_image([0, 0, 1, 1], 100, 200, 0.5, "center_crop"), [0.375, 0.25, 0.625, 0.75])
    top, left, bottom, right = tile_boxes(300, 400, 2)[3]
    assert np.allclose(view_boxes_to_photo([0, 0, 1, 1], 300, 400, 2, 4, 0.9, "center_crop"),
                       [left / 400, top / 300, right / 400, bottom / 300])


def test_thresholds_and_several_brands_per_photo():
    labels = ["acme", "zenith", "neither"]
    rng = np.random.default_rng(1)
    y = np.repeat([0, 1, 2], 100)
    combined = rng.uniform(0, 0.6, (300, 3))
    combined[y == 0, 0] = 0.95
    combined[:5, 1] = 0.9  # five acme photos with a zenith-like region
    thresholds = ev.choose_thresholds(combined, y, labels, "neither", max_extra_rate=0.02)
    assert set(thresholds) == {"acme", "zenith"} and thresholds["acme"] >= 0.5
    assert np.mean(combined[y != 1, 1] >= thresholds["zenith"]) <= 0.01 + 1e-9
    scores, region = np.array([0.7, 0.2, 0.1]), np.array([0.8, 0.97, 0.3])
    boxes = np.array([[0, 0, 0.5, 0.5], [0.5, 0.5, 1, 1], [0, 0, 1, 1]])
    found = ev.reported_brands("acme", scores, labels, "neither", {"acme": 0.9, "zenith": 0.95}, region, boxes)
    assert [b["label"] for b in found] == ["acme", "zenith"] and found[0]["score"] == pytest.approx(0.8)
    assert found[1]["box"] == [0.5, 0.5, 1, 1] and found[1]["area"] == pytest.approx(0.25)
    assert ev.reported_brands("acme", scores, labels, "neither", None, region, boxes)[0]["label"] == "acme"
    assert ev.reported_brands("neither", scores, labels, "neither", {"acme": 0.99, "zenith": 0.99}, region, boxes) == []
    assert ev.reported_brands("acme", scores, labels, "neither", None)[0]["box"] is None


def test_a_conformal_threshold_keeps_the_extra_brand_rate_on_new_photos():
    """Per-brand thresholds, each the highest score of another photo, let extras through on new photos of many brands;
    one threshold at the conformal quantile of the photos' best other-brand scores holds the rate."""
    labels = [f"b{i}" for i in range(27)] + ["neither"]  # as FlickrLogos-27, with its 179 validation photos

    def photos(n, seed):
        rng = np.random.default_rng(seed)
        y = rng.integers(0, 28, n)
        combined = rng.beta(1, 6, (n, 28))
        combined[np.arange(n), y] = 0.97
        return combined, y

    held, y = photos(179, 0)
    new, y_new = photos(20000, 1)

    def extra_rate(combined, y, thresholds):
        t = np.array([thresholds.get(name, 2.0) for name in labels])
        brand = y < 27
        hits = (combined >= t) & (np.arange(28) != y[:, None])
        return hits[brand].any(axis=1).mean()

    conformal = ev.conformal_thresholds(held, y, labels, "neither", 0.04, floor=0.0)
    assert set(conformal) == set(labels[:27]) and len(set(conformal.values())) == 1
    assert extra_rate(held, y, conformal) <= 0.04 and extra_rate(new, y_new, conformal) <= 0.05
    per_brand = ev.choose_thresholds(held, y, labels, "neither", 0.04, floor=0.0)
    assert extra_rate(new, y_new, per_brand) > 0.05  # the rule it replaces for tiles
    assert ev.conformal_thresholds(held[:10], y[:10], labels, "neither", 0.04)["b0"] == 1.0  # too few photos to promise


def test_a_brand_that_passes_its_tile_threshold_on_any_view_is_added_with_that_views_box():
    labels = ["acme", "neither", "zenith"]
    brands = ev.reported_brands("acme", np.array([0.7, 0.2, 0.1]), labels, "neither", None)
    views = np.array([[0.7, 0.2, 0.1], [0.2, 0.2, 0.6], [0.1, 0.1, 0.8], [0.3, 0.5, 0.2]])  # whole photo, 3 tiles
    boxes = lambda v: np.full((3, 4), v / 10.0)  # noqa: E731  (view v's boxes: all v/10)
    found = ev.add_tile_brands(brands, "acme", views, None, labels, "neither", {"acme": 0.9, "zenith": 0.75}, boxes)
    assert [(b["label"], round(b["score"], 3), b["box"]) for b in found] == [("acme", 0.7, None), ("zenith", 0.8, [0.2] * 4)]
    assert ev.add_tile_brands(brands, "acme", views, None, labels, "neither", {"zenith": 0.85}) == brands
    assert [b["label"] for b in ev.add_tile_brands([], "neither", views, None, labels, "neither",
                                                         {"acme": 0.6, "zenith": 0.6})] == ["zenith", "acme"]


def test_score_row_writes_brands_and_box_that_the_schema_accepts():
    labels = ("acme", "zenith", "neither")
    outputs = {"label": np.array(["zenith", "neither"], object), "confidence": np.array([0.6, 0.9], np.float32),
               "scores": np.array([[0.3, 0.6, 0.1], [0.05, 0.05, 0.9]], np.float32),
               ev.OUT_REGION_SCORES: np.array([[0.99, 0.9, 0.1], [0.2, 0.3, 0.9]], np.float32),
               ev.OUT_BOXES: np.tile(np.array([[0.0, 0.0, 0.5, 0.5]], np.float32), (2, 3, 1))}
    rows = [score_row(f"p{i}", "u", "h", "2026-11-01", outputs, i, labels, "neither", "m", "b", AT, {}, False,
                      brand_thresholds={"acme": 0.95, "zenith": 0.95}) for i in range(2)]
    assert [b["label"] for b in rows[0][schema.BRANDS]] == ["zenith", "acme"] and rows[0][schema.BRAND_FOUND]
    assert rows[0][schema.BOX] == [0.0, 0.0, 0.5, 0.5]
    assert rows[1][schema.BRANDS] == [] and rows[1][schema.BOX] == [] and not rows[1][schema.BRAND_FOUND]
    table = pa.Table.from_pylist([{k: v for k, v in r.items() if k != schema.PARTITION} for r in rows],
                                 schema=schema.scores_schema(list(labels)))
    assert table.column(schema.BRANDS).type == pa.list_(schema.BRAND_TYPE)


def test_share_of_voice_and_co_occurrence_count_every_brand_of_a_post(tmp_path):
    from brandlens.query import QueryConfig, query

    labels = ["acme", "zenith", "neither"]
    posts = {"a": ["acme"], "b": ["acme", "zenith"], "c": ["zenith", "acme"], "d": [], "e": ["zenith"]}
    rows = []
    for pid, found in posts.items():
        rows.append({schema.POST_ID: pid, schema.IMAGE_URI: pid, schema.RESOLVED_URI: pid, schema.CONTENT_HASH: pid,
                     schema.LABEL: found[0] if found else "neither", schema.CONFIDENCE: 0.9, schema.BRAND_SCORE: 0.9,
                     schema.BRAND_FOUND: bool(found),
                     schema.MODEL_VERSION: "m", schema.BACKBONE: "b", schema.SCORED_AT: AT,
                     schema.BRANDS: [{"label": b, "score": 0.9, "box": [], "area": None} for b in found], schema.BOX: [],
                     **{schema.score_column(lab): 0.3 for lab in labels}})
    import apache_beam as beam
    from apache_beam.testing.test_pipeline import TestPipeline

    from beam_jobs.scoring.parquet_sink import WriteScoresParquet, run_key

    with TestPipeline(runner="DirectRunner") as p:  # the real sink: queries read committed runs only
        _ = p | beam.Create([dict(r, **{schema.PARTITION: "2026-11-01"}) for r in rows]) | WriteScoresParquet(
            str(tmp_path / "scores"), schema.scores_schema(labels), run_key("x", "m"), 100)
    text = query(QueryConfig(str(tmp_path / "scores"), ("share-of-voice", "co-occurrence"), None, 3, "json"))
    lines = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    voice = {r["brand"]: r for r in lines if "share_of_voice" in r}
    assert voice["acme"]["posts"] == 3 and voice["zenith"]["posts"] == 3
    assert voice["acme"]["alone"] == 1 and voice["acme"]["with_others"] == 2 and voice["acme"]["share_of_voice"] == 0.5
    pairs = [r for r in lines if "with_brand" in r]
    assert pairs == [{"brand": "acme", "with_brand": "zenith", "posts": 2}]


# --- the real backbone, export, predict, scoring job and report ----------------------------------------

def test_artifact_returns_the_final_map_whose_mean_is_the_embedding(lite0_artifact):
    from brandlens.backbones.artifact import FORMAT_VERSION, load_backbone

    backbone = load_backbone(lite0_artifact)
    assert Path(lite0_artifact).name.endswith(f"-f{FORMAT_VERSION}") and FORMAT_VERSION == 2
    x = np.random.default_rng(0).uniform(0, 255, (2, 224, 224, 3)).astype(np.float32)
    out = backbone.run(x)
    assert out["feature_map"].shape == (2, 7, 7, 1280)
    assert np.allclose(out["feature_map"].mean(axis=(1, 2)), out["embedding"], atol=1e-5)


@pytest.fixture(scope="module")
def sample_images(sample_bottlenecks) -> list[Path]:
    root = sample_bottlenecks.parent / "sample" / "images"
    return sorted(root.glob("acme/*.jpg"))[:2] + sorted(root.glob("zenith/*.jpg"))[:2] + sorted(root.glob("neither/*.jpg"))[:1]


def test_export_returns_scores_and_exact_maps_in_one_call(sample_model, sample_images):
    import tensorflow as tf

    from brandlens.imaging import decode_image
    from brandlens.preprocess import prepare

    card = json.loads((sample_model / contract.MODEL_CARD).read_text())
    assert set(card["brand_thresholds"]) == {"acme", "zenith"}
    assert all(0.5 <= t <= 1.0 for t in card["brand_thresholds"].values())
    serving = tf.saved_model.load(str(sample_model / contract.SERVING_DIR))
    bb = card["backbone"]
    images = np.stack([prepare(decode_image(p.read_bytes()), bb["input_size"], bb["crop_fraction"]) for p in sample_images])
    out = {k: v.numpy() for k, v in serving.signatures[contract.SIG_IMAGES](images=tf.constant(images)).items()}
    assert set(contract.EVIDENCE_OUTPUTS) <= set(out)
    logits = out[contract.OUT_EVIDENCE_MAPS].mean(axis=(1, 2))
    softmax = np.exp(logits - logits.max(axis=1, keepdims=True))
    assert np.allclose(softmax / softmax.sum(axis=1, keepdims=True), out[contract.OUT_SCORES], atol=1e-5)
    boxes = out[contract.OUT_EVIDENCE_BOXES]
    assert boxes.shape == (5, 3, 4) and (boxes >= 0).all() and (boxes <= 1).all()
    assert (boxes[..., 2] > boxes[..., 0]).all() and (boxes[..., 3] > boxes[..., 1]).all()
    raw = serving.signatures[contract.SIG_BYTES](image_bytes=tf.constant([p.read_bytes() for p in sample_images]))
    assert np.allclose(raw[contract.OUT_EVIDENCE_BOXES].numpy(), boxes, atol=1e-4)
    head = tf.saved_model.load(str(sample_model / contract.HEAD_DIR)).signatures[contract.SIG_EMBEDDING]
    assert not set(contract.EVIDENCE_OUTPUTS) & set(head.structured_outputs)


def test_predict_explain_writes_the_photo_with_heat_map_and_boxes(sample_model, sample_images, tmp_path, capsys):
    from PIL import Image

    from brandlens.cli import main

    folder = tmp_path / "explained"
    assert main(["predict", str(sample_model), *map(str, sample_images[:3]), "--explain", str(folder)]) == 0
    text = capsys.readouterr().out
    assert text.count("brand found: ") >= 3 and text.count("explained: ") == 3
    for path in sample_images[:3]:
        png = folder / f"{path.stem}.png"
        with Image.open(png) as img, Image.open(path) as photo:
            assert img.format == "PNG" and img.size == photo.size
            assert np.abs(np.asarray(img.convert("RGB"), int) - np.asarray(photo.convert("RGB"), int)).mean() > 5


def test_scoring_job_writes_brands_and_boxes_and_query_counts_them(sample_model, sample_bottlenecks, tmp_path):
    from beam_jobs.scoring.config import OutputConfig, ScoringConfig
    from beam_jobs.scoring.job import run
    from brandlens.query import QueryConfig, query

    sample = sample_bottlenecks.parent / "sample"
    with open(sample / "posts.csv") as f:
        rows = list(csv.DictReader(f))[::6]
    for row in rows:
        row["image_uri"] = str(sample / row["image_uri"])
    manifest = tmp_path / "posts.csv"
    with open(manifest, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    out = tmp_path / "out"
    run(ScoringConfig(input=str(manifest), model=str(sample_model), out=OutputConfig(str(out), scored_at=AT), batch_size=8))
    table = pq.read_table(str(out / "scores"), partitioning="hive").to_pylist()
    assert len(table) == len(rows)
    for row in table:
        assert row[schema.BRAND_FOUND] == bool(row[schema.BRANDS])
        if row[schema.LABEL] != "neither":
            top = row[schema.BRANDS][0]
            assert top["label"] == row[schema.LABEL] and row[schema.BOX] == top["box"]
            assert all(0 <= v <= 1 for v in top["box"]) and top["area"] == pytest.approx(
                (top["box"][2] - top["box"][0]) * (top["box"][3] - top["box"][1]), abs=1e-5)
        else:
            assert row[schema.BOX] == []
    text = query(QueryConfig(str(out / "scores"), ("share-of-voice",), None, 3, "json"))
    voice = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
    assert sum(r["posts"] for r in voice) == sum(len(r[schema.BRANDS]) for r in table)


def test_error_report_draws_the_evidence(sample_model, sample_images, lite0_artifact, tmp_path):
    from brandlens.backbones.artifact import load_backbone
    from brandlens.overlay import explain_with_backbone
    from trainer.report import write_error_report

    backbone = load_backbone(lite0_artifact)
    rng = np.random.default_rng(0)
    head = (np.ones(1280, np.float32), np.zeros(1280, np.float32), rng.normal(size=(1280, 3)).astype(np.float32),
            np.zeros(3, np.float32))
    labels = ["acme", "zenith", "neither"]
    rows = [{"uri": str(sample_images[0]), "label": "acme", "predicted": "zenith", "confidence": 0.9,
             "top": [("zenith", 0.9), ("acme", 0.1)]}]
    path = tmp_path / "errors.html"
    write_error_report(path, rows, None, "t", 1,
                       lambda rgb, shown: explain_with_backbone(backbone, head, rgb, labels, [s for s in shown if s != "neither"]))
    assert "data:image/png;base64," in path.read_text()
