"""Read a bottleneck folder (``schemas.layout``) into numpy arrays the head trains on.

Training uses the tensorflow-transform output as written by the bottleneck job;
the raw embeddings are read too, because the exported model starts from them and
must be checked against the same rows. Validation and test keep only the
'original' variant: augmentations are for training, never for measuring.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from brandlens.backbones.artifact import BackboneFingerprint, read_fingerprint
from brandlens.errors import ArtifactError, BrandlensError
from schemas import bottleneck as bn
from schemas import layout

log = logging.getLogger(__name__)

AFFINE_TOLERANCE = 1e-4


class DataError(BrandlensError):
    """The bottleneck folder is missing, incomplete or cannot train a classifier."""


@dataclass(frozen=True)
class SplitData:
    """One split's rows, aligned across every array."""

    x: np.ndarray          # float32 [N, D]: the transformed (scaled) embedding
    raw: np.ndarray        # float32 [N, D]: the backbone's embedding as stored
    y: np.ndarray          # int64 [N]: index into BottleneckData.labels
    uri: np.ndarray        # str [N]
    variant: np.ndarray    # str [N]
    content_hash: np.ndarray  # str [N]
    maps: np.ndarray | None = None  # float16 [N, h, w, c]: the maps entering the cut block (bottlenecks made with --cut)

    def __post_init__(self):
        if self.maps is None:  # no cut: an empty column, so select() and concatenation need no special case
            object.__setattr__(self, "maps", np.zeros((len(self.y), 0), np.float16))

    def __len__(self) -> int:
        return len(self.y)

    def select(self, mask: np.ndarray) -> "SplitData":
        return SplitData(*(getattr(self, f.name)[mask] for f in dataclasses.fields(self)))


@dataclass(frozen=True)
class BottleneckData:
    root: Path
    labels: list[str]
    neither_label: str | None      # None: closed world
    fingerprint: BackboneFingerprint
    summary: dict
    scale: np.ndarray              # float32 [D]: transformed = raw * scale + shift
    shift: np.ndarray
    splits: dict[str, SplitData]
    cut: int | None = None         # the block whose input maps the splits carry (bottleneck job's --cut)

    @property
    def neither_index(self) -> int | None:
        return None if self.neither_label is None else self.labels.index(self.neither_label)

    @property
    def classification(self) -> str:
        world = "open world" if self.neither_label else "closed world"
        return f"{world}, {len(self.labels)} classes"

    def counts(self) -> dict:
        """Rows per split, label and variant: what the model card cites as training data."""
        out = {}
        for name, split in self.splits.items():
            per_label = {label: int(np.sum(split.y == i)) for i, label in enumerate(self.labels)}
            variants = {str(v): int(np.sum(split.variant == v)) for v in np.unique(split.variant)}
            out[name] = {"total": len(split), "per_label": per_label, "per_variant": variants}
        return out


def read_backbone_fingerprint(root: Path) -> BackboneFingerprint:
    path = Path(root) / layout.BACKBONE
    if not path.is_file():
        raise DataError(f"{root} has no {layout.BACKBONE}: not a bottleneck folder (run 'brandlens bottlenecks' first)")
    return BackboneFingerprint.from_json(path.read_text())


def locate_artifact(fingerprint: BackboneFingerprint, artifact_root: Path) -> Path:
    """The artifact the embeddings came from, verified by its fingerprint."""
    from brandlens.backbones.lite_variants import other_input_size

    path = Path(artifact_root) / fingerprint.directory_name
    if not path.is_dir():
        size = other_input_size(fingerprint.name, fingerprint.input_size)
        raise ArtifactError(
            f"backbone artifact {path} not found; the bottlenecks were made with {fingerprint.version}. Build it with: "
            f"brandlens backbone --backbone {fingerprint.name} --crop-fraction {fingerprint.crop_fraction:g} "
            f"--resize-mode {fingerprint.resize_mode}{f' --input-size {size}' if size else ''} --artifacts {artifact_root}")
    found = read_fingerprint(path)
    mine = dataclasses.asdict(fingerprint)
    theirs = dataclasses.asdict(found)
    differ = [k for k in mine if k != "created_by" and mine[k] != theirs[k]]
    if differ:
        raise ArtifactError(f"backbone artifact {path} differs from the bottlenecks' backbone.json in {', '.join(differ)}")
    return path


