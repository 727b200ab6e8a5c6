"""DESIGN section 4: sensor types, canonical units, accepted units and valid ranges.

Every accepted unit converts to the canonical one by an affine map
``canonical = value * scale + offset``, so conversion vectorises over whole columns.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class SensorSpec:
    canonical_unit: str
    valid_min: float
    valid_max: float
    # unit -> (scale, offset); the canonical unit maps to (1, 0).
    conversions: dict[str, tuple[float, float]] = field(default_factory=dict)
    # The smallest step a typical sensor of this type reports, in the canonical unit. It floors
    # every spread a model divides by (a quantised feature has a within-device spread of 0) and
    # tells a stuck sensor from a steady quantised one.
    resolution: float = 0.01

    @property
    def units(self) -> tuple[str, ...]:
        return tuple(self.conversions)


SENSORS: dict[str, SensorSpec] = {
    "compressor_current": SensorSpec("A", 0.0, 100.0, {"A": (1.0, 0.0), "mA": (0.001, 0.0)}, 0.1),
    "suction_pressure": SensorSpec(
        "kPa", 0.0, 1500.0, {"kPa": (1.0, 0.0), "bar": (100.0, 0.0), "psi": (6.894757293168, 0.0)}, 1.0),
    "discharge_pressure": SensorSpec(
        "kPa", 0.0, 4000.0, {"kPa": (1.0, 0.0), "bar": (100.0, 0.0), "psi": (6.894757293168, 0.0)}, 1.0),
    "vibration": SensorSpec("mm/s", 0.0, 50.0, {"mm/s": (1.0, 0.0), "in/s": (25.4, 0.0)}, 0.01),
    "temperature": SensorSpec(
        "C", -60.0, 80.0, {"C": (1.0, 0.0), "F": (5.0 / 9.0, -160.0 / 9.0), "K": (1.0, -273.15)}, 0.1),
}

SENSOR_TYPES: tuple[str, ...] = tuple(SENSORS)
ALL_UNITS: tuple[str, ...] = tuple(sorted({u for s in SENSORS.values() for u in s.units}))


def to_canonical(sensor_type: str, value: float, unit: str | None) -> float:
    """Converts one value to the sensor's canonical unit (``None`` means canonical already)."""
    spec = SENSORS[sensor_type]
    scale, offset = spec.conversions[unit or spec.canonical_unit]
    return value * scale + offset


def from_canonical(sensor_type: str, value: float, unit: str) -> float:
    """The inverse of :func:`to_canonical`; the simulator uses it to emit mixed units."""
    scale, offset = SENSORS[sensor_type].conversions[unit]
    return (value - offset) / scale
