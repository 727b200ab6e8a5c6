"""The unbounded pipeline on the real local Flink, reading the real broker: every produced reading
lands once or is dead-lettered, every injected acute failure alerts and nothing else does, and a
cancelled and restarted job consumes only what arrived while it was down."""
from __future__ import annotations

import json
import statistics
import time
import uuid
from collections import Counter

import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from tests import stream_fixture
from tests.conftest import FLINK_REST, KAFKA_BOOTSTRAP, require_service
from tests.integration import flink_jobs
from core import lake as lake_io
from core.offsets import OffsetSet

pytestmark = [pytest.mark.integration, pytest.mark.flink]


def _topics(suffix: str) -> tuple[str, str]:
    readings, alerts = f"it.readings.{suffix}", f"it.alerts.{suffix}"
    admin = AdminClient({"bootstrap.servers": KAFKA_BOOTSTRAP})
    futures = admin.create_topics([
        NewTopic(readings, stream_fixture.PARTITIONS, 1, config={"message.timestamp.type": "LogAppendTime"}),
        NewTopic(alerts, 1, 1, config={"message.timestamp.type": "LogAppendTime"})])
    for f in futures.values():
        f.result(30)
    return readings, alerts


def streaming_topics() -> tuple[str, str, str]:
    """Skips unless Kafka, Flink and the job server run; creates a test's own topics: (suffix, readings, alerts)."""
    require_service("Kafka", KAFKA_BOOTSTRAP)
    require_service("Flink", FLINK_REST)
    require_service("Flink job server", flink_jobs.JOB_ENDPOINT)
    suffix = uuid.uuid4().hex[:8]
    return (suffix, *_topics(suffix))


def _produce(topic: str, messages) -> dict[int, float]:
    """Sends the fixture's messages to their partitions, in order; returns send time per message index."""
    producer = Producer({"bootstrap.servers": KAFKA_BOOTSTRAP, "linger.ms": 5, "enable.idempotence": True,
                         "message.max.bytes": 2_000_000})
    sent = {}
    for k, m in enumerate(messages):
        producer.produce(topic, m.value, key=m.key, partition=m.partition)
        sent[k] = time.time()
        producer.poll(0)
    assert producer.flush(60) == 0
    return sent


def _wait_for_rows(lake: str, expected: int, timeout_s: float = 240) -> int:
    deadline = time.monotonic() + timeout_s
    rows = 0
    while time.monotonic() < deadline:
        table = lake_io.open_table(lake, "raw_sensor_readings")
        rows = len(table.to_pyarrow_table(columns=["event_id"])) if table else 0
        if rows >= expected:
            return rows
        time.sleep(2)
    return rows


def _pipeline_args(lake: str, readings: str, alerts: str, group: str) -> list[str]:
    return ["--lake", lake, "--topic", readings, "--alerts_topic", alerts, "--consumer_group", group,
            "--commit_interval_s", "5", "--shards", "4", *flink_jobs.PORTABLE_ARGS,
            "--max_bundle_time_mills=100", "--checkpointing_interval=10000", "--parallelism=2"]


def _readings_of(message) -> list[dict]:
    try:
        body = json.loads(message.value)        # also reads the non-finite literal the fixture sends
    except ValueError:
        return []                               # the invalid-JSON message: nothing in it lands
    return [r for r in (body if isinstance(body, list) else [body]) if isinstance(r, dict) and "event_id" in r]


def _alert_latencies(alerts_topic: str, fx, sent: dict[int, float]) -> list[float]:
    message_of = {r["event_id"]: k for k, m in enumerate(fx.messages) for r in _readings_of(m)}
    consumer = Consumer({"bootstrap.servers": KAFKA_BOOTSTRAP, "group.id": f"lat-{uuid.uuid4().hex}",
                         "auto.offset.reset": "earliest"})
    consumer.subscribe([alerts_topic])
    latencies, deadline = [], time.monotonic() + 30
    while len(latencies) < len(fx.expected_alerts) and time.monotonic() < deadline:
        msg = consumer.poll(1)
        if msg is None or msg.error():
            continue
        alert = json.loads(msg.value())
        arrived = msg.timestamp()[1] / 1000
        latencies.append(arrived - sent[message_of[alert["event_id"]]])
    consumer.close()
    return latencies


