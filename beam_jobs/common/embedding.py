"""The backbone as a Beam ``ModelHandler``, and the embedding step built on RunInference.

The artifact directory is materialised once by the driver and only its path
travels to workers; RunInference loads the backbone once per worker process
(:meth:`BackboneHandler.load_model`, the one place an engine is chosen:
``brandlens.engines``' default, TFLite, or the SavedModel for a ``cut``) and
runs batches of ``batch_size`` prepared images. Each element's prediction is
a dict of named numpy outputs: ``embedding``, and with a ``cut`` also
``cut_map``, the map entering that block, from the same forward pass.
"""

from __future__ import annotations

from typing import Sequence

import apache_beam as beam
import numpy as np
from apache_beam.ml.inference.base import ModelHandler

from beam_jobs.common.accounting import Counters
from beam_jobs.common.defaults import DEFAULT_BATCH_SIZE, DEFAULT_PROGRESS_INTERVAL_S
from beam_jobs.common.images import prepare_image
from beam_jobs.common.inference import KeyedInference, batching
from beam_jobs.common.progress import progress

FAILED_TAG = "failed"
EMBEDDING = "embedding"
PROGRESS = "images embedded by the CNN"
CUT_MAP = "cut_map"


class BackboneHandler(ModelHandler):
    """Prepared float32 [S, S, 3] images -> ``{"embedding": float32[D]}`` per image (and ``cut_map`` with a cut)."""

    def __init__(self, artifact_dir: str, batch_size: int = DEFAULT_BATCH_SIZE, max_batch_duration_secs: float | None = None,
                 cut: int | None = None, progress_interval: float = DEFAULT_PROGRESS_INTERVAL_S):
        super().__init__(**batching(batch_size, max_batch_duration_secs))
        self._artifact_dir = str(artifact_dir)
        self._cut = cut
        self._progress_interval = progress_interval

    def load_model(self):
        """The one engine seam: ``brandlens.engines``' default engine (TFLite) for embeddings; a cut needs the
        map entering a block, which only the artifact's own SavedModel exposes."""
        if self._cut is not None:
            from brandlens.backbones.artifact import load_backbone
        else:
            from brandlens.engines import load_backbone

        return load_backbone(self._artifact_dir)

    def run_inference(self, batch: Sequence[np.ndarray], model, inference_args=None) -> list[dict[str, np.ndarray]]:
        if self._cut is not None:
            out = model.run_with_cut(np.stack(batch), self._cut)
            results = [{EMBEDDING: e, CUT_MAP: m} for e, m in zip(np.asarray(out[EMBEDDING], np.float32), out[CUT_MAP])]
        else:
            results = [{EMBEDDING: embedding} for embedding in np.asarray(model.embed(np.stack(batch)), np.float32)]
        # counted here, at the forward pass: steps after RunInference may run only once every batch is done
        progress(PROGRESS, self._progress_interval).add(len(batch))
        return results

    def get_num_bytes(self, batch: Sequence[np.ndarray]) -> int:
        return sum(image.nbytes for image in batch)

    def get_metrics_namespace(self) -> str:
        return "brandlens.backbone"


class _Prepare:
    """HxWx3 uint8 RGB -> the backbone's float32 input, as its fingerprint says."""

    def __init__(self, input_size: int, crop_fraction: float, resize_mode: str):
        self._args = (input_size, crop_fraction, resize_mode)

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        return prepare_image(rgb, *self._args)


class EmbedImages(beam.PTransform):
    """``(key, HxWx3 uint8 RGB)`` -> ``(key, float32[D])``, prepared as the artifact's fingerprint says.

    With ``cut`` the value is ``(embedding, map entering block cut)``.

    Outputs: main ``embeddings`` and ``failed`` (``(key, message)``). Keys are
    carried untouched, so callers attach whatever identity they need. Counts
    ``cnn_embeddings`` and ``embed_failures`` in ``namespace``; RunInference's
    own metrics go to ``<namespace>.inference``.
    """

    def __init__(self, artifact_dir: str, batch_size: int = DEFAULT_BATCH_SIZE, namespace: str = "beam_jobs",
                 progress_interval: float = DEFAULT_PROGRESS_INTERVAL_S, max_batch_duration_secs: float | None = None,
                 cut: int | None = None):
        super().__init__()
        from brandlens.backbones.artifact import read_fingerprint

        self._cut = cut
        self._handler = BackboneHandler(artifact_dir, batch_size, max_batch_duration_secs, cut, progress_interval)
        fp = read_fingerprint(str(artifact_dir))
        self._prepare = _Prepare(fp.input_size, fp.crop_fraction, fp.resize_mode)
        self._namespace = namespace

    def expand(self, images):
        counters, cut = Counters(self._namespace), self._cut
        inferred = images | "Embed" >> KeyedInference(self._handler, self._namespace, self._prepare)

        def embedded(item):
            key, outputs = item
            counters.inc("cnn_embeddings")
            return key, outputs[EMBEDDING] if cut is None else (outputs[EMBEDDING], outputs[CUT_MAP])

        def failed(item):
            counters.inc("embed_failures")
            return item

        return {
            "embeddings": inferred.results | "Embeddings" >> beam.Map(embedded),
            FAILED_TAG: inferred.failures | "CountFailures" >> beam.Map(failed),
        }
