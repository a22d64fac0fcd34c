"""Run a backbone SavedModel on a batch of prepared images: the one place the inference engine is chosen.

* ``tflite`` (the default): the same graph converted once with ``tf.lite.TFLiteConverter`` and run
  by the TensorFlow Lite interpreter with its XNNPACK CPU kernels, in chunks of ``TFLITE_CHUNK``
  images. Embeddings match the SavedModel's to ~1e-5 and cost ~15 % less CPU here
  (bench/RESULTS-performance.md).
* ``tflite-int8``: dynamic-range int8 weights. Smaller, but not faster with XNNPACK here and its
  embeddings move by up to ~0.6; kept for comparison only.
* ``savedmodel``: TensorFlow's own runtime, as users who serve the export run it.

Every engine takes float32 ``[N, S, S, 3]`` images in 0..255 (``brandlens.preprocess``) and
returns the float32 ``[N, D]`` embedding of the SavedModel object's ``serve`` function, so
callers (the jobs' batch DoFns, a Beam ModelHandler) change one line to switch.
Converted models are cached in ``$BRANDLENS_ENGINE_CACHE`` (default
``~/.cache/brandlens/engines``), keyed by the caller's key (the backbone version), the
engine and the TensorFlow version; a conversion takes a few seconds, once per machine.
"""

from __future__ import annotations

import functools
import hashlib
import os
import tempfile
import threading
import warnings
from pathlib import Path

import numpy as np

SAVEDMODEL = "savedmodel"
TFLITE = "tflite"
TFLITE_INT8 = "tflite-int8"
ENGINES = (SAVEDMODEL, TFLITE, TFLITE_INT8)
DEFAULT_ENGINE = TFLITE
TFLITE_CHUNK = 8  # images per interpreter call: XNNPACK ran fastest at 4-8 here, not at 32
EMBEDDING = "embedding"
FEATURE_MAP = "feature_map"


def engine_cache() -> Path:
    return Path(os.environ.get("BRANDLENS_ENGINE_CACHE", Path.home() / ".cache" / "brandlens" / "engines"))


def _serve(saved_model_dir: str | Path, within: tuple[str, ...]):
    import tensorflow as tf

    loaded = tf.saved_model.load(str(saved_model_dir))
    return loaded, functools.reduce(getattr, within, loaded).serve


class SavedModelEngine:
    name = SAVEDMODEL

    def __init__(self, saved_model_dir: str | Path, within: tuple[str, ...] = ()):
        import tensorflow as tf

        self._tf = tf
        self._loaded, self._fn = _serve(saved_model_dir, within)

    def embed(self, images: np.ndarray) -> np.ndarray:
        return self._fn(self._tf.convert_to_tensor(images, self._tf.float32))[EMBEDDING].numpy()

    def feature_map(self, images: np.ndarray) -> np.ndarray:
        return self._fn(self._tf.convert_to_tensor(images, self._tf.float32))[FEATURE_MAP].numpy()


def convert(saved_model_dir: str | Path, engine: str, key: str, within: tuple[str, ...] = (),
            cache: Path | None = None, signature: str | None = None) -> Path:
    """The TFLite file of ``serve`` in ``saved_model_dir``, or of its ``signature`` (converted once per key,
    engine and TF version). A graph with an op TFLite lacks raises ``tf.lite``'s ``ConverterError``."""
    import tensorflow as tf

    cache = Path(cache or engine_cache())
    what = f"sig:{signature}" if signature else "/".join(within)
    tag = hashlib.sha256(f"{key}|{what}|{engine}|{tf.__version__}".encode()).hexdigest()[:16]
    target = cache / f"{''.join(c if c.isalnum() or c in '-_.' else '-' for c in key)}-{engine}-{tag}.tflite"
    if target.is_file():
        return target
    if signature:
        converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model_dir), signature_keys=[signature])
    else:
        loaded, fn = _serve(saved_model_dir, within)
        concrete = fn.get_concrete_function() if hasattr(fn, "get_concrete_function") else fn
        converter = tf.lite.TFLiteConverter.from_concrete_functions([concrete], loaded)
    if engine == TFLITE_INT8:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]  # dynamic-range: int8 weights, float activations
    blob = converter.convert()
    cache.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tflite-", dir=cache)
    with os.fdopen(fd, "wb") as f:
        f.write(blob)
    os.replace(tmp, target)  # concurrent workers write the same bytes; the last rename wins
    return target


