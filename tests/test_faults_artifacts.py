"""Tampered or inconsistent artifacts are refused in one line: model cards, backbone weights, legacy .pth files.

Also the archive readers' side: foreign files in a scores folder are left out and named,
and a folder name with glob characters is read as named.
"""

from __future__ import annotations

import json
import pickle
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest

from brandlens.errors import ArtifactError
from brandlens.torch_legacy import LegacyFileError, load_legacy_state_dict

KINDS: dict[str, str] = {}


def kind(name: str, outcome: str) -> None:
    KINDS[name] = outcome


# --- model cards (12.10) -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def card_copy(sample_model, tmp_path_factory):
    def make(edit):
        target = tmp_path_factory.mktemp("tampered") / "model"
        shutil.copytree(sample_model, target)
        card = json.loads((target / "model_card.json").read_text())
        edit(card)
        (target / "model_card.json").write_text(json.dumps(card))
        return target
    return make


def _check(path):
    from beam_jobs.scoring.job import checked_card

    return checked_card(str(path))


def test_the_real_card_passes(sample_model):
    card = _check(sample_model)
    assert card.labels and card.neither_label in card.labels


@pytest.mark.parametrize("name, edit, message", [
    ("labels reordered", lambda c: c.update(labels=list(reversed(c["labels"]))), "labels"),
    ("a label removed", lambda c: c.update(labels=c["labels"][:-1]), "labels"),
    ("neither_label changed to a brand", lambda c: c.update(neither_label=c["labels"][0]), "differ"),
    ("neither_label not a label", lambda c: c.update(neither_label="nobody"), "not one of the labels"),
    ("version id changed", lambda c: c.update(version_id="bl-20990101T000000Z-00000000"), "version"),
    ("embedding width changed", lambda c: c["backbone"].update(embedding_dim=7), "embedding width"),
])
def test_a_card_that_does_not_match_its_model_is_refused(card_copy, name, edit, message, sample_model):
    card = json.loads((sample_model / "model_card.json").read_text())
    if name.startswith("neither_label changed") and card.get("threshold") is None:
        edit = lambda c: c.update(neither_label=c["labels"][0], threshold=0.99)  # noqa: E731 (a threshold makes it observable)
    with pytest.raises(ArtifactError, match=message) as info:
        _check(card_copy(edit))
    assert "\n" not in str(info.value)
    kind(f"model card: {name}", "refused, one line")


def test_predict_refuses_a_card_that_does_not_match_its_model(card_copy, sample_bottlenecks, capsys):
    from brandlens.cli import main

    photo = sorted((sample_bottlenecks.parent / "sample" / "images").rglob("*.jpg"))[0]
    tampered = card_copy(lambda c: c.update(labels=list(reversed(c["labels"]))))
    assert main(["predict", str(tampered), str(photo)]) == 2
    err = capsys.readouterr().err.strip()
    assert "does not match its SavedModel" in err and "\n" not in err
    kind("model card: predict with a reordered card", "refused, one line")


# --- backbone weights (12.11) ------------------------------------------------------------------

def test_backbone_with_other_weights_under_the_same_fingerprint_is_refused(lite0_artifact, tmp_path, monkeypatch):
    from brandlens.backbones.artifact import read_fingerprint, verify_weights

    monkeypatch.setenv("BRANDLENS_CACHE", str(tmp_path / "stamps"))
    verify_weights(lite0_artifact)
    stamps = list((tmp_path / "stamps").rglob("*"))
    assert read_fingerprint(lite0_artifact).saved_weights_sha256 and stamps  # verified once, remembered
    copy = tmp_path / lite0_artifact.name
    shutil.copytree(lite0_artifact, copy)
    data = sorted((copy / "saved_model" / "variables").glob("variables.data*"))[0]
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    data.write_bytes(bytes(raw))
    with pytest.raises(ArtifactError, match="not the ones its fingerprint.json names"):
        verify_weights(copy)
    kind("backbone: re-saved with other weights under the same fingerprint", "refused, one line")


# --- legacy .pth files (12.12) -----------------------------------------------------------------

def _body(obj) -> bytes:
    """The opcodes of one small object, without the protocol header and STOP (to splice into a hand-made pickle)."""
    return pickle.dumps(obj, protocol=2)[2:-1]


def _state_pickle(tensors: dict) -> bytes:
    """The state dict as torch.save wrote it: tensor rebuild calls on persistent storages (no torch needed)."""
    out = b"\x80\x02}"
    for name, (key, storage, offset, size, stride) in tensors.items():
        pid = b"(" + _body("storage") + b"ctorch\n" + storage.encode() + b"\n" + _body(key) + _body("cpu") + _body(0) + b"tQ"
        out += (_body(name) + b"ctorch._utils\n_rebuild_tensor_v2\n(" + pid + _body(offset) + _body(tuple(size))
                + _body(tuple(stride)) + b"tRs")
    return out + b"."


def _pth(tensors: dict, storages: dict[str, tuple[int, bytes]]) -> bytes:
    """A legacy file: header pickles, the state dict, the key list, then each storage (count, bytes)."""
    header = b"".join(pickle.dumps(v, protocol=2) for v in (0x1950A86A20F9469CFC6C, 1001, {"little_endian": True}))
    tail = b"".join(struct.pack("<q", count) + raw for count, raw in storages.values())
    return header + _state_pickle(tensors) + pickle.dumps(list(storages), protocol=2) + tail


