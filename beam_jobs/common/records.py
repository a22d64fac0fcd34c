"""The uniform record every input reader yields, and the dead-letter output tag.

Readers differ (manifest rows, image files, WebDataset shards) but all produce
:class:`ImageRecord`s, so decoding, embedding and accounting are written once.
Metadata is carried as strings, as read, so a job can pass columns through.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from schemas.dead_letter import DeadLetter

# Tag of the dead-letter output of every multi-output DoFn in beam_jobs.
DEAD_LETTER_TAG = "dead_letters"

# Stages named in dead letters: where in a job a record was given up.
STAGE_READ = "read"        # manifest row, directory walk, tar shard
STAGE_LABEL = "label"      # label / split / box resolution
STAGE_FETCH = "fetch"      # reading the image bytes
STAGE_DECODE = "decode"    # bytes -> pixels
STAGE_EMBED = "embed"      # pixels -> embedding

# Reasons of this package's own (the others are in schemas.dead_letter and brandlens.imaging).
EMBED_FAILED = "embed_failed"
MISSING_IMAGE = "missing_image"  # a WebDataset sample without an image member


@dataclass(frozen=True)
class ImageRecord:
    """One image to process: where it is, its bytes once fetched, and what came with it.

    ``record_id`` points back into the input (``manifest.csv:12``, a relative
    path, a shard member key) so that dead letters and duplicates can be found.
    ``metadata`` holds the other manifest columns / WebDataset fields as strings
    (None for JSON nulls); readers never interpret it.
    """

    uri: str
    record_id: str
    metadata: dict = field(default_factory=dict)
    data: bytes | None = None

    def with_data(self, data: bytes) -> "ImageRecord":
        return dataclasses.replace(self, data=data)

    def without_data(self) -> "ImageRecord":
        return dataclasses.replace(self, data=None)

    def dead_letter(self, stage: str, reason: str, message: str) -> DeadLetter:
        return DeadLetter(uri=self.uri, stage=stage, reason=reason, message=message, record_id=self.record_id)
