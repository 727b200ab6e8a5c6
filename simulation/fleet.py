"""The simulated fleet: devices, their registry rows and their hidden physical parameters."""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from schemas import contracts

# Device models: what the cabinet holds and how hard the compressor works.
MODELS = {
    "CX-200": {"setpoint_c": 3.0, "suction_kpa": (320.0, 380.0), "rated_a": (12.0, 20.0)},
    "CX-300": {"setpoint_c": 4.0, "suction_kpa": (300.0, 360.0), "rated_a": (20.0, 32.0)},
    "FZ-500": {"setpoint_c": -20.0, "suction_kpa": (240.0, 290.0), "rated_a": (25.0, 40.0)},
}
TIMEZONES = ("Europe/Berlin", "Europe/London", "America/New_York", "America/Chicago",
             "Asia/Tokyo", "Australia/Sydney", "UTC")
TS_FORMS = ("iso_offset", "iso_local", "epoch_ms")


@dataclass(frozen=True)
class Device:
    index: int
    device_id: str
    site_id: str
    model: str
    timezone: str
    rated_current_a: float
    commissioned_at: dt.datetime
    active: bool
    # hidden physics
    suction_kpa: float
    compression_ratio: float
    vibration_mm_s: float
    setpoint_c: float
    phase_s: float               # offset of this device's sampling grid
    ts_form: str                 # how this device writes `ts`
    units: tuple[tuple[str, str], ...] = ()   # (sensor_type, unit) overrides: mixed units
    window: tuple[dt.datetime, dt.datetime] | None = None   # reports only in [from, to) (test bench)


def make_fleet(n_devices: int, seed: int, devices_per_site: int = 10,
               inactive_fraction: float = 0.02, mixed_unit_fraction: float = 0.1,
               ts_form_weights: tuple[float, float, float] = (0.7, 0.2, 0.1)) -> list[Device]:
    rng = np.random.default_rng([seed, 1])
    models = list(MODELS)
    fleet = []
    for i in range(n_devices):
        model = models[rng.integers(len(models))]
        spec = MODELS[model]
        units: tuple[tuple[str, str], ...] = ()
        if rng.random() < mixed_unit_fraction:
            units = (("suction_pressure", "psi"), ("discharge_pressure", "bar"),
                     ("temperature", "F"), ("vibration", "in/s"), ("compressor_current", "mA"))
            units = units[: int(rng.integers(1, len(units) + 1))]
        fleet.append(Device(
            index=i,
            device_id=f"dev-{i:05d}",
            site_id=f"site-{i // devices_per_site:04d}",
            model=model,
            timezone=TIMEZONES[rng.integers(len(TIMEZONES))],
            rated_current_a=round(float(rng.uniform(*spec["rated_a"])), 1),
            commissioned_at=dt.datetime(2023, 1, 1, tzinfo=dt.timezone.utc)
            + dt.timedelta(days=int(rng.integers(0, 700))),
            active=bool(rng.random() >= inactive_fraction),
            suction_kpa=float(rng.uniform(*spec["suction_kpa"])),
            compression_ratio=float(rng.uniform(3.8, 4.6)),
            vibration_mm_s=float(rng.uniform(1.5, 3.5)),
            setpoint_c=spec["setpoint_c"] + float(rng.normal(0, 0.5)),
            phase_s=float(rng.uniform(0, 1)),
            ts_form=TS_FORMS[rng.choice(len(TS_FORMS), p=ts_form_weights)],
            units=units,
        ))
    return fleet


def registry_table(fleet: list[Device]) -> pa.Table:
    return pa.table({
        "device_id": [d.device_id for d in fleet],
        "site_id": [d.site_id for d in fleet],
        "model": [d.model for d in fleet],
        "timezone": [d.timezone for d in fleet],
        "rated_current_a": [d.rated_current_a for d in fleet],
        "commissioned_at": pa.array([d.commissioned_at for d in fleet], contracts.UTC_TS),
        "active": [d.active for d in fleet],
    }, schema=contracts.DEVICES)
