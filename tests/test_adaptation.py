"""Deeper adaptation end to end: the bottleneck job stores the maps entering a block (``--cut``), the trainer
trains the blocks after it (``--adapt blocks``) with Keras, and the export serves the same scores from image bytes.

Also: label maps (other brands' photos as hard negatives) and calibration. Generated images, lite0, DirectRunner.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from schemas import model as contract
from tests.test_trainer_helpers import with_fixed_splits

PARITY = 1e-5
CUT = 14  # lite0 has blocks 0..15: blocks 14 (7x7x192 in) and 15 (320 channels) and the head convolution are trained


def _manifest(root: Path, per_label: int = 16) -> tuple[Path, Path]:
    """acme/zenith/neither generated photos plus 'rival' photos (another brand) with fixed splits."""
    from brandlens.sample import make_sample

    sample = make_sample(root / "sample", per_label, ("acme", "zenith", "rival"), 3, True)
    return with_fixed_splits(sample), sample.root


@pytest.fixture(scope="module")
def cut_bottlenecks(tmp_path_factory, artifact_root, lite0_artifact) -> Path:
    from beam_jobs.bottlenecks.config import BottleneckConfig
    from beam_jobs.bottlenecks.job import run
    from brandlens.config import BackboneConfig

    root = tmp_path_factory.mktemp("cut-job")
    manifest, base = _manifest(root)
    out = root / "bottlenecks"
    run(BottleneckConfig(input=str(manifest), output=str(out), base_uri=str(base), cut=CUT, augment=1,
                         label_map=(("rival", "neither"),), cache=str(root / "cache"),
                         backbone=BackboneConfig("efficientnet_lite0", artifact_root)))
    return out


def test_cut_maps_are_stored_with_the_embedding_and_label_map_applies(cut_bottlenecks, lite0_artifact):
    from brandlens.backbones.artifact import load_backbone
    from brandlens.imaging import decode_image
    from brandlens.preprocess import prepare
    from trainer.data import load_bottlenecks

    summary = json.loads((cut_bottlenecks / "summary.json").read_text())
    assert summary["config"]["cut"] == CUT and summary["config"]["label_map"] == {"rival": "neither"}
    assert summary["cut_map_shape"] == [7, 7, 192] and summary["reconciliation"]["ok"]
    data = load_bottlenecks(cut_bottlenecks)
    assert data.labels == ["acme", "zenith", "neither"] and data.cut == CUT  # no 'rival' class: mapped to neither
    train = data.splits["train"]
    assert train.maps.shape == (len(train), 7, 7, 192) and train.maps.dtype == np.float16
    assert set(train.variant) == {"original", "aug-v1-1"}
    backbone = load_backbone(lite0_artifact)
    fp = backbone.fingerprint
    test = data.splits["test"]
    images = np.stack([prepare(decode_image(Path(u).read_bytes()), fp.input_size, fp.crop_fraction) for u in test.uri[:4]])
    out = backbone.run_with_cut(images, CUT)
    # stored as float16: within one half-precision step (2**-10 relative) of a fresh float32 pass, whose own
    # float noise between batchings can round the other way
    fresh, stored = out["cut_map"], test.maps[:4].astype(np.float32)
    assert np.all(np.abs(fresh - stored) <= np.abs(fresh) * 2.0 ** -10 + 1e-4)
    assert np.max(np.abs(out["embedding"] - test.raw[:4])) < 1e-4
    assert np.max(np.abs(backbone.embed(images) - out["embedding"])) < 1e-5  # one pass gives the saved model's embedding


def test_a_rerun_reads_maps_from_the_cut_cache(cut_bottlenecks, tmp_path, artifact_root):
    from beam_jobs.bottlenecks.config import BottleneckConfig
    from beam_jobs.bottlenecks.job import run
    from brandlens.config import BackboneConfig

    first = json.loads((cut_bottlenecks / "summary.json").read_text())
    again = run(BottleneckConfig(input=first["config"]["input"], output=str(tmp_path / "again"),
                                 base_uri=first["config"]["base_uri"], cut=CUT, augment=1, label_map=(("rival", "neither"),),
                                 cache=first["config"]["cache"], backbone=BackboneConfig("efficientnet_lite0", artifact_root),
                                 num_shards=2))  # another shard count: not the stored run, so the pipeline runs
    assert "reused" not in again
    assert again["counts"]["cnn_images"] == 0 and again["counts"]["cache_hits"] == first["counts"]["cnn_embeddings"]
    from trainer.data import load_bottlenecks

    a, b = load_bottlenecks(cut_bottlenecks), load_bottlenecks(tmp_path / "again")
    assert np.array_equal(a.splits["train"].maps, b.splits["train"].maps)


@pytest.fixture(scope="module")
def adapted_model(cut_bottlenecks, artifact_root, tmp_path_factory) -> Path:
    from brandlens.cli import main

    out = tmp_path_factory.mktemp("adapted") / "model"
    assert main(["train", "--bottlenecks", str(cut_bottlenecks), "--output", str(out), "--artifacts", str(artifact_root),
                 "--adapt", "blocks", "--steps", "60", "--eval-every", "10", "--learning-rate", "0.003",
                 "--verify-images", "6"]) == 0
    return out


def test_adapted_blocks_export_serves_the_evaluated_scores(adapted_model, cut_bottlenecks):
    import tensorflow as tf

    from trainer.data import load_bottlenecks
    from trainer.train import read_predictions

    card = json.loads((adapted_model / contract.MODEL_CARD).read_text())
    assert card["adaptation"]["adapt"] == "blocks" and card["adaptation"]["cut"] == CUT
    assert card["adaptation"]["trained"].startswith(f"blocks {CUT}..15")
    assert card["adaptation"]["temperature"] > 0
    assert not (adapted_model / contract.HEAD_DIR).exists()  # an embedding-in head cannot serve adapted blocks
    assert card["export_check"]["images_checked"] == 6 and card["export_check"]["serving_max_abs_diff"] < PARITY

    data = load_bottlenecks(cut_bottlenecks)
    rows, labels = read_predictions(adapted_model / "test_predictions.csv")
    expected = np.array([[float(r[f"score:{lab}"]) for lab in labels] for r in rows], np.float32)
    serving = tf.saved_model.load(str(adapted_model / contract.SERVING_DIR))
    blobs = [Path(u).read_bytes() for u in data.splits["test"].uri]
    out = serving.signatures[contract.SIG_BYTES](**{contract.INPUT_BYTES: tf.constant(blobs)})
    assert np.max(np.abs(out[contract.OUT_SCORES].numpy() - expected)) < PARITY
    assert [v.decode() for v in out[contract.OUT_LABEL].numpy()] == [r["predicted"] for r in rows]


def test_the_scoring_job_scores_an_adapted_export_as_evaluated(adapted_model, cut_bottlenecks, tmp_path):
    """An export without head/ passes the model-card check (asked through serving/) and scores as the trainer said."""
    import csv
    import shutil

    import pyarrow.parquet as pq

    from brandlens.cli import main
    from brandlens.errors import ArtifactError
    from beam_jobs.scoring.job import checked_card
    from trainer.train import read_predictions

    rows, labels = read_predictions(adapted_model / "test_predictions.csv")
    posts = tmp_path / "posts.csv"
    with open(posts, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["post_id", "image_uri"])
        writer.writerows([f"p{i}", r["uri"]] for i, r in enumerate(rows))
    assert main(["score", "--input", str(posts), "--model", str(adapted_model), "--output", str(tmp_path / "archive")]) == 0
    table = pq.read_table(str(tmp_path / "archive" / "scores"), partitioning="hive").to_pylist()
    by_post = {r["post_id"]: r for r in table}
    assert len(by_post) == len(rows)
    for i, r in enumerate(rows):
        assert by_post[f"p{i}"]["label"] == r["predicted"]
        assert abs(by_post[f"p{i}"][f"score_{labels[0]}"] - float(r[f"score:{labels[0]}"])) < 1e-4

    tampered = tmp_path / "tampered"
    shutil.copytree(adapted_model, tampered)
    card = json.loads((tampered / contract.MODEL_CARD).read_text())
    card["labels"] = list(reversed(card["labels"]))
    (tampered / contract.MODEL_CARD).write_text(json.dumps(card))
    with pytest.raises(ArtifactError, match="labels"):
        checked_card(str(tampered))


def test_an_adapted_export_scores_on_tflite_whole_and_an_unconvertible_one_on_its_savedmodel(adapted_model, tmp_path,
                                                                                             monkeypatch):
    """No backbone + head/ split serves adapted blocks, so the whole score_images runs on TFLite, every output
    within the engine's tolerance; a graph with an op TFLite lacks (as adapted exports before it) falls back."""
    import shutil

    import tensorflow as tf

    from beam_jobs.scoring.model import ScoringModel
    from brandlens import engines

    monkeypatch.setenv("BRANDLENS_ENGINE_CACHE", str(tmp_path / "engines"))
    reference_model = ScoringModel(str(adapted_model))
    size = reference_model.card.input_size
    images = np.random.default_rng(1).uniform(0, 255, (11, size, size, 3)).astype(np.float32)  # > one chunk
    reference = reference_model.score_images(images)
    model = ScoringModel(str(adapted_model), engines.TFLITE)
    model.load(contract.SERVING_DIR)
    assert model.engine == engines.TFLITE and len(list((tmp_path / "engines").glob("*.tflite"))) == 1
    out = model.score_images(images)
    assert set(out) == set(reference)
    for name in (contract.OUT_SCORES, contract.OUT_CONFIDENCE, contract.OUT_EMBEDDING):
        np.testing.assert_allclose(out[name], reference[name], atol=1e-4, err_msg=name)
    assert list(out[contract.OUT_LABEL]) == list(reference[contract.OUT_LABEL])

    older = tmp_path / "older"
    shutil.copytree(adapted_model, older, ignore=shutil.ignore_patterns(contract.SERVING_DIR))
    inner = tf.saved_model.load(str(adapted_model / contract.SERVING_DIR))

    class Older(tf.Module):
        def __init__(self):
            super().__init__()
            self.inner = inner

        @tf.function(input_signature=[tf.TensorSpec([None, size, size, 3], tf.float32, name=contract.INPUT_IMAGES)])
        def score_images(self, images):
            out = dict(self.inner.signatures[contract.SIG_IMAGES](**{contract.INPUT_IMAGES: images}))
            scores = out[contract.OUT_SCORES]  # the same values through MatrixDiagPartV3, as evidence had it
            out[contract.OUT_SCORES] = tf.linalg.diag_part(tf.tile(scores[:, None, :], [1, tf.shape(scores)[1], 1]))
            return out

    older_serving = Older()
    tf.saved_model.save(older_serving, str(older / contract.SERVING_DIR),
                        signatures={contract.SIG_IMAGES: older_serving.score_images})
    model = ScoringModel(str(older), engines.TFLITE)
    model.load(contract.SERVING_DIR)
    assert model.engine == engines.SAVEDMODEL
    np.testing.assert_allclose(model.score_images(images)[contract.OUT_SCORES], reference[contract.OUT_SCORES], atol=1e-6)


