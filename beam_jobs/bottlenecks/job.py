"""Entry point of the bottleneck job: materialise the backbone, run both pipelines, summarise.

Two pipelines run one after the other: the embedding pipeline writes examples,
dead letters and cache entries; only when its counters show training examples
does the tensorflow-transform pipeline run (an empty train split would
otherwise fail deep inside TFT). The summary reconciles
``read = written + dead_lettered + duplicates``.

Both pipelines write into a staging folder inside the output (``_attempt-<run id>/``,
which readers of ``examples/``, ``transformed/`` and ``transform/`` never list); only a
finished run is committed over the old outputs, in one journaled step recorded in
``_manifest.json`` (``brandlens.commit``). So ``--overwrite`` replaces the old outputs
only once the new ones are complete, and a kill at any moment leaves one complete run.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import secrets
import shutil
import tempfile
import time
from pathlib import Path

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from beam_jobs.bottlenecks.config import NAMESPACE, BottleneckConfig
from beam_jobs.bottlenecks.pipeline import CACHE_HITS, CNN_IMAGES, EXAMPLES, build_pipeline
from beam_jobs.bottlenecks import run_reuse, transform_reuse
from beam_jobs.common.accounting import DEAD_LETTERED, READ, WRITTEN, nest_counts, query_counters, reconcile, total, write_json
from beam_jobs.common.inference import inference_metrics
from beam_jobs.common.inputs import with_inferred_base_uri
from brandlens import __version__, commit, fileio
from brandlens.backbones.artifact import cut_map_shape as cut_map_shape_of, read_fingerprint, verify_weights
from brandlens.errors import BrandlensError, ConfigError
from schemas import layout
from schemas.bottleneck import LABEL_VOCABULARY, SPLITS

log = logging.getLogger(__name__)

JOB = "bottlenecks"
_OUTPUT_ENTRIES = (layout.EXAMPLES, layout.TRANSFORMED, layout.TRANSFORM, layout.DEAD_LETTERS, layout.SUMMARY, layout.BACKBONE)
_FOLDERS = (layout.EXAMPLES, layout.TRANSFORMED, layout.TRANSFORM, layout.DEAD_LETTERS)


class EmptyTrainingSplit(BrandlensError):
    """No image made it into the training split, so there is nothing to analyse or train on."""


def new_run_id(now: dt.datetime | None = None) -> str:
    now = now or dt.datetime.now(dt.timezone.utc)
    return f"bl-{now:%Y%m%dT%H%M%SZ}-{secrets.token_hex(4)}"


def _existing_outputs(output: str) -> list[str]:
    found = []
    for name in _OUTPUT_ENTRIES:
        path = f"{output}/{name}"
        files = FileSystems.match([f"{path}/**"])[0].metadata_list if name in _FOLDERS else []
        if files or FileSystems.exists(path):
            found.append(path)
    return found


MANIFEST = "_manifest.json"  # the commit record of the run the folder holds


def prepare_output(output: str, overwrite: bool) -> list[str]:
    """Finish an interrupted commit, remove killed runs' staging, and refuse to replace a run without ``overwrite``.

    Returns the existing outputs (replaced only when the new run commits).
    """
    commit.recover(f"{output}/{MANIFEST}")
    commit.remove_stale_staging(output)
    existing = _existing_outputs(output)
    if existing and not overwrite:
        raise ConfigError(f"{output} already holds the outputs of a run ({', '.join(existing)}); "
                          "pass --overwrite to replace them or choose another --output")
    return existing


def commit_output(output: str, staging: str, run_id: str, status: str) -> None:
    """Move a staged run's files over the old outputs, in one journaled step."""
    moves = [(path, output + path[len(staging):]) for path in fileio.list_files(staging)]
    old = [path for entry in _existing_outputs(output) for path in (fileio.list_files(entry) or [entry])]
    commit.commit(f"{output}/{MANIFEST}", moves, old, {"job": JOB, "run_id": run_id, "status": status,
                                                       "files": sorted(dst[len(output) + 1:] for _, dst in moves)},
                  cleanup=(staging,))


def _delete_quietly(path: str) -> None:
    try:
        fileio.delete_tree(path)
    except Exception as exc:  # leftovers in a temp folder are not worth failing a finished run
        log.warning("could not delete %s: %s", path, exc)


def _run_embedding(config: BottleneckConfig, artifact_dir: str, fingerprint, run_id: str) -> tuple[dict[str, int], dict]:
    """The job's counters and RunInference's metrics."""
    pipeline = beam.Pipeline(options=config.runner.pipeline_options())
    build_pipeline(pipeline, config, artifact_dir, fingerprint, run_id)
    result = pipeline.run()
    result.wait_until_finish()
    return query_counters(result, NAMESPACE), inference_metrics(result, NAMESPACE)


