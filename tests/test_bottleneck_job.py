"""The bottleneck job end to end, in this process: generated archives with bad files, the cache, TFT, real data."""

from __future__ import annotations

import csv
import glob
import io
import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest

from beam_jobs.bottlenecks.config import NAMESPACE, BottleneckConfig
from beam_jobs.bottlenecks.job import EmptyTrainingSplit, run, summarise
from beam_jobs.bottlenecks.pipeline import build_pipeline
from beam_jobs.common.accounting import query_counters
from beam_jobs.common.options import RunnerConfig
from brandlens.config import BackboneConfig
from brandlens.errors import ConfigError
from brandlens.imaging import content_hash
from schemas import layout
from schemas.bottleneck import from_example_bytes, raw_feature_spec, transformed_feature_spec
from schemas.dead_letter import DeadLetter
from tests.conftest import shared_path

pytestmark = pytest.mark.slow

LABELS = ("acme", "zenith", "neither", "rare")
LOGO_BOX = (40, 40, 200, 200)


def _records(folder: Path, split: str, parse=from_example_bytes) -> list:
    import tensorflow as tf

    files = sorted(glob.glob(str(folder / f"{split}-*{layout.TFRECORD_SUFFIX}")))
    assert files, f"no {split} shards in {folder}"
    return [parse(r.numpy()) for r in tf.data.TFRecordDataset(files, compression_type="GZIP")]


def _dead_letters(output: Path) -> list[DeadLetter]:
    lines = []
    for path in sorted((output / layout.DEAD_LETTERS).glob("dead_letters-*.jsonl")):
        lines += [DeadLetter.from_json(line) for line in path.read_text().splitlines() if line.strip()]
    return lines


def _config(tmp: Path, source, output: str, artifact_root: Path, **kw) -> BottleneckConfig:
    return BottleneckConfig(input=str(source), output=str(tmp / output), cache=str(tmp / "cache"),
                            backbone=BackboneConfig("efficientnet_lite0", artifact_root), runner=RunnerConfig(), **kw)


def _write_manifest(path: Path, rows: list[dict]) -> Path:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, ["uri", "label", "split", "x1", "y1", "x2", "y2"], restval="")
        writer.writeheader()
        writer.writerows(rows)
    return path


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    """A generated archive plus one of every kind of bad input, and the manifest describing it."""
    from PIL import Image

    from brandlens.sample import make_sample

    tmp = tmp_path_factory.mktemp("bottleneck")
    sample = make_sample(tmp / "sample", per_label=3, brands=("acme", "zenith"), seed=1)
    rows = [{"uri": f"sample/{r['uri']}", "label": r["label"]} for r in csv.DictReader(open(sample.manifest))]
    first, logo = rows[0], rows[1]
    first["split"] = "test"  # its copy below says train: kept in test only
    logo.update(split="train", **dict(zip(("x1", "y1", "x2", "y2"), map(str, LOGO_BOX))))
    bad, extra = tmp / "bad", tmp / "extra"
    bad.mkdir()
    extra.mkdir()
    shutil.copy(tmp / first["uri"], bad / "copy.jpg")
    (bad / "empty.jpg").write_bytes(b"")
    jpeg = (tmp / rows[2]["uri"]).read_bytes()
    (bad / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (bad / "notes.jpg").write_text("not a photo, just notes\n")
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (400, 400, 3), dtype=np.uint8)).save(extra / "big.png")
    Image.open(tmp / rows[3]["uri"]).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(extra / "rare.jpg", quality=90)
    rows += [
        {"uri": "bad/copy.jpg", "label": first["label"], "split": "train"},
        {"uri": "bad/empty.jpg", "label": "acme"},
        {"uri": "bad/truncated.jpg", "label": "acme"},
        {"uri": "bad/notes.jpg", "label": "zenith"},
        {"uri": "bad/missing.jpg", "label": "acme"},
        {"uri": rows[4]["uri"], "label": ""},
        {"uri": "extra/big.png", "label": "acme"},
        {"uri": "extra/mystery.jpg", "label": "mystery"},
        {"uri": "extra/rare.jpg", "label": "rare", "split": "test"},
    ]
    manifest = _write_manifest(tmp / "manifest.csv", rows)
    with open(manifest, "a") as f:
        f.write("sample/x.jpg,acme,,1,2,3,4,5\n")  # one cell too many
    return tmp, manifest, rows


EXPECTED_DEAD = {"empty", "truncated", "not_an_image", "missing_file", "missing_label", "too_large", "unknown_label", "bad_row"}


