"""The scoring output: idempotent partitioned Parquet, and DuckDB queries over it."""

from __future__ import annotations

import datetime as dt

import apache_beam as beam
import pyarrow.parquet as pq
import pytest
from apache_beam.testing.test_pipeline import TestPipeline

from beam_jobs.scoring.parquet_sink import WriteScoresParquet, run_key
from brandlens.errors import ConfigError
from brandlens.query import QueryConfig, connect, query, run_query
from schemas import scores as schema

LABELS = ["acme", "zenith", "neither"]
ARROW = schema.scores_schema(LABELS, carried=["caption"])
SCORED_AT = dt.datetime(2026, 11, 29, tzinfo=dt.timezone.utc)


def _rows(n: int, days: int = 3) -> list[dict]:
    rows = []
    for i in range(n):
        label = LABELS[i % 3]
        scores = {schema.score_column(l): (0.8 if l == label else 0.1) for l in LABELS}
        rows.append({
            schema.POST_ID: f"p{i:04d}", schema.IMAGE_URI: f"img/{i}.jpg", schema.RESOLVED_URI: f"/archive/img/{i}.jpg",
            schema.CONTENT_HASH: f"{i:064x}", schema.LABEL: label, schema.CONFIDENCE: 0.5 + i / (2 * n),
            schema.BRAND_SCORE: 0.8 if label != "neither" else 0.1, schema.BRAND_FOUND: label != "neither",
            schema.MODEL_VERSION: "m1", schema.BACKBONE: "b1", schema.SCORED_AT: SCORED_AT,
            **scores, "caption": f"caption {i}", schema.PARTITION: f"2026-11-{1 + i % days:02d}",
        })
    return rows


def _write(rows, output, run, rows_per_file):
    with TestPipeline(runner="DirectRunner") as p:
        _ = p | beam.Create(rows) | WriteScoresParquet(str(output), ARROW, run, rows_per_file)


def _read_all(output):
    return sorted(pq.read_table(str(output), partitioning="hive").to_pylist(), key=lambda r: r[schema.POST_ID])


def test_partitioned_files_sized_and_rerun_idempotent(tmp_path):
    out = tmp_path / "scores"
    rows = _rows(60)
    run = run_key("posts.csv", "m1")
    _write(rows, out, run, rows_per_file=8)
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.parquet"))
    assert {f.split("/")[0] for f in files} == {"dt=2026-11-01", "dt=2026-11-02", "dt=2026-11-03"}
    assert len(files) == 9  # 20 rows per day -> ceil(20 / 8) = 3 files per day
    assert all(pq.read_metadata(out / f).num_rows <= 8 for f in files)
    first = _read_all(out)
    assert len(first) == 60 and len({r[schema.POST_ID] for r in first}) == 60
    assert not any(p.name.startswith(".tmp") for p in out.rglob("*"))

    _write(rows, out, run, rows_per_file=8)
    assert _read_all(out) == first

    _write(rows, out, run, rows_per_file=100)  # fewer, larger files: stale shards removed
    assert len(list(out.rglob("*.parquet"))) == 3
    assert _read_all(out) == first

    _write(_rows(6), out, run_key("other.csv", "m1"), rows_per_file=100)  # another input adds files
    assert len(_read_all(out)) == 66


def test_query_summaries_and_sql(tmp_path):
    out = tmp_path / "scores"
    _write(_rows(30), out, run_key("x", "m1"), rows_per_file=100)
    con = connect(str(out))
    cols, rows = run_query(con, "SELECT dt, count(*) FROM scores GROUP BY dt ORDER BY dt")
    assert [(str(d), n) for d, n in rows] == [("2026-11-01", 10), ("2026-11-02", 10), ("2026-11-03", 10)]
    text = query(QueryConfig(str(out), ("labels-per-day", "top-per-brand", "brand-share"), None, 2, "table"))
    assert "Posts per label per day" in text and "Share of posts with any brand" in text
    share_line = text.strip().splitlines()[-1].split()
    assert share_line == ["30", "20", "0.6667"]
    top = query(QueryConfig(str(out), ("top-per-brand",), None, 1, "csv")).splitlines()
    assert top[1] == "label,rank,post_id,image_uri,confidence"
    assert [line.split(",")[0] for line in top[2:]] == ["acme", "zenith"]
    assert query(QueryConfig(str(out), (), "SELECT count(*) AS n FROM scores WHERE label = 'acme'", 3, "json")) == '{"n": 10}'


def test_query_errors_are_one_line(tmp_path):
    with pytest.raises(ConfigError, match="no scoring output"):
        connect(str(tmp_path / "missing"))
    out = tmp_path / "scores"
    _write(_rows(3), out, run_key("x", "m1"), rows_per_file=100)
    with pytest.raises(ConfigError, match="query failed"):
        run_query(connect(str(out)), "SELECT nope FROM scores")


def test_schema_guards():
    with pytest.raises(ValueError, match="collide"):
        schema.scores_schema(["Nike", "nike"])
    with pytest.raises(ValueError, match="clash"):
        schema.scores_schema(["nike"], carried=["label"])
    assert schema.score_column("Coca-Cola") == "score_coca_cola"
