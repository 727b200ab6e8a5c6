"""Contract 1 decoding: Kafka messages -> Arrow batches of readings, and dead letters.

A message value is one reading object or an array of up to 1000 of them. Every reject goes to the
dead-letter table with a machine-readable reason; a bad reading never rejects its good neighbours.
The output is one Arrow table per batch of messages, so everything downstream is vectorised.

Two paths give the same rows and dead letters (tests/test_decode_equivalence.py proves it):
- fast: msgspec decodes a message into typed structs whose constraints (types, sensor and unit
  sets, int64 ranges, string lengths, batch size, no extra fields) are checked in C; the readings
  of the whole batch of messages become Arrow columns at once, and the device_id pattern and the
  check that spans two fields (is this unit accepted for this sensor) run over the columns;
- per reading: any message the fast path does not accept in full (a bad reading, NaN literals,
  extra fields, float ts, ...) is decoded again by orjson and checked reading by reading, which
  names every reason and keeps a bad reading's good neighbours.
"""
from __future__ import annotations

import datetime as dt
import json
import math
import re
import typing
from dataclasses import dataclass
from enum import Enum
from typing import Iterable, NamedTuple

from typing import Annotated, Literal

import apache_beam as beam
import msgspec
import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
from apache_beam.metrics import Metrics
from msgspec import Meta

from schemas import contracts
from schemas.sensors import ALL_UNITS, SENSOR_TYPES, SENSORS

MAX_MESSAGE_BYTES = 1024 * 1024
MAX_BATCH_READINGS = 1000
MAX_READING_BYTES = 4096
PAYLOAD_PREFIX_BYTES = 64 * 1024
DEVICE_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
INT64_MIN, INT64_MAX = -2**63, 2**63 - 1


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
_COLUMNS = ("event_id", "device_id", "sensor_type", "value", "unit", "ts", "seq")


# ---- the per-reading path: names every reason ------------------------------------------------

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
    if seq is not None and not INT64_MIN <= seq <= INT64_MAX:   # landing's seq is int64
        return Rejected(Reason.WRONG_TYPE, "seq is outside the int64 range", b"", 0)
    if not (_utf8(event_id) and (not isinstance(ts, str) or _utf8(ts))):
        return Rejected(Reason.WRONG_TYPE, "event_id or ts holds a lone surrogate, not UTF-8 text", b"", 0)
    if not _finite(value) or (isinstance(ts, float) and not math.isfinite(ts)):
        return Rejected(Reason.NON_FINITE_VALUE, f"value {value!r}"[:100], b"", 0)
    if not DEVICE_ID.fullmatch(device_id):
        return Rejected(Reason.INVALID_DEVICE_ID, "device_id must match ^[A-Za-z0-9_-]{1,64}$", b"", 0)
    spec = SENSORS.get(sensor)
    if spec is None:
        return Rejected(Reason.UNKNOWN_SENSOR_TYPE, f"sensor_type {sensor[:64]!r}", b"", 0)
    if unit is not None and unit not in spec.conversions:
        return Rejected(Reason.UNKNOWN_UNIT, f"unit {unit[:32]!r} for {sensor}", b"", 0)
    # a reading's size: exact only when a rough sum of its parts could be near the limit
    if _rough_size(r) > MAX_READING_BYTES // 2 and len(_dumps(r)) > MAX_READING_BYTES:
        return Rejected(Reason.OVERSIZED_READING, f"reading over {MAX_READING_BYTES} bytes", b"", 0)
    return None


def _rough_size(r: dict) -> int:
    return sum(len(v) if isinstance(v, str) else 24 for v in r.values()) + 16 * len(r)


def _finite(x) -> bool:
    try:
        return math.isfinite(x)
    except OverflowError:      # an integer literal beyond float64 (json.loads keeps it as an int)
        return False


def _utf8(s: str) -> bool:
    """False for a lone surrogate (a JSON \\ud800 escape): Arrow cannot store it."""
    if s.isascii():
        return True
    try:
        s.encode()
        return True
    except UnicodeEncodeError:
        return False


