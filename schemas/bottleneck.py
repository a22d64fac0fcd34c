"""The bottleneck job's ``tf.train.Example`` records, as a tensorflow-metadata Schema.

Writer (beam_jobs), trainer and tests all derive their feature specs from here.
Raw examples carry identity and lineage next to the embedding; the transformed
examples written by tensorflow-transform add the label id and the scaled embedding.
A job run with ``--cut N`` also stores, in the raw examples only, ``cut_map``: the
backbone's feature map entering block N (float16, C order, shape ``CUT_MAP_SHAPE``
of the summary), which the trainer's ``--adapt blocks`` trains the rest of the
network on. The transform never reads it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CONTENT_HASH = "content_hash"
URI = "uri"
LABEL = "label"
SPLIT = "split"
VARIANT = "variant"
EMBEDDING = "embedding"
BACKBONE = "backbone"
CUT_MAP = "cut_map"
CUT_MAP_DTYPE = np.float16

# label_id indexes the TFT vocabulary ``transform/transform_fn/assets/label_vocabulary`` (the training split's
# labels, most frequent first, as tft.compute_and_apply_vocabulary orders them; -1 for a label absent from
# training), not the model card's ``labels`` order (brands sorted, then ``neither``): the trainer re-indexes by
# the ``label`` string, and so should any other reader that wants model-card class ids.
LABEL_ID = "label_id"
EMBEDDING_SCALED = "embedding_scaled"

SPLITS = ("train", "validation", "test")
ORIGINAL_VARIANT = "original"
STRING_FEATURES = (CONTENT_HASH, URI, LABEL, SPLIT, VARIANT, BACKBONE)
LABEL_VOCABULARY = "label_vocabulary"


@dataclass(frozen=True)
class BottleneckRecord:
    """One embedded image (or one augmented variant of it)."""

    content_hash: str
    uri: str
    label: str
    split: str
    variant: str
    embedding: np.ndarray
    backbone: str
    cut_map: bytes = b""  # float16 bytes of the map entering the cut block; empty without --cut


def raw_schema(embedding_dim: int):
    """tensorflow-metadata Schema of the raw examples."""
    from tensorflow_metadata.proto.v0 import schema_pb2

    schema = schema_pb2.Schema()
    for name in STRING_FEATURES:
        feature = schema.feature.add(name=name, type=schema_pb2.BYTES)
        feature.shape.SetInParent()  # a scalar: FixedLenFeature([])
        feature.presence.min_fraction = 1.0
    feature = schema.feature.add(name=EMBEDDING, type=schema_pb2.FLOAT)
    feature.shape.dim.add(size=embedding_dim)
    feature.presence.min_fraction = 1.0
    return schema


def raw_feature_spec(embedding_dim: int) -> dict:
    """``tf.io`` parsing spec of the raw examples (derived from :func:`raw_schema`)."""
    from tensorflow_transform.tf_metadata import schema_utils

    return schema_utils.schema_as_feature_spec(raw_schema(embedding_dim)).feature_spec


def transformed_feature_spec(embedding_dim: int) -> dict:
    import tensorflow as tf

    return {
        LABEL_ID: tf.io.FixedLenFeature([], tf.int64),
        EMBEDDING_SCALED: tf.io.FixedLenFeature([embedding_dim], tf.float32),
        CONTENT_HASH: tf.io.FixedLenFeature([], tf.string),
        URI: tf.io.FixedLenFeature([], tf.string),
        LABEL: tf.io.FixedLenFeature([], tf.string),
        SPLIT: tf.io.FixedLenFeature([], tf.string),
        VARIANT: tf.io.FixedLenFeature([], tf.string),
    }


def to_example_bytes(record: BottleneckRecord) -> bytes:
    """Serialise a record as a ``tf.train.Example``; pure protobuf, no TF graph."""
    from tensorflow.core.example import example_pb2

    example = example_pb2.Example()
    features = example.features.feature
    for name in STRING_FEATURES:
        features[name].bytes_list.value.append(str(getattr(record, name)).encode("utf-8"))
    features[EMBEDDING].float_list.value.extend(np.asarray(record.embedding, np.float32).ravel().tolist())
    if record.cut_map:
        features[CUT_MAP].bytes_list.value.append(record.cut_map)
    return example.SerializeToString(deterministic=True)  # map order fixed: equal records, equal bytes (transform_reuse keys on them)


def encode_cut_map(values: np.ndarray) -> bytes:
    return np.ascontiguousarray(values, CUT_MAP_DTYPE).tobytes()


def decode_cut_maps(blobs, shape) -> np.ndarray:
    """float16 [N, *shape] from the stored bytes; a blob of the wrong size is an error, not a reshape."""
    size = int(np.prod(shape)) * np.dtype(CUT_MAP_DTYPE).itemsize
    bad = [i for i, b in enumerate(blobs) if len(b) != size]
    if bad:
        raise ValueError(f"{len(bad)} stored cut maps are not {tuple(shape)} float16 (e.g. row {bad[0]}: {len(blobs[bad[0]])} bytes)")
    return np.frombuffer(b"".join(blobs), CUT_MAP_DTYPE).reshape((len(blobs), *shape))


def from_example_bytes(data: bytes) -> BottleneckRecord:
    from tensorflow.core.example import example_pb2

    example = example_pb2.Example.FromString(data)
    features = example.features.feature
    values = {name: features[name].bytes_list.value[0].decode("utf-8") for name in STRING_FEATURES}
    cut_map = features[CUT_MAP].bytes_list.value[0] if CUT_MAP in features else b""
    return BottleneckRecord(embedding=np.asarray(features[EMBEDDING].float_list.value, np.float32), cut_map=cut_map, **values)
