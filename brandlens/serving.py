"""Scoring batches of image bytes with an exported model, keeping the good images when some are bad.

``serving_default`` (``schemas/model.py``) decodes inside the graph, so one
undecodable image fails the whole call. :func:`score_decodable` calls it on the
whole batch first (one call when all images are fine) and, when that fails,
on halves, recursively, until each failure is one image: k bad images in a
batch of n cost about 2·k·log2(n) extra calls. It works with anything that maps
a list of image bytes to the model's outputs: the loaded signature, or a client
of TF Serving's predict API.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

import numpy as np


@dataclass
class ScoredBatch:
    """Per image: its outputs (``rows[i]``, None when it failed) and, for the failed ones, why."""

    rows: list[dict | None]
    errors: dict[int, str] = field(default_factory=dict)

    @property
    def ok(self) -> list[bool]:
        return [row is not None for row in self.rows]


def _reason(exc: Exception) -> str:
    message = str(getattr(exc, "message", "") or exc).strip().splitlines()
    return f"{type(exc).__name__}: {message[0] if message else ''}"


def score_decodable(call: Callable[[list[bytes]], Mapping[str, object]], images: Sequence[bytes],
                    errors: tuple[type[BaseException], ...] = (Exception,)) -> ScoredBatch:
    """Score ``images`` with ``call``; an image the model cannot take gets an error instead of failing the others."""
    result = ScoredBatch([None] * len(images))

    def run(indices: list[int]) -> None:
        try:
            outputs = call([images[i] for i in indices])
        except errors as exc:
            if len(indices) == 1:
                result.errors[indices[0]] = _reason(exc)
                return
            middle = len(indices) // 2
            run(indices[:middle])
            run(indices[middle:])
            return
        arrays = {name: np.asarray(value) for name, value in outputs.items()}
        for j, i in enumerate(indices):
            result.rows[i] = {name: array[j] for name, array in arrays.items()}

    if images:
        run(list(range(len(images))))
    return result
