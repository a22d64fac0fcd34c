"""The scoring pipeline: posts -> scored rows in Parquet, every post accounted for.

    ReadPosts -> IdentifyPosts -> OnePerPostId (shuffle)
      -> BatchForDecode -> FetchDecodeAndPrepare (one thread per core: read the bytes, decode JPEGs at a reduced DCT scale)
      -> Score (RunInference: batched, one model per worker) -> ToRows -> WriteParquet
    every failure -> WriteDeadLetters

Counts (Beam counters in ``brandlens.scoring``): ``read = scored + dead_lettered``.
Rescoring (:func:`build_rescore_pipeline`) reads stored embeddings and runs the
head only (RunInference over chunks of rows of ``EmbeddingBatch``es, ``beam_jobs.scoring.stored``).
"""

from __future__ import annotations

import collections
import dataclasses
import datetime as dt
import functools
import json
import os
from concurrent.futures import ThreadPoolExecutor

import apache_beam as beam
import numpy as np
from apache_beam.utils.windowed_value import WindowedValue

from beam_jobs.common.accounting import READ, CountAs, Counters, WriteDeadLetters
from beam_jobs.common.defaults import DEFAULT_MAX_BYTES
from beam_jobs.common.images import decode, fetch, prepare_image
from beam_jobs.common.inference import KeyedInference
from beam_jobs.common.progress import LogProgress
from beam_jobs.common.records import DEAD_LETTER_TAG, STAGE_DECODE, STAGE_READ, ImageRecord
from beam_jobs.common.sources import ReadImages
from beam_jobs.scoring.config import NAMESPACE, RescoreConfig, ScoringConfig
from beam_jobs.scoring.model import HeadHandler, ImagesHandler, ModelCard
from beam_jobs.scoring.parquet_sink import WriteScoresParquet, WriteScoresParquetBatched
from beam_jobs.scoring.rows import (BadPost, best_view, brand_mask, brand_scores, given_uri, partition_of, post_id_of,
                                    score_row, view_boxes_to_photo, views)
from beam_jobs.scoring.stored import EmbeddingBatch
from brandlens.imaging import content_hash
from brandlens.preprocess import decode_side
from schemas import scores as schema
from schemas.dead_letter import BAD_ROW, DeadLetter

SCORED = "scored"
# Posts decoded ahead of the model, per decode thread (at most one model batch). Measured on the phone-photo
# archive, 2 cores, batch 32, steady posts/s: 1 ahead 25-28, 8 (this) 33.5-34.0, 16 33.4-33.6, 32 33.8-35.3 with
# more memory (peak 1.18 against 1.16 GB; +10% at N vs N/10 while the decode batches still held the raw bytes).
DECODE_AHEAD_PER_THREAD = 4
STAGE_SCORE = "score"
DUPLICATE_POST = "duplicate_post_id"
SCORE_FAILED = "score_failed"
PREPARE_FAILED = "prepare_failed"


@dataclasses.dataclass(frozen=True)
class Post:
    """A post on its way through the job: its record (bytes dropped after decoding) and output keys."""

    post_id: str
    partition: str
    record: ImageRecord
    content_hash: str = ""
    given_uri: str = ""  # the image uri as the input wrote it (record.uri is resolved)
    image_size: tuple[int, int] = (0, 0)  # decoded height, width: evidence boxes are mapped back to it
    grid: int = 1                         # the multi-crop grid its views were cut with


class _Identify(beam.DoFn):
    def __init__(self, id_column: str, date_column: str, fmt: str, run_date: dt.date, uri_column: str = "image_uri"):
        self._id_column, self._date_column, self._fmt, self._run_date = id_column, date_column, fmt, run_date
        self._uri_column = uri_column

    def process(self, record: ImageRecord):
        try:
            post_id = post_id_of(record.uri, record.record_id, record.metadata, self._id_column, self._fmt)
            record = dataclasses.replace(record, record_id=post_id)
            partition = partition_of(record.metadata.get(self._date_column), self._run_date)
        except BadPost as exc:
            yield beam.pvalue.TaggedOutput(DEAD_LETTER_TAG, record.dead_letter(STAGE_READ, BAD_ROW, str(exc)))
            return
        given = given_uri(record.metadata, self._uri_column, record.uri) if self._fmt == "manifest" else record.uri
        yield post_id, Post(post_id, partition, record, given_uri=given)


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
            yield beam.pvalue.TaggedOutput(DEAD_LETTER_TAG, post.record.dead_letter(STAGE_DECODE, PREPARE_FAILED, f"{type(exc).__name__}: {exc}"))
            return
        slim = dataclasses.replace(post, record=post.record.without_data(), content_hash=content_hash(post.record.data),
                                   image_size=tuple(rgb.shape[:2]), grid=self._grid)
        yield slim, np.stack(prepared)


