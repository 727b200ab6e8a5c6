"""Statistical model: robust z-score against each device's own baseline.

The device baseline (models.features.DeviceBaseline) turns a window into robust z-scores; this
model's anomaly score is the largest |z| of the window (how many robust standard deviations the
most unusual feature is away from the device's normal), and the top contributing features are the
ones with the largest |z|. It is an sklearn-style estimator so that Beam's
SklearnModelHandlerNumpy can load and run it like the Isolation Forest.
"""
from __future__ import annotations

import numpy as np
from sklearn.base import BaseEstimator

from models.base import SklearnModel, register


class RobustZScore(BaseEstimator):
    def __init__(self, top_k: int = 1):
        self.top_k = top_k

    def fit(self, z: np.ndarray, y=None) -> "RobustZScore":
        self.n_features_in_ = z.shape[1]
        return self

    def anomaly_score(self, z: np.ndarray) -> np.ndarray:
        """Mean of the top_k largest |z| of each row (top_k=1: the largest)."""
        a = np.abs(z)
        if self.top_k <= 1:
            return a.max(axis=1).astype(np.float64)
        return np.sort(a, axis=1)[:, -self.top_k:].mean(axis=1).astype(np.float64)

    def score_samples(self, z: np.ndarray) -> np.ndarray:
        """sklearn convention: the lower, the more abnormal."""
        return -self.anomaly_score(z)

    def contributions(self, z: np.ndarray) -> np.ndarray:
        return np.abs(z)


@register
class StatisticalModel(SklearnModel):
    """Its contributions are the window's |z|: the ensemble's alerts are explained by them."""
    name = "statistical"
    explains_with_z = True

    def __init__(self, top_k: int = 1):
        super().__init__(RobustZScore(top_k=top_k))

    @classmethod
    def from_params(cls, params) -> "StatisticalModel":
        return cls(params.stat_top_k)

    def fit(self, z, devices, seed):
        self.estimator.fit(z)
        return self

    def score(self, z, devices=None):
        return self.estimator.anomaly_score(z)

    def contributions(self, z, devices=None):
        return self.estimator.contributions(z)
