"""Check an export's ``model_card.json`` against the SavedModel it describes; refuse a mismatch.

The card says how to read the model's outputs (label order of ``scores``, which label is
'neither', the threshold, the version outputs cite); a card edited or copied beside another
model would label rows wrongly (``label=acme`` beside ``score_zenith=0.995``) without any
error. So before scoring, the head SavedModel is asked what it knows itself:

- its ``labels`` and ``version_id`` variables (the trainer saves both) must equal the card's;
- its signature's embedding width must be the card's backbone's;
- on a fixed probe of embeddings, every output label must be the card's label at the argmax
  of ``scores``, or, where the card has a threshold, the card's neither label exactly when the
  best brand score is below it. A changed ``neither_label`` or threshold shows up there; in a
  model without a threshold the neither label is only checked to be one of the labels.

An export with adapted blocks has no ``head/`` (an embedding cannot feed the blocks): its
``serving/`` model is asked instead (the same variables, through its ``head``), and the probe
is a fixed set of images through ``score_images``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from brandlens import fileio
from brandlens.errors import ArtifactError
from schemas import model as contract

_PROBE_SCALES = (0.0, 0.01, 0.1, 0.3, 1.0, 3.0, 10.0, 100.0)


def _text(values) -> list[str]:
    return [v.decode("utf-8") if isinstance(v, bytes) else str(v) for v in np.asarray(values).ravel().tolist()]


def _stored_problems(head, version_holder, labels: list[str], neither_label: str | None, version_id: str) -> list[str]:
    problems = []
    if neither_label is not None and neither_label not in labels:
        problems.append(f"neither_label {neither_label!r} is not one of the labels {labels}")
    stored = getattr(head, "labels", None)
    if stored is not None and _text(stored.numpy()) != list(labels):
        problems.append(f"labels {list(labels)} in the card, {_text(stored.numpy())} in the model")
    stored_version = getattr(version_holder, "version_id", None)
    if stored_version is not None and _text(stored_version.numpy()) != [version_id]:
        problems.append(f"version {version_id} in the card, {_text(stored_version.numpy())[0]} in the model")
    return problems


def card_problems(loaded, labels: list[str], neither_label: str | None, threshold: float | None, version_id: str,
                  embedding_dim: int | None) -> list[str]:
    """What in the card disagrees with a loaded head SavedModel (empty when they agree)."""
    import tensorflow as tf

    problems = _stored_problems(loaded, loaded, labels, neither_label, version_id)
    signature = loaded.signatures[contract.SIG_EMBEDDING]
    spec = signature.structured_input_signature[1][contract.INPUT_EMBEDDING]
    dim = spec.shape[-1]
    if embedding_dim is not None and dim is not None and int(dim) != int(embedding_dim):
        problems.append(f"embedding width {embedding_dim} in the card, {dim} in the model")
    if problems or dim is None:
        return problems
    rng = np.random.default_rng(0)
    probe = np.concatenate([rng.normal(size=(16, int(dim))) * scale for scale in _PROBE_SCALES]).astype(np.float32)
    out = signature(**{contract.INPUT_EMBEDDING: tf.constant(probe)})
    return _rule_problems(out, labels, neither_label, threshold)


def serving_card_problems(loaded, labels: list[str], neither_label: str | None, threshold: float | None,
                          version_id: str) -> list[str]:
    """The same questions put to a serving SavedModel (exports without ``head/``), probed with images."""
    import tensorflow as tf

    problems = _stored_problems(getattr(loaded, "head", None), loaded, labels, neither_label, version_id)
    if problems:
        return problems
    signature = loaded.signatures[contract.SIG_IMAGES]
    size = signature.structured_input_signature[1][contract.INPUT_IMAGES].shape[1]
    rng = np.random.default_rng(0)
    probe = np.concatenate([rng.uniform(0, 255, (2, size, size, 3)), np.zeros((1, size, size, 3)),
                            np.full((1, size, size, 3), 255.0)]).astype(np.float32)
    return _rule_problems(signature(**{contract.INPUT_IMAGES: tf.constant(probe)}), labels, neither_label, threshold)


def _rule_problems(out, labels: list[str], neither_label: str | None, threshold: float | None) -> list[str]:
    """Every output label must be the card's reading of the scores (argmax, or neither below the threshold)."""
    problems = []
    scores = out[contract.OUT_SCORES].numpy()
    if scores.shape[1] != len(labels):
        return [f"{len(labels)} labels in the card, {scores.shape[1]} scores from the model"]
    for row, label in zip(scores, _text(out[contract.OUT_LABEL].numpy())):
        top = labels[int(np.argmax(row))]
        fallback = threshold is not None and neither_label is not None and top != neither_label and row.max() < threshold
        expected = neither_label if fallback else top
        if label != expected and abs(float(row.max()) - float(threshold or 0.0)) > 1e-5:
            problems.append(f"the model says {label!r} where the card reads {expected!r} (scores {np.round(row, 3).tolist()}): "
                            f"labels, neither_label or threshold differ")
            break
    return problems


def verify_export(export_dir: str, labels, neither_label, threshold, version_id: str, embedding_dim: int | None) -> None:
    """Load the export's head and refuse (ArtifactError, one line) a card that does not describe it."""
    import tensorflow as tf

    local = Path(fileio.localize_dir(export_dir))
    folder = contract.HEAD_DIR if (local / contract.HEAD_DIR).is_dir() else contract.SERVING_DIR
    try:
        loaded = tf.saved_model.load(str(local / folder))
    except Exception as exc:
        raise ArtifactError(f"{export_dir}: cannot load {folder}/ ({type(exc).__name__})") from None
    if folder == contract.HEAD_DIR:
        problems = card_problems(loaded, list(labels), neither_label, threshold, version_id, embedding_dim)
    else:
        problems = serving_card_problems(loaded, list(labels), neither_label, threshold, version_id)
    if problems:
        raise ArtifactError(f"{export_dir}/{contract.MODEL_CARD} does not match its SavedModel: {'; '.join(problems)}")
