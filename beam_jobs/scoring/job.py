"""Entry points of the scoring job and of rescoring: settle the run, run the pipeline, summarise, commit.

A run is identified by its *run key* (model version + what the input is, resolved;
``brandlens.scores_archive``): rerunning the same input with the same model, whatever
the options, replaces that run's own files and summary, so output rows are never
duplicated. The pipeline writes into a staging folder; the files become visible in one
journaled commit (``brandlens.commit``) after the run, so a kill leaves the old complete
output or the new one. Posts whose image could not be fetched (an image-store outage)
keep their previous row of the same run: a rerun never removes what it could not replace.
"""

from __future__ import annotations

import csv
import dataclasses
import datetime as dt
import io
import logging
import time

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from beam_jobs.common.accounting import DEAD_LETTERED, READ, nest_counts, query_counters, reconcile, total, write_json
from beam_jobs.common.inference import inference_metrics
from beam_jobs.common.inputs import FORMAT_MANIFEST, manifest_kind, with_inferred_base_uri
from beam_jobs.common.records import STAGE_FETCH
from beam_jobs.common.sources import manifest_rows, not_utf8, one_line
from beam_jobs.scoring.config import NAMESPACE, SCORES_DIR, RescoreConfig, ScoringConfig
from beam_jobs.scoring.model import read_model_card
from beam_jobs.scoring.parquet_sink import encode_arrow, kept_file_name, kept_rows, run_key
from beam_jobs.scoring.pipeline import SCORED, build_pipeline, build_rescore_pipeline
from beam_jobs.scoring.stored import EmbeddingBatch, ReadStoredEmbeddings, rows_per_partition
from brandlens import __version__, commit, fileio
from brandlens.errors import BrandlensError, ConfigError
from brandlens.imaging import TOO_LARGE
from brandlens.scores_archive import (
    check_schema, glob_below, input_identity, manifest_path, manifests, own_files, run_key_for, schema_fields,
)
from schemas import scores as schema
from schemas.columns import portable_names
from schemas.dead_letter import DeadLetter

log = logging.getLogger(__name__)

SUMMARY = "summary.json"


class RunRefused(BrandlensError):
    """A run that finished but was not committed (too many dead letters)."""


def manifest_columns(path: str) -> list[str]:
    """Column names of the first manifest matching ``path`` (CSV header, first JSON object, Parquet schema)."""
    matched = FileSystems.match([path])[0].metadata_list
    if not matched:
        raise ConfigError(f"input {path} matches no files")
    first = sorted(m.path for m in matched)[0]
    kind = manifest_kind(first) or "csv"
    try:
        with FileSystems.open(first) as f:
            if kind == "parquet":
                import pyarrow.parquet as pq

                return list(pq.ParquetFile(f).schema_arrow.names)
            if kind == "csv":
                header = next(csv.reader(io.TextIOWrapper(f, encoding="utf-8-sig", errors="surrogateescape", newline="")), [])
                if not_utf8(header):
                    raise ConfigError(f"manifest {first}: its header is not UTF-8 text")
                return header
            row = next((row for _, row in manifest_rows(f, kind) if isinstance(row, dict)), None)
            return list(row or [])
    except ConfigError:
        raise
    except Exception as exc:
        raise ConfigError(f"manifest {first} unreadable: {type(exc).__name__}: {one_line(exc)}") from None


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


def check_manifest_columns(config: ScoringConfig) -> None:
    """A manifest without the image uri (or post id) column fails upfront, not post by post."""
    if config.input_spec.resolved_format != FORMAT_MANIFEST:
        return
    columns = manifest_columns(config.input)
    missing = [c for c in (config.uri_column, config.id_column) if c not in columns]
    if missing:
        raise ConfigError(f"manifest {config.input} has no column {' or '.join(map(repr, missing))} "
                          f"(columns: {', '.join(columns) or 'none'}); see --uri-column / --id-column")


