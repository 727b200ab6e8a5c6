"""Live readings into Kafka at a target pace, as single readings and gateway batches."""
from __future__ import annotations

import datetime as dt
import logging
import time
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
from confluent_kafka import Producer

from simulation import generator, rows, wire
from simulation.fleet import Device
from simulation.incidents import WIRE_FAULTS, Incident
from simulation.profiles import IDEAL, SensorProfile
from core import retry

log = logging.getLogger(__name__)
# A full local queue waits (poll) and retries. Delivery errors are not produced again: the idempotent
# producer already retries transient ones until message.timeout.ms, and a second copy of a message
# that did land would skew the ground truth.
FLUSH_DEADLINE_S = 120.0


@dataclass
class StreamConfig:
    bootstrap_servers: str = "127.0.0.1:9092"
    topic: str = "sensor.readings"
    start: dt.datetime = None
    sim_seconds: float = 3600.0
    interval_s: float = 10.0
    acceleration: float = 1.0        # simulated seconds per wall second; 0 = as fast as possible
    batch_size: int = 200            # readings per gateway message
    single_fraction: float = 0.2     # share of devices that send one reading per message
    wire_faults: dict[str, int] = field(default_factory=dict)   # fault -> messages to inject
    producer_config: dict = field(default_factory=dict)
    profile: SensorProfile = IDEAL    # how the simulated sensors report


@dataclass
class StreamResult:
    messages: int = 0
    readings: int = 0
    produced: list[tuple[str, str, str | None]] = field(default_factory=list)  # event_id, kind, expected reason
    delivery_errors: list[str] = field(default_factory=list)
    wall_seconds: float = 0.0


def messages_for(chunk: pa.Table, devices_by_id: dict[str, Device], cfg: StreamConfig):
    """(key, body, timestamp_ms, event_ids) per message; deterministic for a chunk."""
    readings = wire.reading_dicts(chunk)
    t_ms = chunk["_t_ms"].to_pylist()
    gateway_batches: dict[str, list[int]] = defaultdict(list)
    for i, r in enumerate(readings):
        d = devices_by_id[r["device_id"]]
        if (d.index * 0.6180339887) % 1.0 < cfg.single_fraction:
            yield r["device_id"], wire.encode(r), t_ms[i], [r["event_id"]]
        else:
            gateway_batches[d.site_id].append(i)
    for site, idx in gateway_batches.items():
        for k in range(0, len(idx), cfg.batch_size):
            part = idx[k:k + cfg.batch_size]
            yield (f"gw-{site}", wire.encode([readings[i] for i in part]), max(t_ms[i] for i in part),
                   [readings[i]["event_id"] for i in part])


def _fault_schedule(cfg: StreamConfig, n_buckets: int, seed: int) -> dict[int, list[tuple[str, int]]]:
    rng = np.random.default_rng([seed, 4])
    schedule: dict[int, list[tuple[str, int]]] = defaultdict(list)
    for fault in sorted(cfg.wire_faults):
        for n in range(cfg.wire_faults[fault]):
            schedule[int(rng.integers(n_buckets))].append((fault, n))
    return schedule


def stream(devices: list[Device], incidents: list[Incident], cfg: StreamConfig, seed: int) -> tuple[StreamResult, list[Incident]]:
    """Produces [start, start + sim_seconds) of readings; returns counts and wire-fault incidents."""
    result = StreamResult()
    producer = Producer({"bootstrap.servers": cfg.bootstrap_servers, "linger.ms": 20,
                         "compression.type": "lz4", "message.max.bytes": 2_000_000,
                         "enable.idempotence": True, **cfg.producer_config})

    def on_delivery(err, msg):
        if err is not None:
            result.delivery_errors.append(str(err))

    by_id = {d.device_id: d for d in devices}
    bucket_s = max(cfg.interval_s, 1.0)
    n_buckets = int(np.ceil(cfg.sim_seconds / bucket_s))
    schedule = _fault_schedule(cfg, n_buckets, seed)
    wire_incidents: list[Incident] = []
    wall0 = time.monotonic()
    last_log = wall0
    for b in range(n_buckets):
        b_start = cfg.start + dt.timedelta(seconds=b * bucket_s)
        b_end = min(b_start + dt.timedelta(seconds=bucket_s), cfg.start + dt.timedelta(seconds=cfg.sim_seconds))
        chunk = generator.readings(devices, b_start, b_end, cfg.interval_s, incidents, seed, cfg.profile)
        chunks = [chunk, rows.duplicates(chunk, incidents)]
        chunks += [r for _, r in rows.replays(devices, incidents, b_start, b_end, cfg.interval_s, seed, cfg.profile)]
        if cfg.acceleration > 0:
            ahead = (wall0 + (b_start - cfg.start).total_seconds() / cfg.acceleration) - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
        for part in chunks:
            for key, body, ts_ms, event_ids in messages_for(part, by_id, cfg):
                retry.produce(producer, cfg.topic, body, key=key, timestamp=ts_ms, on_delivery=on_delivery)
                result.messages += 1
                result.readings += len(event_ids)
                result.produced.extend((e, "reading", None) for e in event_ids)
                producer.poll(0)
        for fault, n in schedule.get(b, []):
            device = devices[(b + n) % len(devices)]
            # the good readings around a fault are discharge pressures at the device's own level:
            # no acute rule watches that sensor, so injected faults never look like failures
            template = {"event_id": "", "device_id": device.device_id, "sensor_type": "discharge_pressure",
                        "value": round(device.suction_kpa * device.compression_ratio, 1), "unit": "kPa",
                        "ts": int(b_start.timestamp() * 1000)}
            body, bad_ids, good = wire.wire_fault_message(fault, n, template)
            retry.produce(producer, cfg.topic, body, key=device.device_id, timestamp=template["ts"],
                          on_delivery=on_delivery)
            result.messages += 1
            result.produced.extend((e, "wire_fault", WIRE_FAULTS[fault]) for e in bad_ids)
            result.produced.extend((e, "reading", None) for e in good)
            result.readings += len(bad_ids) + len(good)
            wire_incidents.append(Incident("data_fault", fault, device.device_id, device.index, b_start, b_start,
                                           detail={"expected_reason": WIRE_FAULTS[fault], "message_bytes": len(body)},
                                           event_ids=bad_ids))
        if time.monotonic() - last_log > 5:
            last_log = time.monotonic()
            lag = (time.monotonic() - wall0) - (b_end - cfg.start).total_seconds() / max(cfg.acceleration, 1e-9)
            log.info("stream: simulated %s of %s, %d messages, %d readings, %.0f readings/s%s",
                     b_end - cfg.start, dt.timedelta(seconds=cfg.sim_seconds), result.messages, result.readings,
                     result.readings / (time.monotonic() - wall0),
                     f", {lag:.1f} s behind pace" if cfg.acceleration > 0 and lag > 1 else "")
    try:
        retry.flush(producer, what=f"deliver the stream to {cfg.topic}", deadline_s=FLUSH_DEADLINE_S)
    except retry.RetryError as exc:
        result.delivery_errors.append(str(exc))
    result.wall_seconds = time.monotonic() - wall0
    if len(producer):
        result.delivery_errors.append(f"{len(producer)} messages still undelivered after flush")
    return result, wire_incidents
