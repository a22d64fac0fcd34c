"""The scores archive on disk: which files are its own, which run is which, one schema for all.

Layout under a scoring job's ``--output`` (see ``schemas/scores.py`` for the rows)::

    scores/dt=YYYY-MM-DD/part-<run>-<shard>-of-<n>.parquet   committed rows: what readers glob
    runs/<run>/manifest.json    the run's commit point: its files, schema, input, model (brandlens.commit)
    runs/<run>/summary.json, dead_letters-*.jsonl
    runs/<run>/_attempt-<id>/   a run in progress: staged files, invisible to readers of scores/

A run is identified by what it reads, not by how its path is spelled: the model version and
the input's resolved location (symlinks resolved, a folder or glob by its resolved pattern);
a single manifest file whose content equals that of a committed run's input is that run (a
copy, another mount). Options (``--write-embedding``, ``--multi-crop``) are not part of it:
one post has one row per run whatever the options.
"""

from __future__ import annotations

import glob
import hashlib
import os
import re

from brandlens import commit, fileio
from brandlens.errors import ConfigError

RUNS = "runs"
MANIFEST = "manifest.json"
# The job names runs by 12 hex digits; archives made by other tools in the job's layout use other run names.
PART_FILE = re.compile(r"^dt=\d{4}-\d{2}-\d{2}/part-(?P<run>[0-9A-Za-z_]+?)-(?:kept-)?\d{5}-of-\d{5}\.parquet$")
_GLOB = re.compile(r"[*?\[]")


def output_of(scores_dir: str) -> str:
    return scores_dir.rstrip("/").rsplit("/", 1)[0]


def manifest_path(output: str, run: str) -> str:
    return f"{output}/{RUNS}/{run}/{MANIFEST}"


def manifests(output: str) -> dict[str, dict]:
    """Committed manifests by run key; interrupted commits are finished first."""
    found = {}
    for path in glob_below(output.rstrip("/"), f"{RUNS}/*/{MANIFEST}"):
        record = commit.recover(path)
        if record is not None:
            found[path.rsplit("/", 2)[-2]] = record
    return found


def glob_below(folder: str, pattern: str) -> list[str]:
    """Files matching ``pattern`` below ``folder``, whose own name may hold glob characters (``archive[1]``)."""
    if not fileio.is_remote(folder):
        return sorted(glob.glob(os.path.join(glob.escape(folder), pattern)))
    from apache_beam.io.filesystems import FileSystems

    return sorted(m.path for r in FileSystems.match([f"{folder}/{pattern}"]) for m in r.metadata_list)


def own_files(scores_dir: str) -> tuple[list[str], list[str]]:
    """(this archive's committed part files, the other files found under ``scores_dir``), as full paths.

    Own files are those a committed manifest lists, and part files named like the job's of runs
    that have no manifest (archives from before manifests). Anything else (foreign Parquet files,
    files of a commit in progress, stray temp files) is skipped, and named by the caller.
    """
    root = scores_dir.rstrip("/")
    records = manifests(output_of(root))
    listed = {name for record in records.values() for name in record.get("files", [])}
    own, skipped = [], []
    for path in fileio.list_files(root):
        relative = path[len(root) + 1:]
        part = PART_FILE.match(relative)
        if relative in listed or (part and part.group("run") not in records):
            own.append(path)
        else:
            skipped.append(path)
    return own, skipped


def resolved_location(path: str) -> str:
    """A path as what it points at: symlinks and ``..`` resolved; a glob by its resolved fixed part."""
    if fileio.is_remote(path):
        scheme, rest = path.split("://", 1)
        return f"{scheme}://{re.sub('/+', '/', rest).rstrip('/')}"
    parts = os.path.abspath(path).split(os.sep)
    fixed = next((i for i, part in enumerate(parts) if _GLOB.search(part)), len(parts))
    head = os.path.realpath(os.sep.join(parts[:fixed]) or os.sep)
    return os.path.join(head, *parts[fixed:]) if fixed < len(parts) else head


def content_digest(path: str) -> str | None:
    """sha256 of a single input file (a manifest), else None: folders and globs are known by location."""
    if _GLOB.search(path) or not fileio.exists(path):
        return None
    try:
        with open(path, "rb") if not fileio.is_remote(path) else _remote(path) as f:
            digest = hashlib.sha256()
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    except (IsADirectoryError, OSError):
        return None
    return digest.hexdigest()


def _remote(path: str):
    from apache_beam.io.filesystem import CompressionTypes
    from apache_beam.io.filesystems import FileSystems

    return FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED)


def input_identity(path: str) -> dict:
    return {"location": resolved_location(path), "content_sha256": content_digest(path)}


def run_key_for(output: str, kind: str, model_version: str, identity: dict) -> str:
    """The run key of (kind, model, input): the committed run with the same model and input content, else a new hash."""
    if identity.get("content_sha256"):
        for run, record in sorted(manifests(output).items()):
            if (record.get("kind") == kind and record.get("model_version") == model_version
                    and record.get("input", {}).get("content_sha256") == identity["content_sha256"]):
                return run
    text = "\x00".join((kind, model_version, identity["location"]))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:12]


def schema_fields(arrow_schema) -> list[list[str]]:
    return [[field.name, str(field.type)] for field in arrow_schema]


def check_schema(output: str, run: str, arrow_schema) -> None:
    """One schema per archive: refuse a run whose columns differ from those of the archive's other runs."""
    mine = schema_fields(arrow_schema)
    for other, record in sorted(manifests(output).items()):
        theirs = record.get("schema")
        if other == run or not theirs or theirs == mine:
            continue
        added = [n for n, _ in mine if n not in {m for m, _ in theirs}]
        missing = [n for n, _ in theirs if n not in {m for m, _ in mine}]
        changed = [n for n, t in mine if [n, t] not in theirs and n not in added]
        raise ConfigError(
            f"{output} holds run {other} with other columns (this run adds {added or 'none'}, lacks {missing or 'none'}, "
            f"changes {changed or 'none'}): one schema per archive; write to another --output or rerun that input the same way")
