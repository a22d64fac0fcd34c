"""What an input is: its path and layout (no Beam import here, so CLIs parse arguments fast)."""

from __future__ import annotations

import posixpath
from dataclasses import dataclass

from brandlens.errors import ConfigError

FORMAT_AUTO = "auto"
FORMAT_DIR = "dir"
FORMAT_MANIFEST = "manifest"
FORMAT_WEBDATASET = "webdataset"
INPUT_FORMATS = (FORMAT_AUTO, FORMAT_DIR, FORMAT_MANIFEST, FORMAT_WEBDATASET)

MANIFEST_KINDS = {".csv": "csv", ".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet", ".pq": "parquet"}
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz")
# WebDataset members whose extension is one of these are the sample's image (first one wins).
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff")


def detect_format(path: str) -> str:
    """``webdataset`` for tar shards, ``manifest`` for CSV/JSON lines/Parquet, else ``dir``."""
    lower = path.lower().rstrip("/")
    if lower.endswith(TAR_SUFFIXES):
        return FORMAT_WEBDATASET
    if manifest_kind(path) is not None:
        return FORMAT_MANIFEST
    return FORMAT_DIR


def manifest_kind(path: str) -> str | None:
    """``csv``, ``jsonl`` or ``parquet`` from the file name, or None."""
    return MANIFEST_KINDS.get(posixpath.splitext(path.lower())[1])


@dataclass(frozen=True)
class InputSpec:
    """Where the images are and how they are laid out; ``format='auto'`` guesses from the path."""

    path: str
    format: str = FORMAT_AUTO
    base_uri: str | None = None
    uri_column: str = "uri"

    def __post_init__(self):
        if self.format not in INPUT_FORMATS:
            raise ConfigError(f"unknown input format {self.format!r}; choose one of {', '.join(INPUT_FORMATS)}")

    @property
    def resolved_format(self) -> str:
        return detect_format(self.path) if self.format == FORMAT_AUTO else self.format

    @property
    def pattern(self) -> str:
        """The glob the reader matches: a folder becomes every file below it."""
        if self.resolved_format == FORMAT_DIR and not any(c in self.path for c in "*?["):
            return self.path.rstrip("/") + "/**"
        return self.path

    @property
    def root(self) -> str | None:
        """The folder whose sub-folders are labels (a plain folder input only)."""
        if self.resolved_format == FORMAT_DIR and not any(c in self.path for c in "*?["):
            return self.path.rstrip("/")
        return None

    def check(self) -> int:
        """Fail early, with a clear message, when nothing matches; returns the number of files."""
        from apache_beam.io.filesystems import FileSystems

        try:
            matched = FileSystems.match([self.pattern])[0].metadata_list
        except Exception as exc:
            raise ConfigError(f"cannot list input {self.path}: {exc}") from exc
        if not matched:
            raise ConfigError(f"input {self.path} ({self.resolved_format}) matches no files")
        return len(matched)


def infer_base_uri(spec: InputSpec, max_levels: int = 3) -> str | None:
    """The folder a manifest's relative uris resolve against, found once from its first row.

    ``--base-uri`` wins; otherwise the manifest's own folder, or the nearest of
    its ancestors (up to ``max_levels`` up) under which the first relative uri
    exists, so that a manifest kept in a ``manifests/`` folder beside the images
    works as is. One existence check per level, on the driver, not per row.
    """
    if spec.base_uri or spec.resolved_format != FORMAT_MANIFEST:
        return spec.base_uri
    from apache_beam.io.filesystems import FileSystems

    from beam_jobs.common.sources import is_absolute, manifest_rows

    matched = sorted(m.path for m in FileSystems.match([spec.pattern])[0].metadata_list)
    if not matched:
        return None
    with FileSystems.open(matched[0]) as f:
        first = next((row for _, row in manifest_rows(f, manifest_kind(matched[0]) or "csv")
                      if isinstance(row, dict) and row.get(spec.uri_column)), None)
    uri = str(first[spec.uri_column]).strip() if first else ""
    if not uri or is_absolute(uri):
        return None
    folder = FileSystems.split(matched[0])[0]
    for level in range(max_levels + 1):
        if FileSystems.exists(FileSystems.join(folder, uri)):
            return None if level == 0 else folder
        parent = FileSystems.split(folder.rstrip("/"))[0]
        if not parent or parent == folder:
            break
        folder = parent
    return None


def with_inferred_base_uri(config):
    """A job config (with ``input_spec`` and ``base_uri``) whose base uri is the inferred one, logged when it changes."""
    import dataclasses
    import logging

    base_uri = infer_base_uri(config.input_spec)
    if base_uri == config.base_uri:
        return config
    logging.getLogger(__name__).info("relative uris of %s resolve against %s (where its first uri exists)", config.input, base_uri)
    return dataclasses.replace(config, base_uri=base_uri)
