"""The trainer: metrics by hand, repeatable training, early stopping, and the export contract end to end."""

from __future__ import annotations

import csv
import dataclasses
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from brandlens.errors import ArtifactError, BrandlensError, ConfigError
from schemas import layout
from schemas import model as contract
from tests.conftest import REPO
from trainer import evaluate as ev
from trainer.config import HParams, SearchConfig, TrainConfig, parse_class_weights
from trainer.data import DataError, SplitData, load_bottlenecks, locate_artifact
from trainer.train import class_weight_vector, fit, read_predictions, train_and_evaluate

PARITY = 1e-5


# --- metrics and threshold, by hand -------------------------------------------------------------

def test_confusion_matrix_and_per_class_figures_by_hand():
    y = np.array([0, 0, 0, 1, 1, 2])
    predicted = np.array([0, 1, 0, 1, 2, 2])
    matrix = ev.confusion_matrix(y, predicted, 3)
    assert matrix.tolist() == [[2, 1, 0], [0, 1, 1], [0, 0, 1]]
    figures = ev.per_class(matrix, ["a", "b", "c"])
    assert figures["a"] == {"precision": 1.0, "recall": 2 / 3, "f1": pytest.approx(0.8), "support": 3, "predicted": 2}
    assert figures["b"]["precision"] == 0.5 and figures["b"]["recall"] == 0.5 and figures["b"]["f1"] == 0.5
    assert figures["c"]["precision"] == 0.5 and figures["c"]["recall"] == 1.0 and figures["c"]["f1"] == pytest.approx(2 / 3)
    empty = ev.per_class(np.zeros((2, 2), np.int64), ["a", "b"])
    assert empty["a"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0, "predicted": 0}


def test_accuracy_and_cross_entropy_by_hand():
    scores = np.array([[0.5, 0.5], [0.9, 0.1], [0.2, 0.8]])
    y = np.array([0, 1, 1])
    assert ev.cross_entropy(scores, y) == pytest.approx(-(np.log(0.5) + np.log(0.1) + np.log(0.8)) / 3)
    assert ev.accuracy(scores.argmax(1), y) == pytest.approx(2 / 3)
    result = ev.evaluate(scores, y, ["a", "b"])
    assert result["count"] == 3 and result["confusion_matrix"] == [[1, 0], [1, 1]]
    assert "brand_precision" not in result


def test_threshold_falls_back_to_neither_and_reaches_target_precision():
    # labels: brand a (0), brand b (1), neither (2)
    scores = np.array([[0.95, 0.03, 0.02],   # a, right
                       [0.60, 0.30, 0.10],   # true neither, claimed a with 0.60: the false brand
                       [0.10, 0.85, 0.05],   # b, right
                       [0.20, 0.70, 0.10],   # b, right
                       [0.10, 0.10, 0.80]])  # neither, right
    y = np.array([0, 2, 1, 1, 2])
    assert ev.apply_threshold(scores, 2, 0.65).tolist() == [0, 2, 1, 1, 2]
    assert ev.apply_threshold(scores, 2, None).tolist() == [0, 0, 1, 1, 2]
    assert ev.apply_threshold(scores, 2, 0.70).tolist() == [0, 2, 1, 1, 2]  # a score equal to the threshold is kept
    chosen = ev.choose_threshold(scores, y, 2, 0.99)
    assert chosen["reached"] and chosen["threshold"] == pytest.approx(0.70) and chosen["precision"] == 1.0
    assert chosen["brand_predictions"] == 3 and chosen["brand_recall"] == 1.0
    assert ev.choose_threshold(scores, y, 2, 0.5)["threshold"] == 0.0  # already precise enough: no threshold needed
    always_wrong = ev.choose_threshold(scores, np.array([1, 2, 0, 0, 2]), 2, 0.9)
    assert not always_wrong["reached"]
    metrics = ev.evaluate(scores, y, ["a", "b", "neither"], 2, chosen["threshold"])
    assert metrics["accuracy"] == 1.0 and metrics["argmax_accuracy"] == 0.8 and metrics["brand_precision"] == 1.0


