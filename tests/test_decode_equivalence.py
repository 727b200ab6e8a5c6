"""The decode fast path (msgspec + column checks) and the per-reading path give exactly the same
landed rows and dead letters, on random valid and invalid messages and on the tricky cases: numbers
vs bools, ints vs floats, NaN/Infinity literals, duplicate keys, extra fields, unicode and lone
surrogates, the 4 KiB reading measure, int64 bounds, the optional unit."""
from __future__ import annotations

import datetime as dt
import json

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import transforms.decode as decode
from schemas.sensors import ALL_UNITS, SENSOR_TYPES, SENSORS
from transforms.decode import MAX_READING_BYTES, KafkaMessage, decode_messages

NOW = dt.datetime(2026, 12, 1, tzinfo=dt.timezone.utc)


class Lit(str):
    """A JSON token written as is (number literals, NaN, Infinity)."""


class Obj(list):
    """A JSON object as (key, value) pairs, so keys may repeat."""


def encode(v, ascii_only: bool, spaced: bool) -> str:
    sep, colon = (", ", ": ") if spaced else (",", ":")
    if isinstance(v, Lit):
        return str(v)
    if isinstance(v, Obj):
        return "{" + sep.join(json.dumps(k, ensure_ascii=ascii_only) + colon + encode(x, ascii_only, spaced)
                              for k, x in v) + "}"
    if isinstance(v, list):
        return "[" + sep.join(encode(x, ascii_only, spaced) for x in v) + "]"
    return json.dumps(v, ensure_ascii=ascii_only, allow_nan=True)


def run_both(values: list[bytes]):
    messages = [KafkaMessage("sensor.readings", i % 4, 100 + i, 1795000000000 + i, b"k", v)
                for i, v in enumerate(values)]
    return decode_messages(messages, NOW), decode_messages(messages, NOW, fast=False)


def assert_same(fast, slow) -> None:
    assert fast.readings.schema == slow.readings.schema
    assert fast.readings.to_pylist() == slow.readings.to_pylist()
    # the same float64 bits too (0.0 == -0.0 in the comparison above)
    bits = [t["value"].to_numpy().view(np.int64).tolist() for t in (fast.readings, slow.readings)]
    assert bits[0] == bits[1]
    assert fast.deadletters.to_pylist() == slow.deadletters.to_pylist()
    assert (fast.messages, fast.offsets) == (slow.messages, slow.offsets)
    assert fast.per_reading_messages <= slow.per_reading_messages == slow.messages


# ---- strategies --------------------------------------------------------------------------------

number_literals = st.from_regex(r"\A-?(0|[1-9][0-9]{0,25})(\.[0-9]{1,20})?([eE][+-]?[0-9]{1,3})?\Z").map(Lit)
odd_literals = st.sampled_from(["NaN", "Infinity", "-Infinity", "1e999", "-1e999", "1" + "0" * 400, "-0",
                                "-0.0", "9223372036854775807", "9223372036854775808", "-9223372036854775808",
                                "-9223372036854775809", "18446744073709551616", "true", "null"]).map(Lit)
texts = st.one_of(st.text(max_size=12), st.text(st.characters(codec="utf-8"), max_size=6),
                  st.sampled_from(["\ud800", "a\udfff", "\ud83d\ude00", "é😀", "dev-1\n", "\x00", "\u2028"]),
                  st.integers(500, 520).map(lambda n: "e" * n), st.integers(508, 514).map(lambda n: "é" * n))
anything = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70),
                     st.floats(allow_nan=True, allow_infinity=True), texts, number_literals, odd_literals,
                     st.lists(st.integers(), max_size=2))
device_ids = st.one_of(st.from_regex(r"\A[A-Za-z0-9_-]{1,64}\Z"), st.sampled_from(
    ["dev-00001", "d" * 64, "d" * 65, "", "dev 1", "../x", "dév", "dev1\n", "\ndev1", "dev\u212a"]), texts)
