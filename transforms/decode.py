"""Contract 1 decoding: Kafka messages -> Arrow batches of readings, and dead letters.

A message value is one reading object or an array of up to 1000 of them. Every reject goes to the
dead-letter table with a machine-readable reason; a bad reading never rejects its good neighbours.
Per message the work is one C-speed JSON parse plus a tight per-reading check; the output is one
Arrow table per batch of messages, so everything downstream is vectorised.
"""
from __future__ import annotations

import datetime as dt
import json
import math
import re
from dataclasses import dataclass
from enum import Enum
from typing import Iterable, NamedTuple

import apache_beam as beam
import numpy as np
import orjson
import pyarrow as pa
from apache_beam.metrics import Metrics

from schemas import contracts
from schemas.sensors import SENSORS

MAX_MESSAGE_BYTES = 1024 * 1024
MAX_BATCH_READINGS = 1000
MAX_READING_BYTES = 4096
PAYLOAD_PREFIX_BYTES = 64 * 1024
DEVICE_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


class Reason(str, Enum):
    INVALID_JSON = "invalid_json"
    OVERSIZED_MESSAGE = "oversized_message"
    OVERSIZED_BATCH = "oversized_batch"
    EMPTY_BATCH = "empty_batch"
    OVERSIZED_READING = "oversized_reading"
    NOT_AN_OBJECT = "not_an_object"
    MISSING_FIELD = "missing_field"
    WRONG_TYPE = "wrong_type"
    NON_FINITE_VALUE = "non_finite_value"
    UNKNOWN_SENSOR_TYPE = "unknown_sensor_type"
    UNKNOWN_UNIT = "unknown_unit"
    INVALID_DEVICE_ID = "invalid_device_id"


class KafkaMessage(NamedTuple):
    """A record as read from Kafka (what ReadFromKafka's metadata gives us)."""
    topic: str
    partition: int
    offset: int
    timestamp_ms: int          # the record time; becomes timestamp_ingested and event time
    key: bytes | None
    value: bytes | None


@dataclass
class Rejected:
    reason: Reason
    detail: str
    payload: bytes
    payload_size: int
    batch_index: int | None = None
    event_id: str | None = None
    device_id: str | None = None


_REQUIRED = ("event_id", "device_id", "sensor_type", "value", "ts")
_NUMBER = (int, float)


def _check_reading(r) -> Rejected | None:
    """Why this reading must be rejected, or None. Cheap checks first."""
    if not isinstance(r, dict):
        return Rejected(Reason.NOT_AN_OBJECT, f"a batch element is a {type(r).__name__}", b"", 0)
    missing = [f for f in _REQUIRED if r.get(f) is None]
    if missing:
        return Rejected(Reason.MISSING_FIELD, f"missing {', '.join(missing)}", b"", 0)
    event_id, device_id, sensor, value, ts = (r[f] for f in _REQUIRED)
    unit, seq = r.get("unit"), r.get("seq")
    if not (isinstance(event_id, str) and isinstance(device_id, str) and isinstance(sensor, str)):
        return Rejected(Reason.WRONG_TYPE, "event_id, device_id and sensor_type must be strings", b"", 0)
    if not isinstance(value, _NUMBER) or isinstance(value, bool):
        return Rejected(Reason.WRONG_TYPE, f"value is a {type(value).__name__}, not a number", b"", 0)
    if not (isinstance(ts, str) or (isinstance(ts, _NUMBER) and not isinstance(ts, bool))):
        return Rejected(Reason.WRONG_TYPE, f"ts is a {type(ts).__name__}", b"", 0)
    if unit is not None and not isinstance(unit, str):
        return Rejected(Reason.WRONG_TYPE, f"unit is a {type(unit).__name__}", b"", 0)
    if seq is not None and (not isinstance(seq, int) or isinstance(seq, bool)):
        return Rejected(Reason.WRONG_TYPE, f"seq is a {type(seq).__name__}", b"", 0)
    if not math.isfinite(value) or (isinstance(ts, float) and not math.isfinite(ts)):
        return Rejected(Reason.NON_FINITE_VALUE, f"value {value!r}", b"", 0)
    if not DEVICE_ID.fullmatch(device_id):
        return Rejected(Reason.INVALID_DEVICE_ID, "device_id must match ^[A-Za-z0-9_-]{1,64}$", b"", 0)
    spec = SENSORS.get(sensor)
    if spec is None:
        return Rejected(Reason.UNKNOWN_SENSOR_TYPE, f"sensor_type {sensor[:64]!r}", b"", 0)
    if unit is not None and unit not in spec.conversions:
        return Rejected(Reason.UNKNOWN_UNIT, f"unit {unit[:32]!r} for {sensor}", b"", 0)
    # a reading's size: exact only when a rough sum of its parts could be near the limit
    rough = sum(len(v) if isinstance(v, str) else 24 for v in r.values()) + 16 * len(r)
    if rough > MAX_READING_BYTES // 2 and len(_dumps(r)) > MAX_READING_BYTES:
        return Rejected(Reason.OVERSIZED_READING, f"reading over {MAX_READING_BYTES} bytes", b"", 0)
    return None


