"""Which of several records with identical bytes is kept (pure, no Beam).

Identical images are embedded once and written once. When copies sit in
different splits the evaluation split wins (test, then validation, then train):
a fixed benchmark keeps its test set, and training loses a copy it must not
see. Ties go to the smallest uri, so every run keeps the same record. Logo
boxes of copies that agree with the kept label all apply to the kept image.
"""

from __future__ import annotations

from dataclasses import dataclass

from beam_jobs.bottlenecks.labels import Box

SPLIT_PRIORITY = ("test", "validation", "train")


@dataclass(frozen=True)
class Candidate:
    """An image record after labelling and hashing: one member of a duplicate group."""

    uri: str
    record_id: str
    label: str
    split: str
    box: Box | None = None


@dataclass(frozen=True)
class Decision:
    kept: Candidate
    dropped: tuple[Candidate, ...]
    boxes: tuple[Box, ...]

    @property
    def cross_split(self) -> int:
        """Dropped copies that sat in another split than the kept one."""
        return sum(1 for c in self.dropped if c.split != self.kept.split)

    @property
    def label_conflicts(self) -> int:
        """Dropped copies labelled differently from the kept one."""
        return sum(1 for c in self.dropped if c.label != self.kept.label)


def choose(candidates) -> Decision:
    if not candidates:
        raise ValueError("no candidates")
    ordered = sorted(candidates, key=lambda c: (SPLIT_PRIORITY.index(c.split), c.uri, c.record_id))
    kept = ordered[0]
    boxes = sorted({c.box for c in ordered if c.box is not None and c.label == kept.label})
    return Decision(kept, tuple(ordered[1:]), tuple(boxes))