class _DecodeAndPrepareBatch(_DecodeAndPrepare):
    """The same for batches of posts, each read and decoded by one thread per core: reads, Pillow's decoders
    and TensorFlow's resize release the GIL, and decoding phone photos costs as much as the forward pass,
    which runs on the bundle's thread. Each post still ends alone: its views, or its own dead letter
    (fetch or decode).

    Up to ``ahead`` posts are decoded while the model scores the batch before them: a batch's posts are
    emitted only as later ones are submitted, across batches, and the last are emitted when the bundle
    finishes. Without it the pool idled through every forward pass.
    """

    def __init__(self, size: int, crop_fraction: float, resize_mode: str, grid: int, max_pixels: int, ahead: int = 32,
                 max_bytes: int = DEFAULT_MAX_BYTES):
        super().__init__(size, crop_fraction, resize_mode, grid, max_pixels)
        self._ahead, self._max_bytes = max(1, ahead), max_bytes

    def setup(self):
        self._pool = ThreadPoolExecutor(max(1, os.cpu_count() or 1), thread_name_prefix="decode")

    def teardown(self):
        self._pool.shutdown(wait=False)

    def start_bundle(self):
        self._pending: collections.deque = collections.deque()  # (future, timestamp, windows) in input order

    def _one(self, post: Post) -> list:
        try:
            record = fetch(post.record, self._max_bytes)
            if isinstance(record, DeadLetter):
                return [beam.pvalue.TaggedOutput(DEAD_LETTER_TAG, record)]
            return list(_DecodeAndPrepare.process(self, dataclasses.replace(post, record=record)))
        except Exception as exc:  # a surprise in one post must not cost its batch
            return [beam.pvalue.TaggedOutput(DEAD_LETTER_TAG, post.record.dead_letter(
                STAGE_DECODE, PREPARE_FAILED, f"{type(exc).__name__}: {exc}"))]

    def process(self, posts, timestamp=beam.DoFn.TimestampParam, window=beam.DoFn.WindowParam):
        for post in posts:
            self._pending.append((self._pool.submit(self._one, post), timestamp, window))
            while len(self._pending) > self._ahead:
                yield from self._pending.popleft()[0].result()

    def finish_bundle(self):
        while self._pending:
            future, timestamp, window = self._pending.popleft()
            for output in future.result():
                if isinstance(output, beam.pvalue.TaggedOutput):
                    yield beam.pvalue.TaggedOutput(output.tag, WindowedValue(output.value, timestamp, [window]))
                else:
                    yield WindowedValue(output, timestamp, [window])


class _ToRow:
    """(post, its views' outputs) -> one output row: the most brand-like view's answer."""

    def __init__(self, card: ModelCard, scored_at: dt.datetime, with_embedding: bool, carried: tuple[tuple[str, str], ...]):
        self._card, self._scored_at, self._with_embedding = card, scored_at, with_embedding
        self._carried = carried
        self._counters = Counters(NAMESPACE)
        self._brand_mask = brand_mask(card.labels, card.neither_label)

    def __call__(self, item) -> dict:
        post, outputs = item
        chosen = best_view(outputs["scores"], self._brand_mask)
        if self._with_embedding:
            outputs = {**outputs, "embedding": outputs["embedding"][[0] * len(outputs["embedding"])]}  # the whole image's
        card = self._card
        view_to_photo = functools.partial(view_boxes_to_photo, height=post.image_size[0], width=post.image_size[1],
                                          grid=post.grid, crop_fraction=card.crop_fraction, resize_mode=card.resize_mode)
        to_photo = functools.partial(view_to_photo, view=chosen)
        row = score_row(post.post_id, post.given_uri or post.record.uri, post.content_hash, post.partition, outputs, chosen,
                        card.labels, card.neither_label, card.version_id, card.backbone_version, self._scored_at,
                        carry(post.record.metadata, self._carried), self._with_embedding, post.record.uri,
                        card.brand_thresholds, to_photo, card.tile_thresholds_for(post.grid), view_to_photo)
        self._counters.inc(SCORED)
        return row


def _score_failure(item) -> DeadLetter:
    post, message = item
    return post.record.dead_letter(STAGE_SCORE, SCORE_FAILED, message)


def carry(metadata: dict, carried: tuple[tuple[str, str], ...]) -> dict:
    """The carried columns of a record, under their output names (absent = null)."""
    return {out: metadata.get(name) for out, name in carried}


