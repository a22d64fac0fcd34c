"""The offline backbones: safe weight reading, the TF port, artifacts and the ImageNet check."""

from __future__ import annotations

import csv
import json
import pickle
import subprocess
import sys

import numpy as np
import pytest

from brandlens.backbones import efficientnet_lite
from brandlens.backbones.artifact import BackboneFingerprint, load_backbone, materialize, read_fingerprint
from brandlens.errors import ArtifactError, BackboneUnavailable, ConfigError
from brandlens.torch_legacy import UnsafePickleError, load_legacy_state_dict
from tests.conftest import REPO, shared_path

TOLERANCE = 1e-4


def test_legacy_reader_reads_every_tensor():
    state = load_legacy_state_dict(str(efficientnet_lite.weights_path(efficientnet_lite.VARIANTS["efficientnet_lite0"])))
    assert state["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert state["_fc.weight"].shape == (1000, 1280)
    assert state["_bn0.num_batches_tracked"].dtype == np.int64
    assert all(np.isfinite(v).all() for v in state.values() if v.dtype.kind == "f")


def _legacy_file(state_pickle: bytes) -> bytes:
    header = b"".join(pickle.dumps(x, protocol=2) for x in (0x1950A86A20F9469CFC6C, 1001, {"little_endian": True}))
    return header + state_pickle + pickle.dumps([], protocol=2)


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_legacy_reader_refuses_arbitrary_globals(capsys):
    with pytest.raises(UnsafePickleError, match=r"refusing to load global .*print"):
        load_legacy_state_dict(_legacy_file(pickle.dumps({"x": _Evil()}, protocol=2)))
    assert "pwned" not in capsys.readouterr().out


def test_legacy_reader_refuses_other_formats():
    with pytest.raises(ValueError, match="zip-format"):
        load_legacy_state_dict(b"PK\x03\x04rest")
    with pytest.raises(ValueError, match="magic"):
        load_legacy_state_dict(pickle.dumps(12345, protocol=2))


@pytest.mark.parametrize("index", [0, 1, 2])
def test_port_reproduces_pytorch_reference(index, artifact_root):
    """Every array in the reference file, through the saved-and-reloaded artifact."""
    ref = np.load(shared_path("reference", "efficientnet_lite_torch_ref.npz"))
    backbone = load_backbone(materialize(f"efficientnet_lite{index}", artifact_root))
    out = backbone.run_normalized(ref[f"lite{index}_x"])
    feat_err = np.abs(out["embedding"] - ref[f"lite{index}_feat"]).max()
    logit_err = np.abs(out["logits"] - ref[f"lite{index}_logits"]).max()
    print(f"lite{index}: max |feat diff| {feat_err:.3g}, max |logit diff| {logit_err:.3g}")
    assert feat_err < TOLERANCE and logit_err < TOLERANCE


def test_lite2_ranks_imagenet_sample_correctly(artifact_root):
    from brandlens.imaging import decode_image

    folder = shared_path("data", "imagenet-sample")
    rows = list(csv.DictReader(open(folder / "labels.csv")))
    backbone = load_backbone(materialize("efficientnet_lite2", artifact_root))
    images = np.stack([backbone.prepare(decode_image((folder / r["file"]).read_bytes())) for r in rows])
    logits = np.concatenate([backbone.run(images[i:i + 25])["logits"] for i in range(0, len(images), 25)])
    top1 = int((logits.argmax(1) == np.array([int(r["imagenet_index"]) for r in rows])).sum())
    print(f"lite2 top-1 on the ImageNet sample: {top1}/{len(rows)}")
    assert len(rows) == 100 and top1 >= 85


def test_artifact_fingerprint_and_reuse(lite0_artifact, artifact_root):
    fp = read_fingerprint(lite0_artifact)
    assert (fp.name, fp.input_size, fp.embedding_dim) == ("efficientnet_lite0", 224, 1280)
    assert fp.preprocessing == "(x - 127) / 128 on RGB"
    assert abs(fp.crop_fraction - 224 / 256) < 1e-6
    assert len(fp.weights_sha256) == 64 and fp.version.startswith("efficientnet_lite0@" + fp.weights_sha256[:12])
    assert BackboneFingerprint.from_json(fp.to_json()) == fp
    before = (lite0_artifact / "fingerprint.json").stat().st_mtime_ns
    assert materialize("efficientnet_lite0", artifact_root) == lite0_artifact
    assert (lite0_artifact / "fingerprint.json").stat().st_mtime_ns == before
    other = materialize("efficientnet_lite0", artifact_root, crop_fraction=1.0)
    assert other != lite0_artifact and read_fingerprint(other).version != fp.version


def test_lite_at_another_input_size(lite0_artifact, artifact_root):
    """--input-size: its own artifact and version; same weights; larger maps; the mean-pooled embedding still 1280."""
    from brandlens.backbones.artifact import cut_map_shape

    path = materialize("efficientnet_lite0", artifact_root, resize_mode="squash", input_size=320)
    fp, native = read_fingerprint(path), read_fingerprint(lite0_artifact)
    assert path != lite0_artifact and fp.input_size == 320 and fp.version.endswith("-squash-s320")
    assert fp.weights_sha256 == native.weights_sha256 and fp.saved_weights_sha256 == native.saved_weights_sha256
    assert "-s" not in native.version  # the variant's own size keeps the version it always had
    assert materialize("efficientnet_lite0", artifact_root, resize_mode="squash", input_size=320) == path
    assert materialize("efficientnet_lite0", artifact_root, input_size=224) == lite0_artifact
    backbone = load_backbone(path)
    rgb = np.random.default_rng(0).integers(0, 255, (200, 300, 3), dtype=np.uint8)
    prepared = backbone.prepare(rgb)
    assert prepared.shape == (320, 320, 3)
    out = backbone.run(prepared[None])
    assert out["embedding"].shape == (1, 1280) and out["feature_map"].shape == (1, 10, 10, 1280)
    cut = backbone.run_with_cut(prepared[None], 12)
    assert list(cut["cut_map"].shape[1:]) == cut_map_shape(fp, 12) == [10, 10, 192]
    np.testing.assert_allclose(cut["embedding"], out["embedding"], atol=1e-5)
    with pytest.raises(ConfigError, match="input size must be"):
        materialize("efficientnet_lite0", artifact_root, input_size=4000)
    with pytest.raises(ConfigError, match="--input-size is for the EfficientNet-Lite"):
        materialize("inception_v3", artifact_root, input_size=400)


def test_bad_artifact_and_config_errors(tmp_path, artifact_root):
    with pytest.raises(ArtifactError, match="not a backbone artifact"):
        read_fingerprint(tmp_path)
    with pytest.raises(ConfigError, match="unknown backbone"):
        materialize("resnet9000", artifact_root)
    with pytest.raises(ConfigError, match="crop fraction"):
        materialize("efficientnet_lite0", artifact_root, crop_fraction=1.5)
    with pytest.raises(BackboneUnavailable, match="does not exist"):
        materialize("inception_v3", artifact_root, weights_file=str(tmp_path / "missing.h5"))


_LOAD_IN_KERAS2 = """
import sys, json, numpy as np
import tensorflow_transform  # switches tf.keras to Keras 2 in this process
import tensorflow as tf
from brandlens.backbones.artifact import load_backbone
assert tf.keras.__name__.startswith("tf_keras"), tf.keras.__name__
b = load_backbone(sys.argv[1])
out = b.run(np.full((1, 224, 224, 3), 127.0, np.float32))
print(json.dumps({"keras": tf.keras.__name__, "embedding": out["embedding"][0, :4].tolist()}))
"""


def test_artifact_loads_in_a_keras2_process(lite0_artifact):
    """tensorflow-transform flips tf.keras to Keras 2; the artifact must load there too."""
    proc = subprocess.run([sys.executable, "-c", _LOAD_IN_KERAS2, str(lite0_artifact)], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    here = load_backbone(lite0_artifact).run(np.full((1, 224, 224, 3), 127.0, np.float32))["embedding"][0, :4]
    assert result["keras"].startswith("tf_keras")
    np.testing.assert_allclose(result["embedding"], here, atol=1e-6)


def test_network_backbone_offline_gives_one_line_error():
    """Without network and without a weights file: a one-line error naming the offline backbones."""
    proc = subprocess.run([sys.executable, "-m", "brandlens.cli", "backbone", "--backbone", "vgg16", "--artifacts", "/tmp/brandlens-offline-check"],
                          capture_output=True, text=True, cwd=REPO, timeout=300)
    if proc.returncode == 0:
        pytest.skip("this machine reached the network and downloaded the weights")
    last = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert last.startswith("brandlens: error: vgg16 needs ImageNet weights") and "efficientnet_lite2" in last


def test_inception_v3_from_a_local_weights_file(tmp_path, artifact_root):
    """The study's network, materialised from a local .h5 as an offline user would."""
    import tensorflow as tf

    model = tf.keras.applications.InceptionV3(include_top=True, weights=None)
    weights = tmp_path / "inception_v3.weights.h5"
    model.save_weights(str(weights))
    path = materialize("inception_v3", artifact_root, weights_file=str(weights))
    fp = read_fingerprint(path)
    assert (fp.input_size, fp.embedding_dim) == (299, 2048)
    out = load_backbone(path).run(np.random.default_rng(0).uniform(0, 255, (2, 299, 299, 3)).astype(np.float32))
    assert out["embedding"].shape == (2, 2048) and out["logits"].shape == (2, 1000)
    expected = model(tf.constant(np.random.default_rng(0).uniform(0, 255, (2, 299, 299, 3)).astype(np.float32)) / 127.5 - 1.0)
    np.testing.assert_allclose(np.exp(out["logits"]), expected.numpy(), atol=1e-5)
