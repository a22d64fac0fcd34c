"""The bottleneck pipeline: labelled images -> embedded tf.train.Examples per split.

Read -> CheckLabels -> Redistribute -> Fetch -> HashAndLabel -> JoinCache
(CoGroupByKey by content hash: duplicates meet, and so do their cached
embeddings) -> Plan (dedup, decode, variants; cached variants are ready, the
rest go to the CNN) -> Embed -> WriteExamples / WriteCache / WriteDeadLetters.

tensorflow-transform runs afterwards as its own pipeline (transform_pipeline.py),
once the driver knows the training split is not empty.
"""

from __future__ import annotations

import collections
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import NamedTuple

import apache_beam as beam

from beam_jobs.bottlenecks import augment as aug
from beam_jobs.bottlenecks.config import NAMESPACE, BottleneckConfig
from beam_jobs.bottlenecks.dedup import Candidate, choose
from beam_jobs.bottlenecks.labels import Rejected, annotate
from beam_jobs.bottlenecks.splits import assign_split
from beam_jobs.common.accounting import READ, WRITTEN, CountAs, Counters, WriteDeadLetters, counter_name
from beam_jobs.common.cache import ReadEmbeddingCache, WriteEmbeddingCache, cache_folder
from beam_jobs.common.embedding import FAILED_TAG, EmbedImages
from beam_jobs.common.images import FetchImageBytes, decode, fetch
from beam_jobs.common.progress import LogProgress
from beam_jobs.common.records import DEAD_LETTER_TAG, EMBED_FAILED, STAGE_EMBED, STAGE_FETCH, STAGE_LABEL, ImageRecord
from beam_jobs.common.sources import FORMAT_WEBDATASET, ReadImages
from brandlens.backbones.artifact import BackboneFingerprint
from brandlens.imaging import ImageDecodeError, content_hash, upright_size
from brandlens.preprocess import decode_side
from schemas import layout
from schemas.bottleneck import ORIGINAL_VARIANT, SPLITS, BottleneckRecord, encode_cut_map, to_example_bytes
from schemas.dead_letter import UNREADABLE, DeadLetter

log = logging.getLogger(__name__)

REQUESTS_TAG = "requests"
EXAMPLES = "examples"
CACHE_HITS = "cache_hits"
CNN_IMAGES = "cnn_images"
TILES_LEFT_OUT = "tiles_left_out"  # tiles of logo photos that are no example: they cut a logo (or no --background-crops)


@dataclass(frozen=True)
class ExampleKey:
    """Everything an example holds but its embedding: what travels with the pixels to the CNN."""

    content_hash: str
    uri: str
    record_id: str
    label: str
    split: str
    variant: str

    def record(self, value, backbone: str) -> BottleneckRecord:
        """``value``: the embedding, or (embedding, cut map) with ``--cut`` (the map as float16 bytes or an array)."""
        if isinstance(value, tuple):
            embedding, cut_map = value
            cut_map = cut_map if isinstance(cut_map, bytes) else encode_cut_map(cut_map)
        else:
            embedding, cut_map = value, b""
        return BottleneckRecord(self.content_hash, self.uri, self.label, self.split, self.variant, embedding, backbone,
                                cut_map)


class BottleneckOutputs(NamedTuple):
    examples: beam.PCollection        # BottleneckRecord, every split and variant
    dead_letters: beam.PCollection    # DeadLetter
    new_cache_entries: beam.PCollection  # (content_hash, variant, embedding)


def _annotate(record: ImageRecord, labels, fractions, content_hash_: str | None = None, label_map=()):
    """(Candidate or None, DeadLetter or None) for a record; the split needs the content hash."""
    try:
        annotation = annotate(record.metadata, labels, label_map)
    except Rejected as exc:
        return None, record.dead_letter(STAGE_LABEL, exc.reason, exc.message)
    if content_hash_ is None:
        return None, None
    split = annotation.split or assign_split(content_hash_, fractions)
    return Candidate(record.uri, record.record_id, annotation.label, split, annotation.box), None


