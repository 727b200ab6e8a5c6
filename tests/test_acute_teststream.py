"""Each acute rule through the Beam stage (AcuteRules: enrich + stateful evaluation per device shard)
with TestStream on the DirectRunner: the exact alerts, in event time."""
from __future__ import annotations

import datetime as dt

import apache_beam as beam
import orjson
import pyarrow as pa
import pytest
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.testing.test_stream import TestStream
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.utils.timestamp import Timestamp

from schemas import contracts
from core import lake as lake_io
from transforms.acute import AcuteRules
from transforms.decode import KafkaMessage, decode_messages

T0 = dt.datetime(2026, 11, 20, 8, 0, tzinfo=dt.timezone.utc)
CUR, SUC, VIB, TMP = "compressor_current", "suction_pressure", "vibration", "temperature"


def registry(lake: str, models: dict[str, str]) -> None:
    n = len(models)
    lake_io.overwrite(lake, "devices", pa.table({
        "device_id": list(models), "site_id": ["s1"] * n, "model": list(models.values()),
        "timezone": ["Europe/Berlin"] * n, "rated_current_a": [20.0] * n,
        "commissioned_at": pa.array([T0] * n, contracts.UTC_TS), "active": [True] * n}, schema=contracts.DEVICES))


def reading(device: str, event_id: str, sensor: str, seconds: float, value: float, unit: str | None = None) -> pa.Table:
    """One reading as the decoder lands it; `ts` is device local time (Berlin, UTC+1) for variety."""
    local = (T0 + dt.timedelta(seconds=seconds, hours=1)).replace(tzinfo=None).isoformat(timespec="milliseconds")
    body = {"event_id": event_id, "device_id": device, "sensor_type": sensor, "value": value, "ts": local}
    if unit:
        body["unit"] = unit
    arrived_ms = int((T0 + dt.timedelta(seconds=seconds)).timestamp() * 1000)
    return decode_messages([KafkaMessage("sensor.readings", 0, 0, arrived_ms, None, orjson.dumps(body))]).readings


def run(lake: str, steps: list[list[pa.Table]], expected: list[tuple[str, str, str]]):
    """Feeds each step's readings, advancing the watermark after each; checks (device, rule, event_id)."""
    stream = TestStream()
    for k, step in enumerate(steps):
        stream.add_elements([beam.window.TimestampedValue(t, Timestamp.of(k)) for t in step])
        stream.advance_watermark_to(Timestamp.of(k))
    options = PipelineOptions()
    options.view_as(StandardOptions).streaming = True
    with beam.Pipeline(options=options) as p:
        alerts = p | stream.advance_watermark_to_infinity() | AcuteRules(lake, shards=2)
        assert_that(alerts | beam.Map(lambda a: (a["device_id"], a["rule"], a["event_id"])), equal_to(expected))


def series(device: str, sensor: str, points: list[tuple[float, float]], prefix: str | None = None,
           unit: str | None = None) -> list[pa.Table]:
    prefix = prefix or f"{device}-{sensor[:3]}-"
    return [reading(device, f"{prefix}{n}", sensor, s, v, unit) for n, (s, v) in enumerate(points)]


@pytest.fixture
def lake(tmp_path) -> str:
    root = str(tmp_path / "lake")
    registry(root, {"a": "CX-200", "b": "CX-200", "f": "FZ-500"})
    return root


# Each rule: device a crosses at a known reading, device b stays just below.
CROSSING = {
    "CURRENT_SPIKE": (CUR, [(0, 25), (10, 31), (20, 31)], [(0, 25), (10, 31), (20, 30.0)], 2),
    "PRESSURE_DROP": (SUC, [(0, 400), (10, 300), (20, 260)], [(0, 400), (10, 300), (20, 260.5)], 2),
    "VIBRATION_SURGE": (VIB, [(60.0 * m, 2.0) for m in range(61)] + [(3660, 6.01)],
                        [(60.0 * m, 2.0) for m in range(61)] + [(3660, 6.0)], 61),
    "COOLING_LOSS": (TMP, [(30.0 * k, 3.0 + 0.3 * k) for k in range(5)],
                     [(30.0 * k, 3.0 + 0.245 * k) for k in range(5)], 4),
}


@pytest.mark.parametrize("rule", sorted(CROSSING))
def test_fires_at_the_exact_crossing_reading_and_not_just_below(lake, rule):
    sensor, above, below, crossing = CROSSING[rule]
    a, b = series("a", sensor, above), series("b", sensor, below)
    run(lake, [[x, y] for x, y in zip(a, b)], [("a", rule, f"a-{sensor[:3]}-{crossing}")])


@pytest.mark.parametrize("rule", ["CURRENT_SPIKE", "PRESSURE_DROP", "COOLING_LOSS"])
def test_out_of_order_inside_the_lateness_is_handled_in_event_time(lake, rule):
    sensor, above, _, crossing = CROSSING[rule]
    readings = series("a", sensor, above)
    # the crossing reading arrives first, then the earlier ones (all within 10 minutes)
    reordered = [readings[crossing]] + readings[:crossing] + readings[crossing + 1:]
    run(lake, [[r] for r in reordered], [("a", rule, f"a-{sensor[:3]}-{crossing}")])


@pytest.mark.parametrize("rule", ["CURRENT_SPIKE", "PRESSURE_DROP", "COOLING_LOSS"])
def test_too_late_readings_are_not_alerted(lake, rule):
    sensor, above, _, _ = CROSSING[rule]
    newest = reading("a", "newest", sensor, 2000, above[0][1])          # 33 minutes ahead
    run(lake, [[newest]] + [[r] for r in series("a", sensor, above)], [])


