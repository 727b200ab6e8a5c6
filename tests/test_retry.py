"""core.retry and the calls that use it: transient Kafka/HTTP errors are retried with backoff
until a deadline, then fail with a readable message; anything else fails at once. No services: fake
clients, an injected clock and sleep (the tests take milliseconds)."""
from __future__ import annotations

import io
import logging
import time
import urllib.error
import urllib.request
from types import SimpleNamespace

import confluent_kafka
import pytest
from confluent_kafka import KafkaError, KafkaException, TopicPartition

from core import retry as r
from core.offsets import OffsetSet


def kafka_exc(code: int, **kw) -> KafkaException:
    return KafkaException(KafkaError(code, **kw))


class FakeTime:
    """A clock that only moves when slept on."""

    def __init__(self):
        self.now, self.sleeps = 1000.0, []

    def clock(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.sleeps.append(s)
        self.now += s


class Flaky:
    """A client call that raises `errors` in turn, then returns `value`."""

    def __init__(self, errors, value="ok"):
        self.errors, self.value, self.calls = list(errors), value, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return self.value


@pytest.fixture
def fake_time(monkeypatch):
    t = FakeTime()
    monkeypatch.setattr(r.time, "sleep", t.sleep)
    monkeypatch.setattr(r.time, "monotonic", t.clock)
    return t


def test_coordinator_loading_is_retried_until_the_call_succeeds(fake_time, caplog):
    call = Flaky([kafka_exc(KafkaError.COORDINATOR_LOAD_IN_PROGRESS)] * 3, value=[1, 2])
    with caplog.at_level(logging.WARNING, logger="core.retry"):
        assert r.retry(call, what="commit offsets", deadline_s=60, initial_s=0.1, rng=lambda: 0.0) == [1, 2]
    assert call.calls == 4
    assert fake_time.sleeps == pytest.approx([0.05, 0.1, 0.2])    # exponential, jitter at its minimum
    warnings = [m.getMessage() for m in caplog.records]
    assert len(warnings) == 3
    assert "could not commit offsets (attempt 1," in warnings[0] and "COORDINATOR_LOAD_IN_PROGRESS" in warnings[0]
    assert "(attempt 3," in warnings[2]


def test_backoff_is_capped_and_jittered():
    assert r.backoff_s(1, 0.2, 10, rng=lambda: 0.999) == pytest.approx(0.2, rel=1e-2)
    assert r.backoff_s(20, 0.2, 10, rng=lambda: 0.0) == 5.0     # capped at 10, half of it at least
    assert 5.0 <= r.backoff_s(20, 0.2, 10) < 10.0


def test_gives_up_at_the_deadline_with_a_readable_message(fake_time):
    call = Flaky([kafka_exc(KafkaError.COORDINATOR_LOAD_IN_PROGRESS)] * 1000)
    with pytest.raises(r.RetryError) as raised:
        r.retry(call, what="commit the end offsets of sensor.readings for group g1", deadline_s=2.0,
                initial_s=0.1, max_backoff_s=0.5)
    err = raised.value
    assert str(err) == (
        f"gave up trying to commit the end offsets of sensor.readings for group g1 after 2.0 s and "
        f"{call.calls} attempts; last error: KafkaException COORDINATOR_LOAD_IN_PROGRESS "
        f"(Broker: Coordinator load in progress)")
    assert 5 < call.calls < 40 and err.attempts == call.calls
    assert sum(fake_time.sleeps) == pytest.approx(2.0)           # never slept past the deadline
    assert isinstance(err.__cause__, KafkaException)
    assert not r.kafka_retriable(err)                             # a nested retry does not wait again


@pytest.mark.parametrize("exc", [kafka_exc(KafkaError.TOPIC_AUTHORIZATION_FAILED), ValueError("bad offsets"),
                                 kafka_exc(KafkaError.COORDINATOR_LOAD_IN_PROGRESS, fatal=True),
                                 kafka_exc(KafkaError.UNKNOWN_TOPIC_OR_PART)])
def test_non_retriable_errors_are_raised_at_once(fake_time, exc):
    call = Flaky([exc])
    with pytest.raises(type(exc)) as raised:
        r.retry(call, what="x", deadline_s=60)
    assert raised.value is exc and call.calls == 1 and fake_time.sleeps == []


def test_kafka_predicate():
    for code in (KafkaError.NOT_COORDINATOR, KafkaError.COORDINATOR_NOT_AVAILABLE, KafkaError.LEADER_NOT_AVAILABLE,
                 KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.REQUEST_TIMED_OUT, KafkaError._TIMED_OUT,
                 KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN, KafkaError._MSG_TIMED_OUT):
        assert r.kafka_retriable(kafka_exc(code)), code
        assert r.kafka_retriable(KafkaError(code)), code          # as a delivery callback gets it
    # librdkafka's own flag counts too, whatever the code
    assert r.kafka_retriable(kafka_exc(KafkaError.INVALID_CONFIG, retriable=True))
    assert not r.kafka_retriable(kafka_exc(KafkaError.INVALID_CONFIG))
    assert r.kafka_retriable(BufferError("Local: Queue full")) and r.kafka_retriable(TimeoutError())
    # unknown topic: only where the topic is known to exist (just created)
    assert r.kafka_new_topic_retriable(kafka_exc(KafkaError.UNKNOWN_TOPIC_OR_PART))
    assert not r.kafka_new_topic_retriable(kafka_exc(KafkaError.TOPIC_AUTHORIZATION_FAILED))


def http_error(code: int) -> urllib.error.HTTPError:
    return urllib.error.HTTPError("http://127.0.0.1:8081/jobs/overview", code, "status", {}, io.BytesIO(b""))


def test_http_503_is_retried_404_is_not(fake_time):
    call = Flaky([http_error(503), http_error(502), urllib.error.URLError(ConnectionRefusedError(111, "refused"))])
    assert r.retry(call, what="list the Flink jobs", retriable=r.http_retriable) == "ok" and call.calls == 4

    call = Flaky([http_error(404)])
    with pytest.raises(urllib.error.HTTPError):
        r.retry(call, what="cancel the job", retriable=r.http_retriable)
    assert call.calls == 1

    assert r.http_retriable(TimeoutError()) and r.http_retriable(ConnectionResetError())
    assert not r.http_retriable(urllib.error.URLError("unknown url type: htp"))
    assert not r.http_retriable(kafka_exc(KafkaError._TRANSPORT))
    with pytest.raises(r.RetryError, match=r"gave up trying to list the Flink jobs after 1\.0 s and \d+ attempts; "
                                           r"last error: HTTP 503 status from http://127.0.0.1:8081/jobs/overview"):
        r.retry(Flaky([http_error(503)] * 1000), what="list the Flink jobs", deadline_s=1.0,
                retriable=r.http_retriable)


# --- producers ---------------------------------------------------------------------------------

class FakeProducer:
    """confluent_kafka.Producer: a queue of `capacity`; flush/poll deliver, with queued errors."""

    def __init__(self, config=None, capacity: int = 10**6, delivery_errors=()):
        self.capacity, self.delivery_errors = capacity, list(delivery_errors)
        self.queue, self.delivered, self.polls = [], [], 0

    def produce(self, topic, value, key=None, on_delivery=None, **kw):
        if len(self.queue) >= self.capacity:
            raise BufferError("Local: Queue full")
        self.queue.append((topic, key, value, on_delivery))

    def poll(self, timeout=0):
        self.polls += 1
        queue, self.queue = self.queue, []
        for topic, key, value, cb in queue:
            err = self.delivery_errors.pop(0) if self.delivery_errors else None
            if err is None:
                self.delivered.append((topic, key, value))
            if cb:
                cb(err, SimpleNamespace(key=lambda k=key: k, value=lambda v=value: v))
        return len(queue)

    def flush(self, timeout=None):
        self.poll()
        return len(self.queue)

    def __len__(self):
        return len(self.queue)


def test_produce_serves_a_full_queue_and_retries(fake_time):
    producer = FakeProducer(capacity=2)
    for i in range(5):
        r.produce(producer, "t", b"%d" % i, key=b"k")
    producer.flush()
    assert [v for _, _, v in producer.delivered] == [b"0", b"1", b"2", b"3", b"4"]
    assert producer.polls >= 2


def test_flush_until_delivered_or_the_deadline(fake_time):
    stuck = SimpleNamespace(flush=lambda timeout: 2)
    with pytest.raises(r.RetryError, match="gave up trying to deliver the stream after .* last error: "
                                           "Undelivered: 2 messages not yet delivered"):
        r.flush(stuck, what="deliver the stream", deadline_s=0.0)
    left = iter([3, 1, 0])
    r.flush(SimpleNamespace(flush=lambda timeout: next(left)), what="deliver", deadline_s=10)


def test_alerts_publisher_retries_full_queue_and_retriable_delivery_errors(fake_time, monkeypatch):
    from transforms import landing
    producer = FakeProducer(capacity=1, delivery_errors=[KafkaError(KafkaError._MSG_TIMED_OUT), None,
                                                         KafkaError(KafkaError.TOPIC_AUTHORIZATION_FAILED)])
    monkeypatch.setattr(confluent_kafka, "Producer", lambda config: producer)
    fn = landing._PublishAlertsFn({"bootstrap.servers": "x"}, "sensor.alerts", deadline_s=30)
    fn.setup()
    alerts = [{"device_id": f"dev-{i}", "alert_id": f"a{i}"} for i in range(3)]
    for a in alerts:
        fn.process(a)
    fn.finish_bundle()
    keys = [k for _, k, _ in producer.delivered]
    # dev-0 failed with a retriable error and was produced again; dev-2's error is not retriable
    assert sorted(keys) == [b"dev-0", b"dev-1"] and not producer.queue and not fn._again


def test_alerts_publisher_fails_the_bundle_when_delivery_keeps_failing(fake_time, monkeypatch):
    from transforms import landing
    producer = FakeProducer(delivery_errors=[KafkaError(KafkaError._ALL_BROKERS_DOWN)] * 10**4)
    monkeypatch.setattr(confluent_kafka, "Producer", lambda config: producer)
    fn = landing._PublishAlertsFn({}, "sensor.alerts", deadline_s=5)
    fn.setup()
    fn.process({"device_id": "dev-0", "alert_id": "a0"})
    with pytest.raises(r.RetryError, match="deliver the bundle's alerts to sensor.alerts after 5.0 s"):
        fn.finish_bundle()


# --- consumer-group calls ----------------------------------------------------------------------

class FakeConsumer:
    """confluent_kafka.Consumer for one topic of 2 partitions; `failures` maps a method to the
    exceptions its next calls raise."""
    instances: list = []

    def __init__(self, config, failures=None, committed_at=None):
        self.config, self.failures = config, failures or {}
        self.commits, self.closed, self.committed_at = [], False, committed_at or {}
        FakeConsumer.instances.append(self)

    def _maybe_fail(self, name):
        if self.failures.get(name):
            raise self.failures[name].pop(0)

    def list_topics(self, topic=None, timeout=None):
        self._maybe_fail("list_topics")
        meta = SimpleNamespace(error=None, partitions={0: None, 1: None})
        return SimpleNamespace(topics={topic: meta})

    def get_watermark_offsets(self, tp, timeout=None):
        self._maybe_fail("get_watermark_offsets")
        return 0, 100 + tp.partition

    def committed(self, tps, timeout=None):
        self._maybe_fail("committed")
        return [TopicPartition(tp.topic, tp.partition, self.committed_at.get(tp.partition, -1001)) for tp in tps]

    def commit(self, offsets=None, asynchronous=True):
        self._maybe_fail("commit")
        self.commits.append([(tp.topic, tp.partition, tp.offset) for tp in offsets])
        return offsets

    def close(self):
        self.closed = True


def test_start_group_at_end_survives_coordinator_load_in_progress(fake_time, monkeypatch):
    from pipelines import run_local
    failures = {"commit": [kafka_exc(KafkaError.COORDINATOR_LOAD_IN_PROGRESS)],
                "list_topics": [kafka_exc(KafkaError._TRANSPORT)]}
    FakeConsumer.instances = []
    monkeypatch.setattr(confluent_kafka, "Consumer", lambda config: FakeConsumer(config, failures))
    run_local.start_group_at_end("127.0.0.1:9092", "sensor.readings", "g1")
    (consumer,) = FakeConsumer.instances
    assert consumer.commits == [[("sensor.readings", 0, 100), ("sensor.readings", 1, 101)]]
    assert consumer.closed and consumer.config["group.id"] == "g1" and len(fake_time.sleeps) == 2


def test_start_group_at_end_fails_at_once_on_a_permanent_error(fake_time, monkeypatch):
    from pipelines import run_local
    failures = {"commit": [kafka_exc(KafkaError.GROUP_AUTHORIZATION_FAILED)]}
    FakeConsumer.instances = []
    monkeypatch.setattr(confluent_kafka, "Consumer", lambda config: FakeConsumer(config, failures))
    with pytest.raises(KafkaException):
        run_local.start_group_at_end("127.0.0.1:9092", "sensor.readings", "g1")
    assert FakeConsumer.instances[0].closed and fake_time.sleeps == []


def test_landing_offset_commit_retries_a_moved_coordinator(fake_time):
    from transforms import landing
    fn = landing._CommitFn("/nonexistent", kafka_commit=None)
    fn._done = OffsetSet()
    fn._done.add("sensor.readings", 0, range(0, 50))
    fn._done.add("sensor.readings", 1, range(10, 20))
    # TopicPartition.error is read-only: a stand-in with the same attributes
    partition_error = SimpleNamespace(topic="sensor.readings", partition=0, offset=50,
                                      error=KafkaError(KafkaError.NOT_COORDINATOR))
    fn._consumer = FakeConsumer({}, committed_at={1: 10}, failures={
        "committed": [kafka_exc(KafkaError.NOT_COORDINATOR), kafka_exc(KafkaError.REQUEST_TIMED_OUT)]})
    fn._consumer.commit = Flaky([kafka_exc(KafkaError.COORDINATOR_NOT_AVAILABLE)], value=[partition_error])
    with pytest.raises(r.RetryError, match="commit the consumer group's offsets after landing"):
        fn._commit_kafka(deadline_s=1.0)     # a per-partition error is an error too
    del fn._consumer.commit
    fn._consumer.failures["commit"] = [kafka_exc(KafkaError.COORDINATOR_LOAD_IN_PROGRESS)]
    fn._commit_kafka(deadline_s=1.0)
    assert fn._consumer.commits == [[("sensor.readings", 0, 50), ("sensor.readings", 1, 20)]]


# --- topic checks and the Flink REST calls ------------------------------------------------------

def test_topic_checks_retry_transient_metadata_errors(fake_time):
    from pipelines import streaming
    future = SimpleNamespace(result=lambda timeout: {"message.timestamp.type": SimpleNamespace(value="LogAppendTime")})
    answers = [kafka_exc(KafkaError.UNKNOWN_TOPIC_OR_PART), kafka_exc(KafkaError._TIMED_OUT)]

    def describe_configs(resources):
        if answers:
            raise answers.pop(0)
        return {resources[0]: future}
    listing = Flaky([kafka_exc(KafkaError._TRANSPORT)], value=SimpleNamespace(topics={"a": 1, "b": 2}))
    admin = SimpleNamespace(list_topics=lambda timeout: listing(), describe_configs=describe_configs)
    assert streaming.missing_topics(admin, ("a", "b")) == []
    assert streaming.timestamp_type(admin, "a") == "LogAppendTime"
    assert listing.calls == 2 and not answers


class Response(io.BytesIO):
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_flink_rest_calls_retry_5xx_not_4xx(fake_time, monkeypatch):
    from pipelines import run_local
    answers = [http_error(503), urllib.error.URLError(ConnectionRefusedError(111, "refused")),
               Response(b'{"jobs": [{"jid": "j1", "state": "RUNNING"}]}')]
    requests = []

    def urlopen(request, timeout=None):
        requests.append(request)
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer
    monkeypatch.setattr(urllib.request, "urlopen", urlopen)
    assert run_local.flink_jobs("127.0.0.1:8081") == [{"jid": "j1", "state": "RUNNING"}]
    assert len(requests) == 3

    job = run_local.StreamingJob.__new__(run_local.StreamingJob)
    job.args, job.jid = SimpleNamespace(flink_rest="127.0.0.1:8081"), "j1"
    answers[:] = [http_error(404)]
    with pytest.raises(urllib.error.HTTPError):
        job.stop()
    assert requests[-1].get_method() == "PATCH" and requests[-1].full_url.endswith("/jobs/j1?mode=cancel")
