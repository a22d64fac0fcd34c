"""Deterministic training variants of an image: augmentations and logo crops (pure numpy).

Every variant is a function of the pixels and its name alone (the random
generator is seeded from the content hash and the variant index), so a rerun
makes the same pixels and the embedding cache can key on the variant name.
The version in the names changes whenever what they produce changes, which
retires old cache entries instead of serving stale ones.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from beam_jobs.bottlenecks.labels import Box
from brandlens.preprocess import tile_boxes

AUGMENT_VERSION = "v1"
LOGO_VERSION = "v1"
BACKGROUND_VERSION = "v1"
TILE_VERSION = "v1"
BACKGROUND_SIDES = ("left", "right", "top", "bottom")
# A background strip must keep this share of the image's side across it and of its area, else it is skipped:
# thin slivers say nothing about a photo without the logo.
MIN_BACKGROUND_SIDE = 0.3
MIN_BACKGROUND_AREA = 0.15
DEFAULT_LOGO_MARGIN = 0.25
# A tile of a photo with logo boxes shows the brand when it holds >= half of one box, and is logo-free when it holds
# < a tenth of every box; a tile that cuts a logo in between is no example of either.
TILE_LOGO_SHARE = 0.5
TILE_EMPTY_SHARE = 0.1

# Mild on purpose: the classifier learns brands, and strong colour changes alter brand colours.
MIN_CROP_SIDE = 0.75       # each side keeps >= 75 % of the image
MAX_COLOUR_CHANGE = 0.10   # brightness, contrast, saturation within +-10 %
_LUMA = np.array([0.299, 0.587, 0.114], np.float32)


ORIGINAL = "original"
AUGMENTED = "augmented"
LOGO = "logo"
BACKGROUND = "background"  # a strip of a logo photo outside all its logo boxes: an in-domain photo without the brand
TILE = "tile"              # one of the scoring job's multi-crop tiles: labelled as its photo, or by its logo boxes


@dataclass(frozen=True)
class Variant:
    """One example to make from an image; ``name`` is its cache key (with the content hash)."""

    name: str
    kind: str = ORIGINAL
    index: int = 0
    box: Box | None = None
    grid: int = 0  # tiles: the grid per side


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def augment_variant_name(index: int) -> str:
    return f"aug-{AUGMENT_VERSION}-{index}"


def logo_variant_name(box: Box, margin: float = DEFAULT_LOGO_MARGIN) -> str:
    return f"logo-{LOGO_VERSION}-m{_number(margin)}-" + "_".join(_number(v) for v in box)


def background_variant_name(side: str) -> str:
    return f"bg-{BACKGROUND_VERSION}-{side}"


def tile_variant_name(grid: int, index: int) -> str:
    return f"tile-{TILE_VERSION}-g{grid}-{index}"


def variants(original_name: str, augment_count: int = 0, boxes=(), margin: float = DEFAULT_LOGO_MARGIN,
             background_boxes=(), tiles: int = 0) -> list[Variant]:
    """The original, ``augment_count`` augmentations, one logo crop per box, the background strips, then the tiles.

    ``background_boxes`` are all logo boxes of the image: each strip beside their union is a candidate.
    ``tiles``: the ``tiles`` x ``tiles`` multi-crop tiles (for a photo with logo boxes, :func:`tile_labels` says
    which of them are examples and of what).
    """
    union = _union(background_boxes)
    return ([Variant(original_name)]
            + [Variant(augment_variant_name(i), AUGMENTED, index=i) for i in range(1, augment_count + 1)]
            + [Variant(logo_variant_name(box, margin), LOGO, box=tuple(box)) for box in boxes]
            + ([Variant(background_variant_name(side), BACKGROUND, index=i, box=union)
                for i, side in enumerate(BACKGROUND_SIDES)] if union else [])
            + ([Variant(tile_variant_name(tiles, i), TILE, index=i, grid=tiles) for i in range(tiles * tiles)]
               if tiles > 1 else []))


def tile_labels(boxes, height: int, width: int, grid: int, label: str, empty_label: str | None) -> list[str | None]:
    """Per tile (:func:`brandlens.preprocess.tile_boxes` order) of a photo with logo ``boxes`` (x1, y1, x2, y2 in the
    pixels of its ``height`` x ``width`` upright image): ``label`` where the tile shows a logo, ``empty_label`` where
    it is logo-free, None where it cuts a logo (or is logo-free and ``empty_label`` is None).

    Scoring with --multi-crop sees logos at tile scale, half of them cut or missing: a tile labelled as its whole
    photo would teach the brand from tiles that do not show it.
    """
    out = []
    for top, left, bottom, right in tile_boxes(height, width, grid):
        share = max(max(0, min(x2, right) - max(x1, left)) * max(0, min(y2, bottom) - max(y1, top))
                    / max(1e-9, (x2 - x1) * (y2 - y1)) for x1, y1, x2, y2 in boxes)
        out.append(label if share >= TILE_LOGO_SHARE else empty_label if share < TILE_EMPTY_SHARE else None)
    return out


def _union(boxes) -> Box | None:
    boxes = [tuple(b) for b in boxes]
    if not boxes:
        return None
    return (min(b[0] for b in boxes), min(b[1] for b in boxes), max(b[2] for b in boxes), max(b[3] for b in boxes))


def background_strip(rgb: np.ndarray, union: Box, side: str) -> np.ndarray | None:
    """The part of the image on ``side`` of the logo boxes' union, or None when it is too small to stand for a photo."""
    height, width = rgb.shape[:2]
    x1, y1, x2, y2 = (int(round(v)) for v in union)
    left, top, right, bottom = {"left": (0, 0, min(x1, width), height), "right": (max(x2, 0), 0, width, height),
                                "top": (0, 0, width, min(y1, height)), "bottom": (0, max(y2, 0), width, height)}[side]
    w, h = right - left, bottom - top
    across = w / width if side in ("left", "right") else h / height
    if w <= 0 or h <= 0 or across < MIN_BACKGROUND_SIDE or w * h < MIN_BACKGROUND_AREA * width * height:
        return None
    return np.ascontiguousarray(rgb[top:bottom, left:right])


