"""The peer: Beam's canonical image-classification pattern, against our backbone and images.

As in ``apache_beam/examples/inference/tensorflow_imagenet_segmentation.py`` and Beam's
``tensorflow_image_classification`` example: image paths read from a text file, each image
opened through ``FileSystems`` and resized to the model's input with PIL as a preprocess
function, then ``RunInference`` with a ``TFModelHandlerTensor`` and a post-processor that
keeps the top ImageNet class, written with ``WriteToText``. What a Beam user would start from.

Two adaptations, both needed to run our artifact at all: the handler loads the plain
``tf.Module`` SavedModel with ``tf.saved_model.load`` (Keras' ``load_model``, which the stock
handler calls, reads Keras models only), and its inference function calls the module's
``serve``. Pixels stay 0..255 because our SavedModel normalises inside.

    python -m bench.peer_runinference --input images.txt --output /tmp/peer/out --model_path ARTIFACT/saved_model
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import sys
import time
import types

import apache_beam as beam
import numpy
from apache_beam.io.filesystems import FileSystems
from apache_beam.ml.inference.base import PredictionResult, RunInference
from apache_beam.options.pipeline_options import PipelineOptions

if importlib.util.find_spec("pkg_resources") is None:
    # Beam's TF handler imports tensorflow_hub 0.16, whose install check needs pkg_resources.parse_version;
    # setuptools >= 81 ships no pkg_resources. packaging's parser is what it wraps.
    from packaging.version import parse as _parse_version

    sys.modules["pkg_resources"] = types.SimpleNamespace(parse_version=_parse_version)
from apache_beam.ml.inference.tensorflow_inference import TFModelHandlerTensor  # noqa: E402


def read_image(image_path: str, size: int):
    import tensorflow as tf
    from PIL import Image

    with FileSystems().open(image_path, "r") as file:
        data = Image.open(file).convert("RGB").resize((size, size))
    return tf.cast(tf.convert_to_tensor(numpy.array(data)), dtype=tf.float32)


def serve_inference_fn(model, batch, inference_args, model_id=None):
    import tensorflow as tf
    from apache_beam.ml.inference import utils

    predictions = model.serve(tf.stack(batch, axis=0))["logits"]
    return utils._convert_to_result(batch, predictions, model_id)


class SavedModelHandlerTensor(TFModelHandlerTensor):
    """TFModelHandlerTensor for a plain tf.Module SavedModel."""

    def load_model(self):
        import tensorflow as tf

        return tf.saved_model.load(self._model_uri)


class PostProcessor(beam.DoFn):
    def process(self, element: PredictionResult):
        yield str(int(numpy.argmax(element.inference, axis=-1)))


def run(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--input", required=True, help="text file of image paths, one per line")
    parser.add_argument("--output", required=True)
    parser.add_argument("--model_path", required=True, help="the backbone artifact's saved_model folder")
    parser.add_argument("--size", type=int, default=260)
    known, pipeline_args = parser.parse_known_args(argv)
    started = time.monotonic()
    handler = SavedModelHandlerTensor(model_uri=known.model_path, inference_fn=serve_inference_fn).with_preprocess_fn(
        lambda path: read_image(path, known.size))
    with beam.Pipeline(options=PipelineOptions(pipeline_args)) as pipeline:
        (pipeline
         | "ReadImageNames" >> beam.io.ReadFromText(known.input)
         | "RunInference" >> RunInference(handler)
         | "PostProcessOutputs" >> beam.ParDo(PostProcessor())
         | "WriteOutput" >> beam.io.WriteToText(known.output, shard_name_template="", append_trailing_newlines=True))
    return {"seconds": time.monotonic() - started}


if __name__ == "__main__":
    logging.getLogger().setLevel(logging.INFO)
    print(run())
