"""The scoring pipeline: posts -> scored rows in Parquet, every post accounted for.

    ReadPosts -> IdentifyPosts -> OnePerPostId (shuffle) -> FetchImageBytes
      -> DecodeAndPrepare -> Score (batched, one model per worker) -> ToRows -> WriteParquet
    every failure -> WriteDeadLetters

Counts (Beam counters in ``brandlens.scoring``): ``read = scored + dead_lettered``.
Rescoring (:func:`build_rescore_pipeline`) reads stored embeddings and runs the
head only.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
from concurrent.futures import ThreadPoolExecutor

import apache_beam as beam
import numpy as np
from apache_beam.utils import shared

from beam_jobs.common.accounting import READ, CountAs, Counters, WriteDeadLetters
from beam_jobs.common.images import decode, prepare_image
from beam_jobs.common.progress import LogProgress, progress
from beam_jobs.common.records import DEAD_LETTER_TAG, STAGE_DECODE, STAGE_READ, ImageRecord
from beam_jobs.common.sources import ReadImages
from beam_jobs.scoring.config import NAMESPACE, RescoreConfig, ScoringConfig
from beam_jobs.scoring.model import ModelCard, load_scoring_model
from beam_jobs.scoring.parquet_sink import WriteScoresParquet, WriteScoresParquetBatched
from beam_jobs.scoring.rows import BadPost, best_view, partition_of, post_id_of, score_row, views
from beam_jobs.scoring.stored import EmbeddingBatch
from brandlens.imaging import content_hash
from brandlens.preprocess import decode_side
from schemas import scores as schema
from schemas.dead_letter import BAD_ROW, DeadLetter

SCORED = "scored"
STAGE_SCORE = "score"
DUPLICATE_POST = "duplicate_post_id"
SCORE_FAILED = "score_failed"


@dataclasses.dataclass(frozen=True)
class Post:
    """A post on its way through the job: its record (bytes dropped after decoding) and output keys."""

    post_id: str
    partition: str
    record: ImageRecord
    content_hash: str = ""


class _Identify(beam.DoFn):
    def __init__(self, id_column: str, date_column: str, fmt: str, run_date: dt.date):
        self._id_column, self._date_column, self._fmt, self._run_date = id_column, date_column, fmt, run_date

    def process(self, record: ImageRecord):
        try:
            post_id = post_id_of(record.uri, record.record_id, record.metadata, self._id_column, self._fmt)
            record = dataclasses.replace(record, record_id=post_id)
            partition = partition_of(record.metadata.get(self._date_column), self._run_date)
        except BadPost as exc:
            yield beam.pvalue.TaggedOutput(DEAD_LETTER_TAG, record.dead_letter(STAGE_READ, BAD_ROW, str(exc)))
            return
        yield post_id, Post(post_id, partition, record)


def _one_per_post(item):
    """Keep one record per post id (deterministically: the least by uri and metadata); dead-letter the others."""
    post_id, posts = item
    posts = sorted(posts, key=lambda p: (p.record.uri, json.dumps(p.record.metadata, sort_keys=True, default=str)))
    yield posts[0]
    for extra in posts[1:]:
        yield beam.pvalue.TaggedOutput(DEAD_LETTER_TAG, extra.record.dead_letter(
            STAGE_READ, DUPLICATE_POST, f"post id {post_id} appears {len(posts)} times in the input; one of them is scored"))


class _DecodeAndPrepare(beam.DoFn):
    def __init__(self, size: int, crop_fraction: float, resize_mode: str, grid: int, max_pixels: int):
        self._size, self._crop, self._mode, self._grid, self._max_pixels = size, crop_fraction, resize_mode, grid, max_pixels
        self._min_side = decode_side(size, crop_fraction, grid)

    def process(self, post: Post):
        rgb = decode(post.record, self._max_pixels, self._min_side)
        if isinstance(rgb, DeadLetter):
            yield beam.pvalue.TaggedOutput(DEAD_LETTER_TAG, rgb)
            return
        try:
            whole, *tiles = views(rgb, self._grid)  # the whole image as the model was trained; tiles kept entire
            prepared = [prepare_image(whole, self._size, self._crop, self._mode)]
            prepared += [prepare_image(tile, self._size, 1.0, "squash") for tile in tiles]
        except Exception as exc:
            yield beam.pvalue.TaggedOutput(DEAD_LETTER_TAG, post.record.dead_letter(STAGE_DECODE, "prepare_failed", f"{type(exc).__name__}: {exc}"))
            return
        slim = dataclasses.replace(post, record=post.record.without_data(), content_hash=content_hash(post.record.data))
        yield slim, np.stack(prepared)


class _DecodeAndPrepareBatch(_DecodeAndPrepare):
    """The same for a batch of posts, decoded by one thread per core: Pillow's decoders and TensorFlow's
    resize release the GIL, and decoding phone photos costs as much as the forward pass."""

    def setup(self):
        self._pool = ThreadPoolExecutor(max(1, os.cpu_count() or 1), thread_name_prefix="decode")

    def teardown(self):
        self._pool.shutdown(wait=False)

    def process(self, posts):
        for outputs in self._pool.map(lambda post: list(_DecodeAndPrepare.process(self, post)), posts):
            yield from outputs


class _SharedModel:
    def __init__(self, model):
        self.model = model


class _ScoreBatch(beam.DoFn):
    """Score a batch of posts (each with one or more views) with one model call."""

    def __init__(self, export_dir: str, card: ModelCard, handle: shared.Shared, scored_at: dt.datetime,
                 with_embedding: bool, progress_interval: float, carried: tuple[tuple[str, str], ...]):
        self._export_dir, self._card, self._handle, self._carried = export_dir, card, handle, carried
        self._scored_at, self._with_embedding, self._interval = scored_at, with_embedding, progress_interval
        self._counters = Counters(NAMESPACE)
        self._brand_mask = np.array([card.is_brand(label) for label in card.labels])

    def setup(self):
        export_dir = self._export_dir
        self._holder = self._handle.acquire(lambda: _SharedModel(load_scoring_model(export_dir)), tag=export_dir)
        self._model = self._holder.model

    def _rows(self, batch):
        outputs = self._model.score_images(np.concatenate([views for _, views in batch]))
        rows, start = [], 0
        for post, post_views in batch:
            span = slice(start, start + len(post_views))
            start = span.stop
            chosen = span.start + best_view(outputs["scores"][span], self._brand_mask)
            if self._with_embedding:
                outputs["embedding"][chosen] = outputs["embedding"][span.start]  # always the whole image's
            rows.append(score_row(post.post_id, post.record.uri, post.content_hash, post.partition, outputs, chosen,
                                  self._card.labels, self._card.neither_label, self._card.version_id,
                                  self._card.backbone_version, self._scored_at, carry(post.record.metadata, self._carried),
                                  self._with_embedding))
        return rows

    def process(self, batch):
        try:
            rows = self._rows(batch)
        except Exception:
            rows = []
            for item in batch:
                try:
                    rows.extend(self._rows([item]))
                except Exception as exc:
                    yield beam.pvalue.TaggedOutput(DEAD_LETTER_TAG, item[0].record.dead_letter(
                        STAGE_SCORE, SCORE_FAILED, f"{type(exc).__name__}: {exc}"))
        self._counters.inc(SCORED, len(rows))
        progress("posts scored", self._interval).add(len(rows))
        yield from rows


def carry(metadata: dict, carried: tuple[tuple[str, str], ...]) -> dict:
    """The carried columns of a record, under their output names (absent = null)."""
    return {out: metadata.get(name) for out, name in carried}


def build_pipeline(pipeline, config: ScoringConfig, card: ModelCard, carried: tuple[tuple[str, str], ...], run: str,
                   scored_at: dt.datetime) -> dict:
    """Wire the scoring job into ``pipeline``; returns the written files and dead letters."""
    spec = config.input_spec
    read = pipeline | "ReadPosts" >> ReadImages(spec, config.max_bytes)
    records = read["records"] | "CountRead" >> CountAs(NAMESPACE, READ)
    identified = records | "IdentifyPosts" >> beam.ParDo(
        _Identify(config.id_column, config.date_column, spec.resolved_format, scored_at.date())).with_outputs(DEAD_LETTER_TAG, main="posts")
    unique = (
        identified["posts"]
        | "GroupByPostId" >> beam.GroupByKey()
        | "OnePerPostId" >> beam.FlatMap(_one_per_post).with_outputs(DEAD_LETTER_TAG, main="posts")
    )
    fetched = (
        unique["posts"]
        | "RecordOf" >> beam.Map(lambda p: (p, p.record))
        | "FetchImageBytes" >> beam.ParDo(_FetchPost(config.max_bytes)).with_outputs(DEAD_LETTER_TAG, main="posts")
    )
    prepared = (
        fetched["posts"]
        | "BatchForDecode" >> beam.BatchElements(min_batch_size=config.batch_size, max_batch_size=config.batch_size)
        | "DecodeAndPrepare" >> beam.ParDo(_DecodeAndPrepareBatch(
            card.input_size, card.crop_fraction, card.resize_mode, config.multi_crop, config.max_pixels)).with_outputs(DEAD_LETTER_TAG, main="views")
    )
    scored = (
        prepared["views"]
        | "Batch" >> beam.BatchElements(min_batch_size=config.batch_size, max_batch_size=config.batch_size)
        | "Score" >> beam.ParDo(_ScoreBatch(config.model, card, shared.Shared(), scored_at, config.write_embedding,
                                            config.progress_interval, carried)).with_outputs(DEAD_LETTER_TAG, main="rows")
    )
    arrow = schema.scores_schema(list(card.labels), [out for out, _ in carried], config.write_embedding, card.embedding_dim)
    written = (
        scored["rows"]
        | "Progress" >> LogProgress("rows written", config.progress_interval)
        | "WriteParquet" >> WriteScoresParquet(config.out.scores_dir, arrow, run, config.out.rows_per_file)
    )
    dead = (
        (read[DEAD_LETTER_TAG], identified[DEAD_LETTER_TAG], unique[DEAD_LETTER_TAG], fetched[DEAD_LETTER_TAG],
         prepared[DEAD_LETTER_TAG], scored[DEAD_LETTER_TAG])
        | "AllDeadLetters" >> beam.Flatten()
        | "WriteDeadLetters" >> WriteDeadLetters(f"{config.out.run_dir(run)}/dead_letters", NAMESPACE)
    )
    return {"written": written, "dead_letters": dead}


class _FetchPost(beam.DoFn):
    """FetchImageBytes for Posts: the fetched bytes go back into the post's record."""

    def __init__(self, max_bytes: int):
        self._max_bytes = max_bytes

    def process(self, item):
        from beam_jobs.common.images import fetch

        post, record = item
        result = fetch(record, self._max_bytes)
        if isinstance(result, DeadLetter):
            yield beam.pvalue.TaggedOutput(DEAD_LETTER_TAG, result)
        else:
            yield dataclasses.replace(post, record=result)


