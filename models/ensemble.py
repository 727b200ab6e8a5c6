"""The ensemble's rule and the severity of model alerts.

Each model's score is divided by its own calibrated threshold (r = score / threshold, so r >= 1
means "this model flags the window", like a ThresholdFn of Beam's ml.anomaly per model). The
ensemble is a "k of n" vote (the AggregationFn): its score is the k-th largest ratio of a window,

    ensemble >= 1            <=> at least k of the n models flag the window            -> WARNING
    ensemble >= high_factor  <=> at least k models are at high_factor x their threshold -> HIGH

k is explicit, so adding or removing a model does not silently change the rule; with the three
default models and k = 2 it is the median (2 of 3): one model's idiosyncratic false alarms stay
out while any two independent views agreeing is enough. The ensemble threshold is therefore 1.0.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from models import base

ENSEMBLE = "ensemble"
DEFAULT_HIGH_FACTOR = 2.0


@dataclass(frozen=True)
class KOfN:
    """A window is anomalous when at least ``k`` of the models' score/threshold ratios are >= 1."""
    k: int = 2

    def __post_init__(self):
        if self.k < 1:
            raise ValueError(f"a k-of-n vote needs k >= 1, got {self.k}")

    def aggregate(self, ratios: np.ndarray) -> np.ndarray:
        """rows x models ratios -> the k-th largest ratio of each row."""
        n = ratios.shape[1]
        if n < self.k:
            raise ValueError(f"a {self.k}-of-n vote needs at least {self.k} models, got {n}")
        return -np.partition(-ratios, self.k - 1, axis=1)[:, self.k - 1]

    def describe(self, n: int) -> str:
        return f"{self.k} of {n}"


DEFAULT_VOTE = KOfN(2)


def ratios(scores: dict[str, np.ndarray], thresholds: dict[str, float]) -> np.ndarray:
    """rows x models (sorted by name) of score / threshold."""
    return np.column_stack([scores[m] / thresholds[m] for m in sorted(scores)])


def combine(scores: dict[str, np.ndarray], thresholds: dict[str, float], vote: KOfN = DEFAULT_VOTE) -> np.ndarray:
    return vote.aggregate(ratios(scores, thresholds))


def severity(ensemble_score: np.ndarray, high_factor: float = DEFAULT_HIGH_FACTOR) -> np.ndarray:
    """'HIGH' | 'WARNING' | '' per row."""
    out = np.full(len(ensemble_score), "", dtype=object)
    out[ensemble_score >= 1.0] = "WARNING"
    out[ensemble_score >= high_factor] = "HIGH"
    return out


def __getattr__(name: str):
    # MODELS: the models trained and scored by default, from the catalog (models/base.py); resolved
    # on access so that importing this module does not import every model
    if name == "MODELS":
        return base.default_names()
    raise AttributeError(name)