def test_class_weights():
    y = np.array([0, 0, 0, 1])
    assert class_weight_vector("none", ["a", "b"], y).tolist() == [1.0, 1.0]
    assert class_weight_vector("balanced", ["a", "b"], y).tolist() == pytest.approx([4 / 6, 2.0])
    assert class_weight_vector("b=3", ["a", "b"], y).tolist() == [1.0, 3.0]
    assert parse_class_weights("a=2, b=0.5") == {"a": 2.0, "b": 0.5}
    for bad in ("a", "a=0", "a=x", "=2"):
        with pytest.raises(ConfigError):
            parse_class_weights(bad)
    with pytest.raises(ConfigError, match="unknown label"):
        class_weight_vector("zz=2", ["a", "b"], y)
    with pytest.raises(ConfigError):
        HParams(optimizer="rmsprop")


# --- training --------------------------------------------------------------------------------

def _blobs(n: int, seed: int, noise: float = 1.0, flip: float = 0.0) -> SplitData:
    rng = np.random.default_rng(seed)
    centers = np.random.default_rng(99).normal(0, 1, (3, 16))
    y = rng.integers(0, 3, n)
    x = (centers[y] + rng.normal(0, noise, (n, 16))).astype(np.float32)
    if flip:
        y = np.where(rng.random(n) < flip, rng.integers(0, 3, n), y)
    strings = np.array(["x"] * n, dtype=object)
    return SplitData(x, x, y.astype(np.int64), strings, strings, strings)


@pytest.mark.parametrize("optimizer,lr", [("sgd", 0.1), ("adagrad", 0.1), ("adam", 0.01)])
def test_every_optimizer_learns(optimizer, lr):
    train, validation = _blobs(300, 1), _blobs(100, 2)
    result = fit(train, validation, ["a", "b", "c"], HParams(optimizer=optimizer, learning_rate=lr, steps=300, l2=0.001))
    assert result.history[-1]["validation_accuracy"] > 0.9
    assert result.history[0]["validation_cross_entropy"] == pytest.approx(np.log(3), rel=1e-5)  # zero start


def test_same_seed_same_model_other_seed_other_model():
    train, validation = _blobs(200, 1), _blobs(60, 2)
    hp = HParams(steps=120, dropout=0.3, batch_size=16, seed=7)
    a, b = fit(train, validation, ["a", "b", "c"], hp), fit(train, validation, ["a", "b", "c"], hp)
    assert np.array_equal(a.weights.kernel, b.weights.kernel) and a.history == b.history
    c = fit(train, validation, ["a", "b", "c"], hp.replace(seed=8))
    assert not np.array_equal(a.weights.kernel, c.weights.kernel)


def test_early_stopping_stops_and_keeps_the_best_check():
    # Few noisy training points, no L2, a big step: validation cross-entropy soon rises.
    train, validation = _blobs(24, 1, noise=3.0, flip=0.3), _blobs(200, 2, noise=3.0)
    hp = HParams(optimizer="sgd", learning_rate=0.5, l2=0.0, steps=5000, eval_every=5, patience=3, batch_size=8)
    result = fit(train, validation, ["a", "b", "c"], hp)
    assert result.stopped_early and result.steps_run < 5000
    ces = {row["step"]: row["validation_cross_entropy"] for row in result.history}
    assert result.best_step == min(ces, key=ces.get)
    assert len([s for s in ces if s > result.best_step]) == hp.patience


def test_check_calibrated_stops_on_cross_entropy_after_each_checks_temperature():
    # Noisy labels and a big step: raw cross-entropy soon rises from overconfidence, which a temperature removes.
    train, validation = _blobs(60, 1, noise=2.0, flip=0.2), _blobs(200, 2, noise=2.0, flip=0.2)
    hp = HParams(optimizer="sgd", learning_rate=0.5, l2=0.0, steps=600, eval_every=10, patience=4, batch_size=8,
                 check_calibrated=True)
    result = fit(train, validation, ["a", "b", "c"], hp)
    calibrated = {row["step"]: row["validation_calibrated_cross_entropy"] for row in result.history}
    assert all(row["validation_calibrated_cross_entropy"] <= row["validation_cross_entropy"] + 1e-6 for row in result.history)
    assert result.best_step == min(calibrated, key=calibrated.get)
    assert len([s for s in calibrated if s > result.best_step]) == hp.patience or not result.stopped_early
    raw = fit(train, validation, ["a", "b", "c"], hp.replace(check_calibrated=False))
    assert "validation_calibrated_cross_entropy" not in raw.history[0]
    raw_ce = {row["step"]: row["validation_cross_entropy"] for row in raw.history}
    assert raw.best_step == min(raw_ce, key=raw_ce.get)


