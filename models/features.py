"""Model inputs: the feature columns the models use, and each device's own baseline.

Devices differ a lot (rated current, suction pressure, setpoint...), so a fleet-wide model on raw
features mostly learns which device is which, and a slow drift of one device stays inside the
fleet's spread. Every model therefore sees *device-relative* features: the robust z-score of each
feature against the device's own training baseline,

    z = (x - median_device) / max(1.4826 * MAD_device, floor)    (1.2533 x mean |x - median| where MAD = 0)

where ``floor`` is the larger of a quarter of the fleet's typical within-device scale of that
feature (a stuck or very quiet sensor would otherwise make a tiny MAD and huge z) and the
standard deviation of quantisation (step / sqrt(12)), the step being the feature's measurement
step from its sensor's resolution (``resolution_floors``; a quantised feature has a MAD of 0 on
every device and across the fleet) or, when coarser, the smallest step between the feature's
distinct training values (a sensor coarser than its declared resolution).
A device with fewer than ``min_windows`` training windows keeps its own median when it has at least
``MIN_CENTER_WINDOWS`` (a level is estimated from a few windows, a spread is not) and takes the
typical within-device scale: the median of the well-observed devices' scales or, when no device
has ``min_windows``, the spread of every device's windows around its own median, pooled. A short
test-bench run (SKAB-like, 20 windows of training each) is then judged against its own level, not
against the fleet's, whose spread is mostly the differences between devices. Only a device with
fewer windows than that falls back to the fleet baseline (median and scale over all windows).

Readings flagged BAD or SUSPECT (an overload beyond the valid range, a stuck sensor) are left out of
the GOOD statistics, so the models also see each sensor's quality columns (issue 14 item 6), each
with a transform (``matrix``) and a scale floor of its own (``input_floors``): most devices have none
of them in any training window, and a floor from the data would then collapse:

  * ``all_max`` / ``all_min`` (extremes of readings of any quality) as the excess beyond the sensor's
    valid range, max(all_max - valid_max, 0) and max(valid_min - all_min, 0): 0 for every reading in
    range (so they do not repeat ``min``/``max``), the size of an overload otherwise; floor
    ``RANGE_EXCESS_FLOOR`` x the valid range's span;
  * ``bad_count`` / ``suspect_count`` as log2(1 + count) (a doubling of the count is one unit, so a
    device sampled every second is not swamped by its counts); floor ``COUNT_FLOOR`` (>= 1).

Missing values
(a sensor without readings in a window) become z = 0 (no evidence), and z is clipped to +-clip.
"""
from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from core.windows import MODEL_WINDOW, parse_window_size
from schemas.contracts import CROSS_FEATURES
from schemas.sensors import SENSOR_TYPES, SENSORS

MODEL_STATS = ("mean", "std", "min", "max", "slope")
QUALITY_MODEL_STATS = ("all_min", "all_max", "bad_count", "suspect_count")
COUNT_STATS = ("bad_count", "suspect_count")
MODEL_FEATURES: tuple[str, ...] = tuple(f"{s}_{stat}" for s in SENSOR_TYPES for stat in MODEL_STATS) + \
    tuple(CROSS_FEATURES) + tuple(f"{s}_{stat}" for s in SENSOR_TYPES for stat in QUALITY_MODEL_STATS)
# the count features: a model sees log2(1 + count), scaled by at least COUNT_FLOOR (one doubling)
COUNT_FEATURES: frozenset[str] = frozenset(f"{s}_{stat}" for s in SENSOR_TYPES for stat in COUNT_STATS)
COUNT_FLOOR = 1.0
# the extremes of all readings: a model sees their excess beyond the valid range, scaled by at least
# this share of the range's span (vibration 0 .. 50 mm/s: 0.5 mm/s)
RANGE_EXCESS: dict[str, tuple[str, str]] = {f"{s}_{stat}": (s, stat) for s in SENSOR_TYPES
                                            for stat in ("all_min", "all_max")}
RANGE_EXCESS_FLOOR = 0.01
MAD_TO_SIGMA = 1.4826
MEANAD_TO_SIGMA = 1.2533                # sqrt(pi / 2): mean absolute deviation -> sigma of a normal
QUANTISATION_SIGMA = 12 ** -0.5         # the standard deviation of rounding to a step, in steps
BASELINE_FILE = "baseline.parquet"      # the baseline's file in every model version
MIN_CENTER_WINDOWS = 4                  # training windows from which a device's own median is used
# the sensors each cross feature is computed from (transforms/features.py), and how their
# resolution propagates: "relative" (ratios, products) or "absolute" (a difference in the first
# sensor's unit)
CROSS_FEATURE_SENSORS: dict[str, tuple[str, tuple[str, ...]]] = {
    "pressure_ratio": ("relative", ("discharge_pressure", "suction_pressure")),
    "current_per_lift": ("relative", ("compressor_current", "discharge_pressure", "suction_pressure")),
    "superheat_proxy": ("absolute", ("temperature",)),
}


