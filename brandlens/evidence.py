"""Where each brand is in a photo, from the classifier's own head (class activation maps).

The classifier is ``softmax(((mean_hw F) * scale + shift) @ kernel + bias)`` on the
backbone's last map ``F`` [N, h, w, D]. Mean-pooling, the affine transform and the
dense layer are all linear, so applying the head at every location gives logit
maps ``L`` [N, h, w, C] whose mean over locations *is* the logit: the maps are
exact, not an approximation. The head/ signature, which takes a pooled
embedding, cannot make them.

Per brand, the evidence is:

* its heat map: its logit map ``L_c``, upsampled bilinearly (the local
  log-probability ``L_c - logsumexp_j L_j`` pointed worse on FlickrLogos-27);
* its peak (the pointing-game point) and its region: the connected cells around
  the peak whose min-max scaled heat is at least ``relative``;
* its box (normalised x1, y1, x2, y2 of the region) and the box's share of the input;
* its region score: the head applied to the features pooled over the region. A
  brand that fills a small part of the photo is diluted in the global score but
  not in its region's, so this is what reports several brands in one photo.

Functions are TensorFlow ops (the exported serving model runs them) and work
eagerly on numpy arrays; boxes are in the frame of the model's square input,
:func:`input_box_to_image` maps them back to the photo.
"""

from __future__ import annotations

import numpy as np

from schemas import model as contract

MAX_EXTRA_RATE = 0.04  # the share of single-brand photos allowed an extra brand when thresholds are chosen
# Chosen by cross-validation on FlickrLogos-27's annotated training photos (bench/localisation.py):
UPSAMPLE = 2            # heat maps are cut into regions at 2x the map's resolution (18 x 18 for Lite2); 4 and 8 no better
RELATIVE = 0.3          # a region holds the cells whose min-max scaled heat is >= this
LOCAL_LOG_PROB = False  # regions from the logit maps, not the local log-probability

OUT_MAPS, OUT_BOXES, OUT_AREAS, OUT_POINTS, OUT_REGION_SCORES = contract.EVIDENCE_OUTPUTS  # described there


def location_logits(feature_map, scale, shift, kernel, bias):
    """The head at every location: [N, h, w, D] -> [N, h, w, C]; the mean over h, w equals the pooled logits."""
    import tensorflow as tf

    feature_map = tf.convert_to_tensor(feature_map, tf.float32)
    scaled = feature_map * tf.cast(scale, tf.float32) + tf.cast(shift, tf.float32)
    return tf.einsum("nhwd,dc->nhwc", scaled, tf.cast(kernel, tf.float32)) + tf.cast(bias, tf.float32)


def heat(logit_maps, local_log_prob: bool = LOCAL_LOG_PROB):
    """The maps regions are cut from [N, h, w, C]: the logits, or each class's local log-probability."""
    import tensorflow as tf

    if not local_log_prob:
        return tf.convert_to_tensor(logit_maps, tf.float32)
    return logit_maps - tf.reduce_logsumexp(logit_maps, axis=-1, keepdims=True)


def _min_max(maps):
    import tensorflow as tf

    low = tf.reduce_min(maps, axis=[1, 2], keepdims=True)
    high = tf.reduce_max(maps, axis=[1, 2], keepdims=True)
    return (maps - low) / tf.maximum(high - low, 1e-6)


def peak_regions(maps, relative: float = RELATIVE):
    """Per image and class: a one-hot peak and the 8-connected region around it where the scaled map is >= ``relative``."""
    import tensorflow as tf

    shape = tf.shape(maps)
    flat = tf.reshape(maps, [shape[0], shape[1] * shape[2], shape[3]])
    seed = tf.reshape(tf.one_hot(tf.argmax(flat, axis=1), shape[1] * shape[2], axis=1, dtype=tf.float32), shape)
    allowed = tf.maximum(tf.cast(_min_max(maps) >= relative, tf.float32), seed)  # a flat map: the peak cell alone

    def grow(region, _):
        grown = tf.nn.max_pool2d(region, 3, 1, "SAME") * allowed
        return grown, tf.reduce_any(grown > region)

    region, _ = tf.while_loop(lambda _, changed: changed, grow, (seed, tf.constant(True)))
    return seed, region


