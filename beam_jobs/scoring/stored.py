"""Read stored embeddings (a scoring output written with ``--write-embedding``) for rescoring, fast.

Decoding the ``list<float>`` embedding column is most of a rescoring run's work (~40k rows/s
per core). pyarrow decodes without holding the GIL, so each worker decodes ``threads``
files at a time; the embeddings come out as one float32 ``[N, D]`` numpy view of each
Arrow batch (no per-row objects), next to a table of the other columns. File paths are
reshuffled first, so distributed runners spread the files over their workers.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import pickle
import queue
import threading
from concurrent.futures import ThreadPoolExecutor

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystems import FileSystems

from brandlens import fileio
from brandlens.errors import ArtifactError
from schemas import scores as schema

DEFAULT_BATCH_ROWS = 16_384  # rows per decoded batch: ~84 MB of 1280-d embeddings, a few in memory at once


@dataclasses.dataclass(frozen=True)
class EmbeddingBatch:
    """Posts of one partition: their other columns (Arrow) and their float32 ``[N, D]`` embeddings."""

    partition: str | None
    meta: object  # pyarrow.Table
    embeddings: np.ndarray

    def __iter__(self):  # unpacks like the (partition, meta, embeddings) tuple it replaces
        return iter((self.partition, self.meta, self.embeddings))


class EmbeddingBatchCoder(beam.coders.Coder):
    """Pickles a batch (protocol 5: whole buffers) and estimates its size without encoding it.

    Beam samples the size of elements passed between steps by encoding them; with the default
    pickle fallback that copied every 84 MB batch twice even when the steps are fused.
    """

    def encode(self, value: EmbeddingBatch) -> bytes:
        return pickle.dumps((value.partition, value.meta, value.embeddings), protocol=5)

    def decode(self, encoded: bytes) -> EmbeddingBatch:
        return EmbeddingBatch(*pickle.loads(encoded))

    def estimate_size(self, value: EmbeddingBatch) -> int:
        return int(value.embeddings.nbytes + value.meta.nbytes)

    def is_deterministic(self) -> bool:
        return False

    def to_type_hint(self):
        return EmbeddingBatch


beam.coders.registry.register_coder(EmbeddingBatch, EmbeddingBatchCoder)


def partition_of_file(filename: str) -> str | None:
    return next((part.split("=", 1)[1] for part in filename.split("/") if part.startswith(f"{schema.PARTITION}=")), None)


def split_embeddings(table) -> tuple:
    """An Arrow table with the embedding column -> (the other columns, float32 [N, D] without copying)."""
    column = table.column(schema.EMBEDDING)
    array = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    values = array.flatten().to_numpy(zero_copy_only=False)
    embeddings = np.asarray(values, np.float32).reshape(table.num_rows, -1)
    return table.drop_columns([schema.EMBEDDING]), embeddings


def iter_file(path: str, columns: list[str], batch_rows: int = DEFAULT_BATCH_ROWS):
    """An EmbeddingBatch for each record batch of ``batch_rows`` of one Parquet file."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    partition = partition_of_file(path)
    # A local file is memory-mapped: reading through a Python file object costs about half as much again.
    with (contextlib.nullcontext(path) if not fileio.is_remote(path) else FileSystems.open(path)) as f:
        reader = pq.ParquetFile(f, memory_map=isinstance(f, str))
        for batch in reader.iter_batches(batch_size=batch_rows, columns=columns, use_threads=False):
            if batch.num_rows:
                meta, embeddings = split_embeddings(pa.Table.from_batches([batch]))
                yield EmbeddingBatch(partition, meta, embeddings)


def rows_per_partition(paths: list[str]) -> dict:
    """Rows per partition of stored Parquet files, from their footers (no data read)."""
    import pyarrow.parquet as pq

    counts: dict = {}
    for path in paths:
        try:
            with FileSystems.open(path) as f:
                rows = pq.ParquetFile(f).metadata.num_rows
        except Exception as exc:  # truncated, overwritten, not Parquet: say which file before any work starts
            raise ArtifactError(f"stored embeddings {path} cannot be read as Parquet ({type(exc).__name__}: {exc})") from None
        partition = partition_of_file(path)
        counts[partition] = counts.get(partition, 0) + rows
    return counts


_DONE = object()


def stream_files(paths: list[str], columns: list[str], threads: int, batch_rows: int = DEFAULT_BATCH_ROWS,
                 pool: ThreadPoolExecutor | None = None):
    """Every batch of ``paths``, decoded by ``threads`` threads; at most ``threads`` batches wait in memory.

    A decoding error is raised here, in the caller's thread; the other readers then stop.
    """
    own = pool is None
    pool = pool or ThreadPoolExecutor(threads, thread_name_prefix="read-embeddings")
    ready: queue.Queue = queue.Queue(maxsize=max(1, threads))
    stop = threading.Event()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                ready.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def read(path: str) -> None:
        try:
            for item in iter_file(path, columns, batch_rows):
                if not put(item):
                    return
        except BaseException as exc:  # handed to the consumer, which raises it
            put(exc)
        put(_DONE)

    for path in paths:
        pool.submit(read, path)
    try:
        done = 0
        while done < len(paths):
            item = ready.get()
            if item is _DONE:
                done += 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield item
    finally:
        stop.set()
        if own:
            pool.shutdown(wait=False)


class _ReadFiles(beam.DoFn):
    def __init__(self, columns: list[str], threads: int, batch_rows: int):
        self._columns, self._threads, self._batch_rows = columns, threads, batch_rows

    def setup(self):
        self._pool = ThreadPoolExecutor(self._threads, thread_name_prefix="read-embeddings")

    def teardown(self):
        self._pool.shutdown(wait=False)

    def process(self, paths: list[str]):
        yield from stream_files(paths, self._columns, self._threads, self._batch_rows, self._pool)


class ReadStoredEmbeddings(beam.PTransform):
    """Parquet file paths -> EmbeddingBatch (partition, meta table, float32 [N, D]), ``threads`` files at a time."""

    def __init__(self, columns: list[str], threads: int | None = None, batch_rows: int = DEFAULT_BATCH_ROWS):
        super().__init__()
        self._columns, self._batch_rows = columns, batch_rows
        self._threads = threads or max(1, os.cpu_count() or 1)

    def expand(self, paths):
        return (paths
                | "SpreadFiles" >> beam.Reshuffle()
                | "FilesPerCall" >> beam.BatchElements(min_batch_size=1, max_batch_size=4 * self._threads)
                | "Decode" >> beam.ParDo(_ReadFiles(self._columns, self._threads, self._batch_rows)).with_output_types(
                    EmbeddingBatch))
