"""Labelled incidents: failure modes of the compressors and faults of the data.

The plan is drawn once per run from the seed; the generator applies it and the ground-truth
file records it, so detection quality can be measured against what was injected.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
from dataclasses import dataclass, field

import numpy as np

from simulation.fleet import Device

# acute failure mode -> (the acute rule it should trigger, sensor, duration)
ACUTE_MODES = {
    "current_spike": ("CURRENT_SPIKE", "compressor_current", dt.timedelta(seconds=90)),
    "pressure_drop": ("PRESSURE_DROP", "suction_pressure", dt.timedelta(minutes=10)),
    "vibration_surge": ("VIBRATION_SURGE", "vibration", dt.timedelta(minutes=5)),
    "cooling_loss": ("COOLING_LOSS", "temperature", dt.timedelta(minutes=12)),
}
# gradual mode -> (main sensor, the acute mode it turns into at its end)
GRADUAL_MODES = {
    "bearing_wear": ("vibration", "vibration_surge"),
    "condenser_fouling": ("discharge_pressure", "current_spike"),
    "slow_refrigerant_leak": ("suction_pressure", "pressure_drop"),
}
# data faults that reach the lake (and the stream)
DATA_FAULTS = ("stuck_value", "dropout", "duplicates", "replay", "out_of_range",
               "unknown_device", "inactive_device", "mixed_units", "time_forms")
# data faults that only exist on the wire: each is dead-lettered with this reason
WIRE_FAULTS = {
    "bad_json": "invalid_json",
    "missing_field": "missing_field",
    "wrong_type": "wrong_type",
    "non_finite": "non_finite_value",
    "unknown_sensor_type": "unknown_sensor_type",
    "invalid_device_id": "invalid_device_id",
    "oversized_reading": "oversized_reading",
    "oversized_batch": "oversized_batch",
    "oversized_message": "oversized_message",
}
WARMUP = dt.timedelta(minutes=65)   # VIBRATION_SURGE needs 1 hour of history first
# duplicates and out-of-range values cover five sampling steps, but at least this long: at 1 s
# sampling five steps would be a 5 s blip (50 s is five steps of the stream's 10 s default, so every
# interval of 10 s or more, the default 60 s included, plans exactly as before)
MIN_ROW_FAULT = dt.timedelta(seconds=50)


@dataclass
class Incident:
    kind: str                    # failure | data_fault
    mode: str
    device_id: str
    device_index: int
    start: dt.datetime
    end: dt.datetime
    sensor: str | None = None
    expected_rule: str | None = None       # the acute rule that must fire, if any
    category: str | None = None            # acute | gradual, for failures
    detail: dict = field(default_factory=dict)
    event_ids: list[str] = field(default_factory=list)   # rows touched, for row-level faults

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        d["start"] = self.start.isoformat()
        d["end"] = self.end.isoformat()
        d.pop("device_index")
        return d


@dataclass(frozen=True)
class PlanConfig:
    acute_fraction: float = 0.04       # share of devices per acute mode (at least one each)
    gradual_fraction: float = 0.03     # share of devices per gradual mode (spans >= 1 day only)
    fault_fraction: float = 0.02       # share of devices per data fault
    unknown_devices: int = 2
    acute_modes: tuple[str, ...] = tuple(ACUTE_MODES)
    gradual_modes: tuple[str, ...] = tuple(GRADUAL_MODES)
    data_faults: tuple[str, ...] = ("stuck_value", "dropout", "duplicates", "replay", "out_of_range",
                                    "unknown_device")
    warmup: dt.timedelta = WARMUP      # no failure starts earlier in the span


def _count(fraction: float, n: int) -> int:
    return max(1, int(round(fraction * n)))


def plan_incidents(fleet: list[Device], start: dt.datetime, end: dt.datetime, seed: int, interval_s: float,
                   config: PlanConfig = PlanConfig()) -> list[Incident]:
    """Draws which devices fail how and when in [start, end). One failure per device at most.

    Row-level faults cover a time window (five sampling steps, at least MIN_ROW_FAULT, for duplicates
    and out-of-range values), so the rows they touch do not depend on how the span is cut into chunks."""
    rng = np.random.default_rng([seed, 2])
    span = end - start
    free = list(rng.permutation([d.index for d in fleet]))   # devices without a failure yet
    by_index = {d.index: d for d in fleet}
    incidents: list[Incident] = []

    def at(lo: dt.datetime, hi: dt.datetime) -> dt.datetime:
        secs = max(0.0, (hi - lo).total_seconds())
        return lo + dt.timedelta(seconds=round(float(rng.uniform(0, secs))))

    def acute(device: Device, mode: str, when: dt.datetime, category: str = "acute") -> Incident:
        rule, sensor, duration = ACUTE_MODES[mode]
        return Incident("failure", mode, device.device_id, device.index, when, when + duration,
                        sensor=sensor, expected_rule=rule, category=category)

    if span >= dt.timedelta(days=1):
        for mode in config.gradual_modes:
            sensor, turns_into = GRADUAL_MODES[mode]
            for _ in range(_count(config.gradual_fraction, len(fleet))):
                if not free:
                    break
                device = by_index[free.pop()]
                length = min(dt.timedelta(days=5), span * 0.6)
                s = at(start + config.warmup, end - length - dt.timedelta(minutes=20))
                incidents.append(Incident("failure", mode, device.device_id, device.index, s, s + length,
                                          sensor=sensor, category="gradual",
                                          detail={"turns_into": turns_into}))
                incidents.append(acute(device, turns_into, s + length, category="acute_after_gradual"))
    if span >= config.warmup + dt.timedelta(minutes=20):
        for mode in config.acute_modes:
            duration = ACUTE_MODES[mode][2]
            for _ in range(_count(config.acute_fraction, len(fleet))):
                if not free:
                    break
                device = by_index[free.pop()]
                when = at(start + config.warmup, end - duration - dt.timedelta(minutes=5))
                incidents.append(acute(device, mode, when))
    for fault in config.data_faults:
        if fault == "unknown_device":
            continue
        for _ in range(_count(config.fault_fraction, len(fleet))):
            device = fleet[int(rng.integers(len(fleet)))]
            length = {"stuck_value": span * 0.1, "dropout": span * 0.05, "replay": span * 0.05}.get(
                fault, max(dt.timedelta(seconds=5 * interval_s), MIN_ROW_FAULT))
            s = at(start, end - length - span * 0.2)
            inc = Incident("data_fault", fault, device.device_id, device.index, s, s + length)
            if fault == "stuck_value":
                inc.sensor = ("temperature", "vibration", "suction_pressure")[int(rng.integers(3))]
            elif fault == "replay":
                inc.detail = {"replayed_at": at(inc.end, end - span * 0.05).isoformat()}
            elif fault == "out_of_range":
                inc.sensor = ("vibration", "temperature", "discharge_pressure")[int(rng.integers(3))]
            incidents.append(inc)
    for device in fleet:
        if not device.active:
            incidents.append(Incident("data_fault", "inactive_device", device.device_id, device.index, start, end))
        if device.units:
            incidents.append(Incident("data_fault", "mixed_units", device.device_id, device.index, start, end,
                                      detail={"units": dict(device.units)}))
        if device.ts_form != "iso_offset":
            incidents.append(Incident("data_fault", "time_forms", device.device_id, device.index, start, end,
                                      detail={"ts_form": device.ts_form, "timezone": device.timezone}))
    return incidents


def unknown_devices(fleet: list[Device], count: int, seed: int) -> list[Device]:
    """Devices that send readings but are not in the registry."""
    rng = np.random.default_rng([seed, 3])
    template = fleet[: max(1, count)]
    return [dataclasses.replace(template[i % len(template)], index=len(fleet) + i,
                                device_id=f"dev-x{int(rng.integers(10**6)):06d}", units=(), ts_form="iso_offset")
            for i in range(count)]