def test_training_changed_the_blocks_and_is_repeatable(cut_bottlenecks, artifact_root):
    from brandlens.backbones.artifact import load_backbone
    from trainer.config import HParams
    from trainer.data import load_bottlenecks, locate_artifact
    from trainer.train import blocks_for, fit

    data = load_bottlenecks(cut_bottlenecks)
    hp = HParams(adapt="blocks", steps=20, eval_every=10, learning_rate=0.003, patience=0)
    blocks = blocks_for(data, hp, artifact_root)
    a = fit(data.splits["train"], data.splits["validation"], data.labels, hp, blocks)
    b = fit(data.splits["train"], data.splits["validation"], data.labels, hp, blocks)
    assert np.array_equal(a.weights.kernel, b.weights.kernel)
    assert all(np.array_equal(a.weights.blocks[i][k][0], b.weights.blocks[i][k][0]) for i in a.weights.blocks for k in a.weights.blocks[i])
    original = load_backbone(locate_artifact(data.fingerprint, artifact_root)).network.blocks[CUT]["project"][0].numpy()
    assert not np.allclose(a.weights.blocks[CUT]["project"][0], original)  # the block was trained, not frozen
    assert sorted(a.weights.blocks) == [CUT, CUT + 1]


def test_train_from_freezes_the_blocks_between_the_cut_and_it(cut_bottlenecks, artifact_root):
    from brandlens.backbones.artifact import load_backbone
    from brandlens.errors import ConfigError
    from trainer.config import HParams
    from trainer.data import load_bottlenecks, locate_artifact
    from trainer.train import blocks_for, fit

    data = load_bottlenecks(cut_bottlenecks)
    hp = HParams(adapt="blocks", steps=20, eval_every=10, learning_rate=0.003, patience=0, train_from=CUT + 1)
    blocks = blocks_for(data, hp, artifact_root)
    result = fit(data.splits["train"], data.splits["validation"], data.labels, hp, blocks)
    network = load_backbone(locate_artifact(data.fingerprint, artifact_root)).network
    for part, (kernel, bias) in result.weights.blocks[CUT].items():  # frozen: exported as the artifact has it
        assert np.array_equal(kernel, network.blocks[CUT][part][0].numpy()), part
        assert np.array_equal(bias, network.blocks[CUT][part][1].numpy()), part
    assert not np.allclose(result.weights.blocks[CUT + 1]["project"][0], network.blocks[CUT + 1]["project"][0].numpy())
    for bad in (CUT - 1, 16):
        with pytest.raises(ConfigError, match="train-from"):
            fit(data.splits["train"], data.splits["validation"], data.labels, hp.replace(train_from=bad), blocks)