def build_pipeline(pipeline, config: ScoringConfig, card: ModelCard, carried: tuple[tuple[str, str], ...], run: str,
                   scored_at: dt.datetime) -> dict:
    """Wire the scoring job into ``pipeline``; returns the written files and dead letters."""
    spec = config.input_spec
    read = pipeline | "ReadPosts" >> ReadImages(spec, config.max_bytes)
    records = read["records"] | "CountRead" >> CountAs(NAMESPACE, READ)
    read_dead = read[DEAD_LETTER_TAG] | "CountReadDeadLetters" >> CountAs(NAMESPACE, READ)  # bad rows were read too
    identified = records | "IdentifyPosts" >> beam.ParDo(
        _Identify(config.id_column, config.date_column, spec.resolved_format, scored_at.date(), config.uri_column)
    ).with_outputs(DEAD_LETTER_TAG, main="posts")
    unique = (
        identified["posts"]
        | "GroupByPostId" >> beam.GroupByKey()
        | "OnePerPostId" >> beam.FlatMap(_one_per_post).with_outputs(DEAD_LETTER_TAG, main="posts")
    )
    prepared = (
        unique["posts"]
        | "BatchForDecode" >> beam.BatchElements(min_batch_size=config.batch_size, max_batch_size=config.batch_size)
        | "FetchDecodeAndPrepare" >> beam.ParDo(_DecodeAndPrepareBatch(
            card.input_size, card.crop_fraction, card.resize_mode, config.multi_crop, config.max_pixels,
            ahead=min(config.batch_size, DECODE_AHEAD_PER_THREAD * (os.cpu_count() or 1)),
            max_bytes=config.max_bytes)).with_outputs(DEAD_LETTER_TAG, main="views")
    )
    scored = prepared["views"] | "Score" >> KeyedInference(
        ImagesHandler(config.model, config.batch_size, progress_interval=config.progress_interval), NAMESPACE)
    rows = scored.results | "ToRows" >> beam.Map(_ToRow(card, scored_at, config.write_embedding, carried))
    score_dead = scored.failures | "ScoreFailures" >> beam.Map(_score_failure)
    arrow = schema.scores_schema(list(card.labels), [out for out, _ in carried], config.write_embedding, card.embedding_dim)
    written = (
        rows
        | "Progress" >> LogProgress("rows written", config.progress_interval)
        | "WriteParquet" >> WriteScoresParquet(config.out.scores_dir, arrow, run, config.out.rows_per_file)
    )
    dead = (
        (read_dead, identified[DEAD_LETTER_TAG], unique[DEAD_LETTER_TAG], prepared[DEAD_LETTER_TAG], score_dead)
        | "AllDeadLetters" >> beam.Flatten()
        | "WriteDeadLetters" >> WriteDeadLetters(f"{config.out.run_dir(run)}/dead_letters", NAMESPACE)
    )
    return {"written": written, "dead_letters": dead}


def _chunks(element: EmbeddingBatch, batch_size: int):
    """EmbeddingBatch (partition, meta table, float32 [N, D]) -> ((partition, meta slice), embeddings slice) of
    ``batch_size`` rows: the keyed elements HeadHandler scores, one head call each."""
    import pyarrow as pa

    partition, meta, embeddings = element
    for start in range(0, meta.num_rows, batch_size):
        part = meta.slice(start, batch_size)
        # A slice keeps its parent's buffers, and pickling it (to the shuffle) would copy all of them.
        part = pa.table({name: pa.concat_arrays(column.chunks) if column.num_chunks else pa.array([], column.type)
                         for name, column in zip(part.column_names, part.columns)})
        yield (partition, part), embeddings[start:start + part.num_rows]


