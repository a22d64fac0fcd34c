"""Where the bottleneck job writes what (relative to its ``--output`` folder)."""

EXAMPLES = "examples"          # raw examples: <split>-SSSSS-of-NNNNN.tfrecord.gz
TRANSFORMED = "transformed"    # tensorflow-transform output, same sharding
TRANSFORM = "transform"        # a tft.TFTransformOutput folder (transform_fn/, transformed_metadata/)
DEAD_LETTERS = "dead_letters"  # dead_letters-SSSSS-of-NNNNN.jsonl
SUMMARY = "summary.json"       # run summary: counts that reconcile, timings, lineage
BACKBONE = "backbone.json"     # the backbone fingerprint the embeddings came from
TFRECORD_SUFFIX = ".tfrecord.gz"


def split_pattern(folder: str, split: str) -> str:
    return f"{folder}/{split}-*{TFRECORD_SUFFIX}"
