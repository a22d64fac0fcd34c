"""Where a manifest's relative uris point, decided once per run."""

from __future__ import annotations

from beam_jobs.common.inputs import InputSpec, infer_base_uri


def _tree(tmp_path, manifest_folder: str, uri: str):
    (tmp_path / "data" / "images").mkdir(parents=True)
    (tmp_path / "data" / "images" / "a.jpg").write_bytes(b"x")
    folder = tmp_path / manifest_folder
    folder.mkdir(parents=True, exist_ok=True)
    manifest = folder / "m.csv"
    manifest.write_text(f"uri,label\n{uri},nike\n")
    return manifest


def test_manifest_beside_the_images_resolves_against_its_own_folder(tmp_path):
    assert infer_base_uri(InputSpec(str(_tree(tmp_path, "data", "images/a.jpg")))) is None


def test_manifest_in_a_subfolder_resolves_against_the_ancestor_that_holds_the_images(tmp_path):
    manifest = _tree(tmp_path, "data/manifests", "images/a.jpg")
    assert infer_base_uri(InputSpec(str(manifest))) == str(tmp_path / "data")
    assert infer_base_uri(InputSpec(str(manifest), base_uri="/elsewhere")) == "/elsewhere"


def test_absolute_or_missing_uris_change_nothing(tmp_path):
    assert infer_base_uri(InputSpec(str(_tree(tmp_path, "data/manifests", str(tmp_path / "data/images/a.jpg"))))) is None
    assert infer_base_uri(InputSpec(str(tmp_path / "data/manifests/other.csv"))) is None
    (tmp_path / "data/manifests/none.csv").write_text("uri,label\nimages/nope.jpg,nike\n")
    assert infer_base_uri(InputSpec(str(tmp_path / "data/manifests/none.csv"))) is None
    assert infer_base_uri(InputSpec(str(tmp_path / "data"))) is None