def _dumps(r) -> bytes:
    try:
        return orjson.dumps(r)
    except TypeError:   # non-finite floats, ints over 64 bits or lone surrogates from the fallback parser
        return json.dumps(r, default=str).encode()


def _ts_text(ts) -> str:
    if isinstance(ts, str):
        return ts
    if isinstance(ts, int):      # exact digits, also beyond float64
        return str(ts)
    return str(int(ts)) if ts.is_integer() else repr(ts)


def _parse(value: bytes):
    try:
        return orjson.loads(value)
    except orjson.JSONDecodeError:
        # orjson refuses NaN/Infinity/overflowing literals; Python's parser reads them as floats,
        # so that only the reading holding one is rejected (non_finite_value), not the message
        return json.loads(value)


def _text_or_none(v) -> str | None:
    return v if isinstance(v, str) and _utf8(v) else None


def decode_message(msg: KafkaMessage) -> tuple[list[dict], list[Rejected]]:
    """One message -> (accepted readings, rejects), checked reading by reading."""
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
            bad.event_id, bad.device_id = _text_or_none(r.get("event_id")), _text_or_none(r.get("device_id"))
        rejected.append(bad)
    return accepted, rejected


def _per_reading(messages: list[KafkaMessage], which: list[int]):
    """The per-reading path over messages[i] for i in which: (columns, message index of each row,
    dead letters in message order)."""
    cols = {k: [] for k in _COLUMNS}
    rows_of: list[int] = []
    dead: list[tuple[KafkaMessage, Rejected]] = []
    for i in which:
        accepted, rejected = decode_message(messages[i])
        for r in accepted:
            cols["event_id"].append(r["event_id"])
            cols["device_id"].append(r["device_id"])
            cols["sensor_type"].append(r["sensor_type"])
            cols["value"].append(float(r["value"]))
            cols["unit"].append(r.get("unit"))
            cols["ts"].append(_ts_text(r["ts"]))
            cols["seq"].append(r.get("seq"))
        rows_of += [i] * len(accepted)
        dead += [(messages[i], d) for d in rejected]
    arrays = {k: pa.array(v, contracts.RAW_SENSOR_READINGS.field(k).type) for k, v in cols.items()}
    return arrays, np.asarray(rows_of, np.int64), dead


# ---- the fast path: typed decoding in C, checks over columns -----------------------------------

# Strings the fast path takes are short enough that the per-reading size measure (_rough_size)
# cannot pass MAX_READING_BYTES // 2: 7 keys * 16 + event_id 512 + device_id 64 + sensor_type 18
# + value 24 + unit 24 + ts 512 + seq 24 = 1290 <= 2048, so no reading it accepts is oversized.
# Longer strings are legal; they take the per-reading path.
_FAST_STR_MAX = 512
_Str = Annotated[str, Meta(max_length=_FAST_STR_MAX)]
_Int64 = Annotated[int, Meta(ge=INT64_MIN, le=INT64_MAX)]