def resolution_floors(columns, fleet_median: np.ndarray, window_s: float) -> np.ndarray:
    """Per feature, the smallest spread its sensors can resolve (never 0): one resolution step for a
    sensor's level and spread statistics, one step per window for its slope (per minute); a cross
    feature propagates its sensors' relative resolution (step / typical level, the level being the
    fleet median of the sensor's mean, or half its valid range when unknown)."""
    med = dict(zip(columns, np.abs(np.nan_to_num(fleet_median))))

    def level(sensor: str) -> float:
        spec = SENSORS[sensor]
        return med.get(f"{sensor}_mean") or (spec.valid_max - spec.valid_min) / 2

    out = np.empty(len(columns))
    for j, c in enumerate(columns):
        if c in CROSS_FEATURE_SENSORS:
            how, sensors = CROSS_FEATURE_SENSORS[c]
            rel = sum(SENSORS[s].resolution / max(level(s), SENSORS[s].resolution) for s in sensors)
            out[j] = SENSORS[sensors[0]].resolution if how == "absolute" else rel * max(med[c], rel)
            continue
        sensor, stat = sensor_stat(c)
        if stat in COUNT_STATS:
            out[j] = 1.0             # 0 -> 1 reading is one step of log2(1 + count)
            continue
        res = SENSORS[sensor].resolution
        out[j] = res / (window_s / 60.0) if stat == "slope" else res
    return out


def sensor_stat(column: str) -> tuple[str, str]:
    """A per-sensor feature's (sensor, statistic): ``vibration_all_max`` -> ("vibration", "all_max")."""
    for sensor in SENSORS:
        if column.startswith(sensor + "_"):
            return sensor, column[len(sensor) + 1:]
    raise ValueError(f"feature {column!r}: no sensor to take its resolution from")


def input_floors(columns) -> np.ndarray:
    """Per feature, the scale floor of its own a quality feature has (module doc), 0 for the others."""
    def floor(c: str) -> float:
        if c in COUNT_FEATURES:
            return COUNT_FLOOR
        if c in RANGE_EXCESS:
            spec = SENSORS[RANGE_EXCESS[c][0]]
            return RANGE_EXCESS_FLOOR * (spec.valid_max - spec.valid_min)
        return 0.0
    return np.array([floor(c) for c in columns])


def model_input(column: str, values: np.ndarray) -> np.ndarray:
    """A feature column as the models see it: the quality columns transformed (module doc)."""
    if column in COUNT_FEATURES:
        return np.log2(1.0 + np.maximum(values, 0.0))
    if column in RANGE_EXCESS:
        spec = SENSORS[RANGE_EXCESS[column][0]]
        excess = values - spec.valid_max if RANGE_EXCESS[column][1] == "all_max" else spec.valid_min - values
        return np.maximum(excess, 0.0)      # NaN (no reading) stays NaN
    return values


