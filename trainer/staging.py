"""gs:// inputs and outputs for the trainer, which reads and writes with TensorFlow and numpy.

TensorFlow's own file I/O does not reach every store Beam's FileSystems does
(a GCS emulator, for one), and the trainer reads everything anyway: remote
bottleneck folders and backbone artifacts are copied in once, and a remote
output is written locally and published when the run has finished.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import tempfile
from pathlib import Path

from brandlens import fileio
from schemas import layout

MODEL_CARD = "model_card.json"


@contextlib.contextmanager
def staged(args: argparse.Namespace):
    """``args`` with local ``bottlenecks``, ``artifacts`` and ``output`` paths; publishes a remote output on success."""
    args = argparse.Namespace(**vars(args))
    scratch = None
    remote_output = str(args.output) if fileio.is_remote(str(args.output)) else None
    try:
        bottlenecks = fileio.localize_dir(str(args.bottlenecks))
        artifacts = str(args.artifacts)
        if fileio.is_remote(artifacts):
            from brandlens.backbones.artifact import BackboneFingerprint

            name = BackboneFingerprint.from_json((Path(bottlenecks) / layout.BACKBONE).read_text()).directory_name
            artifacts = str(fileio.localize_dir(fileio.join(artifacts, name)).parent)
        if remote_output:
            scratch = Path(tempfile.mkdtemp(prefix="brandlens-train-"))
            args.output = scratch / "output"
        args.bottlenecks, args.artifacts, args.output = Path(bottlenecks), Path(artifacts), Path(args.output)
        yield args
        if remote_output:
            fileio.upload_dir(args.output, remote_output, last=(MODEL_CARD,))
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
