"""What code the workers of a distributed run get, wherever brandlens is installed.

Workers on other machines start from a Beam SDK image without brandlens in it,
so every distributed run names where their code comes from, in this order:

1. a worker image given with ``--sdk-container-image`` (brandlens is installed
   in it; Dataflow gets ``--sdk_container_image``, Flink/Portable a DOCKER
   environment);
2. an environment that brings its own code: code flags passed with
   ``--beam-arg`` (``--setup_file``, ``--extra_package(s)``,
   ``--sdk_container_image``, ``--environment_config``) are used as given;
   Flink/Portable ``--environment-type DOCKER --environment-config IMAGE``,
   ``PROCESS`` or ``EXTERNAL``;
3. ``--worker-package FILE``: a wheel or sdist of the running version (local or
   gs://), staged with ``--extra_package``;
4. ``$BRANDLENS_WORKER_IMAGE``: the ./Dockerfile image sets it to itself, so
   runs launched from it (Cloud Build steps, flex templates) use it for workers;
5. in a checkout, its ``setup.py`` (``--setup_file``: Beam builds an sdist at submit time);
6. an installed package (a wheel install) is packed back into a wheel of the
   running version at submit time and staged with ``--extra_package``.

When none applies the run is refused: a job whose workers cannot import
brandlens would fail only after its workers started, with an import error.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import tempfile
import zipfile
from importlib import metadata
from pathlib import Path

from brandlens.errors import ConfigError

WORKER_IMAGE_ENV = "BRANDLENS_WORKER_IMAGE"
DISTRIBUTION = "brandlens"
CODE_FLAGS = ("--setup_file", "--extra_package", "--extra_packages", "--sdk_container_image", "--environment_config")
PACKAGES = ("brandlens", "beam_jobs", "trainer", "schemas")
_SKIPPED_METADATA = {"RECORD", "INSTALLER", "REQUESTED", "direct_url.json"}
_CODE_DIR = Path(__file__).resolve().parents[1]


def checkout_setup_file() -> Path | None:
    """``setup.py`` of the checkout this code runs from, or None when it runs from an installed package."""
    candidate = _CODE_DIR.parent / "setup.py"
    if candidate.is_file() and 'name="brandlens"' in candidate.read_text(encoding="utf-8", errors="replace"):
        return candidate
    return None


def running_version() -> str:
    from brandlens import __version__

    return __version__


def package_version(path: str) -> str | None:
    """The version in a brandlens wheel or sdist file name (``brandlens-0.1.0-py3-none-any.whl``, ``brandlens-0.1.0.tar.gz``)."""
    match = re.match(r"^brandlens-([^-]+?)(?:-[^-]+){0,4}(?:\.whl|\.tar\.gz|\.tar|\.zip)$", path.rstrip("/").rsplit("/", 1)[-1])
    return match.group(1) if match else None


def check_worker_package(path: str) -> None:
    version = package_version(path)
    if version is None:
        raise ConfigError(f"--worker-package {path} is not a brandlens wheel or sdist (brandlens-<version>.whl/.tar.gz)")
    if version != running_version():
        raise ConfigError(f"--worker-package {path} is brandlens {version}, but this is brandlens {running_version()}: "
                          "workers must run the version that builds the pipeline")


def _installed_distribution():
    """The distribution whose files are the modules running now (not another brandlens on the path)."""
    here = _CODE_DIR / "__init__.py"
    for dist in metadata.distributions():
        if (dist.metadata["Name"] or "").lower() != DISTRIBUTION:
            continue
        try:
            if Path(dist.locate_file("beam_jobs/__init__.py")).resolve() == here:
                return dist
        except OSError:
            continue
    return None


def _record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def pack_installed_wheel(folder: str | Path | None = None) -> Path:
    """The installed brandlens, packed back into ``brandlens-<version>-py3-none-any.whl``.

    The wheel holds the installed modules and metadata (dependencies, entry
    points) as they are, with a fresh RECORD: what this process runs is what the
    workers install. Written by hand (a zip with a RECORD, PEP 427) because no
    packaging library is installed wherever brandlens is; ``pip install`` checks it.
    """
    dist = _installed_distribution()
    if dist is None or not dist.files:
        raise ConfigError("brandlens is neither a checkout nor an installed package with a file list (RECORD), so "
                          "workers cannot be given its code: pass --sdk-container-image IMAGE or --worker-package "
                          "brandlens-<version>.whl")
    version = dist.version
    entries = []
    for file in dist.files:
        parts = file.parts
        top = parts[0]
        if "__pycache__" in parts or file.suffix == ".pyc":
            continue
        if top.endswith(".dist-info"):
            if parts[-1] in _SKIPPED_METADATA:
                continue
        elif top not in PACKAGES:
            continue
        source = Path(dist.locate_file(file))
        if not source.is_file():
            raise ConfigError(f"the installed brandlens is incomplete ({source} is missing): reinstall it, or pass "
                              "--worker-package / --sdk-container-image")
        entries.append((file.as_posix(), source.read_bytes()))
    info = next(name for name, _ in entries if name.endswith("/METADATA")).split("/")[0]
    digest = hashlib.sha256(b"".join(name.encode() + data for name, data in sorted(entries))).hexdigest()[:12]
    target = Path(folder or Path(tempfile.gettempdir()) / "brandlens-worker-packages" / digest)
    target.mkdir(parents=True, exist_ok=True)
    wheel = target / f"{DISTRIBUTION}-{version}-py3-none-any.whl"
    partial = target / f".{wheel.name}.{os.getpid()}"
    record = [f"{name},{_record_hash(data)},{len(data)}" for name, data in sorted(entries)]
    with zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in sorted(entries):
            zf.writestr(name, data)
        zf.writestr(f"{info}/RECORD", "\n".join(record + [f"{info}/RECORD,,"]) + "\n")
    os.replace(partial, wheel)
    return wheel
