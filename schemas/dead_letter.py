"""Dead letters: every input record that could not be processed, with its reason.

Jobs never drop a record silently: it reaches the output or a dead-letter row
(JSON lines, one per record) and the run summary counts both. ``record_id``
points back into the input (``posts.csv:301``: the line of a bad manifest row;
after the scoring job has identified a post, its post id). Messages describe
and never quote file contents (a manifest may name any readable file).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import pyarrow as pa

# Reasons are stable machine strings; messages are for people.
MISSING_FILE = "missing_file"
UNREADABLE = "unreadable"
MISSING_LABEL = "missing_label"
UNKNOWN_LABEL = "unknown_label"
BAD_ROW = "bad_row"
# Image decoding reasons come from brandlens.imaging.ImageDecodeError.reason
# (empty, not_an_image, truncated, corrupt, zero_size, too_large, unsupported).


@dataclass(frozen=True)
class DeadLetter:
    uri: str
    stage: str
    reason: str
    message: str
    record_id: str = ""

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, line: str) -> "DeadLetter":
        return cls(**json.loads(line))


ARROW_SCHEMA = pa.schema([
    pa.field("uri", pa.string(), nullable=False),
    pa.field("stage", pa.string(), nullable=False),
    pa.field("reason", pa.string(), nullable=False),
    pa.field("message", pa.string(), nullable=False),
    pa.field("record_id", pa.string(), nullable=False),
])
