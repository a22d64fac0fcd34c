"""Batched embedding with one backbone per worker process.

The artifact directory is materialised once by the driver and only its path
travels to workers; each process loads the SavedModel once through
``apache_beam.utils.shared.Shared`` (so every DoFn thread shares it) and embeds
batches of ``batch_size`` images. A batch that fails is retried image by image,
so one bad input costs one dead letter, not its whole batch.
"""

from __future__ import annotations

import logging

import apache_beam as beam
import numpy as np
from apache_beam.utils import shared

from beam_jobs.common.accounting import Counters
from beam_jobs.common.defaults import DEFAULT_BATCH_SIZE, DEFAULT_PROGRESS_INTERVAL_S
from beam_jobs.common.images import prepare_image
from beam_jobs.common.progress import progress

log = logging.getLogger(__name__)

FAILED_TAG = "failed"


class _SharedBackbone:
    """Holds the backbone for Shared (which needs a weak-referenceable object)."""

    def __init__(self, backbone):
        self.backbone = backbone


class _EmbedBatchDoFn(beam.DoFn):
    def __init__(self, artifact_dir: str, shared_handle: shared.Shared, namespace: str, progress_interval: float):
        self._artifact_dir = artifact_dir
        self._shared_handle = shared_handle
        self._counters = Counters(namespace)
        self._progress_interval = progress_interval
        self._backbone = None

    def setup(self):
        from brandlens.engines import load_backbone

        artifact_dir = self._artifact_dir
        holder = self._shared_handle.acquire(lambda: _SharedBackbone(load_backbone(artifact_dir)), tag=artifact_dir)
        self._holder = holder  # keep the weak reference alive for this DoFn's lifetime
        self._backbone = holder.backbone

    def _embed(self, batch):
        fp = self._backbone.fingerprint
        prepared = np.stack([prepare_image(rgb, fp.input_size, fp.crop_fraction, fp.resize_mode) for _, rgb in batch])
        return self._backbone.embed(prepared)

    def process(self, batch):
        try:
            embeddings = self._embed(batch)
            results = [(key, emb, None) for (key, _), emb in zip(batch, embeddings)]
        except Exception as batch_error:  # isolate the culprit(s) before giving up on anything
            log.warning("embedding a batch of %d failed (%s); retrying one by one", len(batch), batch_error)
            results = []
            for key, rgb in batch:
                try:
                    results.append((key, self._embed([(key, rgb)])[0], None))
                except Exception as exc:
                    results.append((key, None, f"{type(exc).__name__}: {exc}"))
        done = 0
        for key, embedding, error in results:
            if error is None:
                done += 1
                yield key, np.asarray(embedding, np.float32)
            else:
                self._counters.inc("embed_failures")
                yield beam.pvalue.TaggedOutput(FAILED_TAG, (key, error))
        self._counters.inc("cnn_embeddings", done)
        progress("images embedded by the CNN", self._progress_interval).add(done)


class EmbedImages(beam.PTransform):
    """``(key, HxWx3 uint8 RGB)`` -> ``(key, float32[D])``, prepared as the artifact's fingerprint says.

    Outputs: main ``embeddings`` and ``failed`` (``(key, message)``). Keys are
    carried untouched, so callers attach whatever identity they need. Counts
    ``cnn_embeddings`` and ``embed_failures`` in ``namespace``.
    """

    def __init__(self, artifact_dir: str, batch_size: int = DEFAULT_BATCH_SIZE, namespace: str = "beam_jobs",
                 progress_interval: float = DEFAULT_PROGRESS_INTERVAL_S):
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self._artifact_dir = str(artifact_dir)
        self._batch_size = batch_size
        self._namespace = namespace
        self._progress_interval = progress_interval

    def expand(self, images):
        return (
            images
            | "Batch" >> beam.BatchElements(min_batch_size=self._batch_size, max_batch_size=self._batch_size)
            | "Embed" >> beam.ParDo(_EmbedBatchDoFn(self._artifact_dir, shared.Shared(), self._namespace,
                                                    self._progress_interval)).with_outputs(FAILED_TAG, main="embeddings")
        )