iso = st.datetimes(dt.datetime(2000, 1, 1), dt.datetime(2100, 1, 1)).map(lambda d: d.isoformat(timespec="milliseconds"))
ts_values = st.one_of(st.integers(1_500_000_000_000, 2_000_000_000_000), iso,
                      iso.map(lambda s: s + "+01:00"), st.integers(-2**65, 2**65),
                      st.floats(allow_nan=False, allow_infinity=False), number_literals, anything)


_INT_EDGES = [2**63 - 1, 2**63, -2**63, -2**63 - 1, 2**64 - 1, 2**64, 2**64 + 1, 2**70 + 1, 10**30]
edge_ts = st.one_of(st.sampled_from(_INT_EDGES + [1795000000000.0, 1795000000000.5, 1e300, True]),
                    st.integers(-2**65, 2**65), st.floats(allow_nan=False, allow_infinity=False),
                    number_literals, odd_literals)
edge_seq = st.one_of(st.sampled_from(_INT_EDGES + [7.0, True, 0]), st.integers(-2**65, 2**65),
                     number_literals, odd_literals)
edge_strings = st.one_of(st.integers(505, 520).map(lambda n: "e" * n), st.integers(508, 514).map(lambda n: "é" * n),
                         st.integers(3950, 4200).map(lambda n: "e" * n), texts)


@st.composite
def readings(draw) -> Obj:
    """A valid reading, or (about 40% of the time) one with a single trick in it."""
    sensor = draw(st.sampled_from(SENSOR_TYPES))
    fields = {
        "event_id": draw(st.uuids().map(str)),
        "device_id": draw(st.from_regex(r"\A[A-Za-z0-9_-]{1,64}\Z")),
        "sensor_type": sensor,
        "value": draw(st.one_of(st.floats(allow_nan=False, allow_infinity=False), st.integers(-2**64, 2**64),
                                number_literals)),
        "unit": draw(st.sampled_from(list(SENSORS[sensor].conversions) + [None])),
        "ts": draw(st.one_of(st.integers(1_500_000_000_000, 2_000_000_000_000), iso, iso.map(lambda s: s + "+01:00"))),
        "seq": draw(st.one_of(st.integers(0, 2**40), st.none())),
    }
    for name in ("unit", "seq"):
        if draw(st.booleans()):
            del fields[name]                    # optional
    pairs = draw(st.permutations(list(fields.items())))
    trick = draw(st.integers(0, 27))          # 0-11: one trick; else valid
    name = draw(st.sampled_from(list(fields)))
    at = draw(st.integers(0, len(pairs)))
    if trick == 0:
        pairs = [(k, draw(anything) if k == name else v) for k, v in pairs]
    elif trick == 1:
        pairs = [(k, v) for k, v in pairs if k != name]
    elif trick == 2:                            # a repeated key, before or after the original
        pairs.insert(at, (name, draw(anything)))
    elif trick == 3:
        pairs.insert(at, (name, dict(pairs)[name]) if name in dict(pairs) else (name, None))
    elif trick == 4:                            # an extra field, sometimes big enough to oversize
        pairs.insert(at, (draw(st.sampled_from(["note", "gw", "Value", ""])),
                          draw(st.one_of(st.integers(3800, 4200).map(lambda n: "x" * n), anything))))
    elif trick == 5:
        pairs.append(("ts", draw(edge_ts)))
    elif trick == 6:
        pairs.append(("seq", draw(edge_seq)))
    elif trick == 7:
        pairs.append((draw(st.sampled_from(["event_id", "ts"])), draw(edge_strings)))
    elif trick == 8:
        pairs.append(("device_id", draw(device_ids)))
    elif trick == 9:
        pairs.append(("sensor_type", draw(st.sampled_from(["oil_level", "Temperature", ""]) | st.sampled_from(SENSOR_TYPES))))
    elif trick == 10:
        pairs.append(("unit", draw(st.sampled_from(ALL_UNITS + ("", "furlongs")) | st.none())))
    elif trick == 11:
        pairs.append(("value", draw(st.one_of(odd_literals, st.booleans(), st.floats()))))
    return Obj(pairs)


