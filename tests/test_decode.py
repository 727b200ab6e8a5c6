"""Decoding Contract 1: one test per dead-letter reason, mixed batches, every accepted ts form."""
from __future__ import annotations

import orjson
import pytest

from simulation import wire
from simulation.incidents import WIRE_FAULTS
from transforms.decode import KafkaMessage, Reason, decode_messages

GOOD = {"event_id": "e1", "device_id": "dev-00001", "sensor_type": "temperature", "value": 3.5,
        "unit": "C", "ts": "2026-11-26T14:03:12.250+01:00", "seq": 7}


def msg(value: bytes, offset: int = 0) -> KafkaMessage:
    return KafkaMessage("sensor.readings", 2, offset, 1795000000000, b"k", value)


def reading(**changes) -> dict:
    r = dict(GOOD, **changes)
    return {k: v for k, v in r.items() if v is not ...}


def decode_one(r) -> tuple[list[dict], list[str]]:
    out = decode_messages([msg(orjson.dumps(r) if not isinstance(r, bytes) else r)])
    return out.readings.to_pylist(), out.deadletters["reason"].to_pylist()


@pytest.mark.parametrize("bad, reason", [
    (b'{"event_id": "e1", "device_id": ', Reason.INVALID_JSON),
    (b"\xff\xfe not utf8", Reason.INVALID_JSON),
    (orjson.dumps([reading(event_id=f"e{i}") for i in range(1001)]), Reason.OVERSIZED_BATCH),
    (b"[" + b",".join([orjson.dumps(reading(note="x" * 1500))] * 700) + b"]", Reason.OVERSIZED_MESSAGE),
    (b"[]", Reason.EMPTY_BATCH),
    (b'"just a string"', Reason.NOT_AN_OBJECT),
    (b"[42]", Reason.NOT_AN_OBJECT),
    (reading(note="x" * 5000), Reason.OVERSIZED_READING),
    (reading(value=...), Reason.MISSING_FIELD),
    (reading(event_id=None), Reason.MISSING_FIELD),
    (reading(ts=...), Reason.MISSING_FIELD),
    (reading(value="3.5"), Reason.WRONG_TYPE),
    (reading(value=True), Reason.WRONG_TYPE),
    (reading(device_id=17), Reason.WRONG_TYPE),
    (reading(ts=["2026"]), Reason.WRONG_TYPE),
    (reading(unit=3), Reason.WRONG_TYPE),
    (reading(seq="7"), Reason.WRONG_TYPE),
    (orjson.dumps(reading(value=123.5)).replace(b"123.5", b"1e999"), Reason.NON_FINITE_VALUE),
    (orjson.dumps(reading(value=123.5)).replace(b"123.5", b"NaN"), Reason.NON_FINITE_VALUE),
    (orjson.dumps(reading(value=123.5)).replace(b"123.5", b"-Infinity"), Reason.NON_FINITE_VALUE),
    (reading(sensor_type="oil_level"), Reason.UNKNOWN_SENSOR_TYPE),
    (reading(unit="furlongs"), Reason.UNKNOWN_UNIT),
    (reading(unit="psi"), Reason.UNKNOWN_UNIT),            # a pressure unit on a temperature
    (reading(device_id="../../etc/passwd"), Reason.INVALID_DEVICE_ID),
    (reading(device_id="dev 01"), Reason.INVALID_DEVICE_ID),
    (reading(device_id=""), Reason.INVALID_DEVICE_ID),
    (reading(device_id="d" * 65), Reason.INVALID_DEVICE_ID),
])
def test_each_dead_letter_reason(bad, reason):
    accepted, reasons = decode_one(bad)
    assert accepted == [] and reasons == [reason.value]


def test_dead_letter_keeps_payload_prefix_and_coordinates():
    value = orjson.dumps(reading(sensor_type="oil_level"))
    out = decode_messages([msg(value, offset=41)])
    [dl] = out.deadletters.to_pylist()
    assert dl["payload"] == value and dl["payload_size"] == len(value)
    assert (dl["kafka_topic"], dl["kafka_partition"], dl["kafka_offset"]) == ("sensor.readings", 2, 41)
    assert dl["event_id"] == "e1" and dl["device_id"] == "dev-00001" and dl["batch_index"] is None
    assert dl["source"] == "streaming"


def test_big_message_payload_is_a_bounded_prefix():
    value = b"[" + b",".join([orjson.dumps(reading(note="x" * 1500))] * 700) + b"]"
    [dl] = decode_messages([msg(value)]).deadletters.to_pylist()
    assert dl["payload"] == value[:64 * 1024] and dl["payload_size"] == len(value)


def test_bad_reading_does_not_reject_its_neighbours():
    batch = [reading(event_id="a"), reading(event_id="b", value="x"), reading(event_id="c"),
             reading(event_id="d", device_id="../x"), reading(event_id="e", value=1.0)]
    body = orjson.dumps(batch)
    out = decode_messages([msg(body), msg(orjson.dumps(reading(event_id="f")), offset=1)])
    assert out.readings["event_id"].to_pylist() == ["a", "c", "e", "f"]
    assert out.readings["kafka_offset"].to_pylist() == [0, 0, 0, 1]
    assert [(d["event_id"], d["reason"], d["batch_index"]) for d in out.deadletters.to_pylist()] == [
        ("b", "wrong_type", 1), ("d", "invalid_device_id", 3)]
    assert out.messages == 2
    # input = landed + dead-lettered, counted in readings
    assert out.readings.num_rows + out.deadletters.num_rows == len(batch) + 1


def test_non_finite_literal_rejects_only_its_reading():
    body = orjson.dumps([reading(event_id="a"), reading(event_id="b", value=123.5)]).replace(b"123.5", b"1e999")
    out = decode_messages([msg(body)])
    assert out.readings["event_id"].to_pylist() == ["a"]
    assert out.deadletters["reason"].to_pylist() == ["non_finite_value"]


@pytest.mark.parametrize("ts, stored", [
    ("2026-11-26T14:03:12.250+01:00", "2026-11-26T14:03:12.250+01:00"),   # ISO with offset
    ("2026-11-26T14:03:12.250", "2026-11-26T14:03:12.250"),               # local time of the device
    (1795000000000, "1795000000000"),                                     # epoch ms, a JSON number
    (1795000000000.0, "1795000000000"),
    (1795000000000.5, "1795000000000.5"),
    ("1795000000000", "1795000000000"),                                   # epoch ms as text
])
def test_every_accepted_ts_form_is_kept_as_received(ts, stored):
    accepted, reasons = decode_one(reading(ts=ts))
    assert reasons == [] and accepted[0]["ts"] == stored


def test_accepted_reading_fields_and_landing_columns():
    [row], _ = decode_one(reading(unit=..., seq=...))
    assert row["unit"] is None and row["seq"] is None          # optional fields
    assert row["kafka_partition"] == 2 and row["timestamp_ingested"].timestamp() == 1795000000.0
    assert str(row["ingest_date"]) == "2026-11-18"


@pytest.mark.parametrize("fault", sorted(WIRE_FAULTS))
def test_simulator_wire_faults_are_dead_lettered_with_their_reason(fault):
    template = {"event_id": "", "device_id": "dev-00001", "sensor_type": "temperature", "value": 1.5,
                "unit": "C", "ts": 1795000000000}
    body, bad, good = wire.wire_fault_message(fault, 0, template)
    out = decode_messages([msg(body)])
    assert set(out.readings["event_id"].to_pylist()) == set(good)
    assert set(out.deadletters["reason"].to_pylist()) == {WIRE_FAULTS[fault]}