def _run_transform(config: BottleneckConfig, embedding_dim: int, run_id: str) -> str:
    """Run the TFT pipeline; returns a folder holding the TFTransformOutput that this process can read.

    TensorFlow writes the transform and TFT's temporary files with its own file
    I/O, which does not reach a GCS emulator or other FileSystems-only stores.
    When this machine runs the workers (DirectRunner, portable LOOPBACK) and the
    output is remote, those go to a local folder and the transform is then
    published through Beam's FileSystems; distributed runners write them in place.
    """
    local = config.runner.is_local and fileio.is_remote(config.output)
    scratch = tempfile.mkdtemp(prefix="brandlens-tft-") if local else None
    temp_dir = f"{scratch}/tmp" if local else f"{config.output}/.tft-tmp-{run_id}"
    transform_dir = f"{scratch}/{layout.TRANSFORM}" if local else f"{config.output}/{layout.TRANSFORM}"
    from beam_jobs.bottlenecks.transform_pipeline import build_transform_pipeline  # imports TF: only when it runs

    try:
        pipeline = beam.Pipeline(options=config.runner.pipeline_options())
        build_transform_pipeline(pipeline, config.output, embedding_dim, temp_dir, config.num_shards, transform_dir)
        pipeline.run().wait_until_finish()
        if local:
            fileio.upload_dir(transform_dir, f"{config.output}/{layout.TRANSFORM}")
    finally:
        if local:
            shutil.rmtree(f"{scratch}/tmp", ignore_errors=True)
        else:
            _delete_quietly(temp_dir)
    return transform_dir


def _vocabulary(transform_dir: str) -> list[str]:
    import tensorflow_transform as tft

    return [v.decode() if isinstance(v, bytes) else v
            for v in tft.TFTransformOutput(transform_dir).vocabulary_by_name(LABEL_VOCABULARY)]


def summarise(counters: dict[str, int]) -> tuple[dict, dict, dict]:
    """(counts, labels per split, reconciliation) from the job's counters."""
    counts = nest_counts(counters)
    labels = counts.pop("labels", {})
    for group in (WRITTEN, EXAMPLES):
        counts[group] = {split: counts.get(group, {}).get(split, 0) for split in SPLITS}
    counts.setdefault(DEAD_LETTERED, {})
    for name in (READ, "duplicates", "duplicates_cross_split", "duplicates_label_conflict", CNN_IMAGES, "cnn_embeddings", CACHE_HITS):
        counts.setdefault(name, 0)
    return counts, labels, reconcile(counts)


_WORK_COUNTS = (CNN_IMAGES, "cnn_embeddings", CACHE_HITS)  # what a run did, not what its outputs hold


def _reuse_run(final: BottleneckConfig, staging: str, found: tuple[str, dict], run_id: str, started: float,
               started_at: dt.datetime) -> dict:
    """Commit a stored run's outputs as this run's: its inputs, settings, backbone and code are the same."""
    folder, record = found
    summary = run_reuse.restore(folder, record, staging)
    summary["counts"].update({name: 0 for name in _WORK_COUNTS})
    seconds = round(time.monotonic() - started, 2)
    summary.update({
        "run_id": run_id, "status": "ok", "brandlens_version": __version__,
        "started_at": started_at.isoformat(timespec="seconds"),
        "finished_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "config": final.describe(), "output": final.output, "inference": {},
        "seconds": {"total": seconds}, "reused": {"run_id": record["run_id"], "key": record["key"], "from": folder},
        "throughput": {"records_per_second": round(summary["counts"][READ] / max(seconds, 1e-9), 2),
                       "cnn_embeddings_per_second": 0.0},
    })
    write_json(f"{staging}/{layout.SUMMARY}", summary)
    commit_output(final.output, staging, run_id, "ok")
    log.info("bottlenecks %s: inputs, settings, backbone and code unchanged since run %s: its outputs reused from %s "
             "in %.1f s (read %d, written %s; counts %s)", run_id, record["run_id"], folder, seconds,
             summary["counts"][READ], summary["counts"][WRITTEN],
             "reconcile" if summary["reconciliation"]["ok"] else "DO NOT RECONCILE")
    return summary


def _store_run(staging: str, cache: str, key: str, run_id: str) -> None:
    try:
        run_reuse.store(staging, cache, key, run_id)
    except Exception as exc:  # a full disk must not fail a finished run: the next run just misses
        log.warning("could not keep run %s for reuse under %s: %s", run_id, cache, exc)


