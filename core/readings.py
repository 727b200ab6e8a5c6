"""Reading-level conversions shared by the streaming rules and their warm start (no Beam import):
a reading's value in its sensor's canonical unit, and whether it is inside the sensor's valid range."""
from __future__ import annotations

import numpy as np
import pyarrow as pa

from core.arrays import to_numpy
from schemas.sensors import SENSORS


def canonical_values(sensor: pa.Array, unit: pa.Array, value: pa.Array) -> np.ndarray:
    """Values converted to their sensor's canonical unit (decode guarantees the unit is known)."""
    sensor_np = np.asarray(to_numpy(sensor), dtype=object)
    unit_np = np.asarray(to_numpy(unit), dtype=object)
    out = np.asarray(to_numpy(value), dtype=np.float64).copy()
    for name, spec in SENSORS.items():
        is_sensor = sensor_np == name
        for u, (scale, offset) in spec.conversions.items():
            if (scale, offset) != (1.0, 0.0):
                m = is_sensor & (unit_np == u)
                out[m] = out[m] * scale + offset
    return out


def in_range(sensor: pa.Array, value: np.ndarray) -> np.ndarray:
    sensor_np = np.asarray(to_numpy(sensor), dtype=object)
    ok = np.zeros(len(value), bool)
    for name, spec in SENSORS.items():
        m = sensor_np == name
        ok[m] = (value[m] >= spec.valid_min) & (value[m] <= spec.valid_max)
    return ok
