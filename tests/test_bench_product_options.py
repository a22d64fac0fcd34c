"""Product options the accuracy benchmark measures: resize modes and label smoothing."""

from __future__ import annotations

import json

import numpy as np
import pytest

from brandlens.backbones.artifact import BackboneFingerprint


def _image(height=60, width=120):
    rng = np.random.default_rng(0)
    return (rng.random((height, width, 3)) * 255).astype(np.uint8)


def test_resize_modes_shapes_and_geometry():
    from brandlens.preprocess import PAD_VALUE, prepare

    img = np.zeros((60, 120, 3), np.uint8)
    img[:, :30] = 255  # a white band on the left, outside the central square
    crop = prepare(img, 32, 1.0, "center_crop")
    squash = prepare(img, 32, 1.0, "squash")
    pad = prepare(img, 32, 1.0, "pad")
    assert crop.shape == squash.shape == pad.shape == (32, 32, 3)
    assert crop.max() == 0  # the central square misses the band
    assert squash[:, :6].min() > 200 and squash[:, 10:].max() < 60  # the whole width kept
    assert np.allclose(pad[0, 16], PAD_VALUE) and np.allclose(pad[-1, 16], PAD_VALUE)  # grey above and below
    assert pad[16, 1].min() > 200
    np.testing.assert_array_equal(prepare(img, 32, 1.0), crop)  # center_crop stays the default
    with pytest.raises(ValueError, match="resize mode"):
        prepare(img, 32, 1.0, "stretch")


def test_square_image_is_the_same_in_every_mode_at_full_crop():
    from brandlens.preprocess import prepare

    img = _image(50, 50)
    ref = prepare(img, 24, 1.0, "center_crop")
    for mode in ("squash", "pad"):
        np.testing.assert_allclose(prepare(img, 24, 1.0, mode), ref, atol=1e-4)


def test_fingerprint_version_and_old_fingerprints():
    fields = dict(name="efficientnet_lite2", input_size=260, preprocessing="p", resize="r", crop_fraction=0.890411,
                  embedding_dim=1280, weights_sha256="9656183eaeaf" + "0" * 52, weights_source="s")
    old = BackboneFingerprint(**fields)
    assert old.resize_mode == "center_crop" and old.version == "efficientnet_lite2@9656183eaeaf-c0.890411"
    data = json.loads(old.to_json())
    del data["resize_mode"]  # written before resize modes existed
    assert BackboneFingerprint.from_json(json.dumps(data)) == old
    squash = BackboneFingerprint(**{**fields, "crop_fraction": 1.0}, resize_mode="squash")
    assert squash.version == "efficientnet_lite2@9656183eaeaf-c1-squash"
    assert squash.directory_name == "efficientnet_lite2-9656183eaeaf-c1-squash-f2"
    assert BackboneFingerprint.from_json(squash.to_json()) == squash


def test_backbone_config_parses_resize_mode():
    import argparse

    from brandlens.config import BackboneConfig
    from brandlens.preprocess import RESIZE_MODES, default_crop_fraction

    parser = argparse.ArgumentParser()
    BackboneConfig.add_arguments(parser)
    assert BackboneConfig.from_args(parser.parse_args([])).resize_mode is None
    assert BackboneConfig.from_args(parser.parse_args(["--resize-mode", "pad"])).resize_mode == "pad"
    assert set(RESIZE_MODES) == set(__import__("brandlens.config").config.RESIZE_MODES)
    assert default_crop_fraction(224) == 224 / 256 and default_crop_fraction(224, "squash") == 1.0


def test_label_smoothing_makes_the_head_less_sure_and_flag():
    import argparse

    from trainer.config import HParams
    from trainer.data import SplitData
    from trainer.train import fit

    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 120)
    x = rng.normal(size=(120, 8)).astype(np.float32)
    x[np.arange(120), y] += 3.0

    def split(rows):
        names = np.array([str(i) for i in rows])
        return SplitData(x=x[rows], raw=x[rows], y=y[rows], uri=names, variant=np.array(["original"] * len(rows)),
                         content_hash=names)

    train, validation = split(np.arange(100)), split(np.arange(100, 120))
    hp = HParams(steps=200, eval_every=50, patience=0, l2=0.0, calibrate=False, learning_rate=0.05)
    sure = fit(train, validation, ["a", "b", "c"], hp).scores(train).max(axis=1).mean()
    smoothed = fit(train, validation, ["a", "b", "c"], hp.replace(label_smoothing=0.3)).scores(train).max(axis=1).mean()
    assert smoothed < sure - 0.02  # smoothed targets (Keras' label_smoothing) keep the scores away from certainty
    parser = argparse.ArgumentParser()
    HParams.add_arguments(parser)
    assert HParams.from_args(parser.parse_args(["--label-smoothing", "0.1"])).label_smoothing == 0.1
    assert HParams.from_args(parser.parse_args([])) == HParams()
    with pytest.raises(Exception, match="label smoothing"):
        HParams(label_smoothing=1.0)


def test_trainer_rows_are_in_a_fixed_order(sample_bottlenecks):
    """Beam writes rows in any order; the trainer sorts them so a rerun of the same job trains the same head."""
    from trainer.data import load_bottlenecks

    data = load_bottlenecks(sample_bottlenecks)
    for split in data.splits.values():
        keys = list(zip(split.content_hash, split.variant, split.uri))
        assert keys == sorted(keys)
