"""Entry points of the scoring job and of rescoring: settle the run, run the pipeline, summarise.

A run is identified by its *run key* (input + model version + options that
change the rows): rerunning the same input with the same model replaces that
run's own files and summary, so output rows are never duplicated.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import logging
import time

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from beam_jobs.common.accounting import DEAD_LETTERED, READ, nest_counts, query_counters, reconcile, total, write_json
from beam_jobs.common.inference import inference_metrics
from beam_jobs.common.inputs import FORMAT_MANIFEST, manifest_kind, with_inferred_base_uri
from beam_jobs.scoring.config import NAMESPACE, RescoreConfig, ScoringConfig
from beam_jobs.scoring.model import read_model_card
from beam_jobs.scoring.parquet_sink import run_key
from beam_jobs.scoring.pipeline import SCORED, build_pipeline, build_rescore_pipeline
from beam_jobs.scoring.stored import EmbeddingBatch, ReadStoredEmbeddings
from brandlens import __version__, fileio
from brandlens.errors import ConfigError
from schemas import scores as schema
from schemas.columns import portable_names

log = logging.getLogger(__name__)

SUMMARY = "summary.json"


def manifest_columns(path: str) -> list[str]:
    """Column names of the first manifest matching ``path`` (CSV header, first JSON object, Parquet schema)."""
    matched = FileSystems.match([path])[0].metadata_list
    if not matched:
        raise ConfigError(f"input {path} matches no files")
    first = sorted(m.path for m in matched)[0]
    kind = manifest_kind(first) or "csv"
    with FileSystems.open(first) as f:
        if kind == "parquet":
            import pyarrow.parquet as pq

            return list(pq.ParquetFile(f).schema_arrow.names)
        text = io.TextIOWrapper(f, encoding="utf-8-sig", newline="")
        if kind == "csv":
            return next(csv.reader(text), [])
        for line in text:
            if line.strip():
                return list(json.loads(line))
    return []


def carried_columns(config: ScoringConfig) -> tuple[tuple[str, str], ...]:
    """(output name, input name) of the carried columns: ``--carry``, else every manifest column but id and uri.

    Output names are portable (:mod:`schemas.columns`): a column named like an
    output column (say a manifest's own ``label``) is kept as ``input_label``.
    """
    if config.carry is not None:
        columns = list(config.carry)
    elif config.input_spec.resolved_format != FORMAT_MANIFEST:
        return ()
    else:
        columns = [c for c in manifest_columns(config.input) if c not in (config.id_column, config.uri_column)]
    names = portable_names(columns, schema.RESERVED, (schema.SCORE_PREFIX,))
    return tuple((out, column) for column, out in names.items())


def _finish(kind: str, config, card, run: str, scored_at: dt.datetime, started: float, started_at: dt.datetime,
            result, extra: dict) -> dict:
    counts = nest_counts(query_counters(result, NAMESPACE))
    for name in (READ, SCORED):
        counts.setdefault(name, 0)
    counts.setdefault(DEAD_LETTERED, {})
    reconciliation = reconcile(counts, READ, (SCORED, DEAD_LETTERED))
    seconds = round(time.monotonic() - started, 1)
    summary = {
        "job": kind,
        "status": "ok" if reconciliation["ok"] else "counts do not reconcile",
        "run_key": run,
        "brandlens_version": __version__,
        "started_at": started_at.isoformat(timespec="seconds"),
        "scored_at": scored_at.isoformat(),
        "model": {"path": config.model, "version_id": card.version_id, "labels": list(card.labels),
                  "neither_label": card.neither_label, "threshold": card.threshold},
        "backbone": card.backbone,
        "output": config.out.scores_dir,
        "counts": counts,
        "reconciliation": reconciliation,
        "seconds": seconds,
        "posts_per_second": round(counts[READ] / max(seconds, 1e-9), 1),
        "inference": inference_metrics(result, NAMESPACE),
        **extra,
    }
    write_json(f"{config.out.run_dir(run)}/{SUMMARY}", summary)
    log.info("%s %s: read %d, scored %d, dead-lettered %d %s in %.1f s; counts %s", kind, run, counts[READ], counts[SCORED],
             total(counts[DEAD_LETTERED]), counts[DEAD_LETTERED], seconds, "reconcile" if reconciliation["ok"] else "DO NOT RECONCILE")
    return summary


def run(config: ScoringConfig) -> dict:
    """Score the posts; returns the summary (also at ``<output>/runs/<run key>/summary.json``)."""
    started, started_at = time.monotonic(), dt.datetime.now(dt.timezone.utc)
    config.runner.check_reachable(input=config.input, model=config.model, output=config.out.output)
    card = read_model_card(config.model)
    files = config.input_spec.check()
    config = with_inferred_base_uri(config)
    carried = carried_columns(config)
    scored_at = config.out.scored_at or started_at
    run_id = run_key(config.input, card.version_id, f"multi_crop={config.multi_crop}", f"embedding={config.write_embedding}")
    fileio.delete_tree(config.out.run_dir(run_id))
    log.info("scoring %s: %s (%s, %d files) with model %s -> %s", run_id, config.input, config.input_spec.resolved_format,
             files, card.version_id, config.out.scores_dir)
    pipeline = beam.Pipeline(options=config.runner.pipeline_options())
    build_pipeline(pipeline, config, card, carried, run_id, scored_at)
    result = pipeline.run()
    result.wait_until_finish()
    return _finish("score", config, card, run_id, scored_at, started, started_at, result,
                   {"input": config.input, "config": config.describe(), "carried_columns": dict(carried),
                    "renamed_columns": {name: out for out, name in carried if out != name}})


def _bottleneck_pattern(path: str) -> str | None:
    """A glob of bottleneck example shards for a bottleneck output folder, a folder of shards, or a glob."""
    from schemas import layout

    if path.endswith(layout.TFRECORD_SUFFIX) or "*" in path and "tfrecord" in path:
        return path
    for candidate in (f"{path.rstrip('/')}/{layout.EXAMPLES}/*{layout.TFRECORD_SUFFIX}", f"{path.rstrip('/')}/*{layout.TFRECORD_SUFFIX}"):
        if FileSystems.match([candidate])[0].metadata_list:
            return candidate
    return None


def _from_example(data: bytes, run_date: str):
    from schemas.bottleneck import ORIGINAL_VARIANT, from_example_bytes

    record = from_example_bytes(data)
    if record.variant != ORIGINAL_VARIANT:
        return []
    meta = {"post_id": record.uri, "image_uri": record.uri, "content_hash": record.content_hash, "dt": run_date,
            "carried": {"source_label": record.label, "source_split": record.split}}
    return [(meta, record.embedding)]


def _examples_batch(batch):
    """A batch of :func:`_from_example` items -> an EmbeddingBatch (partition, meta table, float32 [N, D])."""
    import numpy as np
    import pyarrow as pa

    metas = [meta for meta, _ in batch]
    columns = {name: [m[name] for m in metas] for name in (schema.POST_ID, schema.IMAGE_URI, schema.CONTENT_HASH)}
    for name in metas[0]["carried"]:
        columns[name] = [m["carried"][name] for m in metas]
    table = pa.table({name: pa.array(values, pa.string()) for name, values in columns.items()})
    return EmbeddingBatch(metas[0]["dt"], table, np.stack([embedding for _, embedding in batch]).astype(np.float32, copy=False))


def rescore(config: RescoreConfig) -> dict:
    """Relabel stored embeddings with a new model's head; no CNN runs."""
    started, started_at = time.monotonic(), dt.datetime.now(dt.timezone.utc)
    config.runner.check_reachable(embeddings=config.embeddings, model=config.model, output=config.out.output)
    card = read_model_card(config.model)
    scored_at = config.out.scored_at or started_at
    examples = _bottleneck_pattern(config.embeddings)
    pipeline = beam.Pipeline(options=config.runner.pipeline_options())
    if examples:
        carried = (("source_label", "source_label"), ("source_split", "source_split"))
        embeddings = (pipeline | "ReadExamples" >> beam.io.ReadFromTFRecord(examples)
                      | "Embeddings" >> beam.FlatMap(_from_example, scored_at.date().isoformat())
                      | "Batch" >> beam.BatchElements(min_batch_size=config.batch_size, max_batch_size=config.batch_size)
                      | "ToTables" >> beam.Map(_examples_batch).with_output_types(EmbeddingBatch))
        source = examples
    else:
        source = f"{config.embeddings.rstrip('/')}/**/*.parquet"
        files = FileSystems.match([source])[0].metadata_list
        if not files:
            raise ConfigError(f"no stored embeddings at {config.embeddings}: neither bottleneck TFRecords nor Parquet files")
        import pyarrow.parquet as pq

        with FileSystems.open(files[0].path) as f:
            names = pq.ParquetFile(f).schema_arrow.names
        if schema.EMBEDDING not in names:
            raise ConfigError(f"{files[0].path} has no '{schema.EMBEDDING}' column: score with --write-embedding first")
        fixed = {fl.name for fl in schema.FIXED_FIELDS} | {schema.EMBEDDING}
        carried = tuple((n, n) for n in names if n not in fixed and not n.startswith("score_"))
        uris = [schema.IMAGE_URI] + ([schema.RESOLVED_URI] if schema.RESOLVED_URI in names else [])
        columns = [schema.POST_ID, *uris, schema.CONTENT_HASH, schema.EMBEDDING] + [n for n, _ in carried]
        embeddings = (pipeline | "ParquetFiles" >> beam.Create(sorted(m.path for m in files))
                      | "ReadParquet" >> ReadStoredEmbeddings(columns))
    run_id = run_key("rescore", source, card.version_id)
    fileio.delete_tree(config.out.run_dir(run_id))
    build_rescore_pipeline(pipeline, config, card, embeddings, carried, run_id, scored_at)
    result = pipeline.run()
    result.wait_until_finish()
    return _finish("rescore", config, card, run_id, scored_at, started, started_at, result,
                   {"embeddings": source, "carried_columns": dict(carried)})
