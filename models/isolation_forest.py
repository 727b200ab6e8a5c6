"""Isolation Forest (scikit-learn) on device-relative features.

Anomaly score = -IsolationForest.score_samples (0.5 is the usual boundary; higher means the
window is isolated in fewer random splits). Isolation Forest has no per-feature attribution of its
own; the top contributing features reported with its anomalous windows are the features with the
largest device-relative |z| (what made the window unusual for that device).

A forest splits only on features that vary in its training windows: a feature that never did (a BAD
count, a range excess: 0 on every healthy device) is invisible to it, so an overload beyond a sensor's
range would not move its score. The estimator (``SupportedIsolationForest``) therefore records those
features and, where a window leaves their training value, treats it as isolated there: the score
becomes 1 - (1 - s) x exp(-(m / UNSEEN_Z)^2), m the largest |z| among them (one BAD reading, |z| 1,
moves the score by ~1 %; |z| 8 takes a typical 0.45 to 0.8; the clip of 20 to ~1).
"""
from __future__ import annotations

import numpy as np
from sklearn.ensemble import IsolationForest

from models.base import SklearnModel, register

SKLEARN_FILE = SklearnModel.FILE
UNSEEN_Z = 8.0


class SupportedIsolationForest(IsolationForest):
    """IsolationForest that also sees the features which never varied in training (module doc)."""

    def fit(self, X, y=None, sample_weight=None):
        X = np.asarray(X)
        self.unseen_features_ = np.flatnonzero(np.ptp(X, axis=0) == 0) if len(X) else np.zeros(0, np.int64)
        self.unseen_values_ = X[0, self.unseen_features_] if len(X) else np.zeros(0)
        return super().fit(X, y, sample_weight)

    def score_samples(self, X):
        base = super().score_samples(X)
        unseen = getattr(self, "unseen_features_", None)
        if unseen is None or not len(unseen):
            return base
        m = np.abs(np.asarray(X)[:, unseen] - self.unseen_values_).max(axis=1)
        return -(1.0 - (1.0 + base) * np.exp(-(m / UNSEEN_Z) ** 2))


def fit(z: np.ndarray, seed: int, n_estimators: int = 200, max_samples: int | str = 512) -> IsolationForest:
    model = SupportedIsolationForest(n_estimators=n_estimators, max_samples=min(max_samples, len(z))
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