def _extent(mask, axis):
    """First and one-past-last index where ``mask`` [N, H, W, C] is set along ``axis`` (1: rows, 2: columns)."""
    import tensorflow as tf

    hit = tf.reduce_max(mask, axis=3 - axis)  # [N, L, C]
    n = tf.shape(hit)[1]
    index = tf.cast(tf.range(n), tf.float32)[None, :, None]
    first = tf.reduce_min(tf.where(hit > 0, index, tf.cast(n, tf.float32)), axis=1)
    last = tf.reduce_max(tf.where(hit > 0, index, -1.0), axis=1) + 1.0
    return first / tf.cast(n, tf.float32), last / tf.cast(n, tf.float32)


def evidence(feature_map, scale, shift, kernel, bias, upsample: int = UPSAMPLE, relative: float = RELATIVE,
             local_log_prob: bool = LOCAL_LOG_PROB, temperature=1.0) -> dict:
    """Maps, boxes, areas, points and region scores (``OUTPUTS``) for every class of a batch of final maps.

    ``temperature`` divides the logits as the calibrated head does, so the maps still average to its logits.
    """
    import tensorflow as tf

    feature_map = tf.convert_to_tensor(feature_map, tf.float32)
    temperature = tf.cast(temperature, tf.float32)
    logits = location_logits(feature_map, scale, shift, kernel, bias) / temperature
    size = tf.shape(logits)[1:3]
    fine = tf.image.resize(heat(logits, local_log_prob), size * upsample, method="bilinear")
    seed, region = peak_regions(fine, relative)
    y1, y2 = _extent(region, 1)
    x1, x2 = _extent(region, 2)
    boxes = tf.stack([x1, y1, x2, y2], axis=-1)
    py, _ = _extent(seed, 1)
    px, _ = _extent(seed, 2)
    cell = 0.5 / tf.cast(size * upsample, tf.float32)
    points = tf.stack([px + cell[1], py + cell[0]], axis=-1)
    weights = tf.nn.avg_pool2d(region, upsample, upsample, "VALID")  # each cell's share in each class's region
    pooled = tf.einsum("nhwc,nhwd->ncd", weights, feature_map) / tf.maximum(
        tf.reduce_sum(weights, axis=[1, 2])[..., None], 1e-6)
    scaled = pooled * tf.cast(scale, tf.float32) + tf.cast(shift, tf.float32)
    region_logits = (tf.einsum("ncd,dk->nck", scaled, tf.cast(kernel, tf.float32)) + tf.cast(bias, tf.float32)) / temperature
    classes = int(kernel.shape[-1])  # each class's score in its own region; a 0/1 mask, not diag_part, which TFLite lacks
    region_scores = tf.reduce_sum(tf.nn.softmax(region_logits, axis=-1) * tf.eye(classes), axis=-1)
    return {OUT_MAPS: logits, OUT_BOXES: boxes, OUT_AREAS: (x2 - x1) * (y2 - y1), OUT_POINTS: points,
            OUT_REGION_SCORES: region_scores}


def input_window(height: int, width: int, crop_fraction: float, resize_mode: str) -> tuple[float, float, float, float]:
    """The part of an ``height`` x ``width`` photo that becomes the model's input: (left, top, side_x, side_y) in pixels.

    Mirrors :func:`brandlens.preprocess.crop_and_resize` (for ``pad`` the window reaches past the photo).
    """
    if resize_mode == "center_crop":
        side = max(int(round(min(height, width) * crop_fraction)), 1)
        return (width - side) // 2, (height - side) // 2, side, side
    if resize_mode == "squash":
        ch, cw = max(int(round(height * crop_fraction)), 1), max(int(round(width * crop_fraction)), 1)
        return (width - cw) // 2, (height - ch) // 2, cw, ch
    side = max(height, width)
    inner = side if crop_fraction == 1.0 else max(int(round(side * crop_fraction)), 1)
    return (width - side) // 2 + (side - inner) // 2, (height - side) // 2 + (side - inner) // 2, inner, inner


