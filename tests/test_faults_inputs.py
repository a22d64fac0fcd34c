"""A bad-input corpus for both jobs: each kind ends scored, dead-lettered with a named reason, or in a one-line error.

Every test makes its own inputs. Kinds are registered in ``KINDS`` as they are asserted;
the last test checks there are at least 40 and prints them (the issue's closing note).
"""

from __future__ import annotations

import csv
import datetime as dt
import decimal
import io
import json
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from beam_jobs.common.sources import read_manifest, read_webdataset_shard, walk_folder
from schemas.dead_letter import DeadLetter

KINDS: dict[str, str] = {}


def kind(name: str, outcome: str) -> None:
    assert name not in KINDS, name
    KINDS[name] = outcome


def _jpeg(seed: int, size=(64, 64)) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(buf, "JPEG", quality=85)
    return buf.getvalue()


def _letters(items) -> dict[str, DeadLetter]:
    return {d.record_id: d for d in items if isinstance(d, DeadLetter)}


# --- manifests, row by row (12.3, 12.4) -----------------------------------------------------

def test_csv_rows_fail_alone_with_their_line_numbers():
    lines = [b"uri,label,caption", b"a.jpg,acme,ok"]
    lines += [b"b.jpg,acme,caf\xe9 latin-1"]                  # line 3: not UTF-8
    lines += [b"c.jpg,acme,fine", b"d.jpg,acme,x,surplus"]    # line 5: extra cell
    lines += [b"", b",acme,no uri"]                            # blank line 6; line 7: no uri
    lines += [b'e.jpg,acme,"two', b'lines"', b"f.jpg,acme," + b"x" * 200_000]  # quoted newline; a 200 KB caption
    lines += [b"g.jpg,zenith"]                                 # fewer cells: caption null
    out = list(read_manifest("/m/posts.csv", io.BytesIO(b"\n".join(lines) + b"\n"), "/m"))
    records = {r.record_id: r for r in out if not isinstance(r, DeadLetter)}
    dead = _letters(out)
    assert sorted(dead) == ["posts.csv:3", "posts.csv:5", "posts.csv:7"]
    assert dead["posts.csv:3"].reason == "bad_row" and "line 3" in dead["posts.csv:3"].message and "UTF-8" in dead["posts.csv:3"].message
    assert "cells" in dead["posts.csv:5"].message and "no 'uri'" in dead["posts.csv:7"].message
    assert [r.uri for r in records.values()] == ["/m/a.jpg", "/m/c.jpg", "/m/e.jpg", "/m/f.jpg", "/m/g.jpg"]
    assert records["posts.csv:9"].metadata["caption"] == "two\nlines"
    assert len(records["posts.csv:10"].metadata["caption"]) == 200_000
    assert records["posts.csv:11"].metadata["caption"] is None
    kind("csv: non-UTF-8 byte mid-file", "bad_row with its line number; every other row read")
    kind("csv: extra cells", "bad_row")
    kind("csv: blank line", "not a row (not counted)")
    kind("csv: empty uri", "bad_row")
    kind("csv: quoted field with a newline", "read; later line numbers stay right")
    kind("csv: 200 KB caption (over csv's field limit)", "read, carried whole")
    kind("csv: fewer cells than the header", "read, missing cells null")


def test_csv_bad_header_is_one_dead_letter_for_the_file():
    out = list(read_manifest("/m/x.csv", io.BytesIO(b"uri,\xff\xfe\nb.jpg,acme\n"), "/m"))
    assert len(out) == 1 and out[0].reason == "unreadable" and "header" in out[0].message
    kind("csv: non-UTF-8 header", "one dead letter for the file (no row can be read)")


