"""Staged output and its commit: a kill at any moment leaves the old complete output or the new one.

A job writes everything into a staging folder whose name readers ignore (a leading
``_``, outside the globs readers use). Committing is journaled in one small JSON file,
the run's *manifest*:

1. the manifest is replaced (write beside, then an atomic rename) by a journal in state
   ``committing`` that lists every move (staged file -> final name) and every old file to delete;
2. the moves (one rename each; atomic per file) and deletions are applied;
3. the manifest is rewritten in state ``committed``, without the journal, and the staging removed.

A kill before step 1's rename leaves the old output and its manifest untouched (the staging is
deleted by the next run); a kill after it leaves a journal that :func:`recover` (called by the
next run and by readers that know the layout, e.g. ``brandlens query``) finishes: every step
is idempotent. Works through Beam's FileSystems (local paths and gs:// alike).
"""

from __future__ import annotations

import glob
import json
import logging
import os
import secrets

from brandlens import fileio

log = logging.getLogger(__name__)

COMMITTING = "committing"
COMMITTED = "committed"
_JOURNAL_KEYS = ("moves", "delete", "cleanup")


def staging_name(token: str | None = None) -> str:
    """A staging folder name readers skip (pyarrow, Spark, Hive skip ``_``; no ``*.parquet`` glob matches it)."""
    return f"_attempt-{token or secrets.token_hex(6)}"


def _fs():
    from apache_beam.io.filesystems import FileSystems

    return FileSystems


def write_json_atomic(path: str, data: dict) -> None:
    """Write a JSON file so that readers see the old or the new document, never a part of one."""
    fs = _fs()
    folder, name = fs.split(path)
    temp = fs.join(folder, f"_{name}.{secrets.token_hex(4)}.tmp")
    fileio.write_bytes(temp, (json.dumps(data, indent=1, sort_keys=True, default=str) + "\n").encode("utf-8"))
    fs.rename([temp], [path])


def read_json(path: str) -> dict | None:
    """A JSON document, or None when absent (or half-written by a foreign tool)."""
    if not fileio.exists(path):
        return None
    try:
        return json.loads(fileio.read_text(path))
    except ValueError:
        log.warning("ignoring %s: not JSON", path)
        return None


def _move(src: str, dst: str) -> None:
    fs = _fs()
    if not fs.exists(src):
        if not fs.exists(dst):
            log.warning("commit: neither %s nor its destination %s exists", src, dst)
        return
    if not fileio.is_remote(dst):
        os.makedirs(os.path.dirname(dst), exist_ok=True)
    try:
        fs.rename([src], [dst])
    except Exception:
        if fs.exists(src) or not fs.exists(dst):  # not a concurrent recovery that moved it first
            raise


def commit(manifest: str, moves: list[tuple[str, str]], deletes: list[str], record: dict, cleanup: tuple[str, ...] = ()) -> dict:
    """Make ``moves`` and ``deletes`` happen as one step, journaled in ``manifest``; returns the committed record.

    ``record`` is what the manifest says once committed (files, schema, lineage); ``cleanup``
    folders (the staging) are removed afterwards.
    """
    finals = {dst for _, dst in moves}
    journal = {**record, "state": COMMITTING, "moves": [list(m) for m in moves],
               "delete": sorted(set(deletes) - finals - {manifest}), "cleanup": list(cleanup)}
    write_json_atomic(manifest, journal)
    return _finish(manifest, journal)


def _finish(manifest: str, journal: dict) -> dict:
    fs = _fs()
    for src, dst in journal.get("moves", []):
        _move(src, dst)
    for path in journal.get("delete", []):
        try:
            fs.delete([path])
        except Exception:
            if fs.exists(path):  # not just deleted already (by an earlier try or a concurrent recovery)
                raise
    record = {k: v for k, v in journal.items() if k not in _JOURNAL_KEYS}
    record["state"] = COMMITTED
    write_json_atomic(manifest, record)
    for folder in journal.get("cleanup", []):
        try:
            fileio.delete_tree(folder)
        except Exception as exc:  # a leftover staging folder is deleted by the next run
            log.warning("could not delete %s: %s", folder, exc)
    return record


def recover(manifest: str) -> dict | None:
    """Finish a commit a kill interrupted; returns the manifest's committed record (None when there is none)."""
    journal = read_json(manifest)
    if journal is None:
        return None
    if journal.get("state") == COMMITTING:
        log.info("finishing the interrupted commit of %s", manifest)
        return _finish(manifest, journal)
    return journal


def remove_stale_staging(folder: str, keep: str | None = None) -> None:
    """Delete what killed runs left in ``folder``: staging folders (``_attempt-*``, all but ``keep``), manifest temp files."""
    prefix = folder.rstrip("/") + "/"
    if fileio.is_remote(folder):
        stale = {prefix + m.path[len(prefix):].split("/")[0]
                 for pattern in ("_attempt-*/**", "_*.tmp") for r in _fs().match([prefix + pattern])
                 for m in r.metadata_list if m.path.startswith(prefix)}
    else:  # local folders can be empty (a run killed before it wrote a file), which no file match finds
        stale = {path for pattern in ("_attempt-*", "_*.tmp") for path in glob.glob(glob.escape(prefix) + pattern)}
    for path in sorted(stale - {keep}):
        fileio.delete_tree(path)
