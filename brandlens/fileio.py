"""File access that works for local paths and gs:// alike, through Beam's FileSystems.

TensorFlow's own file I/O (``tf.io.gfile``, ``tf.saved_model.load``) does not
honour the GCS emulator, and loading a SavedModel straight from GCS on every
worker is slow anyway, so remote artifact folders are copied once per machine
into a local cache (:func:`localize_dir`) and published with :func:`upload_dir`.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

REMOTE_PREFIXES = ("gs://", "s3://", "az://", "hdfs://")


def is_remote(path: str | os.PathLike) -> bool:
    return str(path).startswith(REMOTE_PREFIXES)


def join(base: str | os.PathLike, *parts: str) -> str:
    if is_remote(base):
        return "/".join([str(base).rstrip("/"), *parts])
    return str(Path(base, *parts))


def use_emulator_if_configured() -> None:
    """With ``STORAGE_EMULATOR_HOST`` set, skip Beam's credential probe (~20 s of retries).

    The emulator needs no credentials; Beam would otherwise retry
    ``google.auth.default()`` with exponential backoff before going anonymous.
    """
    if not os.environ.get("STORAGE_EMULATOR_HOST"):
        return
    from apache_beam.internal.gcp import auth

    with auth._Credentials._credentials_lock:
        auth._Credentials._credentials_init = True
        auth._Credentials._credentials = None


def read_bytes(uri: str) -> bytes:
    from apache_beam.io.filesystem import CompressionTypes
    from apache_beam.io.filesystems import FileSystems

    with FileSystems.open(uri, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        return f.read()


def write_bytes(uri: str, data: bytes) -> None:
    from apache_beam.io.filesystem import CompressionTypes
    from apache_beam.io.filesystems import FileSystems

    if not is_remote(uri):
        Path(uri).parent.mkdir(parents=True, exist_ok=True)
    with FileSystems.create(uri, compression_type=CompressionTypes.UNCOMPRESSED) as f:
        f.write(data)


def read_text(uri: str) -> str:
    return read_bytes(uri).decode("utf-8")


def write_text(uri: str, text: str) -> None:
    write_bytes(uri, text.encode("utf-8"))


def exists(uri: str) -> bool:
    from apache_beam.io.filesystems import FileSystems

    return FileSystems.exists(uri)


def list_files(prefix: str) -> list[str]:
    """Every file below ``prefix`` (recursively), as full paths."""
    from apache_beam.io.filesystems import FileSystems

    if not is_remote(prefix):
        return sorted(str(p) for p in Path(prefix).rglob("*") if p.is_file())
    pattern = prefix.rstrip("/") + "/**"
    return sorted(m.path for r in FileSystems.match([pattern]) for m in r.metadata_list)


def delete_tree(path: str) -> None:
    """Delete ``path`` and every file below it (any FileSystems scheme); absent is fine."""
    from apache_beam.io.filesystems import FileSystems

    files = [m.path for m in FileSystems.match([f"{str(path).rstrip('/')}/**"])[0].metadata_list]
    if files:
        FileSystems.delete(files)
    if FileSystems.exists(str(path)):
        FileSystems.delete([str(path)])


def upload_dir(local: str | os.PathLike, uri: str, last: tuple[str, ...] = ()) -> str:
    """Copy a local folder tree to ``uri`` (any FileSystems scheme); return ``uri``.

    Files named in ``last`` are written after all others, so a reader that
    waits for them (e.g. an artifact's fingerprint) never sees a partial copy.
    """
    local = Path(local)
    for path in sorted((p for p in local.rglob("*") if p.is_file()), key=lambda p: (p.name in last, str(p))):
        write_bytes(join(uri, *path.relative_to(local).parts), path.read_bytes())
    return uri


def default_cache_root() -> Path:
    return Path(os.environ.get("BRANDLENS_CACHE", Path(tempfile.gettempdir()) / "brandlens-localized"))


def localize_dir(uri: str | os.PathLike, cache_root: str | os.PathLike | None = None) -> Path:
    """A local copy of a (possibly remote) folder, made once per machine; local paths pass through."""
    if not is_remote(uri):
        return Path(uri)
    uri = str(uri).rstrip("/")
    root = Path(cache_root) if cache_root else default_cache_root()
    target = root / hashlib.sha256(uri.encode()).hexdigest()[:16] / uri.rsplit("/", 1)[-1]
    if (target.parent / ".complete").is_file():
        return target
    files = list_files(uri)
    if not files:
        from brandlens.errors import ArtifactError

        raise ArtifactError(f"nothing found at {uri}")
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".localize-", dir=root))
    try:
        for remote in files:
            dest = staging / remote[len(uri) + 1:]
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(read_bytes(remote))
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists():
            os.rename(staging, target)
        (target.parent / ".complete").touch()
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
