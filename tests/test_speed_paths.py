"""The fast paths of issue 13: inference engines, the reused TFT output, the stored-embedding reader."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

tf = pytest.importorskip("tensorflow")

from beam_jobs.bottlenecks import transform_reuse  # noqa: E402
from beam_jobs.scoring import stored  # noqa: E402
from brandlens import engines  # noqa: E402


class _Tiny(tf.Module):
    def __init__(self):
        super().__init__()
        self.w = tf.Variable(np.random.default_rng(0).normal(size=(3, 3, 3, 8)).astype(np.float32))

    @tf.function(input_signature=[tf.TensorSpec([None, 16, 16, 3], tf.float32, name="images")])
    def serve(self, images):
        x = tf.nn.relu(tf.nn.conv2d(images / 255.0, self.w, 1, "SAME"))
        embedding = tf.reduce_mean(x, [1, 2])
        return {"embedding": embedding, "logits": tf.concat([embedding] * 3, 1)}


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    """A backbone-like SavedModel, and one that holds it as ``.backbone`` (as the serving export does)."""
    root = tmp_path_factory.mktemp("tiny")
    tf.saved_model.save(_Tiny(), str(root / "backbone"))
    outer = tf.Module()
    outer.backbone = tf.saved_model.load(str(root / "backbone"))
    tf.saved_model.save(outer, str(root / "serving"))
    return root


@pytest.mark.parametrize("within, folder", [((), "backbone"), (("backbone",), "serving")])
def test_engines_give_the_savedmodels_embeddings(tiny_models, tmp_path, monkeypatch, within, folder):
    monkeypatch.setenv("BRANDLENS_ENGINE_CACHE", str(tmp_path / "engines"))
    images = np.random.default_rng(1).uniform(0, 255, (11, 16, 16, 3)).astype(np.float32)  # 11: not a multiple of the chunk
    reference = engines.load_engine(engines.SAVEDMODEL, tiny_models / folder, "tiny", within).embed(images)
    assert reference.shape == (11, 8)
    fp32 = engines.load_engine(engines.TFLITE, tiny_models / folder, "tiny", within)
    np.testing.assert_allclose(fp32.embed(images), reference, atol=1e-5)
    int8 = engines.load_engine(engines.TFLITE_INT8, tiny_models / folder, "tiny", within).embed(images)
    assert np.abs(int8 - reference).max() < 0.1 * np.abs(reference).max()  # int8 weights: close, not equal
    converted = sorted((tmp_path / "engines").glob("*.tflite"))
    assert len(converted) == 2
    stamp = converted[0].stat().st_mtime_ns
    engines.load_engine(engines.TFLITE, tiny_models / folder, "tiny", within)  # cached: not converted again
    assert converted[0].stat().st_mtime_ns == stamp
    with pytest.raises(ValueError, match="unknown engine"):
        engines.load_engine("onnx", tiny_models / folder, "tiny")


def _write_examples(folder, shards):
    folder.mkdir(parents=True)
    for i, records in enumerate(shards):
        with tf.io.TFRecordWriter(str(folder / f"train-{i:05d}-of-{len(shards):05d}.tfrecord.gz"), "GZIP") as writer:
            for record in records:
                writer.write(record)


def test_transform_key_follows_the_examples_not_their_order(tmp_path):
    records = [f"example {i}".encode() for i in range(7)]
    _write_examples(tmp_path / "a" / "examples", [records[:3], records[3:]])
    _write_examples(tmp_path / "b" / "examples", [records[::-1]])
    _write_examples(tmp_path / "c" / "examples", [records[:6] + [b"another"]])
    raw = gzip.decompress((tmp_path / "b" / "examples" / "train-00000-of-00001.tfrecord.gz").read_bytes())
    assert list(transform_reuse.tfrecord_payloads(raw)) == records[::-1]
    key = lambda name, backbone="lite2@x": transform_reuse.transform_key(str(tmp_path / name), backbone, 0)  # noqa: E731
    assert key("a") == key("b") != key("c")
    assert key("a") != key("a", "lite2@y")


def test_a_stored_transform_output_is_found_only_when_complete_and_restores(tmp_path):
    output, cache = tmp_path / "run1", tmp_path / "cache"
    (output / "transform" / "transform_fn" / "assets").mkdir(parents=True)
    (output / "transform" / "transform_fn" / "assets" / "labels").write_text("acme\nneither\n")
    (output / "transformed").mkdir()
    (output / "transformed" / "train-00000-of-00001.tfrecord.gz").write_bytes(b"rows")
    assert transform_reuse.find(str(cache), "k1") is None
    folder = transform_reuse.store(str(output), str(cache), "k1", ["acme", "neither"])
    assert transform_reuse.find(str(cache), "k1") == folder and transform_reuse.find(str(cache), "k2") is None
    again = tmp_path / "run2"
    assert transform_reuse.restore(folder, str(again)) == ["acme", "neither"]
    assert (again / "transformed" / "train-00000-of-00001.tfrecord.gz").read_bytes() == b"rows"
    assert (again / "transform" / "transform_fn" / "assets" / "labels").read_text() == "acme\nneither\n"
    stored = Path(folder) / "transformed" / "train-00000-of-00001.tfrecord.gz"
    stored.write_bytes(b"ro")  # damaged (cut short): named, ignored, so TFT runs again
    assert transform_reuse.find(str(cache), "k1") is None
    (Path(folder) / "transformed" / "train-00000-of-00002.tfrecord.gz").write_bytes(b"stale")  # a killed store's leftover
    folder = transform_reuse.store(str(output), str(cache), "k1", ["acme", "neither"])
    assert transform_reuse.find(str(cache), "k1") == folder
    assert sorted(p.name for p in (Path(folder) / "transformed").iterdir()) == ["train-00000-of-00001.tfrecord.gz"]


def _stored_file(path, start, n, dim=4):
    emb = np.arange(start * dim, (start + n) * dim, dtype=np.float32).reshape(n, dim)
    table = pa.table({"post_id": [f"p{start + i}" for i in range(n)],
                      "embedding": pa.FixedSizeListArray.from_arrays(pa.array(emb.ravel()), dim)})
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, compression="zstd")
    return emb


def test_stored_embeddings_stream_every_batch_from_parallel_readers(tmp_path):
    a = _stored_file(tmp_path / "dt=2026-11-01" / "a.parquet", 0, 10)
    b = _stored_file(tmp_path / "dt=2026-11-02" / "b.parquet", 10, 7)
    paths = [str(tmp_path / "dt=2026-11-01" / "a.parquet"), str(tmp_path / "dt=2026-11-02" / "b.parquet")]
    batches = list(stored.stream_files(paths, ["post_id", "embedding"], threads=2, batch_rows=4))
    assert [x.meta.num_rows for x in batches if x.partition == "2026-11-01"] == [4, 4, 2]
    got = {pid: emb for x in batches for pid, emb in zip(x.meta.column("post_id").to_pylist(), x.embeddings)}
    assert len(got) == 17 and all(x.embeddings.dtype == np.float32 for x in batches)
    np.testing.assert_array_equal(np.stack([got[f"p{i}"] for i in range(17)]), np.concatenate([a, b]))
    partition, meta, embeddings = batches[0]  # unpacks like the tuple it replaced
    coder = stored.EmbeddingBatchCoder()
    back = coder.decode(coder.encode(batches[0]))
    assert back.partition == partition and back.meta.equals(meta) and np.array_equal(back.embeddings, embeddings)
    assert coder.estimate_size(batches[0]) >= embeddings.nbytes
    with pytest.raises(Exception):
        list(stored.stream_files(paths + [str(tmp_path / "missing.parquet")], ["post_id", "embedding"], threads=2))


def test_batch_decode_keeps_every_post_alone(tmp_path):
    """One thread per core over batches of posts, decoding ahead across batches: a good post gives its views, each
    bad one its own dead letter, in input order, once; what is still in flight is emitted when the bundle ends."""
    import io

    from PIL import Image

    from beam_jobs.common.records import DEAD_LETTER_TAG, ImageRecord
    from beam_jobs.scoring.pipeline import Post, _DecodeAndPrepareBatch

    jpeg = io.BytesIO()
    Image.new("RGB", (40, 30), (200, 30, 30)).save(jpeg, "JPEG")
    from apache_beam.transforms.window import GlobalWindow
    from apache_beam.utils.timestamp import MIN_TIMESTAMP
    from apache_beam.utils.windowed_value import WindowedValue

    def good(name):
        return Post(name, "2026-12-01", ImageRecord(f"{name}.jpg", name, data=jpeg.getvalue()))

    posts = [good("good"), Post("corrupt", "2026-12-01", ImageRecord("corrupt.jpg", "corrupt", data=b"\xff\xd8 not a jpeg")),
             Post("empty", "2026-12-01", ImageRecord("empty.jpg", "empty", data=b"")), good("good2"),
             Post("gone", "2026-12-01", ImageRecord(str(tmp_path / "gone.jpg"), "gone")),  # read in the decode thread
             good("good3")]
    fn = _DecodeAndPrepareBatch(16, 1.0, "squash", 1, 10_000_000, ahead=2)
    fn.setup()
    try:
        fn.start_bundle()
        during = [list(fn.process(batch, MIN_TIMESTAMP, GlobalWindow())) for batch in (posts[:3], posts[3:])]
        at_end = list(fn.finish_bundle())
    finally:
        fn.teardown()
    assert [len(d) for d in during] == [1, 3] and len(at_end) == 2  # two posts in flight at each step
    assert all(isinstance(o.value if hasattr(o, "tag") else o, WindowedValue) for o in at_end)

    def unwrap(o):
        inner = getattr(o, "value", o) if hasattr(o, "tag") else o
        inner = inner.value if isinstance(inner, WindowedValue) else inner
        return (o.tag, inner) if hasattr(o, "tag") else (None, inner)

    out = [unwrap(o) for o in during[0] + during[1] + at_end]
    views = [value for tag, value in out if tag is None]
    dead = [value for tag, value in out if tag == DEAD_LETTER_TAG]
    assert [(post.post_id, array.shape) for post, array in views] == [(n, (1, 16, 16, 3)) for n in ("good", "good2", "good3")]
    assert views[0][0].record.data is None and views[0][0].content_hash
    assert [d.record_id for d in dead] == ["corrupt", "empty", "gone"]
    reasons = {d.record_id: (d.stage, d.reason) for d in dead}
    assert reasons["empty"][1] == "empty" and reasons["gone"] == ("fetch", "missing_file")


def test_file_digests_are_remembered_until_a_file_is_written_and_a_bad_memo_is_ignored(tmp_path):
    import hashlib

    from beam_jobs.bottlenecks.run_reuse import MISSING, FileDigests

    image, memo = tmp_path / "a.jpg", tmp_path / "memo" / "file-digests.json"
    image.write_bytes(b"one")
    first = FileDigests(str(memo))
    assert first.digest(str(image)) == hashlib.sha256(b"one").hexdigest()
    assert first.digest(str(tmp_path / "gone.jpg")) == MISSING
    first.save()
    image.write_bytes(b"two")  # same size: the write still changes mtime/ctime, so it is hashed again
    assert FileDigests(str(memo)).digest(str(image)) == hashlib.sha256(b"two").hexdigest()
    memo.write_text("{not json")
    assert FileDigests(str(memo)).digest(str(image)) == hashlib.sha256(b"two").hexdigest()


def test_rows_per_partition_reads_footers_and_names_a_damaged_file(tmp_path):
    """Rescoring sizes its output files from the stored files' footers; a damaged file is a one-line error naming it."""
    from beam_jobs.scoring.stored import rows_per_partition
    from brandlens.errors import ArtifactError

    paths = []
    for day, rows in (("2026-11-01", 3), ("2026-11-01", 2), ("2026-11-02", 4)):
        folder = tmp_path / f"dt={day}"
        folder.mkdir(exist_ok=True)
        path = folder / f"part-{len(paths)}.parquet"
        pq.write_table(pa.table({"post_id": [str(i) for i in range(rows)]}), path)
        paths.append(str(path))
    assert rows_per_partition(paths) == {"2026-11-01": 5, "2026-11-02": 4}
    Path(paths[1]).write_bytes(Path(paths[1]).read_bytes()[:20])
    with pytest.raises(ArtifactError, match="part-1.parquet cannot be read as Parquet"):
        rows_per_partition(paths)