def test_streaming_on_flink_lands_everything_alerts_exactly_and_resumes(tmp_path):
    suffix, readings, alerts_topic = streaming_topics()
    lake = str(tmp_path / "lake")
    fx = stream_fixture.build(lake, minutes=95)
    # the acute failures happen by minute 80; the last 5 minutes are produced while the job is down
    cut_ms = (stream_fixture.START.timestamp() + 90 * 60) * 1000
    cut = next(k for k, m in enumerate(fx.messages) if m.timestamp_ms > cut_ms)
    first, second = fx.messages[:cut], fx.messages[cut:]
    args = _pipeline_args(lake, readings, alerts_topic, f"it-{suffix}")

    known = {j["jid"] for j in flink_jobs.jobs()}
    process = flink_jobs.start("pipelines.streaming", args, tmp_path / "run1.log")
    jid = None
    try:
        jid = flink_jobs.wait_for_running_job(known)
        time.sleep(5)
        sent = _produce(readings, first)
        expected_first = _landable(fx, first)
        rows = _wait_for_rows(lake, sum(expected_first.values()))
        assert rows == sum(expected_first.values()), (tmp_path / "run1.log").read_text()[-3000:]
        time.sleep(8)                            # one more interval: alerts of the last readings
        latencies = _alert_latencies(alerts_topic, fx, sent)
    finally:
        flink_jobs.stop(process, jid)
    landed_first = _landed(lake)
    assert landed_first == expected_first
    alerts = lake_io.read(lake, "alerts")
    assert sorted(zip(alerts["device_id"].to_pylist(), alerts["rule"].to_pylist())) == sorted(fx.expected_alerts)
    assert len(latencies) == len(fx.expected_alerts)
    print(f"\nproduced {sum(_sent_counts(fx, first).values())} readings in {len(first)} messages; "
          f"landed {sum(landed_first.values())}; dead-lettered {lake_io.read(lake, 'deadletter').num_rows}; "
          f"alerts by rule {dict(Counter(alerts['rule'].to_pylist()))}; expected {len(fx.expected_alerts)}; "
          f"alert latency from Kafka arrival: median {statistics.median(latencies):.2f} s, max {max(latencies):.2f} s")
    commits_before = {h["version"] for h in lake_io.commits(lake, "raw_sensor_readings", "streaming")}

    _produce(readings, second)                  # while the job is down
    known = {j["jid"] for j in flink_jobs.jobs()}
    process = flink_jobs.start("pipelines.streaming", args, tmp_path / "run2.log")
    jid = None
    try:
        jid = flink_jobs.wait_for_running_job(known)
        expected_all = _landable(fx, fx.messages)
        rows = _wait_for_rows(lake, sum(expected_all.values()))
        assert rows == sum(expected_all.values()), (tmp_path / "run2.log").read_text()[-3000:]
    finally:
        flink_jobs.stop(process, jid)
    assert _landed(lake) == expected_all
    after = [h for h in lake_io.commits(lake, "raw_sensor_readings", "streaming") if h["version"] not in commits_before]
    consumed = OffsetSet()
    for h in after:
        consumed.update(OffsetSet.from_json(json.loads(h[lake_io.COMMIT_INPUTS])["kafka"]))
    second_offsets = OffsetSet()
    for m in second:
        second_offsets.add(m.topic and readings, m.partition, [m.offset])
    landing_messages = {(m.partition, m.offset) for m in second if _sent_counts(fx, [m])}
    assert {(p, o) for t, p in consumed.partitions() for o in _expand(consumed, t, p)} == landing_messages


def _sent_counts(fx, messages) -> Counter:
    return Counter(r["event_id"] for m in messages for r in _readings_of(m))


def _landable(fx, messages) -> Counter:
    sent = _sent_counts(fx, messages)
    return Counter({e: n for e, n in sent.items() if e not in fx.rejected})


def _landed(lake: str) -> Counter:
    return Counter(lake_io.read(lake, "raw_sensor_readings", columns=["event_id"])["event_id"].to_pylist())


def _expand(offsets: OffsetSet, topic: str, partition: int):
    for lo, hi in offsets._ranges[OffsetSet.key(topic, partition)]:
        yield from range(lo, hi + 1)
