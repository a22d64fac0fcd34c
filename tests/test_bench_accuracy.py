"""The accuracy benchmark's pure parts: logo-box manifests and the results rendering (fast, no CNN)."""

from __future__ import annotations

import csv

import pytest

from bench.accuracy import render, results_table, top_confusions
from bench.common import Features, logo_manifest, read_annotations
from trainer.config import HParams

ANNOTATIONS = """filename , logo,x1,y1,x2,y2
a.jpg Adidas 1 10 20 50 60
a.jpg Adidas 2 10 20 50 60
a.jpg Adidas 1 70 5 90 30
b.jpg Nike 1 3 3 3 9
c.jpg Nike 1 1 2 30 40
"""


def test_annotations_dedupe_and_skip_bad_boxes(tmp_path):
    path = tmp_path / "ann.txt"
    path.write_text(ANNOTATIONS)
    boxes = read_annotations(path)
    assert boxes[("Adidas", "a.jpg")] == [(10, 20, 50, 60), (70, 5, 90, 30)]
    assert ("Nike", "b.jpg") not in boxes  # x2 == x1
    assert boxes[("Nike", "c.jpg")] == [(1, 2, 30, 40)]


def test_logo_manifest_one_row_per_box_train_only(tmp_path):
    (tmp_path / "ann.txt").write_text(ANNOTATIONS)
    manifest = tmp_path / "m.csv"
    manifest.write_text("uri,label,split\nlogos/train/Adidas/a.jpg,adidas,train\nlogos/train/Nike/c.jpg,nike,validation\n"
                        "neither/x.jpg,neither,train\n")
    counts = logo_manifest(manifest, tmp_path / "ann.txt", tmp_path / "out" / "m.csv", "/data")
    rows = list(csv.DictReader(open(tmp_path / "out" / "m.csv")))
    assert counts == {"rows": 4, "images_with_boxes": 1, "boxes": 2}
    assert [(r["uri"], r["x1"], r["y2"]) for r in rows[:2]] == [("/data/logos/train/Adidas/a.jpg", "10", "60"),
                                                                 ("/data/logos/train/Adidas/a.jpg", "70", "30")]
    assert rows[2]["split"] == "validation" and rows[2]["x1"] == ""  # boxes only for training rows
    assert rows[3]["uri"] == "/data/neither/x.jpg" and rows[3]["x1"] == ""


def test_logo_manifest_rows_parse_as_boxes():
    from beam_jobs.bottlenecks.labels import annotate

    assert annotate({"label": "nike", "split": "train", "x1": "1", "y1": "2", "x2": "30", "y2": "40"}).box == (1, 2, 30, 40)
    assert annotate({"label": "nike", "split": "train", "x1": "", "y1": "", "x2": "", "y2": ""}).box is None


def _result(manifest: str, accuracy: float) -> dict:
    labels = ["adidas", "nike"]
    matrix = [[9, 1], [2, 8]]
    per_class = {label: {"precision": 0.8, "recall": 0.9, "f1": 0.85, "support": 10} for label in labels}
    test = {"accuracy": accuracy, "argmax_accuracy": accuracy, "cross_entropy": 0.25, "count": 20, "macro_f1": 0.85,
            "per_class": per_class, "confusion_matrix": matrix}
    return {"manifest": manifest, "features": Features(resize_mode="squash", augment=2), "hparams": HParams(l2=0.1),
            "metrics": {"labels": labels, "test": test, "validation": {"accuracy": 0.9}, "best_step": 120, "threshold": None},
            "runs": 8, "output": "/w", "errors_html": "/w/best/errors.html", "backbone_version": "efficientnet_lite2@x-c1-squash",
            "classification": "closed world, 2 classes", "train_examples": 30, "target_precision": None,
            "seconds": {"bottlenecks": 1.0, "trainer": 2.0, "cnn_images": 0}}


def test_results_table_has_the_study_columns_and_goals():
    lines = results_table([_result("shoes-binary", 0.98), _result("shoes-multiclass", 0.9)])
    assert lines[0].startswith("| run | test accuracy | cross-entropy | steps | learning rate | optimizer | data set |")
    assert "| b1 | 98.0% | 0.250 | 120 | 0.001 | adam | shoes-binary (20 test images) | binary | efficientnet_lite2 |" in lines[2]
    assert lines[2].endswith("| 97.4% | yes |") and lines[3].endswith("| 96.0% | no |")
    assert any(line.startswith("| study | 97.4% |") for line in lines)


def test_render_explains_unmet_goals_with_levers():
    levers = [{"manifest": "shoes-multiclass", "features": "lite2-squash", "describe": "squash", "head": "logistic",
               "validation_accuracy": 0.95, "test_accuracy": 0.93, "hparams": {"l2": 0.1, "learning_rate": 0.001},
               "multi_crop_2": {"validation": {"accuracy": 0.9}, "test": {"accuracy": 0.91}}}]
    env = {"date": "2026-01-01", "version": "0.1.0", "commit": "abc", "machine": "x86_64", "command": "bench", "seconds": 3}
    text = render([_result("shoes-binary", 0.98), _result("shoes-multiclass", 0.9)], env, levers)
    assert "brandlens 0.1.0, commit abc" in text and "| adidas | 0.800 | 0.900 | 0.850 | 10 |" in text
    assert "| true \\ predicted | adidas | nike |" in text and "| nike | 2 | 8 |" in text
    assert text.count("not met") == 1 and "2 x nike -> adidas" in text
    assert "| squash (lite2-squash) | logistic | 95.0% | 93.0% | 90.0% / 91.0% | 0.1, 0.001 |" in text
    assert top_confusions(_result("x", 0.5)["metrics"], 1) == ["2 x nike -> adidas"]


@pytest.mark.parametrize("features, tag", [(Features(), "lite2-default"),
                                           (Features("efficientnet_lite0", "squash", None, 2, True), "lite0-squash-aug2-logos"),
                                           (Features(crop_fraction=1.0), "lite2-default-c1")])
def test_feature_tags(features, tag):
    assert features.tag == tag
