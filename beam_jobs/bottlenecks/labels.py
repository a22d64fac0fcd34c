"""What a record's metadata says about it: label, split and logo boxes (pure, no Beam).

The label is the ``label`` field (manifest column, folder name, WebDataset
``.json`` field) or else WebDataset's ``.cls``; a ``.cls`` that is an integer is a
class index into ``--labels`` when those are given. A logo box is given as
``x1,y1,x2,y2`` columns (pixels of the stored image) or one ``box`` field.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

from beam_jobs.bottlenecks.splits import normalise_split
from schemas.dead_letter import BAD_ROW, MISSING_LABEL, UNKNOWN_LABEL

Box = tuple[float, float, float, float]
BOX_FIELDS = ("x1", "y1", "x2", "y2")


class Rejected(ValueError):
    """Metadata that makes a record unusable; ``reason`` is a dead-letter reason."""

    def __init__(self, reason: str, message: str):
        super().__init__(reason, message)
        self.reason = reason
        self.message = message

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True)
class Annotation:
    label: str
    split: str | None  # None: assigned from the content hash
    box: Box | None


def resolve_label(metadata: dict, labels: tuple[str, ...] = ()) -> str:
    """The record's label, checked against ``labels`` when given."""
    label = (metadata.get("label") or "").strip()
    if not label:
        cls = (metadata.get("cls") or "").strip()
        if cls and labels and cls.lstrip("-").isdigit():
            index = int(cls)
            if not 0 <= index < len(labels):
                raise Rejected(UNKNOWN_LABEL, f"class index {index} is outside --labels (0..{len(labels) - 1})")
            return labels[index]
        label = cls
    if not label:
        raise Rejected(MISSING_LABEL, "no label")
    if labels and label not in labels:
        raise Rejected(UNKNOWN_LABEL, f"label {label!r} is not one of {', '.join(labels)}")
    return label


def parse_box(metadata: dict) -> Box | None:
    """The logo box (x1, y1, x2, y2) or None; half-given or malformed boxes raise Rejected(bad_row)."""
    cells = [metadata.get(name) for name in BOX_FIELDS]
    given = [c is not None and str(c).strip() != "" for c in cells]
    text = metadata.get("box")
    if not any(given) and (text is None or not str(text).strip()):
        return None
    try:
        if any(given):
            if not all(given):
                raise ValueError(f"give all of {', '.join(BOX_FIELDS)} or none")
            values = [float(c) for c in cells]
        else:
            text = str(text).strip()
            values = json.loads(text) if text.startswith("[") else [float(v) for v in text.split(",")]
            values = [float(v) for v in values]
            if len(values) != 4:
                raise ValueError("a box has 4 numbers")
        x1, y1, x2, y2 = values
        if not all(math.isfinite(v) for v in values) or min(values) < 0 or x2 <= x1 or y2 <= y1:
            raise ValueError("need 0 <= x1 < x2 and 0 <= y1 < y2")
    except (ValueError, TypeError) as exc:
        raise Rejected(BAD_ROW, f"bad logo box {cells if any(given) else text!r}: {exc}") from None
    return (x1, y1, x2, y2)


def parse_label_map(specs) -> tuple[tuple[str, str], ...]:
    """``['asics,vans=neither', 'nike_sb=nike']`` -> ``(('asics', 'neither'), ('vans', 'neither'), ('nike_sb', 'nike'))``.

    How hard negatives join an open world: another brand's shoes keep their own
    label in their manifest and become ``neither`` for this model.
    """
    pairs: dict[str, str] = {}
    for spec in specs:
        sources, sep, target = str(spec).partition("=")
        names = [s.strip() for s in sources.split(",") if s.strip()]
        if not sep or not names or not target.strip():
            raise ValueError(f"bad label map {spec!r}: use FROM[,FROM...]=TO, e.g. asics,vans=neither")
        for name in names:
            if pairs.get(name, target.strip()) != target.strip():
                raise ValueError(f"label {name!r} is mapped twice ({pairs[name]!r} and {target.strip()!r})")
            pairs[name] = target.strip()
    return tuple(sorted(pairs.items()))


def map_label(label: str, label_map: tuple[tuple[str, str], ...] = ()) -> str:
    return dict(label_map).get(label, label)


def annotate(metadata: dict, labels: tuple[str, ...] = (), label_map: tuple[tuple[str, str], ...] = ()) -> Annotation:
    """Label (after ``label_map``), split and box of a record, or Rejected with the dead-letter reason.

    ``labels`` (``--labels``) lists the allowed labels after mapping.
    """
    if label_map and (metadata.get("label") or "").strip():
        metadata = {**metadata, "label": map_label(metadata["label"].strip(), label_map)}
    label = resolve_label(metadata, labels)
    try:
        split = normalise_split(metadata.get("split"))
    except ValueError as exc:
        raise Rejected(BAD_ROW, str(exc)) from None
    return Annotation(label, split, parse_box(metadata))
