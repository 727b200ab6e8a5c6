"""Isolation Forest (scikit-learn) on device-relative features.

Anomaly score = -IsolationForest.score_samples (0.5 is the usual boundary; higher means the
window is isolated in fewer random splits). Isolation Forest has no per-feature attribution of its
own; the top contributing features reported with its anomalous windows are the features with the
largest device-relative |z| (what made the window unusual for that device).
"""
from __future__ import annotations

import numpy as np
from sklearn.ensemble import IsolationForest

from models.base import SklearnModel, register

SKLEARN_FILE = SklearnModel.FILE


def fit(z: np.ndarray, seed: int, n_estimators: int = 200, max_samples: int | str = 512) -> IsolationForest:
    model = IsolationForest(n_estimators=n_estimators, max_samples=min(max_samples, len(z))
                            if isinstance(max_samples, int) else max_samples,
                            contamination="auto", random_state=seed, n_jobs=1)
    return model.fit(z)


def anomaly_score(model: IsolationForest, z: np.ndarray) -> np.ndarray:
    return -model.score_samples(z).astype(np.float64)


def contributions(model, z: np.ndarray) -> np.ndarray:
    return np.abs(z)


@register
class IsolationForestModel(SklearnModel):
    """The pickle is the bare IsolationForest."""
    name = "isolation_forest"

    def __init__(self, n_estimators: int = 200, max_samples: int = 512):
        super().__init__()
        self.n_estimators, self.max_samples = n_estimators, max_samples

    @classmethod
    def from_params(cls, params) -> "IsolationForestModel":
        return cls(params.if_trees, params.if_max_samples)

    def fit(self, z, devices, seed):
        self.estimator = fit(z, seed, self.n_estimators, self.max_samples)
        return self

    def score(self, z, devices=None):
        return anomaly_score(self.estimator, z)

    def contributions(self, z, devices=None):
        return contributions(self.estimator, z)
