"""A deterministic stream of Kafka messages from the simulator, for pipeline tests."""
from __future__ import annotations

import datetime as dt
import zlib
from dataclasses import dataclass

import apache_beam as beam
from apache_beam.testing.test_stream import TestStream
from apache_beam.utils.timestamp import Timestamp

from simulation import fleet as fleet_mod
from simulation import generator, rows, wire
from simulation.incidents import ACUTE_MODES, WIRE_FAULTS, Incident
from simulation.stream import StreamConfig, messages_for
from core import lake as lake_io
from transforms.decode import KafkaMessage

UTC = dt.timezone.utc
START = dt.datetime(2026, 11, 20, 6, 0, tzinfo=UTC)
PARTITIONS = 4


@dataclass
class Fixture:
    messages: list[KafkaMessage]
    produced: set[str]            # every event id sent
    rejected: set[str]            # ids the contract rejects
    expected_alerts: set[tuple[str, str]]   # (device_id, rule)
    fleet: list


def build(lake: str, minutes: int = 80, devices: int = 8, interval_s: float = 10.0, seed: int = 11,
          wire_faults: bool = True, with_duplicates: bool = True) -> Fixture:
    """Writes the registry into `lake` and returns messages with one device per acute mode failing."""
    fleet = fleet_mod.make_fleet(devices, seed, inactive_fraction=0, mixed_unit_fraction=0.4)
    lake_io.overwrite(lake, "devices", fleet_mod.registry_table(fleet))
    incidents = []
    for n, mode in enumerate(ACUTE_MODES):          # after the 1 hour vibration warm-up
        rule, sensor, duration = ACUTE_MODES[mode]
        start = START + dt.timedelta(minutes=66 + 3 * n)
        incidents.append(Incident("failure", mode, fleet[n].device_id, fleet[n].index, start, start + duration,
                                  sensor=sensor, expected_rule=rule, category="acute"))
    if with_duplicates:
        d = fleet[-1]
        incidents.append(Incident("data_fault", "duplicates", d.device_id, d.index,
                                  START + dt.timedelta(minutes=20), START + dt.timedelta(minutes=21)))
    cfg = StreamConfig(batch_size=40, single_fraction=0.25, interval_s=interval_s)
    by_id = {d.device_id: d for d in fleet}
    offsets = [0] * PARTITIONS
    messages, produced, rejected = [], set(), set()

    def emit(key: str, body: bytes, ts_ms: int, ids: list[str]):
        partition = zlib.crc32(key.encode()) % PARTITIONS
        messages.append(KafkaMessage("sensor.readings", partition, offsets[partition], ts_ms + 500,
                                     key.encode(), body))
        offsets[partition] += 1
        produced.update(ids)

    t = START
    step = dt.timedelta(seconds=interval_s)
    n_faults = 0
    while t < START + dt.timedelta(minutes=minutes):
        chunk = generator.readings(fleet, t, t + step, interval_s, incidents, seed)
        for part in (chunk, rows.duplicates(chunk, incidents)):
            for key, body, ts_ms, ids in messages_for(part, by_id, cfg):
                emit(key, body, ts_ms, ids)
        if wire_faults and n_faults < len(WIRE_FAULTS) and t.minute % 7 == 0 and t.second == 0:
            fault = sorted(WIRE_FAULTS)[n_faults]
            template = {"event_id": "", "device_id": fleet[5].device_id, "sensor_type": "discharge_pressure",
                        "value": 1400.0, "unit": "kPa", "ts": int(t.timestamp() * 1000)}
            body, bad, good = wire.wire_fault_message(fault, 0, template)
            emit(fleet[5].device_id, body, int(t.timestamp() * 1000), bad + good)
            rejected.update(bad)
            n_faults += 1
        t += step
    expected = {(i.device_id, i.expected_rule) for i in incidents if i.expected_rule}
    return Fixture(messages, produced, rejected, expected, fleet)


def as_test_stream(messages: list[KafkaMessage], per_step: int = 50) -> TestStream:
    """Messages in order, the watermark following their record time."""
    stream, watermark_ms = TestStream(), None
    for k in range(0, len(messages), per_step):
        part = messages[k:k + per_step]
        stream.add_elements([beam.window.TimestampedValue(m, Timestamp(micros=m.timestamp_ms * 1000)) for m in part])
        newest = max(m.timestamp_ms for m in part)
        if watermark_ms is None or newest > watermark_ms:      # TestStream wants a strictly rising watermark
            stream.advance_watermark_to(Timestamp(micros=newest * 1000))
            watermark_ms = newest
    return stream.advance_watermark_to_infinity()
