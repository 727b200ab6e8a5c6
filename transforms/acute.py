"""The acute-rule stage of the streaming pipeline, as Beam transforms over Arrow batches.

    landing rows (Arrow) --Enrich--> (shard, Arrow batch) --stateful rules per shard--> alert dicts

Enrich is vectorised: registry join (model, rated current, timezone), `ts` to UTC, values to
canonical units, range check. Readings are keyed by a hash shard of their device so that a
stateful DoFn holds the state of many devices and works on a batch at a time.
"""
from __future__ import annotations

import datetime as dt
import logging
import typing
import zlib
from collections import Counter

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from apache_beam.coders import PickleCoder
from apache_beam.metrics import Metrics
from apache_beam.transforms.userstate import ReadModifyWriteStateSpec

from schemas.sensors import SENSORS
from transforms.arrow import to_numpy
from transforms.acute_rules import RULES, DeviceInfo, DeviceState, Readings, RuleConfig, evaluate_device
from transforms.registry import RegistryCache
from transforms.timestamps import parse_ts

log = logging.getLogger(__name__)
DEFAULT_SHARDS = 16


def shard_of(device_ids: list[str], shards: int) -> np.ndarray:
    return np.fromiter((zlib.crc32(d.encode()) % shards for d in device_ids), np.int64, len(device_ids))


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


class _EnrichFn(beam.DoFn):
    def __init__(self, lake_root: str, shards: int, registry_ttl_s: float):
        self._lake, self._shards, self._ttl = lake_root, shards, registry_ttl_s
        self.unknown = Metrics.counter("acute", "readings_unknown_device")
        self.bad_time = Metrics.counter("acute", "readings_unparseable_ts")
        self.out_of_range = Metrics.counter("acute", "readings_out_of_range")

    def setup(self):
        self._registry = RegistryCache(self._lake, self._ttl)

    def process(self, readings: pa.Table):
        if readings.num_rows == 0:
            return
        registry, index = self._registry.get()
        device_ids = readings["device_id"].to_pylist()
        pos = np.array([index.get(d, -1) for d in device_ids], np.int64)
        known = pos >= 0
        take = pa.array(np.where(known, pos, 0))
        zones = pc.if_else(pa.array(known), registry["timezone"].take(take), pa.nulls(len(pos), pa.string()))
        t = parse_ts(readings["ts"], zones)
        value = canonical_values(readings["sensor_type"], readings["unit"], readings["value"])
        ok_range = in_range(readings["sensor_type"], value)
        ok_time = np.asarray(t.is_valid())
        self.unknown.inc(int((~known).sum()))
        self.bad_time.inc(int((~ok_time).sum()))
        self.out_of_range.inc(int((ok_time & ~ok_range).sum()))
        usable = ok_time & ok_range
        if not usable.any():
            return
        table = pa.table({
            "device_id": readings["device_id"], "event_id": readings["event_id"],
            "sensor_type": readings["sensor_type"], "t_us": t.cast(pa.int64()).fill_null(0),
            "value": value,
            "model": pc.if_else(pa.array(known), registry["model"].take(take), pa.nulls(len(pos), pa.string())),
            "rated_current_a": pc.if_else(pa.array(known), registry["rated_current_a"].take(take),
                                          pa.nulls(len(pos), pa.float64())),
            "shard": shard_of(device_ids, self._shards),
        }).filter(pa.array(usable))
        for shard in np.unique(table["shard"].to_numpy()):
            yield int(shard), table.filter(pc.equal(table["shard"], int(shard)))


class _RulesFn(beam.DoFn):
    """Per shard: the state of its devices, updated batch by batch (arrival order kept)."""
    DEVICES = ReadModifyWriteStateSpec("devices", PickleCoder())

    def __init__(self, config_path: str | None):
        self._config_path = config_path
        self._counters = {}

    def setup(self):
        self._config = RuleConfig.load(self._config_path)

    def _count(self, name: str, n: int) -> None:
        if n:
            if name not in self._counters:
                self._counters[name] = Metrics.counter("acute", name)
            self._counters[name].inc(n)

    def process(self, element, devices=beam.DoFn.StateParam(DEVICES)):
        _, batch = element
        states: dict[str, DeviceState] = devices.read() or {}
        now = dt.datetime.now(dt.timezone.utc)
        totals: Counter = Counter()
        ids = to_numpy(batch["device_id"])
        order = np.argsort(ids, kind="stable")           # group by device, keep arrival order inside
        ids = ids[order]
        event_id = to_numpy(batch["event_id"])[order]
        sensor = to_numpy(batch["sensor_type"])[order]
        t = to_numpy(batch["t_us"])[order]
        value = to_numpy(batch["value"])[order]
        model = to_numpy(batch["model"])[order]
        rated = to_numpy(batch["rated_current_a"])[order]
        bounds = np.flatnonzero(np.concatenate([[True], ids[1:] != ids[:-1], [True]]))
        for a, b in zip(bounds[:-1], bounds[1:]):
            device = ids[a]
            info = DeviceInfo(device, model[a], None if rated[a] is None or np.isnan(rated[a]) else float(rated[a]))
            state = states.setdefault(device, DeviceState())
            alerts, counts = evaluate_device(state, info, self._config.for_model(info.model),
                                             Readings(event_id[a:b], sensor[a:b], t[a:b], value[a:b]), now)
            totals.update(counts)
            yield from alerts
        devices.write(states)
        for name, n in totals.items():
            self._count(name if name.startswith("alerts_") else f"readings_{name}", n)


class AcuteRules(beam.PTransform):
    """PCollection of decoded landing rows (Arrow) -> PCollection of CRITICAL alert dicts."""

    def __init__(self, lake_root: str, shards: int = DEFAULT_SHARDS, config_path: str | None = None,
                 registry_ttl_s: float = 300.0):
        super().__init__()
        self._lake, self._shards, self._config, self._ttl = lake_root, shards, config_path, registry_ttl_s

    def expand(self, readings):
        return (readings
                | "Enrich" >> beam.ParDo(_EnrichFn(self._lake, self._shards, self._ttl)).with_output_types(
                    typing.Tuple[int, typing.Any])    # an int key: a deterministic coder for the state
                | "EvaluatePerShard" >> beam.ParDo(_RulesFn(self._config)))


__all__ = ["AcuteRules", "RULES", "canonical_values", "in_range", "shard_of"]