def run(config: BottleneckConfig) -> dict:
    """Run the whole job; returns the summary (also written to ``<output>/summary.json``)."""
    started, started_at = time.monotonic(), dt.datetime.now(dt.timezone.utc)
    config.runner.check_reachable(input=config.input, output=config.output, cache=config.cache if config.use_cache else None,
                                  artifacts=str(config.backbone.artifact_root))
    files = config.input_spec.check()
    config = with_inferred_base_uri(config)
    previous = prepare_output(config.output, config.overwrite)
    artifact_dir = str(config.backbone.materialize())
    fingerprint = read_fingerprint(artifact_dir)
    verify_weights(artifact_dir, fingerprint)  # here, so a tampered artifact fails in one line, not in every worker
    cut_map_shape = None if config.cut is None else cut_map_shape_of(fingerprint, config.cut)  # checks the cut first
    run_id = new_run_id(started_at)
    final, config = config, dataclasses.replace(config, output=f"{config.output}/{commit.staging_name(run_id)}")
    reuse_key = run_reuse.run_key(final, fingerprint.to_json()) if final.use_cache else None
    found = reuse_key and run_reuse.find(final.cache, reuse_key)
    if found:
        return _reuse_run(final, config.output, found, run_id, started, started_at)
    with FileSystems.create(f"{config.output}/{layout.BACKBONE}") as f:
        f.write(fingerprint.to_json().encode())
    log.info("bottlenecks %s: %s (%s, %d files matched) -> %s with %s; cache %s", run_id, config.input,
             config.input_spec.resolved_format, files, final.output, fingerprint.version,
             config.cache if config.use_cache else "off")

    counters, inference = _run_embedding(config, artifact_dir, fingerprint, run_id)
    embedded = time.monotonic()
    counts, labels, reconciliation = summarise(counters)
    summary = {
        "job": JOB,
        "status": "running",
        "run_id": run_id,
        "brandlens_version": __version__,
        "started_at": started_at.isoformat(timespec="seconds"),
        "config": final.describe(),
        "output": final.output,
        "backbone": {**dataclasses.asdict(fingerprint), "version": fingerprint.version, "artifact": artifact_dir},
        **({"cut_map_shape": cut_map_shape} if cut_map_shape else {}),
        "counts": counts,
        "labels": labels,
        "reconciliation": reconciliation,
        "inference": inference,
        "seconds": {"embedding_pipeline": round(embedded - started, 1)},
    }
    if not reconciliation["ok"]:
        log.error("counts do not reconcile: %s", reconciliation)
    try:
        if counts[WRITTEN]["train"] == 0:
            raise EmptyTrainingSplit(
                f"no training examples: {counts[READ]} records read, {total(counts[DEAD_LETTERED])} dead-lettered "
                f"({', '.join(f'{k}: {v}' for k, v in counts[DEAD_LETTERED].items()) or 'none'}), "
                f"{total(counts[WRITTEN])} written to other splits; see {final.output}/{layout.DEAD_LETTERS}/")
        # config.output is this run's staging folder: a reused TFT output is restored there and committed with it
        key = transform_reuse.transform_key(config.output, fingerprint.version, config.num_shards) if config.use_cache else None
        stored = key and transform_reuse.find(config.cache, key)
        if stored:  # the same examples, backbone and transform code: reuse, do not analyse again
            summary["vocabulary"] = transform_reuse.restore(stored, config.output)
            log.info("tensorflow-transform output reused from %s", stored)
        else:
            transform_dir = _run_transform(config, fingerprint.embedding_dim, run_id)
            summary["vocabulary"] = _vocabulary(transform_dir)
            if fileio.is_remote(config.output) and not fileio.is_remote(transform_dir):
                shutil.rmtree(Path(transform_dir).parent, ignore_errors=True)
            if key:
                transform_reuse.store(config.output, config.cache, key, summary["vocabulary"])
        summary["transform"] = {"key": key, "reused": bool(stored)}
        summary["status"] = "ok"
    except BaseException as exc:
        summary["status"] = f"failed: {exc}"
        raise
    finally:
        finished = time.monotonic()
        summary["seconds"]["transform_pipeline"] = round(finished - embedded, 1)
        summary["seconds"]["total"] = round(finished - started, 1)
        summary["finished_at"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        embedding_seconds = max(summary["seconds"]["embedding_pipeline"], 1e-9)
        summary["throughput"] = {  # of the embedding pipeline, start-up included
            "records_per_second": round(counts[READ] / embedding_seconds, 2),
            "cnn_embeddings_per_second": round(counts["cnn_embeddings"] / embedding_seconds, 2),
        }
        summary["reuse_key"] = reuse_key
        write_json(f"{config.output}/{layout.SUMMARY}", summary)
        if summary["status"] == "ok" and reuse_key:
            _store_run(config.output, final.cache, reuse_key, run_id)
        if summary["status"] == "ok" or not previous:  # a failed run never replaces a complete one
            commit_output(final.output, config.output, run_id, summary["status"])
        else:
            log.error("run %s failed; the previous outputs in %s are kept (this run's files: %s)", run_id, final.output,
                      config.output)
    log.info("bottlenecks %s done in %.0f s: read %d, written %s, dead-lettered %s, duplicates %d, CNN images %d, "
             "cache hits %d; counts %s", run_id, summary["seconds"]["total"], counts[READ], counts[WRITTEN],
             counts[DEAD_LETTERED], counts["duplicates"], counts[CNN_IMAGES], counts[CACHE_HITS],
             "reconcile" if reconciliation["ok"] else "DO NOT RECONCILE")
    return summary
