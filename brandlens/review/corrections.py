"""Corrections: an append-only JSON-lines log of what reviewers said about posts.

One line per correction (who, when, what). Each line is written with a single
``write`` on an ``O_APPEND`` descriptor and ``fsync``'d before the reviewer is told
it is saved, so a crash loses at most the line being written; a torn last line is
reported and skipped on reading, and the next append starts on a fresh line. The
log is never rewritten: the latest correction of a post is the one that counts,
the earlier ones stay as history.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import logging
import os
import threading
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

RIGHT = "right"
WRONG = "wrong"
VERDICTS = (RIGHT, WRONG)
MAX_TEXT = 500


class CorrectionError(ValueError):
    """A correction that cannot be saved as given (the message says why)."""


@dataclass(frozen=True)
class Correction:
    post_id: str
    verdict: str                   # "right": the model's label holds; "wrong": ``labels`` are the truth
    labels: tuple[str, ...]        # the true label(s); for "right", the model's label
    who: str
    image_uri: str
    content_hash: str
    model_version: str
    predicted: str                 # the model's label when the reviewer looked
    note: str = ""
    at: str = field(default_factory=lambda: dt.datetime.now(dt.timezone.utc).isoformat(timespec="microseconds"))
    correction_id: str = field(default_factory=lambda: uuid.uuid4().hex)

    def to_json(self) -> str:
        record = asdict(self)
        record["labels"] = list(self.labels)
        return json.dumps(record, ensure_ascii=False, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "Correction":
        record = json.loads(text)
        if not isinstance(record, dict):
            raise ValueError("not a JSON object")
        record["labels"] = tuple(record.get("labels") or ())
        return cls(**{k: record[k] for k in cls.__dataclass_fields__ if k in record})


def make_correction(post: dict, verdict: str, labels: list[str], who: str, note: str = "") -> Correction:
    """A checked correction of ``post`` (a row of the archive); CorrectionError says what is missing."""
    if verdict not in VERDICTS:
        raise CorrectionError(f"verdict must be one of {', '.join(VERDICTS)}, not {verdict!r}")
    who = who.strip()[:MAX_TEXT]
    if not who:
        raise CorrectionError("say who you are (the 'who' field) so the correction can be traced")
    cleaned = []
    for label in labels:
        label = label.strip()
        if label and label not in cleaned:
            if len(label) > 100 or any(c in label for c in ",\n\r\t\"") or label.startswith("."):
                raise CorrectionError(f"label {label[:40]!r} is not usable as a training label "
                                      "(at most 100 characters, no commas, quotes, tabs or line breaks)")
            cleaned.append(label)
    if verdict == RIGHT:
        cleaned = [post["label"]]
    elif not cleaned:
        raise CorrectionError("a 'wrong' verdict needs the true label(s)")
    elif cleaned == [post["label"]]:
        raise CorrectionError(f"the true label given is the model's own ({post['label']}); mark it 'right' instead")
    return Correction(post_id=post["post_id"], verdict=verdict, labels=tuple(cleaned), who=who,
                      image_uri=post["image_uri"], content_hash=post["content_hash"],
                      model_version=post["model_version"], predicted=post["label"], note=note.strip()[:MAX_TEXT])


class CorrectionLog:
    """The log file; safe to append from several threads and processes at once."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self._lock = threading.Lock()

    def append(self, correction: Correction) -> None:
        line = correction.to_json().encode("utf-8") + b"\n"
        with self._lock:
            created = not self.path.exists()
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                if _ends_torn(fd):
                    line = b"\n" + line
                os.write(fd, line)
                os.fsync(fd)
            finally:
                os.close(fd)  # closing releases the lock
            if created:
                _fsync_dir(self.path.parent)

    def read(self) -> list[Correction]:
        """Every complete correction, oldest first; damaged lines are logged and skipped."""
        if not self.path.exists():
            return []
        out = []
        with open(self.path, encoding="utf-8", errors="replace") as f:
            for number, text in enumerate(f, start=1):
                if not text.strip():
                    continue
                try:
                    out.append(Correction.from_json(text))
                except (ValueError, TypeError) as exc:
                    log.warning("%s line %d skipped (%s): a write cut short by a crash, or edited by hand", self.path, number, exc)
        return out

    def latest(self) -> dict[str, Correction]:
        """The correction that counts per post: its latest."""
        return {c.post_id: c for c in self.read()}


def _ends_torn(fd: int) -> bool:
    size = os.fstat(fd).st_size
    return size > 0 and os.pread(fd, 1, size - 1) != b"\n"


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