class _RescoreTables(beam.DoFn):
    """EmbeddingBatch (partition, meta table, float32 [N, D] embeddings) -> (partition, output table): one head call per batch.

    The rows equal what :func:`beam_jobs.scoring.rows.score_row` makes for each post (tests check it),
    built column by column instead of one Python dict per post.
    """

    def __init__(self, export_dir: str, card: ModelCard, handle: shared.Shared, scored_at: dt.datetime,
                 carried: tuple[tuple[str, str], ...], arrow_schema, batch_size: int):
        self._export_dir, self._card, self._handle, self._scored_at = export_dir, card, handle, scored_at
        self._carried, self._schema, self._batch_size = carried, arrow_schema, batch_size
        self._counters = Counters(NAMESPACE)

    def setup(self):
        export_dir = self._export_dir
        self._holder = self._handle.acquire(lambda: _SharedModel(load_scoring_model(export_dir)), tag=export_dir + "#head")
        self._model = self._holder.model

    def process(self, element):
        partition, meta, embeddings = element
        for start in range(0, meta.num_rows, self._batch_size):
            part = meta.slice(start, self._batch_size)
            table = self._table(part, embeddings[start:start + part.num_rows])
            self._counters.inc(SCORED, table.num_rows)
            yield partition, table

    def _table(self, meta, embeddings):
        import pyarrow as pa
        import pyarrow.compute as pc

        outputs = self._model.score_embeddings(embeddings)
        n, card = meta.num_rows, self._card
        # A slice keeps its parent's buffers, and pickling it (to the shuffle) would copy all of them.
        meta = pa.table({name: pa.concat_arrays(column.chunks) if column.num_chunks else pa.array([], column.type)
                         for name, column in zip(meta.column_names, meta.columns)})
        labels = pa.array(outputs["label"], pa.string())
        found = pc.not_equal(labels, card.neither_label) if card.neither_label is not None else pa.repeat(pa.scalar(True), n)
        columns = {
            schema.POST_ID: meta.column(schema.POST_ID), schema.IMAGE_URI: meta.column(schema.IMAGE_URI),
            schema.CONTENT_HASH: meta.column(schema.CONTENT_HASH), schema.LABEL: labels,
            schema.CONFIDENCE: pa.array(np.asarray(outputs["confidence"], np.float32)),
            schema.BRAND_FOUND: found,
            schema.MODEL_VERSION: pa.repeat(pa.scalar(card.version_id, pa.string()), n),
            schema.BACKBONE: pa.repeat(pa.scalar(card.backbone_version, pa.string()), n),
            schema.SCORED_AT: pa.repeat(pa.scalar(self._scored_at, self._schema.field(schema.SCORED_AT).type), n),
        }
        scores = np.asarray(outputs["scores"], np.float32)
        for j, label in enumerate(card.labels):
            columns[schema.score_column(label)] = pa.array(scores[:, j])
        for out, name in self._carried:
            column = meta.column(name) if name in meta.column_names else pa.nulls(n, pa.string())
            columns[out] = column.cast(pa.string())
        return pa.Table.from_arrays([columns[f.name] for f in self._schema], schema=self._schema)


def build_rescore_pipeline(pipeline, config: RescoreConfig, card: ModelCard, batches,
                           carried: tuple[tuple[str, str], ...], run: str, scored_at: dt.datetime):
    """``batches``: a PCollection of (partition, pyarrow table of post_id, image_uri, content_hash and the carried
    columns, float32 [N, D] embeddings) -> Parquet rows through the head only, batch by batch (counts ``read``)."""
    arrow = schema.scores_schema(list(card.labels), [out for out, _ in carried])
    counters = Counters(NAMESPACE)

    def count_read(element: EmbeddingBatch):
        counters.inc(READ, element.meta.num_rows)
        return element

    return (
        batches
        | "CountRead" >> beam.Map(count_read).with_output_types(EmbeddingBatch)
        | "RescoreWithHead" >> beam.ParDo(_RescoreTables(config.model, card, shared.Shared(), scored_at, carried, arrow,
                                                          config.batch_size))
        | "WriteParquet" >> WriteScoresParquetBatched(config.out.scores_dir, arrow, run, config.out.rows_per_file)
    )