def input_box_to_image(boxes: np.ndarray, height: int, width: int, crop_fraction: float, resize_mode: str) -> np.ndarray:
    """Normalised x1, y1, x2, y2 (or x, y points) in the model's input -> normalised in the photo, clipped to it."""
    left, top, side_x, side_y = input_window(height, width, crop_fraction, resize_mode)
    boxes = np.asarray(boxes, np.float64)
    xs = (boxes[..., 0::2] * side_x + left) / width
    ys = (boxes[..., 1::2] * side_y + top) / height
    out = np.empty_like(boxes)
    out[..., 0::2], out[..., 1::2] = xs, ys
    return np.clip(out, 0.0, 1.0)


def box_area(box) -> float:
    x1, y1, x2, y2 = box
    return float(max(x2 - x1, 0.0) * max(y2 - y1, 0.0))


def iou(a, b) -> float:
    """Intersection over union of two x1, y1, x2, y2 boxes."""
    inter = box_area((max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])))
    union = box_area(a) + box_area(b) - inter
    return inter / union if union > 0 else 0.0


def brand_scores(scores: np.ndarray, region_scores: np.ndarray | None) -> np.ndarray:
    """The multi-label score of each class: the better of its global softmax score and its region's."""
    scores = np.asarray(scores, np.float32)
    return scores if region_scores is None else np.maximum(scores, np.asarray(region_scores, np.float32))


def reported_brands(label: str, scores: np.ndarray, labels, neither: str | None, thresholds: dict | None,
                    region_scores: np.ndarray | None = None, boxes: np.ndarray | None = None) -> list[dict]:
    """Every brand in one photo: the model's label (when a brand) plus each other brand whose score passes its threshold.

    ``thresholds`` (label -> minimum :func:`brand_scores` value) come from the model card; without them only the
    label is reported. Entries are ``{label, score, box, area}`` (box and area None without maps), best first.
    """
    combined = brand_scores(scores, region_scores)
    chosen = []
    for j, name in enumerate(labels):
        if name == neither:
            continue
        if name == label or (thresholds and name in thresholds and combined[j] >= thresholds[name]):
            box = None if boxes is None else [float(v) for v in boxes[j]]
            chosen.append({"label": name, "score": float(combined[j]), "box": box,
                           "area": None if box is None else box_area(box)})
    chosen.sort(key=lambda b: (b["label"] != label, -b["score"], b["label"]))
    return chosen


def choose_thresholds(combined: np.ndarray, y: np.ndarray, labels, neither: str | None, max_extra_rate: float,
                      floor: float = 0.5) -> dict:
    """Per-brand thresholds on held-out single-brand photos (validation or cross-validation, never test).

    Brand c's threshold is the smallest value >= ``floor`` that at most ``max_extra_rate / (brands)`` of the photos
    not of c reach, so that summed over brands at most about ``max_extra_rate`` of single-brand photos get an extra.
    """
    combined, y = np.asarray(combined, np.float64), np.asarray(y)
    brands = [j for j, name in enumerate(labels) if name != neither]
    per_brand = max_extra_rate / max(len(brands), 1)
    out = {}
    for j in brands:
        others = np.sort(combined[y != j, j])[::-1]
        allowed = int(np.floor(per_brand * len(others)))
        t = others[allowed] + 1e-6 if allowed < len(others) else 0.0
        out[labels[j]] = float(min(max(t, floor), 1.0))
    return out


def conformal_thresholds(combined: np.ndarray, y: np.ndarray, labels, neither: str | None, max_extra_rate: float,
                         floor: float = 0.5) -> dict:
    """One threshold for every brand, so that at most ``max_extra_rate`` of single-brand photos get an extra brand.

    ``combined`` [N, C] are held-out photos' scores; only brand photos count (those the rate is about). Each photo's
    best score for a brand it does not show is its extra-brand score; the threshold is the ceil((n + 1)(1 - rate))-th
    smallest of the n such scores (split conformal: for photos like these, the expected extra rate is at most the
    rate). Per-brand thresholds would each be the highest score among a few hundred photos, and their misses add up
    over brands (27 brands, 179 validation photos: about 27 / 180 of new photos get an extra). Fewer brand photos than
    the rate can promise give 1.0 (no extra brands).
    """
    combined, y = np.asarray(combined, np.float64), np.asarray(y)
    brands = [j for j, name in enumerate(labels) if name != neither]
    rows = [i for i in range(len(y)) if y[i] in brands]
    extra = np.sort([max((combined[i, j] for j in brands if j != y[i]), default=0.0) for i in rows])
    k = int(np.ceil((len(extra) + 1) * (1.0 - max_extra_rate)))
    t = extra[k - 1] + 1e-6 if 0 < k <= len(extra) else 1.0
    return {labels[j]: float(min(max(t, floor), 1.0)) for j in brands}


