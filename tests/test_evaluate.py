"""``brandlens evaluate``, the rows' brand_score / confidence / uris, and a quiet stderr.

The evaluation must reproduce the trainer's own test figures (``metrics.json``) on the same images,
through rescoring (the same embeddings) and through the scoring job (from pixels).
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from brandlens import metrics as ev
from brandlens.quiet import is_noise
from schemas import scores as schema

SCORED_AT = dt.datetime(2026, 11, 29, 12, 0, tzinfo=dt.timezone.utc)
FIGURES = ("count", "accuracy", "argmax_accuracy", "macro_f1", "per_class", "confusion_matrix", "brand_precision",
           "brand_predictions", "brand_recall")


# --------------------------------------------------------------------------- pure

def test_reliability_bins_and_ece_by_hand():
    scores = np.array([[0.95, 0.05], [0.85, 0.15], [0.45, 0.55], [0.3, 0.7]])
    y = np.array([0, 1, 1, 0])
    result = ev.reliability(scores, y, bins=2)  # (0, .5]: nothing; (.5, 1]: all four, top mean 0.7625, accuracy 0.5
    assert [b["count"] for b in result["bins"]] == [0, 4]
    assert result["bins"][1]["accuracy"] == 0.5 and result["ece"] == pytest.approx(0.2625)
    exact = ev.reliability(np.array([[1.0, 0.0], [0.0, 1.0]]), np.array([0, 1]), bins=10)
    assert exact["ece"] == 0.0 and exact["bins"][-1]["count"] == 2


def test_pr_curve_points_ties_and_average_precision():
    score = np.array([0.9, 0.8, 0.8, 0.3, 0.1])
    positive = np.array([True, False, True, False, True])
    curve = ev.pr_curve(score, positive)
    assert curve["thresholds"] == [0.9, 0.8, 0.3, 0.1]  # the tie at 0.8 is one point
    assert curve["precision"] == pytest.approx([1.0, 2 / 3, 0.5, 0.6])
    assert curve["recall"] == pytest.approx([1 / 3, 2 / 3, 2 / 3, 1.0])
    assert curve["average_precision"] == pytest.approx(1 / 3 * 1.0 + 1 / 3 * 2 / 3 + 1 / 3 * 0.6)
    assert np.isnan(ev.pr_curve(score, np.zeros(5, bool))["average_precision"])


def test_threshold_table_costs():
    scores = np.array([[0.9, 0.05, 0.05], [0.6, 0.3, 0.1], [0.2, 0.7, 0.1], [0.1, 0.1, 0.8]])
    y = np.array([0, 1, 1, 2])  # classes a, b, neither (index 2)
    low, high = ev.threshold_table(scores, y, 2, [0.0, 0.65])
    assert (low["brand_precision"], low["brand_recall"], low["share_neither"]) == (pytest.approx(2 / 3), pytest.approx(2 / 3), 0.25)
    assert (high["brand_precision"], high["brand_recall"], high["share_neither"]) == (1.0, pytest.approx(2 / 3), 0.5)


def test_brand_score_given_uri_and_confidence_in_rows():
    from beam_jobs.scoring.rows import brand_mask, brand_scores, given_uri, score_row

    labels = ("acme", "zenith", "neither")
    mask = brand_mask(labels, "neither")
    scores = np.array([[0.6, 0.3, 0.1], [0.2, 0.1, 0.7]], np.float32)
    assert brand_scores(scores, mask).tolist() == pytest.approx([0.6, 0.2])
    assert brand_scores(scores, brand_mask(labels, None)).tolist() == pytest.approx([0.6, 0.7])
    assert given_uri({"image_uri": " images/a.jpg "}, "image_uri", "/data/images/a.jpg") == "images/a.jpg"
    assert given_uri({}, "image_uri", "/data/x.jpg") == "/data/x.jpg"
    # a threshold sent acme (0.6) to neither: confidence is neither's score, brand_score still says 0.6
    outputs = {"label": np.array(["neither"], object), "confidence": np.array([0.1], np.float32), "scores": scores[:1]}
    row = score_row("p", "images/a.jpg", "h", "2026-11-01", outputs, 0, labels, "neither", "m", "b", SCORED_AT, {}, False,
                    "/data/images/a.jpg")
    assert row[schema.BRAND_SCORE] == pytest.approx(0.6) and row[schema.CONFIDENCE] == pytest.approx(0.1)
    assert (row[schema.IMAGE_URI], row[schema.RESOLVED_URI]) == ("images/a.jpg", "/data/images/a.jpg")
    assert not row[schema.BRAND_FOUND]


def test_native_noise_lines():
    assert is_noise(b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR")
    assert is_noise(b"I0000 00:00:1796173612.169073   17110 port.cc:153] oneDNN custom operations are on.")
    assert is_noise(b"E0000 00:00:1796173657.861161   17110 cuda_platform.cc:52] failed call to cuInit: INTERNAL")
    assert not is_noise(b"E0000 00:00:1796173657.861161   17110 bfc_allocator.cc:1] Allocator ran out of memory")
    assert not is_noise(b"2026-12-02 01:00:00,000 INFO beam_jobs.progress: posts scored: 10")
    assert not is_noise(b"brandlens: error: no scoring output at x")


# --------------------------------------------------------------------------- end to end

@pytest.fixture(scope="module")
def threshold_model(sample_bottlenecks, artifact_root, tmp_path_factory) -> Path:
    """An open-world model with a validation-chosen threshold, so the threshold rule is part of every figure."""
    from brandlens.cli import main

    out = tmp_path_factory.mktemp("threshold-model") / "model"
    assert main(["train", "--bottlenecks", str(sample_bottlenecks), "--output", str(out), "--artifacts", str(artifact_root),
                 "--steps", "120", "--eval-every", "20", "--learning-rate", "0.003", "--target-precision", "0.99",
                 "--verify-images", "0"]) == 0
    return out


def _test_metrics(model: Path) -> dict:
    return json.loads((model / "metrics.json").read_text())


def _evaluate(argv: list[str]) -> dict:
    from brandlens.cli import main

    assert main(["evaluate", *argv]) == 0
    output = Path(argv[argv.index("--output") + 1])
    return json.loads((output / "evaluation.json").read_text())


def _same_figures(ours: dict, trainers: dict) -> None:
    for name in FIGURES:
        if name == "per_class":
            assert ours[name].keys() == trainers[name].keys()
            for label, figures in trainers[name].items():
                assert ours[name][label] == pytest.approx(figures), label
        elif name == "confusion_matrix":
            assert ours[name] == trainers[name]
        elif name in trainers:
            assert ours[name] == pytest.approx(trainers[name]), name
    assert ours["cross_entropy"] == pytest.approx(trainers["cross_entropy"], abs=1e-4)


def test_rescored_examples_give_the_trainers_test_figures(threshold_model, sample_bottlenecks, tmp_path):
    from beam_jobs.scoring.config import OutputConfig, RescoreConfig
    from beam_jobs.scoring.job import rescore

    trainers = _test_metrics(threshold_model)
    assert trainers["threshold"] is not None
    rescore(RescoreConfig(str(sample_bottlenecks), str(threshold_model), OutputConfig(str(tmp_path / "rescored"), scored_at=SCORED_AT)))
    where = "source_split = 'test'"
    result = _evaluate(["--scores", str(tmp_path / "rescored"), "--truth", "source_label", "--where", where,
                        "--by", "source_split", "--output", str(tmp_path / "eval")])
    _same_figures(result["metrics"], trainers["test"])
    assert result["model"]["threshold"] == trainers["threshold"]["threshold"] and result["stored_label_agreement"] == 1.0
    assert [r["source_split"] for r in result["breakdown"]["source_split"]] == ["test"]
    thresholds = {r["threshold"]: r for r in result["thresholds"]}
    assert thresholds[0.0]["brand_recall"] >= thresholds[0.99]["brand_recall"]
    assert thresholds[trainers["threshold"]["threshold"]]["brand_precision"] == pytest.approx(trainers["test"]["brand_precision"])
    for name in ("thresholds.csv", "reliability.png", "precision_recall.png", "report.html"):
        assert (tmp_path / "eval" / name).stat().st_size > 0

    # the same truth from a labels file joined by post id (and the whole bottleneck output, broken down by split)
    rows = pq.read_table(str(tmp_path / "rescored" / "scores")).to_pylist()
    labels = tmp_path / "labels.csv"
    with open(labels, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "truth"])
        writer.writerows([(r[schema.POST_ID], r["source_label"]) for r in rows if r["source_split"] == "test"])
    joined = _evaluate(["--scores", str(tmp_path / "rescored" / "scores"), "--labels", str(labels), "--labels-id-column", "id",
                        "--labels-column", "truth", "--model", str(threshold_model), "--output", str(tmp_path / "eval-joined")])
    _same_figures(joined["metrics"], trainers["test"])
    with open(labels, "a") as f:
        f.write(next(f"{r[schema.POST_ID]},neither\n" for r in rows if r["source_split"] == "test"))
    from brandlens.cli import main

    assert main(["evaluate", "--scores", str(tmp_path / "rescored"), "--labels", str(labels), "--labels-id-column", "id",
                 "--labels-column", "truth", "--output", str(tmp_path / "eval-twice")]) == 2  # one post labelled twice
    split = _evaluate(["--scores", str(tmp_path / "rescored"), "--truth", "source_label", "--by", "source_split",
                       "--output", str(tmp_path / "eval-splits")])
    by_split = {r["source_split"]: r for r in split["breakdown"]["source_split"]}
    assert by_split["test"]["accuracy"] == pytest.approx(trainers["test"]["accuracy"])
    assert by_split["validation"]["accuracy"] == pytest.approx(trainers["validation"]["accuracy"])
    assert split["left_out"]["evaluated"] == sum(r["count"] for r in by_split.values())


def test_scored_posts_keep_given_uris_and_evaluate_from_pixels(threshold_model, sample_bottlenecks, tmp_path):
    """Posts with relative uris, scored from pixels: the rows, then the trainer's test figures again."""
    from beam_jobs.scoring.config import OutputConfig, ScoringConfig
    from beam_jobs.scoring.job import run

    sample = sample_bottlenecks.parent / "sample"
    with open(sample / "manifest-with-splits.csv") as f:
        test_rows = [r for r in csv.DictReader(f) if r["split"] == "test"]
    posts = sample / "eval-posts.csv"  # beside images/, so the relative uris resolve against the sample folder
    flipped = {0, 1}  # two wrong labels in the carried column: errors for the report
    labels = sorted({r["label"] for r in test_rows})
    with open(posts, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["post_id", "image_uri", "label", "source"])
        for i, r in enumerate(test_rows):
            wrong = labels[(labels.index(r["label"]) + 1) % len(labels)]
            writer.writerow([f"t{i:03d}", r["uri"], wrong if i in flipped else r["label"], "a" if i % 2 else "b"])
    out = tmp_path / "scored"
    summary = run(ScoringConfig(input=str(posts), model=str(threshold_model), out=OutputConfig(str(out), scored_at=SCORED_AT),
                                batch_size=4))
    assert summary["inference"]["num_inferences"] == len(test_rows) and summary["inference"]["failed_batches_counter"] == 0
    assert summary["inference"]["load_model_ms"]["count"] >= 1 and summary["inference"]["batch_latency_ms"]["mean"] > 0
    card = json.loads((threshold_model / "model_card.json").read_text())
    brands = [label for label in card["labels"] if label != card["neither_label"]]
    rows = pq.read_table(str(out / "scores")).to_pylist()
    by_uri = {r["uri"]: r for r in test_rows}
    for row in rows:
        assert row[schema.IMAGE_URI] in by_uri and not row[schema.IMAGE_URI].startswith("/")
        assert Path(row[schema.RESOLVED_URI]).is_file() and row[schema.RESOLVED_URI].endswith(row[schema.IMAGE_URI])
        assert row[schema.BRAND_SCORE] == pytest.approx(max(row[schema.score_column(b)] for b in brands))
        assert row[schema.CONFIDENCE] == pytest.approx(row[schema.score_column(row[schema.LABEL])])

    truth = tmp_path / "truth.jsonl"
    truth.write_text("".join(json.dumps({"post_id": f"t{i:03d}", "label": r["label"]}) + "\n" for i, r in enumerate(test_rows)))
    result = _evaluate(["--scores", str(out), "--labels", str(truth), "--output", str(tmp_path / "eval-truth")])
    _same_figures(result["metrics"], _test_metrics(threshold_model)["test"])

    carried = _evaluate(["--scores", str(out), "--by", "source", "--output", str(tmp_path / "eval-carried"), "--errors", "5"])
    assert carried["input"]["truth"] == "input_label" and carried["metrics"]["count"] == len(test_rows)  # found by itself
    assert {r["source"] for r in carried["breakdown"]["source"]} == {"a", "b"}
    report = (tmp_path / "eval-carried" / "report.html").read_text()
    assert report.count("data:image/jpeg;base64,") >= 1 and "images/" in report


def test_evaluate_refuses_unclear_input(tmp_path, threshold_model):
    from brandlens.errors import ConfigError
    from brandlens.evaluate import EvaluateConfig

    with pytest.raises(ConfigError, match="not both"):
        EvaluateConfig(str(tmp_path), str(tmp_path / "e"), truth="x", labels="y.csv")
    from brandlens.cli import main

    assert main(["evaluate", "--scores", str(tmp_path / "none"), "--output", str(tmp_path / "e")]) == 2


def test_stderr_has_no_native_noise_unless_verbose(threshold_model, sample_bottlenecks):
    image = next((sample_bottlenecks.parent / "sample" / "images").rglob("*.jpg"))
    command = [sys.executable, "-m", "brandlens.cli", "predict", str(threshold_model), str(image)]
    env = {k: v for k, v in __import__("os").environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    quiet = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert quiet.returncode == 0, quiet.stderr
    assert "I0000" not in quiet.stderr and "cuInit" not in quiet.stderr and "absl::InitializeLog" not in quiet.stderr
    loud = subprocess.run(command[:3] + ["--verbose"] + command[3:], capture_output=True, text=True, env=env, timeout=300)
    assert loud.returncode == 0 and "I0000" in loud.stderr
