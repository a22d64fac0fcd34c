"""The bottleneck job's pure parts and the shared beam_jobs.common helpers, without running Beam."""

from __future__ import annotations

import argparse
import io
import json
import tarfile

import numpy as np
import pytest

from beam_jobs.bottlenecks import augment as aug
from beam_jobs.bottlenecks.config import BottleneckConfig, default_cache
from beam_jobs.bottlenecks.dedup import Candidate, choose
from beam_jobs.bottlenecks.labels import Rejected, annotate, parse_box, resolve_label
from beam_jobs.bottlenecks.splits import assign_split, normalise_split, parse_fractions
from beam_jobs.common import accounting
from beam_jobs.common.cache import decode_entry, encode_entry
from beam_jobs.common.images import decode, fetch
from beam_jobs.common.options import RunnerConfig
from beam_jobs.common.progress import Progress
from beam_jobs.common.records import ImageRecord
from beam_jobs.common.sources import (
    BadRow, InputSpec, detect_format, manifest_rows, read_manifest, read_webdataset_shard, record_from_file,
    record_from_row, resolve_uri, split_member_name,
)
from brandlens.errors import ConfigError
from schemas.dead_letter import DeadLetter


def _hashes(n: int) -> list[str]:
    import hashlib

    return [hashlib.sha256(str(i).encode()).hexdigest() for i in range(n)]


# --- splits -------------------------------------------------------------------------------

def test_parse_fractions_accepts_valid_and_rejects_the_rest():
    assert parse_fractions("0.8,0.1,0.1") == (0.8, 0.1, 0.1)
    assert parse_fractions("1,0,0") == (1.0, 0.0, 0.0)
    for bad in ("0.8,0.1", "0.5,0.5,0.5", "0,0.5,0.5", "a,b,c", "0.9,-0.1,0.2"):
        with pytest.raises(ValueError):
            parse_fractions(bad)


def test_split_assignment_is_stable_and_follows_the_fractions():
    hashes = _hashes(20_000)
    splits = [assign_split(h) for h in hashes]
    assert splits == [assign_split(h) for h in hashes]  # same answer every time
    shares = {s: splits.count(s) / len(splits) for s in ("train", "validation", "test")}
    assert shares["train"] == pytest.approx(0.8, abs=0.015)
    assert shares["validation"] == pytest.approx(0.1, abs=0.01)
    # Adding images moves nothing: each split depends on its own hash only.
    assert [assign_split(h) for h in hashes[:100]] == splits[:100]
    assert {assign_split(h, (1.0, 0.0, 0.0)) for h in hashes[:500]} == {"train"}
    assert "validation" not in {assign_split(h, (0.5, 0.0, 0.5)) for h in hashes[:500]}


def test_manifest_split_cells():
    assert normalise_split("") is None and normalise_split(None) is None and normalise_split("  ") is None
    assert normalise_split(" Test ") == "test"
    with pytest.raises(ValueError, match="unknown split"):
        normalise_split("holdout")


# --- labels and boxes ---------------------------------------------------------------------

def test_resolve_label():
    assert resolve_label({"label": " nike "}) == "nike"
    assert resolve_label({"cls": "adidas"}) == "adidas"
    assert resolve_label({"cls": "1"}, ("nike", "adidas")) == "adidas"  # WebDataset class index
    assert resolve_label({"cls": "1"}) == "1"
    with pytest.raises(Rejected) as err:
        resolve_label({"label": ""})
    assert err.value.reason == "missing_label"
    with pytest.raises(Rejected) as err:
        resolve_label({"label": "puma"}, ("nike", "adidas"))
    assert err.value.reason == "unknown_label"
    with pytest.raises(Rejected) as err:
        resolve_label({"cls": "7"}, ("nike", "adidas"))
    assert err.value.reason == "unknown_label"


def test_parse_box():
    assert parse_box({}) is None
    assert parse_box({"x1": "", "y1": "", "x2": "", "y2": ""}) is None
    assert parse_box({"x1": "1", "y1": "2", "x2": "30", "y2": "40.5"}) == (1, 2, 30, 40.5)
    assert parse_box({"box": "[1, 2, 3, 4]"}) == (1, 2, 3, 4)
    assert parse_box({"box": "1,2,3,4"}) == (1, 2, 3, 4)
    for bad in ({"x1": "1", "y1": "2"}, {"x1": "5", "y1": "2", "x2": "3", "y2": "4"},
                {"x1": "a", "y1": "2", "x2": "3", "y2": "4"}, {"box": "1,2,3"}, {"x1": "-1", "y1": "0", "x2": "3", "y2": "4"}):
        with pytest.raises(Rejected) as err:
            parse_box(bad)
        assert err.value.reason == "bad_row"


