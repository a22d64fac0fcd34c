"""RunInference wiring shared by both jobs: keyed batches, dead letters, its metrics.

Each job brings its own ``ModelHandler`` (``embedding.BackboneHandler``,
``scoring.model.ImagesHandler``/``HeadHandler``); :class:`KeyedInference`
runs it as Beam's ``RunInference`` over ``(key, example)`` pairs, so keys
(example keys, posts) travel through untouched, and turns every failure into
``(key, message)``:

- a failed per-element preparation (the handler's ``prepare``, run as
  RunInference's preprocess step) fails that element alone;
- a failed batch is retried element by element by a second RunInference
  (``RetryAlone``, batches of one, model loaded only when a batch has failed),
  so one bad input costs one dead letter, not its whole batch.

Model sharing: one model per worker process (RunInference's default, through
``Shared``), which every DoFn thread of the process uses. ``model_copies=N`` (or
``share_model_across_processes``) would hold N models per machine and proxy
each batch to them; that pays for models too large to fit once per process,
not for these (a backbone of 20-90 MB), where pickling every batch of images
to another process would cost more than the memory it saves.

RunInference's metrics (``num_inferences``, ``failed_batches_counter``,
batch size, batch latency, model load time and size) land in the namespace
``<job namespace>.inference``; :func:`inference_metrics` reads them back for
the job's summary.
"""

from __future__ import annotations

import ast
import resource
from typing import Callable, NamedTuple

import apache_beam as beam
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.ml.inference import base as _beam_inference
from apache_beam.ml.inference.base import KeyedModelHandler, ModelHandler, RunInference

# Beam 2.77 imports ``resource`` together with its torch-only ModelManager, so without torch it
# loses ``resource`` too: the model-size metric reads 0 and every model load logs a warning.
if getattr(_beam_inference, "resource", None) is None:
    _beam_inference.resource = resource

INFERENCE_SUFFIX = ".inference"
RETRY_SUFFIX = ".inference_retry"


def inference_namespace(job_namespace: str) -> str:
    return job_namespace + INFERENCE_SUFFIX


def batching(batch_size: int, max_batch_duration_secs: float | None = None) -> dict:
    """ModelHandler batching kwargs: fixed-size batches (the last of a bundle may be smaller).

    ``max_batch_duration_secs`` only matters in streaming (it makes batching stateful, keyed).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    kwargs = {"min_batch_size": batch_size, "max_batch_size": batch_size}
    if max_batch_duration_secs is not None:
        kwargs["max_batch_duration_secs"] = max_batch_duration_secs
    return kwargs


def failure_message(error) -> str:
    """``Type: message`` of an exception or of the ``(type, repr, traceback)`` Beam's dead-letter outputs carry."""
    if isinstance(error, BaseException):
        return f"{type(error).__name__}: {error}"
    kind, text, _ = error
    name = getattr(kind, "__name__", str(kind))
    prefix = f"{name}("
    if isinstance(text, str) and text.startswith(prefix) and text.endswith(")"):
        text = text[len(prefix):-1]
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            value = None
        if isinstance(value, str):
            text = value
    return f"{name}: {text}"


class _Lazy:
    """A model loaded on first use: the retry step must not load a copy in runs where nothing fails."""

    def __init__(self, load: Callable):
        self._load, self._model = load, None

    def get(self):
        if self._model is None:
            self._model = self._load()
        return self._model


class _LazyHandler(ModelHandler):
    """``handler`` with its model loaded at the first batch rather than at setup."""

    def __init__(self, handler: ModelHandler):
        super().__init__(min_batch_size=1, max_batch_size=1)
        self._handler = handler

    def load_model(self):
        return _Lazy(self._handler.load_model)

    def run_inference(self, batch, model, inference_args=None):
        return self._handler.run_inference(batch, model.get(), inference_args)

    def get_num_bytes(self, batch) -> int:
        return self._handler.get_num_bytes(batch)


class InferenceOutputs(NamedTuple):
    results: beam.PCollection   # (key, prediction)
    failures: beam.PCollection  # (key, "Type: message")


class KeyedInference(beam.PTransform):
    """``(key, raw example)`` -> :class:`InferenceOutputs` through ``RunInference(handler)``.

    ``prepare`` (optional) maps a raw example to the handler's input, per element, before batching.
    """

    def __init__(self, handler: ModelHandler, namespace: str, prepare: Callable | None = None):
        super().__init__()
        self._handler, self._namespace, self._prepare = handler, namespace, prepare

    def expand(self, pairs):
        prepare = self._prepare
        keyed = KeyedModelHandler(self._handler)
        if prepare is not None:
            keyed = keyed.with_preprocess_fn(lambda pair: (pair[0], prepare(pair[1])))
        results, dlq = pairs | "RunInference" >> RunInference(
            keyed, metrics_namespace=inference_namespace(self._namespace)).with_exception_handling()
        retried, retry_dlq = (
            dlq.failed_inferences
            | "FailedBatchElements" >> beam.FlatMap(lambda failed: failed[0])
            | "RetryAlone" >> RunInference(KeyedModelHandler(_LazyHandler(self._handler)),
                                           metrics_namespace=self._namespace + RETRY_SUFFIX).with_exception_handling()
        )
        failures = [
            retry_dlq.failed_inferences | "RetryFailures" >> beam.FlatMap(
                lambda failed: [(key, failure_message(failed[1])) for key, _ in failed[0]]),
        ]
        for i, bad in enumerate(dlq.failed_preprocessing):
            failures.append(bad | f"PrepareFailures{i}" >> beam.Map(lambda failed: (failed[0][0], failure_message(failed[1]))))
        all_results = (results, retried) | "Inferred" >> beam.Flatten()
        return InferenceOutputs(all_results, tuple(failures) | "InferenceFailures" >> beam.Flatten())


_COUNTERS = ("num_inferences", "failed_batches_counter")
_DISTRIBUTIONS = {"inference_batch_latency_micro_secs": ("batch_latency_ms", 1e-3),
                  "load_model_latency_milli_secs": ("load_model_ms", 1.0),
                  "inference_request_batch_size": ("batch_size", 1.0),
                  "model_byte_size": ("model_mib", 1 / 2 ** 20)}


def _value(metric):
    try:
        value = metric.committed
    except Exception:  # runners without committed metrics raise instead of returning None
        value = None
    return metric.attempted if value is None else value


def inference_metrics(result, job_namespace: str) -> dict:
    """RunInference's metrics of a finished run, for the summary: counts, and batch latency / load time
    (ms) and batch size as count, mean, min and max; ``retried`` holds the retry step's."""
    def read(namespace: str) -> dict:
        found = result.metrics().query(MetricsFilter().with_namespace(namespace))
        out: dict = {name: 0 for name in _COUNTERS}
        for counter in found["counters"]:
            out[counter.key.metric.name] = out.get(counter.key.metric.name, 0) + int(_value(counter) or 0)
        for dist in found["distributions"]:
            name = dist.key.metric.name
            value = _value(dist)
            if name not in _DISTRIBUTIONS or value is None or not value.count:
                continue
            label, scale = _DISTRIBUTIONS[name]
            out[label] = {"count": value.count, "mean": round(value.sum / value.count * scale, 2),
                          "min": round(value.min * scale, 2), "max": round(value.max * scale, 2)}
        return out

    metrics = read(inference_namespace(job_namespace))
    retried = read(job_namespace + RETRY_SUFFIX)
    metrics["retried"] = {name: retried[name] for name in _COUNTERS}
    return metrics