class _CheckLabelsDoFn(beam.DoFn):
    """Dead-letter rows with missing or unknown labels before any bytes are read for them."""

    def __init__(self, labels, label_map=()):
        self._labels, self._label_map = labels, label_map

    def process(self, record: ImageRecord):
        _, dead = _annotate(record, self._labels, None, None, self._label_map)
        yield record if dead is None else beam.pvalue.TaggedOutput(DEAD_LETTER_TAG, dead)


class _HashAndLabelDoFn(beam.DoFn):
    """``keep_bytes`` False: the bytes do not travel through the cache join (a runner may hold a whole
    shuffle in memory: ~4 MB per phone photo); the plan reads them again for the images the CNN needs."""

    def __init__(self, labels, fractions, label_map=(), keep_bytes: bool = True):
        self._labels, self._fractions, self._label_map, self._keep_bytes = labels, fractions, label_map, keep_bytes

    def process(self, record: ImageRecord):
        digest = content_hash(record.data)
        candidate, dead = _annotate(record, self._labels, self._fractions, digest, self._label_map)
        if dead is not None:
            yield beam.pvalue.TaggedOutput(DEAD_LETTER_TAG, dead)
        else:
            yield digest, (candidate, record.data if self._keep_bytes else None)


class _Planned(NamedTuple):
    digest: str
    members: list
    decision: object
    cached: dict
    wanted: list
    missing: list
    rgb: object  # decoded pixels, a DeadLetter, or None when every wanted variant is cached
    tile_labels: dict  # variant name -> label, for the tiles of a photo with logo boxes
    tiles_left_out: int  # of those: tiles that cut a logo (or logo-free ones without background examples)