def _floats(n: int) -> bytes:
    return np.arange(n, dtype=np.float32).tobytes()


def test_a_sound_crafted_file_reads():
    state = load_legacy_state_dict(_pth({"w": ("0", "FloatStorage", 1, (2, 3), (3, 1))}, {"0": (7, _floats(7))}))
    np.testing.assert_array_equal(state["w"], np.arange(1, 7, dtype=np.float32).reshape(2, 3))


@pytest.mark.parametrize("name, tensors, storages, message", [
    ("a view of 50M elements over a 1-element storage", {"w": ("0", "FloatStorage", 0, (50_000_000,), (1,))},
     {"0": (1, _floats(1))}, "reaches element"),
    ("a view that reaches a little past its storage", {"w": ("0", "FloatStorage", 2, (4,), (1,))},
     {"0": (5, _floats(5))}, "reaches element"),
    ("a zero stride blowing 1 element up to 400M", {"w": ("0", "FloatStorage", 0, (20_000, 20_000), (0, 0))},
     {"0": (1, _floats(1))}, "overlapping or zero strides"),
    ("a storage longer than the file", {"w": ("0", "FloatStorage", 0, (1,), (1,))},
     {"0": (10 ** 12, _floats(1))}, "bytes left"),
    ("a negative storage length", {"w": ("0", "FloatStorage", 0, (1,), (1,))}, {"0": (-5, b"")}, "claims"),
    ("a tensor naming a storage the file lacks", {"w": ("9", "FloatStorage", 0, (1,), (1,))},
     {"0": (1, _floats(1))}, "does not hold"),
    ("sizes and strides of different lengths", {"w": ("0", "FloatStorage", 0, (1, 1), (1,))},
     {"0": (1, _floats(1))}, "strides"),
    ("a negative size", {"w": ("0", "FloatStorage", 0, (-1,), (1,))}, {"0": (1, _floats(1))}, "non-negative"),
    ("a truncated storage", {"w": ("0", "FloatStorage", 0, (4,), (1,))}, {"0": (4, _floats(2))}, "bytes left|truncated"),
])
def test_bad_legacy_files_are_refused_in_one_line(name, tensors, storages, message):
    with pytest.raises(LegacyFileError, match=message) as info:
        load_legacy_state_dict(_pth(tensors, storages))
    assert "\n" not in str(info.value) and isinstance(info.value, ArtifactError)
    kind(f".pth: {name}", "LegacyFileError, one line")


def test_a_refused_pth_is_one_line_through_the_cli(tmp_path, capsys):
    from brandlens.cli import main

    bad = tmp_path / "bad.pth"
    bad.write_bytes(_pth({"w": ("0", "FloatStorage", 0, (50_000_000,), (1,))}, {"0": (1, _floats(1))}))
    rc = main(["backbone", "--backbone", "efficientnet_lite0", "--weights-file", str(bad), "--artifacts", str(tmp_path / "a")])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("brandlens: error:")]
    assert rc == 2 and len(errors) == 1 and "reaches element" in errors[0] and "Traceback" not in err
    kind("backbone: a refused .pth through 'brandlens backbone'", "one-line error")


def test_garbage_pth_is_one_line():
    with pytest.raises(LegacyFileError) as info:
        load_legacy_state_dict(b"\x80\x02" + b"\xff" * 40)
    assert "\n" not in str(info.value)
    kind(".pth: garbage bytes", "LegacyFileError, one line")


# --- what query reads (12.6, 12.13) ------------------------------------------------------------

def _archive(root: Path) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from beam_jobs.scoring.parquet_sink import file_name

    part = root / "scores" / "dt=2026-11-01"
    part.mkdir(parents=True)
    pq.write_table(pa.table({"post_id": ["a", "b"], "label": ["acme", "neither"], "brand_found": [True, False]}),
                   part / file_name("0123456789ab", 0, 1))
    return root / "scores"


def test_query_reads_only_its_own_part_files_and_names_the_rest(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from brandlens.query import connect

    scores = _archive(tmp_path / "archive[1]")
    pq.write_table(pa.table({"x": [1, 2, 3]}), scores / "dt=2026-11-01" / "foreign.parquet")
    pq.write_table(pa.table({"post_id": ["z"]}), scores / "stray.parquet")
    (scores / "dt=2026-11-01" / "_part-0123456789ab-00000-of-00001.parquet.inprogress").write_bytes(b"PAR1")
    skipped: list = []
    con = connect(str(scores), skipped)
    assert con.execute("SELECT count(*) FROM scores").fetchone()[0] == 2
    assert sorted(Path(p).name for p in skipped) == ["_part-0123456789ab-00000-of-00001.parquet.inprogress",
                                                      "foreign.parquet", "stray.parquet"]
    kind("query: foreign Parquet file in a partition", "left out and named")
    kind("query: stray Parquet file at the top", "left out and named")
    kind("query: a file being written", "left out and named")
    kind("query: '[1]' in the --scores path", "read as named, not as a glob")


def test_zz_report_kinds(capsys):
    with capsys.disabled():
        print(f"\ntampered-artifact and reader kinds: {len(KINDS)}")
        for name, outcome in KINDS.items():
            print(f"  {name}: {outcome}")
