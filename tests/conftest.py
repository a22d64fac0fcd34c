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
