"""brandlens composites: brand photos pasted into background photos of their own split, never test."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from brandlens.cli import main
from brandlens.composites import CompositesConfig, make_composites, paste
from brandlens.errors import ConfigError
from brandlens.imaging import decode_image
from brandlens.sample import make_sample


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    root = tmp_path_factory.mktemp("composites")
    sample = make_sample(root / "sample", per_label=6)
    with open(sample.manifest, newline="") as f:
        rows = list(csv.DictReader(f))
    path = root / "split.csv"
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["uri", "label", "split"])
        for i, r in enumerate(rows):
            writer.writerow([r["uri"], r["label"], ("train", "train", "train", "validation", "test", "test")[i % 6]])
    return path, sample.manifest.parent


def test_paste_puts_the_item_where_it_says():
    host = np.zeros((50, 80, 3), np.uint8)
    item = np.full((30, 30, 3), 200, np.uint8)
    out = paste(host, item, 100, 40, 10, 55)
    assert out.shape == (100, 100, 3)
    assert (out[55:95, 10:50] == 200).all() and out[:55].max() == 0 and out[:, 50:].max() == 0


def test_composites_of_train_and_validation_brand_photos_only(manifest, tmp_path, capsys):
    path, base = manifest
    out = tmp_path / "out"
    assert main(["composites", "--input", str(path), "--base-uri", str(base), "--output", str(out), "--per-photo", "2",
                 "--canvas", "160", "--seed", "3"]) == 0
    assert "composites {'train': 12, 'validation': 4}" in capsys.readouterr().out  # (3, 1) of 6 per brand x 2 brands x 2
    with open(out / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    with open(path, newline="") as f:
        original = list(csv.DictReader(f))
    assert [(r["label"], r["split"]) for r in rows[:len(original)]] == [(r["label"], r["split"]) for r in original]
    assert all(Path(r["uri"]).is_absolute() and Path(r["uri"]).is_file() for r in rows)  # valid from any folder
    made = rows[len(original):]
    assert len(made) == 16 and {r["split"] for r in made} == {"train", "validation"}
    assert {r["label"] for r in made} == {"acme", "zenith"}
    for r in made[:4]:
        image = decode_image(open(r["uri"], "rb").read())
        assert image.shape == (160, 160, 3)
    again = tmp_path / "again"
    make_composites(CompositesConfig(str(path), str(again), str(base), per_photo=2, canvas=160, seed=3))
    assert sorted(p.read_bytes() for p in (out / "images").iterdir()) == sorted(p.read_bytes() for p in (again / "images").iterdir())


def test_composites_refuse_what_they_cannot_do(manifest, tmp_path):
    path, base = manifest
    with pytest.raises(ConfigError, match="no 'background' photos in train"):
        make_composites(CompositesConfig(str(path), str(tmp_path / "x"), str(base), background_label="background"))
    no_split = tmp_path / "no-split.csv"
    no_split.write_text("uri,label\na.jpg,acme\n")
    with pytest.raises(ConfigError, match="split column keeps test photos out"):
        make_composites(CompositesConfig(str(no_split), str(tmp_path / "y")))
    with pytest.raises(ConfigError, match="scale"):
        CompositesConfig("m.csv", "o", scale=(0.6, 0.3))


def test_an_unreadable_photo_is_named_with_its_reason_and_its_row_kept(manifest, tmp_path):
    """The composite is skipped (skipped.csv says why); the row stays, for the bottleneck job to dead-letter."""
    path, base = manifest
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff not a jpeg")
    rows[0]["uri"] = str(broken)  # a train photo of the first brand
    bad = tmp_path / "bad.csv"
    with open(bad, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["uri", "label", "split"])
        writer.writeheader()
        writer.writerows(rows)
    done = make_composites(CompositesConfig(str(bad), str(tmp_path / "out"), str(base), canvas=128))
    assert done["skipped"] == 1 and done["composites"] == {"train": 5, "validation": 2}
    with open(tmp_path / "out" / "skipped.csv", newline="") as f:
        skipped = list(csv.DictReader(f))
    assert skipped[0]["uri"] == str(broken) and "ImageDecodeError" in skipped[0]["reason"]
    with open(tmp_path / "out" / "manifest.csv", newline="") as f:
        assert str(broken) in {r["uri"] for r in csv.DictReader(f)}
