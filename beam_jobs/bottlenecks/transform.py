"""The tensorflow-transform step, kept apart from the pipeline that runs it.

Analysed on the training split only (label vocabulary, embedding z-scores) and
applied to every split, so validation and test never leak into the statistics.
"""

from __future__ import annotations

import tensorflow as tf

from schemas import bottleneck as schema


def preprocessing_fn(inputs: dict) -> dict:
    import tensorflow_transform as tft

    label_id = tft.compute_and_apply_vocabulary(
        inputs[schema.LABEL], vocab_filename=schema.LABEL_VOCABULARY, default_value=-1
    )
    return {
        schema.LABEL_ID: label_id,
        schema.EMBEDDING_SCALED: tft.scale_to_z_score(inputs[schema.EMBEDDING]),
        **{name: tf.identity(inputs[name]) for name in (schema.CONTENT_HASH, schema.URI, schema.LABEL, schema.SPLIT, schema.VARIANT)},
    }