@st.composite
def message_values(draw) -> bytes:
    shape = draw(st.integers(0, 9))
    if shape == 0:
        body = draw(st.sampled_from([[], "text", 42, None, [[]], [1], {}]))
    elif shape <= 4:
        body = draw(readings())
    else:
        body = draw(st.lists(readings(), min_size=1, max_size=4))
    text = encode(body, ascii_only=draw(st.booleans()), spaced=draw(st.booleans()))
    raw = text.encode("utf-8", "surrogatepass")
    mutation = draw(st.integers(0, 19))
    if mutation == 0 and raw:                   # one corrupted byte
        i = draw(st.integers(0, len(raw) - 1))
        raw = raw[:i] + bytes([draw(st.integers(0, 255))]) + raw[i + 1:]
    elif mutation == 1:                         # truncated
        raw = raw[:draw(st.integers(0, len(raw)))]
    elif mutation == 2:                         # whitespace or a BOM around it
        raw = draw(st.sampled_from([b" \n", b"\t", b"\xef\xbb\xbf", b""])) + raw + b"\r\n "
    return raw


# ---- properties --------------------------------------------------------------------------------

@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.lists(message_values(), min_size=1, max_size=6))
def test_fast_path_equals_per_reading_path(values):
    assert_same(*run_both(values))


@st.composite
def valid_batches(draw) -> list[dict]:
    out = []
    for _ in range(draw(st.integers(1, 20))):
        sensor = draw(st.sampled_from(SENSOR_TYPES))
        r = {"event_id": draw(st.uuids().map(str)), "device_id": draw(st.from_regex(r"\A[A-Za-z0-9_-]{1,64}\Z")),
             "sensor_type": sensor, "value": draw(st.one_of(st.floats(allow_nan=False, allow_infinity=False),
                                                           st.integers(-2**63, 2**63 - 1))),
             "unit": draw(st.sampled_from(list(SENSORS[sensor].conversions) + [None])),
             "ts": draw(st.one_of(st.integers(-2**63, 2**63 - 1), iso)), "seq": draw(st.integers(0, 2**62))}
        if r["unit"] is None and draw(st.booleans()):
            del r["unit"]
        out.append(r)
    return out


@settings(max_examples=150, deadline=None)
@given(st.lists(valid_batches(), min_size=1, max_size=4), st.booleans())
def test_valid_messages_never_take_the_per_reading_path(batches, single):
    values = [orjson.dumps(b[0] if single else b) for b in batches]
    fast, slow = run_both(values)
    assert fast.per_reading_messages == 0 and fast.deadletters.num_rows == 0
    assert fast.readings.num_rows == sum(1 if single else len(b) for b in batches)
    assert_same(fast, slow)


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.text(max_size=70), st.from_regex(r"\A[A-Za-z0-9_-]{0,66}\n?\Z")))
def test_device_id_pattern_is_the_contract_regex(device_id):
    r = {"event_id": "e", "device_id": device_id, "sensor_type": "vibration", "value": 1, "ts": 1}
    value = json.dumps(r).encode()
    fast, slow = run_both([value])
    assert_same(fast, slow)
    assert fast.readings.num_rows == (1 if decode.DEVICE_ID.fullmatch(device_id) else 0)


# ---- tricky cases, one by one ------------------------------------------------------------------

BASE = ('"event_id":"e1","device_id":"dev-00001","sensor_type":"temperature"')


def obj(*parts: str) -> bytes:
    return ("{" + ",".join((BASE,) + parts) + "}").encode("utf-8", "surrogatepass")