def test_mixup_mixes_inputs_targets_and_weights_alike_and_still_learns():
    from trainer.train import mix_rows

    rng = np.random.default_rng(0)
    x = np.eye(64, dtype=np.float32)  # row i is e_i, so a mixed row names its own share and its partner
    targets = np.eye(4, dtype=np.float32)[rng.integers(0, 4, 64)]
    weights = rng.uniform(0.5, 2, 64).astype(np.float32)
    mx, mt, mw = mix_rows(np.random.default_rng(1), 0.4, x, targets, weights)
    shares = []
    for i in range(64):
        lam = mx[i, i]
        others = [j for j in np.flatnonzero(mx[i]) if j != i]
        j = others[0] if others else i
        assert len(others) <= 1 and 0.5 <= lam <= 1 and mx[i, j] == pytest.approx(1 - lam if j != i else lam)
        np.testing.assert_allclose(mt[i], lam * targets[i] + (1 - lam) * targets[j], atol=1e-6)
        assert mw[i] == pytest.approx(lam * weights[i] + (1 - lam) * weights[j], abs=1e-6)
        shares.append(lam)
    assert min(shares) < 0.9  # not all rows left alone
    train, validation = _blobs(300, 1), _blobs(100, 2)
    plain = fit(train, validation, ["a", "b", "c"], HParams(learning_rate=0.01, steps=300, l2=0.001))
    mixed = fit(train, validation, ["a", "b", "c"], HParams(learning_rate=0.01, steps=300, l2=0.001, mixup=0.4))
    assert mixed.history[-1]["validation_accuracy"] > 0.9
    assert not np.array_equal(plain.weights.kernel, mixed.weights.kernel)
    again = fit(train, validation, ["a", "b", "c"], HParams(learning_rate=0.01, steps=300, l2=0.001, mixup=0.4))
    assert np.array_equal(mixed.weights.kernel, again.weights.kernel)  # seeded like everything else
    with pytest.raises(ConfigError, match="mixup"):
        HParams(mixup=-1)


# --- end to end on a generated bottleneck folder ---------------------------------------------------

@pytest.fixture(scope="module")
def bottlenecks(sample_bottlenecks) -> Path:
    return sample_bottlenecks


@pytest.fixture(scope="module")
def data(bottlenecks):
    return load_bottlenecks(bottlenecks)


@pytest.fixture(scope="module")
def trained(bottlenecks, data, artifact_root, lite0_artifact, tmp_path_factory) -> Path:
    from brandlens.cli import main

    out = tmp_path_factory.mktemp("model") / "out"
    argv = ["train", "--bottlenecks", str(bottlenecks), "--output", str(out), "--artifacts", str(artifact_root),
            "--steps", "300", "--eval-every", "10", "--learning-rate", "0.01", "--target-precision", "0.9", "--verify-images", "4"]
    assert main(argv) == 0
    return out


def test_data_reads_splits_labels_and_variants(data):
    assert data.labels == ["acme", "zenith", "neither"] and data.neither_label == "neither"
    variants = set(data.splits["train"].variant)
    assert "original" in variants and len(variants) == 2
    assert set(data.splits["test"].variant) == {"original"} and set(data.splits["validation"].variant) == {"original"}
    counts = data.counts()
    assert counts["test"]["per_label"] == {"acme": 4, "zenith": 4, "neither": 4}
    train = data.splits["train"]
    assert np.allclose(train.raw * data.scale + data.shift, train.x, atol=1e-5)


