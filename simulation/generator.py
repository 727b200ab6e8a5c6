"""Vectorised reading generator: every value is a pure function of (seed, device, step, sensor).

Readings of device ``d`` are taken on a fixed grid ``ANCHOR + (k + phase_d) * interval``, one per
sensor at each step ``k``. Noise comes from a counter-based hash rather than a stateful RNG, so
generating a span in one piece or in many chunks gives identical rows (same seed, same output).
"""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np
import polars as pl
import pyarrow as pa

from simulation.fleet import Device
from simulation.incidents import GRADUAL_MODES, Incident
from simulation.profiles import IDEAL, SensorProfile
from schemas.sensors import SENSOR_TYPES, SENSORS, from_canonical

ANCHOR = dt.datetime(2020, 1, 1, tzinfo=dt.timezone.utc)
_ANCHOR_S = ANCHOR.timestamp()
_M64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        x = x + np.uint64(0x9E3779B97F4A7C15)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def _key(seed: int, device: np.ndarray, step: np.ndarray, channel: int) -> np.ndarray:
    with np.errstate(over="ignore"):
        return (np.uint64(seed) * np.uint64(0x100000001B3)) ^ (device.astype(np.uint64) << np.uint64(40)) \
            ^ step.astype(np.uint64) ^ (np.uint64(channel) << np.uint64(56))


def hash_normal(seed: int, device: np.ndarray, step: np.ndarray, channel: int) -> np.ndarray:
    """Standard normal noise keyed by (seed, device, step, channel), via Box-Muller."""
    key = _key(seed, device, step, channel)
    a = _splitmix64(key)
    b = _splitmix64(a)
    u1 = ((a >> np.uint64(11)).astype(np.float64) + 0.5) / 2.0**53
    u2 = ((b >> np.uint64(11)).astype(np.float64) + 0.5) / 2.0**53
    return np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2)


def hash_uniform(seed: int, device: np.ndarray, step: np.ndarray, channel: int) -> np.ndarray:
    """Uniform noise in (0, 1) keyed by (seed, device, step, channel). It equals the first uniform
    hash_normal draws for the same key: give it channels hash_normal does not use."""
    a = _splitmix64(_key(seed, device, step, channel))
    return ((a >> np.uint64(11)).astype(np.float64) + 0.5) / 2.0**53


@dataclass
class Grid:
    """Sampling steps of a set of devices in a time span; rows are grouped by device."""
    device: np.ndarray     # position in the device list
    step: np.ndarray
    t: np.ndarray          # seconds since the Unix epoch (UTC)
    offsets: np.ndarray    # rows of device i are offsets[i]:offsets[i+1]


def sampling_grid(devices: list[Device], start: dt.datetime, end: dt.datetime, interval_s: float) -> Grid:
    a, b = start.timestamp() - _ANCHOR_S, end.timestamp() - _ANCHOR_S
    phases = np.array([d.phase_s for d in devices])
    if any(d.window for d in devices):        # devices that report only in their own window
        lo = np.array([d.window[0].timestamp() - _ANCHOR_S if d.window else -np.inf for d in devices])
        hi = np.array([d.window[1].timestamp() - _ANCHOR_S if d.window else np.inf for d in devices])
        a, b = np.maximum(a, lo), np.maximum(np.minimum(b, hi), np.maximum(a, lo))
    k_lo = np.ceil(a / interval_s - phases).astype(np.int64)
    k_hi = np.ceil(b / interval_s - phases).astype(np.int64)      # exclusive
    counts = np.maximum(k_hi - k_lo, 0)
    offsets = np.concatenate([[0], np.cumsum(counts)])
    device = np.repeat(np.arange(len(devices)), counts)
    step = np.arange(offsets[-1]) - np.repeat(offsets[:-1], counts) + np.repeat(k_lo, counts)
    t = _ANCHOR_S + (step + phases[device]) * interval_s
    return Grid(device, step, np.round(t, 3), offsets)


