"""PCA with Hotelling T² and Q (SPE): the classic multivariate monitor of industrial processes.

On the device-relative features z, a PCA keeps the ``k`` principal components that explain
``variance`` of the training windows. A window's deviation c = z - mean splits into

    T² = sum_k t_k² / lambda_k      (t = P' c: unusual *along* the normal correlation structure)
    Q  = |c - P t|²                 (the squared prediction error: the correlation is broken)

A device with at least ``min_device_windows`` training windows gets its own PCA (its own mean,
loadings and limits), every other device the fleet's. The control limits are the
``limit_quantile`` quantiles of T² and Q on each PCA's own training windows, taken out of fold
(each half scored by a PCA of the other half: a PCA fitted on a device's few windows explains
them better than it will explain new ones), so the score max(T² / T²_limit, Q / Q_limit) is about
1 at the edge of normal for every device. train calibrates the model's threshold on the same
out-of-fold scores (``calibration_scores``).

Contributions (which features drive the score): for Q the squared residual of each feature, for
T² its share c_j * sum_k P_jk t_k / lambda_k (the shares sum to T²; negative ones clipped), each
divided by its limit. A broken correlation (two sensors that normally move together moving apart,
each inside its own range) shows in Q, carried by the pair.
"""
from __future__ import annotations

import io
import json

import numpy as np

from models.base import AnomalyModel, register

PCA_FILE = "pca.bin"
_ARRAYS = ("devices", "mean", "loadings", "eigenvalues", "t2_limit", "q_limit")
MIN_EIGENVALUE = 1e-2          # z units²: a retained direction never divides by ~0
MIN_Q_LIMIT = 1e-3


def _fit_pca(z: np.ndarray, k: int):
    """mean, loadings (F x k) and eigenvalues (k) of one PCA."""
    mean = z.mean(axis=0)
    eigval, eigvec = np.linalg.eigh(np.cov(z - mean, rowvar=False))
    order = np.argsort(eigval)[::-1][:k]
    return mean, eigvec[:, order], np.maximum(eigval[order], MIN_EIGENVALUE)


def _fit_one(z: np.ndarray, k: int, quantile: float):
    """One PCA on all rows, with control limits from out-of-fold statistics (two interleaved folds,
    each scored by the PCA of the other: in-sample residuals would be optimistic, and so would the
    limits), and those out-of-fold T² and Q (already divided by the limits) for calibration."""
    t2, q = np.zeros(len(z)), np.zeros(len(z))
    folds = np.arange(len(z)) % 2
    for f in (0, 1):
        mean, p, lam = _fit_pca(z[folds != f], k)
        t2[folds == f], q[folds == f] = _statistics(z[folds == f] - mean, p, lam)[:2]
    t2_limit = max(float(np.quantile(t2, quantile)), 1e-6)
    q_limit = max(float(np.quantile(q, quantile)), MIN_Q_LIMIT)
    return (*_fit_pca(z, k), t2_limit, q_limit), np.maximum(t2 / t2_limit, q / q_limit)


def _statistics(c: np.ndarray, p: np.ndarray, lam: np.ndarray):
    t = c @ p
    e = c - t @ p.T
    return (t ** 2 / lam).sum(axis=1), (e ** 2).sum(axis=1), t, e