def _files(folder: Path, split: str) -> list[str]:
    return sorted(str(p) for p in folder.glob(Path(layout.split_pattern(".", split)).name))


def _read_records(files: list[str], spec: dict) -> dict[str, np.ndarray]:
    import tensorflow as tf

    columns: dict[str, list] = {name: [] for name in spec}
    dataset = tf.data.TFRecordDataset(files, compression_type="GZIP").batch(1024)
    for batch in dataset.map(lambda s: tf.io.parse_example(s, spec)):
        for name in spec:
            columns[name].append(batch[name].numpy())
    return {name: (np.concatenate(parts) if parts else np.zeros((0,) + tuple(spec[name].shape))) for name, parts in columns.items()}


def _strings(values: np.ndarray) -> np.ndarray:
    return np.array([v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in values], dtype=object)


def transform_affine(transform_dir: Path, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """(scale, shift) with transformed = raw * scale + shift, probed from the TFT graph.

    The export carries these two vectors instead of the TFT graph, so it has no
    files outside its folder and no tensorflow-transform dependency at serving
    time. The probe refuses a transform that is not affine per element.
    """
    import tensorflow as tf
    import tensorflow_transform as tft

    output = tft.TFTransformOutput(str(transform_dir))
    probe = np.repeat(np.array([[0.0], [1.0], [3.0]], np.float32), dim, axis=1)
    raw = {name: tf.constant(["probe"] * 3) for name in bn.STRING_FEATURES}
    raw[bn.EMBEDDING] = tf.constant(probe)
    out = output.transform_raw_features(raw)[bn.EMBEDDING_SCALED].numpy().astype(np.float64)
    shift, scale = out[0], out[1] - out[0]
    if not np.allclose(out[2], shift + 3.0 * scale, rtol=AFFINE_TOLERANCE, atol=AFFINE_TOLERANCE):
        raise DataError(f"the transform in {transform_dir} is not an affine scaling of the embedding; the trainer cannot export it")
    return scale.astype(np.float32), shift.astype(np.float32)


def load_bottlenecks(root: str | Path, neither_label: str = "neither") -> BottleneckData:
    """Read and check every split; raise DataError with what to do when something is off."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"bottleneck folder {root} does not exist")
    fingerprint = read_backbone_fingerprint(root)
    dim = fingerprint.embedding_dim
    for sub in (layout.EXAMPLES, layout.TRANSFORMED, layout.TRANSFORM):
        if not (root / sub).is_dir():
            raise DataError(f"{root} lacks {sub}/: the bottleneck job did not finish")
    summary_path = root / layout.SUMMARY
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}

    transformed_spec = {k: v for k, v in bn.transformed_feature_spec(dim).items() if k != bn.LABEL_ID}
    import tensorflow as tf

    raw_spec = {bn.EMBEDDING: tf.io.FixedLenFeature([dim], tf.float32),
                **{k: tf.io.FixedLenFeature([], tf.string) for k in (bn.CONTENT_HASH, bn.URI, bn.SPLIT, bn.VARIANT, bn.BACKBONE)}}
    cut = summary.get("config", {}).get("cut")
    map_shape = summary.get("cut_map_shape")
    if cut is not None:
        if not map_shape:
            raise DataError(f"{summary_path} names cut {cut} but no cut_map_shape")
        raw_spec[bn.CUT_MAP] = tf.io.FixedLenFeature([], tf.string)
    columns = {}
    for split in bn.SPLITS:
        files = _files(root / layout.TRANSFORMED, split)
        raw_files = _files(root / layout.EXAMPLES, split)
        t = _read_records(files, transformed_spec) if files else None
        r = _read_records(raw_files, raw_spec) if raw_files else None
        columns[split] = (t, r)

    train_t = columns["train"][0]
    if train_t is None or len(train_t[bn.LABEL]) == 0:
        raise DataError(f"{root} has no training examples ({layout.TRANSFORMED}/train-*{layout.TFRECORD_SUFFIX}); "
                        "check the manifest's split column")
    names = sorted(set(_strings(train_t[bn.LABEL])))
    if len(names) < 2:
        raise DataError(f"the training split has only the label(s) {names}; a classifier needs two or more")
    open_world = neither_label in names
    labels = [n for n in names if n != neither_label] + ([neither_label] if open_world else [])
    index = {label: i for i, label in enumerate(labels)}

    splits = {}
    for split, (t, r) in columns.items():
        if t is None or len(t[bn.LABEL]) == 0:
            raise DataError(f"{root} has no {split} examples; training needs train, validation and test splits")
        aligned = _align(split, t, r, index, fingerprint, map_shape if cut is not None else None)
        # Beam writes rows in no fixed order; sorting makes a rerun of the same bottlenecks train the same weights.
        splits[split] = aligned.select(np.lexsort((aligned.uri.astype(str), aligned.variant.astype(str),
                                                   aligned.content_hash.astype(str))))
    for split in ("validation", "test"):
        splits[split] = splits[split].select(splits[split].variant == bn.ORIGINAL_VARIANT)
        if len(splits[split]) == 0:
            raise DataError(f"{root} has no '{bn.ORIGINAL_VARIANT}' {split} examples")
    scale, shift = transform_affine(root / layout.TRANSFORM, dim)
    train = splits["train"]
    recomputed = train.raw * scale + shift
    worst = float(np.max(np.abs(recomputed - train.x)))
    if worst > AFFINE_TOLERANCE * max(1.0, float(np.max(np.abs(train.x)))):
        raise DataError(f"{root}: transformed embeddings differ from the transform applied to the raw ones by {worst:g}")
    data = BottleneckData(root, labels, neither_label if open_world else None, fingerprint, summary, scale, shift, splits, cut)
    log.info("read %s: %s; %s", root, data.classification, {s: len(d) for s, d in splits.items()})
    return data


def _align(split: str, t: dict, r: dict | None, index: dict[str, int], fingerprint: BackboneFingerprint,
           map_shape=None) -> SplitData:
    """Join transformed rows to their raw rows by identity; check labels and backbone."""
    labels = _strings(t[bn.LABEL])
    unknown = sorted(set(labels) - set(index))
    if unknown:
        raise DataError(f"the {split} split has label(s) {unknown} that the training split lacks; the model cannot predict them")
    key_t = list(zip(_strings(t[bn.CONTENT_HASH]), _strings(t[bn.URI]), _strings(t[bn.VARIANT])))
    if r is None:
        raise DataError(f"{split}: transformed examples without raw examples in {layout.EXAMPLES}/")
    backbones = set(_strings(r[bn.BACKBONE]))
    if backbones - {fingerprint.version}:
        raise DataError(f"{split}: embeddings from backbone(s) {sorted(backbones)}, but backbone.json says {fingerprint.version}")
    key_r = {k: i for i, k in enumerate(zip(_strings(r[bn.CONTENT_HASH]), _strings(r[bn.URI]), _strings(r[bn.VARIANT])))}
    missing = [k for k in key_t if k not in key_r]
    if missing:
        raise DataError(f"{split}: {len(missing)} transformed examples have no raw example, e.g. {missing[0]}")
    order = np.array([key_r[k] for k in key_t], np.int64)
    return SplitData(
        x=t[bn.EMBEDDING_SCALED].astype(np.float32),
        raw=r[bn.EMBEDDING][order].astype(np.float32),
        y=np.array([index[label] for label in labels], np.int64),
        uri=_strings(t[bn.URI]),
        variant=_strings(t[bn.VARIANT]),
        content_hash=_strings(t[bn.CONTENT_HASH]),
        maps=None if map_shape is None else bn.decode_cut_maps(list(r[bn.CUT_MAP][order]), map_shape),
    )


def default_image_root(data: BottleneckData) -> Path | None:
    """Where relative URIs point: the manifest's folder, when the summary names it."""
    for key in ("image_root", "manifest"):
        value = data.summary.get(key) or data.summary.get("config", {}).get("base_uri" if key == "image_root" else "input")
        if isinstance(value, str) and value:
            path = Path(value)
            return path if key == "image_root" else path.parent
    return None


def resolve_uri(uri: str, image_root: Path | None) -> str:
    if "://" in uri or Path(uri).is_absolute() or image_root is None:
        return uri
    return str(Path(image_root) / uri)


def read_bytes(location: str) -> bytes | None:
    """The image's bytes, or None when it cannot be read here (reports then say so)."""
    try:
        if "://" in location:
            from brandlens import fileio

            return fileio.read_bytes(location)
        return Path(location).read_bytes()
    except Exception:  # a report must not fail on one unreadable image
        return None