@pytest.mark.parametrize("value, fast_path, landed, reason", [
    (obj('"value":1', '"ts":1'), True, {"value": 1.0, "ts": "1"}, None),
    (obj('"value":true', '"ts":1'), False, None, "wrong_type"),                # true is not a number
    (obj('"value":1E+2', '"ts":-0'), True, {"value": 100.0, "ts": "0"}, None),
    (obj('"value":-0.0', '"ts":1'), True, {"value": -0.0}, None),
    (obj('"value":1', '"ts":1795000000000.0'), False, {"ts": "1795000000000"}, None),  # float ts
    (obj('"value":1', '"ts":1.7950000000005e12'), False, {"ts": "1795000000000.5"}, None),
    (obj('"value":1', '"ts":1', '"seq":7.0'), False, None, "wrong_type"),     # a float is not an int
    (obj('"value":1', '"ts":1', '"seq":true'), False, None, "wrong_type"),
    (obj('"value":1', '"ts":1', f'"seq":{2**63 - 1}'), True, {"seq": 2**63 - 1}, None),
    (obj('"value":1', '"ts":1', f'"seq":{2**63}'), False, None, "wrong_type"),    # was a crash
    (obj('"value":1', '"ts":1', f'"seq":{-2**63}'), True, {"seq": -2**63}, None),
    (obj('"value":1' + "0" * 400, '"ts":1'), False, None, "non_finite_value"),  # was a crash
    (obj('"value":1', '"ts":1' + "0" * 400), False, {"ts": "1" + "0" * 400}, None),  # was a crash
    (obj('"value":1', f'"ts":{2**63}'), False, {"ts": str(2**63)}, None),
    (obj('"value":NaN', '"ts":1'), False, None, "non_finite_value"),
    (obj('"value":-Infinity', '"ts":1'), False, None, "non_finite_value"),
    (obj('"value":1e999', '"ts":1'), False, None, "non_finite_value"),
    (obj('"value":1', '"ts":NaN'), False, None, "non_finite_value"),
    (obj('"value":"x"', '"value":2', '"ts":1'), False, {"value": 2.0}, None),  # duplicate keys: last wins
    (obj('"value":2', '"value":true', '"ts":1'), False, None, "wrong_type"),
    (obj('"value":2', '"value":3', '"ts":1'), True, {"value": 3.0}, None),
    (obj('"value":2', '"unit":"psi"', '"unit":null', '"ts":1'), True, {"unit": None}, None),
    (obj('"value":2', '"unit":null', '"unit":"psi"', '"ts":1'), False, None, "unknown_unit"),
    (obj('"value":2', '"ts":1', '"note":"x"'), False, {"value": 2.0}, None),   # extra field: lands
    (obj('"value":2', '"ts":1', '"unit":"F"'), True, {"unit": "F"}, None),
    (obj('"value":2', '"ts":1', '"unit":""'), False, None, "unknown_unit"),
    (obj('"value":2', '"ts":1', '"unit":"psi"'), False, None, "unknown_unit"),  # column check fails
    (obj('"value":2', '"ts":1'), True, {"unit": None, "seq": None}, None),     # unit optional: null, default later
    (obj('"value":2', '"ts":"2026-11-26T14:03:12.250+01:00"', '"event_id":"\\u00e9\\ud83d\\ude00"'),
     True, {"event_id": "é😀"}, None),
    (obj('"value":2', '"ts":"2026-11-26T14:03:12.250"', '"event_id":"é😀"'), True, {"event_id": "é😀"}, None),
    (obj('"value":2', '"ts":1', '"event_id":"\\ud800"'), False, None, "wrong_type"),   # was a crash
    (obj('"value":2', '"ts":"\\udfff"'), False, None, "wrong_type"),
    (obj('"value":2', '"ts":1', '"event_id":"\ud800"'), False, None, "wrong_type"),    # raw surrogate bytes
    (obj('"value":2', '"ts":1', '"device_id":"d\\u00e9v"'), False, None, "invalid_device_id"),
    (obj('"value":2', '"ts":1', '"device_id":"dev1\\n"'), False, None, "invalid_device_id"),
    (b"\xef\xbb\xbf" + obj('"value":2', '"ts":1'), False, {"value": 2.0}, None),  # BOM: json.loads takes it
    (obj('"value":2', '"ts":1', f'"event_id":"{"e" * 512}"'), True, {"value": 2.0}, None),
    (obj('"value":2', '"ts":1', f'"event_id":"{"e" * 513}"'), False, {"value": 2.0}, None),  # longer: slow, lands
    (obj('"value":2', '"ts":1', f'"event_id":"{"e" * 4100}"'), False, None, "oversized_reading"),
    (obj('"value":2', '"ts":1', f'"note":"{"x" * 4100}"'), False, None, "oversized_reading"),
])
def test_tricky_case(value, fast_path, landed, reason):
    fast, slow = run_both([value])
    assert_same(fast, slow)
    assert fast.per_reading_messages == (0 if fast_path else 1)
    if landed is None:
        assert fast.readings.num_rows == 0 and fast.deadletters["reason"].to_pylist() == [reason]
    else:
        [row] = fast.readings.to_pylist()
        assert {k: row[k] for k in landed} == landed and fast.deadletters.num_rows == 0
        if "value" in landed:
            assert np.signbit(row["value"]) == np.signbit(landed["value"])