class _PlanDoFn(beam.DoFn):
    """Per distinct image: keep one record, reuse cached variants, send the rest to the CNN (batches of images)."""

    def __init__(self, config: BottleneckConfig, backbone: str, min_side: int | None = None, tile_min_side: int | None = None):
        self._min_side = min_side  # decode JPEGs at the scoring job's reduced scale; boxes (logos, backgrounds) need full size
        self._tile_min_side = tile_min_side or min_side  # tiles: the scale the scoring job's --multi-crop decodes at
        self._tiles = config.tiles
        self._augment = config.augment
        self._logo_crops = config.logo_crops
        self._background_label = config.background_label if config.background_crops else None
        self._empty_tile_label = self._background_label  # a logo-free tile of a logo photo is a background example
        self._logo_margin = config.logo_margin
        self._max_pixels = config.max_pixels
        self._max_bytes = config.max_bytes
        self._backbone = backbone
        self._counters = Counters(NAMESPACE)

    def _wanted(self, split: str, boxes) -> list[aug.Variant]:
        if split != "train":
            return aug.variants(ORIGINAL_VARIANT)
        return aug.variants(ORIGINAL_VARIANT, self._augment, boxes if self._logo_crops else (), self._logo_margin,
                            boxes if self._background_label else (), self._tiles)

    def setup(self):
        self._threads = max(1, os.cpu_count() or 1)
        self._pool = ThreadPoolExecutor(self._threads, thread_name_prefix="decode")

    def teardown(self):
        self._pool.shutdown(wait=False)

    def process(self, batch):
        """A batch of distinct images (with their cache entries), decoded by one thread per core: Pillow's decoders
        release the GIL, and a phone photo's decode costs as much as its forward pass. At most two images per
        thread are decoded ahead (a logo crop decodes a phone photo in full). Counting and emitting stay on the
        bundle's thread, where Beam records metrics; each image still ends alone."""
        ahead: collections.deque = collections.deque()
        for element in batch:
            ahead.append(self._pool.submit(self._pixels_of, element))
            if len(ahead) >= 2 * self._threads:
                yield from self._emit_planned(ahead.popleft().result())
        while ahead:
            yield from self._emit_planned(ahead.popleft().result())

    def _emit_planned(self, planned):
        if planned is not None:  # else: cache entries of images not in this run
            yield from self._emit(planned)

    def _pixels_of(self, element):
        digest, group = element
        members = list(group["candidates"])
        return self._pixels(digest, members, group["cache"]) if members else None

    def _pixels(self, digest: str, members: list, cache_entries) -> _Planned:
        """Everything but counting and emitting: which variants, and the decoded image where the CNN needs some
        (no Beam metrics here, so it may run on another thread)."""
        decision = choose([candidate for candidate, _ in members])
        kept = decision.kept
        data = next(d for c, d in members if c == kept)
        cached: dict = {}
        for variant, embedding in cache_entries:
            cached.setdefault(variant, embedding)
        wanted = self._wanted(kept.split, decision.boxes)
        record = None if data is None else ImageRecord(kept.uri, kept.record_id, data=data)
        tile_labels: dict = {}
        tiles_left_out = 0
        if decision.boxes and any(v.kind == aug.TILE for v in wanted):
            record = record if record is not None else self._read_again(kept, digest)
            tile_labels = self._tile_labels(record, kept.label, decision.boxes, wanted)
            kept_variants = [v for v in wanted if v.kind != aug.TILE or tile_labels.get(v.name)]
            tiles_left_out, wanted = len(wanted) - len(kept_variants), kept_variants
        missing = [v for v in wanted if v.name not in cached]
        rgb = None
        if missing or isinstance(record, DeadLetter):
            kinds = {v.kind for v in missing}
            min_side = (None if kinds & {aug.LOGO, aug.BACKGROUND} else
                        self._tile_min_side if aug.TILE in kinds else self._min_side)
            rgb = record if record is not None else self._read_again(kept, digest)
            if isinstance(rgb, ImageRecord):
                rgb = decode(rgb, self._max_pixels, min_side)
        return _Planned(digest, members, decision, cached, wanted, missing, rgb, tile_labels, tiles_left_out)

    def _tile_labels(self, record, label: str, boxes, wanted) -> dict:
        """Variant name -> label of the tiles of a photo with logo boxes, placed on its upright full-size header;
        tiles that cut a logo get none (nor logo-free ones without background examples)."""
        if not isinstance(record, ImageRecord):
            return {}
        try:
            height, width = upright_size(record.data)
        except ImageDecodeError:
            return {}  # the decode says why
        grid = next(v.grid for v in wanted if v.kind == aug.TILE)
        return {aug.tile_variant_name(grid, i): lab
                for i, lab in enumerate(aug.tile_labels(boxes, height, width, grid, label, self._empty_tile_label))}

    def _emit(self, planned: _Planned):
        digest, decision, kept, rgb = planned.digest, planned.decision, planned.decision.kept, planned.rgb
        if isinstance(rgb, DeadLetter):  # identical bytes: every copy fails alike
            for candidate, _ in planned.members:
                yield beam.pvalue.TaggedOutput(DEAD_LETTER_TAG, DeadLetter(
                    uri=candidate.uri, stage=rgb.stage, reason=rgb.reason, message=rgb.message, record_id=candidate.record_id))
            return
        requests = list(self._variant_pixels(rgb, digest, planned.missing)) if planned.missing else []
        self._counters.inc(TILES_LEFT_OUT, planned.tiles_left_out)

        def key(name: str) -> ExampleKey:
            label = self._background_label if name.startswith("bg-") else planned.tile_labels.get(name, kept.label)
            return ExampleKey(digest, kept.uri, kept.record_id, label, kept.split, name)

        for variant in planned.wanted:
            if variant.name in planned.cached:
                self._counters.inc(CACHE_HITS)
                yield key(variant.name).record(planned.cached[variant.name], self._backbone)
        for variant, pixels in requests:
            yield beam.pvalue.TaggedOutput(REQUESTS_TAG, (key(variant.name), pixels))
        if requests:
            self._counters.inc(CNN_IMAGES)
        self._count_duplicates(decision)

    def _read_again(self, kept, digest: str):
        """The kept image's bytes, read again; a DeadLetter if it is gone or changed since it was hashed."""
        record = fetch(ImageRecord(kept.uri, kept.record_id), self._max_bytes)
        if isinstance(record, ImageRecord) and content_hash(record.data) != digest:
            return record.dead_letter(STAGE_FETCH, UNREADABLE, "the file changed while the job read it")
        return record

    def _variant_pixels(self, rgb, digest: str, variants):
        for variant in variants:
            try:
                pixels = aug.render(rgb, digest, variant, self._logo_margin)
                if pixels is None:
                    self._counters.inc("background_strips_too_small")
                    continue
                yield variant, pixels
            except ValueError as exc:  # a logo box beyond the image: the image itself is fine
                self._counters.inc("logo_boxes_outside_image")
                log.warning("no logo crop %s for %s: %s", variant.name, digest[:12], exc)

    def _count_duplicates(self, decision) -> None:
        if decision.dropped:
            self._counters.inc("duplicates", len(decision.dropped))
            self._counters.inc("duplicates_cross_split", decision.cross_split)
            self._counters.inc("duplicates_label_conflict", decision.label_conflicts)
            kept = decision.kept
            if decision.cross_split:
                log.info("duplicate of %s kept in %s only, not in %s", kept.uri, kept.split,
                         ", ".join(sorted({c.split for c in decision.dropped if c.split != kept.split})))
            if decision.label_conflicts:
                log.warning("identical images labelled differently: kept %s as %r, dropped %s", kept.uri, kept.label,
                            ", ".join(f"{c.uri} ({c.label!r})" for c in decision.dropped if c.label != kept.label))


