"""Pure parts of the scoring job: post identity, partitions, multi-crop views, rows."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest

from beam_jobs.scoring.rows import BadPost, best_view, partition_of, post_id_of, score_row, tile_boxes, views
from schemas import scores as schema

RUN_DATE = dt.date(2026, 11, 29)


def test_post_id_per_input_format():
    assert post_id_of("/a/b.jpg", "posts.csv:3", {"post_id": "p1"}, "post_id", "manifest") == "p1"
    with pytest.raises(BadPost, match="no 'post_id'"):
        post_id_of("/a/b.jpg", "posts.csv:3", {"post_id": ""}, "post_id", "manifest")
    assert post_id_of("/a/b.jpg", "b.jpg", {}, "post_id", "dir") == "/a/b.jpg"
    assert post_id_of("shard.tar#k1", "shard.tar/k1", {}, "post_id", "webdataset") == "shard.tar/k1"
    assert post_id_of("shard.tar#k1", "shard.tar/k1", {"post_id": "x9"}, "post_id", "webdataset") == "x9"


@pytest.mark.parametrize("value, expected", [
    ("2026-11-03T10:00:00Z", "2026-11-03"), ("2026-11-03", "2026-11-03"), (" 2026-01-31 23:59", "2026-01-31"),
    (None, "2026-11-29"), ("", "2026-11-29"),
])
def test_partition_dates(value, expected):
    assert partition_of(value, RUN_DATE) == expected


@pytest.mark.parametrize("value", ["yesterday", "03/11/2026", "2026-02-30"])
def test_bad_dates_are_bad_posts(value):
    with pytest.raises(BadPost):
        partition_of(value, RUN_DATE)


def test_tiles_cover_the_image_with_overlap():
    assert tile_boxes(100, 200, 1) == []
    boxes = tile_boxes(120, 160, 3)
    assert len(boxes) == 9
    covered = np.zeros((120, 160), bool)
    for top, left, bottom, right in boxes:
        assert 0 <= top < bottom <= 120 and 0 <= left < right <= 160
        covered[top:bottom, left:right] = True
    assert covered.all()
    assert boxes[1][1] < boxes[0][3]  # neighbours overlap
    rgb = np.zeros((120, 160, 3), np.uint8)
    assert [v.shape for v in views(rgb, 2)][0] == (120, 160, 3) and len(views(rgb, 2)) == 5


def test_best_view_prefers_the_most_brand_like_view():
    brand = np.array([True, True, False])
    scores = np.array([[0.2, 0.1, 0.7], [0.1, 0.8, 0.1], [0.6, 0.1, 0.3]])
    assert best_view(scores, brand) == 1
    assert best_view(scores[:1], brand) == 0
    assert best_view(scores, np.array([False, False, False])) == 0


def test_score_row_has_every_schema_column():
    labels = ("acme", "neither")
    outputs = {"label": np.array(["neither"], object), "confidence": np.array([0.75], np.float32),
               "scores": np.array([[0.25, 0.75]], np.float32), "embedding": np.ones((1, 4), np.float32)}
    at = dt.datetime(2026, 11, 29, tzinfo=dt.timezone.utc)
    row = score_row("p1", "u", "h", "2026-11-01", outputs, 0, labels, "neither", "m", "b", at, {"caption": "c"}, True)
    arrow = schema.scores_schema(list(labels), ["caption"], True, 4)
    assert set(row) == set(arrow.names) | {schema.PARTITION}
    assert row[schema.BRAND_FOUND] is False and row["score_acme"] == 0.25 and row[schema.EMBEDDING] == [1.0] * 4


def test_views_are_prepared_as_the_models_backbone_says():
    """The whole image with the fingerprint's resize mode and crop; tiles whole (squash)."""
    import io

    from PIL import Image

    from beam_jobs.common.records import ImageRecord
    from beam_jobs.scoring.model import ModelCard
    from beam_jobs.scoring.pipeline import Post, _DecodeAndPrepare
    from brandlens.preprocess import prepare

    rgb = np.random.default_rng(0).integers(0, 255, (90, 160, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    post = Post("p", "2026-11-29", ImageRecord("u", "p", {}, buf.getvalue()))
    card = ModelCard("m", ("a", "neither"), "neither", None, {"version": "b", "input_size": 64, "crop_fraction": 1.0,
                                                            "embedding_dim": 4, "resize_mode": "squash"})
    assert ModelCard("m", (), None, None, {"version": "b"}).resize_mode == "center_crop"
    (slim, prepared), = list(_DecodeAndPrepare(card.input_size, card.crop_fraction, card.resize_mode, 2, 10**8).process(post))
    assert slim.record.data is None and len(slim.content_hash) == 64 and prepared.shape == (5, 64, 64, 3)
    np.testing.assert_array_equal(prepared[0], prepare(rgb, 64, 1.0, "squash"))
    top, left, bottom, right = tile_boxes(90, 160, 2)[0]
    np.testing.assert_array_equal(prepared[1], prepare(rgb[top:bottom, left:right], 64, 1.0, "squash"))


def test_duplicate_posts_resolve_deterministically_even_with_nulls():
    from beam_jobs.common.records import ImageRecord
    from beam_jobs.scoring.pipeline import Post, _one_per_post

    posts = [Post("p", "2026-11-01", ImageRecord("u", "p", {"caption": value})) for value in ("x", None, "a")]
    outputs = list(_one_per_post(("p", posts)))
    assert outputs[0].record.metadata["caption"] == "a"
    assert [o.value.reason for o in outputs[1:]] == ["duplicate_post_id", "duplicate_post_id"]
    assert list(_one_per_post(("p", posts[::-1])))[0] == outputs[0]


def test_scores_files_store_embeddings_plain_and_the_rest_compressed(tmp_path):
    """The embedding column is written plain and uncompressed (a dictionary fallback on float noise made decoding
    rescoring's bottleneck); every other column keeps zstd; both writers make the same bytes; DuckDB reads it."""
    import io

    import duckdb
    import pyarrow as pa
    import pyarrow.parquet as pq

    from beam_jobs.scoring.parquet_sink import encode_arrow, encode_table

    arrow = schema.scores_schema(["acme", "neither"], ["user"], with_embedding=True, embedding_dim=8)
    rng = np.random.default_rng(0)
    rows = []
    for i in range(50):
        row = {f.name: None for f in arrow}
        row.update({schema.POST_ID: f"p{i:03d}", schema.IMAGE_URI: f"/x/{i}.jpg", schema.RESOLVED_URI: f"/x/{i}.jpg",
                    schema.CONTENT_HASH: f"{i:064x}", schema.LABEL: "acme", schema.CONFIDENCE: 0.9, schema.BRAND_SCORE: 0.9,
                    schema.BRAND_FOUND: True, schema.MODEL_VERSION: "m", schema.BACKBONE: "b",
                    schema.SCORED_AT: dt.datetime(2026, 12, 1, tzinfo=dt.timezone.utc), schema.BRANDS: [], schema.BOX: [],
                    "score_acme": 0.9, "score_neither": 0.1, "user": "u", schema.EMBEDDING: rng.random(8).tolist()})
        rows.append(row)
    data = encode_table(rows[::-1], arrow)
    assert data == encode_arrow([pa.Table.from_pylist(rows, schema=arrow)], arrow)
    meta = pq.ParquetFile(io.BytesIO(data)).metadata.row_group(0)
    columns = {meta.column(i).path_in_schema: meta.column(i) for i in range(meta.num_columns)}
    embedding = columns[f"{schema.EMBEDDING}.list.element"]
    assert embedding.compression == "UNCOMPRESSED" and "RLE_DICTIONARY" not in embedding.encodings
    assert all(c.compression == "ZSTD" for path, c in columns.items() if not path.startswith(schema.EMBEDDING))
    assert "RLE_DICTIONARY" in columns[schema.POST_ID].encodings
    (tmp_path / "part.parquet").write_bytes(data)
    got = duckdb.sql(f"select post_id, embedding from read_parquet('{tmp_path / 'part.parquet'}') order by post_id").fetchall()
    assert [g[0] for g in got] == [r[schema.POST_ID] for r in rows]
    np.testing.assert_allclose(np.array([g[1] for g in got]), np.array([r[schema.EMBEDDING] for r in rows]), rtol=1e-6)
