"""Shared fixtures. The suite runs in one process: TF and Beam cost ~9 s per import."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("NO_GCE_CHECK", "true")

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("BRANDLENS_SHARED", REPO.parent / "shared"))


def shared_path(*parts: str) -> Path:
    """A path under ../shared, or skip the test with a clear message when it is absent."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real data not available: {path} (the ../shared folder beside the checkout)")
    return path


@pytest.fixture(scope="session")
def artifact_root(tmp_path_factory) -> Path:
    """One artifact folder for the whole session, so each backbone is materialised once."""
    return tmp_path_factory.mktemp("artifacts")


@pytest.fixture(scope="session")
def lite0_artifact(artifact_root) -> Path:
    from brandlens.backbones.artifact import materialize

    return materialize("efficientnet_lite0", artifact_root)


@pytest.fixture(scope="session")
def gcs_bucket():
    """A real GCS API on localhost (gcp-storage-emulator); yields the gs:// bucket URL."""
    import socket

    from gcp_storage_emulator.server import create_server

    from brandlens import fileio

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = create_server("127.0.0.1", port, in_memory=True, default_bucket="brandlens-test")
    server.start()
    previous = os.environ.get("STORAGE_EMULATOR_HOST")
    os.environ["STORAGE_EMULATOR_HOST"] = f"http://127.0.0.1:{port}"
    fileio.use_emulator_if_configured()
    try:
        yield "gs://brandlens-test"
    finally:
        server.stop()
        if previous is None:
            os.environ.pop("STORAGE_EMULATOR_HOST", None)
        else:
            os.environ["STORAGE_EMULATOR_HOST"] = previous


@pytest.fixture(scope="session")
def sample_bottlenecks(tmp_path_factory, artifact_root, lite0_artifact) -> Path:
    """The real bottleneck job on generated images (lite0, fixed splits, one augmentation)."""
    from tests.test_trainer_helpers import run_bottleneck_job

    return run_bottleneck_job(tmp_path_factory.mktemp("sample-job"), artifact_root, per_label=20, augment=1)


@pytest.fixture(scope="session")
def sample_model(sample_bottlenecks, artifact_root, tmp_path_factory) -> Path:
    """A model exported by the real trainer from ``sample_bottlenecks``."""
    from brandlens.cli import main

    out = tmp_path_factory.mktemp("sample-model") / "model"
    argv = ["train", "--bottlenecks", str(sample_bottlenecks), "--output", str(out), "--artifacts", str(artifact_root),
            "--steps", "300", "--eval-every", "20", "--learning-rate", "0.01", "--verify-images", "2"]
    assert main(argv) == 0
    return out