@pytest.fixture(scope="module")
def first_run(archive, artifact_root, lite0_artifact):
    tmp, manifest, _ = archive
    config = _config(tmp, manifest, "run1", artifact_root, labels=LABELS, augment=2, logo_crops=True, tiles=2, max_bytes=200_000)
    return config, run(config)


def test_counts_reconcile_and_every_bad_record_is_dead_lettered(archive, first_run):
    tmp, manifest, rows = archive
    config, summary = first_run
    counts = summary["counts"]
    assert summary["status"] == "ok"
    assert counts["read"] == len(rows) + 1 == 19
    assert counts["dead_lettered"] == {reason: 1 for reason in EXPECTED_DEAD}
    assert counts["duplicates"] == 1 and counts["duplicates_cross_split"] == 1
    assert counts["tiles_left_out"] == 3  # the logo photo's tiles that cut its logo box
    assert sum(counts["written"].values()) == 10
    assert summary["reconciliation"]["ok"] and summary["reconciliation"]["unaccounted"] == 0
    assert json.loads((Path(config.output) / layout.SUMMARY).read_text()) == json.loads(json.dumps(summary, default=str))

    dead = {d.reason: d for d in _dead_letters(Path(config.output))}
    assert set(dead) == EXPECTED_DEAD
    assert dead["missing_file"].uri == str(tmp / "bad" / "missing.jpg") and dead["missing_file"].stage == "fetch"
    assert dead["truncated"].stage == "decode" and dead["truncated"].record_id == "manifest.csv:13"
    assert dead["unknown_label"].stage == "label" and "mystery" in dead["unknown_label"].message
    assert dead["bad_row"].stage == "read" and dead["bad_row"].record_id == "manifest.csv:20"


def test_examples_follow_the_schema_and_keep_a_duplicate_in_one_split(archive, first_run, lite0_artifact):
    import tensorflow as tf

    from brandlens.backbones.artifact import read_fingerprint

    tmp, _, rows = archive
    config, summary = first_run
    fingerprint = read_fingerprint(lite0_artifact)
    examples = {s: _records(Path(config.output) / layout.EXAMPLES, s) for s in ("train", "validation", "test")}
    assert {s: len(v) for s, v in examples.items()} == summary["counts"]["examples"]
    everything = [r for records in examples.values() for r in records]
    assert {r.backbone for r in everything} == {fingerprint.version}
    assert all(r.embedding.shape == (fingerprint.embedding_dim,) and np.isfinite(r.embedding).all() for r in everything)
    assert all(r.split == s for s, records in examples.items() for r in records)

    duplicated = content_hash((tmp / rows[0]["uri"]).read_bytes())
    assert [(r.split, r.uri) for r in everything if r.content_hash == duplicated] == [("test", str(tmp / rows[0]["uri"]))]

    originals = [r for r in everything if r.variant == "original"]
    assert len(originals) == len({r.content_hash for r in originals}) == 10
    train = examples["train"]
    train_originals = [r for r in train if r.variant == "original"]
    assert sorted(r.variant for r in train if r.variant.startswith("aug-")) == sorted(["aug-v1-1", "aug-v1-2"] * len(train_originals))
    logo = [r for r in train if r.variant.startswith("logo-")]
    assert len(logo) == 1 and logo[0].uri == str(tmp / rows[1]["uri"])
    tiles = [r for r in train if r.variant.startswith("tile-")]
    without_box = [r for r in train_originals if r.uri != logo[0].uri]
    boxed = next(r for r in train_originals if r.uri == logo[0].uri)
    # Photos without boxes: every tile, labelled as the photo. The logo photo (320 px, box 40-200): only the tile
    # holding most of its box; the others cut the logo, and logo-free tiles need --background-crops.
    assert sorted((r.content_hash, r.variant, r.label) for r in tiles) == sorted(
        [(o.content_hash, f"tile-v1-g2-{i}", o.label) for o in without_box for i in range(4)]
        + [(boxed.content_hash, "tile-v1-g2-0", boxed.label)])
    assert all(r.variant == "original" for s in ("validation", "test") for r in examples[s])
    assert not np.allclose(train_originals[0].embedding, next(r.embedding for r in train if r.variant == "aug-v1-1"
                                                               and r.content_hash == train_originals[0].content_hash))
    # The schema's parsing spec reads what the writer wrote.
    files = glob.glob(str(Path(config.output) / layout.EXAMPLES / "train-*"))
    batch = next(iter(tf.data.TFRecordDataset(files, compression_type="GZIP").batch(100)))
    parsed = tf.io.parse_example(batch, raw_feature_spec(fingerprint.embedding_dim))
    assert parsed["embedding"].shape == (len(train), fingerprint.embedding_dim)
    assert json.loads((Path(config.output) / layout.BACKBONE).read_text())["version"] == fingerprint.version


