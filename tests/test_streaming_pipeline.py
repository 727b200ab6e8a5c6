"""The whole streaming graph on the DirectRunner with TestStream: what lands, what is dead-lettered,
which alerts fire, and that the counts reconcile."""
from __future__ import annotations

from collections import Counter

import apache_beam as beam
import orjson
import pytest
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
from apache_beam.testing.test_stream import TestStream
from apache_beam.testing.util import assert_that, equal_to
from apache_beam.utils.timestamp import Timestamp

from pipelines.streaming import FleetStreaming
from tests import stream_fixture
from core import lake as lake_io


def _run(lake: str, fx, interval_s: float = 300.0):
    options = PipelineOptions()
    options.view_as(StandardOptions).streaming = True
    p = beam.Pipeline(options=options)
    alerts = (p | stream_fixture.as_test_stream(fx.messages)
                | FleetStreaming(lake, interval_s=interval_s, shards=4, batch_messages=64))
    assert_that(alerts | beam.Map(lambda a: (a["device_id"], a["rule"])), equal_to(sorted(fx.expected_alerts)))
    return p.run()


@pytest.fixture(scope="module")
def streamed(tmp_path_factory):
    lake = str(tmp_path_factory.mktemp("streaming") / "lake")
    fx = stream_fixture.build(lake)
    result = _run(lake, fx)
    result.wait_until_finish()
    return lake, fx, result


def test_every_reading_lands_once_or_is_dead_lettered(streamed):
    lake, fx, _ = streamed
    landed = lake_io.read(lake, "raw_sensor_readings")
    ids = Counter(landed["event_id"].to_pylist())
    assert set(ids) == fx.produced - fx.rejected
    # duplicates on the wire land as sent (cleansing removes them): exactly the fixture's copies
    assert sum(ids.values()) == landed.num_rows
    dead = lake_io.read(lake, "deadletter")
    assert set(dead["reason"].to_pylist()) == set(stream_fixture.WIRE_FAULTS.values())
    assert set(dead["event_id"].drop_null().to_pylist()) <= fx.rejected
    # message-level accounting: every message produced rows in landing or dead letters
    landed_msgs = set(zip(landed["kafka_partition"].to_pylist(), landed["kafka_offset"].to_pylist()))
    dead_msgs = set(zip(dead["kafka_partition"].to_pylist(), dead["kafka_offset"].to_pylist()))
    assert landed_msgs | dead_msgs == {(m.partition, m.offset) for m in fx.messages}


def test_one_commit_per_table_per_interval(streamed):
    lake, fx, _ = streamed
    span_s = (fx.messages[-1].timestamp_ms - fx.messages[0].timestamp_ms) / 1000
    commits = lake_io.commits(lake, "raw_sensor_readings", "streaming")
    assert len(commits) == pytest.approx(span_s / 300, abs=1.5)
    windows = [c["fleet.inputs"] for c in commits]
    assert len(set(windows)) == len(windows)


def test_alerts_table_holds_exactly_the_injected_acute_failures(streamed):
    lake, fx, result = streamed
    alerts = lake_io.read(lake, "alerts")
    assert sorted(zip(alerts["device_id"].to_pylist(), alerts["rule"].to_pylist())) == sorted(fx.expected_alerts)
    assert set(alerts["severity"].to_pylist()) == {"CRITICAL"}
    assert len(set(alerts["alert_id"].to_pylist())) == alerts.num_rows


def test_counters_reconcile(tmp_path):
    """Stage counters on a bounded run of the same graph (the streaming DirectRunner under-reports
    the counters of steps that batch in finish_bundle)."""
    lake = str(tmp_path / "lake")
    fx = stream_fixture.build(lake, minutes=75)
    p = beam.Pipeline()
    (p | beam.Create(fx.messages) | beam.Map(lambda m: beam.window.TimestampedValue(m, m.timestamp_ms / 1000))
       | FleetStreaming(lake, interval_s=300, shards=4, batch_messages=64))
    result = p.run()
    result.wait_until_finish()
    counters = Counter()
    for r in result.metrics().query()["counters"]:
        counters[r.key.metric.name] += r.committed
    normal = [orjson.loads(m.value) for m in fx.messages if b'"wf-' not in m.value]
    sent = [r["event_id"] for body in normal for r in (body if isinstance(body, list) else [body])]
    whole_message_faults = {"bad_json", "oversized_batch", "oversized_message"}
    good_neighbours = 2 * (len(stream_fixture.WIRE_FAULTS) - len(whole_message_faults))
    assert counters["messages"] == len(fx.messages)
    assert counters["readings"] == len(sent) + good_neighbours
    assert counters["deadlettered"] == len(stream_fixture.WIRE_FAULTS)
    assert counters["landed_rows"] == counters["readings"]
    assert counters["deadletter_rows"] == counters["deadlettered"]
    assert counters["readings_duplicates"] == len(sent) - len(set(sent)) > 0
    assert counters["commits"] == len(lake_io.commits(lake, "raw_sensor_readings")) + \
        len(lake_io.commits(lake, "deadletter"))
    assert counters["landed_rows"] == lake_io.read(lake, "raw_sensor_readings").num_rows
    # (alerts are not checked here: a bounded Create does not keep Kafka's per-partition order)


def test_a_record_behind_the_watermark_still_lands(tmp_path):
    """Intervals keep late panes: a record behind the watermark lands in a late commit."""
    lake = str(tmp_path / "lake")
    fx = stream_fixture.build(lake, minutes=3, wire_faults=False, with_duplicates=False)
    *early, late = fx.messages
    stream = TestStream()
    stream.add_elements([beam.window.TimestampedValue(m, Timestamp(micros=m.timestamp_ms * 1000)) for m in early])
    stream.advance_watermark_to(Timestamp(micros=(late.timestamp_ms + 3_600_000) * 1000))   # an hour past it
    stream.add_elements([beam.window.TimestampedValue(late, Timestamp(micros=late.timestamp_ms * 1000))])
    options = PipelineOptions()
    options.view_as(StandardOptions).streaming = True
    with beam.Pipeline(options=options) as p:
        p | stream.advance_watermark_to_infinity() | FleetStreaming(lake, interval_s=60, shards=2)
    body = orjson.loads(late.value)
    late_ids = {r["event_id"] for r in (body if isinstance(body, list) else [body])}
    landed = set(lake_io.read(lake, "raw_sensor_readings")["event_id"].to_pylist())
    assert late_ids <= landed and landed == fx.produced
