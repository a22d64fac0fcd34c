"""gs:// paths through the real GCS client against the local emulator."""

from __future__ import annotations

import io

import numpy as np

from brandlens import fileio
from brandlens.backbones.artifact import Backbone, read_fingerprint


def test_fileio_round_trip(gcs_bucket, tmp_path):
    uri = f"{gcs_bucket}/fileio/a/b.txt"
    fileio.write_text(uri, "hello")
    assert fileio.exists(uri) and fileio.read_text(uri) == "hello"
    (tmp_path / "tree" / "sub").mkdir(parents=True)
    (tmp_path / "tree" / "x.bin").write_bytes(b"\x00\x01")
    (tmp_path / "tree" / "sub" / "y.txt").write_text("y")
    fileio.upload_dir(tmp_path / "tree", f"{gcs_bucket}/fileio/tree")
    assert fileio.list_files(f"{gcs_bucket}/fileio/tree") == [f"{gcs_bucket}/fileio/tree/sub/y.txt", f"{gcs_bucket}/fileio/tree/x.bin"]
    local = fileio.localize_dir(f"{gcs_bucket}/fileio/tree", tmp_path / "cache")
    assert (local / "x.bin").read_bytes() == b"\x00\x01" and (local / "sub" / "y.txt").read_text() == "y"
    assert fileio.localize_dir(f"{gcs_bucket}/fileio/tree", tmp_path / "cache") == local


def test_backbone_artifact_loads_from_gcs(gcs_bucket, lite0_artifact, tmp_path, monkeypatch):
    """Workers load the published artifact from the job's bucket, never rebuilding weights."""
    monkeypatch.setenv("BRANDLENS_CACHE", str(tmp_path / "cache"))
    uri = fileio.upload_dir(lite0_artifact, f"{gcs_bucket}/artifacts/{lite0_artifact.name}")
    assert read_fingerprint(uri) == read_fingerprint(lite0_artifact)
    images = np.random.default_rng(1).uniform(0, 255, (2, 224, 224, 3)).astype(np.float32)
    np.testing.assert_array_equal(Backbone(uri).embed(images), Backbone(lite0_artifact).embed(images))


def test_materialize_publishes_to_gcs(gcs_bucket, lite0_artifact, tmp_path, monkeypatch):
    from brandlens.backbones.artifact import materialize

    monkeypatch.setenv("BRANDLENS_CACHE", str(tmp_path / "cache"))
    uri = materialize("efficientnet_lite0", f"{gcs_bucket}/published")
    assert uri == f"{gcs_bucket}/published/{lite0_artifact.name}"
    assert read_fingerprint(uri).version == read_fingerprint(lite0_artifact).version
    assert materialize("efficientnet_lite0", f"{gcs_bucket}/published") == uri


def test_jobs_end_to_end_on_gcs(gcs_bucket, sample_bottlenecks, sample_model, artifact_root, tmp_path, monkeypatch):
    """Bottleneck and scoring jobs with input, output, cache and model on the GCS emulator."""
    import json

    import pyarrow.parquet as pq

    from beam_jobs.bottlenecks.config import BottleneckConfig
    from beam_jobs.bottlenecks.job import run as run_bottlenecks
    from beam_jobs.scoring.config import OutputConfig, ScoringConfig
    from beam_jobs.scoring.job import run as run_scoring
    from brandlens.config import BackboneConfig

    monkeypatch.setenv("BRANDLENS_CACHE", str(tmp_path / "localized"))
    sample = sample_bottlenecks.parent / "sample"
    root = f"{gcs_bucket}/e2e"
    fileio.upload_dir(sample / "images", f"{root}/archive/images")
    for name in ("manifest-with-splits.csv", "posts.csv"):
        fileio.write_bytes(f"{root}/archive/{name}", (sample / name).read_bytes())

    summary = run_bottlenecks(BottleneckConfig(input=f"{root}/archive/manifest-with-splits.csv", output=f"{root}/bottlenecks",
                                               cache=f"{root}/cache", augment=1,
                                               backbone=BackboneConfig("efficientnet_lite0", artifact_root)))
    local = json.loads((sample_bottlenecks / "summary.json").read_text())
    assert summary["reconciliation"]["ok"] and summary["counts"]["examples"] == local["counts"]["examples"]
    assert summary["vocabulary"] == local["vocabulary"]
    written = fileio.list_files(f"{root}/bottlenecks")
    assert any("/transform/transform_fn/saved_model.pb" in p for p in written)
    assert any("/transformed/test-" in p for p in written) and any("/examples/train-" in p for p in written)
    assert json.loads(fileio.read_text(f"{root}/bottlenecks/summary.json"))["status"] == "ok"

    model = fileio.upload_dir(sample_model, f"{root}/models/sample", last=("model_card.json",))
    scoring = run_scoring(ScoringConfig(input=f"{root}/archive/posts.csv", model=model,
                                        out=OutputConfig(f"{root}/scored", rows_per_file=50)))
    assert scoring["reconciliation"]["ok"] and scoring["counts"]["scored"] == 60
    parquet = [p for p in fileio.list_files(f"{root}/scored/scores") if p.endswith(".parquet")]
    assert sum(pq.read_table(io.BytesIO(fileio.read_bytes(p))).num_rows for p in parquet) == 60


def test_trainer_reads_and_writes_gcs(gcs_bucket, sample_bottlenecks, artifact_root, tmp_path, monkeypatch):
    """Bottlenecks and backbone artifacts on gs:// in, the export published to gs:// out, loadable by the scoring job."""
    import json

    from beam_jobs.scoring.model import ScoringModel
    from brandlens.cli import main

    monkeypatch.setenv("BRANDLENS_CACHE", str(tmp_path / "localized"))
    root = f"{gcs_bucket}/trainer"
    fileio.upload_dir(sample_bottlenecks, f"{root}/bottlenecks")
    from brandlens.backbones.artifact import BackboneFingerprint

    fingerprint = BackboneFingerprint.from_json((sample_bottlenecks / "backbone.json").read_text())
    name = fingerprint.directory_name
    fileio.upload_dir(artifact_root / name, f"{root}/artifacts/{name}")
    argv = ["train", "--bottlenecks", f"{root}/bottlenecks", "--output", f"{root}/model", "--artifacts", f"{root}/artifacts",
            "--steps", "100", "--verify-images", "2"]
    assert main(argv) == 0
    card = json.loads(fileio.read_text(f"{root}/model/model_card.json"))
    assert card["backbone"]["version"] == fingerprint.version
    published = fileio.list_files(f"{root}/model")
    assert any(p.endswith("serving/saved_model.pb") for p in published) and any(p.endswith("metrics.json") for p in published)
    model = ScoringModel(f"{root}/model")
    assert model.card.version_id == card["version_id"]
    assert model.score_embeddings(np.zeros((1, 1280), np.float32))["scores"].shape == (1, len(card["labels"]))