def test_transform_is_analysed_on_train_only(first_run, lite0_artifact):
    import tensorflow_transform as tft

    from brandlens.backbones.artifact import read_fingerprint

    config, summary = first_run
    output = Path(config.output)
    raw = {s: _records(output / layout.EXAMPLES, s) for s in ("train", "validation", "test")}
    assert "rare" in {r.label for r in raw["test"]} and "rare" not in {r.label for r in raw["train"]}
    vocabulary = tft.TFTransformOutput(str(output / layout.TRANSFORM)).vocabulary_by_name("label_vocabulary")
    assert {v.decode() for v in vocabulary} == {r.label for r in raw["train"]} == set(summary["vocabulary"])

    dim = read_fingerprint(lite0_artifact).embedding_dim
    spec = transformed_feature_spec(dim)
    parse = lambda data: {k: v.numpy() for k, v in __import__("tensorflow").io.parse_single_example(data, spec).items()}  # noqa: E731
    transformed = {s: _records(output / layout.TRANSFORMED, s, parse) for s in ("train", "validation", "test")}
    assert {s: len(v) for s, v in transformed.items()} == {s: len(v) for s, v in raw.items()}
    rare = [t for t in transformed["test"] if t["label"] == b"rare"]
    assert len(rare) == 1 and rare[0]["label_id"] == -1
    assert all(t["label_id"] >= 0 for t in transformed["train"])

    train = np.stack([r.embedding for r in raw["train"]]).astype(np.float64)
    mean, std = train.mean(), train.std()  # preprocessing_fn scales with one mean and std over all values
    by_key = {(r.content_hash, r.variant): r.embedding for s in raw for r in raw[s]}
    for split in ("train", "test"):
        for t in transformed[split]:
            expected = (by_key[(t["content_hash"].decode(), t["variant"].decode())] - mean) / std
            np.testing.assert_allclose(t["embedding_scaled"], expected, rtol=1e-3, atol=1e-3)


def test_an_existing_output_is_not_overwritten_by_accident(archive, first_run):
    config, _ = first_run
    with pytest.raises(ConfigError, match="--overwrite"):
        run(config)


def _run_embedding_only(config: BottleneckConfig, artifact_dir, run_id: str) -> dict:
    from apache_beam.testing.test_pipeline import TestPipeline

    from brandlens.backbones.artifact import read_fingerprint

    pipeline = TestPipeline(runner="DirectRunner", blocking=True)
    build_pipeline(pipeline, config, str(artifact_dir), read_fingerprint(artifact_dir), run_id)
    result = pipeline.run()
    result.wait_until_finish()
    counts, _, reconciliation = summarise(query_counters(result, NAMESPACE))
    assert reconciliation["ok"], reconciliation
    return counts


def test_a_rerun_embeds_only_new_images(archive, first_run, artifact_root, lite0_artifact):
    from brandlens.sample import make_sample

    tmp, manifest, rows = archive
    config, summary = first_run
    cache_files = lambda: sorted(glob.glob(str(tmp / "cache" / "*" / "*")))  # noqa: E731
    before = cache_files()
    assert len(before) == 1

    same = _config(tmp, manifest, "run2", artifact_root, labels=LABELS, augment=2, logo_crops=True, tiles=2, max_bytes=200_000)
    counts = _run_embedding_only(same, lite0_artifact, "rerun")
    assert counts["cnn_images"] == 0 and counts["cnn_embeddings"] == 0
    assert counts["cache_hits"] == sum(summary["counts"]["examples"].values())
    assert counts["examples"] == summary["counts"]["examples"]
    assert cache_files() == before  # nothing new, no new cache file

    more = make_sample(tmp / "more", per_label=1, brands=("acme", "zenith"), seed=7, open_world=False)
    new_rows = [{"uri": f"more/{r['uri']}", "label": r["label"], "split": "validation"} for r in csv.DictReader(open(more.manifest))]
    grown = _write_manifest(tmp / "grown.csv", rows + new_rows)
    counts = _run_embedding_only(
        _config(tmp, grown, "run3", artifact_root, labels=LABELS, augment=2, logo_crops=True, tiles=2, max_bytes=200_000),
        lite0_artifact, "grown")
    assert counts["cnn_images"] == 2 and counts["cnn_embeddings"] == 2
    assert counts["written"]["validation"] == summary["counts"]["written"]["validation"] + 2
    assert len(cache_files()) == 2


