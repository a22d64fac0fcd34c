"""The exported model as the scoring job sees it: its card, and Beam ``ModelHandler``s over it.

Reads the export folder that ``schemas/model.py`` describes (local or gs://, the
latter copied once per machine) and runs its signatures on numpy batches.
RunInference loads one :class:`ScoringModel` per worker process through
:class:`ImagesHandler` (scoring: prepared views) or :class:`HeadHandler`
(rescoring: stored embeddings, no CNN); their ``load_model`` is the one place
an engine is chosen.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
from apache_beam.ml.inference.base import ModelHandler

from beam_jobs.common.defaults import DEFAULT_PROGRESS_INTERVAL_S
from beam_jobs.common.inference import batching
from beam_jobs.common.progress import progress
from brandlens import engines, fileio
from brandlens.errors import ArtifactError
from schemas import model as contract

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelCard:
    version_id: str
    labels: tuple[str, ...]
    neither_label: str | None
    threshold: float | None
    backbone: dict
    brand_thresholds: dict | None = None  # label -> min score to report a brand beside the label (brandlens.evidence)
    tile_thresholds: dict | None = None   # "<grid>" -> the same over a photo and its --multi-crop tiles

    def tile_thresholds_for(self, grid: int) -> dict | None:
        """The thresholds for brands found on ``grid`` x ``grid`` tiles; None: only the chosen view's brands."""
        return (self.tile_thresholds or {}).get(str(grid)) if grid > 1 else None

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
    return ModelCard(card["version_id"], tuple(card["labels"]), card.get("neither_label"), card.get("threshold"), card["backbone"],
                     card.get("brand_thresholds"), card.get("tile_thresholds"))