def test_head_adaptation_refuses_blocks_without_maps(sample_bottlenecks, artifact_root):
    from brandlens.errors import ConfigError
    from trainer.config import HParams
    from trainer.data import load_bottlenecks
    from trainer.train import blocks_for

    with pytest.raises(ConfigError, match="--cut"):
        blocks_for(load_bottlenecks(sample_bottlenecks), HParams(adapt="blocks"), artifact_root)


def test_temperature_calibrates_overconfident_logits():
    from trainer.model import fit_temperature

    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 600)
    logits = rng.normal(size=(600, 3))
    logits[np.arange(600), y] += 1.0  # right 2/3 of the time or so ...
    t = fit_temperature(logits * 6.0, y)  # ... but scaled to look sure: the temperature undoes the scaling
    assert 4.0 < t < 8.0 and fit_temperature(logits * 100.0, y) == pytest.approx(10.0)
    assert fit_temperature(logits, y) == pytest.approx(t / 6.0, rel=0.05)
    separated = np.eye(3)[y] * 0.5  # every row right: no evidence of confidence either way, so no sharpening to T -> 0
    assert fit_temperature(separated, y) == 1.0
    separated[0] = np.roll(separated[0], 1)  # one error: a finite optimum exists again
    assert 0.25 <= fit_temperature(separated, y) < 10.0


