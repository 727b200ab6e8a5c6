"""The model plug-in point: the interface every anomaly model implements, and the catalog of them.

A model works on device-relative features (``z``, one row per window, see models/features.py):

    fit(z, devices, seed)   learns from the training windows (``devices``: each row's device id);
                            calibration_scores(z, devices) gives their scores for the threshold
    score(z, devices)       anomaly score per row (higher = more abnormal; the threshold is
                            calibrated by ``pipelines.train`` on the training scores)
    contributions(z, devices)  per-feature share of the score (rows x features, >= 0): the
                            "top contributing features" of a flagged window
    save() -> {file: bytes} its files in a registry version (models/registry.py records their sha256)
    load(read)              rebuilds it from those files; ``read(name)`` returns verified bytes only

Adding a model = one module with a subclass decorated by ``@register`` plus its module name in
``MODEL_MODULES`` below. Train, score, evaluate and run_local find it here. ``kind`` says which
RunInference handler serves it (models/handlers.py: "sklearn" and "keras" for the historical
models, "numpy" for any other: it needs no handler of its own).
"""
from __future__ import annotations

import abc
import importlib
import pickle
from pathlib import Path
from typing import Callable, ClassVar

import numpy as np

from models import registry

# the registration line of each model: its module (imported on first use of the catalog)
MODEL_MODULES: tuple[str, ...] = ("models.isolation_forest", "models.autoencoder", "models.statistical",
                                  "models.pca", "models.conv_autoencoder")


class AnomalyModel(abc.ABC):
    name: ClassVar[str]
    kind: ClassVar[str] = "numpy"
    default: ClassVar[bool] = True       # trained and scored unless the model list says otherwise
    needs_devices: ClassVar[bool] = False     # score/contributions use each row's device id
    explains_with_z: ClassVar[bool] = False   # contributions are the window's |z|: they explain the ensemble

    @classmethod
    def from_params(cls, params) -> "AnomalyModel":
        """A new, unfitted model from ``pipelines.train.TrainParams`` (fields it does not use are ignored)."""
        return cls()

    @abc.abstractmethod
    def fit(self, z: np.ndarray, devices: np.ndarray, seed: int) -> "AnomalyModel": ...

    @abc.abstractmethod
    def score(self, z: np.ndarray, devices: np.ndarray | None = None) -> np.ndarray: ...

    @abc.abstractmethod
    def contributions(self, z: np.ndarray, devices: np.ndarray | None = None) -> np.ndarray: ...

    @abc.abstractmethod
    def save(self) -> dict[str, bytes]: ...

    @classmethod
    @abc.abstractmethod
    def load(cls, read: Callable[[str], bytes]) -> "AnomalyModel": ...

    def calibration_scores(self, z: np.ndarray, devices: np.ndarray) -> np.ndarray:
        """Scores of the training windows the threshold is calibrated on (and the flag rate measured
        with); a model whose in-sample scores are optimistic returns out-of-fold ones."""
        return self.score(z, devices)

    def fit_metrics(self) -> dict:
        """Extra training metrics for the version's metadata (e.g. a loss curve's ends)."""
        return {}


class SklearnModel(AnomalyModel):
    """A model around one scikit-learn estimator, pickled as ``model.pkl`` and served by Beam's
    SklearnModelHandlerNumpy (models/handlers.py verifies the sha256 before unpickling)."""
    kind = "sklearn"
    FILE: ClassVar[str] = "model.pkl"

    def __init__(self, estimator=None):
        self.estimator = estimator

    def save(self) -> dict[str, bytes]:
        return {self.FILE: pickle.dumps(self.estimator, protocol=4)}

    @classmethod
    def load(cls, read: Callable[[str], bytes]) -> "SklearnModel":
        model = cls.__new__(cls)
        SklearnModel.__init__(model, pickle.loads(read(cls.FILE)))
        return model


_CATALOG: dict[str, type[AnomalyModel]] = {}
_loaded = False


def register(cls: type[AnomalyModel]) -> type[AnomalyModel]:
    """Class decorator: makes a model known to train, score and evaluate under ``cls.name``."""
    known = _CATALOG.get(cls.name)
    if known is not None and known.__qualname__ != cls.__qualname__:
        raise ValueError(f"model name {cls.name!r} is taken by {known.__module__}.{known.__qualname__}")
    _CATALOG[cls.name] = cls
    return cls


def _load_modules() -> None:
    global _loaded
    if not _loaded:
        _loaded = True
        for module in MODEL_MODULES:
            importlib.import_module(module)


def names() -> tuple[str, ...]:
    """Every registered model, the built-in ones in MODEL_MODULES order, then plug-ins as registered."""
    _load_modules()
    rank = {m: i for i, m in enumerate(MODEL_MODULES)}
    return tuple(sorted(_CATALOG, key=lambda n: rank.get(_CATALOG[n].__module__, len(rank))))   # stable


def default_names() -> tuple[str, ...]:
    return tuple(n for n in names() if _CATALOG[n].default)


def trained(models_root: str | Path) -> tuple[str, ...]:
    """The registered models with at least one version under ``models_root`` (what score uses)."""
    return tuple(n for n in names() if registry.latest_version(models_root, n))


def get(name: str, module: str | None = None) -> type[AnomalyModel]:
    """The model class registered as ``name``; ``module`` (recorded in a version's metadata) is imported
    first when the name is unknown, so a worker finds a plug-in the driver registered."""
    _load_modules()
    if name not in _CATALOG and module:
        importlib.import_module(module)
    if name not in _CATALOG:
        raise KeyError(f"unknown model {name!r}; registered: {', '.join(_CATALOG)}")
    return _CATALOG[name]


def load_version(path: str | Path) -> AnomalyModel:
    """The model of a registry version directory; every file is checked against its sha256 first."""
    meta = registry.verify(path)
    cls = get(meta["name"], meta.get("model_module"))
    return cls.load(lambda fname: registry.read_verified(path, fname))