class ScoringModel:
    """The serving and head SavedModels of one export, with its card.

    ``engine`` (``brandlens.engines``) runs ``score_images``: ``savedmodel`` calls the serving
    signature; any other engine runs the whole ``score_images`` signature converted to that engine (once per
    model version and machine; what the signature computes, to the engine's tolerance: ``schemas/model.py``).
    Where it does not convert (a graph with an op TFLite lacks), an export with ``head/`` runs its backbone on
    the engine, then the head: on the embedding, or, where the export makes evidence outputs (boxes need the
    final map), on the final map through ``head/``'s ``score_maps``. One the engine cannot run that way either
    (evidence outputs but no ``score_maps``; adapted exports made before evidence avoided ``diag_part``) is
    scored on its SavedModel.
    """

    def __init__(self, export_dir: str, engine: str = engines.SAVEDMODEL, whole: bool = True):
        """``whole=False`` skips the whole-signature conversion (the fallback path, measured beside it)."""
        import tensorflow as tf

        if engine not in engines.ENGINES:
            raise ValueError(f"unknown engine {engine!r}; choose one of {', '.join(engines.ENGINES)}")
        self.engine = engine
        self.card = read_model_card(str(export_dir))
        local = fileio.localize_dir(export_dir)
        self._serving = None
        self._head = None
        self._maps = None       # head/'s score_maps, where the engine's final map goes (exports with evidence)
        self._from_maps = False
        self._engine = None
        self._whole = None      # the whole score_images on the engine
        self._try_whole = whole
        self._tf = tf
        self._local = Path(local)
        self._lock = threading.Lock()

    def load(self, folder: str) -> None:
        """Load ``serving/`` or ``head/`` now (model load time belongs to loading, not to the first batch)."""
        if folder == contract.SERVING_DIR and self._engine_applies():
            if self._whole is None:
                self._backbone_engine()
                self._signature(*self._head_part())
        elif folder == contract.SERVING_DIR:
            self._signature("_serving", contract.SERVING_DIR, contract.SIG_IMAGES)
        else:
            self._signature("_head", contract.HEAD_DIR, contract.SIG_EMBEDDING)

    def _signature(self, attr: str, folder: str, name: str):
        """Load a SavedModel on first use (rescoring never loads the CNN); keep it alive."""
        with self._lock:
            if getattr(self, attr) is None:
                loaded = self._tf.saved_model.load(str(self._local / folder))
                setattr(self, attr, (loaded, loaded.signatures[name]))
            return getattr(self, attr)[1]

    def _engine_applies(self) -> bool:
        """Whether the engine computes all of ``score_images``; else fall back to the SavedModel.

        The whole signature converted to the engine comes first: one interpreter call per batch, as fast as the
        backbone alone (the split path below pays a second, TensorFlow call for the head's maps). Where it does
        not convert, an export with ``head/`` runs its backbone on the engine and the head after it.
        """
        if self.engine == engines.SAVEDMODEL:
            return False
        if self._whole is not None:
            return True
        reason = self._whole_on_engine() if self._try_whole else "not asked to convert the whole signature"
        if reason is not None and (self._local / contract.HEAD_DIR).is_dir():
            log.info("scoring %s as backbone on %s + head/: %s", self.card.version_id, self.engine, reason)
            reason = None
            outputs = self._signature("_serving", contract.SERVING_DIR, contract.SIG_IMAGES).structured_outputs
            if any(name in outputs for name in contract.EVIDENCE_OUTPUTS):
                head = self._tf.saved_model.load(str(self._local / contract.HEAD_DIR))
                self._from_maps = contract.SIG_MAPS in head.signatures
                if self._from_maps:
                    self._maps = (head, head.signatures[contract.SIG_MAPS])  # loaded once: kept for scoring
                else:
                    reason = f"its evidence outputs need the backbone's final map and its head/ has no {contract.SIG_MAPS}"
            if reason is None:
                self._serving = None  # only its backbone runs, on the engine
        if reason:
            log.info("scoring %s on its SavedModel, not %s: %s", self.card.version_id, self.engine, reason)
            self.engine = engines.SAVEDMODEL
        return reason is None

    def _whole_on_engine(self) -> str | None:
        """Convert ``score_images`` to the engine (once per model version and graph); why not, or None."""
        serving = self._local / contract.SERVING_DIR
        try:  # keyed by the graph's own bytes too: a changed serving/ under the same version id is converted anew
            graph = hashlib.sha256((serving / "saved_model.pb").read_bytes()).hexdigest()[:12]
            path = engines.convert(serving, self.engine, f"{self.card.version_id}-{graph}", signature=contract.SIG_IMAGES)
            self._whole = engines.SignatureEngine(path, contract.SIG_IMAGES, self.engine)
        except Exception as exc:  # ConverterError: an op TFLite lacks (exports older than this engine path)
            return f"its score_images does not convert ({type(exc).__name__}: {str(exc).splitlines()[0][:160]})"
        return None

    def _backbone_engine(self):
        with self._lock:
            if self._engine is None:
                self._engine = engines.load_engine(self.engine, self._local / contract.SERVING_DIR,
                                                   self.card.backbone_version, within=("backbone",))
            return self._engine

    def _head_part(self) -> tuple[str, str, str]:
        return ("_maps", contract.HEAD_DIR, contract.SIG_MAPS) if self._from_maps else (
            "_head", contract.HEAD_DIR, contract.SIG_EMBEDDING)

    def score_images(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """Prepared float32 [N, S, S, 3] images -> the contract's outputs as numpy (on this model's engine)."""
        if self._engine is not None or self._engine_applies():  # True at once where the whole signature runs
            if self._whole is not None:
                return _numpy(self._whole(images), tensors=False)
            if not self._from_maps:
                return self.score_embeddings(self._backbone_engine().embed(images))
            maps = self._backbone_engine().feature_map(images)
            out = self._signature(*self._head_part())(**{contract.INPUT_FEATURE_MAP: self._tf.convert_to_tensor(maps)})
            return _numpy(out)
        signature = self._signature("_serving", contract.SERVING_DIR, contract.SIG_IMAGES)
        out = signature(**{contract.INPUT_IMAGES: self._tf.convert_to_tensor(images, self._tf.float32)})
        return _numpy(out)

    def score_embeddings(self, embeddings: np.ndarray, echo: bool = True) -> dict[str, np.ndarray]:
        """Raw backbone embeddings [N, D] -> outputs, without the CNN (rescoring); ``echo=False`` leaves out the
        embedding the head passes through (not copied back to numpy)."""
        signature = self._signature("_head", contract.HEAD_DIR, contract.SIG_EMBEDDING)
        out = signature(**{contract.INPUT_EMBEDDING: self._tf.convert_to_tensor(embeddings, self._tf.float32)})
        return _numpy(out, () if echo else (contract.OUT_EMBEDDING,))


def _numpy(out: dict, leave_out: tuple[str, ...] = (), tensors: bool = True) -> dict[str, np.ndarray]:
    result = {k: v.numpy() if tensors else v for k, v in out.items() if k not in leave_out}
    result[contract.OUT_LABEL] = np.array([s.decode("utf-8") for s in result[contract.OUT_LABEL]], dtype=object)
    return result


class _ExportHandler(ModelHandler):
    """One part of an export (``serving/`` or ``head/``); each element is a stack of rows, each gets its own outputs.

    Progress is counted here, at the model call: the steps after RunInference may run only once every batch is done.
    """

    _part = ""
    _progress = ""  # what a progress line counts

    def __init__(self, export_dir: str, engine: str = engines.SAVEDMODEL,
                 progress_interval: float = DEFAULT_PROGRESS_INTERVAL_S, **batching):
        super().__init__(**batching)
        self._export_dir, self._engine, self._progress_interval = str(export_dir), engine, progress_interval

    def load_model(self) -> ScoringModel:
        """The one engine seam of the scoring job: the export on this handler's engine, loaded now."""
        model = ScoringModel(self._export_dir, self._engine)
        model.load(self._part)
        return model

    def run_inference(self, batch: Sequence[np.ndarray], model: ScoringModel, inference_args=None) -> list[dict]:
        sizes = [len(rows) for rows in batch]
        outputs = _split(self._call(model, batch[0] if len(batch) == 1 else np.concatenate(batch)), sizes)
        progress(self._progress, self._progress_interval).add(self._count(sizes))
        return outputs

    def _call(self, model: ScoringModel, rows: np.ndarray) -> dict[str, np.ndarray]:
        raise NotImplementedError

    @staticmethod
    def _count(sizes: list[int]) -> int:
        raise NotImplementedError

    def get_num_bytes(self, batch: Sequence[np.ndarray]) -> int:
        return sum(array.nbytes for array in batch)

    def get_metrics_namespace(self) -> str:
        return "brandlens.scoring_model"


class ImagesHandler(_ExportHandler):
    """Per post, its prepared views float32 [V, S, S, 3] -> the contract's outputs for those V views.

    One model call per batch of posts (all their views at once).
    """

    _part = contract.SERVING_DIR
    _progress = "posts scored"

    def __init__(self, export_dir: str, batch_size: int, max_batch_duration_secs: float | None = None,
                 engine: str = engines.DEFAULT_ENGINE, progress_interval: float = DEFAULT_PROGRESS_INTERVAL_S):
        super().__init__(export_dir, engine, progress_interval, **batching(batch_size, max_batch_duration_secs))

    def _call(self, model: ScoringModel, rows: np.ndarray) -> dict[str, np.ndarray]:
        return model.score_images(rows)

    @staticmethod
    def _count(sizes: list[int]) -> int:
        return len(sizes)  # posts (each element is one post's views)


class HeadHandler(_ExportHandler):
    """A chunk of raw embeddings float32 [N, D] -> the contract's outputs for those N rows (one head call)."""

    _part = contract.HEAD_DIR
    _progress = "posts rescored"

    def __init__(self, export_dir: str, progress_interval: float = DEFAULT_PROGRESS_INTERVAL_S):
        super().__init__(export_dir, progress_interval=progress_interval, min_batch_size=1, max_batch_size=1)  # chunks arrive batched

    @staticmethod
    def _count(sizes: list[int]) -> int:
        return sum(sizes)  # rows (each element is a chunk of posts)

    def _call(self, model: ScoringModel, rows: np.ndarray) -> dict[str, np.ndarray]:
        return model.score_embeddings(rows, echo=False)  # rescoring writes no embeddings: not carried on


def _split(outputs: dict[str, np.ndarray], sizes: list[int]) -> list[dict[str, np.ndarray]]:
    """Batch outputs -> one dict per element, each with its own rows (views or chunk rows)."""
    bounds = np.cumsum([0] + sizes)
    return [{name: value[a:b] for name, value in outputs.items()} for a, b in zip(bounds[:-1], bounds[1:])]