def test_label_map_parsing():
    from beam_jobs.bottlenecks.labels import annotate, parse_label_map

    assert parse_label_map(["asics,vans=neither", "sb=nike"]) == (("asics", "neither"), ("sb", "nike"), ("vans", "neither"))
    with pytest.raises(ValueError, match="mapped twice"):
        parse_label_map(["a=b", "a=c"])
    with pytest.raises(ValueError, match="FROM"):
        parse_label_map(["neither"])
    assert annotate({"label": "vans"}, ("nike", "neither"), (("vans", "neither"),)).label == "neither"


def test_background_strips_lie_outside_every_logo_box():
    from beam_jobs.bottlenecks import augment as aug

    rgb = np.zeros((100, 200, 3), np.uint8)
    found = [v for v in aug.variants("original", 0, (), background_boxes=[(80, 10, 120, 40), (90, 30, 130, 60)])
             if v.kind == aug.BACKGROUND]
    assert [v.name for v in found] == ["bg-v1-left", "bg-v1-right", "bg-v1-top", "bg-v1-bottom"]
    shapes = {v.name: None if (px := aug.render(rgb, "h", v)) is None else px.shape[:2] for v in found}
    # union (80,10)-(130,60): left 80 px wide, right 70 px, top 10 px (too thin: skipped), bottom 40 px tall
    assert shapes == {"bg-v1-left": (100, 80), "bg-v1-right": (100, 70), "bg-v1-top": None, "bg-v1-bottom": (40, 200)}
    assert aug.variants("original", 0, (), background_boxes=[]) == [aug.Variant("original")]


def test_tiles_are_the_scoring_jobs_multi_crop_views():
    from beam_jobs.bottlenecks import augment as aug
    from beam_jobs.scoring.rows import views

    rgb = np.random.default_rng(0).integers(0, 255, (90, 160, 3), np.uint8)
    tiles = [v for v in aug.variants("original", 0, (), tiles=3) if v.kind == aug.TILE]
    assert [v.name for v in tiles] == [f"tile-v1-g3-{i}" for i in range(9)]
    assert all(np.array_equal(aug.render(rgb, "h", v), view) for v, view in zip(tiles, views(rgb, 3)[1:]))
    assert aug.variants("original", 0, (), tiles=0) == aug.variants("original", 0, (), tiles=1) == [aug.Variant("original")]


@pytest.mark.parametrize("tiles", [1, 5, -2])
def test_a_tile_grid_the_scoring_job_cannot_score_is_refused(tiles):
    from beam_jobs.bottlenecks.config import BottleneckConfig
    from brandlens.errors import ConfigError

    with pytest.raises(ConfigError, match="tiles must be 0"):
        BottleneckConfig(input="m.csv", output="out", tiles=tiles)


def test_cut_shape_from_the_architecture_and_bad_cuts_refused():
    import dataclasses

    from brandlens.backbones.artifact import BackboneFingerprint, cut_map_shape
    from brandlens.errors import ConfigError

    lite2 = BackboneFingerprint("efficientnet_lite2", 260, "", "", 1.0, 1280, "", "")
    assert cut_map_shape(lite2, 19) == [9, 9, 208] and cut_map_shape(lite2, 1) == [130, 130, 16]
    for cut in (0, 21):
        with pytest.raises(ConfigError, match="cut must name a block"):
            cut_map_shape(lite2, cut)
    with pytest.raises(ConfigError, match="head only"):
        cut_map_shape(dataclasses.replace(lite2, name="vgg16"), 5)


def test_adapted_engines_benchmark_compares_both_engines(adapted_model, tmp_path, monkeypatch):
    from bench.adapted_engines import measure

    monkeypatch.setenv("BRANDLENS_ENGINE_CACHE", str(tmp_path / "engines"))
    result = measure(str(adapted_model), rounds=2, batch=3)
    assert set(result["images_per_s"]) == {"savedmodel", "tflite"} and result["labels_equal"]
    assert result["max_abs_diff"]["scores"] < 1e-4
