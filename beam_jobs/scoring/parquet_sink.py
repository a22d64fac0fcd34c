"""An idempotent, Hive-partitioned Parquet sink for scored posts.

Rows land in ``<output>/dt=<YYYY-MM-DD>/part-<run_key>-<shard>-of-<n>.parquet``.
``run_key`` identifies (input, model) (``brandlens.scores_archive``): a rerun of the
same input with the same model rewrites the same files (and removes any of its own
files it no longer writes), so it never duplicates rows; another input or model adds
files beside them. The scoring job points this sink at a staging folder and commits
the files afterwards (``brandlens.commit``); a file being written is named
``_part-....parquet.inprogress``, which no reader's glob takes. A partition's rows are spread over ``ceil(rows / rows_per_file)`` files by
a stable hash of the post id, so files have a useful size for query engines and
the same rows always land in the same file, sorted by post id.
"""

from __future__ import annotations

import functools
import hashlib
import io
import math
import re

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from schemas import scores as schema


def stable_hash(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "big")


def run_key(*parts: str) -> str:
    """A short id of some strings (runs are keyed by ``brandlens.scores_archive.run_key_for``; this was the old key)."""
    return hashlib.sha256("\x00".join(parts).encode("utf-8")).hexdigest()[:12]


def file_name(run: str, shard: int, shards: int) -> str:
    return f"part-{run}-{shard:05d}-of-{shards:05d}.parquet"


def kept_file_name(run: str) -> str:
    """The file of a partition's rows kept from the previous commit (posts whose image could not be fetched)."""
    return f"part-{run}-kept-00000-of-00001.parquet"


def kept_rows(files: list[str], post_ids: set[str], arrow_schema: pa.Schema) -> dict[str, pa.Table]:
    """Rows of ``post_ids`` in a run's previously committed ``files``, by partition, in ``arrow_schema``.

    Raises ValueError when the old rows lack a column of the new schema (then they cannot be kept).
    """
    import pyarrow.compute as pc

    wanted = pa.array(sorted(post_ids), pa.string())
    found: dict[str, list[pa.Table]] = {}
    for path in files:
        partition = next(p.split("=", 1)[1] for p in path.split("/") if p.startswith(f"{schema.PARTITION}="))
        with FileSystems.open(path) as f:
            table = pq.read_table(f)
        table = table.filter(pc.is_in(table.column(schema.POST_ID), value_set=wanted))
        if table.num_rows:
            missing = [n for n in arrow_schema.names if n not in table.column_names]
            if missing:
                raise ValueError(f"previous rows in {path} lack columns {missing}")
            found.setdefault(partition, []).append(table.select(arrow_schema.names).cast(arrow_schema))
    return {partition: pa.concat_tables(tables).sort_by(schema.POST_ID) for partition, tables in found.items()}


def _partition_path(output: str, partition: str) -> str:
    return FileSystems.join(output, f"{schema.PARTITION}={partition}")


@functools.lru_cache(maxsize=64)
def _leaf_paths(arrow_schema: pa.Schema) -> tuple[str, ...]:
    buf = io.BytesIO()
    pq.write_table(arrow_schema.empty_table(), buf)
    parquet_schema = pq.ParquetFile(pa.BufferReader(buf.getvalue())).schema
    return tuple(parquet_schema.column(i).path for i in range(len(parquet_schema)))


def write_options(arrow_schema: pa.Schema) -> dict:
    """``pyarrow.parquet.write_table`` options for a scores file: zstd with dictionaries, except the embedding
    column (--write-embedding), written plain and uncompressed: float noise neither compresses (+9 % in size) nor
    suits a dictionary, and decoding that dictionary fallback cost rescoring 2.7 times the read time."""
    leaves = _leaf_paths(arrow_schema)
    embedding = {p for p in leaves if p.split(".", 1)[0] == schema.EMBEDDING}
    if not embedding:
        return {"compression": "zstd"}
    return {"compression": {p: "none" if p in embedding else "zstd" for p in leaves},
            "use_dictionary": [p for p in leaves if p not in embedding]}


def encode_table(rows: list[dict], arrow_schema: pa.Schema) -> bytes:
    """Rows (sorted by post id) -> Parquet bytes; pure, so it is tested without Beam."""
    table = pa.Table.from_pylist(sorted(rows, key=lambda r: r[schema.POST_ID]), schema=arrow_schema)
    buf = io.BytesIO()
    pq.write_table(table, buf, **write_options(arrow_schema))
    return buf.getvalue()


def encode_arrow(tables: list[pa.Table], arrow_schema: pa.Schema) -> bytes:
    """Arrow tables of ``arrow_schema`` -> the same Parquet bytes as :func:`encode_table` on their rows.

    Arrow sorts strings by UTF-8 bytes, which is Python's code-point order.
    """
    table = pa.concat_tables([t.select(arrow_schema.names).cast(arrow_schema) for t in tables]) if tables \
        else arrow_schema.empty_table()
    table = table.sort_by(schema.POST_ID).combine_chunks()
    buf = io.BytesIO()
    pq.write_table(table, buf, **write_options(arrow_schema))
    return buf.getvalue()


