"""Progress lines for long runs: how many so far and how fast, per worker process.

Beam runs DoFns in many threads and processes; a :class:`Progress` is shared by
every thread of a process (looked up by name), so each worker logs one line per
interval instead of one per bundle.
"""

from __future__ import annotations

import logging
import threading
import time

import apache_beam as beam

from beam_jobs.common.defaults import DEFAULT_PROGRESS_INTERVAL_S as DEFAULT_INTERVAL_S

log = logging.getLogger("beam_jobs.progress")


class Progress:
    """Thread-safe count with a rate; logs ``what: N (R/s)`` at most every ``interval`` seconds."""

    def __init__(self, what: str, interval: float = DEFAULT_INTERVAL_S, clock=time.monotonic):
        self.what = what
        self.interval = interval
        self._clock = clock
        self._lock = threading.Lock()
        self.count = 0
        self._start: float | None = None
        self._last_log = 0.0

    def add(self, n: int = 1) -> str | None:
        """Count ``n`` more; returns the line when one was logged (for tests)."""
        with self._lock:
            now = self._clock()
            if self._start is None:
                self._start = self._last_log = now
            self.count += n
            if now - self._last_log < self.interval:
                return None
            self._last_log = now
            line = self.line(now)
        log.info(line)
        return line

    def line(self, now: float | None = None) -> str:
        now = self._clock() if now is None else now
        elapsed = max(now - (self._start if self._start is not None else now), 1e-9)
        return f"{self.what}: {self.count} ({self.count / elapsed:.1f}/s over {elapsed:.0f} s, this worker)"


_registry: dict[tuple[str, float], Progress] = {}
_registry_lock = threading.Lock()


def progress(what: str, interval: float = DEFAULT_INTERVAL_S) -> Progress:
    """The process-wide Progress for ``what``."""
    with _registry_lock:
        key = (what, interval)
        if key not in _registry:
            _registry[key] = Progress(what, interval)
        return _registry[key]


class LogProgress(beam.PTransform):
    """Pass elements through, logging how many went by and how fast."""

    def __init__(self, what: str, interval: float = DEFAULT_INTERVAL_S):
        super().__init__()
        self._what = what
        self._interval = interval

    def expand(self, pcoll):
        what, interval = self._what, self._interval

        def tick(element):
            progress(what, interval).add(1)
            return element

        return pcoll | beam.Map(tick)