def normal_values(devices: list[Device], grid: Grid, seed: int,
                  profile: SensorProfile = IDEAL) -> dict[str, np.ndarray]:
    """Healthy behaviour in canonical units: daily load cycle, compressor cycling, noise."""
    def param(attr):
        return np.array([getattr(d, attr) for d in devices])[grid.device]
    dev_ids = np.array([d.index for d in devices])[grid.device]
    day = 2 * np.pi * (grid.t / 86400.0 + param("phase_s"))
    n = [hash_normal(seed, dev_ids, grid.step, c) for c in range(len(SENSOR_TYPES))]
    ambient_effect = np.sin(day)
    suction = param("suction_kpa") * (1 + 0.015 * n[1])
    values = {
        "compressor_current": param("rated_current_a") * (0.68 + 0.06 * ambient_effect) * (1 + 0.015 * n[0]),
        "suction_pressure": suction,
        "discharge_pressure": param("suction_kpa") * param("compression_ratio")
        * (1 + 0.03 * ambient_effect) * (1 + 0.012 * n[2]),
        "vibration": np.maximum(param("vibration_mm_s") * (1 + 0.06 * n[3]), 0.05),
        "temperature": param("setpoint_c") + 0.6 * np.sin(2 * np.pi * grid.t / 1800.0 + day) + 0.05 * n[4],
    }
    if profile.pulsation:
        ripple = pump_pulsation(devices, grid, seed, profile)
        values["suction_pressure"] = values["suction_pressure"] * (1 + ripple)
        values["discharge_pressure"] = values["discharge_pressure"] * (1 - 1.25 * ripple)
    if profile.accel_samples:
        values["vibration"] = accelerometer_rms(param("vibration_mm_s"), dev_ids, grid.step, seed, profile)
    return values


# channels of the realistic profile's noise (hash_normal uses 0-4 and 9; rows.py 3 with other seeds)
_CH_PULSE = 20          # per device: frequency, amplitude, phases (20-23)
_CH_ACCEL = 24          # per reading: amplitude modulation, projected noise, residual noise (24-26)


def pump_pulsation(devices: list[Device], grid: Grid, seed: int, profile: SensorProfile) -> np.ndarray:
    """Relative pressure ripple of each device's compressor at each reading time.

    A per-device pulsation frequency (within ``profile.pulsation_hz``), amplitude (0.5-1.5 times
    ``profile.pulsation``) and phase, plus the second harmonic at 35 %. The ripple is evaluated at the
    reading's own time, so slow sampling aliases it and 1 s sampling resolves it."""
    idx = np.array([d.index for d in devices])
    zero = np.zeros(len(devices), dtype=np.int64)
    u = [hash_uniform(seed, idx, zero, _CH_PULSE + c) for c in range(4)]
    lo, hi = profile.pulsation_hz
    freq = (lo + (hi - lo) * u[0])[grid.device]
    amp = (profile.pulsation * (0.5 + u[1]))[grid.device]
    phase = 2 * np.pi * freq * (grid.t - _ANCHOR_S)          # relative to the anchor: full precision
    return amp * (np.sin(phase + 2 * np.pi * u[2][grid.device])
                  + 0.35 * np.sin(2 * phase + 2 * np.pi * u[3][grid.device]))


def accelerometer_rms(level: np.ndarray, dev_ids: np.ndarray, step: np.ndarray, seed: int,
                      profile: SensorProfile) -> np.ndarray:
    """Vibration velocity as the RMS of an N-sample accelerometer burst per reading, in closed form.

    The burst is ``a_j = A s_j + sigma n_j``: the running-speed sinusoid ``s_j`` (whole cycles, so
    ``sum s_j^2 = N/2``) of amplitude ``A = sqrt(2) * level`` (RMS ``level``, modulated per reading
    by a lognormal load factor) plus gaussian sensor noise ``n_j`` of ``sigma = accel_noise * level``.
    Splitting the noise along the sinusoid and across it, ``sum a_j^2 = (A sqrt(N/2) + sigma z)^2
    + sigma^2 chi2(N-1)`` exactly: two draws a reading instead of N (chi-square by Wilson-Hilferty).
    The result is positive and right-skewed, as a real RMS channel."""
    n = profile.accel_samples
    k = n - 1
    load = np.exp(0.12 * hash_normal(seed, dev_ids, step, _CH_ACCEL) - 0.5 * 0.12**2)
    amplitude = np.sqrt(2.0) * level * load
    sigma = profile.accel_noise * level
    z = hash_normal(seed, dev_ids, step, _CH_ACCEL + 1)
    w = hash_normal(seed, dev_ids, step, _CH_ACCEL + 2)
    chi2 = k * np.maximum(1 - 2 / (9 * k) + w * np.sqrt(2 / (9 * k)), 0.0) ** 3 if k > 0 else 0.0
    return np.sqrt(((amplitude * np.sqrt(n / 2) + sigma * z) ** 2 + sigma**2 * chi2) / n)


