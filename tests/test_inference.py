"""KeyedInference (RunInference wiring of both jobs) on the DirectRunner: keys travel, failures are isolated.

The model here is a small real ModelHandler (no TensorFlow) that refuses negative inputs, so a batch
holding one bad element fails as a whole and must be retried element by element.
"""

from __future__ import annotations

import apache_beam as beam
import numpy as np
from apache_beam.ml.inference.base import ModelHandler
from apache_beam.testing.util import assert_that, equal_to

from beam_jobs.common.inference import KeyedInference, batching, failure_message, inference_metrics

NAMESPACE = "test.inference"


class _Doubler(ModelHandler):
    def __init__(self):
        super().__init__(**batching(4))

    def load_model(self):
        return lambda values: [2 * v for v in values]

    def run_inference(self, batch, model, inference_args=None):
        if any(v < 0 for v in batch):
            raise ValueError("negative input")
        return [{"double": d} for d in model(list(batch))]


def _prepare(text: str) -> float:
    return float(text)  # "x" fails here, before batching


def test_failed_batches_are_retried_alone_and_preparation_failures_stand_alone():
    inputs = [(f"k{i}", str(i)) for i in range(10)] + [("bad", "-1"), ("nan", "x")]
    pipeline = beam.Pipeline(options=beam.options.pipeline_options.PipelineOptions(["--runner=DirectRunner"]))
    out = pipeline | beam.Create(inputs) | KeyedInference(_Doubler(), NAMESPACE, _prepare)
    assert_that(out.results | "Values" >> beam.MapTuple(lambda k, o: (k, o["double"])),
                equal_to([(f"k{i}", 2.0 * i) for i in range(10)]), label="Results")
    assert_that(out.failures, equal_to([("bad", "ValueError: negative input"),
                                        ("nan", "ValueError: could not convert string to float: 'x'")]), label="Failures")
    result = pipeline.run()
    result.wait_until_finish()
    metrics = inference_metrics(result, NAMESPACE)
    assert metrics["failed_batches_counter"] >= 1
    assert metrics["num_inferences"] + metrics["retried"]["num_inferences"] == 10
    assert metrics["retried"]["failed_batches_counter"] == 1
    assert metrics["load_model_ms"]["count"] >= 1 and metrics["batch_size"]["max"] <= 4


def test_failure_messages():
    assert failure_message(ValueError("x")) == "ValueError: x"
    assert failure_message((KeyError, "KeyError('post')", [])) == "KeyError: post"
    assert failure_message((RuntimeError, "odd", [])) == "RuntimeError: odd"
    assert np.isfinite(batching(8)["max_batch_size"]) and batching(8, 2.0)["max_batch_duration_secs"] == 2.0
