"""Counting and dead letters: every record ends up written, dead-lettered or deduplicated.

Steps count with Beam Metrics counters named ``group/key`` (``written/train``,
``dead_lettered/truncated``) in a job's namespace; after the run the driver reads
them back (:func:`query_counters`), nests them (:func:`nest_counts`) and checks
that they reconcile (:func:`reconcile`) before writing the summary.
Dead letters are counted where they are written, so the count and the file agree.
"""

from __future__ import annotations

import json

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.metrics.metric import MetricsFilter

from schemas.dead_letter import DeadLetter

READ = "read"
WRITTEN = "written"
DEAD_LETTERED = "dead_lettered"
DUPLICATES = "duplicates"


def counter_name(group: str, key: str) -> str:
    return f"{group}/{key}"


class Counters:
    """Beam counters of one namespace, created on first use (picklable; cheap to call)."""

    def __init__(self, namespace: str):
        self.namespace = namespace
        self._counters: dict = {}

    def inc(self, name: str, n: int = 1) -> None:
        if n:
            counter = self._counters.get(name)
            if counter is None:
                counter = self._counters[name] = Metrics.counter(self.namespace, name)
            counter.inc(n)

    def __getstate__(self):
        return {"namespace": self.namespace}

    def __setstate__(self, state):
        self.namespace = state["namespace"]
        self._counters = {}


class CountAs(beam.PTransform):
    """Pass elements through, counting them as ``name`` (or ``name/<key_fn(e)>``)."""

    def __init__(self, namespace: str, name: str, key_fn=None):
        super().__init__()
        self._counters = Counters(namespace)
        self._name = name
        self._key_fn = key_fn

    def expand(self, pcoll):
        counters, name, key_fn = self._counters, self._name, self._key_fn

        def count(element):
            counters.inc(name if key_fn is None else counter_name(name, key_fn(element)))
            return element

        return pcoll | beam.Map(count)


class WriteDeadLetters(beam.PTransform):
    """Count DeadLetters by reason and write them as JSON lines ``<prefix>-SSSSS-of-NNNNN.jsonl``."""

    def __init__(self, file_path_prefix: str, namespace: str, num_shards: int = 0):
        super().__init__()
        self._prefix = file_path_prefix
        self._namespace = namespace
        self._num_shards = num_shards

    def expand(self, dead_letters):
        return (
            dead_letters
            | "CountByReason" >> CountAs(self._namespace, DEAD_LETTERED, lambda d: d.reason)
            | "ToJson" >> beam.Map(DeadLetter.to_json)
            | "Write" >> beam.io.WriteToText(self._prefix, file_name_suffix=".jsonl", num_shards=self._num_shards)
        )


def query_counters(result, namespace: str) -> dict[str, int]:
    """Counter totals of ``namespace`` after a run: committed values where the runner has them."""
    totals: dict[str, int] = {}
    for counter in result.metrics().query(MetricsFilter().with_namespace(namespace))["counters"]:
        try:
            value = counter.committed
        except Exception:  # runners without committed metrics raise instead of returning None
            value = None
        if value is None:
            value = counter.attempted
        name = counter.key.metric.name
        totals[name] = totals.get(name, 0) + int(value or 0)
    return totals


def nest_counts(counters: dict[str, int]) -> dict:
    """``{'written/train': 3, 'read': 5}`` -> ``{'written': {'train': 3}, 'read': 5}`` (sorted)."""
    nested: dict = {}
    for name in sorted(counters):
        node = nested
        *groups, leaf = name.split("/")
        for group in groups:
            node = node.setdefault(group, {})
        node[leaf] = counters[name]
    return nested


def total(value) -> int:
    """A count, or the sum of a nested group of counts (absent = 0)."""
    if isinstance(value, dict):
        return sum(total(v) for v in value.values())
    return int(value or 0)


def reconcile(counts: dict, read: str = READ, parts: tuple[str, ...] = (WRITTEN, DEAD_LETTERED, DUPLICATES)) -> dict:
    """Check ``read == sum(parts)``; returns the figures and whether they agree (for the summary)."""
    figures = {name: total(counts.get(name)) for name in (read, *parts)}
    accounted = sum(figures[name] for name in parts)
    return {
        "equation": f"{read} = " + " + ".join(parts),
        **figures,
        "unaccounted": figures[read] - accounted,
        "ok": figures[read] == accounted,
    }


def write_json(path: str, data: dict) -> None:
    """Write a small JSON document through FileSystems (local or gs://)."""
    with FileSystems.create(path, mime_type="application/json") as f:
        f.write((json.dumps(data, indent=2, sort_keys=False, default=str) + "\n").encode("utf-8"))


def read_json(path: str) -> dict:
    with FileSystems.open(path) as f:
        return json.loads(f.read().decode("utf-8"))
