"""Pure pieces of the scoring job: post identity, date partitions, views, output rows.

Plain Python and numpy, tested without Beam or TensorFlow.
"""

from __future__ import annotations

import datetime as dt
import re

import numpy as np

from brandlens import evidence
from brandlens.preprocess import tile_boxes
from schemas import scores as schema

_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


class BadPost(ValueError):
    """A post that cannot be scored for a reason in its own data (id, date)."""


def post_id_of(uri: str, record_id: str, metadata: dict, id_column: str, fmt: str) -> str:
    """The post id: the id column of a manifest or WebDataset sample; the uri of a plain image file."""
    value = metadata.get(id_column)
    if value not in (None, ""):
        return str(value)
    if fmt == "manifest":
        raise BadPost(f"no {id_column!r} value")
    return record_id if fmt == "webdataset" else uri


def partition_of(value: str | None, run_date: dt.date) -> str:
    """``YYYY-MM-DD`` (UTC) of a post's date column, or the run date when it has none.

    Strict: an ISO date, or an ISO timestamp and nothing after it (``2026-11-01garbage`` is a
    bad post). A timestamp with a zone or offset is partitioned by its UTC date; one without
    is taken to be UTC already. Parquet timestamp columns arrive as such ISO strings.
    """
    if value in (None, ""):
        return run_date.isoformat()
    text = str(value).strip()
    try:
        if _DATE.fullmatch(text):
            return dt.date.fromisoformat(text).isoformat()
        stamp = dt.datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith(("Z", "z")) else text)
    except ValueError:
        raise BadPost(f"date {value!r} is not an ISO date or timestamp") from None
    if not _DATE.match(text):  # fromisoformat also takes week dates and compact forms
        raise BadPost(f"date {value!r} is not an ISO date or timestamp")
    return (stamp.astimezone(dt.timezone.utc) if stamp.tzinfo else stamp).date().isoformat()


def views(rgb: np.ndarray, grid: int) -> list[np.ndarray]:
    """The whole image, then its tiles (multi-crop scoring)."""
    return [rgb] + [rgb[t:b, l:r] for t, l, b, r in tile_boxes(rgb.shape[0], rgb.shape[1], grid)]


def best_view(scores: np.ndarray, brand_mask: np.ndarray) -> int:
    """Index of the view whose best brand score is highest (0, the whole image, on ties)."""
    if scores.shape[0] == 1 or not brand_mask.any():
        return 0
    return int(np.argmax(scores[:, brand_mask].max(axis=1)))


def brand_mask(labels: tuple[str, ...], neither: str | None) -> np.ndarray:
    """Which classes are brands (all of them in a closed world)."""
    return np.array([label != neither for label in labels], bool)


def brand_scores(scores: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """float32 [N]: the best brand's score per row of softmax ``scores`` [N, C] (0 where no class is a brand)."""
    scores = np.asarray(scores, np.float32)
    if not mask.any():
        return np.zeros(len(scores), np.float32)
    return scores[:, mask].max(axis=1)


def given_uri(metadata: dict, uri_column: str, resolved: str) -> str:
    """The image uri as the input wrote it (a manifest's uri column), else the resolved one."""
    value = metadata.get(uri_column)
    return value.strip() if isinstance(value, str) and value.strip() else resolved


def view_boxes_to_photo(boxes: np.ndarray, height: int, width: int, grid: int, view: int, crop_fraction: float,
                        resize_mode: str) -> np.ndarray:
    """Boxes (or points) normalised to view ``view``'s model input -> normalised to the whole photo.

    View 0 is the whole photo prepared as the model was trained; the others are :func:`tile_boxes` tiles, squashed.
    """
    if view == 0:
        return evidence.input_box_to_image(boxes, height, width, crop_fraction, resize_mode)
    top, left, bottom, right = tile_boxes(height, width, grid)[view - 1]
    out = np.array(boxes, np.float64)
    out[..., 0::2] = (left + out[..., 0::2] * (right - left)) / width
    out[..., 1::2] = (top + out[..., 1::2] * (bottom - top)) / height
    return out


def score_row(post_id: str, uri: str, content_hash: str, partition: str, outputs: dict, index: int,
              labels: tuple[str, ...], neither: str | None, model_version: str, backbone: str,
              scored_at: dt.datetime, carried: dict, with_embedding: bool, resolved_uri: str | None = None,
              brand_thresholds: dict | None = None, to_photo=None, tile_thresholds: dict | None = None,
              view_to_photo=None) -> dict:
    """One output row (``schemas.scores`` columns + the ``dt`` partition) from the model's outputs.

    ``uri`` is the image uri as given, ``resolved_uri`` where it was read (default: the same);
    ``to_photo`` maps the chosen view's evidence boxes [C, 4] to the photo (:func:`view_boxes_to_photo`).
    ``tile_thresholds`` (multi-crop): also report each brand whose best score over all views passes its threshold,
    its box mapped by ``view_to_photo(boxes, view=v)``.
    """
    label = str(outputs["label"][index])
    scores = np.asarray(outputs["scores"][index:index + 1], np.float32)
    region = outputs.get(evidence.OUT_REGION_SCORES)
    boxes = outputs.get(evidence.OUT_BOXES)
    if boxes is not None:
        boxes = to_photo(boxes[index]) if to_photo is not None else boxes[index]
    brands = evidence.reported_brands(label, outputs["scores"][index], labels, neither, brand_thresholds,
                                      None if region is None else region[index], boxes)
    if tile_thresholds and len(outputs["scores"]) > 1:
        all_boxes = outputs.get(evidence.OUT_BOXES)
        view_boxes = None if all_boxes is None or view_to_photo is None else (
            lambda v: view_to_photo(all_boxes[v], view=v))
        brands = evidence.add_tile_brands(brands, label, outputs["scores"], region, labels, neither, tile_thresholds,
                                          view_boxes)
    row = {
        schema.POST_ID: post_id, schema.IMAGE_URI: uri, schema.RESOLVED_URI: resolved_uri or uri,
        schema.CONTENT_HASH: content_hash, schema.LABEL: label,
        schema.CONFIDENCE: float(outputs["confidence"][index]),
        schema.BRAND_SCORE: float(brand_scores(scores, brand_mask(labels, neither))[0]),
        schema.BRAND_FOUND: bool(brands), schema.MODEL_VERSION: model_version, schema.BACKBONE: backbone,
        schema.SCORED_AT: scored_at, schema.PARTITION: partition,
        schema.BRANDS: [{**b, "box": b["box"] or []} for b in brands],  # Parquet lists hold no NULLs: [] = no box
        schema.BOX: (brands[0]["box"] or []) if brands and brands[0]["label"] == label else [],
    }
    for name, score in zip(labels, outputs["scores"][index]):
        row[schema.score_column(name)] = float(score)
    if with_embedding:
        row[schema.EMBEDDING] = np.asarray(outputs["embedding"][index], np.float32).tolist()
    row.update(carried)
    return row
