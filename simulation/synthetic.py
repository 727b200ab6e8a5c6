"""Feature windows straight from the fleet simulator's signal model (test fixtures, benchmarks).

This bypasses landing -> cleanse -> features: it evaluates the simulator's canonical signals
(healthy behaviour plus the injected failure modes, no data faults) on its sampling grid and
aggregates them per device and window into the FEATURES contract. Unit tests of the models use it
to get labelled windows in seconds; the end-to-end quality report uses the real pipelines.
"""
from __future__ import annotations

import datetime as dt

import numpy as np
import pyarrow as pa

from simulation import fleet as fleet_mod
from simulation import generator
from simulation.incidents import PlanConfig, plan_incidents
from schemas import contracts
from schemas.sensors import SENSOR_TYPES
from core.windows import MODEL_WINDOW, parse_window_size


def features(devices, incidents, start: dt.datetime, end: dt.datetime, interval_s: float, seed: int,
             window_size: str = MODEL_WINDOW, computed_at: dt.datetime | None = None) -> pa.Table:
    size = parse_window_size(window_size)
    w = size.seconds
    grid = generator.sampling_grid(devices, start, end, interval_s)
    values = generator.normal_values(devices, grid, seed)
    generator.apply_failures(values, devices, grid, incidents, seed)
    n_windows = int(np.ceil((end - start).total_seconds() / w))
    win = np.floor((grid.t - start.timestamp()) / w).astype(np.int64)
    key = grid.device * n_windows + win
    uniq, first = np.unique(key, return_index=True)
    counts = np.diff(np.r_[first, len(key)])
    idx = np.repeat(np.arange(len(uniq)), counts)
    t_min = (grid.t - start.timestamp()) / 60.0
    cols: dict[str, np.ndarray] = {}
    for s in SENSOR_TYPES:
        v = values[s]
        n = counts.astype(np.float64)
        mean = np.bincount(idx, v) / n
        var = np.maximum(np.bincount(idx, v * v) / n - mean ** 2, 0)
        tm = np.bincount(idx, t_min) / n
        cov = np.bincount(idx, t_min * v) / n - tm * mean
        vt = np.bincount(idx, t_min * t_min) / n - tm ** 2
        cols[f"{s}_mean"] = mean
        cols[f"{s}_std"] = np.sqrt(var * n / np.maximum(n - 1, 1))
        cols[f"{s}_min"] = np.minimum.reduceat(v, first)
        cols[f"{s}_max"] = np.maximum.reduceat(v, first)
        cols[f"{s}_last"] = v[np.r_[first[1:], len(v)] - 1]
        cols[f"{s}_slope"] = np.where(vt > 0, cov / np.where(vt > 0, vt, 1), 0.0)
        cols[f"{s}_count"] = counts.astype(np.int64)
        cols[f"{s}_missing_ratio"] = np.clip(1 - counts / (w / interval_s), 0, 1)
        # no data faults here: every reading is GOOD
        cols[f"{s}_all_min"], cols[f"{s}_all_max"] = cols[f"{s}_min"], cols[f"{s}_max"]
        cols[f"{s}_bad_count"] = cols[f"{s}_suspect_count"] = np.zeros(len(uniq), np.int64)
    cols["pressure_ratio"] = cols["discharge_pressure_mean"] / cols["suction_pressure_mean"]
    cols["current_per_lift"] = cols["compressor_current_mean"] / (
        cols["discharge_pressure_mean"] - cols["suction_pressure_mean"])
    cols["superheat_proxy"] = cols["temperature_mean"] - 0.02 * cols["suction_pressure_mean"]
    dev = uniq // n_windows
    ws = start.timestamp() + (uniq % n_windows) * w
    starts = pa.array((ws * 1e6).astype(np.int64)).cast(contracts.UTC_TS)
    ends = pa.array(((ws + w) * 1e6).astype(np.int64)).cast(contracts.UTC_TS)
    n = len(uniq)
    data = {"device_id": pa.array([devices[i].device_id for i in dev], pa.string()),
            "window_size": pa.array([size.label] * n, pa.string()),
            "window_start": starts, "window_end": ends}
    data.update({c: pa.array(cols[c]) for c in contracts.feature_columns()})
    data["computed_at"] = pa.array([computed_at or end] * n, contracts.UTC_TS)
    data["date"] = starts.cast(pa.date32())
    return pa.table(data).cast(contracts.FEATURES)


def fleet_features(n_devices: int, start: dt.datetime, days: float, seed: int = 7, interval_s: float = 60.0,
                   window_size: str = MODEL_WINDOW, gradual_fraction: float = 0.05, acute_fraction: float = 0.05,
                   healthy_days: float = 0.0):
    """(features, incidents as ground-truth dicts) of a simulated fleet with failures, no data faults.
    Failures are placed after the first ``healthy_days`` (a healthy history to train on)."""
    devices = fleet_mod.make_fleet(n_devices, seed)
    end = start + dt.timedelta(days=days)
    plan = PlanConfig(acute_fraction=acute_fraction, gradual_fraction=gradual_fraction, data_faults=())
    incidents = plan_incidents(devices, start + dt.timedelta(days=healthy_days), end, seed, interval_s, plan)
    active = [d for d in devices if d.active]
    return features(active, incidents, start, end, interval_s, seed, window_size), \
        [i.to_json() for i in incidents if i.kind == "failure"]