def test_annotate():
    a = annotate({"label": "nike", "split": "validation", "x1": "0", "y1": "0", "x2": "10", "y2": "10"})
    assert (a.label, a.split, a.box) == ("nike", "validation", (0, 0, 10, 10))
    assert annotate({"label": "nike"}).split is None
    with pytest.raises(Rejected) as err:
        annotate({"label": "nike", "split": "dev"})
    assert err.value.reason == "bad_row"


# --- dedup --------------------------------------------------------------------------------

def test_duplicates_keep_the_evaluation_split_and_gather_boxes():
    train = Candidate("b.jpg", "m:3", "nike", "train", (1, 1, 5, 5))
    test = Candidate("z.jpg", "m:9", "nike", "test")
    other = Candidate("a.jpg", "m:2", "adidas", "train", (2, 2, 6, 6))
    decision = choose([train, other, test])
    assert decision.kept == test
    assert decision.dropped == (other, train)  # train copies sorted by uri
    assert decision.cross_split == 2 and decision.label_conflicts == 1
    assert decision.boxes == ((1, 1, 5, 5),)  # the adidas copy's box does not apply to a nike image
    same = choose([Candidate("b.jpg", "1", "nike", "train"), Candidate("a.jpg", "2", "nike", "train")])
    assert same.kept.uri == "a.jpg" and same.cross_split == 0


# --- augmentation -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def rgb() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (120, 160, 3), dtype=np.uint8)


def test_augmentations_are_deterministic_and_distinct(rgb):
    names = aug.variants("original", 3)
    assert [v.name for v in names] == ["original", "aug-v1-1", "aug-v1-2", "aug-v1-3"]
    first = [aug.render(rgb, "abc", v) for v in names[1:]]
    again = [aug.render(rgb, "abc", v) for v in names[1:]]
    for a, b in zip(first, again):
        assert a.dtype == np.uint8 and a.ndim == 3 and a.shape[2] == 3
        assert 0.74 * 120 <= a.shape[0] <= 120 and 0.74 * 160 <= a.shape[1] <= 160
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(first[0], first[1])
    assert not np.array_equal(aug.render(rgb, "other-hash", names[1]), first[0])
    assert aug.render(rgb, "abc", names[0]) is rgb


def test_logo_crop(rgb):
    crop = aug.crop_logo(rgb, (40, 20, 80, 60), margin=0.25)
    np.testing.assert_array_equal(crop, rgb[10:70, 30:90])
    np.testing.assert_array_equal(aug.crop_logo(rgb, (0, 0, 160, 120), margin=0.5), rgb)  # clipped to the image
    with pytest.raises(ValueError, match="outside"):
        aug.crop_logo(rgb, (200, 10, 300, 50))
    variant = aug.variants("original", 0, [(40, 20, 80, 60.5)], 0.25)[1]
    assert variant.name == "logo-v1-m0.25-40_20_80_60.5" and variant.kind == aug.LOGO
    assert aug.render(rgb, "h", variant).shape[0] > 40
    assert aug.logo_variant_name((1234567, 0, 2000000, 5)) == "logo-v1-m0.25-1234567_0_2000000_5"



def test_tiles_of_a_logo_photo_are_labelled_by_its_boxes():
    """2x2 tiles of a 700 px photo (400 px each, overlapping by 100): a tile holding >= half a box shows the brand,
    one holding < a tenth of every box is a background example, one that cuts a logo is left out."""
    assert aug.tile_labels([(10, 10, 60, 60)], 700, 700, 2, "nike", "neither") == ["nike", "neither", "neither", "neither"]
    assert aug.tile_labels([(380, 380, 420, 420)], 700, 700, 2, "nike", "neither") == [None, "nike", "nike", "nike"]
    assert aug.tile_labels([(10, 10, 60, 60)], 700, 700, 2, "nike", None) == ["nike", None, None, None]
    assert aug.tile_labels([(10, 10, 60, 60), (650, 650, 690, 690)], 700, 700, 2, "nike", "neither") == [
        "nike", "neither", "neither", "nike"]
    assert aug.tile_labels([(300, 10, 500, 60)], 700, 700, 2, "nike", "neither") == ["nike", "nike", "neither", "neither"]
    assert aug.tile_labels([(0, 0, 700, 700)], 700, 700, 2, "nike", "neither") == [None] * 4  # a third in each


