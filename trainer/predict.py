"""Score image files with an export: every label with its score, highest first.

Images are decoded by ``brandlens.imaging`` (EXIF orientation, more formats, a
clear reason for bad files) and fed to the ``score_images`` signature, as the
scoring job does; for JPEGs this equals ``serving_default`` on the raw bytes.
Every brand reported in the photo (``brandlens.evidence``) is listed with its box;
``--explain DIR`` also writes each photo with its heat map and boxes as a PNG.
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
    brands: tuple[dict, ...] = ()          # brandlens.evidence.reported_brands, boxes normalised to the photo
    explained: str | None = None           # the --explain PNG


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


def _png_path(folder: Path, path: Path, taken: set) -> Path:
    name, n = f"{path.stem}.png", 1
    while name in taken:
        n += 1
        name = f"{path.stem}-{n}.png"
    taken.add(name)
    return folder / name


def predict(model_dir: Path, paths: list[Path], batch_size: int = 32, explain: Path | None = None) -> list[Prediction]:
    import tensorflow as tf

    from brandlens import evidence, overlay
    from brandlens.imaging import ImageDecodeError, decode_image
    from brandlens.preprocess import prepare

    from brandlens.model_check import verify_export

    card = read_model_card(model_dir)
    verify_export(str(model_dir), card["labels"], card.get("neither_label"), card.get("threshold"), card["version_id"],
                  card["backbone"].get("embedding_dim"))  # a card beside another model would name the wrong labels
    size, crop = card["backbone"]["input_size"], card["backbone"]["crop_fraction"]
    resize_mode = card["backbone"].get("resize_mode", "center_crop")
    score = tf.saved_model.load(str(Path(model_dir) / contract.SERVING_DIR)).signatures[contract.SIG_IMAGES]
    labels = card["labels"]
    results: list[Prediction] = []
    pending: list[tuple[Path, np.ndarray, np.ndarray]] = []
    taken: set = set()
    if explain is not None:
        Path(explain).mkdir(parents=True, exist_ok=True)

    def flush() -> None:
        if not pending:
            return
        out = score(**{contract.INPUT_IMAGES: tf.constant(np.stack([img for _, _, img in pending]))})
        out = {k: v.numpy() for k, v in out.items()}
        for i, (path, rgb, _) in enumerate(pending):
            label, row = out[contract.OUT_LABEL][i].decode("utf-8"), out[contract.OUT_SCORES][i]
            boxes = out.get(evidence.OUT_BOXES)
            if boxes is not None:
                boxes = evidence.input_box_to_image(boxes[i], rgb.shape[0], rgb.shape[1], crop, resize_mode)
            region = out.get(evidence.OUT_REGION_SCORES)
            brands = evidence.reported_brands(label, row, labels, card.get("neither_label"), card.get("brand_thresholds"),
                                              None if region is None else region[i], boxes)
            png = None
            if explain is not None:
                shown = labels.index(brands[0]["label"]) if brands else int(np.argmax(row))
                maps = out.get(evidence.OUT_MAPS)
                heat = None if maps is None else overlay.heat_of(maps[i], shown)
                png = _png_path(Path(explain), path, taken)
                png.write_bytes(overlay.png_bytes(overlay.render(rgb, heat, brands, crop, resize_mode)))
            order = np.argsort(-row, kind="stable")
            results.append(Prediction(str(path), label, tuple((labels[j], float(row[j])) for j in order),
                                      brands=tuple(brands), explained=None if png is None else str(png)))
        pending.clear()

    for path in find_images(paths):
        try:
            rgb = decode_image(path.read_bytes())
            pending.append((path, rgb, prepare(rgb, size, crop, resize_mode)))
        except (ImageDecodeError, OSError) as exc:
            flush()
            results.append(Prediction(str(path), None, (), str(exc)))
        if len(pending) >= batch_size:
            flush()
    flush()
    return results


def format_prediction(p: Prediction, explain: bool = False) -> str:
    """The label, every score; with ``explain`` also every brand found with its box, and the PNG written."""
    if p.error:
        return f"{p.path}: cannot score: {p.error}"
    lines = [f"{p.path}: {p.label}"] + [f"  {label} (score = {s:.5f})" for label, s in p.scores]
    for b in p.brands if explain else ():
        where = "" if b["box"] is None else " at x1 y1 x2 y2 = " + " ".join(f"{v:.3f}" for v in b["box"]) + f" ({b['area']:.1%} of the photo)"
        lines.append(f"  brand found: {b['label']} (score = {b['score']:.5f}){where}")
    if p.explained:
        lines.append(f"  explained: {p.explained}")
    return "\n".join(lines)
