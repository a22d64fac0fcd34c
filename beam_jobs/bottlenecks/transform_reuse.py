"""Reuse a tensorflow-transform output whose inputs did not change, instead of analysing again.

The TFT step is a pure function of the examples written (every split: train is analysed,
all are transformed), the backbone and the transform code. Its key hashes exactly those:
the sorted SHA-256 of every example record (so shard order and count do not matter), the
backbone version, the shard setting, the tensorflow-transform version and the source of
the modules that define the step. A finished TFT output is copied under
``<cache>/.transforms/<key>/`` with a marker written last (label vocabulary and every file's SHA-256); a rerun whose key
finds a complete copy restores it into the new output. A different input only ever
misses (and runs TFT), it never reuses. Pure Python and Beam FileSystems: no TensorFlow
import on the way.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import logging
import struct
from importlib import metadata
from pathlib import Path

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from beam_jobs.common import keyed_store
from brandlens import fileio
from schemas import layout

log = logging.getLogger(__name__)

TRANSFORMS = ".transforms"  # hidden: beside the embedding cache, never read as part of it
VOCABULARY_FILE = "vocabulary.json"  # written last: its presence marks a complete copy
_CODE = ("beam_jobs/bottlenecks/transform.py", "beam_jobs/bottlenecks/transform_pipeline.py", "schemas/bottleneck.py")
_ROOT = Path(__file__).resolve().parents[2]


def tfrecord_payloads(data: bytes):
    """The records of an uncompressed TFRecord file (length, crc, payload, crc framing)."""
    view, at = memoryview(data), 0
    while at < len(view):
        (length,) = struct.unpack_from("<Q", view, at)
        start = at + 12
        yield bytes(view[start:start + length])
        at = start + length + 4


def examples_digest(output: str) -> tuple[str, int]:
    """(hex digest, record count) of every example in ``<output>/examples``, independent of shard order."""
    digests = []
    for path in sorted(fileio.list_files(f"{output}/{layout.EXAMPLES}/")):
        if not path.endswith(layout.TFRECORD_SUFFIX):
            continue
        with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
            raw = gzip.GzipFile(fileobj=io.BytesIO(f.read())).read()
        digests.extend(hashlib.sha256(record).digest() for record in tfrecord_payloads(raw))
    digests.sort()
    total = hashlib.sha256()
    for digest in digests:
        total.update(digest)
    return total.hexdigest(), len(digests)


def transform_key(output: str, backbone_version: str, num_shards: int) -> str:
    examples, count = examples_digest(output)
    code = hashlib.sha256()
    for name in _CODE:
        code.update((_ROOT / name).read_bytes())
    parts = {"examples": examples, "count": count, "backbone": backbone_version, "num_shards": num_shards,
             "tft": metadata.version("tensorflow-transform"), "code": code.hexdigest()}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]


def _folder(cache: str, key: str) -> str:
    return f"{cache}/{TRANSFORMS}/{key}"


def find(cache: str, key: str) -> str | None:
    """The stored TFT output for ``key``, if a complete and undamaged one exists (else TFT runs again)."""
    folder = _folder(cache, key)
    return folder if keyed_store.find(folder, VOCABULARY_FILE, "stored transform output") is not None else None


def restore(stored: str, output: str) -> list[str]:
    """Copy a stored TFT output into ``output`` (transform/ and transformed/); returns its label vocabulary."""
    for name in (layout.TRANSFORM, layout.TRANSFORMED):
        keyed_store.copy_tree(f"{stored}/{name}", f"{output}/{name}")
    return json.loads(fileio.read_text(f"{stored}/{VOCABULARY_FILE}"))["vocabulary"]


def store(output: str, cache: str, key: str, vocabulary: list[str]) -> str:
    """Keep this run's TFT output under its key (vocabulary last, so a half-written copy is never found)."""
    folder = _folder(cache, key)
    keyed_store.store(folder, VOCABULARY_FILE, {name: f"{output}/{name}" for name in (layout.TRANSFORM, layout.TRANSFORMED)},
                      {"vocabulary": vocabulary}, "stored transform output")
    return folder