class _Reading(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    """One reading as the fast path takes it. Any field outside these types fails the message over
    to the per-reading path: bools are not numbers, JSON floats are not ints (seq, ts), NaN and
    Infinity literals are not JSON, and duplicate keys keep the last value, as orjson does."""
    event_id: _Str
    device_id: Annotated[str, Meta(min_length=1, max_length=64)]   # the pattern: over the column
    sensor_type: Literal[SENSOR_TYPES]
    value: float                    # a JSON int or float literal; overflow fails
    ts: _Str | _Int64               # a float ts (rare) takes the per-reading path
    unit: Literal[ALL_UNITS] | None = None
    seq: _Int64 | None = None


_FAST = msgspec.json.Decoder(
    Annotated[list[_Reading], Meta(min_length=1, max_length=MAX_BATCH_READINGS)] | _Reading)
# DEVICE_ID.fullmatch in RE2 over a column: 90 ns a reading, where msgspec's Meta(pattern=...)
# (Python's re per string) took 430
_DEVICE_ID_RE2 = r"\A[A-Za-z0-9_-]{1,64}\z"
# (sensor_type, unit) pairs the contract accepts, joined as the column check builds them
_UNIT_PAIRS = pa.array(sorted(f"{s}\x1f{u}" for s, spec in SENSORS.items() for u in spec.conversions))


def _fast_readings(value: bytes | None) -> list[_Reading] | None:
    """The message's readings if every one of them passes the typed decoding, else None."""
    if not value or len(value) > MAX_MESSAGE_BYTES:
        return None
    try:
        body = _FAST.decode(value)
    except msgspec.MsgspecError:       # DecodeError (not JSON) or ValidationError (a bad field)
        return None
    return body if isinstance(body, list) else [body]


def _fast_columns(readings: list[_Reading]) -> dict[str, pa.Array]:
    # one list per field: no per-reading container (10K tuples from astuple wake the GC, which
    # walks the worker's whole heap: 2.4 us per reading against 0.1 us for these)
    event_id, device_id, sensor = ([r.event_id for r in readings], [r.device_id for r in readings],
                                   [r.sensor_type for r in readings])
    value, ts = [r.value for r in readings], [r.ts for r in readings]
    unit, seq = [r.unit for r in readings], [r.seq for r in readings]
    try:
        ts_text = pa.array(ts, pa.int64()).cast(pa.string())      # epoch ms: digits, as str(int)
    except (pa.ArrowInvalid, pa.ArrowTypeError):                  # some or all are ISO text
        ts_text = pa.array(list(map(str, ts)), pa.string())
    return {"event_id": pa.array(event_id, pa.string()), "device_id": pa.array(device_id, pa.string()),
            "sensor_type": pa.array(sensor, pa.string()), "value": pa.array(value, pa.float64()),
            "unit": pa.array(unit, pa.string()), "ts": ts_text, "seq": pa.array(seq, pa.int64())}


def _bad_rows(cols: dict[str, pa.Array]) -> np.ndarray:
    """Rows the typed decoding does not judge: a device_id outside the pattern, a unit not accepted
    for its sensor (and, defensively, a non-finite value)."""
    device_ok = pc.match_substring_regex(cols["device_id"], _DEVICE_ID_RE2).to_numpy(zero_copy_only=False)
    pairs = pc.binary_join_element_wise(cols["sensor_type"], cols["unit"], "\x1f")
    unit_ok = pc.or_(pc.is_null(cols["unit"]), pc.is_in(pairs, value_set=_UNIT_PAIRS))
    finite = np.isfinite(cols["value"].to_numpy(zero_copy_only=False))
    return ~(device_ok & unit_ok.to_numpy(zero_copy_only=False) & finite)


def _fast(messages: list[KafkaMessage]):
    """The fast path over a batch: (columns, message index of each row, indexes of the messages
    left to the per-reading path)."""
    readings: list[_Reading] = []
    counts = np.zeros(len(messages), np.int64)
    slow = np.zeros(len(messages), bool)
    for i, msg in enumerate(messages):
        rs = _fast_readings(msg.value)
        if rs is None:
            slow[i] = True
        else:
            readings += rs
            counts[i] = len(rs)
    cols = _fast_columns(readings)
    rows_of = np.repeat(np.arange(len(messages), dtype=np.int64), counts)
    bad = _bad_rows(cols)
    if bad.any():                      # the whole message goes to the per-reading path
        slow[rows_of[bad]] = True
        keep = ~slow[rows_of]
        cols = {k: a.filter(pa.array(keep)) for k, a in cols.items()}
        rows_of = rows_of[keep]
    return cols, rows_of, np.flatnonzero(slow).tolist()


# ---- one batch of messages -> Arrow ------------------------------------------------------------

def _utc_us(ms: Iterable[int]) -> pa.Array:
    return pa.array(np.asarray(list(ms) if not isinstance(ms, np.ndarray) else ms, dtype=np.int64)
                    * 1000).cast(contracts.UTC_TS)


@dataclass
class Decoded:
    readings: pa.Table        # RAW_SENSOR_READINGS (landing contract)
    deadletters: pa.Table     # DEADLETTER
    messages: int
    offsets: list[tuple[str, int, int]]   # (topic, partition, offset) of every message decoded
    per_reading_messages: int = 0         # messages the fast path left to the per-reading path


def _readings_table(cols: dict[str, pa.Array], messages: list[KafkaMessage], rows_of: np.ndarray) -> pa.Table:
    """Reading columns + the Kafka metadata of each row's message, taken by message index."""
    take = pa.array(rows_of, pa.int64())
    ingested = _utc_us(np.fromiter((m.timestamp_ms for m in messages), np.int64, len(messages))[rows_of])
    return pa.table({
        **cols,
        "timestamp_ingested": ingested,
        "kafka_topic": pa.array([m.topic for m in messages], pa.string()).take(take),
        "kafka_partition": pa.array([m.partition for m in messages], pa.int32()).take(take),
        "kafka_offset": pa.array([m.offset for m in messages], pa.int64()).take(take),
        "ingest_date": ingested.cast(pa.date32()),
    }, schema=contracts.RAW_SENSOR_READINGS)


def decode_messages(messages: list[KafkaMessage], now: dt.datetime | None = None, *,
                    fast: bool = True) -> Decoded:
    """A batch of messages -> one Arrow table of readings (in message order) and one of dead letters.
    ``fast=False`` runs every message through the per-reading path (the reference the tests use)."""
    if fast:
        cols, rows_of, slow = _fast(messages)
    else:
        cols, rows_of, slow = _fast_columns([]), np.zeros(0, np.int64), list(range(len(messages)))
    slow_cols, slow_rows_of, dead = _per_reading(messages, slow)
    if len(slow_rows_of):
        # rows of both paths back into message order (a message's rows all come from one path)
        rows_of = np.concatenate([rows_of, slow_rows_of])
        order = pa.array(np.argsort(rows_of, kind="stable"))
        cols = {k: pa.concat_arrays([cols[k], slow_cols[k]]).take(order) for k in _COLUMNS}
        rows_of = np.sort(rows_of, kind="stable")
    return Decoded(_readings_table(cols, messages, rows_of), deadletter_table(dead, now), len(messages),
                   [(m.topic, m.partition, m.offset) for m in messages], len(slow))


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


@beam.typehints.with_input_types(typing.List[KafkaMessage])
@beam.typehints.with_output_types(Decoded)
class DecodeMessages(beam.PTransform):
    """PCollection[list[KafkaMessage]] -> PCollection[Decoded], with counters per stage and reason and
    of the messages that took the per-reading path."""

    def expand(self, batches):
        return batches | "Decode" >> beam.ParDo(_DecodeFn())


@beam.typehints.with_input_types(typing.List[KafkaMessage])
@beam.typehints.with_output_types(Decoded)
class _DecodeFn(beam.DoFn):
    def __init__(self):
        self.messages = Metrics.counter("decode", "messages")
        self.readings = Metrics.counter("decode", "readings")
        self.deadlettered = Metrics.counter("decode", "deadlettered")
        # messages the fast path could not take whole: a high share means slow decoding
        self.per_reading = Metrics.counter("decode", "per_reading_messages")
        self._by_reason = {r: Metrics.counter("decode", f"deadlettered_{r.value}") for r in Reason}

    def process(self, messages: list[KafkaMessage]):
        decoded = decode_messages(messages)
        self.messages.inc(decoded.messages)
        self.readings.inc(decoded.readings.num_rows)
        self.deadlettered.inc(decoded.deadletters.num_rows)
        self.per_reading.inc(decoded.per_reading_messages)
        for reason in decoded.deadletters["reason"].to_pylist():
            self._by_reason[Reason(reason)].inc()
        yield decoded