def test_jsonl_lines_fail_alone():
    text = b"\n".join([b"{oops", b'{"uri": "a.jpg", "label": "acme", "n": 3, "tags": {"k": [1, 2]}}', b"[1, 2]",
                       b'{"uri": "b.jpg", "label": "caf\xe9"}', b'"just a string"', b'{"uri": "c.jpg", "label": "zenith"}'])
    out = list(read_manifest("/m/p.jsonl", io.BytesIO(b"\xef\xbb\xbf" + text), "/m"))
    dead = _letters(out)
    assert {k: v.reason for k, v in dead.items()} == {"p.jsonl:1": "bad_row", "p.jsonl:3": "bad_row", "p.jsonl:4": "bad_row",
                                                       "p.jsonl:5": "bad_row"}
    assert "not JSON" in dead["p.jsonl:1"].message and "list" in dead["p.jsonl:3"].message
    assert "UTF-8" in dead["p.jsonl:4"].message
    records = [r for r in out if not isinstance(r, DeadLetter)]
    assert [r.uri for r in records] == ["/m/a.jpg", "/m/c.jpg"]
    assert records[0].metadata["n"] == "3" and json.loads(records[0].metadata["tags"]) == {"k": [1, 2]}
    kind("jsonl: bad first line", "bad_row; the rest read")
    kind("jsonl: a JSON array line", "bad_row")
    kind("jsonl: a JSON string line", "bad_row")
    kind("jsonl: non-UTF-8 line", "bad_row")
    kind("jsonl: numbers and nested objects", "read as text / JSON text")
    kind("jsonl: UTF-8 byte-order mark", "read")


def test_parquet_typed_columns_are_carried_as_documented_text(tmp_path):
    stamp = dt.datetime(2026, 11, 1, 23, 30, tzinfo=dt.timezone(dt.timedelta(hours=-5)))
    table = pa.table({
        "uri": ["a.jpg", "b.jpg"],
        "posted_at": pa.array([stamp, None], pa.timestamp("us", tz="America/New_York")),
        "taken_on": pa.array([dt.date(2026, 10, 31), dt.date(2026, 1, 2)], pa.date32()),
        "blob": pa.array([b"\x00\xffraw", None], pa.binary()),
        "price": pa.array([decimal.Decimal("12.50"), None], pa.decimal128(6, 2)),
        "naive": pa.array([dt.datetime(2026, 11, 1, 8, 0), None], pa.timestamp("ms")),
    })
    path = tmp_path / "m.parquet"
    pq.write_table(table, path)
    with open(path, "rb") as f:
        out = list(read_manifest(str(path), f, str(tmp_path)))
    assert not _letters(out)
    meta = out[0].metadata
    assert meta["posted_at"] == "2026-11-02T04:30:00+00:00" and meta["taken_on"] == "2026-10-31"
    assert meta["blob"] == "AP9yYXc=" and meta["price"] == "12.50" and meta["naive"] == "2026-11-01T08:00:00"
    assert out[1].metadata["posted_at"] is None
    from beam_jobs.scoring.rows import partition_of

    assert partition_of(meta["posted_at"], dt.date(2026, 1, 1)) == "2026-11-02"
    kind("parquet: timestamp column with a zone", "read; ISO UTC text; partitions by its UTC date")
    kind("parquet: date column", "read as YYYY-MM-DD")
    kind("parquet: binary column", "read as base64")
    kind("parquet: decimal column", "read exactly")
    kind("parquet: naive timestamp column", "read as ISO text (taken as UTC)")


def test_damaged_parquet_manifest_is_one_dead_letter(tmp_path):
    path = tmp_path / "cut.parquet"
    pq.write_table(pa.table({"uri": ["a.jpg"] * 10}), path)
    path.write_bytes(path.read_bytes()[:-30])
    with open(path, "rb") as f:
        out = list(read_manifest(str(path), f, str(tmp_path)))
    assert len(out) == 1 and out[0].reason == "unreadable"
    kind("parquet: cut-short file", "one dead letter naming the file")


