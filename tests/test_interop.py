"""A real scoring archive read by the engines people query it with: pyarrow, DuckDB, Spark, and BigQuery's rules;
the exported model in TF Serving's layout, and batches of image bytes with a bad image in them.

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
import json
import re
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from schemas import scores as schema
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
    from schemas.columns import portable_names

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


def _bigquery_type(column) -> str:
    """The BigQuery type of a Parquet leaf column by BigQuery's Parquet conversion rules; raises for what it rejects."""
    logical = column.logical_type
    kind = logical.type  # 'STRING', 'TIMESTAMP', 'NONE', ...
    physical = column.physical_type
    if physical == "BYTE_ARRAY":
        return "STRING" if kind == "STRING" else "BYTES"
    if physical == "BOOLEAN" and kind == "NONE":
        return "BOOL"
    if physical in ("FLOAT", "DOUBLE") and kind == "NONE":
        return "FLOAT64"
    if physical == "INT64" and kind == "TIMESTAMP":
        info = logical.to_json()
        assert '"timeUnit": "nanoseconds"' not in info, f"{column.path}: BigQuery reads no nanosecond timestamps"
        return "TIMESTAMP" if '"isAdjustedToUTC": true' in info else "DATETIME"
    if physical == "INT32" and kind == "DATE":
        return "DATE"
    if physical in ("INT32", "INT64") and kind in ("NONE", "INT"):
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
        tree = str(parquet.schema)
        for i in range(len(parquet.schema)):
            column = parquet.schema.column(i)
            top = column.path.split(".")[0]
            field = arrow.field(top)
            if (pa.types.is_list(field.type) or pa.types.is_fixed_size_list(field.type)) and pa.types.is_struct(
                    field.type.value_type):
                # ARRAY<STRUCT<...>>: the evidence column brands (label, score, box ARRAY<FLOAT64>, area)
                assert column.path.startswith(f"{top}.list.element.") and column.max_repetition_level <= 2, column.path
                assert pq.read_table(path, columns=[top]).column(top).null_count == 0  # empty arrays, never NULL ones
                types[top] = "ARRAY<STRUCT>"
            elif pa.types.is_list(field.type) or pa.types.is_fixed_size_list(field.type):
                # the standard 3-level LIST that list inference turns into ARRAY<element>
                assert column.path == f"{top}.list.element" and column.max_repetition_level == 1, column.path
                assert re.search(rf"group field_id=-1 {top} \(List\) {{\s*repeated group field_id=-1 list {{", tree), tree
                # BigQuery arrays hold no NULLs (Parquet statistics count an empty list as a null leaf, so ask Arrow)
                assert pq.read_table(path, columns=[top]).column(top).null_count == 0
                types[top] = f"ARRAY<{_bigquery_type(column)}>"
            else:
                assert column.path == top and column.max_repetition_level == 0, column.path
                types[top] = _bigquery_type(column)
        assert types[schema.SCORED_AT] == "TIMESTAMP" and types[schema.CONFIDENCE] == "FLOAT64"
        assert types[schema.BRAND_FOUND] == "BOOL" and types[schema.EMBEDDING] == "ARRAY<FLOAT64>"
        assert all(types[out] == "STRING" for out in ODD_COLUMNS.values())


def test_the_export_holds_tf_servings_layout(sample_model, tmp_path):
    import tensorflow as tf

    from schemas import model as contract
    from trainer.serving_layout import main, serving_version

    card = json.loads((sample_model / contract.MODEL_CARD).read_text())
    version = serving_version(card["version_id"])
    assert str(version) == card["version_id"][3:11] + card["version_id"][12:18]
    base = sample_model / contract.TF_SERVING_DIR
    assert [p.name for p in base.iterdir()] == [str(version)]  # --model_base_path=<export>/tf_serving
    folder = base / str(version)
    assert json.loads((folder / "assets.extra" / contract.MODEL_CARD).read_text()) == card
    signature = tf.saved_model.load(str(folder)).signatures[contract.SIG_BYTES]
    assert list(signature.structured_input_signature[1]) == [contract.INPUT_BYTES]

    shared = tmp_path / "serving" / "brandlens"
    assert main([str(sample_model), str(shared)]) == 0 and main([str(sample_model), str(shared)]) == 0  # again: no-op
    assert [p.name for p in shared.iterdir()] == [str(version)]
    assert (shared / str(version) / "variables").is_dir()
    other = tmp_path / "other-export"
    shutil.copytree(sample_model, other, ignore=shutil.ignore_patterns(contract.TF_SERVING_DIR))
    (other / contract.MODEL_CARD).write_text(json.dumps({**card, "version_id": card["version_id"][:-8] + "00000000"}))
    assert main([str(other), str(shared)]) == 2  # the same version number for another model: refused


def test_one_bad_image_fails_a_serving_batch_and_the_helper_scores_the_rest(sample_bottlenecks, sample_model):
    import numpy as np
    import tensorflow as tf

    from brandlens.serving import score_decodable
    from schemas import model as contract

    photos = sorted((sample_bottlenecks.parent / "sample" / "images").rglob("*.jpg"))[:3]
    blobs = [photos[0].read_bytes(), b"not an image", photos[1].read_bytes(), photos[2].read_bytes()]
    signature = tf.saved_model.load(str(sample_model / contract.SERVING_DIR)).signatures[contract.SIG_BYTES]
    calls = []

    def call(batch):
        calls.append(len(batch))
        return signature(**{contract.INPUT_BYTES: tf.constant(batch)})

    with pytest.raises(tf.errors.InvalidArgumentError):
        call(blobs)  # documented in schemas/model.py: one bad image, no rows at all
    calls.clear()
    result = score_decodable(call, blobs)
    assert result.ok == [True, False, True, True] and list(result.errors) == [1]
    assert result.errors[1].startswith("InvalidArgumentError")
    assert calls == [4, 2, 1, 1, 2]
    for i in (0, 2, 3):
        alone = call([blobs[i]])
        np.testing.assert_allclose(result.rows[i][contract.OUT_SCORES], alone[contract.OUT_SCORES].numpy()[0], atol=1e-5)
        assert result.rows[i][contract.OUT_LABEL] == alone[contract.OUT_LABEL].numpy()[0]
