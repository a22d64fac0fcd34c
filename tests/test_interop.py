"""A real scoring archive read by the engines people query it with: pyarrow, DuckDB, Spark, and BigQuery's rules.

The posts manifest carries columns whose names no engine takes as they are
(spaces, a leading digit, case-insensitive clashes with output columns and with
each other, the partition key, accents); the job writes them under portable
names (``schemas/columns.py``) and records the mapping in its summary.
Spark needs the optional ``interop`` extra (``pip install -e '.[interop]'``,
about 460 MB) and Java 17; without pyspark that test is skipped with a message.
"""

from __future__ import annotations

import csv
import datetime as dt
import re
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from schemas import scores as schema
from schemas.columns import portable_names
from tests.conftest import REPO

SCORED_AT = dt.datetime(2026, 11, 29, 12, 0, tzinfo=dt.timezone.utc)
ODD_COLUMNS = {  # input name -> the portable name the archive must use
    "user name": "user_name",
    "1st-tag": "input_1st_tag",
    "Score_Acme": "input_Score_Acme",
    "Label": "input_Label",
    "dt": "input_dt",
    "café": "cafe",
    "USER_NAME": "USER_NAME_2",
}
# BigQuery column names: letters, digits, underscores, not starting with a digit, at most 300 characters,
# unique case-insensitively, none of the reserved prefixes.
BQ_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,299}$")
BQ_RESERVED_PREFIXES = ("_table_", "_file_", "_partition", "_row_timestamp", "__root__", "_colidentifier")


def test_portable_names_rules():
    names = portable_names(["user name", "user_name", "1st-tag", "Score_Acme", "label", "Dt", "__x__", "", "日本", "caption",
                            "a" * 200], schema.RESERVED, (schema.SCORE_PREFIX,))
    assert names == {"user name": "user_name", "user_name": "user_name_2", "1st-tag": "input_1st_tag",
                     "Score_Acme": "input_Score_Acme", "label": "input_label", "Dt": "input_Dt", "__x__": "x",
                     "": "column", "日本": "column_2", "caption": "caption", "a" * 200: "a" * 128}
    assert len({n.lower() for n in names.values()}) == len(names)


@pytest.fixture(scope="module")
def archive(sample_bottlenecks, sample_model, tmp_path_factory):
    """The real scoring job (with embeddings, so a list column is checked too) on posts with odd column names."""
    from beam_jobs.scoring.config import OutputConfig, ScoringConfig
    from beam_jobs.scoring.job import run

    sample = sample_bottlenecks.parent / "sample"
    with open(sample / "posts.csv") as f:
        rows = list(csv.DictReader(f))[::4]
    folder = tmp_path_factory.mktemp("odd-posts")
    manifest = folder / "posts.csv"
    with open(manifest, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]) + list(ODD_COLUMNS))
        writer.writeheader()
        for i, row in enumerate(rows):
            writer.writerow({**row, "image_uri": str(sample / row["image_uri"]),
                             **{name: f"{name}-{i}" for name in ODD_COLUMNS}})
    output = folder / "archive"
    summary = run(ScoringConfig(input=str(manifest), model=str(sample_model), write_embedding=True,
                                out=OutputConfig(str(output), rows_per_file=10, scored_at=SCORED_AT)))
    return output / "scores", summary, len(rows)


def _files(scores: Path) -> list[Path]:
    return sorted(scores.glob("dt=*/*.parquet"))


def test_the_summary_records_the_renamed_columns(archive):
    _, summary, n = archive
    assert summary["counts"]["scored"] == n
    assert summary["renamed_columns"] == ODD_COLUMNS
    assert summary["carried_columns"]["user"] == "user" and summary["carried_columns"]["input_1st_tag"] == "1st-tag"


def test_pyarrow_reads_the_archive(archive):
    import pyarrow.dataset as ds

    scores, _, n = archive
    table = ds.dataset(str(scores), format="parquet", partitioning="hive").to_table()
    assert table.num_rows == n
    for name, out in ODD_COLUMNS.items():
        assert all(v.startswith(f"{name}-") for v in table.column(out).to_pylist()), out
    assert table.schema.field(schema.EMBEDDING).type.list_size > 0


def test_duckdb_reads_every_name_as_written(archive):
    import duckdb

    scores, _, n = archive
    written = pq.ParquetFile(_files(scores)[0]).schema_arrow.names
    con = duckdb.connect()
    relation = con.sql(f"SELECT * FROM read_parquet('{scores}/*/*.parquet', hive_partitioning = true)")
    assert relation.columns == written + [schema.PARTITION]  # DuckDB renames none of them
    values = con.execute(f"SELECT count(*), count(DISTINCT input_score_acme), count(DISTINCT user_name_2), "
                     f"min(user_name) FROM read_parquet('{scores}/*/*.parquet', hive_partitioning = true)").fetchone()
    assert values == (n, n, n, "user name-0")  # identifiers resolve case-insensitively, each to one column