def quantise(values: dict[str, np.ndarray]) -> None:
    """Rounds every sensor's values to its resolution in the canonical unit (in place)."""
    for sensor, v in values.items():
        res = SENSORS[sensor].resolution
        values[sensor] = np.round(v / res) * res


def _rows(grid: Grid, device_pos: int, start: dt.datetime, end: dt.datetime) -> slice | np.ndarray:
    lo, hi = grid.offsets[device_pos], grid.offsets[device_pos + 1]
    t = grid.t[lo:hi]
    return np.arange(lo, hi)[(t >= start.timestamp()) & (t < end.timestamp())]


def apply_failures(values: dict[str, np.ndarray], devices: list[Device], grid: Grid,
                   incidents: list[Incident], seed: int) -> None:
    """Shapes the signals of failing devices (in place)."""
    pos = {d.index: i for i, d in enumerate(devices)}
    for inc in incidents:
        if inc.kind != "failure" or inc.device_index not in pos:
            continue
        p = pos[inc.device_index]
        d = devices[p]
        # gradual damage persists after its span (the acute failure it turns into comes on top)
        until = inc.end if inc.category != "gradual" else inc.end + dt.timedelta(days=36500)
        rows = _rows(grid, p, inc.start, until)
        if not len(rows):
            continue
        t = grid.t[rows]
        noise = hash_normal(seed + 7, np.full(len(rows), d.index), grid.step[rows], 9)
        if inc.mode == "current_spike":
            values["compressor_current"][rows] = d.rated_current_a * 1.8 * (1 + 0.02 * noise)
        elif inc.mode == "pressure_drop":
            values["suction_pressure"][rows] *= 0.45
        elif inc.mode == "vibration_surge":
            values["vibration"][rows] *= 5.0
        elif inc.mode == "cooling_loss":
            values["temperature"][rows] += 1.5 * (t - inc.start.timestamp()) / 60.0
        elif inc.mode in GRADUAL_MODES:
            progress = np.minimum((t - inc.start.timestamp()) / (inc.end - inc.start).total_seconds(), 1.0)
            if inc.mode == "bearing_wear":
                values["vibration"][rows] *= 1 + 1.5 * progress**2
                values["compressor_current"][rows] *= 1 + 0.04 * progress
            elif inc.mode == "condenser_fouling":
                values["discharge_pressure"][rows] *= 1 + 0.3 * progress
                values["compressor_current"][rows] *= 1 + 0.08 * progress
            else:  # slow_refrigerant_leak
                values["suction_pressure"][rows] *= 1 - 0.3 * progress
                values["temperature"][rows] += 3.0 * progress


def apply_value_faults(values: dict[str, np.ndarray], devices: list[Device], grid: Grid,
                       incidents: list[Incident]) -> dict[int, tuple[str, np.ndarray]]:
    """Stuck values and out-of-range readings (in place); returns the grid rows each touched."""
    pos = {d.index: i for i, d in enumerate(devices)}
    touched: dict[int, tuple[str, np.ndarray]] = {}
    for n, inc in enumerate(incidents):
        if inc.device_index not in pos or inc.mode not in ("stuck_value", "out_of_range"):
            continue
        p = pos[inc.device_index]
        rows = _rows(grid, p, inc.start, inc.end)
        if not len(rows):
            continue
        if inc.mode == "stuck_value":
            values[inc.sensor][rows] = _stuck_level(devices[p], inc.sensor)
        else:
            values[inc.sensor][rows] = SENSORS[inc.sensor].valid_max * 3 + 7
        touched[n] = (inc.sensor, rows)
    return touched


def _stuck_level(device: Device, sensor: str) -> float:
    """The value a stuck sensor repeats: its healthy level, so every chunk agrees on it."""
    return round({"temperature": device.setpoint_c, "vibration": device.vibration_mm_s,
                  "suction_pressure": device.suction_kpa}[sensor], 2)


def dropout_mask(devices: list[Device], grid: Grid, incidents: list[Incident]) -> np.ndarray:
    keep = np.ones(len(grid.t), dtype=bool)
    pos = {d.index: i for i, d in enumerate(devices)}
    for inc in incidents:
        if inc.mode == "dropout" and inc.device_index in pos:
            keep[_rows(grid, pos[inc.device_index], inc.start, inc.end)] = False
    return keep


