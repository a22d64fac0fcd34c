"""Draw a photo's brand evidence: the top brand's heat map and every reported brand's box, as a PNG.

Used by ``brandlens predict --explain`` and the trainer's error report, so both show the same picture.
"""

from __future__ import annotations

import io

import numpy as np

from brandlens import evidence

HEAT_ALPHA = 0.45
COLOURS = ((255, 40, 40), (40, 200, 255), (255, 210, 0), (120, 255, 90), (255, 90, 220))


def heat_of(maps: np.ndarray, index: int) -> np.ndarray:
    """Class ``index``'s heat [h, w] (``brandlens.evidence.heat``) from one photo's evidence maps [h, w, C], in [0, 1]."""
    local = np.asarray(evidence.heat(np.asarray(maps, np.float32)[None]))[0, ..., index]
    low, high = float(local.min()), float(local.max())
    return (local - low) / max(high - low, 1e-6)


def render(rgb: np.ndarray, heat: np.ndarray | None, brands: list[dict], crop_fraction: float, resize_mode: str,
           max_side: int = 800):
    """The photo with ``heat`` (in the model input's frame) blended over the part the model saw, and the boxes."""
    from matplotlib import colormaps
    from PIL import Image, ImageDraw

    photo = Image.fromarray(np.asarray(rgb, np.uint8)).convert("RGB")
    height, width = rgb.shape[:2]
    if heat is not None:
        left, top, side_x, side_y = evidence.input_window(height, width, crop_fraction, resize_mode)
        grey = Image.fromarray(np.uint8(np.clip(heat, 0, 1) * 255)).resize((int(side_x), int(side_y)), Image.BILINEAR)
        colour = np.uint8(colormaps["jet"](np.asarray(grey) / 255.0)[..., :3] * 255)
        layer = Image.new("RGB", (width, height))
        mask = Image.new("L", (width, height), 0)
        layer.paste(Image.fromarray(colour), (int(left), int(top)))
        mask.paste(int(255 * HEAT_ALPHA), (int(left), int(top), int(left + side_x), int(top + side_y)))
        photo = Image.composite(layer, photo, mask)
    scale = min(1.0, max_side / max(height, width))
    if scale < 1.0:
        photo = photo.resize((max(int(width * scale), 1), max(int(height * scale), 1)), Image.BILINEAR)
    draw = ImageDraw.Draw(photo)
    line = max(2, round(max(photo.size) / 200))
    for i, brand in enumerate(brands):
        if brand.get("box") is None:
            continue
        x1, y1, x2, y2 = (v * s for v, s in zip(brand["box"], photo.size * 2))
        colour = COLOURS[i % len(COLOURS)]
        draw.rectangle([x1, y1, x2, y2], outline=colour, width=line)
        text = f"{brand['label']} {brand['score']:.2f}"
        tw, th = draw.textbbox((0, 0), text)[2:]
        ty = y1 - th - 4 if y1 - th - 4 >= 0 else y1
        draw.rectangle([x1, ty, x1 + tw + 4, ty + th + 4], fill=colour)
        draw.text((x1 + 2, ty + 2), text, fill=(0, 0, 0))
    return photo


def png_bytes(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def explain_with_backbone(backbone, head, rgb: np.ndarray, labels, shown: list[str], max_side: int = 320):
    """Evidence of the ``shown`` labels on one photo from a loaded backbone artifact and a head (scale, shift,
    kernel, bias): the picture ``predict --explain`` draws, for places that have no export yet (the training report)."""
    fingerprint = backbone.fingerprint
    out = backbone.run(backbone.prepare(rgb)[None])
    found = {k: np.asarray(v)[0] for k, v in evidence.evidence(out["feature_map"], *head).items()}
    boxes = evidence.input_box_to_image(found[evidence.OUT_BOXES], rgb.shape[0], rgb.shape[1],
                                        fingerprint.crop_fraction, fingerprint.resize_mode)
    brands = [{"label": name, "score": float(found[evidence.OUT_REGION_SCORES][labels.index(name)]),
               "box": [float(v) for v in boxes[labels.index(name)]]} for name in shown]
    heat = heat_of(found[evidence.OUT_MAPS], labels.index(shown[0])) if shown else None
    return render(rgb, heat, brands, fingerprint.crop_fraction, fingerprint.resize_mode, max_side)
