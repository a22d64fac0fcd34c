"""TF Serving's layout for an export: ``<model_base_path>/<version>/`` holding the serving SavedModel.

TF Serving (``tensorflow_model_server --model_base_path=BASE``) serves the
highest numeric folder under its base path and picks up new ones as they appear.
The version number is the export's UTC creation time (``bl-20261129T024720Z-…``
-> ``20261129024720``), so later exports win; the model card rides along in
``assets.extra/`` (which TF Serving leaves alone), so the served model's lineage
is next to it.

Every export holds the layout as ``tf_serving/<version>/`` (hard links to
``serving/`` where the file system has them). To publish into a shared base path,
local or gs://::

    python -m trainer.serving_layout models/m gs://my-bucket/serving/brandlens
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

from brandlens import fileio
from brandlens.errors import ArtifactError
from schemas import model as contract

EXTRA_DIR = "assets.extra"
SAVED_MODEL_PB = "saved_model.pb"
_VERSION = re.compile(r"^bl-(\d{8})T(\d{6})Z-[0-9a-f]+$")


def serving_version(version_id: str) -> int:
    """TF Serving's version number of an export: its creation time as YYYYMMDDhhmmss."""
    match = _VERSION.match(version_id)
    if not match:
        raise ArtifactError(f"model version id {version_id!r} is not bl-<YYYYMMDD>T<hhmmss>Z-<hex>")
    return int(match.group(1) + match.group(2))


def _link_or_copy(source: str, target: str) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def _existing_version_id(folder: str) -> str | None:
    card = fileio.join(folder, EXTRA_DIR, contract.MODEL_CARD)
    return json.loads(fileio.read_text(card))["version_id"] if fileio.exists(card) else None


def publish(export_dir: str | os.PathLike, base_path: str | os.PathLike) -> str:
    """Put an export's serving model at ``<base_path>/<version>/``; returns that folder.

    Publishing the same export again is a no-op; another export with the same
    version number is refused. ``saved_model.pb`` lands last (remote) or the
    folder appears by one rename (local), so TF Serving never loads half a model.
    """
    export = fileio.localize_dir(str(export_dir))
    card_text = (export / contract.MODEL_CARD).read_text()
    version_id = json.loads(card_text)["version_id"]
    target = fileio.join(str(base_path), str(serving_version(version_id)))
    existing = _existing_version_id(target)
    if existing == version_id:
        return target
    if existing is not None or fileio.exists(fileio.join(target, SAVED_MODEL_PB)):
        raise ArtifactError(f"{target} already holds another model ({existing}); not replacing it with {version_id}")
    serving = export / contract.SERVING_DIR
    if fileio.is_remote(target):
        fileio.write_text(fileio.join(target, EXTRA_DIR, contract.MODEL_CARD), card_text)
        return fileio.upload_dir(serving, target, last=(SAVED_MODEL_PB,))
    Path(base_path).mkdir(parents=True, exist_ok=True)
    partial = Path(tempfile.mkdtemp(prefix=f".{Path(target).name}-", dir=base_path))
    shutil.copytree(serving, partial, dirs_exist_ok=True, copy_function=_link_or_copy)
    (partial / EXTRA_DIR).mkdir(exist_ok=True)
    (partial / EXTRA_DIR / contract.MODEL_CARD).write_text(card_text)
    partial.rename(target)
    return target


def write_serving_layout(export_dir: Path) -> str:
    """The export's own ``tf_serving/<version>/`` (``--model_base_path=<export>/tf_serving``)."""
    return publish(export_dir, Path(export_dir) / contract.TF_SERVING_DIR)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trainer.serving_layout", description=__doc__.split("\n\n")[0])
    parser.add_argument("export", help="the trainer's export folder (serving/, model_card.json), local or gs://")
    parser.add_argument("base_path", help="TF Serving's --model_base_path, local or gs://")
    args = parser.parse_args(argv)
    try:
        print(publish(args.export, args.base_path))
    except ArtifactError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
