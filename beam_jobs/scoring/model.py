"""The exported model as the scoring job sees it: loaded once per worker process.

Reads the export folder that ``schemas/model.py`` describes (local or gs://, the
latter copied once per machine) and runs its signatures on numpy batches.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from brandlens import engines, fileio
from brandlens.errors import ArtifactError
from schemas import model as contract


@dataclass(frozen=True)
class ModelCard:
    version_id: str
    labels: tuple[str, ...]
    neither_label: str | None
    threshold: float | None
    backbone: dict

    @property
    def backbone_version(self) -> str:
        return self.backbone["version"]

    @property
    def input_size(self) -> int:
        return int(self.backbone["input_size"])

    @property
    def crop_fraction(self) -> float:
        return float(self.backbone["crop_fraction"])

    @property
    def resize_mode(self) -> str:
        """How the backbone's input was made (fingerprints before resize modes: center_crop)."""
        from brandlens.config import DEFAULT_RESIZE_MODE

        return self.backbone.get("resize_mode", DEFAULT_RESIZE_MODE)

    @property
    def embedding_dim(self) -> int:
        return int(self.backbone["embedding_dim"])

    def is_brand(self, label: str) -> bool:
        return label != self.neither_label


def read_model_card(export_dir: str) -> ModelCard:
    path = fileio.join(export_dir, contract.MODEL_CARD)
    try:
        card = json.loads(fileio.read_text(path))
    except Exception as exc:
        raise ArtifactError(f"{export_dir} is not an exported model (cannot read {contract.MODEL_CARD}: {exc})") from None
    missing = [k for k in ("version_id", "labels", "backbone") if k not in card]
    if missing:
        raise ArtifactError(f"{path} lacks {missing}")
    return ModelCard(card["version_id"], tuple(card["labels"]), card.get("neither_label"), card.get("threshold"), card["backbone"])


class ScoringModel:
    """The serving and head SavedModels of one export, with its card."""

    def __init__(self, export_dir: str):
        import tensorflow as tf

        self.card = read_model_card(str(export_dir))
        local = fileio.localize_dir(export_dir)
        self._serving = None
        self._head = None
        self._engine = None
        self._tf = tf
        self._local = Path(local)
        self._lock = threading.Lock()

    def _signature(self, attr: str, folder: str, name: str):
        """Load a SavedModel on first use (rescoring never loads the CNN); keep it alive."""
        with self._lock:
            if getattr(self, attr) is None:
                loaded = self._tf.saved_model.load(str(self._local / folder))
                setattr(self, attr, (loaded, loaded.signatures[name]))
            return getattr(self, attr)[1]

    def score_images(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """Prepared float32 [N, S, S, 3] images -> the contract's outputs as numpy.

        The serving model's own backbone on ``brandlens.engines``' default engine, then the head:
        what ``score_images`` computes, to the engine's tolerance.
        """
        if engines.DEFAULT_ENGINE != engines.SAVEDMODEL:
            with self._lock:
                if self._engine is None:
                    self._engine = engines.load_engine(engines.DEFAULT_ENGINE, self._local / contract.SERVING_DIR,
                                                       self.card.backbone_version, within=("backbone",))
            return self.score_embeddings(self._engine.embed(images))
        signature = self._signature("_serving", contract.SERVING_DIR, contract.SIG_IMAGES)
        out = signature(**{contract.INPUT_IMAGES: self._tf.convert_to_tensor(images, self._tf.float32)})
        return _numpy(out)

    def score_embeddings(self, embeddings: np.ndarray) -> dict[str, np.ndarray]:
        """Raw backbone embeddings [N, D] -> outputs, without the CNN (rescoring)."""
        signature = self._signature("_head", contract.HEAD_DIR, contract.SIG_EMBEDDING)
        out = signature(**{contract.INPUT_EMBEDDING: self._tf.convert_to_tensor(embeddings, self._tf.float32)})
        return _numpy(out)


def _numpy(out: dict) -> dict[str, np.ndarray]:
    result = {k: v.numpy() for k, v in out.items()}
    result[contract.OUT_LABEL] = np.array([s.decode("utf-8") for s in result[contract.OUT_LABEL]], dtype=object)
    return result


_cache: dict[str, ScoringModel] = {}
_lock = threading.Lock()


def load_scoring_model(export_dir: str) -> ScoringModel:
    """One ScoringModel per process and export (Beam workers share it between bundles)."""
    with _lock:
        if export_dir not in _cache:
            _cache[export_dir] = ScoringModel(export_dir)
        return _cache[export_dir]
