"""Inception v3 (the 2016 study's network) and VGG16 from ``keras.applications``.

They need ImageNet weights: downloaded by Keras when the network is reachable,
or read from a local weights file. Offline without a file this fails with a
one-line :class:`BackboneUnavailable`, never a stack trace.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import tensorflow as tf

from brandlens.errors import BackboneUnavailable


@dataclass(frozen=True)
class KerasVariant:
    name: str
    input_size: int
    embedding_layer: str
    embedding_dim: int
    preprocessing: str
    feature_map_layer: str  # the last convolutional map; for Inception v3 the embedding is its mean


VARIANTS = {
    "inception_v3": KerasVariant("inception_v3", 299, "avg_pool", 2048, "x / 127.5 - 1", "mixed10"),
    "vgg16": KerasVariant("vgg16", 224, "fc2", 4096, "caffe: RGB->BGR, minus ImageNet channel means", "block5_conv3"),
}

_VGG_MEANS_BGR = (103.939, 116.779, 123.68)


def _application(name: str, weights):
    apps = tf.keras.applications
    if name == "inception_v3":
        return apps.InceptionV3(include_top=True, weights=weights)
    return apps.VGG16(include_top=True, weights=weights)


class KerasBackbone(tf.Module):
    """Wraps a Keras application so that it exports as a plain SavedModel."""

    def __init__(self, variant: KerasVariant, model):
        super().__init__(name=variant.name)
        self.variant = variant
        self.model = tf.keras.Model(model.inputs, [model.get_layer(variant.embedding_layer).output, model.output,
                                                   model.get_layer(variant.feature_map_layer).output])
        self.logits_are_probabilities = True

    def preprocess(self, images):
        x = tf.cast(images, tf.float32)
        if self.variant.name == "inception_v3":
            return x / 127.5 - 1.0
        return x[..., ::-1] - tf.constant(_VGG_MEANS_BGR, tf.float32)

    def forward_normalized(self, x):
        features, probabilities, feature_map = self.model(x, training=False)
        return features, tf.math.log(tf.maximum(probabilities, 1e-12)), feature_map


def build(name: str, weights_file: str | Path | None = None) -> tuple[KerasBackbone, str]:
    """Build the application with ImageNet weights from ``weights_file`` or the network."""
    variant = VARIANTS[name]
    if weights_file is not None:
        path = Path(weights_file)
        if not path.is_file():
            raise BackboneUnavailable(f"{name}: weights file {path} does not exist")
        model = _application(name, None)
        model.load_weights(str(path))
        return KerasBackbone(variant, model), str(path)
    try:
        model = _application(name, "imagenet")
    except Exception as exc:  # Keras raises bare Exception on download failures.
        from brandlens.backbones import OFFLINE_BACKBONES

        reason = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
        raise BackboneUnavailable(
            f"{name} needs ImageNet weights from the network, which failed ({reason}); "
            f"pass --weights-file PATH, or use an offline backbone: {', '.join(OFFLINE_BACKBONES)}"
        ) from None
    return KerasBackbone(variant, model), "keras.applications:imagenet"