def test_suppression_ten_minutes_then_rearm(lake):
    points = [(s, 31) for s in range(0, 130, 10)] + [(130, 25), (200, 31), (210, 31)]
    points += [(300, 25), (700, 31), (710, 31)]
    run(lake, [[r] for r in series("a", CUR, points)], [("a", "CURRENT_SPIKE", "a-com-1"),
                                                         ("a", "CURRENT_SPIKE", "a-com-18")])


def test_vibration_warm_up_needs_an_hour_of_history(lake):
    early = series("a", VIB, [(60.0 * m, 2.0) for m in range(50)] + [(3000, 20.0)])
    ready = series("b", VIB, [(60.0 * m, 2.0) for m in range(60)] + [(3600, 20.0)])
    run(lake, [[r] for r in early + ready], [("b", "VIBRATION_SURGE", "b-vib-60")])


def test_per_model_override_from_the_registry(lake):
    rising = [(30.0 * k, -20.0 + 0.35 * k) for k in range(10)]           # +0.7 C/min
    run(lake, [[x, y] for x, y in zip(series("a", TMP, rising), series("f", TMP, rising))],
        [("a", "COOLING_LOSS", "a-tem-4")])                              # FZ-500 tolerates 0.8


def test_units_are_converted_before_the_rules(lake):
    psi = [(0, 400 / 6.894757293168), (10, 250 / 6.894757293168)]        # 400 -> 250 kPa, sent in psi
    run(lake, [[r] for r in series("a", SUC, psi, unit="psi")], [("a", "PRESSURE_DROP", "a-suc-1")])


# --- idle devices, missing registry --------------------------------------------------------

def run_timed(lake: str, steps: list[tuple[float, list[pa.Table]]], expected, **kwargs):
    """Like run, with each step's element time (seconds) given: the watermark follows it."""
    stream = TestStream()
    for at, step in steps:
        if step:
            stream.add_elements([beam.window.TimestampedValue(t, Timestamp.of(at)) for t in step])
        stream.advance_watermark_to(Timestamp.of(at))
    options = PipelineOptions()
    options.view_as(StandardOptions).streaming = True
    with beam.Pipeline(options=options) as p:
        alerts = p | stream.advance_watermark_to_infinity() | AcuteRules(lake, shards=2, **kwargs)
        assert_that(alerts | beam.Map(lambda a: (a["device_id"], a["rule"], a["event_id"])), equal_to(expected))


@pytest.mark.parametrize("horizon_s, expected", [(1e9, [("a", "VIBRATION_SURGE", "a-vib-61")]), (3600, [])])
def test_a_device_silent_past_its_horizon_is_evicted_and_starts_afresh(lake, horizon_s, expected):
    """An hour of baseline, then 3 h of silence, then a surge: with the state kept the surge alerts;
    evicted after a 1 h horizon the device starts afresh and needs its hour of warm-up again."""
    baseline = series("a", VIB, [(60.0 * m, 2.0) for m in range(61)])
    surge = reading("a", "a-vib-61", VIB, 4 * 3600, 9.0)
    steps = [(60.0 * m, [r]) for m, r in enumerate(baseline)]
    steps += [(4 * 3600.0 - 60, []), (4 * 3600.0, [surge])]      # the watermark moves on in the silence
    run_timed(lake, steps, expected, idle_horizon_s=horizon_s, eviction_period_s=600)


def epoch_reading(device: str, event_id: str, sensor: str, seconds: float, value: float) -> pa.Table:
    """A reading with an epoch-ms `ts`: usable without the registry's time zone."""
    ms = int((T0 + dt.timedelta(seconds=seconds)).timestamp() * 1000)
    body = {"event_id": event_id, "device_id": device, "sensor_type": sensor, "value": value, "ts": ms}
    return decode_messages([KafkaMessage("sensor.readings", 0, 0, ms, None, orjson.dumps(body))]).readings


def test_without_a_registry_unknown_devices_flow_with_fleet_defaults(tmp_path):
    """No registry table: nothing crashes; fleet-default rules apply, CURRENT_SPIKE (needs the rated
    current) skips them, and the readings are counted as of unknown devices."""
    lake = str(tmp_path / "lake")
    steps = [[epoch_reading("u", f"u-suc-{k}", SUC, 10.0 * k, v)] for k, v in enumerate([400, 300, 260])]
    steps += [[epoch_reading("u", f"u-com-{k}", CUR, 10.0 * k, 99.0)] for k in range(3)]
    run(lake, steps, [("u", "PRESSURE_DROP", "u-suc-2")])
    p = beam.Pipeline()
    _ = p | beam.Create([t for s in steps for t in s]) | AcuteRules(lake, shards=2)
    result = p.run()
    result.wait_until_finish()
    counters = {r.key.metric.name: r.committed for r in result.metrics().query()["counters"]}
    assert counters["readings_unknown_device"] == 6


def test_the_registry_is_picked_up_once_it_appears(tmp_path):
    """RegistryCache and Enrich: an empty lake is an empty registry; after the TTL the new table is read."""
    from transforms.acute import _EnrichFn
    lake = str(tmp_path / "lake")
    fn = _EnrichFn(lake, shards=2, registry_ttl_s=0.0)
    fn.setup()
    rows = epoch_reading("a", "a-1", CUR, 0, 25.0)
    [(_, before)] = list(fn.process(rows))
    assert before["model"].to_pylist() == [None] and before["rated_current_a"].to_pylist() == [None]
    registry(lake, {"a": "CX-200"})
    [(_, after)] = list(fn.process(rows))
    assert after["model"].to_pylist() == ["CX-200"] and after["rated_current_a"].to_pylist() == [20.0]
