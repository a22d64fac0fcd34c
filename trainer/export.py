"""Write the export that ``schemas/model.py`` specifies: serving/, head/ and model_card.json.

Both SavedModels are plain ``tf.Module`` saves with ``tf.function`` signatures,
so they load with ``tf.saved_model.load`` in Keras 2 and Keras 3 processes alike.
The serving model holds decoding, the shared crop-and-resize, the backbone
(loaded from its artifact and saved inside), the transform (as the affine
scale/shift probed from the TFT graph) and the head: no file outside the folder
is needed. After saving, the export is reloaded and checked against the
evaluation's own scores.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import uuid
from pathlib import Path

import numpy as np

from brandlens import __version__
from brandlens.backbones.artifact import SAVED_MODEL_DIR
from brandlens.errors import ArtifactError
from schemas import model as contract
from trainer.serving_layout import write_serving_layout

log = logging.getLogger(__name__)

CHECK_TOLERANCE = 1e-4
_BRIEF_METRICS = ("count", "accuracy", "argmax_accuracy", "cross_entropy", "macro_f1", "brand_precision", "brand_recall")


def _adapted_network(backbone, weights, specs, cut: int):
    """The backbone's network with its blocks from ``cut`` and its head convolution replaced by the trained ones."""
    import tensorflow as tf

    def pair(values, name):
        return tuple(tf.Variable(np.asarray(v, np.float32), trainable=False, name=f"{name}_{part}")
                     for v, part in zip(values, ("kernel", "bias")))

    net = tf.Module(name="adapted_network")
    net.stem = backbone.net.stem
    net.blocks = [backbone.net.blocks[i] if i < cut else
                  {part: pair(weights.blocks[i][part], f"b{i}_{part}") for part in weights.blocks[i]}
                  for i in range(len(specs))]
    net.head = pair(weights.conv_head, "conv_head")
    return net


