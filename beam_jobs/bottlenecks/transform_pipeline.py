"""tensorflow-transform over the written examples: analyse train only, apply to every split.

Reads ``examples/<split>-*`` through tfx_bsl's TFXIO (Arrow record batches,
typed by ``schemas.bottleneck.raw_schema``), analyses the training split with
``transform.preprocessing_fn`` and writes the TFTransformOutput to
``transform/`` and the transformed examples to ``transformed/<split>-*``.
"""

from __future__ import annotations

import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes

from beam_jobs.bottlenecks.transform import preprocessing_fn
from schemas import bottleneck as schema
from schemas import layout


def _source(output: str, split: str, raw_schema):
    from tfx_bsl.public import tfxio

    return tfxio.TFExampleRecord(file_pattern=layout.split_pattern(f"{output}/{layout.EXAMPLES}", split),
                                 schema=raw_schema, telemetry_descriptors=["brandlens", "bottlenecks"])


class _EncodeExamples(beam.DoFn):
    """Transformed Arrow record batches -> serialized tf.train.Examples."""

    def setup(self):
        from tfx_bsl.coders.example_coder import RecordBatchToExamplesEncoder

        self._encoder = RecordBatchToExamplesEncoder()

    def process(self, batch_and_passthrough):
        record_batch, _ = batch_and_passthrough
        yield from self._encoder.encode(record_batch)


def build_transform_pipeline(pipeline, output: str, embedding_dim: int, temp_dir: str, num_shards: int = 0,
                             transform_dir: str | None = None) -> None:
    """Add the analyse/transform steps; the caller runs the pipeline (inside a function: see module notes).

    ``temp_dir`` and ``transform_dir`` (default ``<output>/transform``) are written with TensorFlow's
    own file I/O; everything else goes through Beam's FileSystems.
    """
    import tensorflow_transform.beam as tft_beam

    raw_schema = schema.raw_schema(embedding_dim)
    with tft_beam.Context(temp_dir=temp_dir):
        train = _source(output, "train", raw_schema)
        transform_fn = (
            (pipeline | "ReadTrainForAnalysis" >> train.BeamSource(), train.TensorAdapterConfig())
            | "AnalyzeTrain" >> tft_beam.AnalyzeDataset(preprocessing_fn)
        )
        _ = transform_fn | "WriteTransformFn" >> tft_beam.WriteTransformFn(transform_dir or f"{output}/{layout.TRANSFORM}")
        for split in schema.SPLITS:
            source = _source(output, split, raw_schema)
            name = split.title()
            transformed, _ = (
                ((pipeline | f"Read{name}" >> source.BeamSource(), source.TensorAdapterConfig()), transform_fn)
                | f"Transform{name}" >> tft_beam.TransformDataset(output_record_batches=True)
            )
            (transformed
             | f"Encode{name}" >> beam.ParDo(_EncodeExamples())
             | f"Write{name}" >> beam.io.WriteToTFRecord(
                 f"{output}/{layout.TRANSFORMED}/{split}", file_name_suffix=layout.TFRECORD_SUFFIX,
                 num_shards=num_shards, compression_type=CompressionTypes.GZIP))