@register
class PCAModel(AnomalyModel):
    name = "pca"
    default = False        # opt-in: --model_names ...,pca (the default trio keeps run_local's figures)
    needs_devices = True

    def __init__(self, variance: float = 0.9, min_device_windows: int = 56, limit_quantile: float = 0.99,
                 arrays: dict | None = None):
        self.variance, self.min_device_windows, self.limit_quantile = variance, min_device_windows, limit_quantile
        self.arrays = arrays or {}
        self._calibration = np.zeros(0)

    @classmethod
    def from_params(cls, params) -> "PCAModel":
        return cls(min_device_windows=max(params.min_windows, 56))

    def fit(self, z, devices, seed):
        z = np.asarray(z, np.float64)
        n_features = z.shape[1]
        eigval = np.sort(np.linalg.eigvalsh(np.cov(z, rowvar=False)))[::-1]
        share = np.cumsum(np.maximum(eigval, 0)) / max(eigval.clip(min=0).sum(), 1e-12)
        k = int(min(np.searchsorted(share, self.variance) + 1, n_features - 1))
        ids, inverse, counts = np.unique(np.asarray(devices).astype(str), return_inverse=True, return_counts=True)
        own = np.flatnonzero(counts >= max(self.min_device_windows, 2 * (k + 2)))
        fleet, self._calibration = _fit_one(z, k, self.limit_quantile)     # the fleet's PCA, last
        fits = []
        for i in own:
            rows = inverse == i
            fit, self._calibration[rows] = _fit_one(z[rows], k, self.limit_quantile)
            fits.append(fit)
        fits.append(fleet)
        self.arrays = {"devices": ids[own].astype(str), **{
            name: np.array([f[j] for f in fits]) for j, name in enumerate(_ARRAYS[1:])}}
        return self

    def calibration_scores(self, z, devices):
        """Out-of-fold scores of the training windows (see _fit_one), not the optimistic in-sample ones."""
        return self._calibration if len(self._calibration) == len(z) else self.score(z, devices)

    def _index(self, devices: np.ndarray | None, n: int) -> np.ndarray:
        """Each row's PCA: its device's, or the fleet's (the last)."""
        known = self.arrays["devices"]
        fleet = len(known)
        if devices is None or fleet == 0:
            return np.full(n, fleet)
        ids = np.asarray(devices).astype(str)
        pos = np.minimum(np.searchsorted(known, ids), fleet - 1)
        return np.where(known[pos] == ids, pos, fleet)

    def _per_pca(self, z: np.ndarray, devices):
        """Yields (rows, T²/limit, Q/limit, T² shares/limit, Q shares/limit) per PCA used by the rows."""
        z = np.asarray(z, np.float64)
        idx = self._index(devices, len(z))
        a = self.arrays
        for u in np.unique(idx):
            rows = np.flatnonzero(idx == u)
            c = z[rows] - a["mean"][u]
            t2, q, t, e = _statistics(c, a["loadings"][u], a["eigenvalues"][u])
            t2_share = np.maximum(c * ((t / a["eigenvalues"][u]) @ a["loadings"][u].T), 0)
            yield rows, t2 / a["t2_limit"][u], q / a["q_limit"][u], t2_share / a["t2_limit"][u], e ** 2 / a["q_limit"][u]

    def statistics(self, z, devices=None) -> tuple[np.ndarray, np.ndarray]:
        """T² and Q of each row, each divided by its PCA's control limit."""
        t2, q = np.zeros(len(z)), np.zeros(len(z))
        for rows, t2_r, q_r, _, _ in self._per_pca(z, devices):
            t2[rows], q[rows] = t2_r, q_r
        return t2, q

    def score(self, z, devices=None):
        t2, q = self.statistics(z, devices)
        return np.maximum(t2, q)

    def contributions(self, z, devices=None):
        out = np.zeros(np.shape(z))
        for rows, _, _, t2_share, q_share in self._per_pca(z, devices):
            out[rows] = t2_share + q_share
        return out

    def save(self):
        header = {"variance": self.variance, "min_device_windows": self.min_device_windows,
                  "limit_quantile": self.limit_quantile}
        buf = io.BytesIO()
        buf.write((json.dumps(header, sort_keys=True) + "\n").encode())
        for name in _ARRAYS:      # npy records one after another: byte-identical for the same model
            np.lib.format.write_array(buf, np.ascontiguousarray(self.arrays[name]), allow_pickle=False)
        return {PCA_FILE: buf.getvalue()}

    @classmethod
    def load(cls, read):
        buf = io.BytesIO(read(PCA_FILE))
        header = json.loads(buf.readline())
        arrays = {name: np.lib.format.read_array(buf, allow_pickle=False) for name in _ARRAYS}
        return cls(arrays=arrays, **header)

    def fit_metrics(self):
        a = self.arrays
        return {"components": int(a["loadings"].shape[2]), "devices_with_own_pca": int(len(a["devices"]))}