def test_upright_size_reads_the_header_as_the_decoder_turns_it(tmp_path):
    from PIL import Image

    from brandlens.imaging import ImageDecodeError, decode_image, upright_size

    image = Image.fromarray(np.zeros((30, 50, 3), np.uint8))
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90 degrees to show upright
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", exif=exif)
    assert upright_size(buffer.getvalue()) == decode_image(buffer.getvalue()).shape[:2] == (50, 30)
    with pytest.raises(ImageDecodeError):
        upright_size(b"not an image")


# --- sources ------------------------------------------------------------------------------

def test_detect_format_and_input_spec(tmp_path):
    assert detect_format("gs://b/shards/train-*.tar") == "webdataset"
    assert detect_format("m/list.CSV") == "manifest" and detect_format("m.jsonl") == "manifest"
    assert detect_format("m.parquet") == "manifest" and detect_format("/data/images/") == "dir"
    spec = InputSpec("/data/images/")
    assert spec.pattern == "/data/images/**" and spec.root == "/data/images"
    assert InputSpec("/data/*/x.jpg").root is None
    with pytest.raises(ConfigError):
        InputSpec("x", format="zip")
    with pytest.raises(ConfigError, match="matches no files"):
        InputSpec(str(tmp_path / "nothing.csv")).check()


def test_resolve_uri():
    assert resolve_uri("shoes/a.jpg", "/data/manifests") == "/data/manifests/shoes/a.jpg"
    assert resolve_uri("../shoes/a.jpg", "/data/manifests") == "/data/shoes/a.jpg"
    assert resolve_uri("/abs/a.jpg", "/data") == "/abs/a.jpg"
    assert resolve_uri("gs://b/a.jpg", "/data") == "gs://b/a.jpg"
    assert resolve_uri("a.jpg", "gs://bucket/m") == "gs://bucket/m/a.jpg"