def _dumps(r) -> bytes:
    try:
        return orjson.dumps(r)
    except TypeError:   # non-finite floats from the fallback parser
        return json.dumps(r, default=str).encode()


def _ts_text(ts) -> str:
    if isinstance(ts, str):
        return ts
    return str(int(ts)) if float(ts).is_integer() else repr(float(ts))


def _parse(value: bytes):
    try:
        return orjson.loads(value)
    except orjson.JSONDecodeError:
        # orjson refuses NaN/Infinity/overflowing literals; Python's parser reads them as floats,
        # so that only the reading holding one is rejected (non_finite_value), not the message
        return json.loads(value)


def decode_message(msg: KafkaMessage) -> tuple[list[dict], list[Rejected]]:
    """One message -> (accepted readings, rejects)."""
    value = msg.value or b""
    size = len(value)
    if size > MAX_MESSAGE_BYTES:
        return [], [Rejected(Reason.OVERSIZED_MESSAGE, f"{size} bytes > {MAX_MESSAGE_BYTES}",
                             value[:PAYLOAD_PREFIX_BYTES], size)]
    try:
        body = _parse(value)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        return [], [Rejected(Reason.INVALID_JSON, str(exc)[:200], value[:PAYLOAD_PREFIX_BYTES], size)]
    if isinstance(body, dict):
        readings, batch = [body], False
    elif isinstance(body, list):
        readings, batch = body, True
        if len(body) > MAX_BATCH_READINGS:
            return [], [Rejected(Reason.OVERSIZED_BATCH, f"{len(body)} readings > {MAX_BATCH_READINGS}",
                                 value[:PAYLOAD_PREFIX_BYTES], size)]
        if not body:
            return [], [Rejected(Reason.EMPTY_BATCH, "an empty array", value, size)]
    else:
        return [], [Rejected(Reason.NOT_AN_OBJECT, f"the message is a JSON {type(body).__name__}",
                             value[:PAYLOAD_PREFIX_BYTES], size)]
    accepted, rejected = [], []
    for i, r in enumerate(readings):
        bad = _check_reading(r)
        if bad is None:
            accepted.append(r)
            continue
        raw = value if not batch else _dumps(r)
        bad.payload, bad.payload_size = raw[:MAX_READING_BYTES], len(raw)
        bad.batch_index = i if batch else None
        if isinstance(r, dict):
            bad.event_id = r.get("event_id") if isinstance(r.get("event_id"), str) else None
            bad.device_id = r.get("device_id") if isinstance(r.get("device_id"), str) else None
        rejected.append(bad)
    return accepted, rejected


def _utc_us(ms: Iterable[int]) -> pa.Array:
    return pa.array(np.asarray(list(ms), dtype=np.int64) * 1000).cast(contracts.UTC_TS)


@dataclass
class Decoded:
    readings: pa.Table        # RAW_SENSOR_READINGS (landing contract)
    deadletters: pa.Table     # DEADLETTER
    messages: int
    offsets: list[tuple[str, int, int]]   # (topic, partition, offset) of every message decoded