def test_spark_reads_the_archive(archive):
    pyspark = pytest.importorskip("pyspark", reason="pyspark is not installed: pip install -e '.[interop]' (about 460 MB) "
                                                    "to read the archive with Spark here")
    import shutil

    if not shutil.which("java"):
        pytest.skip("Spark needs Java (17+); none is on PATH")
    from pyspark.sql import SparkSession

    scores, _, n = archive
    spark = (SparkSession.builder.master("local[1]").appName("brandlens-interop").config("spark.ui.enabled", "false")
             .config("spark.sql.shuffle.partitions", "1").config("spark.driver.memory", "1g").getOrCreate())
    try:
        frame = spark.read.parquet(str(scores))
        columns = frame.columns
        counts = {(str(r["dt"]), r["label"]): r["count"] for r in frame.groupBy("dt", "label").count().collect()}
        odd = frame.select(*ODD_COLUMNS.values()).collect()
    finally:
        spark.stop()
    assert pyspark.__version__
    written = pq.ParquetFile(_files(scores)[0]).schema_arrow.names
    assert columns == written + [schema.PARTITION]
    assert sum(counts.values()) == n and len(odd) == n
    assert all(row[out].startswith(f"{name}-") for row in odd for name, out in ODD_COLUMNS.items())


def _bigquery_type(column, arrow_field) -> str:
    """The BigQuery type of a Parquet leaf column by BigQuery's Parquet conversion rules; raises for what it rejects."""
    logical = column.logical_type
    kind = logical.type  # 'String', 'Timestamp', 'None', ...
    physical = column.physical_type
    if physical == "BYTE_ARRAY":
        return "STRING" if kind == "String" else "BYTES"
    if physical == "BOOLEAN" and kind == "None":
        return "BOOL"
    if physical in ("FLOAT", "DOUBLE") and kind == "None":
        return "FLOAT64"
    if physical == "INT64" and kind == "Timestamp":
        info = logical.to_json()
        assert '"timeUnit": "nanoseconds"' not in info, f"{column.path}: BigQuery reads no nanosecond timestamps"
        return "TIMESTAMP" if '"isAdjustedToUTC": true' in info else "DATETIME"
    if physical == "INT32" and kind == "Date":
        return "DATE"
    if physical in ("INT32", "INT64") and kind in ("None", "Int"):
        return "INT64"
    raise AssertionError(f"{column.path}: {physical} / {logical} has no BigQuery type")


def test_every_column_follows_bigquerys_parquet_rules(archive):
    import pyarrow as pa

    scores, _, _ = archive
    readme = (REPO / "README.md").read_text()
    ddl = re.search(r"CREATE EXTERNAL TABLE.*?;", readme, re.S).group(0)
    assert re.search(r"enable_list_inference\s*=\s*true", ddl), ddl  # else lists arrive as nested structs
    assert re.search(r"WITH PARTITION COLUMNS \(dt DATE\)", ddl)
    files = _files(scores)
    assert files and all(re.fullmatch(r"dt=\d{4}-\d{2}-\d{2}", f.parent.name) for f in files)  # DATE partition values
    for path in files:
        parquet = pq.ParquetFile(path)
        arrow = parquet.schema_arrow
        names = [n.lower() for n in arrow.names]
        assert len(set(names)) == len(names) and schema.PARTITION not in names, arrow.names
        assert all(BQ_NAME.match(n) and not n.lower().startswith(BQ_RESERVED_PREFIXES) for n in arrow.names), arrow.names
        types = {}
        for i in range(parquet.schema.num_columns):
            column = parquet.schema.column(i)
            top = column.path.split(".")[0]
            field = arrow.field(top)
            if pa.types.is_list(field.type) or pa.types.is_fixed_size_list(field.type):
                # the standard 3-level LIST that list inference turns into ARRAY<element>
                assert column.path == f"{top}.list.element" and column.max_repetition_level == 1, column.path
                assert parquet.metadata.row_group(0).column(i).statistics.null_count == 0  # BigQuery arrays hold no NULLs
                types[top] = f"ARRAY<{_bigquery_type(column, field)}>"
            else:
                assert column.path == top and column.max_repetition_level == 0, column.path
                types[top] = _bigquery_type(column, field)
        assert types[schema.SCORED_AT] == "TIMESTAMP" and types[schema.CONFIDENCE] == "FLOAT64"
        assert types[schema.BRAND_FOUND] == "BOOL" and types[schema.EMBEDDING] == "ARRAY<FLOAT64>"
        assert all(types[out] == "STRING" for out in ODD_COLUMNS.values())