class _RescoredTable:
    """((partition, meta table), head outputs) -> (partition, output table).

    The rows equal what :func:`beam_jobs.scoring.rows.score_row` makes for each post (tests check it),
    built column by column instead of one Python dict per post.
    """

    def __init__(self, card: ModelCard, scored_at: dt.datetime, carried: tuple[tuple[str, str], ...], arrow_schema):
        self._card, self._scored_at, self._carried, self._schema = card, scored_at, carried, arrow_schema
        self._counters = Counters(NAMESPACE)
        self._brand_mask = brand_mask(card.labels, card.neither_label)

    def __call__(self, item):
        (partition, meta), outputs = item
        table = self._table(meta, outputs)
        self._counters.inc(SCORED, table.num_rows)
        return partition, table

    def _table(self, meta, outputs):
        import pyarrow as pa
        import pyarrow.compute as pc

        n, card = meta.num_rows, self._card
        labels = pa.array(outputs["label"], pa.string())
        found = pc.not_equal(labels, card.neither_label) if card.neither_label is not None else pa.repeat(pa.scalar(True), n)
        scores = np.asarray(outputs["scores"], np.float32)
        resolved = schema.RESOLVED_URI if schema.RESOLVED_URI in meta.column_names else schema.IMAGE_URI
        columns = {
            schema.POST_ID: meta.column(schema.POST_ID), schema.IMAGE_URI: meta.column(schema.IMAGE_URI),
            schema.RESOLVED_URI: meta.column(resolved),
            schema.CONTENT_HASH: meta.column(schema.CONTENT_HASH), schema.LABEL: labels,
            schema.CONFIDENCE: pa.array(np.asarray(outputs["confidence"], np.float32)),
            schema.BRAND_SCORE: pa.array(brand_scores(scores, self._brand_mask)),
            schema.BRAND_FOUND: found,
            schema.MODEL_VERSION: pa.repeat(pa.scalar(card.version_id, pa.string()), n),
            schema.BACKBONE: pa.repeat(pa.scalar(card.backbone_version, pa.string()), n),
            schema.SCORED_AT: pa.repeat(pa.scalar(self._scored_at, self._schema.field(schema.SCORED_AT).type), n),
            schema.BRANDS: self._brands(labels, found, outputs["confidence"]),
            schema.BOX: _empty_lists(n, schema.BOX_TYPE),
        }
        for j, label in enumerate(card.labels):
            columns[schema.score_column(label)] = pa.array(scores[:, j])
        for out, name in self._carried:
            column = meta.column(name) if name in meta.column_names else pa.nulls(n, pa.string())
            columns[out] = column.cast(pa.string())
        return pa.Table.from_arrays([columns[f.name] for f in self._schema], schema=self._schema)

    def _brands(self, labels, found, confidence):
        """An embedding has no locations: a post's brands are its label alone when that is a brand, without a box
        (built as Arrow arrays: a Python dict per post cost more than the head)."""
        import pyarrow as pa

        brand_type = self._schema.field(schema.BRANDS).type
        mask = np.asarray(found.to_numpy(zero_copy_only=False), bool)
        k = int(mask.sum())
        items = pa.StructArray.from_arrays(
            [labels.filter(found), pa.array(np.asarray(confidence, np.float32)[mask]), _empty_lists(k, schema.BOX_TYPE),
             pa.nulls(k, pa.float32())], fields=list(brand_type.value_type))
        offsets = pa.array(np.concatenate([[0], np.cumsum(mask)]).astype(np.int32))
        return pa.ListArray.from_arrays(offsets, items, type=brand_type)


def _empty_lists(n: int, list_type):
    import pyarrow as pa

    return pa.ListArray.from_arrays(pa.array(np.zeros(n + 1, np.int32)), pa.array([], list_type.value_type), type=list_type)


def _rescore_failures(item):
    """A chunk the head could not score -> one dead letter per row."""
    (_, meta), message = item
    for post_id, uri in zip(meta.column(schema.POST_ID).to_pylist(), meta.column(schema.IMAGE_URI).to_pylist()):
        yield DeadLetter(uri=uri, stage=STAGE_SCORE, reason=SCORE_FAILED, message=message, record_id=post_id)


def build_rescore_pipeline(pipeline, config: RescoreConfig, card: ModelCard, batches,
                           carried: tuple[tuple[str, str], ...], run: str, scored_at: dt.datetime,
                           rows_per_partition: dict | None = None):
    """``batches``: a PCollection of EmbeddingBatch (partition, pyarrow table of post_id, image_uri, content_hash and
    the carried columns, float32 [N, D] embeddings) -> Parquet rows through the head only, batch by batch (counts ``read``);
    a chunk the head fails on is dead-lettered row by row. ``rows_per_partition``, when the input says it up front,
    sizes the output files without counting the scored rows first."""
    arrow = schema.scores_schema(list(card.labels), [out for out, _ in carried])
    counters = Counters(NAMESPACE)

    def count_read(element: EmbeddingBatch):
        counters.inc(READ, element.meta.num_rows)
        return element

    scored = (
        batches
        | "CountRead" >> beam.Map(count_read).with_output_types(EmbeddingBatch)
        | "Chunks" >> beam.FlatMap(_chunks, config.batch_size)
        | "RescoreWithHead" >> KeyedInference(HeadHandler(config.model, config.progress_interval), NAMESPACE)
    )
    (scored.failures | "RescoreFailures" >> beam.FlatMap(_rescore_failures)
     | "WriteDeadLetters" >> WriteDeadLetters(f"{config.out.run_dir(run)}/dead_letters", NAMESPACE))
    return (
        scored.results
        | "ToOutputTables" >> beam.Map(_RescoredTable(card, scored_at, carried, arrow))
        | "WriteParquet" >> WriteScoresParquetBatched(config.out.scores_dir, arrow, run, config.out.rows_per_file,
                                                      rows_per_partition)
    )
