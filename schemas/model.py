"""The exported model's contract: the trainer writes it, the scoring job and servers read it.

An export directory holds:

- ``serving/``: SavedModel with full preprocessing inside.
  * ``serving_default(image_bytes: string[N])``: decodes (JPEG with the same
    accurate DCT as Pillow, PNG, GIF, BMP), crops and resizes as the backbone's
    fingerprint says, embeds, transforms and classifies.
  * ``score_images(images: float32[N, S, S, 3])``: the same from already
    decoded and prepared images (:func:`brandlens.preprocess.crop_and_resize`);
    the scoring job uses it after its own decoding, which handles more formats,
    EXIF orientation and bad input.
  Both return ``OUTPUTS`` plus ``EVIDENCE_OUTPUTS`` (where each class's evidence
  is, :mod:`brandlens.evidence`) when the embedding is the mean of the backbone's
  final map (EfficientNet-Lite, Inception v3; not VGG16, whose embedding is fc2).
  Boxes and points are normalised to the model's square input;
  :func:`brandlens.evidence.input_box_to_image` maps them to the photo.
  One undecodable image (corrupt, truncated, not an image) fails the whole
  ``serving_default`` call with an InvalidArgumentError, in-process and in TF
  Serving alike: a batch returns all rows or none. To score the rest of a
  batch, call it through :func:`brandlens.serving.score_decodable` (it splits a
  failing batch until each bad image stands alone and reports it), or decode
  yourself and call ``score_images``, as the scoring job does.
  Tolerance between the jobs and ``serving_default``: the jobs decode JPEGs whose shorter side is at least twice
  ``brandlens.preprocess.decode_side`` (1168 px for a 260-px backbone) at a reduced
  DCT scale (``brandlens.imaging.decode_image(min_side=...)``), then resize exactly;
  ``serving_default`` decodes every JPEG in full. Smaller images (every photo of the
  shared benchmarks) get the same pixels either way. On generated 12-24 MP phone
  photos the embeddings differ by at most 0.136 (values average 0.156; lowest
  cosine similarity 0.9987; bench/RESULTS-performance.md, 2026-12-02). The jobs also run the backbone on
  ``brandlens.engines``' default engine (TFLite, embeddings within ~1e-5), not on
  this SavedModel, where the export is backbone + ``head/`` (with evidence outputs: the engine's
  final map through ``head/``'s ``score_maps``); an export with adapted blocks is scored on this
  SavedModel (``beam_jobs.scoring.model.ScoringModel``).
- ``tf_serving/<version>/``: the same serving SavedModel in TF Serving's
  layout (``--model_base_path=<export>/tf_serving``; the version is the export's
  UTC creation time, YYYYMMDDhhmmss), with ``assets.extra/model_card.json``;
  ``python -m trainer.serving_layout EXPORT BASE`` publishes it to a shared base path.
- ``head/``: SavedModel ``serving_default(embedding: float32[N, D])`` returning
  ``OUTPUTS`` from a raw (untransformed) embedding: rescoring without the CNN.
  A pooled embedding has no locations left, so that signature makes no evidence outputs;
  ``score_maps(feature_map: float32[N, h, w, D])`` takes the backbone's final map instead and returns
  what ``score_images`` returns for the images that map came from (the embedding is the map's mean):
  the jobs run the backbone on a faster engine and finish with it. Written for exports whose
  ``score_images`` makes evidence outputs; an export without it is scored on its SavedModel.
- ``model_card.json``: ``MODEL_CARD_FIELDS`` below.
"""

SERVING_DIR = "serving"
TF_SERVING_DIR = "tf_serving"
HEAD_DIR = "head"
MODEL_CARD = "model_card.json"

SIG_BYTES = "serving_default"
SIG_IMAGES = "score_images"
SIG_EMBEDDING = "serving_default"
SIG_MAPS = "score_maps"

INPUT_BYTES = "image_bytes"
INPUT_IMAGES = "images"
INPUT_EMBEDDING = "embedding"
INPUT_FEATURE_MAP = "feature_map"

OUT_SCORES = "scores"          # float32 [N, C], softmax over MODEL_CARD["labels"] order
OUT_LABEL = "label"            # string [N], after the threshold rule
OUT_CONFIDENCE = "confidence"  # float32 [N], the score of the chosen label
OUT_EMBEDDING = "embedding"    # float32 [N, D], the raw backbone embedding
OUTPUTS = (OUT_SCORES, OUT_LABEL, OUT_CONFIDENCE, OUT_EMBEDDING)
# serving/ only (brandlens.evidence names them): per class, evidence over the final map's h x w locations.
OUT_EVIDENCE_MAPS = "evidence_maps"      # float32 [N, h, w, C]: the head at each location; their mean is the logit
OUT_EVIDENCE_BOXES = "evidence_boxes"    # float32 [N, C, 4]: x1, y1, x2, y2 of the class's region, in [0, 1]
OUT_EVIDENCE_AREAS = "evidence_areas"    # float32 [N, C]: the box's share of the input
OUT_EVIDENCE_POINTS = "evidence_points"  # float32 [N, C, 2]: x, y of the class's strongest evidence
OUT_REGION_SCORES = "region_scores"      # float32 [N, C]: the class's softmax score on its region's pooled features
EVIDENCE_OUTPUTS = (OUT_EVIDENCE_MAPS, OUT_EVIDENCE_BOXES, OUT_EVIDENCE_AREAS, OUT_EVIDENCE_POINTS, OUT_REGION_SCORES)

MODEL_CARD_FIELDS = (
    "version_id",       # e.g. "bl-20261129T021700Z-3f2a9c1e"; outputs cite it
    "labels",           # class order of OUT_SCORES
    "neither_label",    # the open-world class name, or null in a closed world
    "threshold",        # min brand score, below which the label falls back to neither_label; null = argmax
    "backbone",         # the backbone fingerprint (dict), incl. "version"
    "training_data",    # bottleneck dir, manifest(s), counts per split and label
    "hyperparameters",
    "metrics",          # validation and test figures
    "created_at",
    "brandlens_version",
    "brand_thresholds",  # label -> min max(score, region score) for an extra brand in a photo, chosen on
                         # validation photos (brandlens.evidence.choose_thresholds); null: report the label only
    "tile_thresholds",  # {"<grid>": {label -> min best score over a photo and its grid x grid tiles}}: what
                        # --multi-crop <grid> reports beside the label (brandlens.evidence.tile_thresholds_from_model)
)
