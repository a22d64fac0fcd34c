"""'Try the model': score one uploaded photo with the exported serving SavedModel.

TensorFlow is imported on the first upload, never at start, so browsing an
archive starts in a second. The photo is decoded and prepared as the scoring job
does (``brandlens.imaging`` + ``brandlens.preprocess``) and fed to the export's
``score_images`` signature; extra outputs that hold boxes or evidence maps (the
localisation work's) are shown when the model has them.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from brandlens.errors import ArtifactError
from schemas import model as contract


@dataclass(frozen=True)
class LiveScore:
    label: str
    confidence: float
    scores: list[tuple[str, float]]           # highest first
    boxes: list[dict] = field(default_factory=list)  # as images.overlays gives them
    heatmap: np.ndarray | None = None         # evidence of the top brand, HxW, over the model's input
    window: tuple[float, float, float, float] = (0.0, 0.0, 1.0, 1.0)  # that input in the photo: left, top, width, height (0-1)


def read_card(model_dir: Path) -> dict:
    path = Path(model_dir) / contract.MODEL_CARD
    if not path.is_file() or not (Path(model_dir) / contract.SERVING_DIR).is_dir():
        raise ArtifactError(f"--model {model_dir} is not a model export (needs {contract.MODEL_CARD} and "
                            f"{contract.SERVING_DIR}/); make one with 'brandlens train'")
    return json.loads(path.read_text())


class LiveModel:
    def __init__(self, model_dir: Path):
        self.dir = Path(model_dir)
        self.card = read_card(self.dir)
        self._signature = None
        self._lock = threading.Lock()

    @property
    def version(self) -> str:
        return self.card.get("version_id", "?")

    def _load(self):
        with self._lock:
            if self._signature is None:
                import tensorflow as tf

                self._signature = tf.saved_model.load(str(self.dir / contract.SERVING_DIR)).signatures[contract.SIG_IMAGES]
        return self._signature

    def score(self, rgb: np.ndarray) -> LiveScore:
        import tensorflow as tf

        from brandlens.evidence import input_box_to_image, input_window
        from brandlens.preprocess import prepare

        backbone = self.card["backbone"]
        crop, mode = backbone["crop_fraction"], backbone.get("resize_mode", "center_crop")
        image = prepare(rgb, backbone["input_size"], crop, mode)
        height, width = rgb.shape[:2]
        left, top, side_x, side_y = input_window(height, width, crop, mode)
        to_photo = lambda boxes: input_box_to_image(boxes, height, width, crop, mode)  # noqa: E731
        out = {k: v.numpy() for k, v in self._load()(**{contract.INPUT_IMAGES: tf.constant(image[None])}).items()}
        labels = list(self.card["labels"])
        row = out[contract.OUT_SCORES][0]
        order = np.argsort(-row, kind="stable")
        label = out[contract.OUT_LABEL][0]
        label = label.decode("utf-8") if isinstance(label, bytes) else str(label)
        return LiveScore(label, float(out[contract.OUT_CONFIDENCE][0]), [(labels[j], float(row[j])) for j in order],
                         _boxes(out, labels, row, label, to_photo), _heatmap(out, labels, row, self.card.get("neither_label")),
                         (left / width, top / height, side_x / width, side_y / height))


def _boxes(out: dict, labels: list[str], scores: np.ndarray, label: str, to_photo=None) -> list[dict]:
    """Boxes from any output named like a box: [1, 4] (the top brand's) or [1, C, 4] (one per label).

    The model's boxes are in its input's frame; ``to_photo`` maps them onto the uploaded photo
    (which a centre crop or padding made differ from it), as the scoring job does for its rows.
    """
    from brandlens.review.images import overlays

    for name, value in sorted(out.items()):
        if "box" not in name.lower() or value.ndim < 2 or value.shape[-1] != 4:
            continue
        if to_photo is not None:
            value = to_photo(value)
        if value.ndim == 2:
            return overlays({"box": value[0].tolist(), "label": label, "confidence": float(scores.max())})
        if value.ndim == 3 and value.shape[1] == len(labels):
            brands = [{"label": lab, "score": float(s), "box": b.tolist()} for lab, s, b in zip(labels, scores, value[0])]
            return overlays({"brands": [b for b in brands if b["label"] == label]})
    return []


def _heatmap(out: dict, labels: list[str], scores: np.ndarray, neither: str | None) -> np.ndarray | None:
    """The top brand's evidence from an output named like a map: [1, H, W, C] over the labels."""
    for name, value in sorted(out.items()):
        if "map" in name.lower() and value.ndim == 4 and value.shape[-1] == len(labels):
            brand = [j for j in np.argsort(-scores) if labels[j] != neither]
            return value[0, :, :, brand[0]] if brand else None
    return None
