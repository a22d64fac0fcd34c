"""Pixels the app sends: only images the archive's rows name, always re-encoded, with their evidence boxes.

The browser never names a file: it asks for a post id, the archive gives the
uri, and the bytes are decoded (``brandlens.imaging``, the jobs' own decoder
with its size limits) and re-encoded as a JPEG, so whatever sits at that path
leaves the app only as a picture.
"""

from __future__ import annotations

import io
import json
import math
import os
from pathlib import Path

import numpy as np
from PIL import Image

SIZES = {"thumb": 320, "large": 1280}


class ImageUnavailable(Exception):
    """The row's image cannot be shown (missing, unreadable, not an image); the message says which."""


def image_bases(image_root: Path, run_inputs: list[str]) -> list[Path]:
    """Folders a relative ``image_uri`` may be relative to: ``--image-root``, then (as the jobs resolve
    relative uris) each scoring run's input folder and the folders above it, nearest first."""
    bases = [Path(image_root)]
    for run_input in run_inputs:
        if run_input and "://" not in run_input:
            folder = Path(run_input).resolve().parent
            bases += [b for b in (folder, *folder.parents) if b not in bases]
    return bases


def resolve(uri: str, bases: list[Path]) -> str:
    """A relative local uri as the first existing ``base / uri`` (absolute); anything else as given."""
    if "://" in uri or os.path.isabs(uri):
        return uri
    found = next((base / uri for base in bases if (base / uri).is_file()), None)
    return str(found.resolve()) if found else uri


def read_image(uri: str, bases: list[Path], max_bytes: int) -> bytes:
    """The bytes at a row's ``image_uri`` (local path, ``file://`` or a remote uri), at most ``max_bytes``."""
    if uri.startswith("file://"):
        uri = uri[len("file://"):]
    if "://" in uri:
        from brandlens import fileio

        try:
            data = fileio.read_bytes(uri)
        except Exception as exc:  # any storage error: the picture is simply unavailable
            raise ImageUnavailable(f"cannot read {uri}: {type(exc).__name__}") from None
    else:
        path = Path(resolve(uri, bases))
        try:
            if path.stat().st_size > max_bytes:
                raise ImageUnavailable(f"{uri} is larger than {max_bytes} bytes")
            data = path.read_bytes()
        except OSError as exc:
            raise ImageUnavailable(f"cannot read {uri}: {exc.strerror or type(exc).__name__}") from None
    if len(data) > max_bytes:
        raise ImageUnavailable(f"{uri} is larger than {max_bytes} bytes")
    return data


def decode(data: bytes) -> np.ndarray:
    from brandlens.imaging import ImageDecodeError, decode_image

    try:
        return decode_image(data)
    except ImageDecodeError as exc:
        raise ImageUnavailable(f"not a usable image ({exc})") from None


def jpeg(rgb: np.ndarray, max_side: int, quality: int = 85) -> bytes:
    image = Image.fromarray(rgb)
    image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def normalised_box(value) -> tuple[float, float, float, float] | None:
    """(x1, y1, x2, y2) in [0, 1] from a list, a struct or JSON text; None when absent or not a box."""
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            return None
    if isinstance(value, dict):
        value = [value.get(k) for k in ("x1", "y1", "x2", "y2")]
    try:
        x1, y1, x2, y2 = (float(v) for v in value)
    except (TypeError, ValueError):
        return None
    if not all(math.isfinite(v) and -1e-6 <= v <= 1 + 1e-6 for v in (x1, y1, x2, y2)) or x2 <= x1 or y2 <= y1:
        return None
    return (max(x1, 0.0), max(y1, 0.0), min(x2, 1.0), min(y2, 1.0))


def overlays(row: dict) -> list[dict]:
    """The evidence boxes to draw over a row's photo: every brand of ``brands``, else the top ``box``.

    Each is {label, score, left, top, width, height} with positions in percent of the photo.
    """
    found = []
    for brand in row.get("brands") or ():
        if isinstance(brand, dict):
            box = normalised_box(brand.get("box"))
            if box:
                found.append((str(brand.get("label", "")), brand.get("score"), box))
    if not found:
        box = normalised_box(row.get("box"))
        if box:
            found.append((str(row.get("label", "")), row.get("brand_score", row.get("confidence")), box))
    return [{"label": label, "score": None if score is None else float(score),
             "left": round(100 * b[0], 2), "top": round(100 * b[1], 2),
             "width": round(100 * (b[2] - b[0]), 2), "height": round(100 * (b[3] - b[1]), 2)}
            for label, score, b in found]


def heatmap_png(evidence: np.ndarray, size: tuple[int, int], window: tuple[float, float, float, float] | None = None) -> bytes:
    """A translucent heat map (evidence HxW, any range) as a PNG of ``size`` (width, height).

    ``window``: where the evidence lies in the picture (left, top, width, height as fractions of it: the model's
    input within the photo); the rest stays clear.
    """
    from matplotlib import colormaps

    e = np.asarray(evidence, np.float64)
    span = float(e.max() - e.min())
    e = (e - e.min()) / span if span > 0 else np.zeros_like(e)
    rgba = (colormaps["inferno"](e) * 255).astype(np.uint8)
    rgba[..., 3] = (e * 160).astype(np.uint8)
    left, top, wide, high = window or (0.0, 0.0, 1.0, 1.0)
    inner = (max(1, round(wide * size[0])), max(1, round(high * size[1])))
    image = Image.fromarray(rgba, "RGBA").resize(inner, Image.Resampling.BILINEAR)
    if inner != tuple(size) or left or top:
        canvas = Image.new("RGBA", tuple(size), (0, 0, 0, 0))
        canvas.paste(image, (round(left * size[0]), round(top * size[1])))  # a window past the photo (pad) is clipped
        image = canvas
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()