def _example_records(output: Path) -> dict[str, list[bytes]]:
    import gzip

    from beam_jobs.bottlenecks.transform_reuse import tfrecord_payloads

    return {split: sorted(r for path in sorted((output / layout.EXAMPLES).glob(f"{split}-*"))
                          for r in tfrecord_payloads(gzip.decompress(path.read_bytes()))) for split in ("train", "validation", "test")}


def test_an_unchanged_rerun_reuses_the_whole_run_and_a_damaged_copy_is_not_reused(archive, first_run, artifact_root):
    """Issue 13's cheap rerun: same bytes in, same settings, backbone and code -> the stored run, committed as this run;
    a changed input byte changes the key; a damaged stored copy is refused and the job runs again."""
    from beam_jobs.bottlenecks import run_reuse

    tmp, manifest, _ = archive
    config, summary = first_run
    same = dict(labels=LABELS, augment=2, logo_crops=True, tiles=2, max_bytes=200_000)
    again = run(_config(tmp, manifest, "run-again", artifact_root, **same))
    assert again["reused"]["run_id"] == summary["run_id"] and again["run_id"] != summary["run_id"]
    assert again["counts"]["cnn_images"] == again["counts"]["cache_hits"] == 0 and again["reconciliation"]["ok"]
    assert {k: again["counts"][k] for k in ("read", "written", "dead_lettered")} == \
        {k: summary["counts"][k] for k in ("read", "written", "dead_lettered")}
    assert _example_records(tmp / "run-again") == _example_records(Path(config.output))
    assert _dead_letters(tmp / "run-again") == _dead_letters(Path(config.output))
    assert json.loads((tmp / "run-again" / layout.SUMMARY).read_text())["output"] == str(tmp / "run-again")

    fingerprint = (Path(again["backbone"]["artifact"]) / "fingerprint.json").read_text()
    key = run_reuse.run_key(_config(tmp, manifest, "x", artifact_root, **same), fingerprint)
    assert key == again["reused"]["key"]
    assert run_reuse.run_key(_config(tmp, manifest, "x", artifact_root, **{**same, "augment": 1}), fingerprint) != key
    image = tmp / "extra" / "rare.jpg"
    original = image.read_bytes()
    image.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))  # one bit of one image
    try:
        assert run_reuse.run_key(_config(tmp, manifest, "x", artifact_root, **same), fingerprint) != key
    finally:
        image.write_bytes(original)
    assert run_reuse.run_key(_config(tmp, manifest, "x", artifact_root, **same), fingerprint) == key

    stored = Path(again["reused"]["from"])
    shard = sorted((stored / layout.EXAMPLES).glob("train-*"))[0]
    shard.write_bytes(shard.read_bytes()[:-8])  # a damaged store: named, not reused
    rerun = run(_config(tmp, manifest, "run-damaged", artifact_root, **same))
    assert "reused" not in rerun and rerun["reuse_key"] == key and rerun["reconciliation"]["ok"]
    assert _example_records(tmp / "run-damaged") == _example_records(Path(config.output))
    assert run_reuse.find(str(tmp / "cache"), key)[1]["run_id"] == rerun["run_id"]  # stored afresh


def _tar_shard(path: Path, samples: list[tuple[str, dict[str, bytes]]]) -> None:
    with tarfile.open(path, "w") as tar:
        for key, members in samples:
            for ext, data in members.items():
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def test_webdataset_shards(archive, artifact_root, lite0_artifact):
    tmp, _, rows = archive
    images = [(tmp / r["uri"]).read_bytes() for r in rows[:4]]
    shards = tmp / "shards"
    shards.mkdir()
    _tar_shard(shards / "part-000.tar", [
        ("a", {"jpg": images[0], "cls": b"0"}),
        ("b", {"jpg": images[1], "json": json.dumps({"label": "zenith", "split": "test"}).encode()}),
        ("c", {"json": b'{"label": "acme"}'}),
        ("d", {"jpg": b"garbage", "cls": b"acme"}),
    ])
    _tar_shard(shards / "part-001.tar", [("e", {"png": images[2], "cls": b"1"}), ("f", {"jpg": images[3], "cls": b"1"})])
    whole = (shards / "part-001.tar").read_bytes()
    (shards / "part-002.tar").write_bytes(whole[:700])  # cut short inside the first member

    config = _config(tmp, shards / "part-*.tar", "wds", artifact_root, labels=("acme", "zenith"), use_cache=False)
    counts = _run_embedding_only(config, lite0_artifact, "wds")
    assert counts["read"] == 7
    assert counts["dead_lettered"] == {"missing_image": 1, "not_an_image": 1, "unreadable": 1}
    examples = {r.uri.rsplit("/", 1)[1]: r for s in ("train", "validation", "test")
                for r in _records(Path(config.output) / layout.EXAMPLES, s)}
    assert set(examples) == {"part-000.tar#a.jpg", "part-000.tar#b.jpg", "part-001.tar#e.png", "part-001.tar#f.jpg"}
    assert examples["part-000.tar#a.jpg"].label == "acme" and examples["part-001.tar#e.png"].label == "zenith"
    assert examples["part-000.tar#b.jpg"].split == "test"
    dead = {d.reason: d for d in _dead_letters(Path(config.output))}
    assert dead["unreadable"].uri.endswith("part-002.tar") and dead["missing_image"].record_id == "part-000.tar/c"