def _embedding_failure(failure, counters: Counters):
    key, message = failure
    if key.variant == ORIGINAL_VARIANT:
        yield DeadLetter(uri=key.uri, stage=STAGE_EMBED, reason=EMBED_FAILED, message=message, record_id=key.record_id)
    else:
        counters.inc("variant_failures")
        log.warning("variant %s of %s not embedded: %s", key.variant, key.uri, message)


class WriteExamples(beam.PTransform):
    """BottleneckRecords -> ``examples/<split>-SSSSS-of-NNNNN.tfrecord.gz`` (GZIP tf.train.Example).

    Counts ``examples/<split>`` (all variants) and, for originals, ``written/<split>``
    and ``labels/<split>/<label>``.
    """

    def __init__(self, output: str, num_shards: int = 0):
        super().__init__()
        self._output, self._num_shards = output, num_shards

    def expand(self, records):
        counters = Counters(NAMESPACE)

        def count(record: BottleneckRecord):
            counters.inc(counter_name(EXAMPLES, record.split))
            if record.variant == ORIGINAL_VARIANT:
                counters.inc(counter_name(WRITTEN, record.split))
                counters.inc(f"labels/{record.split}/{record.label}")
            return record

        by_split = records | "Count" >> beam.Map(count) | "BySplit" >> beam.Partition(
            lambda record, _: SPLITS.index(record.split), len(SPLITS))
        for split, part in zip(SPLITS, by_split):
            (part
             | f"Serialize{split.title()}" >> beam.Map(to_example_bytes)
             | f"Write{split.title()}" >> beam.io.WriteToTFRecord(
                 f"{self._output}/{layout.EXAMPLES}/{split}", file_name_suffix=layout.TFRECORD_SUFFIX,
                 num_shards=self._num_shards, compression_type=beam.io.filesystem.CompressionTypes.GZIP))
        return records


