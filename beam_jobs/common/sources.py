"""Input readers: manifests, image folders and WebDataset tar shards, as ImageRecords.

Every reader yields :class:`~beam_jobs.common.records.ImageRecord`s on its
``records`` output and DeadLetters on ``dead_letters``, so jobs do not care
which layout an archive has. Manifest and folder records carry no bytes yet
(fetch them after a Reshuffle, so fetching spreads over workers); WebDataset
records do, because a shard has to be read front to back anyway.

Files are matched and read through Beam's FileSystems: local paths and gs://
work alike. The parsing functions are plain Python, tested without Beam.
"""

from __future__ import annotations

import base64
import csv
import datetime as dt
import decimal
import io
import json
import os
import posixpath
import re
import tarfile
import zlib
from typing import Iterator

import apache_beam as beam
from apache_beam.io import fileio
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems

from beam_jobs.common.inputs import (  # noqa: F401 (re-exported: one import for readers' users)
    FORMAT_AUTO, FORMAT_DIR, FORMAT_MANIFEST, FORMAT_WEBDATASET, IMAGE_EXTENSIONS, INPUT_FORMATS, MANIFEST_KINDS, TAR_SUFFIXES,
    InputSpec, detect_format, manifest_kind,
)
from beam_jobs.common.records import DEAD_LETTER_TAG, MISSING_IMAGE, STAGE_FETCH, STAGE_READ, ImageRecord
from brandlens.imaging import TOO_LARGE
from schemas.dead_letter import BAD_ROW, MISSING_FILE, UNREADABLE, DeadLetter

LABEL_FIELD = "label"  # metadata key of a folder's label


class BadRow(ValueError):
    """A manifest row or WebDataset sample that cannot be turned into a record."""


class BadManifest(ValueError):
    """A manifest whose header cannot be read: none of its rows can be."""


# --- pure helpers -------------------------------------------------------------------------

def is_absolute(uri: str) -> bool:
    return "://" in uri or uri.startswith("/")


def parent_of(path: str) -> str:
    """The folder holding ``path`` (a local path or a URL)."""
    return FileSystems.split(path)[0]


def resolve_uri(uri: str, base: str | None) -> str:
    """``uri`` as is when absolute (or no base), else joined to ``base`` (local paths normalised)."""
    if is_absolute(uri) or not base:
        return uri
    joined = FileSystems.join(base, uri)
    return joined if "://" in joined else os.path.normpath(joined)


def metadata_text(value) -> str | None:
    """A metadata value as the string a CSV would hold (the documented conversion of typed columns).

    Strings stay; null stays None; booleans ``true``/``false``; numbers as Python writes them;
    timestamps ISO 8601 (zone-aware ones in UTC with ``+00:00``, naive ones as given); dates
    ``YYYY-MM-DD``; binary as base64; decimals exact; lists and structs as JSON of the same.
    """
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value) if isinstance(value, float) else str(value)
    if isinstance(value, (dt.datetime, dt.date, dt.time, dt.timedelta, bytes, bytearray, decimal.Decimal)):
        return _scalar_text(value)
    return json.dumps(value, sort_keys=True, default=_scalar_text)