@pytest.mark.parametrize("value, expected", [
    ("2026-11-01garbage", None), ("2026-02-30", None), ("last tuesday", None), ("2026W01", None),
    ("2026-11-01T23:30:00-05:00", "2026-11-02"), ("2026-11-03T10:00:00Z", "2026-11-03"), ("2026-11-03", "2026-11-03"),
])
def test_dates_are_strict_and_utc(value, expected):
    from beam_jobs.scoring.rows import BadPost, partition_of

    if expected is None:
        with pytest.raises(BadPost):
            partition_of(value, dt.date(2026, 1, 1))
    else:
        assert partition_of(value, dt.date(2026, 1, 1)) == expected
    kind(f"date: {value}", "bad_row" if expected is None else f"dt={expected} (UTC)")


# --- folders and WebDataset (12.13) ------------------------------------------------------------

def _tree(root: Path) -> None:
    for k, label in enumerate(("acme", "zenith", "neither")):
        (root / label).mkdir(parents=True)
        for i in range(6):
            (root / label / f"{i}.jpg").write_bytes(_jpeg(10 * k + i))
    (root / "acme" / "dangling.jpg").symlink_to(root / "nowhere.jpg")
    (root / "acme" / "self.jpg").symlink_to(root / "acme" / "self.jpg")
    (root / "zenith" / "back").symlink_to(root)
    (root / "neither" / "album.jpg").mkdir()
    (root / "neither" / "album.jpg" / "inside.jpg").write_bytes(_jpeg(99))
    (root / "acme" / ".DS_Store").write_bytes(b"\x00\x01")
    (root / "acme" / "empty.jpg").write_bytes(b"")
    (root / "zenith" / "notes.jpg").write_text("root:x:0:0:root:/root:/bin/bash\n")
    (root / "zenith" / "archive.jpg").write_bytes(_zip())
    data = _jpeg(5, (128, 128))
    (root / "neither" / "cut.jpg").write_bytes(data[: len(data) // 2])
    (root / "neither" / "copy.jpg").write_bytes((root / "neither" / "0.jpg").read_bytes())
    (root / "loose.jpg").write_bytes(_jpeg(77))


def _zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("secret.txt", "do not quote me")
    return buf.getvalue()


def test_folder_walk_accounts_for_every_entry(tmp_path):
    root = tmp_path / "tree"
    _tree(root)
    out = list(walk_folder(str(root)))
    dead = _letters(out)
    assert dead["acme/dangling.jpg"].reason == "missing_file" and "dangling" in dead["acme/dangling.jpg"].message
    assert dead["acme/self.jpg"].reason == "unreadable"
    assert "loop" in dead["zenith/back"].message
    assert "folder named like an image" in dead["neither/album.jpg"].message
    records = {r.record_id for r in out if not isinstance(r, DeadLetter)}
    assert "neither/album.jpg/inside.jpg" in records and not any(".DS_Store" in r for r in records)
    kind("folder: dangling symlink", "missing_file")
    kind("folder: symlink to itself", "unreadable")
    kind("folder: symlink loop to an ancestor", "unreadable, not followed")
    kind("folder: a folder named *.jpg", "unreadable (its files are read)")
    kind("folder: hidden file", "not part of the archive")


def test_webdataset_damage(tmp_path):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in (("k1.jpg", _jpeg(1)), ("k1.json", b'{"label": "acme"}'), ("k2.txt", b"no image"),
                           ("k3.jpg", _jpeg(3)), ("k3.json", b"{bad json"), ("k4.jpg", _jpeg(4))):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    whole = buf.getvalue()
    out = list(read_webdataset_shard("/s/a.tar", io.BytesIO(whole), 10 ** 6))
    reasons = {getattr(o, "record_id", ""): getattr(o, "reason", "record") for o in out}
    assert reasons == {"a.tar/k1": "record", "a.tar/k2": "missing_image", "a.tar/k3": "bad_row", "a.tar/k4": "record"}
    cut = list(read_webdataset_shard("/s/a.tar", io.BytesIO(whole[: len(whole) // 2]), 10 ** 6))
    assert cut[-1].reason == "unreadable" and "cut short" in cut[-1].message or "unreadable" in cut[-1].message
    kind("webdataset: sample without an image", "missing_image")
    kind("webdataset: bad .json member", "bad_row")
    kind("webdataset: cut-short shard", "samples before the cut, then unreadable")


# --- the scoring job end to end ----------------------------------------------------------------

@pytest.fixture(scope="module")
def bad_posts(tmp_path_factory, sample_bottlenecks):
    sample = sample_bottlenecks.parent / "sample"
    images = sorted((sample / "images").rglob("*.jpg"))
    folder = tmp_path_factory.mktemp("bad-posts")
    (folder / "img").mkdir()
    (folder / "img" / "empty.jpg").write_bytes(b"")
    (folder / "img" / "passwd.jpg").write_text("root:x:0:0:root:/root:/bin/bash\n")
    (folder / "img" / "archive.jpg").write_bytes(_zip())
    data = images[0].read_bytes()
    (folder / "img" / "cut.jpg").write_bytes(data[: len(data) // 2])
    (folder / "img" / "rel.jpg").write_bytes(images[1].read_bytes())
    (folder / "img" / "photo.jpg.gz").write_bytes(images[2].read_bytes())
    (folder / "img" / "dir.jpg").mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (700, 700, 3), dtype=np.uint8)).save(folder / "img" / "big.png")
    good = [str(p) for p in images[3:9]]
    rows = [("g0", good[0], "2026-11-01", "ok"), ("g1", good[1], "2026-11-01T23:30:00-05:00", "offset"),
            ("g2", good[2], "2026-11-03T10:00:00Z", "zulu"), ("пост-✓", good[3], "", "unicode 🎉"),
            ("g4", good[4], "2026-11-01", "x" * 200_000), ("rel", "img/rel.jpg", "2026-11-01", "relative uri"),
            ("gz", str(folder / "img" / "photo.jpg.gz"), "2026-11-01", "named .gz"),
            ("missing", str(folder / "img" / "nope.jpg"), "2026-11-01", ""),
            ("empty", str(folder / "img" / "empty.jpg"), "2026-11-01", ""),
            ("passwd", str(folder / "img" / "passwd.jpg"), "2026-11-01", ""),
            ("zip", str(folder / "img" / "archive.jpg"), "2026-11-01", ""),
            ("cut", str(folder / "img" / "cut.jpg"), "2026-11-01", ""),
            ("dir", str(folder / "img" / "dir.jpg"), "2026-11-01", ""),
            ("big", str(folder / "img" / "big.png"), "2026-11-01", ""),
            ("words", good[5], "last tuesday", ""), ("garbage", good[5], "2026-11-01garbage", ""),
            ("feb30", good[5], "2026-02-30", ""), ("g0", good[5], "2026-11-01", "duplicate id"),
            ("", good[5], "2026-11-01", "no id"), ("nouri", "", "2026-11-01", "")]
    manifest = folder / "posts.csv"
    with open(manifest, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["post_id", "image_uri", "posted_at", "caption"])
        writer.writerows(rows)
    with open(manifest, "ab") as f:
        f.write(b"latin,img/rel.jpg,2026-11-01,caf\xe9\n")
        f.write(b"extra,img/rel.jpg,2026-11-01,a,b\n")
        f.write(b"\n")
    stamp = dt.datetime(2026, 11, 1, 23, 0, tzinfo=dt.timezone.utc)
    pq.write_table(pa.table({"post_id": ["pq1", "pq2"], "image_uri": [good[0], good[1]],
                             "posted_at": pa.array([stamp, stamp + dt.timedelta(hours=2)], pa.timestamp("us", tz="UTC")),
                             "caption": ["from parquet", None], "blob": pa.array([b"\x01\x02", None], pa.binary())}),
                   folder / "posts.parquet")
    (folder / "posts.jsonl").write_bytes(b"{bad\n" + json.dumps({"post_id": "js1", "image_uri": good[2], "posted_at": "2026-11-05",
                                                                   "caption": "from jsonl", "blob": None}).encode() + b"\n[1]\n")
    return folder


def test_scoring_job_bad_input_corpus(bad_posts, sample_model, tmp_path):
    from beam_jobs.scoring.config import OutputConfig, ScoringConfig
    from beam_jobs.scoring.job import run

    output = tmp_path / "out"
    summary = run(ScoringConfig(input=str(bad_posts / "posts.*"), input_format="manifest", model=str(sample_model),
                                out=OutputConfig(str(output), rows_per_file=10), batch_size=8, max_bytes=400_000,
                                carry=("caption", "blob")))
    table = pq.read_table(str(output / "scores"), partitioning="hive")
    rows = {r["post_id"]: r for r in table.to_pylist()}
    letters = [json.loads(line) for p in (output / "runs").glob("*/dead_letters*.jsonl") for line in p.read_text().splitlines()]
    by_id = {}
    for letter in letters:
        by_id.setdefault(letter["record_id"], []).append(letter)
    assert summary["reconciliation"]["ok"], summary["reconciliation"]
    assert summary["counts"]["read"] == len(rows) + len(letters)
    assert set(rows) == {"g0", "g1", "g2", "пост-✓", "g4", "rel", "gz", "pq1", "pq2", "js1"}
    assert str(rows["g1"]["dt"]) == "2026-11-02" and str(rows["g2"]["dt"]) == "2026-11-03"
    assert str(rows["pq2"]["dt"]) == "2026-11-02" and rows["pq1"]["blob"] == "AQI=" and rows["js1"]["blob"] is None
    assert len(rows["g4"]["caption"]) == 200_000 and rows["пост-✓"]["caption"] == "unicode 🎉"
    reason = {pid: by_id[pid][0]["reason"] for pid in ("missing", "empty", "passwd", "zip", "cut", "dir", "big", "words",
                                                        "garbage", "feb30", "g0")}
    assert reason == {"missing": "missing_file", "empty": "empty", "passwd": "not_an_image", "zip": "not_an_image",
                      "cut": "truncated", "dir": "unreadable", "big": "too_large", "words": "bad_row", "garbage": "bad_row",
                      "feb30": "bad_row", "g0": "duplicate_post_id"}
    assert "root:x" not in by_id["passwd"][0]["message"] and "text" in by_id["passwd"][0]["message"]
    assert "ZIP" in by_id["zip"][0]["message"] and "secret" not in by_id["zip"][0]["message"]
    manifest_letters = {l["record_id"]: l for l in letters if l["record_id"].startswith("posts.")}
    assert {k: v["reason"] for k, v in manifest_letters.items()} == {
        "posts.csv:20": "bad_row", "posts.csv:21": "bad_row", "posts.csv:22": "bad_row", "posts.csv:23": "bad_row",
        "posts.jsonl:1": "bad_row", "posts.jsonl:3": "bad_row"}
    for name, outcome in [
        ("score: good post", "scored"), ("score: offset timestamp", "scored in its UTC date"),
        ("score: unicode post id and caption", "scored"), ("score: relative image uri", "scored (resolved)"),
        ("score: image named *.gz", "scored (bytes, not inflated)"), ("score: missing image", "missing_file"),
        ("score: empty image file", "empty"), ("score: a readable text file as image", "not_an_image, named 'text', not quoted"),
        ("score: a ZIP file as image", "not_an_image, named 'a ZIP archive'"), ("score: truncated JPEG", "truncated"),
        ("score: a folder as image", "unreadable"), ("score: file over --max-bytes", "too_large"),
        ("score: duplicate post id", "duplicate_post_id"), ("score: empty post id", "bad_row"),
        ("score: empty image uri", "bad_row"), ("score: CSV, JSON lines and Parquet in one glob", "all read, counts reconcile"),
        ("score: manifest-stage dead letters", "counted in read; counts reconcile"),
    ]:
        kind(name, outcome)


def test_scoring_one_line_errors(bad_posts, sample_model, tmp_path, capsys):
    from brandlens.cli import main

    no_uri = tmp_path / "no-uri.csv"
    no_uri.write_text("post_id,url\np1,x.jpg\n")
    bad_header = tmp_path / "bad-header.csv"
    bad_header.write_bytes(b"post_id,image_uri,\xff\np1,x.jpg,1\n")
    cases = {"manifest without an image_uri column": (no_uri, "no column 'image_uri'"),
             "manifest with a non-UTF-8 header": (bad_header, "not UTF-8"),
             "input that matches no file": (tmp_path / "absent.csv", "matches no files")}
    for name, (path, message) in cases.items():
        rc = main(["score", "--input", str(path), "--model", str(sample_model), "--output", str(tmp_path / "o")])
        err = capsys.readouterr().err
        errors = [line for line in err.splitlines() if line.startswith("brandlens: error:")]
        assert rc != 0 and len(errors) == 1 and message in errors[0] and "Traceback" not in err, (name, err)
        kind(f"score: {name}", "one-line error")


# --- the bottleneck job end to end -------------------------------------------------------------

def test_bottleneck_job_bad_input_corpus(tmp_path, artifact_root, lite0_artifact):
    from beam_jobs.bottlenecks.config import BottleneckConfig
    from beam_jobs.bottlenecks.job import run
    from brandlens.config import BackboneConfig

    root = tmp_path / "tree"
    _tree(root)
    (root / "other").mkdir()
    (root / "other" / "o.jpg").write_bytes(_jpeg(55))
    Image.fromarray(np.zeros((300, 300, 3), np.uint8)).save(root / "acme" / "huge.png")
    summary = run(BottleneckConfig(input=str(root), output=str(tmp_path / "out"), labels=("acme", "zenith", "neither"),
                                   max_pixels=250 * 250, cache=str(tmp_path / "cache"),
                                   backbone=BackboneConfig("efficientnet_lite0", artifact_root)))
    letters = [json.loads(line) for p in (tmp_path / "out" / "dead_letters").glob("*.jsonl") for line in p.read_text().splitlines()]
    reasons = {l["record_id"]: l["reason"] for l in letters}
    assert summary["reconciliation"]["ok"], summary["reconciliation"]
    assert reasons == {"acme/dangling.jpg": "missing_file", "acme/self.jpg": "unreadable", "zenith/back": "unreadable",
                       "neither/album.jpg": "unreadable", "acme/empty.jpg": "empty", "zenith/notes.jpg": "not_an_image",
                       "zenith/archive.jpg": "not_an_image", "neither/cut.jpg": "truncated", "loose.jpg": "missing_label",
                       "other/o.jpg": "unknown_label", "acme/huge.png": "too_large"}, reasons
    assert summary["counts"]["duplicates"] == 1
    assert summary["counts"]["read"] == 18 + 1 + 1 + len(letters)  # 18 images, the copy, the one in album.jpg/
    for name, outcome in [
        ("bottlenecks: dangling symlink in a folder", "missing_file"), ("bottlenecks: symlink loop", "unreadable"),
        ("bottlenecks: folder named *.jpg", "unreadable, its image read"), ("bottlenecks: empty file", "empty"),
        ("bottlenecks: text file named .jpg", "not_an_image"), ("bottlenecks: ZIP named .jpg", "not_an_image"),
        ("bottlenecks: truncated JPEG", "truncated"), ("bottlenecks: image outside any label folder", "missing_label"),
        ("bottlenecks: label not in --labels", "unknown_label"), ("bottlenecks: image over --max-pixels", "too_large"),
        ("bottlenecks: identical bytes twice", "one example, counted as a duplicate"),
    ]:
        kind(name, outcome)


def test_zz_corpus_has_forty_kinds(capsys):
    assert len(KINDS) >= 40, len(KINDS)
    with capsys.disabled():
        print(f"\nbad-input kinds: {len(KINDS)}")
        for name, outcome in KINDS.items():
            print(f"  {name}: {outcome}")
