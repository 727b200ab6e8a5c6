"""RunInference model handlers for the registry's model versions.

Elements are *blocks*: 2-D arrays of device-relative features (many windows each), not single
rows, so Beam's per-element cost is paid once per block. Each handler returns, per block, a tuple
``(scores, contributions)``: the anomaly score of every row and the per-feature contribution
matrix used for "top contributing features".

* scikit-learn models (Isolation Forest, the robust z-score model): Beam's own
  ``SklearnModelHandlerNumpy`` with a block-wise ``inference_fn``; ``load_model`` first verifies
  the version's sha256 manifest, so a tampered pickle is never unpickled.
* any other registered model (kind "numpy", models/base.py): ``RegisteredModelHandler`` loads it
  through ``models.base.load_version`` (hashes checked) and calls its ``score``/``contributions``;
  a model that ``needs_devices`` gets blocks of ``(z, device ids)``.
* Keras autoencoder: a small ModelHandler of our own. Beam's ``TFModelHandlerNumpy`` cannot be used
  here: its module imports ``tensorflow_hub``, which is not in the pinned environment (and would
  pull ``tf-keras``); besides, it stacks single examples, while our elements are blocks.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
from apache_beam.ml.inference.base import ModelHandler, PredictionResult
from apache_beam.ml.inference.sklearn_inference import ModelFileType, SklearnModelHandlerNumpy

from models import base, registry
from models.autoencoder import KERAS_FILE
from models.features import BASELINE_FILE
from models.isolation_forest import SKLEARN_FILE

__all__ = ["BASELINE_FILE", "KERAS_FILE", "SKLEARN_FILE", "handler_for"]


def _split(values: np.ndarray, sizes: list[int]) -> list[np.ndarray]:
    return np.split(values, np.cumsum(sizes)[:-1]) if sizes else []


def sklearn_block_inference(model, batch: Sequence[np.ndarray], inference_args=None) -> list[tuple]:
    """inference_fn for SklearnModelHandlerNumpy: one vectorised call over all blocks of a batch."""
    sizes = [len(b) for b in batch]
    z = np.concatenate(batch) if batch else np.zeros((0, 0))
    if hasattr(model, "anomaly_score"):
        scores = model.anomaly_score(z)
        contrib = model.contributions(z)
    else:                                         # sklearn outlier detectors: lower = more abnormal
        scores = -model.score_samples(z).astype(np.float64)
        contrib = np.abs(z)
    return list(zip(_split(scores, sizes), _split(contrib, sizes)))


class VerifiedSklearnModelHandler(SklearnModelHandlerNumpy):
    """SklearnModelHandlerNumpy for a registry version directory (hashes checked before unpickling)."""

    def __init__(self, version_dir: str | Path, max_batch_size: int = 8):
        super().__init__(model_uri=str(Path(version_dir) / SKLEARN_FILE), model_file_type=ModelFileType.PICKLE,
                         inference_fn=sklearn_block_inference, min_batch_size=1, max_batch_size=max_batch_size)
        self._dir = str(version_dir)

    def load_model(self):
        registry.verify(self._dir)
        return super().load_model()

    def get_num_bytes(self, batch: Sequence[np.ndarray]) -> int:
        return sum(b.nbytes for b in batch)


class KerasModelHandlerNumpy(ModelHandler[np.ndarray, PredictionResult, Any]):
    """Runs the registry's Keras autoencoder on blocks; output per block: (row errors, feature errors)."""

    def __init__(self, version_dir: str | Path, max_batch_size: int = 8):
        super().__init__(min_batch_size=1, max_batch_size=max_batch_size)
        self._dir = str(version_dir)

    def load_model(self):
        from models import autoencoder
        return autoencoder.from_bytes(registry.read_verified(self._dir, KERAS_FILE))

    def run_inference(self, batch: Sequence[np.ndarray], model, inference_args=None) -> Iterable[PredictionResult]:
        from models import autoencoder
        sizes = [len(b) for b in batch]
        err = autoencoder.errors(model, np.concatenate(batch)) if batch else np.zeros((0, 0))
        parts = _split(err, sizes)
        return [PredictionResult(b, (e.mean(axis=1) if len(e) else np.zeros(0), e), self._dir)
                for b, e in zip(batch, parts)]

    def get_num_bytes(self, batch: Sequence[np.ndarray]) -> int:
        return sum(b.nbytes for b in batch)

    def get_metrics_namespace(self) -> str:
        return "BeamML_Keras_Numpy"


def _rows(block) -> int:
    return len(block[0]) if isinstance(block, tuple) else len(block)


class RegisteredModelHandler(ModelHandler[Any, PredictionResult, base.AnomalyModel]):
    """Any model of the catalog: blocks are z matrices, or (z, device ids) for device-aware models;
    output per block: (scores, contributions)."""

    def __init__(self, version_dir: str | Path, max_batch_size: int = 8):
        super().__init__(min_batch_size=1, max_batch_size=max_batch_size)
        self._dir = str(version_dir)

    def load_model(self) -> base.AnomalyModel:
        return base.load_version(self._dir)

    def run_inference(self, batch: Sequence[Any], model, inference_args=None) -> Iterable[PredictionResult]:
        if not batch:
            return []
        sizes = [_rows(b) for b in batch]
        z = np.concatenate([b[0] if isinstance(b, tuple) else b for b in batch])
        devices = np.concatenate([b[1] for b in batch]) if isinstance(batch[0], tuple) else None
        out = zip(_split(model.score(z, devices), sizes), _split(model.contributions(z, devices), sizes))
        return [PredictionResult(b, r, self._dir) for b, r in zip(batch, out)]

    def get_num_bytes(self, batch: Sequence[Any]) -> int:
        return sum((b[0] if isinstance(b, tuple) else b).nbytes for b in batch)

    def get_metrics_namespace(self) -> str:
        return "BeamML_Registered_Numpy"


HANDLERS = {"keras": KerasModelHandlerNumpy, "sklearn": VerifiedSklearnModelHandler, "numpy": RegisteredModelHandler}


def handler_for(kind: str, version_dir: str | Path, max_batch_size: int = 8) -> ModelHandler:
    if kind not in HANDLERS:
        raise ValueError(f"unknown model kind {kind!r}; known: {', '.join(HANDLERS)}")
    return HANDLERS[kind](version_dir, max_batch_size)
