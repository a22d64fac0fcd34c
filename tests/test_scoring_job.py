"""The scoring job end to end: generated posts with metadata and bad input, the real exported model."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from beam_jobs.scoring.config import OutputConfig, RescoreConfig, ScoringConfig
from beam_jobs.scoring.job import rescore, run
from brandlens.query import QueryConfig, query
from schemas import scores as schema

SCORED_AT = dt.datetime(2026, 11, 29, 12, 0, tzinfo=dt.timezone.utc)


@pytest.fixture(scope="module")
def posts(sample_bottlenecks, tmp_path_factory) -> tuple[Path, list[dict], dict]:
    """The sample's posts manifest plus bad posts, each with the reason it must be dead-lettered for."""
    sample = sample_bottlenecks.parent / "sample"
    folder = tmp_path_factory.mktemp("posts")
    with open(sample / "posts.csv") as f:
        rows = list(csv.DictReader(f))[::3]
    for row in rows:
        row["image_uri"] = str(sample / row["image_uri"])
    good = next(r for r in rows)
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "notes.jpg").write_text("not an image")
    data = (sample / good["image_uri"]).read_bytes()
    (folder / "cut.jpg").write_bytes(data[: len(data) // 2])
    bad = {
        "bad-missing": ("missing_file", str(folder / "nope.jpg"), "2026-11-02"),
        "bad-empty": ("empty", str(folder / "empty.jpg"), "2026-11-02"),
        "bad-text": ("not_an_image", str(folder / "notes.jpg"), "2026-11-02"),
        "bad-cut": ("truncated", str(folder / "cut.jpg"), "2026-11-02"),
        "bad-date": ("bad_row", good["image_uri"], "last tuesday"),
    }
    extra = [{"post_id": pid, "image_uri": uri, "posted_at": date, "user": "u", "caption": "bad"} for pid, (_, uri, date) in bad.items()]
    duplicate = dict(rows[1], caption="the same post id again")
    no_id = dict(rows[2], post_id="")
    manifest = folder / "posts.csv"
    with open(manifest, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows + extra + [duplicate, no_id])
    expected = {"good": [r["post_id"] for r in rows], "bad": {k: v[0] for k, v in bad.items()}}
    return manifest, rows, expected


def _score(manifest, model, output, **kwargs) -> dict:
    return run(ScoringConfig(input=str(manifest), model=str(model), out=OutputConfig(str(output), rows_per_file=10, scored_at=SCORED_AT),
                             batch_size=8, **kwargs))


def _rows(output: Path) -> list[dict]:
    table = pq.read_table(str(output / "scores"), partitioning="hive")
    return sorted(table.to_pylist(), key=lambda r: (r[schema.POST_ID], r[schema.MODEL_VERSION]))


def _dead_letters(output: Path) -> list[dict]:
    return [json.loads(line) for p in sorted((output / "runs").glob("*/dead_letters*.jsonl")) for line in p.read_text().splitlines()]


@pytest.fixture(scope="module")
def scored(posts, sample_model, tmp_path_factory):
    manifest, _, _ = posts
    output = tmp_path_factory.mktemp("scored") / "out"
    return output, _score(manifest, sample_model, output)


def test_every_post_lands_once_in_output_or_dead_letters(posts, scored):
    manifest, rows, expected = posts
    output, summary = scored
    out_rows, dead = _rows(output), _dead_letters(output)
    assert sorted(r[schema.POST_ID] for r in out_rows) == sorted(expected["good"])
    reasons = {d["record_id"]: d["reason"] for d in dead if d["record_id"].startswith("bad-")}
    assert reasons == expected["bad"]
    assert sorted(d["reason"] for d in dead if not d["record_id"].startswith("bad-")) == ["bad_row", "duplicate_post_id"]
    input_rows = len(rows) + len(expected["bad"]) + 2
    assert summary["counts"]["read"] == input_rows == len(out_rows) + len(dead)
    assert summary["reconciliation"]["ok"] and summary["counts"]["scored"] == len(out_rows)
    assert summary["model"]["version_id"] == json.loads((Path(summary["model"]["path"]) / "model_card.json").read_text())["version_id"]


def test_rows_carry_metadata_lineage_and_partitions(posts, scored, sample_model):
    _, rows, _ = posts
    output, summary = scored
    card = json.loads((sample_model / "model_card.json").read_text())
    by_id = {r["post_id"]: r for r in rows}
    table = pq.read_table(str(output / "scores"), partitioning="hive")
    assert [n for n in table.schema.names if n.startswith("score_")] == [schema.score_column(l) for l in card["labels"]]
    for row in _rows(output):
        source = by_id[row[schema.POST_ID]]
        assert str(row["dt"]) == source["posted_at"][:10]
        assert (row["user"], row["caption"], row[schema.IMAGE_URI]) == (source["user"], source["caption"], source["image_uri"])
        assert row[schema.MODEL_VERSION] == card["version_id"] and row[schema.BACKBONE] == card["backbone"]["version"]
        assert row[schema.SCORED_AT] == SCORED_AT
        scores = [row[schema.score_column(l)] for l in card["labels"]]
        assert abs(sum(scores) - 1) < 1e-5 and row[schema.LABEL] in card["labels"]
        assert row[schema.BRAND_FOUND] == (row[schema.LABEL] != card["neither_label"])
    files = list((output / "scores").rglob("*.parquet"))
    assert all(pq.read_metadata(f).num_rows <= 10 for f in files) and len(files) < len(rows)


def test_parquet_scores_equal_the_exported_models_own_predictions(scored, sample_model):
    import tensorflow as tf

    output, _ = scored
    rows = _rows(output)
    serving = tf.saved_model.load(str(sample_model / "serving")).signatures["serving_default"]
    direct = serving(image_bytes=tf.constant([Path(r[schema.IMAGE_URI]).read_bytes() for r in rows]))
    labels = json.loads((sample_model / "model_card.json").read_text())["labels"]
    parquet = np.array([[r[schema.score_column(l)] for l in labels] for r in rows])
    np.testing.assert_allclose(parquet, direct["scores"].numpy(), atol=1e-5)
    assert [r[schema.LABEL] for r in rows] == [s.decode() for s in direct["label"].numpy()]


def test_rerun_is_idempotent(posts, scored, sample_model):
    manifest, _, _ = posts
    output, first_summary = scored
    before = _rows(output)
    files_before = sorted(p.relative_to(output) for p in output.rglob("*") if p.is_file())
    summary = _score(manifest, sample_model, output)
    assert summary["run_key"] == first_summary["run_key"]
    assert _rows(output) == before
    assert sorted(p.relative_to(output) for p in output.rglob("*") if p.is_file()) == files_before


def test_query_over_the_output(scored):
    output, summary = scored
    text = query(QueryConfig(str(output / "scores"), ("brand-share",), None, 3, "json"))
    share = json.loads(text.splitlines()[-1])
    assert share["posts"] == summary["counts"]["scored"]


def test_rescore_from_stored_embeddings_needs_no_cnn(scored, sample_model, sample_bottlenecks, posts, tmp_path):
    """From scoring output with embeddings, and from the bottleneck job's TFRecords."""
    manifest, _, _ = posts
    with_embedding = tmp_path / "with-embedding"
    _score(manifest, sample_model, with_embedding, write_embedding=True)
    original = _rows(with_embedding)
    assert len(original[0][schema.EMBEDDING]) == 1280

    relabelled = tmp_path / "rescored"
    summary = rescore(RescoreConfig(str(with_embedding / "scores"), str(sample_model), OutputConfig(str(relabelled), scored_at=SCORED_AT)))
    assert summary["reconciliation"]["ok"] and summary["counts"]["scored"] == len(original)
    again = {r[schema.POST_ID]: r for r in _rows(relabelled)}
    for row in original:
        other = again[row[schema.POST_ID]]
        assert other["caption"] == row["caption"] and str(other["dt"]) == str(row["dt"])
        assert abs(other["score_acme"] - row["score_acme"]) < 1e-5 and other[schema.LABEL] == row[schema.LABEL]
        brand = other[schema.LABEL] != "neither"  # an embedding has no locations: its label alone, without a box
        assert other[schema.BRANDS] == ([{"label": other[schema.LABEL], "score": other[schema.CONFIDENCE], "box": [],
                                          "area": None}] if brand else [])
        assert other[schema.BOX] == [] and other[schema.BRAND_FOUND] == brand
    assert any(r[schema.BRANDS] for r in again.values()) and not all(r[schema.BRANDS] for r in again.values())

    # Shards sized by the stored files' footers: as many files per partition, holding the same posts, as counting
    # the scored rows would give.
    from beam_jobs.scoring.parquet_sink import stable_hash

    sharded = tmp_path / "sharded"
    rescore(RescoreConfig(str(with_embedding / "scores"), str(sample_model), OutputConfig(str(sharded), rows_per_file=3, scored_at=SCORED_AT)))
    for folder in sorted((with_embedding / "scores").glob("dt=*")):
        ids = {r[schema.POST_ID] for r in _rows(with_embedding) if f"dt={r['dt']}" == folder.name}
        files = sorted((sharded / "scores" / folder.name).glob("*.parquet"))
        assert len(files) == -(-len(ids) // 3)
        for shard, path in enumerate(files):
            in_file = set(pq.read_table(path).column(schema.POST_ID).to_pylist())
            assert in_file == {i for i in ids if stable_hash(i) % len(files) == shard}

    from_examples = tmp_path / "from-examples"
    summary = rescore(RescoreConfig(str(sample_bottlenecks), str(sample_model), OutputConfig(str(from_examples), scored_at=SCORED_AT)))
    rows = _rows(from_examples)
    counts = json.loads((sample_bottlenecks / "summary.json").read_text())["counts"]["written"]
    assert len(rows) == sum(counts.values()) and summary["counts"]["read"] == len(rows)
    assert {r["source_split"] for r in rows} == {"train", "validation", "test"}


def test_image_folder_and_webdataset_inputs(sample_bottlenecks, sample_model, tmp_path):
    images = sample_bottlenecks.parent / "sample" / "images" / "zenith"
    folder_out = tmp_path / "folder"
    summary = _score(images, sample_model, folder_out)
    rows = _rows(folder_out)
    assert summary["counts"]["read"] == len(rows) == 20
    assert all(r[schema.POST_ID] == r[schema.IMAGE_URI] for r in rows)
    assert {str(r["dt"]) for r in rows} == {SCORED_AT.date().isoformat()}

    shard = tmp_path / "posts-000.tar"
    with tarfile.open(shard, "w") as tar:
        for i, path in enumerate(sorted(images.glob("*.jpg"))[:5]):
            for name, data in ((f"k{i}.jpg", path.read_bytes()), (f"k{i}.json", json.dumps({"post_id": f"wd-{i}", "posted_at": "2026-11-05"}).encode())):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    shard_out = tmp_path / "shards"
    summary = _score(shard, sample_model, shard_out, carry=())
    rows = _rows(shard_out)
    assert sorted(r[schema.POST_ID] for r in rows) == [f"wd-{i}" for i in range(5)]
    assert {str(r["dt"]) for r in rows} == {"2026-11-05"}


def test_multi_crop_keeps_the_most_brand_like_view(posts, scored, sample_model, tmp_path):
    manifest, _, _ = posts
    output, _ = scored
    plain = {r[schema.POST_ID]: r for r in _rows(output)}
    summary = _score(manifest, sample_model, tmp_path / "multi", multi_crop=2)
    tiled = _rows(tmp_path / "multi")
    assert summary["reconciliation"]["ok"] and len(tiled) == len(plain)
    for row in tiled:
        base = plain[row[schema.POST_ID]]
        assert max(row["score_acme"], row["score_zenith"]) >= max(base["score_acme"], base["score_zenith"]) - 1e-6


def test_multi_crop_reports_every_brand_passing_its_tile_threshold_on_some_view(posts, sample_model, tmp_path):
    import shutil

    from schemas import model as contract

    manifest, _, _ = posts
    exported = json.loads((sample_model / contract.MODEL_CARD).read_text())["tile_thresholds"]
    assert set(exported) == {"2"} and set(exported["2"]) == {"acme", "zenith"}
    assert all(0.5 <= t <= 1.0 for t in exported["2"].values())
    model = tmp_path / "model"
    shutil.copytree(sample_model, model)
    card = json.loads((model / contract.MODEL_CARD).read_text())
    card["tile_thresholds"] = {"2": {"acme": 0.0, "zenith": 0.0}}  # every brand passes on some view
    (model / contract.MODEL_CARD).write_text(json.dumps(card))
    summary = _score(manifest, model, tmp_path / "multi", multi_crop=2)
    rows = _rows(tmp_path / "multi")
    assert summary["reconciliation"]["ok"] and rows
    for row in rows:
        assert sorted(b["label"] for b in row[schema.BRANDS]) == ["acme", "zenith"] and row[schema.BRAND_FOUND]
        assert all(len(b["box"]) == 4 and all(0.0 <= v <= 1.0 for v in b["box"]) for b in row[schema.BRANDS])
    plain = _score(manifest, model, tmp_path / "plain")  # no tiles: the tile thresholds do not apply
    assert any(len(r[schema.BRANDS]) < 2 for r in _rows(tmp_path / "plain")) and plain["reconciliation"]["ok"]


def _unconvertible(export: Path, target: Path) -> Path:
    """A copy of ``export`` whose score_images holds an op TFLite lacks (MatrixDiagPartV3), the same values."""
    import shutil

    import tensorflow as tf

    from schemas import model as contract

    shutil.copytree(export, target, ignore=shutil.ignore_patterns(contract.SERVING_DIR))
    inner = tf.saved_model.load(str(export / contract.SERVING_DIR))
    size = json.loads((export / contract.MODEL_CARD).read_text())["backbone"]["input_size"]

    class Unconvertible(tf.Module):
        def __init__(self):
            super().__init__()
            self.inner, self.backbone = inner, inner.backbone  # the backbone where the split path finds it

        @tf.function(input_signature=[tf.TensorSpec([None, size, size, 3], tf.float32, name=contract.INPUT_IMAGES)])
        def score_images(self, images):
            out = dict(self.inner.signatures[contract.SIG_IMAGES](**{contract.INPUT_IMAGES: images}))
            scores = out[contract.OUT_SCORES]
            out[contract.OUT_SCORES] = tf.linalg.diag_part(tf.tile(scores[:, None, :], [1, tf.shape(scores)[1], 1]))
            return out

    module = Unconvertible()
    tf.saved_model.save(module, str(target / contract.SERVING_DIR), signatures={contract.SIG_IMAGES: module.score_images})
    return target


def test_engine_seam_runs_the_whole_signature_on_tflite_and_falls_back_where_it_cannot(sample_model, tmp_path,
                                                                                      monkeypatch):
    """TFLite runs the whole score_images (one interpreter call per batch), every output within the engine's
    tolerance of the SavedModel's. A graph that does not convert runs its backbone on TFLite and head/ after it:
    from the final map (score_maps) where the export makes evidence outputs; an export whose head/ has no
    score_maps as well (written before it) scores on its SavedModel."""
    import shutil

    import tensorflow as tf

    from beam_jobs.scoring.model import ScoringModel
    from brandlens import engines
    from schemas import model as contract

    monkeypatch.setenv("BRANDLENS_ENGINE_CACHE", str(tmp_path / "engines"))
    images = np.random.default_rng(0).uniform(0, 255, (2, *[ScoringModel(sample_model).card.input_size] * 2, 3)).astype(np.float32)
    reference = ScoringModel(sample_model).score_images(images)
    assert any(name in reference for name in contract.EVIDENCE_OUTPUTS)  # the sample export makes boxes

    def check(out, tolerance=1e-3):
        assert set(out) == set(reference)
        for name in (contract.OUT_SCORES, contract.OUT_CONFIDENCE, contract.OUT_REGION_SCORES, contract.OUT_EVIDENCE_MAPS):
            np.testing.assert_allclose(out[name], reference[name], atol=tolerance, err_msg=name)
        np.testing.assert_allclose(out[contract.OUT_EMBEDDING], reference[contract.OUT_EMBEDDING], atol=1e-4)
        assert list(out[contract.OUT_LABEL]) == list(reference[contract.OUT_LABEL])

    model = ScoringModel(sample_model, engines.TFLITE)
    model.load(contract.SERVING_DIR)
    assert model.engine == engines.TFLITE and model._whole is not None
    assert len(list((tmp_path / "engines").glob("*.tflite"))) == 1  # the whole signature, nothing else converted
    check(model.score_images(images))

    split = _unconvertible(sample_model, tmp_path / "split")
    model = ScoringModel(str(split), engines.TFLITE)
    model.load(contract.SERVING_DIR)
    assert model.engine == engines.TFLITE and model._whole is None and model._from_maps
    check(model.score_images(images))

    older = tmp_path / "older"  # and head/ with serving_default only, as exports made before score_maps
    shutil.copytree(split, older)
    head = tf.saved_model.load(str(older / contract.HEAD_DIR))
    shutil.rmtree(older / contract.HEAD_DIR)
    tf.saved_model.save(head, str(older / contract.HEAD_DIR), signatures={contract.SIG_EMBEDDING: head.serve})
    model = ScoringModel(str(older), engines.TFLITE)
    model.load(contract.SERVING_DIR)
    assert model.engine == engines.SAVEDMODEL
    np.testing.assert_allclose(model.score_images(images)["scores"], reference["scores"], atol=1e-6)


def test_maps_cost_benchmark_compares_both_tflite_paths(sample_model):
    from bench.maps_cost import measure

    result = measure(str(sample_model), rounds=2, batch=2)
    assert set(result["images_per_s"]) == {"maps_on", "maps_on_split", "maps_off"} and all(v > 0 for v in result["images_per_s"].values())
    assert all(len(v) == 2 for v in result["seconds"].values()) and result["maps_on_vs_off"] > 0


def test_the_head_handler_does_not_carry_the_embeddings_it_was_given(sample_model, sample_bottlenecks):
    """Rescoring writes no embeddings: echoing them back through the pipeline held every post's embedding twice
    (a million posts ran out of 24 GB on the DirectRunner)."""
    import numpy as np

    from beam_jobs.scoring.model import HeadHandler
    from schemas import model as contract
    from trainer.data import load_bottlenecks

    raw = load_bottlenecks(sample_bottlenecks).splits["test"].raw
    handler = HeadHandler(str(sample_model))
    outputs = handler.run_inference([raw[:3], raw[3:5]], handler.load_model())
    assert [len(o[contract.OUT_SCORES]) for o in outputs] == [3, 2]
    assert all(contract.OUT_EMBEDDING not in o for o in outputs)
    assert np.allclose(outputs[0][contract.OUT_SCORES].sum(axis=1), 1.0, atol=1e-5)


def test_model_handlers_log_progress_at_the_model_call(sample_model, sample_bottlenecks, lite0_artifact, caplog):
    """Progress is counted where the model runs: the steps after RunInference may see nothing until every batch
    is done, so a count there logged no line during the run (the benchmark's steady rates read these lines)."""
    import logging

    from beam_jobs.common.embedding import PROGRESS as EMBEDDED, BackboneHandler
    from beam_jobs.common.progress import progress
    from beam_jobs.scoring.model import HeadHandler, ImagesHandler, ScoringModel
    from trainer.data import load_bottlenecks

    raw = load_bottlenecks(sample_bottlenecks).splits["test"].raw
    size = ScoringModel(sample_model).card.input_size
    views = np.random.default_rng(0).uniform(0, 255, (3, size, size, 3)).astype(np.float32)
    cases = [
        (HeadHandler(str(sample_model), progress_interval=0), [raw[:3], raw[3:5]], "posts rescored", 5),  # rows
        (ImagesHandler(str(sample_model), 2, progress_interval=0), [views[:1], views[1:]], "posts scored", 2),  # posts
        (BackboneHandler(str(lite0_artifact), 2, progress_interval=0), list(views[:2]), EMBEDDED, 2),  # images
    ]
    caplog.set_level(logging.INFO, logger="beam_jobs.progress")
    for handler, batch, what, n in cases:
        before, model = progress(what, 0).count, handler.load_model()
        for _ in range(2):  # a process's first call only starts the clock
            handler.run_inference(batch, model)
        assert progress(what, 0).count == before + 2 * n
        assert f"{what}: {before + 2 * n} (" in caplog.text
