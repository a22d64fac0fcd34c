"""Embedding cache: the CNN's output keyed by (content hash, backbone version, variant).

Layout: ``<cache>/<backbone directory name>/<run id>-SSSSS-of-NNNNN.tfrecord.gz``,
GZIP TFRecords of ``tf.train.Example`` (content_hash, variant, backbone,
embedding). Each run appends its new entries as new files through Beam's
file sink (written to a temp folder, renamed when complete) and never rewrites
old ones, so concurrent or crashed runs cannot damage the cache. Readers join
it by content hash (a CoGroupByKey scales where a side-input dict would not).
Stale entries are harmless: another backbone has another folder, another
variant another key. Entries whose backbone field disagrees with their folder
are ignored and counted. A damaged file (truncated, bad CRC, not GZIP) is named
in a warning, counted (``cache_damaged_files``) and ignored from the damage on:
its images are embedded again and land in this run's new files.
"""

from __future__ import annotations

import logging

import apache_beam as beam
import numpy as np
from apache_beam.io import fileio
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.io.tfrecordio import _TFRecordSink, _TFRecordUtil

from beam_jobs.common.accounting import Counters

log = logging.getLogger(__name__)
DAMAGED_FILES = "cache_damaged_files"

SUFFIX = ".tfrecord.gz"
_HASH, _VARIANT, _BACKBONE, _EMBEDDING, _CUT_MAP = "content_hash", "variant", "backbone", "embedding", "cut_map"


def cache_folder(cache_root: str, backbone_directory_name: str, cut: int | None = None) -> str:
    """The folder of one backbone's entries under the cache root; runs with ``--cut N`` keep theirs apart.

    An entry of a cut folder holds the map entering block N besides the embedding.
    """
    name = backbone_directory_name if cut is None else f"{backbone_directory_name}-cut{cut}"
    return FileSystems.join(cache_root, name)


def encode_entry(content_hash: str, variant: str, backbone: str, embedding: np.ndarray, cut_map: bytes = b"") -> bytes:
    from tensorflow.core.example import example_pb2

    example = example_pb2.Example()
    features = example.features.feature
    features[_HASH].bytes_list.value.append(content_hash.encode())
    features[_VARIANT].bytes_list.value.append(variant.encode())
    features[_BACKBONE].bytes_list.value.append(backbone.encode())
    features[_EMBEDDING].float_list.value.extend(np.asarray(embedding, np.float32).ravel().tolist())
    if cut_map:
        features[_CUT_MAP].bytes_list.value.append(cut_map)
    return example.SerializeToString()


def decode_entry(data: bytes) -> tuple[str, str, str, np.ndarray | tuple[np.ndarray, bytes]]:
    """(content_hash, variant, backbone, embedding or (embedding, cut map bytes)) of one cache record."""
    from tensorflow.core.example import example_pb2

    features = example_pb2.Example.FromString(data).features.feature
    text = lambda name: features[name].bytes_list.value[0].decode()  # noqa: E731
    embedding = np.asarray(features[_EMBEDDING].float_list.value, np.float32)
    if _CUT_MAP in features:
        embedding = (embedding, features[_CUT_MAP].bytes_list.value[0])
    return text(_HASH), text(_VARIANT), text(_BACKBONE), embedding


def _parts(value) -> tuple:
    """A cached value is an embedding, or (embedding, cut map bytes) for a cut folder."""
    return value if isinstance(value, tuple) else (value,)


def file_entries(path: str):
    """The records of one cache file, CRC-checked; raises where the file is damaged (after the good ones)."""
    with FileSystems.open(path, compression_type=CompressionTypes.GZIP) as f:
        while True:
            record = _TFRecordUtil.read_record(f)
            if record is None:
                return
            yield record


class _ReadCacheFile(beam.DoFn):
    def __init__(self, backbone: str, counters: Counters):
        self._backbone, self._counters = backbone, counters

    def process(self, path: str):
        try:
            for data in file_entries(path):
                content_hash, variant, entry_backbone, embedding = decode_entry(data)
                if entry_backbone != self._backbone:
                    self._counters.inc("cache_foreign_entries")
                    continue
                yield content_hash, (variant, embedding)
        except Exception as exc:  # truncated GZIP, bad CRC, not an Example: ignore the rest, embed again
            self._counters.inc(DAMAGED_FILES)
            message = (str(exc).splitlines() or [""])[0][:200]
            log.warning("embedding cache file %s is damaged (%s: %s): ignored from there on; its images are embedded again",
                        path, type(exc).__name__, message)


class ReadEmbeddingCache(beam.PTransform):
    """All entries of one backbone -> ``(content_hash, (variant, embedding))``; an empty cache is fine."""

    def __init__(self, folder: str, backbone_version: str, namespace: str):
        super().__init__()
        self._folder, self._backbone, self._counters = folder, backbone_version, Counters(namespace)

    def expand(self, pbegin):
        return (
            pbegin
            | "Pattern" >> beam.Create([FileSystems.join(self._folder, "*" + SUFFIX)])
            | "Match" >> fileio.MatchAll(empty_match_treatment=fileio.EmptyMatchTreatment.ALLOW)
            | "Paths" >> beam.Map(lambda metadata: metadata.path)
            | "SpreadFiles" >> beam.Reshuffle()
            | "Read" >> beam.ParDo(_ReadCacheFile(self._backbone, self._counters))
        )


class WriteEmbeddingCache(beam.PTransform):
    """``(content_hash, variant, embedding)`` -> new cache files named after ``run_id``; none when empty."""

    def __init__(self, folder: str, run_id: str, backbone_version: str, num_shards: int = 0):
        super().__init__()
        self._folder, self._run_id, self._backbone, self._num_shards = folder, run_id, backbone_version, num_shards

    def expand(self, entries):
        backbone = self._backbone
        # WriteToTFRecord has no skip_if_empty; its sink has the FileBasedSink flag.
        sink = _TFRecordSink(FileSystems.join(self._folder, self._run_id), beam.coders.BytesCoder(), SUFFIX,
                             self._num_shards, None, CompressionTypes.GZIP)
        sink.skip_if_empty = True
        return (
            entries
            | "Encode" >> beam.MapTuple(lambda h, variant, emb: encode_entry(h, variant, backbone, *_parts(emb)))
            | "Write" >> beam.io.Write(sink)
        )
