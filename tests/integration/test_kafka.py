"""The real local broker: what the simulator produces is consumed back exactly."""
from __future__ import annotations

import datetime as dt
import uuid

import orjson
import pytest
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from simulation import fleet as fleet_mod
from simulation.stream import StreamConfig, stream

pytestmark = pytest.mark.integration


def _create_topic(bootstrap: str, partitions: int = 3) -> str:
    topic = f"test.readings.{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(topic, partitions, 1)])[topic].result(30)
    return topic


def _consume_all(bootstrap: str, topic: str, partitions: int = 3):
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"test-{uuid.uuid4().hex}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in range(partitions)}
    consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    messages, done = [], {p for p, end in ends.items() if end == 0}
    while len(done) < partitions:
        msg = consumer.poll(10)
        assert msg is not None, f"timed out; reached {len(messages)} messages, ends {ends}"
        assert msg.error() is None, msg.error()
        messages.append(msg)
        if msg.offset() + 1 >= ends[msg.partition()]:
            done.add(msg.partition())
    consumer.close()
    return messages


def test_produce_n_readings_and_consume_exactly_n_back(kafka_bootstrap):
    topic = _create_topic(kafka_bootstrap)
    fleet = fleet_mod.make_fleet(20, seed=5)
    cfg = StreamConfig(bootstrap_servers=kafka_bootstrap, topic=topic,
                       start=dt.datetime(2026, 11, 20, tzinfo=dt.timezone.utc), sim_seconds=600,
                       interval_s=10, acceleration=0, batch_size=50, single_fraction=0.3)
    result, _ = stream(fleet, [], cfg, seed=5)
    assert not result.delivery_errors
    assert result.readings == 20 * 5 * 60

    messages = _consume_all(kafka_bootstrap, topic)
    assert len(messages) == result.messages
    consumed = []
    singles = batches = 0
    for msg in messages:
        body = orjson.loads(msg.value())
        if isinstance(body, list):
            batches += 1
            assert msg.key().startswith(b"gw-") and len(body) <= 50
            consumed.extend(r["event_id"] for r in body)
        else:
            singles += 1
            assert msg.key().decode() == body["device_id"]
            consumed.append(body["event_id"])
    assert singles and batches
    assert len(consumed) == result.readings
    assert sorted(consumed) == sorted(e for e, _, _ in result.produced)


@pytest.mark.parametrize("problem", ["missing alerts topic", "CreateTime readings topic"])
def test_the_streaming_job_refuses_topics_it_cannot_work_with(kafka_bootstrap, problem, tmp_path):
    from pipelines import streaming
    readings = f"test.readings.{uuid.uuid4().hex[:8]}"
    stamp = "LogAppendTime" if problem == "missing alerts topic" else "CreateTime"
    new = NewTopic(readings, 1, 1, config={"message.timestamp.type": stamp})
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    admin.create_topics([new])[readings].result(30)
    alerts, expected = (("no.such.topic", "no.such.topic do not exist") if problem == "missing alerts topic"
                        else ("sensor.alerts", "message.timestamp.type=CreateTime"))
    with pytest.raises(SystemExit, match=expected):
        streaming.main(["--lake", str(tmp_path / "lake"), "--bootstrap_servers", kafka_bootstrap,
                        "--topic", readings, "--alerts_topic", alerts])