def robust_location_spread(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per column: median and robust sigma, 1.4826 x MAD, or, where more than half the values tie
    (MAD = 0, a quantised feature), 1.2533 x the mean absolute deviation from the median (the
    modified z-score's rule), so a spread of a few steps around a dominant value is kept."""
    m = np.nanmedian(rows, axis=0)
    dev = np.abs(rows - m)
    mad = np.nanmedian(dev, axis=0)
    return m, np.where(mad > 0, MAD_TO_SIGMA * mad, MEANAD_TO_SIGMA * np.nanmean(dev, axis=0))


def observed_steps(x: np.ndarray) -> np.ndarray:
    """Per column, the smallest gap between distinct finite values (0 with fewer than two)."""
    out = np.zeros(x.shape[1])
    for j in range(x.shape[1]):
        v = np.unique(x[:, j][np.isfinite(x[:, j])])
        if len(v) > 1:
            out[j] = np.diff(v).min()
    return out


def matrix(table: pa.Table, columns=MODEL_FEATURES) -> np.ndarray:
    """The feature columns as a float64 matrix (NaN where null), as the models see them (``model_input``)."""
    if table.num_rows == 0:
        return np.zeros((0, len(columns)))

    def column(c: str) -> np.ndarray:
        if c not in table.column_names:
            return np.full(table.num_rows, np.nan)
        v = table[c].cast(pa.float64()).combine_chunks().to_numpy(zero_copy_only=False).astype(np.float64)
        return model_input(c, v)
    return np.column_stack([column(c) for c in columns])


@dataclass
class DeviceBaseline:
    columns: tuple[str, ...]
    devices: np.ndarray            # device ids, sorted
    median: np.ndarray             # devices x features
    scale: np.ndarray              # devices x features (already floored)
    fleet_median: np.ndarray       # features
    fleet_scale: np.ndarray        # features
    clip: float = 20.0

    @classmethod
    def fit(cls, device_ids: np.ndarray, x: np.ndarray, columns=MODEL_FEATURES, min_windows: int = 24,
            clip: float = 20.0, floor_fraction: float = 0.25,
            window_s: float = float(parse_window_size(MODEL_WINDOW).seconds)) -> "DeviceBaseline":
        device_ids = np.asarray(device_ids, dtype=object)
        devices, inverse = np.unique(device_ids.astype(str), return_inverse=True)
        med = np.full((len(devices), x.shape[1]), np.nan)
        spread = np.full((len(devices), x.shape[1]), np.nan)
        counts = np.bincount(inverse, minlength=len(devices))
        order = np.argsort(inverse, kind="stable")
        bounds = np.r_[0, np.cumsum(counts)]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)      # all-NaN columns (a sensor never seen)
            for i in range(len(devices)):
                rows = x[order[bounds[i]:bounds[i + 1]]]
                if len(rows) >= min_windows:
                    med[i], spread[i] = robust_location_spread(rows)
                elif len(rows) >= MIN_CENTER_WINDOWS:
                    med[i] = np.nanmedian(rows, axis=0)
            fleet_median, fleet_scale = robust_location_spread(x)
            fleet_median = np.nan_to_num(fleet_median)
            typical = np.nanmedian(spread, axis=0)      # typical within-device scale
            pooled = robust_location_spread(x - med[inverse])[1]   # around each device's own median
        typical = np.where(np.isfinite(typical) & (typical > 0), typical,
                           np.where(np.isfinite(pooled) & (pooled > 0), pooled, np.nan_to_num(fleet_scale)))
        steps = np.maximum(observed_steps(x), resolution_floors(columns, fleet_median, window_s))
        floor = np.maximum(np.maximum(floor_fraction * typical, QUANTISATION_SIGMA * steps), input_floors(columns))
        fleet_scale = np.maximum(np.nan_to_num(fleet_scale), floor)
        scale = np.maximum(np.where(np.isfinite(spread), spread, typical), floor)
        known = np.isfinite(med)
        med = np.where(known, med, fleet_median)
        scale = np.where(known & np.isfinite(scale), scale, fleet_scale)
        return cls(tuple(columns), devices, med, scale, fleet_median, fleet_scale, clip)

    def _rows(self, device_ids: np.ndarray) -> np.ndarray:
        """Index of each device in the baseline, -1 for devices it does not know."""
        ids = np.asarray(device_ids).astype(str)
        pos = np.searchsorted(self.devices, ids)
        pos = np.minimum(pos, max(len(self.devices) - 1, 0))
        found = (len(self.devices) > 0) & (self.devices[pos] == ids) if len(self.devices) else np.zeros(len(ids), bool)
        return np.where(found, pos, -1)

    def transform(self, device_ids: np.ndarray, x: np.ndarray) -> np.ndarray:
        rows = self._rows(device_ids)
        med = np.where((rows >= 0)[:, None], self.median[np.maximum(rows, 0)], self.fleet_median)
        scale = np.where((rows >= 0)[:, None], self.scale[np.maximum(rows, 0)], self.fleet_scale)
        z = (x - med) / scale
        return np.clip(np.nan_to_num(z, nan=0.0, posinf=self.clip, neginf=-self.clip),
                       -self.clip, self.clip).astype(np.float32)

    def known(self, device_ids: np.ndarray) -> np.ndarray:
        return self._rows(device_ids) >= 0

    # persistence: one Parquet file (device rows + a fleet row with device_id null)
    def to_bytes(self) -> bytes:
        n = len(self.devices)
        cols = {"device_id": pa.array(list(self.devices) + [None], pa.string())}
        for j, c in enumerate(self.columns):
            cols[f"median__{c}"] = pa.array(np.r_[self.median[:, j], self.fleet_median[j]], pa.float64())
            cols[f"scale__{c}"] = pa.array(np.r_[self.scale[:, j], self.fleet_scale[j]], pa.float64())
        table = pa.table(cols).replace_schema_metadata({"clip": str(self.clip), "devices": str(n)})
        buf = io.BytesIO()
        pq.write_table(table, buf, compression="zstd")
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, payload: bytes) -> "DeviceBaseline":
        table = pq.read_table(io.BytesIO(payload))
        columns = tuple(c[len("median__"):] for c in table.column_names if c.startswith("median__"))
        med = np.column_stack([table[f"median__{c}"].to_numpy() for c in columns])
        scale = np.column_stack([table[f"scale__{c}"].to_numpy() for c in columns])
        ids = table["device_id"].to_pylist()
        clip = float(table.schema.metadata[b"clip"])
        return cls(columns, np.array(ids[:-1], dtype=str), med[:-1], scale[:-1], med[-1], scale[-1], clip)


def top_features(contrib: np.ndarray, columns=MODEL_FEATURES, k: int = 3) -> list[list[str]]:
    """Names of the k largest contributions of each row (descending)."""
    if contrib.shape[0] == 0:
        return []
    idx = np.argsort(-contrib, axis=1, kind="stable")[:, :k]
    names = np.asarray(columns, dtype=object)
    return [list(names[r]) for r in idx]
