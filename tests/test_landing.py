"""The landing's commit step when a replay raced the writers: files holding rows of messages that
another interval already committed are rewritten without them, so every message lands once."""
from __future__ import annotations

import orjson
import pyarrow as pa
from apache_beam.transforms.window import IntervalWindow

from transforms import landing
from core import lake as lake_io
from transforms.decode import KafkaMessage, decode_messages

T0_MS = 1_795_700_000_000


def _messages(offsets: range) -> list[KafkaMessage]:
    return [KafkaMessage("sensor.readings", 0, o, T0_MS + o, b"dev-1", orjson.dumps(
        {"event_id": f"e{o}", "device_id": "dev-1", "sensor_type": "temperature", "value": 3.0 + o,
         "unit": "C", "ts": T0_MS + o})) for o in offsets]


def test_files_of_a_replay_that_raced_a_commit_are_rewritten_without_the_landed_rows(tmp_path):
    lake = str(tmp_path / "lake")
    writer = landing._WriteFilesFn(lake)
    writer.setup()
    first = next(writer.process(decode_messages(_messages(range(0, 5)))))
    # the same messages again with newer ones (a restart re-read them), written before the first commit
    replay = next(writer.process(decode_messages(_messages(range(0, 10)))))
    commit = landing._CommitFn(lake, kafka_commit=None)
    commit.setup()
    window = IntervalWindow(0, 60)
    list(commit.process((None, [first]), win=window))
    list(commit.process((None, [replay]), win=window))

    landed = lake_io.read(lake, "raw_sensor_readings")
    assert sorted(landed["kafka_offset"].to_pylist()) == list(range(10))
    assert sorted(landed["event_id"].to_pylist()) == sorted(f"e{o}" for o in range(10))
    assert str(landed["ingest_date"].type) == "date32[day]"
    assert lake_io.open_table(lake, "raw_sensor_readings").version() == 1


def test_alert_dedup_remembers_a_bounded_event_time_horizon(lake):
    import datetime as dt
    from transforms.landing import RecentAlertIds, recent_alert_ids
    hour = 3600 * 10**6
    known = RecentAlertIds(horizon_us=2 * hour)
    known.add(["a", "b"], [0, hour])
    assert "a" in known and "b" in known
    known.add(["c"], [3 * hour])                  # "a" is now older than the horizon
    assert "a" not in known and "b" in known and "c" in known and len(known) == 2

    t0 = dt.datetime(2026, 10, 1, tzinfo=dt.timezone.utc)
    rows = [{"alert_id": f"id{h}", "device_id": "d1", "rule": "CURRENT_SPIKE", "severity": "CRITICAL",
             "event_time": t0 + dt.timedelta(hours=h), "detected_at": t0 + dt.timedelta(hours=h), "value": 1.0,
             "threshold": 1.0, "event_id": f"e{h}", "context": "{}"} for h in (0, 30, 47, 48)]
    schema = lake_io.TABLES["alerts"].schema
    for row in rows:                               # one file per alert: statistics per file
        lake_io.append(lake, "alerts", pa.Table.from_pylist([{f.name: row.get(f.name) for f in schema}], schema))
    recent = recent_alert_ids(lake, horizon_us=24 * hour)
    assert ("id0" in recent, "id30" in recent, "id47" in recent, "id48" in recent) == (False, True, True, True)
