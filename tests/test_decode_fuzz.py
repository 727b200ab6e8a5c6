"""Decode fuzzing: whatever bytes arrive, decoding never raises and accounts for every input, and no
device_id that could escape a path (the archive uses it as a directory name) is ever accepted."""
from __future__ import annotations

import json

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from transforms.decode import DEVICE_ID, KafkaMessage, decode_messages

GOOD = {"event_id": "e", "device_id": "dev-1", "sensor_type": "vibration", "value": 2.5, "unit": "mm/s",
        "ts": 1795000000000, "seq": 1}
FIELDS = list(GOOD) + ["note"]

scalars = st.one_of(st.none(), st.booleans(), st.integers(min_value=-2**70, max_value=2**70),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=40),
                    st.sampled_from(["../../etc/passwd", "..", "a/b", "dev 1", "x" * 70, "dev\x00", "ünï"]))
json_values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                           st.dictionaries(st.text(max_size=8), inner, max_size=4)),
                           max_leaves=20)
mutated_reading = st.fixed_dictionaries({}, optional={f: json_values for f in FIELDS}).map(
    lambda changes: {**GOOD, **changes})
readings = st.one_of(mutated_reading, json_values)


def _encode(value) -> bytes:
    return json.dumps(value, allow_nan=True).encode()   # NaN/Infinity literals on purpose


def _message(value: bytes, offset: int = 0) -> KafkaMessage:
    return KafkaMessage("sensor.readings", 0, offset, 1795000000000, b"k", value)


def _check(messages: list[KafkaMessage], readings_sent: int | None) -> None:
    out = decode_messages(messages)
    assert out.messages == len(messages)
    # every message is accounted for: it landed rows, or dead-lettered something
    landed = set(out.readings["kafka_offset"].to_pylist())
    dead = set(out.deadletters["kafka_offset"].to_pylist())
    assert landed | dead == {m.offset for m in messages}
    if readings_sent is not None:
        assert out.readings.num_rows + out.deadletters.num_rows == readings_sent
    for device_id in out.readings["device_id"].to_pylist():
        assert DEVICE_ID.fullmatch(device_id) and "/" not in device_id and ".." not in device_id
    assert all(v == v and abs(v) != float("inf") for v in out.readings["value"].to_pylist())


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2000))
def test_random_bytes(data):
    _check([_message(data)], None)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(readings, min_size=1, max_size=30))
def test_json_batches_of_mutated_readings(batch):
    _check([_message(_encode(batch))], len(batch))


@settings(max_examples=200, deadline=None)
@given(readings)
def test_single_mutated_reading(reading):
    _check([_message(_encode(reading))], None if isinstance(reading, list) else 1)


@settings(max_examples=50, deadline=None)
@given(st.integers(min_value=1, max_value=3000))
def test_deep_nesting(depth):
    _check([_message(b"[" * depth + b"]" * depth)], None)
    _check([_message(orjson.dumps({**GOOD, "note": None}).replace(b"null", b"[" * depth + b"]" * depth))], 1)


def test_oversized_inputs_are_rejected_whole():
    many = orjson.dumps([GOOD] * 1001)
    huge = b"[" + b",".join([orjson.dumps({**GOOD, "note": "x" * 3000})] * 400) + b"]"
    out = decode_messages([_message(many, 0), _message(huge, 1)])
    assert out.readings.num_rows == 0
    assert out.deadletters["reason"].to_pylist() == ["oversized_batch", "oversized_message"]
