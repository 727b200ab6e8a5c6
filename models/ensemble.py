"""Ensemble of the three models and the severity of model alerts.

Each model's score is divided by its own calibrated threshold (r = score / threshold, so r >= 1
means "this model flags the window"). The ensemble score is the median of the three ratios:

    ensemble >= 1            <=> at least two of the three models flag the window  -> WARNING
    ensemble >= high_factor  <=> at least two models are at high_factor x their threshold -> HIGH

A median (2-of-3 vote) keeps one model's idiosyncratic false alarms out while any two
independent views agreeing is enough. The ensemble threshold is therefore 1.0.
"""
from __future__ import annotations

import numpy as np

MODELS = ("isolation_forest", "autoencoder", "statistical")
ENSEMBLE = "ensemble"
DEFAULT_HIGH_FACTOR = 2.0


def combine(scores: dict[str, np.ndarray], thresholds: dict[str, float]) -> np.ndarray:
    ratios = np.column_stack([scores[m] / thresholds[m] for m in sorted(scores)])
    return np.median(ratios, axis=1)


def severity(ensemble_score: np.ndarray, high_factor: float = DEFAULT_HIGH_FACTOR) -> np.ndarray:
    """'HIGH' | 'WARNING' | '' per row."""
    out = np.full(len(ensemble_score), "", dtype=object)
    out[ensemble_score >= 1.0] = "WARNING"
    out[ensemble_score >= high_factor] = "HIGH"
    return out