def thresholds_from_model(score_bytes, blobs: list[bytes], y: np.ndarray, labels, neither: str | None,
                          max_extra_rate: float = MAX_EXTRA_RATE, batch: int = 32) -> dict | None:
    """Per-brand thresholds for an exported model from held-out photos (``score_bytes``: bytes[N] -> outputs).

    None when there are no photos or the model makes no evidence (then only the label is reported).
    """
    combined = []
    for start in range(0, len(blobs), batch):
        out = score_bytes(blobs[start:start + batch])
        if OUT_REGION_SCORES not in out:
            return None
        combined.append(brand_scores(np.asarray(out["scores"]), np.asarray(out[OUT_REGION_SCORES])))
    if not combined:
        return None
    return choose_thresholds(np.concatenate(combined), np.asarray(y), labels, neither, max_extra_rate)


TILE_GRID = 2  # the --multi-crop grid whose tile thresholds an export carries (bench/localisation.py measured 2 x 2)


def add_tile_brands(brands: list[dict], label: str, view_scores: np.ndarray, view_region_scores: np.ndarray | None,
                    labels, neither: str | None, tile_thresholds: dict, view_boxes=None) -> list[dict]:
    """``brands`` (:func:`reported_brands` of one view) plus each brand whose best score over all views passes its
    tile threshold.

    Views are the whole photo and its multi-crop tiles (``view_scores`` [V, C]): a logo that is small in the photo
    fills more of a tile. ``view_boxes(v)`` gives view ``v``'s boxes [C, 4] on the photo; a brand's box is taken
    from the view where its score peaks.
    """
    combined = brand_scores(view_scores, view_region_scores)
    have = {b["label"] for b in brands}
    out = list(brands)
    for j, name in enumerate(labels):
        if name == neither or name in have or name not in tile_thresholds:
            continue
        v = int(np.argmax(combined[:, j]))
        if combined[v, j] >= tile_thresholds[name]:
            box = None if view_boxes is None else [float(x) for x in view_boxes(v)[j]]
            out.append({"label": name, "score": float(combined[v, j]), "box": box,
                        "area": None if box is None else box_area(box)})
    out.sort(key=lambda b: (b["label"] != label, -b["score"], b["label"]))
    return out


def tile_thresholds_from_model(score_images, photos: list[np.ndarray], y: np.ndarray, labels, neither: str | None,
                               size: int, crop_fraction: float, resize_mode: str, grid: int = TILE_GRID,
                               max_extra_rate: float = MAX_EXTRA_RATE, batch: int = 32) -> dict | None:
    """Per-brand thresholds on the best score over a photo and its ``grid`` x ``grid`` tiles, from held-out photos.

    ``photos`` are decoded RGB arrays; each is prepared as the scoring job's ``--multi-crop`` prepares its views
    (the whole photo as trained, tiles squashed) and ``score_images`` (images [N, S, S, 3] -> outputs) scores them.
    Thresholds on whole photos would let tiles, which see more of each logo and of everything else, add extras;
    one conformal threshold (:func:`conformal_thresholds`) keeps the rate out of sample.
    """
    from brandlens.preprocess import prepare, tile_boxes

    views = []
    for rgb in photos:
        views.append(prepare(rgb, size, crop_fraction, resize_mode))
        views += [prepare(rgb[t:b, l:r], size, 1.0, "squash") for t, l, b, r in tile_boxes(*rgb.shape[:2], grid)]
    combined = []
    for start in range(0, len(views), batch):
        out = score_images(np.stack(views[start:start + batch]))
        if OUT_REGION_SCORES not in out:
            return None
        combined.append(brand_scores(np.asarray(out["scores"]), np.asarray(out[OUT_REGION_SCORES])))
    if not combined:
        return None
    best = np.concatenate(combined).reshape(len(photos), grid * grid + 1, -1).max(axis=1)
    return conformal_thresholds(best, np.asarray(y), labels, neither, max_extra_rate)
