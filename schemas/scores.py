"""Arrow schema of the scoring job's Parquet output.

Fixed columns first, then the evidence columns, then one ``score_<label>`` column per class, then the
columns carried through unchanged from the posts manifest (as text: typed Parquet
columns converted as ``beam_jobs.common.sources.metadata_text`` documents).

- ``image_uri``: the image's uri as the input gave it (relative if the manifest's was);
  ``resolved_uri``: where the job read it (absolute).
- ``label``: the model's answer: the top class, except that a brand whose score is
  below the model card's ``threshold`` becomes the ``neither`` class.
- ``confidence``: the model's softmax score of ``label``, in every case. For a brand
  that is the brand's score; for ``neither`` it is the ``neither`` score, also when
  the threshold sent the top brand there (then it is low: "a brand is likely, but
  not likely enough to name"). It is not a score of "any brand".
- ``brand_score``: the best brand's softmax score, in every row (the top score in a
  closed world): sort by it to rank posts by how brand-like they are.
  ``brand_found`` is true when ``brands`` (below) is not empty: ``label != neither``,
  or another brand passed its threshold; a row whose ``label`` is neither and
  ``brand_score`` above ``score_neither`` was demoted by the threshold.

One schema per archive: every run in a ``scores/`` folder has the same columns
(``brandlens.scores_archive.check_schema`` refuses another). One row per post per
run, a run being a model version and an input (``brandlens.scores_archive``);
``dt`` is the UTC date of ``posted_at``. Only files listed by a committed run
manifest belong to the archive (``brandlens.commit``).

Evidence (``brandlens.evidence``; read by the web app):

* ``brands``: every brand reported in the photo, best first (the model's label
  first when it is a brand), each ``{label, score, box, area}``: ``score`` is
  max(softmax score, region score) in [0, 1]; ``box`` the normalised
  ``[x1, y1, x2, y2]`` of the brand's evidence in the photo (origin top left,
  x rightwards, 1.0 = the photo's width/height), ``area`` its share of the photo.
  ``box`` is empty (``[]``) and ``area`` null when the model made no maps
  (rescoring from embeddings, VGG16). ``brand_found`` is true when ``brands`` is not empty.
* ``box``: the ``box`` of ``label``; empty for 'neither' or without maps (lists
  hold no NULLs, so BigQuery reads them as arrays).
"""

from __future__ import annotations

import re

import pyarrow as pa

POST_ID = "post_id"
IMAGE_URI = "image_uri"
RESOLVED_URI = "resolved_uri"
CONTENT_HASH = "content_hash"
LABEL = "label"
CONFIDENCE = "confidence"
BRAND_SCORE = "brand_score"
BRAND_FOUND = "brand_found"
MODEL_VERSION = "model_version"
BACKBONE = "backbone"
SCORED_AT = "scored_at"
EMBEDDING = "embedding"
PARTITION = "dt"
BRANDS = "brands"
BOX = "box"
BOX_TYPE = pa.list_(pa.float32())  # 4 values; a variable list because Parquet readers choke on null fixed-size ones
BRAND_TYPE = pa.struct([pa.field("label", pa.string(), nullable=False), pa.field("score", pa.float32(), nullable=False),
                        pa.field("box", BOX_TYPE, nullable=False), pa.field("area", pa.float32())])

FIXED_FIELDS = (
    pa.field(POST_ID, pa.string(), nullable=False),
    pa.field(IMAGE_URI, pa.string(), nullable=False),
    pa.field(RESOLVED_URI, pa.string(), nullable=False),
    pa.field(CONTENT_HASH, pa.string(), nullable=False),
    pa.field(LABEL, pa.string(), nullable=False),
    pa.field(CONFIDENCE, pa.float32(), nullable=False),
    pa.field(BRAND_SCORE, pa.float32(), nullable=False),
    pa.field(BRAND_FOUND, pa.bool_(), nullable=False),
    pa.field(MODEL_VERSION, pa.string(), nullable=False),
    pa.field(BACKBONE, pa.string(), nullable=False),
    pa.field(SCORED_AT, pa.timestamp("us", tz="UTC"), nullable=False),
)
EVIDENCE_FIELDS = (
    pa.field(BRANDS, pa.list_(BRAND_TYPE), nullable=False),
    pa.field(BOX, BOX_TYPE, nullable=False),
)
RESERVED = {f.name for f in FIXED_FIELDS + EVIDENCE_FIELDS} | {EMBEDDING, PARTITION}
SCORE_PREFIX = "score_"


def score_column(label: str) -> str:
    """``score_<label>``, with the label made a safe SQL identifier."""
    return SCORE_PREFIX + re.sub(r"[^0-9a-zA-Z_]", "_", label.lower())


def scores_schema(labels: list[str], carried: list[str] = (), with_embedding: bool = False, embedding_dim: int = 0) -> pa.Schema:
    """The output schema for a model's ``labels``; ``carried`` columns are strings as read."""
    columns = [score_column(label) for label in labels]
    if len(set(columns)) != len(columns):
        raise ValueError(f"labels {labels} collide as column names {columns}")
    clash = [c for c in carried if c in RESERVED or c in columns]
    if clash:
        raise ValueError(f"input columns {clash} clash with output columns; rename them")
    fields = list(FIXED_FIELDS + EVIDENCE_FIELDS) + [pa.field(c, pa.float32(), nullable=False) for c in columns]
    if with_embedding:
        fields.append(pa.field(EMBEDDING, pa.list_(pa.float32(), embedding_dim), nullable=False))
    fields += [pa.field(c, pa.string()) for c in carried]
    return pa.schema(fields)
