"""Reuse a whole bottleneck run whose inputs did not change: no image decoded, no pipeline, no TensorFlow.

A run's outputs are a function of the bytes it reads (the input files and, for a
manifest, every image its rows name), its settings (all but where it writes and
how often it logs), the backbone and the code. :func:`run_key` hashes exactly
those; a finished run's files are kept under ``<cache>/.runs/<key>/`` with a
record written last that names every file's SHA-256 (:mod:`keyed_store`), and a
later run with the same key restores them into its own staging folder and
commits them as its run. A changed byte anywhere only ever misses.

Local files are hashed once and then remembered by (size, mtime, ctime, inode)
in ``<cache>/.runs/file-digests.json``, as git's index does: any write to a file
changes its ctime, which no user-level tool can set back. Inputs on remote
stores are not keyed (a checksum request per image would cost more than it
saves): those runs use the embedding cache and the reused TFT output only.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from importlib import metadata
from pathlib import Path

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from beam_jobs.common import keyed_store
from beam_jobs.common.inputs import FORMAT_MANIFEST, InputSpec
from beam_jobs.common.records import ImageRecord
from beam_jobs.common.sources import parent_of, read_manifest
from brandlens import fileio
from schemas import layout

log = logging.getLogger(__name__)

RUNS = ".runs"  # hidden: beside the embedding cache, never read as part of it
RECORD = "run.json"  # written last: its presence marks a complete copy
DIGESTS = "file-digests.json"
MISSING = "missing"
_PACKAGES = ("beam_jobs", "brandlens", "schemas")
_ROOT = Path(__file__).resolve().parents[2]
_NOT_KEYED = ("output", "cache", "overwrite", "progress_interval")  # where it writes and how it logs: not what


class FileDigests:
    """SHA-256 of local files, remembered by (size, mtime, ctime, inode) across runs."""

    def __init__(self, memo: str | None):
        self._memo_path = memo
        self._memo: dict[str, list] = {}
        self._changed = False
        if memo and os.path.isfile(memo):
            try:
                self._memo = json.loads(Path(memo).read_text())
            except (ValueError, OSError) as exc:
                log.warning("ignoring the unreadable file-digest memo %s: %s", memo, exc)

    def digest(self, path: str) -> str:
        try:
            st = os.stat(path)
        except OSError:
            return MISSING
        stamp = [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]
        known = self._memo.get(path)
        if known and known[:4] == stamp:
            return known[4]
        digest = keyed_store.sha256(path)
        self._memo[path] = stamp + [digest]
        self._changed = True
        return digest

    def save(self) -> None:
        """Write the memo (atomically: a concurrent run's copy is replaced whole, never mixed)."""
        if not (self._memo_path and self._changed):
            return
        Path(self._memo_path).parent.mkdir(parents=True, exist_ok=True)
        temp = f"{self._memo_path}.{os.getpid()}.tmp"
        Path(temp).write_text(json.dumps(self._memo))
        os.replace(temp, self._memo_path)


def input_files(spec: InputSpec) -> list[str] | None:
    """Every file a run over ``spec`` reads: the matched files, sorted, then each manifest's images in row order.

    None when any of them is on a remote store (or the input matches nothing: the job says why).
    """
    matched = sorted(m.path for m in FileSystems.match([spec.pattern])[0].metadata_list)
    if not matched or any(fileio.is_remote(path) for path in matched):
        return None
    files = list(matched)
    if spec.resolved_format == FORMAT_MANIFEST:
        for path in matched:
            base = spec.base_uri if spec.base_uri is not None else parent_of(path)
            with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
                uris = [r.uri for r in read_manifest(path, f, base, spec.uri_column) if isinstance(r, ImageRecord)]
            if any(fileio.is_remote(uri) for uri in uris):
                return None
            files.extend(uris)
    return files


def code_digest() -> str:
    """SHA-256 over the source of every module that can shape a run's output."""
    digest = hashlib.sha256()
    for package in _PACKAGES:
        for path in sorted((_ROOT / package).rglob("*.py")):
            digest.update(str(path.relative_to(_ROOT)).encode() + b"\x00" + path.read_bytes())
    return digest.hexdigest()


def run_key(config, fingerprint_json: str) -> str | None:
    """The key of a run of ``config`` (a BottleneckConfig) with the backbone of ``fingerprint_json``, or None
    when its inputs cannot be keyed (remote)."""
    files = input_files(config.input_spec)
    if files is None:
        return None
    digests = FileDigests(f"{config.cache}/{RUNS}/{DIGESTS}" if not fileio.is_remote(config.cache) else None)
    inputs = hashlib.sha256()
    for path in files:
        inputs.update(f"{path}\x00{digests.digest(path)}\n".encode())
    digests.save()
    settings = {k: v for k, v in config.describe().items() if k not in _NOT_KEYED}
    parts = {"inputs": inputs.hexdigest(), "files": len(files), "settings": settings, "num_shards": config.num_shards,
             "backbone": fingerprint_json, "code": code_digest(),
             "versions": {name: metadata.version(name) for name in ("apache-beam", "tensorflow", "tensorflow-transform")}}
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:32]


def _folder(cache: str, key: str) -> str:
    return f"{cache}/{RUNS}/{key}"


def find(cache: str, key: str) -> tuple[str, dict] | None:
    """(folder, record) of the complete, undamaged run stored for ``key``, or None."""
    folder = _folder(cache, key)
    record = keyed_store.find(folder, RECORD, "stored bottleneck run")
    return (folder, record) if record is not None else None


def restore(folder: str, record: dict, staging: str) -> dict:
    """Copy a stored run's outputs into ``staging``; returns the stored run's summary."""
    for name in sorted(record["files"]):
        if name == layout.SUMMARY:
            continue
        destination = f"{staging}/{name}"
        if not fileio.is_remote(destination):
            Path(destination).parent.mkdir(parents=True, exist_ok=True)
        FileSystems.copy([f"{folder}/{name}"], [destination])
    return json.loads(fileio.read_text(f"{folder}/{layout.SUMMARY}"))


def store(staging: str, cache: str, key: str, run_id: str) -> str:
    """Keep a finished run's staged files (summary included) under its key; returns the folder."""
    folder = _folder(cache, key)
    keyed_store.store(folder, RECORD, {"": staging}, {"run_id": run_id, "key": key}, "stored bottleneck run")
    return folder