def _modules(weights, scale, shift, labels, neither_index, threshold, version_id, backbone_dir=None, fingerprint=None,
             cut=None):
    """Build the head module and, given a backbone, the serving module around it."""
    import tensorflow as tf

    from brandlens import evidence
    from brandlens.preprocess import crop_and_resize

    dim = weights.kernel.shape[0]
    fallback = neither_index is not None and threshold is not None
    temperature = float(weights.temperature)

    class Head(tf.Module):
        def __init__(self):
            super().__init__(name="brandlens_head")
            self.kernel = tf.Variable(np.asarray(weights.kernel, np.float32), trainable=False, name="kernel")
            self.bias = tf.Variable(np.asarray(weights.bias, np.float32), trainable=False, name="bias")
            self.scale = tf.Variable(np.asarray(scale, np.float32), trainable=False, name="transform_scale")
            self.shift = tf.Variable(np.asarray(shift, np.float32), trainable=False, name="transform_shift")
            self.temperature = tf.Variable(temperature, trainable=False, name="temperature")
            self.labels = tf.Variable(labels, trainable=False, name="labels")
            self.version_id = tf.Variable(version_id, trainable=False, name="version_id")

        def outputs(self, embedding, feature_map=None):
            """The contract's outputs; with the backbone's final map also the evidence (``contract.EVIDENCE_OUTPUTS``)."""
            scaled = embedding * self.scale + self.shift
            logits = tf.matmul(scaled, self.kernel) + self.bias
            if temperature != 1.0:
                logits = logits / self.temperature
            scores = tf.nn.softmax(logits)
            top = tf.argmax(scores, axis=1, output_type=tf.int32)
            if fallback:
                top_score = tf.gather(scores, top, batch_dims=1)
                below = tf.logical_and(tf.not_equal(top, neither_index), top_score < threshold)
                top = tf.where(below, tf.constant(neither_index, tf.int32), top)
            out = {contract.OUT_SCORES: scores, contract.OUT_LABEL: tf.gather(self.labels, top),
                   contract.OUT_CONFIDENCE: tf.gather(scores, top, batch_dims=1), contract.OUT_EMBEDDING: embedding}
            if feature_map is not None and feature_map.shape[-1] == dim:  # the embedding is the map's mean
                out.update(evidence.evidence(feature_map, self.scale, self.shift, self.kernel, self.bias,
                                             temperature=self.temperature))
            return out

        @tf.function(input_signature=[tf.TensorSpec([None, dim], tf.float32, name=contract.INPUT_EMBEDDING)])
        def serve(self, embedding):
            return self.outputs(embedding)

        @tf.function(input_signature=[tf.TensorSpec([None, None, None, dim], tf.float32, name=contract.INPUT_FEATURE_MAP)])
        def serve_maps(self, feature_map):
            """From the backbone's final map, as ``score_images`` computes after the backbone."""
            return self.outputs(tf.reduce_mean(feature_map, axis=[1, 2]), feature_map)

    head = Head()
    if backbone_dir is None:
        return head, None
    size, crop, resize_mode = fingerprint.input_size, fingerprint.crop_fraction, fingerprint.resize_mode

    class Serving(tf.Module):
        def __init__(self):
            super().__init__(name="brandlens_serving")
            self.backbone = tf.saved_model.load(str(Path(backbone_dir) / SAVED_MODEL_DIR))
            self.head = head
            self.version_id = head.version_id
            if weights.adapts_blocks:
                from brandlens.backbones import efficientnet_lite as lite

                self.specs = lite.block_specs(lite.VARIANTS[fingerprint.name])
                self.net = _adapted_network(self.backbone, weights, self.specs, cut)

        def embed(self, images):
            """(embedding, final feature map): the embedding is the map's mean for every backbone but VGG16."""
            if not weights.adapts_blocks:
                features = self.backbone.serve(images)
                return features["embedding"], features["feature_map"]
            from brandlens.backbones import efficientnet_lite as lite
            from schemas.bottleneck import CUT_MAP_DTYPE

            net, specs = self.net, self.specs
            trunk = lite.run_blocks(net, lite.stem(net, lite.preprocess(images)), specs, 0, cut)
            trunk = tf.cast(tf.cast(trunk, CUT_MAP_DTYPE), tf.float32)  # as stored for training: float16
            final = lite.head_map(net, lite.run_blocks(net, trunk, specs, cut))
            return tf.reduce_mean(final, axis=[1, 2]), final

        @tf.function(input_signature=[tf.TensorSpec([None, size, size, 3], tf.float32, name=contract.INPUT_IMAGES)])
        def score_images(self, images):
            return self.head.outputs(*self.embed(images))

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=contract.INPUT_BYTES)])
        def score_bytes(self, image_bytes):
            def prepare(data):
                image = tf.cond(
                    tf.io.is_jpeg(data),
                    lambda: tf.io.decode_jpeg(data, channels=3, dct_method="INTEGER_ACCURATE"),
                    lambda: tf.ensure_shape(tf.io.decode_image(data, channels=3, expand_animations=False), [None, None, 3]))
                return crop_and_resize(image, size, crop, resize_mode)

            images = tf.map_fn(prepare, image_bytes, fn_output_signature=tf.TensorSpec([size, size, 3], tf.float32))
            return self.score_images(images)

    return head, Serving()


def make_version_id(created: dt.datetime, weights, labels: list[str], backbone_version: str) -> str:
    """``bl-<UTC time>-<8 hex>``: sortable by time; the hash mixes in the weights and a random id."""
    digest = hashlib.sha256()
    digest.update(np.ascontiguousarray(weights.kernel, np.float32).tobytes())
    digest.update(np.ascontiguousarray(weights.bias, np.float32).tobytes())
    digest.update(json.dumps([labels, backbone_version]).encode())
    digest.update(uuid.uuid4().bytes)
    return f"bl-{created:%Y%m%dT%H%M%SZ}-{digest.hexdigest()[:8]}"


def _brief(metrics: dict) -> dict:
    return {k: metrics[k] for k in _BRIEF_METRICS if k in metrics}


