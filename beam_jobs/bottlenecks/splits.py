"""Train / validation / test assignment: a manifest's split wins, else a stable hash decides.

The hash is of the image's content, so identical files always fall in the same
split, and a split depends on nothing but the image and the fractions: adding
images to an archive never moves an old one to another split.
"""

from __future__ import annotations

import hashlib

from schemas.bottleneck import SPLITS

DEFAULT_FRACTIONS = (0.8, 0.1, 0.1)
_SALT = b"brandlens-split-v1:"


def parse_fractions(text: str) -> tuple[float, float, float]:
    """``"0.8,0.1,0.1"`` -> (train, validation, test); they must be >= 0, sum to 1, train > 0."""
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise ValueError(f"split fractions must be three numbers like 0.8,0.1,0.1, got {text!r}") from None
    return check_fractions(values)


def check_fractions(values) -> tuple[float, float, float]:
    values = tuple(float(v) for v in values)
    if len(values) != len(SPLITS):
        raise ValueError(f"need {len(SPLITS)} split fractions ({', '.join(SPLITS)}), got {len(values)}")
    if any(v < 0 for v in values) or values[0] <= 0:
        raise ValueError(f"split fractions must be >= 0 with train > 0, got {values}")
    if abs(sum(values) - 1.0) > 1e-6:
        raise ValueError(f"split fractions must sum to 1, got {values} (sum {sum(values):g})")
    return values


def hash_fraction(content_hash: str) -> float:
    """A uniform number in [0, 1) fixed by the content hash."""
    digest = hashlib.sha256(_SALT + content_hash.encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def assign_split(content_hash: str, fractions: tuple[float, float, float] = DEFAULT_FRACTIONS) -> str:
    u = hash_fraction(content_hash)
    edge = 0.0
    for split, fraction in zip(SPLITS, fractions):
        edge += fraction
        if u < edge:
            return split
    return next(s for s, f in reversed(list(zip(SPLITS, fractions))) if f > 0)  # rounding at the top edge


def normalise_split(value: str | None) -> str | None:
    """A manifest's split cell: None when blank (assign one), the split name, or ValueError."""
    if value is None or not value.strip():
        return None
    split = value.strip().lower()
    if split not in SPLITS:
        raise ValueError(f"unknown split {value!r}; use one of {', '.join(SPLITS)} or leave it blank")
    return split
