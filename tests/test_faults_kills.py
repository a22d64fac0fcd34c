"""Kills at random moments of both jobs, then reruns: nothing lost, nothing doubled, no temp file visible.

One worker process (tests/fault_worker.py) imports TF and Beam once and forks a child per
run; the test SIGKILLs the child at a random moment of its run (seeded, so a failure
replays) and checks what a reader sees right after the kill and after the rerun. The commit
step itself (milliseconds of a run, so rarely hit at random) gets its own kills, in a bare
Python child without TF. Also here: the outage rule (12.1) and run identity (12.5, 17.4).
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from schemas import scores as schema

REPO = Path(__file__).resolve().parents[1]
KILLS = 10  # kills that land inside a run, per job
MAX_TRIES = 3 * KILLS  # a kill drawn after a run's end does not count
FIGURES: dict = {}


class Worker:
    """The forking worker: ``run(argv, kill_after)`` -> (rc or None when killed, seconds)."""

    def __init__(self, log: Path):
        env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        self.log = log
        self.proc = subprocess.Popen([sys.executable, str(REPO / "tests" / "fault_worker.py")], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, env=env, cwd=str(REPO))
        assert json.loads(self.proc.stdout.readline()) == {"ready": True}

    def run(self, argv: list[str] | None, kill_after: float | None = None, **request) -> tuple[int | None, float]:
        started = time.monotonic()
        self.proc.stdin.write(json.dumps({"argv": argv, "log": str(self.log), **request}) + "\n")
        self.proc.stdin.flush()
        pid = json.loads(self.proc.stdout.readline())["pid"]
        killed = False
        if kill_after is not None:
            time.sleep(kill_after)
            try:
                os.kill(pid, signal.SIGKILL)
                killed = True
            except ProcessLookupError:
                pass
        rc = json.loads(self.proc.stdout.readline())["rc"]
        seconds = time.monotonic() - started
        if killed and rc == -signal.SIGKILL:
            return None, seconds
        assert rc == 0, f"run failed (rc {rc}); see {self.log}:\n" + self.log.read_text()[-3000:]
        return rc, seconds

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def worker(tmp_path_factory):
    w = Worker(tmp_path_factory.mktemp("worker") / "runs.log")
    yield w
    w.close()


def _visible_files(folder: Path) -> list[Path]:
    """What a glob reader (DuckDB ``**/*.parquet``, BigQuery ``*.parquet``) takes."""
    return sorted(folder.rglob("*.parquet"))


# --- the scoring job ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def posts(sample_bottlenecks, tmp_path_factory) -> tuple[Path, list[str]]:
    sample = sample_bottlenecks.parent / "sample"
    with open(sample / "posts.csv") as f:
        rows = list(csv.DictReader(f))[:36]
    for row in rows:
        row["image_uri"] = str(sample / row["image_uri"])
    path = tmp_path_factory.mktemp("kill-posts") / "posts.csv"
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path, sorted(r["post_id"] for r in rows)


def _score_argv(manifest, model, output, i: int) -> list[str]:
    argv = ["score", "--input", str(manifest), "--model", str(model), "--output", str(output), "--batch-size", "8",
            "--rows-per-file", str((3, 7, 50)[i % 3]), "--scored-at", f"2026-11-29T12:{i % 60:02d}:00Z"]
    return argv + (["--write-embedding"] if i % 2 else [])


def _check_scores(output: Path, post_ids: list[str]) -> str:
    """Exactly one complete run visible: every post once, one scored_at, no temp file; returns its scored_at.

    A plain glob reader (pyarrow) sees it too, unless the kill landed inside the commit's renames
    (a journal in state 'committing'): then only readers that finish the commit first (the next
    run, ``brandlens query``) do, and the glob reader after them.
    """
    from brandlens.query import connect

    scores = output / "scores"
    visible = _visible_files(scores)
    assert all(not p.name.startswith(("_", ".")) for p in visible), visible
    assert not [p for p in scores.rglob("*") if p.is_file() and not p.name.endswith(".parquet")]
    pending = any(json.loads(m.read_text()).get("state") == "committing" for m in output.glob("runs/*/manifest.json"))
    FIGURES["kills_mid_commit"] = FIGURES.get("kills_mid_commit", 0) + pending
    if not pending:
        _assert_one_run(pq.read_table(str(scores), partitioning="hive"), post_ids)
    skipped: list = []
    con = connect(str(scores), skipped)  # finishes an interrupted commit, reads committed files only
    assert skipped == []
    rows = con.execute("SELECT post_id, scored_at FROM scores ORDER BY post_id").fetchall()
    assert [r[0] for r in rows] == post_ids
    stamps = {str(r[1]) for r in rows}
    assert len(stamps) == 1, stamps
    _assert_one_run(pq.read_table(str(scores), partitioning="hive"), post_ids)
    return stamps.pop()


def _assert_one_run(table, post_ids: list[str]) -> None:
    assert sorted(table.column(schema.POST_ID).to_pylist()) == post_ids
    assert len(set(table.column(schema.SCORED_AT).to_pylist())) == 1


def test_scoring_killed_at_random_moments(worker, posts, sample_model, tmp_path):
    manifest, post_ids = posts
    output = tmp_path / "archive"
    rng = random.Random(12)
    _, full = worker.run(_score_argv(manifest, sample_model, output, 0))
    _check_scores(output, post_ids)
    landed, checked, tried, last = 0, 0, 0, full
    while landed < KILLS and tried < MAX_TRIES:
        tried += 1
        rc, seconds = worker.run(_score_argv(manifest, sample_model, output, tried), kill_after=rng.uniform(0.2, last))
        landed += rc is None
        last = last if rc is None else seconds  # a kill that came after the end: draw within this run's length next
        _check_scores(output, post_ids)  # the old complete run or the new one
        checked += len(post_ids)
    worker.run(_score_argv(manifest, sample_model, output, 59))
    assert _check_scores(output, post_ids).startswith("2026-11-29 12:59")
    checked += len(post_ids)
    runs = list((output / "runs").iterdir())
    assert len(runs) == 1 and not list(runs[0].glob("_attempt-*"))
    summary = json.loads((runs[0] / "summary.json").read_text())
    assert summary["reconciliation"]["ok"] and summary["counts"]["scored"] == len(post_ids)
    FIGURES["scoring"] = {"kills_tried": tried, "kills_landed": landed, "rows_checked": checked, "full_run_s": round(full, 1)}
    assert landed == KILLS


# --- the bottleneck job -------------------------------------------------------------------

@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    from brandlens.sample import make_sample

    sample = make_sample(tmp_path_factory.mktemp("kill-images") / "sample", 8, ("acme", "zenith"), 3, True)
    with open(sample.manifest) as f:
        rows = list(csv.DictReader(f))
    manifest = sample.root / "with-splits.csv"
    with open(manifest, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["uri", "label", "split"])
        for k, row in enumerate(rows):
            writer.writerow([row["uri"], row["label"], ("train", "train", "validation", "test")[k % 4]])
    return manifest


def _bottleneck_argv(manifest, output, artifact_root, i: int) -> list[str]:
    return ["bottlenecks", "--input", str(manifest), "--output", str(output), "--overwrite", "--backbone", "efficientnet_lite0",
            "--artifacts", str(artifact_root), "--cache", str(output.parent / "cache"), "--num-shards", str(1 + i % 2)]


def _check_bottlenecks(output: Path, expected: int) -> str:
    """One complete run: its summary says ok, its examples hold every image once, no staging visible to globs."""
    from beam_jobs.bottlenecks.job import prepare_output
    from schemas.bottleneck import from_example_bytes
    import tensorflow as tf

    prepare_output(str(output), overwrite=True)  # what the next run (or a reader that knows the layout) does first
    summary = json.loads((output / "summary.json").read_text())
    assert summary["status"] == "ok"
    for folder in ("examples", "transformed"):
        assert not [p for p in (output / folder).rglob("*") if p.is_file() and not p.name.endswith(".tfrecord.gz")]
    hashes = [from_example_bytes(r.numpy()).content_hash
              for p in sorted((output / "examples").glob("*.tfrecord.gz"))
              for r in tf.data.TFRecordDataset(str(p), compression_type="GZIP")]
    assert len(hashes) == len(set(hashes)) == expected
    assert sum(1 for p in (output / "transformed").glob("*.tfrecord.gz")
               for _ in tf.data.TFRecordDataset(str(p), compression_type="GZIP")) == expected
    assert not list(output.glob("_attempt-*"))
    return summary["run_id"]


@pytest.mark.slow
def test_bottlenecks_killed_at_random_moments(worker, images, artifact_root, lite0_artifact, tmp_path):
    output = tmp_path / "bottlenecks"
    rng = random.Random(7)
    _, full = worker.run(_bottleneck_argv(images, output, artifact_root, 0))
    expected = sum(1 for _ in open(images)) - 1
    runs = {_check_bottlenecks(output, expected)}
    landed, tried, last = 0, 0, full
    cache = output.parent / "cache"
    while landed < KILLS and tried < MAX_TRIES:
        tried += 1
        if tried % 2:  # every other run finds no stored run to reuse: its pipelines run (and are killed)
            shutil.rmtree(cache / ".runs", ignore_errors=True)
        if tried == KILLS // 2:  # (odd: its run reads the cache) a damaged cache file on top: named, ignored, recomputed
            victim = [p for p in sorted(cache.rglob("*.tfrecord.gz")) if not {".transforms", ".runs"} & set(p.parts)][0]
            victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
        rc, seconds = worker.run(_bottleneck_argv(images, output, artifact_root, tried), kill_after=rng.uniform(0.2, last))
        landed += rc is None
        last = last if rc is None else seconds  # reruns find a warm cache: draw within the last whole run's length
        runs.add(_check_bottlenecks(output, expected))
    worker.run(_bottleneck_argv(images, output, artifact_root, tried + 1))
    runs.add(_check_bottlenecks(output, expected))
    assert f"embedding cache file {victim} is damaged" in worker.log.read_text()  # named, ignored, embedded again
    FIGURES["bottlenecks"] = {"kills_tried": tried, "kills_landed": landed, "runs_seen": len(runs),
                              "examples_checked": expected * (tried + 2), "full_run_s": round(full, 1)}
    assert landed == KILLS


def test_a_failed_overwrite_keeps_the_complete_output(images, artifact_root, lite0_artifact, tmp_path):
    """--overwrite replaces a bottleneck output only with a complete one: a run that fails keeps the old."""
    from beam_jobs.bottlenecks.config import BottleneckConfig
    from beam_jobs.bottlenecks.job import EmptyTrainingSplit, run
    from brandlens.config import BackboneConfig

    output = tmp_path / "bottlenecks"

    def bottlenecks(manifest):
        return run(BottleneckConfig(input=str(manifest), output=str(output), overwrite=True, cache=str(tmp_path / "cache"),
                                    backbone=BackboneConfig("efficientnet_lite0", artifact_root)))

    expected = sum(1 for _ in open(images)) - 1
    first = bottlenecks(images)
    broken = tmp_path / "gone.csv"
    broken.write_text("uri,label,split\n" + "".join(f"{images.parent}/nope-{i}.jpg,acme,train\n" for i in range(3)))
    with pytest.raises(EmptyTrainingSplit):
        bottlenecks(broken)
    assert _check_bottlenecks(output, expected) == first["run_id"]
    assert not list(output.glob("_attempt-*"))


# --- the commit step itself ---------------------------------------------------------------

_COMMIT = """
from brandlens import commit
root, tag, moves = args
old = commit.recover(f"{root}/manifest.json")
deletes = [f"{root}/out/{name}" for name in (old or {}).get("files", [])]
commit.commit(f"{root}/manifest.json", moves, deletes, {"files": [d[len(root) + 5:] for _, d in moves], "tag": tag},
              cleanup=(f"{root}/_attempt-{tag}",))
"""


def test_commit_killed_at_random_moments(worker, tmp_path):
    """Old complete or new complete after a kill anywhere in the commit, once recovered."""
    from brandlens import commit

    rng = random.Random(5)
    root = tmp_path / "c"
    tags, kills, landed, files, full = [], 12, 0, 300, 0.0
    for i in range(kills + 2):
        tag = f"t{i}"
        moves = []
        for k in range(files):
            staged = root / f"_attempt-{tag}" / f"d{k % 3}" / f"part-{tag}-{k}.txt"
            staged.parent.mkdir(parents=True, exist_ok=True)
            staged.write_text(tag)
            moves.append((str(staged), str(root / "out" / f"d{k % 3}" / f"part-{tag}-{k}.txt")))
        kill_after = rng.uniform(0, full) if 0 < i <= kills else None  # within what a whole commit took
        rc, seconds = worker.run(None, kill_after=kill_after, exec=_COMMIT, args=[str(root), tag, moves])
        if i == 0:
            full = seconds
        landed += rc is None
        record = commit.recover(str(root / "manifest.json"))
        commit.remove_stale_staging(str(root))
        present = sorted(str(p.relative_to(root / "out")) for p in (root / "out").rglob("*") if p.is_file()) \
            if (root / "out").exists() else []
        assert record is not None and record["state"] == commit.COMMITTED
        assert present == sorted(record["files"]) and len(present) == files
        assert {(root / "out" / p).read_text() for p in present} == {record["tag"]}
        tags.append(record["tag"])
    assert tags[-1] == f"t{kills + 1}" and landed >= kills // 2
    FIGURES["commit"] = {"kills_tried": kills, "kills_landed": landed, "states_seen": len(set(tags))}


# --- the outage rule and run identity -----------------------------------------------------

def test_outage_rerun_keeps_previous_rows_and_options_do_not_double(posts, sample_model, tmp_path):
    from beam_jobs.scoring.config import OutputConfig, ScoringConfig
    from beam_jobs.scoring.job import run

    manifest, post_ids = posts
    at = dt.datetime(2026, 11, 29, 12, 0, tzinfo=dt.timezone.utc)
    output = tmp_path / "archive"

    def score(path, **kwargs):
        return run(ScoringConfig(input=str(path), model=str(sample_model), out=OutputConfig(str(output), rows_per_file=5,
                                                                                               scored_at=at), batch_size=8, **kwargs))

    first = score(manifest)
    assert first["counts"]["scored"] == len(post_ids)
    # the image store is down: every fetch fails, yet the earlier rows stay
    images = Path(next(csv.DictReader(open(manifest)))["image_uri"]).parent.parent
    hidden = images.with_name(images.name + "-offline")
    images.rename(hidden)
    try:
        outage = score(manifest)
    finally:
        hidden.rename(images)
    assert outage["counts"]["scored"] == 0 and outage["counts"]["kept_previous"] == len(post_ids)
    assert outage["reconciliation"]["ok"] and outage["run_key"] == first["run_key"]
    assert _check_scores(output, post_ids)
    # through a symlink, with --write-embedding: the same run, one row per post, one schema
    link = tmp_path / "link.csv"
    link.symlink_to(manifest)
    again = score(link, write_embedding=True)
    assert again["run_key"] == first["run_key"]
    _check_scores(output, post_ids)
    table = pq.read_table(str(output / "scores"), partitioning="hive")
    assert table.num_rows == len(post_ids) and schema.EMBEDDING in table.column_names
    # a copy elsewhere (same content) is the same run too
    copy = tmp_path / "copy" / "posts.csv"
    copy.parent.mkdir()
    shutil.copy(manifest, copy)
    assert score(copy, write_embedding=True)["run_key"] == first["run_key"]
    _check_scores(output, post_ids)


def test_a_run_past_its_dead_letter_share_commits_nothing(posts, sample_model, tmp_path):
    from beam_jobs.scoring.config import OutputConfig, ScoringConfig
    from beam_jobs.scoring.job import RunRefused, run

    manifest, post_ids = posts
    rows = list(csv.DictReader(open(manifest)))
    broken = tmp_path / "broken.csv"
    with open(broken, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        for k, row in enumerate(rows[:8]):
            writer.writerow({**row, "image_uri": row["image_uri"] if k < 2 else str(tmp_path / f"gone-{k}.jpg")})
    output = tmp_path / "archive"
    with pytest.raises(RunRefused, match="6 of 8 posts dead-lettered"):
        run(ScoringConfig(input=str(broken), model=str(sample_model), out=OutputConfig(str(output)), batch_size=8,
                          max_dead_letter_share=0.5))
    assert not list(output.glob("scores/**/*.parquet")) and not list(output.glob("runs/*/manifest.json"))
    summary = run(ScoringConfig(input=str(broken), model=str(sample_model), out=OutputConfig(str(output)), batch_size=8))
    assert summary["counts"]["scored"] == 2 and len(pq.read_table(str(output / "scores"), partitioning="hive")) == 2


def test_one_schema_per_archive(posts, sample_model, tmp_path):
    from beam_jobs.scoring.config import OutputConfig, ScoringConfig
    from beam_jobs.scoring.job import run
    from brandlens.errors import ConfigError

    manifest, post_ids = posts
    other = tmp_path / "other.csv"
    other.write_text("\n".join(open(manifest).read().splitlines()[:4]) + "\n")
    output = tmp_path / "archive"
    out = OutputConfig(str(output), rows_per_file=50)
    run(ScoringConfig(input=str(manifest), model=str(sample_model), out=out, batch_size=8))
    with pytest.raises(ConfigError, match="one schema per archive"):
        run(ScoringConfig(input=str(other), model=str(sample_model), out=out, batch_size=8, write_embedding=True))
    assert len(pq.read_table(str(output / "scores"), partitioning="hive")) == len(post_ids)


def test_an_archive_from_before_run_manifests_is_replaced_not_doubled(posts, sample_model, tmp_path):
    from beam_jobs.scoring.config import OutputConfig, ScoringConfig
    from beam_jobs.scoring.job import run
    from beam_jobs.scoring.model import read_model_card
    from beam_jobs.scoring.parquet_sink import run_key

    manifest, post_ids = posts
    output = tmp_path / "archive"
    config = ScoringConfig(input=str(manifest), model=str(sample_model), out=OutputConfig(str(output), rows_per_file=9),
                           batch_size=8)
    first = run(config)
    old_key = run_key(config.input, read_model_card(str(sample_model)).version_id, "multi_crop=0", "embedding=False")
    for path in (output / "scores").rglob("*.parquet"):  # as the previous release named them, without a manifest
        path.rename(path.with_name(path.name.replace(first["run_key"], old_key)))
    (output / "runs" / first["run_key"] / "manifest.json").unlink()
    run(config)
    names = [p.name for p in (output / "scores").rglob("*.parquet")]
    assert not [n for n in names if old_key in n]
    assert len(pq.read_table(str(output / "scores"), partitioning="hive")) == len(post_ids)


def test_zz_report_figures(capsys):
    with capsys.disabled():
        print("\nfault figures:", json.dumps(FIGURES, sort_keys=True))