def _rng(content_hash: str, index: int) -> np.random.Generator:
    seed = hashlib.sha256(f"{content_hash}:{AUGMENT_VERSION}:{index}".encode()).digest()
    return np.random.default_rng(int.from_bytes(seed[:8], "big"))


def augment(rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random crop, a horizontal flip half the time, small colour changes; uint8 out."""
    height, width = rgb.shape[:2]
    crop_h = max(1, int(round(height * rng.uniform(MIN_CROP_SIDE, 1.0))))
    crop_w = max(1, int(round(width * rng.uniform(MIN_CROP_SIDE, 1.0))))
    top = int(rng.integers(0, height - crop_h + 1))
    left = int(rng.integers(0, width - crop_w + 1))
    out = rgb[top:top + crop_h, left:left + crop_w].astype(np.float32)
    if rng.random() < 0.5:
        out = out[:, ::-1]
    brightness, contrast, saturation = 1.0 + rng.uniform(-MAX_COLOUR_CHANGE, MAX_COLOUR_CHANGE, 3)
    out = out * brightness
    out = (out - out.mean()) * contrast + out.mean()
    gray = (out @ _LUMA)[:, :, None]
    out = gray + (out - gray) * saturation
    return np.ascontiguousarray(np.clip(np.rint(out), 0, 255).astype(np.uint8))


def render(rgb: np.ndarray, content_hash: str, variant: Variant, margin: float = DEFAULT_LOGO_MARGIN) -> np.ndarray | None:
    """The pixels of ``variant``: the same on every run. Logo boxes outside the image raise ValueError;
    a background strip too small to use is None."""
    if variant.kind == BACKGROUND:
        return background_strip(rgb, variant.box, BACKGROUND_SIDES[variant.index])
    if variant.kind == AUGMENTED:
        return augment(rgb, _rng(content_hash, variant.index))
    if variant.kind == LOGO:
        return crop_logo(rgb, variant.box, margin)
    if variant.kind == TILE:
        top, left, bottom, right = tile_boxes(rgb.shape[0], rgb.shape[1], variant.grid)[variant.index]
        return np.ascontiguousarray(rgb[top:bottom, left:right])
    return rgb


def crop_logo(rgb: np.ndarray, box: Box, margin: float = DEFAULT_LOGO_MARGIN) -> np.ndarray:
    """The box grown by ``margin`` x its size on every side, clipped to the image.

    Raises ValueError when the box lies outside the image (e.g. boxes drawn on
    a differently sized copy).
    """
    height, width = rgb.shape[:2]
    x1, y1, x2, y2 = box
    if x1 >= width or y1 >= height:
        raise ValueError(f"box {box} lies outside the {width}x{height} image")
    dx, dy = (x2 - x1) * margin, (y2 - y1) * margin
    left, top = max(0, int(np.floor(x1 - dx))), max(0, int(np.floor(y1 - dy)))
    right, bottom = min(width, int(np.ceil(x2 + dx))), min(height, int(np.ceil(y2 + dy)))
    if right <= left or bottom <= top:
        raise ValueError(f"box {box} lies outside the {width}x{height} image")
    return np.ascontiguousarray(rgb[top:bottom, left:right])