def _scalar_text(value) -> str:
    if isinstance(value, dt.datetime):
        return (value.astimezone(dt.timezone.utc) if value.tzinfo else value).isoformat()
    if isinstance(value, (dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, (bytes, bytearray)):
        return base64.b64encode(bytes(value)).decode("ascii")
    return str(value)


def record_from_row(row: dict, record_id: str, base: str | None, uri_column: str = "uri") -> ImageRecord:
    """One manifest row -> ImageRecord; the other columns (and the uri as written) become metadata."""
    if None in row:  # csv.DictReader files surplus cells under None
        raise BadRow(f"row has {len(row) - 1 + len(row[None])} cells, the header names {len(row) - 1}")
    uri = row.get(uri_column)
    if not isinstance(uri, str) or not uri.strip():
        raise BadRow(f"no {uri_column!r} value")
    metadata = {str(k): metadata_text(v) for k, v in row.items()}
    return ImageRecord(uri=resolve_uri(uri.strip(), base), record_id=record_id, metadata=metadata)


# csv's own limit (128 KiB) would end a file at one long caption; a row is still capped, at 16 MiB.
MAX_FIELD_CHARS = 16 * 1024 * 1024


def not_utf8(values) -> bool:
    return any(isinstance(v, str) and _SURROGATES.search(v) for v in values)


_SURROGATES = re.compile("[\udc80-\udcff]")


def _csv_rows(f) -> Iterator[tuple[int, dict | BadRow]]:
    """CSV rows; undecodable bytes (kept as surrogates) and csv errors spoil only their own row."""
    if csv.field_size_limit() < MAX_FIELD_CHARS:
        csv.field_size_limit(MAX_FIELD_CHARS)
    text = io.TextIOWrapper(f, encoding="utf-8-sig", errors="surrogateescape", newline="")
    reader = csv.reader(text)
    header, line = None, 0
    while True:
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            if header is None:
                raise BadManifest(f"header unreadable: {exc}") from None
            yield reader.line_num, BadRow(f"not a CSV row: {exc}")
            continue
        line = reader.line_num
        if header is None:
            if not_utf8(cells):
                raise BadManifest("header is not UTF-8 text")
            header = cells
            continue
        if not cells:
            continue  # a blank line is no row
        if not_utf8(cells):
            yield line, BadRow("row is not UTF-8 text")
            continue
        row = dict(zip(header, cells))
        if len(cells) > len(header):
            row[None] = cells[len(header):]
        elif len(cells) < len(header):
            row.update((name, None) for name in header[len(cells):])
        yield line, row


def _jsonl_rows(f) -> Iterator[tuple[int, dict | BadRow]]:
    for number, raw in enumerate(f, start=1):
        if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
            raw = raw[3:]
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            yield number, BadRow(f"line is not UTF-8 text (byte {exc.start + 1})")
            continue
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as exc:
            yield number, BadRow(f"not JSON: {exc}")
            continue
        yield number, row if isinstance(row, dict) else BadRow(f"a JSON {type(row).__name__}, not an object")


def manifest_rows(f, kind: str) -> Iterator[tuple[int, dict | BadRow]]:
    """(line or row number, row dict or BadRow) for each row of a manifest file object (binary).

    CSV and JSON lines give the line number in the file (the header is line 1);
    Parquet gives the 1-based row number. A bad row (undecodable bytes, broken
    quoting, bad JSON) is a BadRow of its own and reading goes on; only damage
    that makes the rest of a file unreadable (a bad header, a damaged Parquet
    footer or page) raises, after the rows before it.
    """
    if kind == "csv":
        yield from _csv_rows(f)
    elif kind == "jsonl":
        yield from _jsonl_rows(f)
    elif kind == "parquet":
        import pyarrow.parquet as pq

        number = 0
        for batch in pq.ParquetFile(f).iter_batches():
            for row in batch.to_pylist():
                number += 1
                yield number, row
    else:
        raise ValueError(f"unknown manifest kind {kind!r}")


def read_manifest(path: str, f, base: str | None, uri_column: str = "uri") -> Iterator[ImageRecord | DeadLetter]:
    """Records and dead letters of one manifest file, row by row; a file that breaks off ends in a dead letter."""
    name = posixpath.basename(path)
    kind = manifest_kind(path) or "csv"
    number = 0
    try:
        for number, row in manifest_rows(f, kind):
            record_id = f"{name}:{number}"
            try:
                if isinstance(row, BadRow):
                    raise row
                yield record_from_row(row, record_id, base, uri_column)
            except BadRow as exc:
                uri = row.get(uri_column) if isinstance(row, dict) else None
                yield DeadLetter(uri=str(uri or path), stage=STAGE_READ, reason=BAD_ROW,
                                 message=f"line {number}: {exc}" if kind != "parquet" else f"row {number}: {exc}",
                                 record_id=record_id)
    except Exception as exc:  # a bad header, a damaged Parquet file: the rest of the file is unreadable
        yield DeadLetter(uri=path, stage=STAGE_READ, reason=UNREADABLE,
                         message=f"manifest unreadable after row/line {number}: {type(exc).__name__}: {one_line(exc)}",
                         record_id=name)


def one_line(exc: BaseException) -> str:
    """An exception's message on one line (the first)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def split_member_name(name: str) -> tuple[str, str]:
    """WebDataset's rule: the key is the path up to the first dot of the file name."""
    folder, base = posixpath.split(name)
    stem, dot, ext = base.partition(".")
    return (posixpath.join(folder, stem) if folder else stem), ext.lower() if dot else ""


def _sample_record(shard: str, key: str, members: dict, max_bytes: int) -> ImageRecord | DeadLetter:
    record_id = f"{posixpath.basename(shard)}/{key}"
    image_ext = next((ext for ext in IMAGE_EXTENSIONS if ext in members), None)
    if image_ext is None:
        found = ", ".join(sorted(members)) or "nothing"
        return DeadLetter(uri=f"{shard}#{key}", stage=STAGE_READ, reason=MISSING_IMAGE,
                          message=f"sample has no image member ({found})", record_id=record_id)
    uri = f"{shard}#{key}.{image_ext}"
    data = members[image_ext]
    if isinstance(data, int):  # the member's size: too large to read
        return DeadLetter(uri=uri, stage=STAGE_FETCH, reason=TOO_LARGE,
                          message=f"member is {data} bytes, above max_bytes={max_bytes}", record_id=record_id)
    metadata: dict = {}
    if "json" in members:
        try:
            fields = json.loads(members["json"].decode("utf-8"))
        except ValueError as exc:
            return DeadLetter(uri=uri, stage=STAGE_READ, reason=BAD_ROW, message=f"{key}.json is not JSON: {exc}", record_id=record_id)
        if not isinstance(fields, dict):
            return DeadLetter(uri=uri, stage=STAGE_READ, reason=BAD_ROW, message=f"{key}.json is not a JSON object", record_id=record_id)
        metadata.update({str(k): metadata_text(v) for k, v in fields.items()})
    for ext in ("cls", "txt"):
        if ext in members:
            metadata[ext] = members[ext].decode("utf-8", errors="replace").strip()
    return ImageRecord(uri=uri, record_id=record_id, metadata=metadata, data=data)


class _EndCheckingTarInfo(tarfile.TarInfo):
    """Remembers why a header could not be read: tarfile ends quietly at a truncated or garbled header."""

    @classmethod
    def fromtarfile(cls, tar):
        try:
            return super().fromtarfile(tar)
        except tarfile.HeaderError as exc:
            tar.brandlens_end = exc
            raise


def read_webdataset_shard(shard: str, f, max_bytes: int) -> Iterator[ImageRecord | DeadLetter]:
    """Samples of one tar shard (members sharing a key are adjacent, as WebDataset requires).

    Image members above ``max_bytes`` are skipped unread. A damaged or cut-short
    shard yields the samples before the damage and then one dead letter for the
    shard; the sample being read when it broke off is not emitted.
    """
    key, members, samples = None, {}, 0
    wanted = set(IMAGE_EXTENSIONS) | {"json", "cls", "txt"}
    try:
        with tarfile.open(fileobj=f, mode="r|*", tarinfo=_EndCheckingTarInfo) as tar:
            for member in tar:
                if not member.isfile():
                    continue
                member_key, ext = split_member_name(member.name)
                if member_key != key:
                    if key is not None:
                        samples += 1
                        yield _sample_record(shard, key, members, max_bytes)
                    key, members = member_key, {}
                if ext not in wanted or ext in members:
                    members.setdefault(ext or "(none)", b"")
                    continue
                if ext in IMAGE_EXTENSIONS and member.size > max_bytes:
                    members[ext] = member.size
                    continue
                members[ext] = tar.extractfile(member).read()
            end = getattr(tar, "brandlens_end", None)
            if not isinstance(end, tarfile.EOFHeaderError):  # only zero blocks end an archive
                raise tarfile.ReadError(f"no end-of-archive marker ({type(end).__name__}: {end}): cut short or damaged")
        if key is not None:
            samples += 1
            yield _sample_record(shard, key, members, max_bytes)
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        yield DeadLetter(uri=shard, stage=STAGE_READ, reason=UNREADABLE,
                         message=f"shard unreadable after {samples} samples: {type(exc).__name__}: {exc}",
                         record_id=posixpath.basename(shard))


def record_from_file(path: str, root: str | None) -> ImageRecord | None:
    """An image file found under ``root``; its first folder below ``root`` is its label.

    Hidden files and folders (a leading dot: .DS_Store, .git) are not part of an archive: None.
    """
    relative = path[len(root):].lstrip("/") if root and path.startswith(root) else path
    if any(part.startswith(".") for part in relative.split("/")):
        return None
    parts = relative.split("/")
    metadata = {LABEL_FIELD: parts[0]} if root and len(parts) > 1 else {}
    return ImageRecord(uri=path, record_id=relative, metadata=metadata)


def walk_folder(root: str) -> Iterator[ImageRecord | DeadLetter]:
    """Every entry below a local folder: files as records, what cannot be read as one as a dead letter.

    A dangling symlink (``missing_file``), a symlink loop and a folder named like an image
    file (``x.jpg/``, ``unreadable``) are dead-lettered, not skipped; the files inside such a
    folder are read. Hidden entries (a leading dot) are not part of an archive.
    """
    root = root.rstrip("/") or "/"

    def letter(path: str, reason: str, message: str) -> DeadLetter:
        return DeadLetter(uri=path, stage=STAGE_READ, reason=reason, message=message, record_id=os.path.relpath(path, root))

    seen = {os.path.realpath(root)}
    for folder, dirs, files in os.walk(root, followlinks=True):
        for name in sorted(dirs):
            path = os.path.join(folder, name)
            if name.startswith("."):
                dirs.remove(name)
                continue
            real = os.path.realpath(path)
            if real in seen:
                dirs.remove(name)
                yield letter(path, UNREADABLE, "a symlink loop: this folder contains itself")
                continue
            seen.add(real)
            if name.lower().rsplit(".", 1)[-1] in IMAGE_EXTENSIONS and "." in name:
                yield letter(path, UNREADABLE, "a folder named like an image file")
        dirs.sort()
        for name in sorted(files):
            path = os.path.join(folder, name)
            if name.startswith("."):
                continue
            try:
                os.stat(path)
            except FileNotFoundError:
                yield letter(path, MISSING_FILE, f"a dangling symlink (to {os.readlink(path)})")
                continue
            except OSError as exc:
                yield letter(path, UNREADABLE, f"cannot be read: {exc.strerror or exc}")
                continue
            record = record_from_file(path, root)
            if record is not None:
                yield record


# --- Beam transforms ----------------------------------------------------------------------

def _emit(items):
    for item in items:
        yield item if isinstance(item, ImageRecord) else beam.pvalue.TaggedOutput(DEAD_LETTER_TAG, item)


class _ManifestDoFn(beam.DoFn):
    def __init__(self, base: str | None, uri_column: str):
        self._base = base
        self._uri_column = uri_column

    def process(self, path: str):
        base = self._base if self._base is not None else parent_of(path)
        with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as f:
            yield from _emit(read_manifest(path, f, base, self._uri_column))


class _ShardDoFn(beam.DoFn):
    def __init__(self, max_bytes: int):
        self._max_bytes = max_bytes

    def process(self, shard: str):
        try:
            f = FileSystems.open(shard, compression_type=CompressionTypes.UNCOMPRESSED)
        except Exception as exc:
            yield beam.pvalue.TaggedOutput(DEAD_LETTER_TAG, DeadLetter(
                uri=shard, stage=STAGE_READ, reason=UNREADABLE, message=f"{type(exc).__name__}: {exc}",
                record_id=posixpath.basename(shard)))
            return
        with f:
            yield from _emit(read_webdataset_shard(shard, f, self._max_bytes))


def _matched_paths(pbegin, pattern: str):
    return (
        pbegin
        | "Pattern" >> beam.Create([pattern])
        | "Match" >> fileio.MatchAll()
        | "Paths" >> beam.Map(lambda metadata: metadata.path)
    )


class ReadManifest(beam.PTransform):
    """Rows of the manifests matching ``pattern`` (CSV, JSON lines, Parquet) -> records without bytes.

    Relative uris resolve against ``base`` (default: each manifest's own folder).
    """

    def __init__(self, pattern: str, base: str | None = None, uri_column: str = "uri"):
        super().__init__()
        self._pattern, self._base, self._uri_column = pattern, base, uri_column

    def expand(self, pbegin):
        return (
            _matched_paths(pbegin, self._pattern)
            | "Rows" >> beam.ParDo(_ManifestDoFn(self._base, self._uri_column)).with_outputs(DEAD_LETTER_TAG, main="records")
        )


class ReadImageFiles(beam.PTransform):
    """Files matching ``pattern`` -> records without bytes; with ``root``, labelled by their folder."""

    def __init__(self, pattern: str, root: str | None = None):
        super().__init__()
        self._pattern, self._root = pattern, root

    def expand(self, pbegin):
        root = self._root
        if root is not None and "://" not in root:  # a local folder: every entry accounted for
            return (pbegin
                    | "Root" >> beam.Create([root])
                    | "Walk" >> beam.FlatMap(walk_folder)
                    | "Spread" >> beam.Reshuffle()
                    | "Split" >> beam.FlatMap(lambda item: _emit([item])).with_outputs(DEAD_LETTER_TAG, main="records"))
        records = _matched_paths(pbegin, self._pattern) | "Records" >> beam.FlatMap(
            lambda path: [r for r in [record_from_file(path, root)] if r is not None])
        return {"records": records, DEAD_LETTER_TAG: pbegin | "NoDeadLetters" >> beam.Create([])}


class ReadWebDataset(beam.PTransform):
    """WebDataset tar shards matching ``pattern`` -> records with bytes (``.json`` fields, ``.cls``, ``.txt`` as metadata)."""

    def __init__(self, pattern: str, max_bytes: int):
        super().__init__()
        self._pattern, self._max_bytes = pattern, max_bytes

    def expand(self, pbegin):
        return (
            _matched_paths(pbegin, self._pattern)
            | "SpreadShards" >> beam.Reshuffle()
            | "Samples" >> beam.ParDo(_ShardDoFn(self._max_bytes)).with_outputs(DEAD_LETTER_TAG, main="records")
        )


class ReadImages(beam.PTransform):
    """Any supported input -> ``{'records': ImageRecord, 'dead_letters': DeadLetter}``."""

    def __init__(self, spec: InputSpec, max_bytes: int):
        super().__init__()
        self._spec, self._max_bytes = spec, max_bytes

    def expand(self, pbegin):
        spec = self._spec
        fmt = spec.resolved_format
        if fmt == FORMAT_MANIFEST:
            out = pbegin | "Manifest" >> ReadManifest(spec.pattern, spec.base_uri, spec.uri_column)
        elif fmt == FORMAT_WEBDATASET:
            out = pbegin | "WebDataset" >> ReadWebDataset(spec.pattern, self._max_bytes)
        else:
            out = pbegin | "Files" >> ReadImageFiles(spec.pattern, spec.root)
        return {"records": out["records"], DEAD_LETTER_TAG: out[DEAD_LETTER_TAG]}