def export_model(config, data, run, metrics: dict) -> dict:
    """Save serving/ and head/, check them against the evaluation, write and return the model card."""
    import tensorflow as tf

    from trainer.data import default_image_root, locate_artifact, read_bytes, resolve_uri

    output = Path(config.output)
    artifact = locate_artifact(data.fingerprint, config.artifact_root)
    created = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    version_id = make_version_id(created, run.fit.weights, data.labels, data.fingerprint.version)
    weights = run.fit.weights
    head, serving = _modules(weights, data.scale, data.shift, data.labels, data.neither_index,
                             run.threshold_value, version_id, artifact, data.fingerprint, data.cut)
    tf.saved_model.save(serving, str(output / contract.SERVING_DIR),
                        signatures={contract.SIG_BYTES: serving.score_bytes, contract.SIG_IMAGES: serving.score_images})
    if not weights.adapts_blocks:  # a head on adapted blocks cannot take the frozen backbone's embedding
        signatures = {contract.SIG_EMBEDDING: head.serve}
        made = serving.score_images.get_concrete_function().structured_outputs
        if any(name in made for name in contract.EVIDENCE_OUTPUTS):  # the embedding is the final map's mean
            signatures[contract.SIG_MAPS] = head.serve_maps
        tf.saved_model.save(head, str(output / contract.HEAD_DIR), signatures=signatures)

    check = verify_export(output, data, run.scores["test"], config.verify_images,
                          config.image_root or default_image_root(data), read_bytes, resolve_uri)
    card = {
        "version_id": version_id,
        "labels": data.labels,
        "neither_label": data.neither_label,
        "threshold": run.threshold_value,
        "backbone": json.loads(data.fingerprint.to_json()),
        "training_data": {
            "bottlenecks": str(Path(data.root).resolve()),
            "manifest": data.summary.get("manifest") or data.summary.get("config", {}).get("input"),
            "counts": data.counts(),
            "bottleneck_summary": data.summary,
        },
        "adaptation": {"adapt": run.hparams.adapt, "cut": data.cut if weights.adapts_blocks else None,
                       "trained": (f"blocks {run.hparams.train_from or data.cut}..{max(weights.blocks)}, the head "
                                   "convolution and the dense layer" if weights.adapts_blocks else "the dense layer"),
                       "temperature": float(weights.temperature)},
        "hyperparameters": {**run.hparams.to_dict(), "class_weight_values": run.fit.class_weights,
                            "best_step": run.fit.best_step, "steps_run": run.fit.steps_run,
                            "stopped_early": run.fit.stopped_early, "target_precision": config.target_precision},
        "metrics": {"validation": _brief(metrics["validation"]), "test": _brief(metrics["test"]),
                    "threshold_selection": run.threshold},
        "created_at": created.isoformat().replace("+00:00", "Z"),
        "brandlens_version": __version__,
        "classification": data.classification,
        "export_check": check,
        "brand_thresholds": _brand_thresholds(output, data, config.image_root or default_image_root(data), read_bytes,
                                              resolve_uri),
        "tile_thresholds": _tile_thresholds(output, data, config.image_root or default_image_root(data), read_bytes,
                                            resolve_uri),
    }
    (output / contract.MODEL_CARD).write_text(json.dumps(card, indent=2, sort_keys=True))
    write_serving_layout(output)
    log.info("exported %s to %s", version_id, output)
    return card


def _brand_thresholds(output: Path, data, image_root, read_bytes, resolve_uri) -> dict | None:
    """Thresholds for reporting extra brands (``brandlens.evidence``), chosen on the validation photos."""
    import tensorflow as tf

    from brandlens import evidence

    validation = data.splits["validation"]
    found = [(blob, validation.y[i]) for i in range(len(validation))
             if (blob := read_bytes(resolve_uri(str(validation.uri[i]), image_root))) is not None]
    serving = tf.saved_model.load(str(output / contract.SERVING_DIR)).signatures[contract.SIG_BYTES]
    score = lambda blobs: {k: v.numpy() for k, v in serving(**{contract.INPUT_BYTES: tf.constant(blobs)}).items()}  # noqa: E731
    return evidence.thresholds_from_model(score, [b for b, _ in found], np.array([y for _, y in found]), data.labels,
                                          data.neither_label)