class SignatureEngine:
    """A SavedModel signature converted to TFLite (one interpreter, XNNPACK, ``threads`` threads, serialised by a
    lock: interpreters are not thread-safe): every output, in chunks of ``chunk`` rows, as numpy (string outputs as
    bytes objects, as TensorFlow's). ``signature`` None: the model's only one."""

    def __init__(self, model_path: str | Path, signature: str | None = None, name: str = TFLITE,
                 threads: int | None = None, chunk: int = TFLITE_CHUNK):
        import tensorflow as tf

        self.name, self._chunk = name, chunk
        with warnings.catch_warnings():  # tf.lite.Interpreter warns that it moves to ai-edge-litert
            warnings.simplefilter("ignore")
            interpreter = tf.lite.Interpreter(model_path=str(model_path), num_threads=threads or os.cpu_count() or 1)
        self._interpreter = interpreter
        self._runner = interpreter.get_signature_runner(signature)
        (self._input,) = self._runner.get_input_details()
        self._lock = threading.Lock()

    def _parts(self, rows: np.ndarray) -> list[dict[str, np.ndarray]]:
        rows = np.ascontiguousarray(rows, np.float32)
        with self._lock:
            return [self._runner(**{self._input: rows[i:i + self._chunk]}) for i in range(0, len(rows), self._chunk)]

    def __call__(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        parts = self._parts(rows)
        if not parts:
            raise ValueError("no rows to run")
        return {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}


class TFLiteEngine(SignatureEngine):
    """A backbone's ``serve`` on TFLite: its embedding, or its final feature map."""

    def __init__(self, model_path: str | Path, name: str = TFLITE, threads: int | None = None,
                 chunk: int = TFLITE_CHUNK):
        super().__init__(model_path, None, name, threads, chunk)
        outputs = self._runner.get_output_details()
        self._output = EMBEDDING if EMBEDDING in outputs else next(
            n for n, d in outputs.items() if len(d["shape"]) == 2 and d["shape"][1] != 1000)
        self._map_output = FEATURE_MAP if FEATURE_MAP in outputs else next(
            (n for n, d in outputs.items() if len(d["shape"]) == 4), None)

    def embed(self, images: np.ndarray) -> np.ndarray:
        return self._run(images, self._output)

    def feature_map(self, images: np.ndarray) -> np.ndarray:
        """The backbone's final map [N, h, w, C] (the embedding is its mean)."""
        if self._map_output is None:
            raise ValueError(f"this {self.name} model has no feature map output")
        return self._run(images, self._map_output)

    def _run(self, images: np.ndarray, output: str) -> np.ndarray:
        parts = [part[output] for part in self._parts(images)]
        return np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)


def load_engine(engine: str, saved_model_dir: str | Path, key: str, within: tuple[str, ...] = ()):
    """An engine for ``serve`` of the SavedModel at ``saved_model_dir`` (``within``: attributes leading to it)."""
    if engine == SAVEDMODEL:
        return SavedModelEngine(saved_model_dir, within)
    if engine in (TFLITE, TFLITE_INT8):
        return TFLiteEngine(convert(saved_model_dir, engine, key, within), engine)
    raise ValueError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")


class BackboneEngine:
    """A backbone artifact's fingerprint and an engine for its SavedModel: what the jobs' embedding steps need."""

    def __init__(self, fingerprint, engine):
        self.fingerprint, self.engine = fingerprint, engine

    def embed(self, images: np.ndarray) -> np.ndarray:
        return self.engine.embed(images)

    def feature_map(self, images: np.ndarray) -> np.ndarray:
        return self.engine.feature_map(images)


def load_backbone(artifact_dir: str | Path, engine: str = DEFAULT_ENGINE) -> BackboneEngine:
    """Like ``brandlens.backbones.artifact.load_backbone`` for embedding only, on ``engine``; once per process."""
    from brandlens import fileio
    from brandlens.backbones.artifact import SAVED_MODEL_DIR, read_fingerprint

    key = (str(artifact_dir), engine)
    with _cache_lock:
        if key not in _loaded:
            local = fileio.localize_dir(artifact_dir)
            fingerprint = read_fingerprint(local)
            _loaded[key] = BackboneEngine(fingerprint, load_engine(engine, Path(local) / SAVED_MODEL_DIR, fingerprint.version))
        return _loaded[key]


_loaded: dict = {}
_cache_lock = threading.Lock()