def test_one_bad_reading_sends_only_its_message_to_the_per_reading_path():
    good = {"event_id": "g", "device_id": "dev-1", "sensor_type": "vibration", "value": 1.0, "ts": 5}
    values = [orjson.dumps([good, good]),
              orjson.dumps([dict(good, event_id="a"), dict(good, event_id="bad", unit="psi"), dict(good, event_id="c")]),
              orjson.dumps(dict(good, event_id="s")),
              orjson.dumps([dict(good, event_id="n"), dict(good, event_id="nan", value=12.5)]).replace(b"12.5", b"NaN")]
    fast, slow = run_both(values)
    assert_same(fast, slow)
    assert fast.per_reading_messages == 2
    assert fast.readings["event_id"].to_pylist() == ["g", "g", "a", "c", "s", "n"]     # message order kept
    assert fast.readings["kafka_offset"].to_pylist() == [100, 100, 101, 101, 102, 103]
    assert [(d["event_id"], d["reason"], d["batch_index"], d["kafka_offset"]) for d in fast.deadletters.to_pylist()] \
        == [("bad", "unknown_unit", 1, 101), ("nan", "non_finite_value", 1, 103)]


def test_valid_messages_skip_the_per_reading_checks(monkeypatch):
    def no_per_reading(_):
        raise AssertionError("a valid message reached the per-reading check")
    monkeypatch.setattr(decode, "_check_reading", no_per_reading)
    good = {"event_id": "g", "device_id": "dev-1", "sensor_type": "suction_pressure", "value": 310.5,
            "unit": "kPa", "ts": 1795000000000, "seq": 3}
    out = decode_messages([KafkaMessage("t", 0, 0, 0, None, orjson.dumps([good] * 500)),
                           KafkaMessage("t", 0, 1, 0, None, orjson.dumps(dict(good, ts="2026-11-26T14:03:12")))])
    assert out.readings.num_rows == 501 and out.per_reading_messages == 0


def test_fast_path_strings_cannot_reach_the_reading_size_measure():
    # the largest reading the fast path takes, by the per-reading path's own rough measure
    longest_sensor = max(SENSOR_TYPES, key=len)
    worst = {"event_id": "e" * decode._FAST_STR_MAX, "device_id": "d" * 64, "sensor_type": longest_sensor,
             "value": 0.0, "unit": None, "ts": "t" * decode._FAST_STR_MAX, "seq": 0}
    assert decode._rough_size(worst) <= MAX_READING_BYTES // 2
    assert set(worst) == set(decode._Reading.__struct_fields__)       # and nothing else gets in


def test_empty_and_all_rejected_batches():
    fast, slow = run_both([])
    assert_same(fast, slow)
    assert fast.readings.num_rows == 0 and fast.messages == 0
    fast, slow = run_both([b"[]", b"", b"null", orjson.dumps([{"x": 1}] * 1001)])
    assert_same(fast, slow)
    assert fast.deadletters["reason"].to_pylist() == ["empty_batch", "invalid_json", "not_an_object",
                                                      "oversized_batch"]