def _tile_thresholds(output: Path, data, image_root, read_bytes, resolve_uri) -> dict | None:
    """Thresholds for brands found on the scoring job's ``--multi-crop`` tiles, chosen on the validation photos."""
    import tensorflow as tf

    from brandlens import evidence
    from brandlens.imaging import decode_image
    from brandlens.preprocess import decode_side

    fp = data.fingerprint
    size, crop, mode = fp.input_size, fp.crop_fraction, fp.resize_mode
    validation = data.splits["validation"]
    photos, y = [], []
    for i in range(len(validation)):
        blob = read_bytes(resolve_uri(str(validation.uri[i]), image_root))
        if blob is not None:
            photos.append(decode_image(blob, min_side=decode_side(size, crop, evidence.TILE_GRID)))
            y.append(validation.y[i])
    serving = tf.saved_model.load(str(output / contract.SERVING_DIR)).signatures[contract.SIG_IMAGES]
    score = lambda x: {k: v.numpy() for k, v in serving(**{contract.INPUT_IMAGES: tf.constant(x)}).items()}  # noqa: E731
    found = evidence.tile_thresholds_from_model(score, photos, np.array(y), data.labels, data.neither_label, size, crop,
                                                mode)
    log.info("tile thresholds for --multi-crop %d from %d validation photos: %s", evidence.TILE_GRID, len(photos), found)
    if found and min(found.values()) >= 1.0:
        log.warning("--multi-crop %d will add no brands from tiles: %d validation photos are too few brand photos to "
                    "hold extra brands to %.0f%% (about %d needed)", evidence.TILE_GRID, len(photos),
                    100 * evidence.MAX_EXTRA_RATE, int(np.ceil(1 / evidence.MAX_EXTRA_RATE)))
    return None if found is None else {str(evidence.TILE_GRID): found}


def verify_export(output: Path, data, test_scores: np.ndarray, max_images: int, image_root, read_bytes, resolve_uri) -> dict:
    """Reload both SavedModels and compare with the evaluation's test scores; raise when they disagree.

    The serving model is fed the test photos decoded as the jobs decode them (``score_images``: large JPEGs at a
    reduced DCT scale), which must give the evaluation's scores; its bytes signature, which decodes every JPEG in
    full, is held to that only for the photos that decode to the same pixels either way (the tolerance for the
    others is in ``schemas/model.py``).
    """
    import tensorflow as tf

    from brandlens.imaging import decode_image
    from brandlens.preprocess import decode_side, prepare

    test = data.splits["test"]
    check = {"head_max_abs_diff": None, "images_checked": 0, "serving_max_abs_diff": None, "bytes_images_checked": 0}
    if (output / contract.HEAD_DIR).is_dir():
        head = tf.saved_model.load(str(output / contract.HEAD_DIR)).signatures[contract.SIG_EMBEDDING]
        head_scores = head(**{contract.INPUT_EMBEDDING: tf.constant(test.raw)})[contract.OUT_SCORES].numpy()
        check["head_max_abs_diff"] = float(np.max(np.abs(head_scores - test_scores)))
    picked = []
    for i in range(len(test)):
        if len(picked) >= max_images:
            break
        blob = read_bytes(resolve_uri(str(test.uri[i]), image_root))
        if blob is not None:
            picked.append((i, blob))
    if picked:
        fp = data.fingerprint
        side = decode_side(fp.input_size, fp.crop_fraction)
        serving = tf.saved_model.load(str(output / contract.SERVING_DIR))
        decoded = [(i, b, decode_image(b, min_side=side)) for i, b in picked]
        images = np.stack([prepare(rgb, fp.input_size, fp.crop_fraction, fp.resize_mode) for _, _, rgb in decoded])
        out = serving.signatures[contract.SIG_IMAGES](**{contract.INPUT_IMAGES: tf.constant(images)})[contract.OUT_SCORES]
        check["serving_max_abs_diff"] = float(np.max(np.abs(out.numpy() - test_scores[[i for i, _ in picked]])))
        check["images_checked"] = len(picked)
        whole = [(i, b) for i, b, rgb in decoded if rgb.shape == decode_image(b).shape]  # decoded in full anyway
        if whole:
            out = serving.signatures[contract.SIG_BYTES](**{contract.INPUT_BYTES: tf.constant([b for _, b in whole])})
            diff = float(np.max(np.abs(out[contract.OUT_SCORES].numpy() - test_scores[[i for i, _ in whole]])))
            check["serving_max_abs_diff"] = max(check["serving_max_abs_diff"], diff)
            check["bytes_images_checked"] = len(whole)
    elif max_images:
        log.warning("no test image was readable, so the serving model was not checked on images (set --image-root)")
    worst = max([v for v in (check["head_max_abs_diff"], check["serving_max_abs_diff"]) if v is not None] or [0.0])
    if worst > CHECK_TOLERANCE:
        raise ArtifactError(f"the exported model disagrees with the evaluation by {worst:g} (> {CHECK_TOLERANCE:g}) "
                            f"on the test split: {check}; the bottlenecks may come from different preprocessing")
    return check
