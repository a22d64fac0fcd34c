"""Score image files with an export: every label with its score, highest first.

Images are decoded by ``brandlens.imaging`` (EXIF orientation, more formats, a
clear reason for bad files) and fed to the ``score_images`` signature, as the
scoring job does; for JPEGs this equals ``serving_default`` on the raw bytes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from brandlens.errors import ArtifactError, ConfigError
from schemas import model as contract

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff")


@dataclass(frozen=True)
class Prediction:
    path: str
    label: str | None                      # after the threshold rule; None when the file failed
    scores: tuple[tuple[str, float], ...]  # highest first
    error: str | None = None


def read_model_card(model_dir: Path) -> dict:
    path = Path(model_dir) / contract.MODEL_CARD
    if not path.is_file() or not (Path(model_dir) / contract.SERVING_DIR).is_dir():
        raise ArtifactError(f"{model_dir} is not a model export (needs {contract.MODEL_CARD} and {contract.SERVING_DIR}/); "
                            "make one with 'brandlens train'")
    return json.loads(path.read_text())


def find_images(paths: list[Path]) -> list[Path]:
    """Files as given; folders searched recursively for image suffixes, in sorted order."""
    found = []
    for path in map(Path, paths):
        if path.is_dir():
            found += sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        elif path.is_file():
            found.append(path)
        else:
            raise ConfigError(f"{path} does not exist")
    return found


def predict(model_dir: Path, paths: list[Path], batch_size: int = 32) -> list[Prediction]:
    import tensorflow as tf

    from brandlens.imaging import ImageDecodeError, decode_image
    from brandlens.preprocess import prepare

    card = read_model_card(model_dir)
    size, crop = card["backbone"]["input_size"], card["backbone"]["crop_fraction"]
    resize_mode = card["backbone"].get("resize_mode", "center_crop")
    score = tf.saved_model.load(str(Path(model_dir) / contract.SERVING_DIR)).signatures[contract.SIG_IMAGES]
    labels = card["labels"]
    results: list[Prediction] = []
    pending: list[tuple[Path, np.ndarray]] = []

    def flush() -> None:
        if not pending:
            return
        out = score(**{contract.INPUT_IMAGES: tf.constant(np.stack([img for _, img in pending]))})
        for (path, _), label, row in zip(pending, out[contract.OUT_LABEL].numpy(), out[contract.OUT_SCORES].numpy()):
            order = np.argsort(-row, kind="stable")
            results.append(Prediction(str(path), label.decode("utf-8"), tuple((labels[j], float(row[j])) for j in order)))
        pending.clear()

    for path in find_images(paths):
        try:
            pending.append((path, prepare(decode_image(path.read_bytes()), size, crop, resize_mode)))
        except (ImageDecodeError, OSError) as exc:
            flush()
            results.append(Prediction(str(path), None, (), str(exc)))
        if len(pending) >= batch_size:
            flush()
    flush()
    return results


def format_prediction(p: Prediction) -> str:
    if p.error:
        return f"{p.path}: cannot score: {p.error}"
    lines = [f"{p.path}: {p.label}"] + [f"  {label} (score = {s:.5f})" for label, s in p.scores]
    return "\n".join(lines)