def _summary(kind: str, config, card, run: str, scored_at: dt.datetime, started: float, started_at: dt.datetime,
             result, extra: dict) -> dict:
    counts = nest_counts(query_counters(result, NAMESPACE))
    for name in (READ, SCORED):
        counts.setdefault(name, 0)
    counts.setdefault(DEAD_LETTERED, {})
    reconciliation = reconcile(counts, READ, (SCORED, DEAD_LETTERED))
    seconds = round(time.monotonic() - started, 1)
    return {
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


def _stage(config, run: str):
    """``config`` writing into a fresh staging folder of ``run`` (interrupted commits finished, old staging removed)."""
    manifests(config.out.output)
    commit.remove_stale_staging(config.out.run_dir(run))
    attempt = f"{config.out.run_dir(run)}/{commit.staging_name()}"
    return dataclasses.replace(config, out=dataclasses.replace(config.out, output=attempt))


def _fetch_failures(staged, run: str) -> set[str]:
    """Post ids this run could not fetch an image for (dead letters of the fetch stage)."""
    ids = set()
    for path in glob_below(staged.out.run_dir(run), "dead_letters*.jsonl"):
        for line in fileio.read_text(path).splitlines():
            letter = DeadLetter.from_json(line)
            if letter.stage == STAGE_FETCH and letter.reason != TOO_LARGE:
                ids.add(letter.record_id)
    return ids


def _refuse_past_dead_letter_share(config, staged, run: str, summary: dict) -> None:
    """With ``--max-dead-letter-share``, a run that lost more than that share of its posts commits nothing."""
    limit = getattr(config, "max_dead_letter_share", None)
    read, dead = summary["counts"][READ], total(summary["counts"][DEAD_LETTERED])
    if limit is None or not read or dead / read <= limit:
        return
    summary["status"] = f"refused: {dead} of {read} posts dead-lettered, above --max-dead-letter-share {limit}"
    write_json(f"{staged.out.run_dir(run)}/{SUMMARY}", summary)
    raise RunRefused(f"{summary['status']}; nothing committed, the previous output stays "
                     f"(this run's summary and dead letters: {staged.out.run_dir(run)})")


def _commit(kind: str, config, staged, run: str, identity: dict, arrow, summary: dict, legacy_keys=()) -> dict:
    """Keep previous rows of posts that could not be fetched, then commit the staged run (one journaled step).

    ``legacy_keys``: what this run was called before run keys ignored options and spelling;
    their files (archives from before manifests) are this run's previous files too.
    """
    output, attempt = config.out.output, staged.out.output
    scores_dir = config.out.scores_dir
    previous = manifests(output).get(run)
    if previous is not None:
        previous_files = [f"{scores_dir}/{name}" for name in previous.get("files", [])]
    else:  # an archive from before manifests: this run's part files by name
        previous_files = [path for key in (run, *legacy_keys)
                          for path in glob_below(scores_dir, f"{schema.PARTITION}=*/part-{key}-*.parquet")]
    _refuse_past_dead_letter_share(config, staged, run, summary)
    failed = _fetch_failures(staged, run)
    kept = 0
    if failed and previous_files:
        try:
            tables = kept_rows(previous_files, failed, arrow)
        except ValueError as exc:
            raise ConfigError(f"{len(failed)} posts could not be fetched and their previous rows cannot be kept ({exc}); "
                              f"nothing committed: rerun when their images are readable") from None
        for partition, table in tables.items():
            fileio.write_bytes(f"{staged.out.scores_dir}/{schema.PARTITION}={partition}/{kept_file_name(run)}",
                               encode_arrow([table], arrow))
            kept += table.num_rows
    summary["counts"]["kept_previous"] = kept
    write_json(f"{staged.out.run_dir(run)}/{SUMMARY}", summary)

    staged_files = fileio.list_files(attempt)
    moves = [(path, output + path[len(attempt):]) for path in staged_files]
    files = sorted(dst[len(scores_dir) + 1:] for _, dst in moves if dst.startswith(scores_dir + "/"))
    run_dir = config.out.run_dir(run)
    old_run_files = [p for p in fileio.list_files(run_dir) if "/" not in p[len(run_dir) + 1:]]
    record = {"kind": kind, "run_key": run, "model_version": summary["model"]["version_id"], "input": identity,
              "schema": schema_fields(arrow), "files": files, "rows": summary["counts"][SCORED] + kept,
              "scored_at": summary["scored_at"], "committed_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
    commit.commit(manifest_path(output, run), moves, previous_files + old_run_files, record, cleanup=(attempt,))
    if kept:
        log.info("%s %s: %d posts could not be fetched and keep their previous rows", kind, run, kept)
    return summary


def _log(kind: str, run: str, summary: dict) -> None:
    counts = summary["counts"]
    log.info("%s %s: read %d, scored %d, dead-lettered %d %s in %.1f s; counts %s", kind, run, counts[READ], counts[SCORED],
             total(counts[DEAD_LETTERED]), counts[DEAD_LETTERED], summary["seconds"],
             "reconcile" if summary["reconciliation"]["ok"] else "DO NOT RECONCILE")


def output_schema(config: ScoringConfig, card, carried):
    return schema.scores_schema(list(card.labels), [out for out, _ in carried], config.write_embedding, card.embedding_dim)


def checked_card(export_dir: str):
    """The export's model card, verified against its own SavedModel (``brandlens.model_check``)."""
    from brandlens.model_check import verify_export

    card = read_model_card(export_dir)
    verify_export(export_dir, card.labels, card.neither_label, card.threshold, card.version_id,
                  card.backbone.get("embedding_dim"))
    return card


def run(config: ScoringConfig) -> dict:
    """Score the posts; returns the summary (also at ``<output>/runs/<run key>/summary.json``)."""
    started, started_at = time.monotonic(), dt.datetime.now(dt.timezone.utc)
    config.runner.check_reachable(input=config.input, model=config.model, output=config.out.output)
    card = checked_card(config.model)
    files = config.input_spec.check()
    check_manifest_columns(config)
    config = with_inferred_base_uri(config)
    carried = carried_columns(config)
    scored_at = config.out.scored_at or started_at
    identity = input_identity(config.input)
    run_id = run_key_for(config.out.output, "score", card.version_id, identity)
    arrow = output_schema(config, card, carried)
    check_schema(config.out.output, run_id, arrow)
    staged = _stage(config, run_id)
    log.info("scoring %s: %s (%s, %d files) with model %s -> %s", run_id, config.input, config.input_spec.resolved_format,
             files, card.version_id, config.out.scores_dir)
    pipeline = beam.Pipeline(options=config.runner.pipeline_options())
    build_pipeline(pipeline, staged, card, carried, run_id, scored_at)
    result = pipeline.run()
    result.wait_until_finish()
    summary = _summary("score", config, card, run_id, scored_at, started, started_at, result,
                       {"input": config.input, "input_identity": identity, "config": config.describe(),
                        "carried_columns": dict(carried),
                        "renamed_columns": {name: out for out, name in carried if out != name}})
    legacy = [run_key(config.input, card.version_id, f"multi_crop={m}", f"embedding={e}") for m in range(5) for e in (False, True)]
    _commit("score", config, staged, run_id, identity, arrow, summary, legacy)
    _log("score", run_id, summary)
    return summary


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
    card = checked_card(config.model)
    scored_at = config.out.scored_at or started_at
    examples = _bottleneck_pattern(config.embeddings)
    pipeline = beam.Pipeline(options=config.runner.pipeline_options())
    counts = None  # rows per partition, where the input's footers say it
    if examples:
        carried = (("source_label", "source_label"), ("source_split", "source_split"))
        embeddings = (pipeline | "ReadExamples" >> beam.io.ReadFromTFRecord(examples)
                      | "Embeddings" >> beam.FlatMap(_from_example, scored_at.date().isoformat())
                      | "Batch" >> beam.BatchElements(min_batch_size=config.batch_size, max_batch_size=config.batch_size)
                      | "ToTables" >> beam.Map(_examples_batch).with_output_types(EmbeddingBatch))
        source = examples
    else:
        source = f"{config.embeddings.rstrip('/')}/**/*.parquet"
        files, skipped = own_files(config.embeddings)  # committed part files only
        if not files and fileio.exists(f"{config.embeddings.rstrip('/')}/{SCORES_DIR}"):  # the job folder was given
            files, skipped = own_files(f"{config.embeddings.rstrip('/')}/{SCORES_DIR}")
        if skipped:
            log.warning("rescore leaves out %d files under %s that are not its part files: %s", len(skipped),
                        config.embeddings, ", ".join(skipped[:5]))
        if not files:
            raise ConfigError(f"no stored embeddings at {config.embeddings}: neither bottleneck TFRecords nor scoring part files")
        import pyarrow.parquet as pq

        with FileSystems.open(files[0]) as f:
            names = pq.ParquetFile(f).schema_arrow.names
        if schema.EMBEDDING not in names:
            raise ConfigError(f"{files[0]} has no '{schema.EMBEDDING}' column: score with --write-embedding first")
        fixed = {fl.name for fl in schema.FIXED_FIELDS + schema.EVIDENCE_FIELDS} | {schema.EMBEDDING}
        carried = tuple((n, n) for n in names if n not in fixed and not n.startswith("score_"))
        uris = [schema.IMAGE_URI] + ([schema.RESOLVED_URI] if schema.RESOLVED_URI in names else [])
        columns = [schema.POST_ID, *uris, schema.CONTENT_HASH, schema.EMBEDDING] + [n for n, _ in carried]
        embeddings = (pipeline | "PartFiles" >> beam.Create(files)
                      | "ReadParquet" >> ReadStoredEmbeddings(columns))
        counts = rows_per_partition(files)
    identity = input_identity(source)
    run_id = run_key_for(config.out.output, "rescore", card.version_id, identity)
    arrow = schema.scores_schema(list(card.labels), [out for out, _ in carried])
    check_schema(config.out.output, run_id, arrow)
    staged = _stage(config, run_id)
    build_rescore_pipeline(pipeline, staged, card, embeddings, carried, run_id, scored_at, counts)
    result = pipeline.run()
    result.wait_until_finish()
    summary = _summary("rescore", config, card, run_id, scored_at, started, started_at, result,
                       {"embeddings": source, "input_identity": identity, "carried_columns": dict(carried)})
    _commit("rescore", config, staged, run_id, identity, arrow, summary, [run_key("rescore", source, card.version_id)])
    _log("rescore", run_id, summary)
    return summary
