"""gs:// paths through the real GCS client against the local emulator."""

from __future__ import annotations

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