def test_directory_tree(archive, artifact_root, lite0_artifact):
    tmp, _, rows = archive
    root = tmp / "tree"
    for label in ("acme", "zenith"):
        (root / label / "nested").mkdir(parents=True)
    shutil.copy(tmp / rows[1]["uri"], root / "acme" / "one.jpg")
    shutil.copy(tmp / rows[4]["uri"], root / "zenith" / "nested" / "two.jpg")
    shutil.copy(tmp / rows[5]["uri"], root / "loose.jpg")  # no label folder
    (root / "zenith" / "readme.txt").write_text("about these images")
    (root / "acme" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")

    config = _config(tmp, root, "tree-out", artifact_root, use_cache=False)
    counts = _run_embedding_only(config, lite0_artifact, "tree")
    assert counts["read"] == 4
    assert counts["dead_lettered"] == {"missing_label": 1, "not_an_image": 1}
    labels = sorted((r.label, r.uri) for s in ("train", "validation", "test") for r in _records(Path(config.output) / layout.EXAMPLES, s))
    assert labels == [("acme", str(root / "acme" / "one.jpg")), ("zenith", str(root / "zenith" / "nested" / "two.jpg"))]


def test_an_empty_training_split_fails_clearly(archive, artifact_root, lite0_artifact):
    tmp, _, rows = archive
    manifest = _write_manifest(tmp / "no-train.csv", [
        {"uri": "bad/empty.jpg", "label": "acme"}, {"uri": rows[6]["uri"], "label": "neither", "split": "test"}])
    config = _config(tmp, manifest, "no-train", artifact_root)
    with pytest.raises(EmptyTrainingSplit, match="no training examples"):
        run(config)
    summary = json.loads((Path(config.output) / layout.SUMMARY).read_text())
    assert summary["status"].startswith("failed") and summary["counts"]["dead_lettered"] == {"empty": 1}
    assert summary["reconciliation"]["ok"]


def test_shoes_binary_through_the_cli(tmp_path, artifact_root, lite0_artifact):
    """A slice of the real benchmark manifest (every 10th row, so all splits show up) via `brandlens bottlenecks`."""
    from brandlens.cli import main

    manifest = shared_path("data", "manifests", "shoes-binary.csv")
    data = manifest.parent.parent
    rows = list(csv.DictReader(open(manifest)))[::10]
    subset = tmp_path / "shoes-subset.csv"
    with open(subset, "w", newline="") as f:
        writer = csv.DictWriter(f, ["uri", "label", "split"])
        writer.writeheader()
        writer.writerows(rows)
    output = tmp_path / "shoes"
    code = main(["bottlenecks", "--input", str(subset), "--base-uri", str(data), "--output", str(output),
                 "--labels", "nike,adidas", "--backbone", "efficientnet_lite0", "--artifacts", str(artifact_root)])
    assert code == 0
    summary = json.loads((output / layout.SUMMARY).read_text())
    counts = summary["counts"]
    expected = {s: sum(1 for r in rows if r["split"] == s) for s in ("train", "validation", "test")}
    assert counts["read"] == len(rows) and counts["dead_lettered"] == {} and counts["duplicates"] == 0
    assert counts["written"] == expected  # the manifest's splits are kept
    assert summary["reconciliation"]["ok"] and set(summary["vocabulary"]) == {"nike", "adidas"}
    assert counts["cnn_images"] + counts["cache_hits"] == sum(counts["written"].values())
