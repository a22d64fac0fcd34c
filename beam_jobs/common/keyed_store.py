"""Folders stored under a content key, complete or not there at all, checked byte for byte on the way out.

A stored folder holds copies of some output folders and, written last, a JSON
record naming every stored file with its SHA-256. :func:`find` returns the record
only when every file is present and unchanged: a copy cut short by a kill, a
damaged or edited file is named in a warning and treated as a miss, so the work
runs again instead of reusing something it cannot vouch for. Beam FileSystems
throughout (local folders and gs:// alike); no TensorFlow.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from brandlens import fileio

log = logging.getLogger(__name__)


def sha256(path: str) -> str:
    digest = hashlib.sha256()
    with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _mkdirs(path: str) -> None:
    if not fileio.is_remote(path):
        Path(path).mkdir(parents=True, exist_ok=True)


def copy_tree(source: str, target: str) -> None:
    """Copy every file below ``source`` to the same place below ``target``."""
    for path in fileio.list_files(f"{source}/"):
        destination = f"{target}/{path[len(source) + 1:]}"
        _mkdirs(destination.rsplit("/", 1)[0])
        FileSystems.copy([path], [destination])


def find(folder: str, marker: str, what: str) -> dict | None:
    """The record of the complete, undamaged folder stored at ``folder``, or None (``what`` names it in warnings)."""
    path = f"{folder}/{marker}"
    if not fileio.exists(path):
        return None
    try:
        record = json.loads(fileio.read_text(path))
        for name, digest in sorted(record["files"].items()):
            stored = f"{folder}/{name}"
            if not fileio.exists(stored) or sha256(stored) != digest:
                log.warning("%s %s is damaged (%s differs from its record); not reused", what, folder, name)
                return None
    except (ValueError, KeyError, TypeError, AttributeError, OSError) as exc:
        log.warning("%s %s is unreadable (%s); not reused", what, folder, exc)
        return None
    return record


def store(folder: str, marker: str, sources: dict[str, str], record: dict, what: str) -> None:
    """Copy each ``sources`` folder (name -> path; name "" for the folder itself) to ``folder/name``, then the
    record with every file's SHA-256."""
    if find(folder, marker, what) is not None:
        return
    if fileio.list_files(f"{folder}/"):  # a damaged entry or a killed store's leftovers (maybe other file names)
        fileio.delete_tree(folder)
    for name, source in sources.items():
        copy_tree(source, f"{folder}/{name}" if name else folder)
    files = {path[len(folder) + 1:]: sha256(path) for path in fileio.list_files(f"{folder}/")}
    fileio.write_text(f"{folder}/{marker}", json.dumps({**record, "files": files}, sort_keys=True))
