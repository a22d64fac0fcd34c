"""A small, deterministic sample archive the product makes itself (demo and tests).

Each brand is a synthetic logo (a coloured mark of its own shape) drawn at a
random place, size and angle on a cluttered background; 'neither' images are
backgrounds with distractor shapes but no logo. Posts carry metadata as a real
archive would (post id, date, user, caption), so the scoring job has columns to
carry through.
"""

from __future__ import annotations

import csv
import datetime as dt
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

DEFAULT_BRANDS = ("acme", "zenith")
NEITHER = "neither"


@dataclass(frozen=True)
class SampleArchive:
    root: Path
    manifest: Path
    posts: Path
    labels: tuple[str, ...]


def _background(rng: random.Random, size: int) -> Image.Image:
    base = np.zeros((size, size, 3), np.float32)
    c0 = np.array([rng.randint(0, 255) for _ in range(3)], np.float32)
    c1 = np.array([rng.randint(0, 255) for _ in range(3)], np.float32)
    t = np.linspace(0, 1, size, dtype=np.float32)[:, None, None]
    base[:] = c0 * (1 - t) + c1 * t
    noise = np.random.default_rng(rng.randint(0, 2**31)).normal(0, 12, base.shape)
    img = Image.fromarray(np.clip(base + noise, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(rng.randint(2, 6)):
        x, y = rng.randint(0, size), rng.randint(0, size)
        r = rng.randint(size // 16, size // 4)
        colour = tuple(rng.randint(0, 255) for _ in range(3))
        if rng.random() < 0.5:
            draw.rectangle([x - r, y - r // 2, x + r, y + r // 2], fill=colour)
        else:
            draw.line([x - r, y, x + r, y + rng.randint(-r, r)], fill=colour, width=rng.randint(2, 8))
    return img


def _logo(brand_index: int, size: int) -> Image.Image:
    """A brand mark: shape and colours fixed by the brand's index."""
    palette = [((220, 30, 30), (255, 255, 255)), ((20, 60, 200), (255, 210, 0)), ((20, 150, 60), (0, 0, 0)), ((120, 20, 160), (255, 255, 255))]
    fg, accent = palette[brand_index % len(palette)]
    logo = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    d = ImageDraw.Draw(logo)
    s = size
    shape = brand_index % 4
    if shape == 0:
        d.ellipse([0, 0, s - 1, s - 1], fill=fg)
        d.polygon([(s * 0.2, s * 0.6), (s * 0.85, s * 0.3), (s * 0.45, s * 0.75)], fill=accent)
    elif shape == 1:
        d.polygon([(s / 2, 0), (s - 1, s - 1), (0, s - 1)], fill=fg)
        d.rectangle([s * 0.35, s * 0.55, s * 0.65, s * 0.85], fill=accent)
    elif shape == 2:
        d.rectangle([0, s * 0.2, s - 1, s * 0.8], fill=fg)
        d.ellipse([s * 0.3, s * 0.3, s * 0.7, s * 0.7], fill=accent)
    else:
        d.regular_polygon((s / 2, s / 2, s / 2 - 1), 6, fill=fg)
        d.line([(s * 0.25, s / 2), (s * 0.75, s / 2)], fill=accent, width=max(2, s // 8))
    return logo


def render(label: str, brands: tuple[str, ...], rng: random.Random, size: int = 320) -> Image.Image:
    """One sample photo of ``label`` (a brand, or NEITHER)."""
    img = _background(rng, size)
    if label != NEITHER:
        logo_size = rng.randint(size // 4, size // 2)
        logo = _logo(brands.index(label), logo_size).rotate(rng.uniform(-25, 25), expand=True)
        x = rng.randint(0, size - logo.width)
        y = rng.randint(0, size - logo.height)
        img.paste(logo, (x, y), logo)
    return img.filter(ImageFilter.GaussianBlur(rng.uniform(0, 0.8)))


def make_sample(out_dir: str | Path, per_label: int = 24, brands: tuple[str, ...] = DEFAULT_BRANDS, seed: int = 0, open_world: bool = True) -> SampleArchive:
    """Write ``per_label`` JPEGs per label, a training manifest and a posts manifest."""
    root = Path(out_dir)
    labels = tuple(brands) + ((NEITHER,) if open_world else ())
    rng = random.Random(seed)
    rows = []
    for label in labels:
        folder = root / "images" / label
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_label):
            path = folder / f"{label}-{i:04d}.jpg"
            render(label, tuple(brands), rng).save(path, quality=90)
            rows.append((f"images/{label}/{path.name}", label))
    manifest = root / "manifest.csv"
    with open(manifest, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["uri", "label"])
        writer.writerows(rows)
    posts = root / "posts.csv"
    start = dt.date(2026, 11, 1)
    with open(posts, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["post_id", "image_uri", "posted_at", "user", "caption"])
        for i, (uri, _) in enumerate(rows):
            day = start + dt.timedelta(days=i % 7)
            writer.writerow([f"post-{i:05d}", uri, f"{day.isoformat()}T{10 + i % 12:02d}:00:00Z", f"user{i % 13}", f"a day out #{i}"])
    return SampleArchive(root, manifest, posts, labels)