def test_train_writes_metrics_plots_logs_report_and_card(trained, data, lite0_artifact):
    import tensorflow as tf

    metrics = json.loads((trained / "metrics.json").read_text())
    test = metrics["test"]
    assert test["count"] == 12 and 0.0 <= test["accuracy"] <= 1.0 and test["cross_entropy"] > 0
    assert set(test["per_class"]) == set(data.labels) and np.array(test["confusion_matrix"]).sum() == 12
    assert metrics["history"][0]["step"] == 0 and metrics["history"][-1]["step"] == metrics["steps_run"]
    assert metrics["threshold"]["target_precision"] == 0.9
    for png in ("curves.png", "confusion_matrix.png", "threshold.png"):
        assert (trained / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    html = (trained / "errors.html").read_text()
    assert html.startswith("<!doctype html>") and "errors of 12 test images" in html
    for run in ("train", "validation"):
        events = list((trained / "tensorboard" / run).glob("events.out.tfevents.*"))
        assert len(events) == 1
        tags = set()
        for record in tf.data.TFRecordDataset(str(events[0])):
            event = tf.compat.v1.Event.FromString(record.numpy())
            tags |= {v.tag for v in event.summary.value if v.metadata.plugin_data.plugin_name == "scalars"}
        assert tags == {"accuracy", "cross_entropy"}
    card = json.loads((trained / contract.MODEL_CARD).read_text())
    assert set(contract.MODEL_CARD_FIELDS) <= set(card)
    assert re.fullmatch(r"bl-\d{8}T\d{6}Z-[0-9a-f]{8}", card["version_id"]) and metrics["version_id"] == card["version_id"]
    assert card["labels"] == data.labels and card["neither_label"] == "neither"
    assert card["threshold"] == metrics["threshold"]["threshold"]
    assert card["backbone"]["version"] == data.fingerprint.version
    assert card["training_data"]["counts"]["train"]["total"] == 72
    assert card["training_data"]["manifest"].endswith("manifest-with-splits.csv")
    assert card["hyperparameters"]["steps"] == 300 and card["hyperparameters"]["target_precision"] == 0.9
    assert card["metrics"]["test"]["accuracy"] == test["accuracy"]
    assert card["export_check"]["images_checked"] == 4 and card["export_check"]["serving_max_abs_diff"] < PARITY


def _test_images(data) -> list[bytes]:
    return [Path(uri).read_bytes() for uri in data.splits["test"].uri]


def test_export_matches_evaluation_on_the_test_images(trained, data):
    """serving_default on the raw JPEG bytes gives the evaluation's test scores (within 1e-5)."""
    import tensorflow as tf

    assert "tensorflow_transform" in sys.modules  # this process is the Keras 2 one
    rows, labels = read_predictions(trained / "test_predictions.csv")
    assert labels == data.labels
    expected = np.array([[float(r[f"score:{lab}"]) for lab in labels] for r in rows], np.float32)
    serving = tf.saved_model.load(str(trained / contract.SERVING_DIR))
    out = serving.signatures[contract.SIG_BYTES](**{contract.INPUT_BYTES: tf.constant(_test_images(data))})
    assert set(out) == set(contract.OUTPUTS) | set(contract.EVIDENCE_OUTPUTS)
    assert np.max(np.abs(out[contract.OUT_SCORES].numpy() - expected)) < PARITY
    assert [v.decode() for v in out[contract.OUT_LABEL].numpy()] == [r["predicted"] for r in rows]
    assert np.allclose(out[contract.OUT_CONFIDENCE].numpy(), [float(r["confidence"]) for r in rows], atol=PARITY)
    assert np.max(np.abs(out[contract.OUT_EMBEDDING].numpy() - data.splits["test"].raw)) < 1e-4
    assert serving.version_id.numpy().decode() == json.loads((trained / contract.MODEL_CARD).read_text())["version_id"]


def test_head_only_model_equals_serving_on_stored_embeddings(trained, data):
    import tensorflow as tf

    from brandlens.imaging import decode_image
    from brandlens.preprocess import prepare

    test = data.splits["test"]
    head = tf.saved_model.load(str(trained / contract.HEAD_DIR)).signatures[contract.SIG_EMBEDDING]
    by_head = head(**{contract.INPUT_EMBEDDING: tf.constant(test.raw)})
    fp = data.fingerprint
    images = np.stack([prepare(decode_image(b), fp.input_size, fp.crop_fraction) for b in _test_images(data)])
    serving = tf.saved_model.load(str(trained / contract.SERVING_DIR)).signatures[contract.SIG_IMAGES]
    by_images = serving(**{contract.INPUT_IMAGES: tf.constant(images)})
    assert np.max(np.abs(by_head[contract.OUT_SCORES].numpy() - by_images[contract.OUT_SCORES].numpy())) < PARITY
    assert by_head[contract.OUT_LABEL].numpy().tolist() == by_images[contract.OUT_LABEL].numpy().tolist()


_LOAD_WITHOUT_TFT = """
import json, sys
import numpy as np, tensorflow as tf
head = tf.saved_model.load(sys.argv[1] + "/head").signatures["serving_default"]
serving = tf.saved_model.load(sys.argv[1] + "/serving")
out = head(embedding=tf.zeros([2, int(sys.argv[2])]))
images = serving.signatures["score_images"](images=tf.zeros([1, int(sys.argv[3]), int(sys.argv[3]), 3]))
print(json.dumps({"tft": "tensorflow_transform" in sys.modules, "scores": out["scores"].numpy().tolist(),
                  "image_scores": images["scores"].numpy().tolist()}))
"""


def test_export_loads_in_a_process_without_tensorflow_transform(trained, data):
    fp = data.fingerprint
    proc = subprocess.run([sys.executable, "-c", _LOAD_WITHOUT_TFT, str(trained), str(fp.embedding_dim), str(fp.input_size)],
                          capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["tft"] is False
    assert np.allclose(np.sum(result["scores"], axis=1), 1.0, atol=1e-5) and len(result["image_scores"][0]) == 3


def test_predict_prints_every_label_highest_first(trained, data, bottlenecks, capsys):
    from brandlens.cli import main

    folder = bottlenecks.parent / "sample" / "images" / "acme"
    assert main(["predict", str(trained), str(folder)]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 20 * 4  # a header and three labels per image
    for i in range(0, len(out), 4):
        header, lines = out[i], out[i + 1:i + 4]
        assert re.fullmatch(r".*acme-\d{4}\.jpg: (acme|zenith|neither)", header)
        parsed = [re.fullmatch(r"  (\w+) \(score = (\d\.\d{5})\)", line).groups() for line in lines]
        assert sorted(label for label, _ in parsed) == sorted(data.labels)
        values = [float(s) for _, s in parsed]
        assert values == sorted(values, reverse=True) and abs(sum(values) - 1) < 2e-5


def test_predict_reports_a_bad_file_and_fails(trained, tmp_path, capsys):
    from brandlens.cli import main

    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really")
    assert main(["predict", str(trained), str(tmp_path / "broken.jpg")]) == 1
    assert "broken.jpg: cannot score:" in capsys.readouterr().out
    assert main(["predict", str(tmp_path), str(tmp_path / "nope.jpg")]) == 2


def test_search_writes_ranked_tables(bottlenecks, artifact_root, lite0_artifact, tmp_path):
    from brandlens.cli import build_parser
    from trainer.search import run_search

    args = build_parser().parse_args(["search", "--bottlenecks", str(bottlenecks), "--output", str(tmp_path / "s"),
                                      "--artifacts", str(artifact_root), "--steps", "60", "--no-export",
                                      "--grid", "l2=0.1,0.001", "--grid", "optimizer=sgd,adam"])
    rows = run_search(SearchConfig.from_args(args))
    with open(tmp_path / "s" / "search.csv") as f:
        table = list(csv.DictReader(f))
    assert [r["rank"] for r in table] == ["1", "2", "3", "4"] and len({r["run"] for r in table}) == 4
    ces = [float(r["validation_cross_entropy"]) for r in table]
    assert ces == sorted(ces)
    assert {r["optimizer"] for r in table} == {"sgd", "adam"} and table[0]["classification"] == "open world, 3 classes"
    assert {"run", "validation_accuracy", "steps", "learning_rate", "optimizer", "adapt", "data", "classification"} <= set(table[0])
    assert not any(name.startswith("test") for name in table[0])  # test is looked at once, for the chosen run
    md = (tmp_path / "s" / "search.md").read_text()
    assert "| rank | run | validation_accuracy |" in md and md.count("\n| ") == 5 and "test" not in md.split("\n", 1)[1]
    assert json.loads((tmp_path / "s" / "best_hparams.json").read_text())["run"] == rows[0]["run"]
    assert not (tmp_path / "s" / "best").exists()


def test_grid_and_random_candidates():
    from trainer.search import candidates, parse_grid

    grid = parse_grid(["learning-rate=0.1,0.01", "optimizer=sgd,adam", "steps=10,none", "class_weights=none;a=2,b=1"])
    assert grid["learning_rate"] == [0.1, 0.01] and grid["steps"] == [10, None] and grid["class_weights"] == ["none", "a=2,b=1"]
    assert len(candidates(grid, HParams())) == 16
    drawn = candidates(grid, HParams(), random_count=5, seed=3)
    assert len(drawn) == 5 and drawn == candidates(grid, HParams(), random_count=5, seed=3)
    depths = candidates(parse_grid(["adapt=head,blocks", "train_from=none,16,19"]), HParams())
    assert [(hp.adapt, hp.train_from) for hp in depths] == [("head", None), ("blocks", None), ("blocks", 16), ("blocks", 19)]
    with pytest.raises(ConfigError):
        parse_grid(["momentum=0.9"])
    with pytest.raises(ConfigError):
        parse_grid(["l2=abc"])


def test_seed_repeats_a_run_on_real_embeddings(data):
    hp = HParams(steps=40, dropout=0.2, seed=3)
    a, b = train_and_evaluate(data, hp), train_and_evaluate(data, hp)
    assert np.array_equal(a.fit.weights.kernel, b.fit.weights.kernel) and a.metrics == b.metrics


# --- bad inputs ------------------------------------------------------------------------------

def test_missing_bottleneck_folder_is_a_clear_error(tmp_path, capsys):
    from brandlens.cli import main

    with pytest.raises(DataError, match="does not exist"):
        load_bottlenecks(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="backbone.json"):
        load_bottlenecks(tmp_path / "empty")
    assert issubclass(DataError, BrandlensError)
    assert main(["train", "--bottlenecks", str(tmp_path / "nowhere"), "--output", str(tmp_path / "o")]) == 2
    assert "brandlens: error: bottleneck folder" in capsys.readouterr().err


def test_empty_train_split_is_a_clear_error(bottlenecks, tmp_path):
    import tensorflow as tf

    copy = tmp_path / "b"
    shutil.copytree(bottlenecks, copy)
    for folder in (layout.EXAMPLES, layout.TRANSFORMED):
        for f in (copy / folder).glob("train-*"):
            f.unlink()
        with tf.io.TFRecordWriter(str(copy / folder / f"train-00000-of-00001{layout.TFRECORD_SUFFIX}"), "GZIP"):
            pass
    with pytest.raises(DataError, match="no training examples"):
        load_bottlenecks(copy)


def test_wrong_artifact_root_and_closed_world_threshold_are_clear_errors(data, tmp_path):
    with pytest.raises(ArtifactError, match="brandlens backbone --backbone efficientnet_lite0"):
        locate_artifact(data.fingerprint, tmp_path)
    closed = dataclasses.replace(data, neither_label=None)
    with pytest.raises(ConfigError, match="open world"):
        train_and_evaluate(closed, HParams(steps=5), target_precision=0.9)
    with pytest.raises(ConfigError):
        TrainConfig(Path("b"), Path("o"), target_precision=1.5)


# --- cross-validated search (issue 6) --------------------------------------------------------------

def _cv_rows():
    """Originals of 3 labels (some only in 'validation'), two augmented variants of some training images."""
    hashes = [f"h{i:02d}" for i in range(23)]
    labels = [i % 3 for i in range(23)]
    ch, var, y = list(hashes), ["original"] * 23, list(labels)
    for i in (0, 4, 7, 11):
        for v in ("aug-0", "aug-1"):
            ch.append(hashes[i]); var.append(v); y.append(labels[i])
    ch.append("variant-only"); var.append("logo-crop"); y.append(1)
    return np.array(ch, dtype=object), np.array(var, dtype=object), np.array(y)


def test_cv_folds_are_stable_balanced_stratified_and_order_free():
    from trainer.search import assign_folds

    hashes, labels = [f"h{i:02d}" for i in range(30)], [i % 2 for i in range(30)]
    folds = assign_folds(hashes, labels, 5)
    assert set(folds) == set(hashes) and set(folds.values()) == set(range(5))
    assert folds == assign_folds(hashes[::-1], labels[::-1], 5)           # row order does not matter
    assert folds == assign_folds(hashes + hashes[:7], labels + labels[:7], 5)  # repeated rows: same answer
    for label in (0, 1):
        sizes = np.bincount([folds[h] for h, lab in zip(hashes, labels) if lab == label], minlength=5)
        assert sizes.tolist() == [3] * 5
    assert assign_folds(hashes, labels, 3) != folds
    with pytest.raises(ConfigError):
        assign_folds(hashes, labels, 1)


@pytest.mark.parametrize("k", [2, 3, 5])
def test_cv_folds_score_every_original_once_and_keep_variants_with_their_image(k):
    from trainer.search import cv_folds

    ch, var, y = _cv_rows()
    folds = cv_folds(ch, var, y, k)
    assert len(folds) == k
    scored = np.concatenate([s for _, s in folds])
    originals = np.flatnonzero(var == "original")
    assert sorted(scored.tolist()) == originals.tolist()                   # every original scored exactly once
    for train_rows, scored_rows in folds:
        assert len(scored_rows) > 0 and set(var[scored_rows]) == {"original"}
        assert not set(ch[train_rows]) & set(ch[scored_rows])             # no variant of a scored image trains
        in_fold = set(np.flatnonzero(np.isin(ch, ch[scored_rows])).tolist())
        others = set(range(len(ch))) - in_fold - {len(ch) - 1}              # (the last row is variant-only: in some fold)
        assert others <= set(train_rows.tolist())                         # the other folds train, variants included
    trained_on = np.concatenate([t for t, _ in folds])
    assert np.all(np.bincount(trained_on, minlength=len(ch)) == k - 1)    # each row trains in k-1 folds (variant-only too)
    again = cv_folds(ch, var, y, k)
    assert all(np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) for a, b in zip(folds, again))
    with pytest.raises(ConfigError):
        cv_folds(ch[:3], var[:3], y[:3], 5)


def test_cv_search_ranks_by_cross_validation_and_adds_columns(bottlenecks, artifact_root, tmp_path):
    from brandlens.cli import build_parser
    from trainer.search import CV_COLUMNS, COLUMNS, run_search

    argv = ["search", "--bottlenecks", str(bottlenecks), "--artifacts", str(artifact_root), "--steps", "40", "--no-export",
            "--grid", "l2=0.1,0.001"]
    rows = run_search(SearchConfig.from_args(build_parser().parse_args(argv + ["--output", str(tmp_path / "cv"), "--cv", "3"])))
    with open(tmp_path / "cv" / "search.csv") as f:
        table = list(csv.DictReader(f))
    assert tuple(table[0]) == COLUMNS[:4] + CV_COLUMNS + COLUMNS[4:]
    ces = [float(r["cv_cross_entropy"]) for r in table]
    assert ces == sorted(ces) and all(float(r["cv_cross_entropy_std"]) >= 0 for r in table)
    assert "3-fold cross-validation" in (tmp_path / "cv" / "search.md").read_text()
    assert json.loads((tmp_path / "cv" / "best_hparams.json").read_text())["run"] == rows[0]["run"]
    plain = run_search(SearchConfig.from_args(build_parser().parse_args(argv + ["--output", str(tmp_path / "plain")])))
    with open(tmp_path / "plain" / "search.csv") as f:
        assert tuple(next(csv.reader(f))) == COLUMNS
    by_run = {r["run"]: r for r in plain}
    for row in rows:   # the validation figures do not change with --cv
        assert row["validation_cross_entropy"] == by_run[row["run"]]["validation_cross_entropy"]
    with pytest.raises(ConfigError):
        run_search(SearchConfig.from_args(build_parser().parse_args(argv + ["--output", str(tmp_path / "x"), "--cv", "1"])))


def test_cv_search_chooses_the_threshold_on_out_of_fold_scores(bottlenecks, data, artifact_root, tmp_path):
    from brandlens.cli import build_parser
    from brandlens.metrics import choose_threshold
    from trainer.search import pool_splits, run_search

    out = tmp_path / "s"
    argv = ["search", "--bottlenecks", str(bottlenecks), "--artifacts", str(artifact_root), "--steps", "40", "--grid",
            "l2=0.01", "--cv", "3", "--target-precision", "0.9", "--verify-images", "0", "--output", str(out)]
    rows = run_search(SearchConfig.from_args(build_parser().parse_args(argv)))
    pool = pool_splits(data.splits["train"], data.splits["validation"])
    oof = rows[0]["out_of_fold"]
    originals = int(np.sum(pool.variant == "original"))
    assert sorted(oof["rows"]) == sorted(np.flatnonzero(pool.variant == "original")) and len(oof["scores"]) == originals
    chosen = json.loads((out / "best" / "metrics.json").read_text())["threshold"]
    expected = choose_threshold(oof["scores"], pool.y[oof["rows"]], data.neither_index, 0.9)
    assert chosen["threshold"] == expected["threshold"] and chosen["brand_recall"] == expected["brand_recall"]
    assert chosen["chosen_on"] == f"3-fold out-of-fold scores of {originals} train+validation originals"
    assert 0 <= chosen["brand_recall_without_threshold"] <= 1
    card = json.loads((out / "best" / contract.MODEL_CARD).read_text())
    assert card["threshold"] == chosen["threshold"] and card["metrics"]["threshold_selection"]["chosen_on"] == chosen["chosen_on"]


def test_training_on_phone_size_photos_passes_its_own_export_check(artifact_root, lite0_artifact, tmp_path):
    """Photos the jobs decode at a reduced JPEG scale: the export is checked on the jobs' pixels, not a full decode."""
    from PIL import Image

    from beam_jobs.bottlenecks.config import BottleneckConfig
    from beam_jobs.bottlenecks.job import run
    from brandlens.config import BackboneConfig
    from brandlens.imaging import decode_image
    from brandlens.preprocess import decode_side
    from brandlens.sample import make_sample
    from tests.test_trainer_helpers import with_fixed_splits

    sample = make_sample(tmp_path / "sample", 6, ("acme", "zenith"), 5, True)
    for path in (sample.root / "images").rglob("*.jpg"):
        Image.open(path).convert("RGB").resize((1500, 1300), Image.Resampling.BICUBIC).save(path, quality=92)
    photo = next((sample.root / "images").rglob("*.jpg")).read_bytes()
    assert decode_image(photo, min_side=decode_side(224, 224 / 256)).shape != decode_image(photo).shape  # reduced scale
    out = tmp_path / "bottlenecks"
    run(BottleneckConfig(input=str(with_fixed_splits(sample)), output=str(out), base_uri=str(sample.root),
                         cache=str(tmp_path / "cache"), backbone=BackboneConfig("efficientnet_lite0", artifact_root)))
    model = tmp_path / "model"
    from brandlens.cli import main

    assert main(["train", "--bottlenecks", str(out), "--output", str(model), "--artifacts", str(artifact_root),
                 "--steps", "40", "--verify-images", "3"]) == 0
    check = json.loads((model / contract.MODEL_CARD).read_text())["export_check"]
    assert check["images_checked"] == 3 and check["bytes_images_checked"] == 0 and check["serving_max_abs_diff"] < 1e-4