def test_manifest_rows_in_every_format(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    csv_text = "uri,label,split\na.jpg,nike,train\n\"b,1.jpg\",adidas,\n"
    rows = list(manifest_rows(io.BytesIO(csv_text.encode()), "csv"))
    assert rows == [(2, {"uri": "a.jpg", "label": "nike", "split": "train"}), (3, {"uri": "b,1.jpg", "label": "adidas", "split": ""})]
    jsonl = b'{"uri": "a.jpg", "label": "nike", "x1": 3}\n\nnot json\n[1, 2]\n'
    rows = list(manifest_rows(io.BytesIO(jsonl), "jsonl"))
    assert rows[0] == (1, {"uri": "a.jpg", "label": "nike", "x1": 3})
    assert isinstance(rows[1][1], BadRow) and rows[1][0] == 3 and isinstance(rows[2][1], BadRow)
    path = tmp_path / "m.parquet"
    pq.write_table(pa.table({"uri": ["a.jpg", "b.jpg"], "label": ["nike", None]}), path)
    with open(path, "rb") as f:
        assert list(manifest_rows(f, "parquet")) == [(1, {"uri": "a.jpg", "label": "nike"}), (2, {"uri": "b.jpg", "label": None})]


def test_read_manifest_turns_rows_into_records_and_bad_rows_into_dead_letters():
    text = "uri,label,x1\nimg/a.jpg,nike,4\n,adidas,\nimg/c.jpg,nike,1,extra\n"
    out = list(read_manifest("/m/list.csv", io.BytesIO(text.encode()), "/m"))
    record, missing_uri, extra_cell = out
    assert record == ImageRecord("/m/img/a.jpg", "list.csv:2", {"uri": "img/a.jpg", "label": "nike", "x1": "4"})
    assert isinstance(missing_uri, DeadLetter) and missing_uri.reason == "bad_row" and missing_uri.record_id == "list.csv:3"
    assert isinstance(extra_cell, DeadLetter) and extra_cell.reason == "bad_row" and "cells" in extra_cell.message
    broken = list(read_manifest("/m/x.csv", io.BytesIO(b"uri,label\n\xff\xfe,nike\nok.jpg,nike\n"), "/m"))
    assert [getattr(b, "reason", "record") for b in broken] == ["bad_row", "record"]  # the bad row alone
    assert "line 2" in broken[0].message


def test_record_from_row_carries_metadata_as_text():
    record = record_from_row({"image_uri": "a.jpg", "post_id": 7, "ok": True, "tags": ["x"], "n": None}, "p:1", "/b", "image_uri")
    assert record.uri == "/b/a.jpg"
    assert record.metadata == {"image_uri": "a.jpg", "post_id": "7", "ok": "true", "tags": '["x"]', "n": None}


def _tar(members: list[tuple[str, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def test_webdataset_samples():
    assert split_member_name("dir/abc.seg.PNG") == ("dir/abc", "seg.png")
    shard = _tar([
        ("a.jpg", b"JPEGBYTES"), ("a.cls", b"nike\n"),
        ("b.json", json.dumps({"label": "adidas", "split": "test", "x1": 1}).encode()), ("b.png", b"PNGBYTES"),
        ("c.json", b"{}"),
        ("d.jpg", b"x" * 100),
        ("e.jpg", b"IMG"), ("e.json", b"{broken"),
    ])
    out = list(read_webdataset_shard("gs://b/s-0.tar", io.BytesIO(shard), max_bytes=50))
    a, b, c, d, e = out
    assert a == ImageRecord("gs://b/s-0.tar#a.jpg", "s-0.tar/a", {"cls": "nike"}, b"JPEGBYTES")
    assert b.metadata == {"label": "adidas", "split": "test", "x1": "1"} and b.data == b"PNGBYTES"
    assert isinstance(c, DeadLetter) and c.reason == "missing_image"
    assert isinstance(d, DeadLetter) and d.reason == "too_large"
    assert isinstance(e, DeadLetter) and e.reason == "bad_row"
    cut = list(read_webdataset_shard("s-1.tar", io.BytesIO(shard[:1200]), max_bytes=50))
    assert isinstance(cut[-1], DeadLetter) and cut[-1].reason == "unreadable" and "after" in cut[-1].message


def test_record_from_file():
    assert record_from_file("/r/nike/a.jpg", "/r") == ImageRecord("/r/nike/a.jpg", "nike/a.jpg", {"label": "nike"})
    assert record_from_file("/r/loose.jpg", "/r").metadata == {}
    assert record_from_file("/r/nike/.DS_Store", "/r") is None and record_from_file("/r/.git/x", "/r") is None
    assert record_from_file("/x/a.jpg", None) == ImageRecord("/x/a.jpg", "/x/a.jpg", {})


# --- fetching and decoding ----------------------------------------------------------------

def test_fetch_and_decode(tmp_path):
    from PIL import Image

    good = tmp_path / "ok.png"
    Image.new("RGB", (8, 6), (10, 20, 30)).save(good)
    fetched = fetch(ImageRecord(str(good), "1"))
    assert isinstance(fetched, ImageRecord) and fetched.data == good.read_bytes()
    assert decode(fetched).shape == (6, 8, 3)
    assert fetch(ImageRecord(str(tmp_path / "gone.jpg"), "2")).reason == "missing_file"
    assert fetch(ImageRecord(str(tmp_path), "3")).reason == "unreadable"  # a folder
    assert fetch(ImageRecord(str(good), "4"), max_bytes=10).reason == "too_large"
    assert fetch(ImageRecord("in-memory", "5", data=b"abc"), max_bytes=2).reason == "too_large"
    dead = decode(ImageRecord("t.jpg", "6", data=b"hello"))
    assert (dead.stage, dead.reason, dead.record_id) == ("decode", "not_an_image", "6")


# --- accounting, progress, cache entries, options, config -------------------------------------

def test_counts_nest_and_reconcile():
    nested = accounting.nest_counts({"read": 10, "written/train": 5, "written/test": 1, "dead_lettered/empty": 3, "duplicates": 1})
    assert nested == {"dead_lettered": {"empty": 3}, "duplicates": 1, "read": 10, "written": {"test": 1, "train": 5}}
    assert accounting.reconcile(nested)["ok"]
    nested["read"] = 11
    result = accounting.reconcile(nested)
    assert not result["ok"] and result["unaccounted"] == 1


def test_progress_logs_at_most_every_interval():
    now = [0.0]
    p = Progress("images", interval=10, clock=lambda: now[0])
    assert p.add(5) is None
    now[0] = 4.0
    assert p.add(5) is None
    now[0] = 10.0
    assert p.add(10) == "images: 20 (2.0/s over 10 s, this worker)"
    now[0] = 12.0
    assert p.add(1) is None


def test_cache_entries_round_trip():
    emb = np.arange(5, dtype=np.float32)
    h, v, b, e = decode_entry(encode_entry("abc", "aug-v1-1", "lite@x", emb))
    assert (h, v, b) == ("abc", "aug-v1-1", "lite@x")
    np.testing.assert_array_equal(e, emb)


def test_runner_flags():
    assert RunnerConfig().flags() == ["--runner=FnApiRunner", "--direct_num_workers=1", "--direct_running_mode=in_memory"]
    flags = RunnerConfig("DataflowRunner", temp_location="gs://b/tmp", project="p", region="r",
                         extra_args=("--setup_file=./setup.py",)).flags()
    assert flags == ["--runner=DataflowRunner", "--temp_location=gs://b/tmp", "--project=p", "--region=r", "--setup_file=./setup.py"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    BottleneckConfig.add_arguments(parser)
    return parser


def test_config_from_command_line(tmp_path):
    args = _parser().parse_args([
        "--input", "m.csv", "--output", str(tmp_path / "runs" / "one"), "--splits", "0.7,0.2,0.1", "--augment", "2",
        "--logo-crops", "--labels", "nike, adidas", "--batch-size", "8", "--backbone", "efficientnet_lite0",
        "--direct_num_workers", "2", "--beam-arg=--project=p",
    ])
    config = BottleneckConfig.from_args(args)
    assert config.split_fractions == (0.7, 0.2, 0.1) and config.labels == ("nike", "adidas")
    assert config.augment == 2 and config.logo_crops and config.batch_size == 8
    assert config.input.startswith("/") and config.input_spec.resolved_format == "manifest"
    assert config.cache == str(tmp_path / "runs" / "embedding-cache")
    assert config.backbone.name == "efficientnet_lite0"
    assert config.runner.direct_num_workers == 2 and config.runner.extra_args == ("--project=p",)
    assert default_cache("gs://b/runs/x/") == "gs://b/runs/embedding-cache"
    with pytest.raises(SystemExit):
        _parser().parse_args(["--input", "m.csv", "--output", "o", "--splits", "0.5,0.6,0.1"])
    with pytest.raises(ConfigError):
        BottleneckConfig(input="m.csv", output="o", augment=-1)


def test_a_logo_photo_changed_before_its_tiles_are_placed_is_dead_lettered_not_mislabelled(tmp_path):
    """Tiles of a photo with boxes need its size: the plan reads it again. Bytes that changed since hashing end as a
    dead letter for the record; unchanged bytes give the tiles their labels from the boxes."""
    from PIL import Image

    from beam_jobs.bottlenecks.pipeline import _PlanDoFn
    from brandlens.imaging import content_hash

    path = tmp_path / "logo.jpg"
    Image.fromarray(np.full((320, 320, 3), 128, np.uint8)).save(path)
    digest = content_hash(path.read_bytes())
    plan = _PlanDoFn(BottleneckConfig(input="m.csv", output="out", tiles=2, background_crops=True), "bb")
    members = [(Candidate(str(path), "m.csv:2", "acme", "train", (40.0, 40.0, 200.0, 200.0)), None)]
    planned = plan._pixels(digest, members, [])
    assert planned.tile_labels == {"tile-v1-g2-0": "acme", "tile-v1-g2-1": None, "tile-v1-g2-2": None, "tile-v1-g2-3": None}
    assert planned.tiles_left_out == 3 and planned.rgb.shape == (320, 320, 3)
    Image.fromarray(np.full((320, 320, 3), 7, np.uint8)).save(path)  # replaced while the job ran
    planned = plan._pixels(digest, members, [])
    assert isinstance(planned.rgb, DeadLetter) and planned.rgb.reason == "unreadable" and "changed" in planned.rgb.message
    assert not [v for v in planned.wanted if v.kind == aug.TILE]