def build_pipeline(pipeline, config: BottleneckConfig, artifact_dir: str, fingerprint: BackboneFingerprint,
                   run_id: str) -> BottleneckOutputs:
    """Add the bottleneck steps to ``pipeline``; writes examples, new cache entries and dead letters."""
    backbone = fingerprint.version
    counters = Counters(NAMESPACE)
    labels, fractions = config.labels, config.split_fractions
    spec = config.input_spec

    read = pipeline | "Read" >> ReadImages(spec, config.max_bytes)
    records = read["records"] | "CountRead" >> CountAs(NAMESPACE, READ)
    read_dead = read[DEAD_LETTER_TAG] | "CountReadDeadLetters" >> CountAs(NAMESPACE, READ)

    checked = records | "CheckLabels" >> beam.ParDo(_CheckLabelsDoFn(labels, config.label_map)).with_outputs(DEAD_LETTER_TAG, main="records")
    to_fetch = checked["records"]
    if spec.resolved_format != FORMAT_WEBDATASET:  # shards were spread already, and their records carry bytes
        to_fetch = to_fetch | "Redistribute" >> beam.Reshuffle()
    fetched = to_fetch | "Fetch" >> FetchImageBytes(config.max_bytes)
    hashed = (fetched["records"]
              | "LogFetched" >> LogProgress("images read", config.progress_interval)
              | "HashAndLabel" >> beam.ParDo(_HashAndLabelDoFn(labels, fractions, config.label_map,
                                                                keep_bytes=spec.resolved_format == FORMAT_WEBDATASET))
              .with_outputs(DEAD_LETTER_TAG, main="candidates"))

    if config.use_cache:
        folder = cache_folder(config.cache, fingerprint.directory_name, config.cut)
        cached = pipeline | "ReadCache" >> ReadEmbeddingCache(folder, backbone, NAMESPACE)
    else:
        cached = pipeline | "NoCache" >> beam.Create([])
    planned = (
        {"candidates": hashed["candidates"], "cache": cached}
        | "JoinCache" >> beam.CoGroupByKey()
        | "BatchForDecode" >> beam.BatchElements(min_batch_size=config.batch_size, max_batch_size=config.batch_size)
        | "Plan" >> beam.ParDo(_PlanDoFn(config, backbone, decode_side(fingerprint.input_size, fingerprint.crop_fraction),
                                         decode_side(fingerprint.input_size, fingerprint.crop_fraction, config.tiles))).with_outputs(REQUESTS_TAG, DEAD_LETTER_TAG, main="ready")
    )
    embedded = planned[REQUESTS_TAG] | "Embed" >> EmbedImages(
        artifact_dir, config.batch_size, NAMESPACE, config.progress_interval, cut=config.cut)
    new_examples = embedded["embeddings"] | "ToRecords" >> beam.MapTuple(lambda key, emb: key.record(emb, backbone))
    embed_dead = embedded[FAILED_TAG] | "EmbedFailures" >> beam.FlatMap(_embedding_failure, counters)

    examples = (planned["ready"], new_examples) | "AllExamples" >> beam.Flatten()
    examples | "WriteExamples" >> WriteExamples(config.output, config.num_shards)

    new_entries = embedded["embeddings"] | "CacheEntries" >> beam.MapTuple(
        lambda key, value: (key.content_hash, key.variant,
                            value if not isinstance(value, tuple) else (value[0], encode_cut_map(value[1]))))
    if config.use_cache:
        new_entries | "WriteCache" >> WriteEmbeddingCache(
            cache_folder(config.cache, fingerprint.directory_name, config.cut), run_id, backbone, config.num_shards)

    dead_letters = (
        (read_dead, checked[DEAD_LETTER_TAG], fetched[DEAD_LETTER_TAG], hashed[DEAD_LETTER_TAG],
         planned[DEAD_LETTER_TAG], embed_dead)
        | "AllDeadLetters" >> beam.Flatten()
    )
    dead_letters | "WriteDeadLetters" >> WriteDeadLetters(
        f"{config.output}/{layout.DEAD_LETTERS}/{layout.DEAD_LETTERS}", NAMESPACE)
    return BottleneckOutputs(examples, dead_letters, new_entries)