def _format_ts(t_ms: np.ndarray, tz: np.ndarray, form: np.ndarray) -> pa.Array:
    """`ts` as each device writes it: ISO with offset, ISO local time, or epoch milliseconds."""
    frame = pl.DataFrame({"t": t_ms, "tz": tz, "form": form, "i": np.arange(len(t_ms))})
    parts = [frame.filter(pl.col("form") == "epoch_ms").select("i", pl.col("t").cast(pl.Utf8).alias("ts"))]
    for (zone, kind), group in frame.filter(pl.col("form") != "epoch_ms").group_by(["tz", "form"]):
        fmt = "%Y-%m-%dT%H:%M:%S%.3f" + ("%:z" if kind == "iso_offset" else "")
        local = pl.from_epoch(group["t"], time_unit="ms").dt.replace_time_zone("UTC").dt.convert_time_zone(zone)
        parts.append(pl.DataFrame({"i": group["i"], "ts": local.dt.strftime(fmt)}))
    return pl.concat(parts).sort("i")["ts"].to_arrow()


def readings(devices: list[Device], start: dt.datetime, end: dt.datetime, interval_s: float,
             incidents: list[Incident], seed: int, profile: SensorProfile = IDEAL) -> pa.Table:
    """All readings of ``devices`` in [start, end), in each device's units and ts form, as sensors
    of ``profile`` report them (IDEAL: smooth noise, unquantised).

    Returns Contract 1 columns plus ``_t_ms`` (true UTC time in ms), sorted by time.
    Row-level event ids touched by value faults are recorded on their incidents.
    """
    grid = sampling_grid(devices, start, end, interval_s)
    values = normal_values(devices, grid, seed, profile)
    apply_failures(values, devices, grid, incidents, seed)
    touched = apply_value_faults(values, devices, grid, incidents)
    if profile.quantise:
        quantise(values)
    keep = dropout_mask(devices, grid, incidents)

    n_sensors = len(SENSOR_TYPES)
    dev = np.repeat(grid.device, n_sensors)
    sensor_idx = np.tile(np.arange(n_sensors), len(grid.t))
    t_ms = np.repeat(np.round(grid.t * 1000).astype(np.int64), n_sensors)
    value = np.stack([values[s] for s in SENSOR_TYPES], axis=1).reshape(-1)
    # each device's unit per sensor (a few devices override the canonical one), then one pass per
    # distinct (sensor, unit): the cost follows the readings, not devices x readings
    unit_of = np.array([[SENSORS[s].canonical_unit for s in SENSOR_TYPES]] * len(devices), dtype=object) \
        .reshape(len(devices), n_sensors)
    for p, d in enumerate(devices):
        for sensor, unit in d.units:
            unit_of[p, SENSOR_TYPES.index(sensor)] = unit
    units = unit_of[dev, sensor_idx]
    for s, sensor in enumerate(SENSOR_TYPES):
        for unit in {u for u in unit_of[:, s] if u != SENSORS[sensor].canonical_unit}:
            m = (sensor_idx == s) & (units == unit)
            value[m] = from_canonical(sensor, value[m], unit)
    row_keep = np.repeat(keep, n_sensors)

    device_ids = np.array([d.device_id for d in devices], dtype=object)[dev]
    event_id = pl.DataFrame({"d": pl.Series(device_ids, dtype=pl.String), "s": sensor_idx, "t": t_ms}).select(
        pl.concat_str([pl.col("d"), pl.col("s"), pl.col("t")], separator="-"))["d"].to_numpy()
    for n, (sensor, grid_rows) in touched.items():
        kept = grid_rows[keep[grid_rows]]
        incidents[n].event_ids.extend(str(e) for e in event_id[kept * n_sensors + SENSOR_TYPES.index(sensor)])
    table = pa.table({
        "event_id": pa.array(event_id, pa.string()),
        "device_id": pa.array(device_ids, pa.string()),
        "sensor_type": pa.array(np.array(SENSOR_TYPES, dtype=object)[sensor_idx], pa.string()),
        "value": np.round(value, 4),
        "unit": pa.array(units, pa.string()),
        "ts": _format_ts(t_ms, np.array([d.timezone for d in devices], dtype=object)[dev],
                         np.array([d.ts_form for d in devices], dtype=object)[dev]),
        "seq": np.repeat(grid.step, n_sensors) * n_sensors + sensor_idx,
        "_t_ms": t_ms,
    }).filter(pa.array(row_keep))
    return table.take(pa.array(np.argsort(table.column("_t_ms").to_numpy(), kind="stable")))