class _WriteShard(beam.DoFn):
    def __init__(self, output: str, run: str, arrow_schema: pa.Schema, tables: bool = False):
        self._output = output
        self._run = run
        self._schema = arrow_schema
        self._tables = tables

    def process(self, element):
        (partition, shard, shards), rows = element
        folder = _partition_path(self._output, partition)
        final = FileSystems.join(folder, file_name(self._run, shard, shards))
        temp = FileSystems.join(folder, f"_{file_name(self._run, shard, shards)}.inprogress")
        data = encode_arrow(list(rows), self._schema) if self._tables else encode_table(list(rows), self._schema)
        with FileSystems.create(temp) as f:
            f.write(data)
        FileSystems.rename([temp], [final])  # replaces an older file atomically
        beam.metrics.Metrics.counter("scoring", "parquet_files_written").inc()
        yield final


class _RemoveStale(beam.DoFn):
    """Delete this run key's files that the current run did not write (e.g. fewer shards now)."""

    def __init__(self, output: str, run: str):
        self._output = output
        self._run = run

    def process(self, written: list[str]):
        keep = set(written)
        pattern = FileSystems.join(self._output, f"{schema.PARTITION}=*", f"part-{self._run}-*.parquet")
        stale = [m.path for r in FileSystems.match([pattern]) for m in r.metadata_list if m.path not in keep]
        if stale:
            FileSystems.delete(stale)
        yield from sorted(keep)


class _ScoresSink(beam.PTransform):
    """Where and how a run's scored rows are written (shared by the row and the batch sink)."""

    def __init__(self, output: str, arrow_schema: pa.Schema, run: str, rows_per_file: int = 100_000):
        super().__init__()
        if rows_per_file < 1:
            raise ValueError("rows_per_file must be >= 1")
        if not re.fullmatch(r"[0-9a-f]+", run):
            raise ValueError(f"run key must be hex, got {run!r}")
        self._output = output.rstrip("/")
        self._schema = arrow_schema
        self._run = run
        self._rows_per_file = rows_per_file


class WriteScoresParquet(_ScoresSink):
    """PCollection of row dicts (``schemas.scores`` columns + ``dt``) -> written file paths."""

    def expand(self, rows):
        keyed = rows | "KeyByPartition" >> beam.Map(lambda r: (r[schema.PARTITION], {k: v for k, v in r.items() if k != schema.PARTITION}))
        counts = keyed | "CountPerPartition" >> beam.combiners.Count.PerKey()
        per_file = self._rows_per_file

        def assign(item, counts):
            partition, row = item
            shards = max(1, math.ceil(counts[partition] / per_file))
            return (partition, stable_hash(row[schema.POST_ID]) % shards, shards), row

        written = (
            keyed
            | "AssignShard" >> beam.Map(assign, counts=beam.pvalue.AsDict(counts))
            | "GroupByShard" >> beam.GroupByKey()
            | "WriteParquetFiles" >> beam.ParDo(_WriteShard(self._output, self._run, self._schema))
        )
        return (
            written
            | "CollectWritten" >> beam.combiners.ToList()
            | "RemoveStaleFiles" >> beam.ParDo(_RemoveStale(self._output, self._run))
        )


def _shard_tables(item, counts, rows_per_file: int):
    """(partition, table) -> ((partition, shard, shards), the table's rows of that shard), as the row sink assigns them."""
    import numpy as np

    partition, table = item
    shards = max(1, math.ceil(counts.get(partition, 0) / rows_per_file))
    if shards == 1:
        yield (partition, 0, 1), table
        return
    assigned = np.fromiter((stable_hash(p) % shards for p in table.column(schema.POST_ID).to_pylist()), np.int64, table.num_rows)
    for shard in np.unique(assigned):
        yield (partition, int(shard), shards), table.take(pa.array(np.flatnonzero(assigned == shard)))


class WriteScoresParquetBatched(_ScoresSink):
    """PCollection of ``(partition, pyarrow.Table)`` (``arrow_schema`` columns) -> written file paths.

    The same files as :class:`WriteScoresParquet` writes for the same rows (partitions, shard
    count and assignment, order within a file), without a Python dict per row: rescoring
    hundreds of thousands of posts per second needs whole batches end to end.
    """

    def __init__(self, output: str, arrow_schema: pa.Schema, run: str, rows_per_file: int = 100_000,
                 counts: dict | None = None):
        """``counts``: rows per partition when known before the run (stored Parquet's footers). They only size
        the shards; without them the tables are counted first, a side input that holds every table back until
        the last is scored (in memory on the DirectRunner)."""
        super().__init__(output, arrow_schema, run, rows_per_file)
        self._counts = None if counts is None else dict(counts)

    def expand(self, tables):
        if self._counts is not None:
            counts = self._counts
        else:
            counts = beam.pvalue.AsDict(
                tables
                | "RowsPerTable" >> beam.MapTuple(lambda partition, table: (partition, table.num_rows))
                | "CountPerPartition" >> beam.CombinePerKey(sum))
        written = (
            tables
            | "AssignShards" >> beam.FlatMap(_shard_tables, counts=counts, rows_per_file=self._rows_per_file)
            | "GroupByShard" >> beam.GroupByKey()
            | "WriteParquetFiles" >> beam.ParDo(_WriteShard(self._output, self._run, self._schema, tables=True))
        )
        return (
            written
            | "CollectWritten" >> beam.combiners.ToList()
            | "RemoveStaleFiles" >> beam.ParDo(_RemoveStale(self._output, self._run))
        )