def decode_messages(messages: list[KafkaMessage], now: dt.datetime | None = None) -> Decoded:
    """A batch of messages -> one Arrow table of readings and one of dead letters."""
    cols = {k: [] for k in ("event_id", "device_id", "sensor_type", "value", "unit", "ts", "seq")}
    meta_ms, meta_topic, meta_part, meta_off = [], [], [], []
    dead: list[tuple[KafkaMessage, Rejected]] = []
    for msg in messages:
        accepted, rejected = decode_message(msg)
        for r in accepted:
            cols["event_id"].append(r["event_id"])
            cols["device_id"].append(r["device_id"])
            cols["sensor_type"].append(r["sensor_type"])
            cols["value"].append(float(r["value"]))
            cols["unit"].append(r.get("unit"))
            cols["ts"].append(_ts_text(r["ts"]))
            cols["seq"].append(r.get("seq"))
        n = len(accepted)
        meta_ms += [msg.timestamp_ms] * n
        meta_topic += [msg.topic] * n
        meta_part += [msg.partition] * n
        meta_off += [msg.offset] * n
        dead += [(msg, d) for d in rejected]
    ingested = _utc_us(meta_ms)
    readings = pa.table({
        **{k: pa.array(v, contracts.RAW_SENSOR_READINGS.field(k).type) for k, v in cols.items()},
        "timestamp_ingested": ingested,
        "kafka_topic": pa.array(meta_topic, pa.string()),
        "kafka_partition": pa.array(meta_part, pa.int32()),
        "kafka_offset": pa.array(meta_off, pa.int64()),
        "ingest_date": ingested.cast(pa.date32()),
    }, schema=contracts.RAW_SENSOR_READINGS)
    return Decoded(readings, deadletter_table(dead, now), len(messages),
                   [(m.topic, m.partition, m.offset) for m in messages])


def deadletter_table(dead: list[tuple[KafkaMessage, Rejected]], now: dt.datetime | None = None) -> pa.Table:
    now = now or dt.datetime.now(dt.timezone.utc)
    return pa.table({
        "reason": pa.array([d.reason.value for _, d in dead], pa.string()),
        "detail": pa.array([d.detail for _, d in dead], pa.string()),
        "payload": pa.array([d.payload for _, d in dead], pa.binary()),
        "payload_size": pa.array([d.payload_size for _, d in dead], pa.int64()),
        "batch_index": pa.array([d.batch_index for _, d in dead], pa.int32()),
        "event_id": pa.array([d.event_id for _, d in dead], pa.string()),
        "device_id": pa.array([d.device_id for _, d in dead], pa.string()),
        "source": pa.array(["streaming"] * len(dead), pa.string()),
        "kafka_topic": pa.array([m.topic for m, _ in dead], pa.string()),
        "kafka_partition": pa.array([m.partition for m, _ in dead], pa.int32()),
        "kafka_offset": pa.array([m.offset for m, _ in dead], pa.int64()),
        "timestamp_ingested": _utc_us(m.timestamp_ms for m, _ in dead),
        "deadlettered_at": pa.array([now] * len(dead), contracts.UTC_TS),
    }, schema=contracts.DEADLETTER)


class DecodeMessages(beam.PTransform):
    """PCollection[list[KafkaMessage]] -> PCollection[Decoded], with counters per stage and reason."""

    def expand(self, batches):
        return batches | "Decode" >> beam.ParDo(_DecodeFn())


class _DecodeFn(beam.DoFn):
    def __init__(self):
        self.messages = Metrics.counter("decode", "messages")
        self.readings = Metrics.counter("decode", "readings")
        self.deadlettered = Metrics.counter("decode", "deadlettered")
        self._by_reason = {r: Metrics.counter("decode", f"deadlettered_{r.value}") for r in Reason}

    def process(self, messages: list[KafkaMessage]):
        decoded = decode_messages(messages)
        self.messages.inc(decoded.messages)
        self.readings.inc(decoded.readings.num_rows)
        self.deadlettered.inc(decoded.deadletters.num_rows)
        for reason in decoded.deadletters["reason"].to_pylist():
            self._by_reason[Reason(reason)].inc()
        yield decoded
