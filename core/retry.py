"""Retries of transient errors in the project's own Kafka and Flink REST calls (no Beam here).

Beam retries failed bundles, but the calls around a pipeline (positioning a consumer group, the
topic checks, the offset commit after landing, publishing alerts, the simulator's producer, the Flink
REST API) fail on errors that only mean "not yet": a group coordinator still loading after a broker
start (COORDINATOR_LOAD_IN_PROGRESS), a leader election, a broker briefly unreachable, an HTTP 503.

    retry(lambda: consumer.commit(offsets=ends, asynchronous=False),
          what="commit the start offsets of group g", deadline_s=60)

retries with exponential backoff and jitter while the predicate says the error is transient, logs
each retry at WARNING, and once the deadline has passed raises `RetryError` naming what was
attempted, for how long, how many attempts and the last error. Anything else is raised at once.
The deadline is checked between attempts: one attempt's own timeout can overrun it.
"""
from __future__ import annotations

import http.client
import logging
import random
import time
import urllib.error
from typing import Callable, TypeVar

log = logging.getLogger(__name__)
T = TypeVar("T")

DEFAULT_DEADLINE_S = 120.0

# Transient by their nature, whatever librdkafka's own `retriable()` flag says (a KafkaError built
# from a broker error code, e.g. in a commit's result, often carries retriable=False).
KAFKA_RETRIABLE = frozenset({
    "COORDINATOR_LOAD_IN_PROGRESS", "COORDINATOR_NOT_AVAILABLE", "NOT_COORDINATOR", "REBALANCE_IN_PROGRESS",
    "LEADER_NOT_AVAILABLE", "NOT_LEADER_FOR_PARTITION", "FENCED_LEADER_EPOCH", "UNKNOWN_LEADER_EPOCH",
    "NOT_CONTROLLER", "NOT_ENOUGH_REPLICAS", "NOT_ENOUGH_REPLICAS_AFTER_APPEND", "KAFKA_STORAGE_ERROR",
    "REQUEST_TIMED_OUT", "NETWORK_EXCEPTION", "THROTTLING_QUOTA_EXCEEDED", "UNSTABLE_OFFSET_COMMIT",
    "OFFSET_NOT_AVAILABLE",
    # local (librdkafka) conditions
    "_TIMED_OUT", "_TIMED_OUT_QUEUE", "_MSG_TIMED_OUT", "_TRANSPORT", "_ALL_BROKERS_DOWN", "_RESOLVE",
    "_WAIT_COORD", "_WAIT_CACHE", "_QUEUE_FULL", "_IN_PROGRESS", "_PREV_IN_PROGRESS",
})
# A topic that was just created is unknown to some brokers for a moment; only calls on topics that
# must exist treat this as transient (otherwise a typo would wait out the whole deadline).
KAFKA_NEW_TOPIC = frozenset({"UNKNOWN_TOPIC_OR_PART", "_UNKNOWN_TOPIC", "_UNKNOWN_PARTITION"})


class RetryError(RuntimeError):
    """A retriable error kept failing until the deadline. Not itself retriable (no nested waits)."""

    def __init__(self, what: str, elapsed_s: float, attempts: int, last: BaseException):
        self.what, self.elapsed_s, self.attempts, self.last = what, elapsed_s, attempts, last
        super().__init__(f"gave up trying to {what} after {elapsed_s:.1f} s and {attempts} attempt"
                         f"{'s' if attempts != 1 else ''}; last error: {describe(last)}")


class Undelivered(Exception):
    """Messages still in a producer's queue after a flush (retried by `flush`)."""

    def __init__(self, count: int):
        self.count = count
        super().__init__(f"{count} message{'s' if count != 1 else ''} not yet delivered")


def describe(exc: BaseException) -> str:
    """One readable line: the Kafka error name and text, the HTTP status, or type and message."""
    err = kafka_error(exc)
    if err is not None:
        return f"{type(exc).__name__} {err.name()} ({err.str()})"
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason} from {exc.url}"
    return f"{type(exc).__name__}: {exc}"


def kafka_error(exc: BaseException):
    """The KafkaError of a KafkaException (or the error itself), else None."""
    try:
        from confluent_kafka import KafkaError, KafkaException
    except ImportError:  # the Flink REST helpers work without confluent_kafka
        return None
    if isinstance(exc, KafkaError):
        return exc
    if isinstance(exc, KafkaException) and exc.args and isinstance(exc.args[0], KafkaError):
        return exc.args[0]
    return None


def kafka_retriable(exc: BaseException, *, new_topic: bool = False) -> bool:
    """Transient Kafka failures: KafkaException/KafkaError flagged retriable or with a code in
    KAFKA_RETRIABLE (plus KAFKA_NEW_TOPIC when `new_topic`), an admin future's timeout, and a full
    producer queue (BufferError). Fatal errors never are."""
    if isinstance(exc, (BufferError, TimeoutError, Undelivered)):
        return True
    err = kafka_error(exc)
    if err is None or err.fatal():
        return False
    return bool(err.retriable()) or err.name() in KAFKA_RETRIABLE or (new_topic and err.name() in KAFKA_NEW_TOPIC)


def kafka_new_topic_retriable(exc: BaseException) -> bool:
    return kafka_retriable(exc, new_topic=True)


def http_retriable(exc: BaseException) -> bool:
    """Transient HTTP/REST failures: 5xx (not 4xx), connection refused/reset, timeouts, a response
    cut short. A URLError that is not a socket error (e.g. an unknown URL scheme) is not."""
    if isinstance(exc, urllib.error.HTTPError):
        return exc.code >= 500
    if isinstance(exc, urllib.error.URLError):
        return isinstance(exc.reason, OSError)
    return isinstance(exc, (ConnectionError, TimeoutError, http.client.IncompleteRead, http.client.BadStatusLine))


def backoff_s(attempt: int, initial_s: float, max_s: float, rng: Callable[[], float] = random.random) -> float:
    """Exponential backoff with equal jitter: in [d/2, d), d = initial_s * 2^(attempt-1) capped at max_s."""
    d = min(max_s, initial_s * 2 ** (attempt - 1))
    return d * (0.5 + 0.5 * rng())


def retry(call: Callable[[], T], *, what: str, deadline_s: float = DEFAULT_DEADLINE_S,
          retriable: Callable[[BaseException], bool] = kafka_retriable, initial_s: float = 0.2,
          max_backoff_s: float = 10.0, quiet_s: float = 0.0, sleep: Callable[[float], object] | None = None,
          clock: Callable[[], float] | None = None, rng: Callable[[], float] = random.random,
          logger: logging.Logger = log) -> T:
    """call() until it returns, retrying errors `retriable` accepts until `deadline_s` has passed.

    `what` completes "gave up trying to ...". `sleep` waits between attempts (e.g. a producer's poll);
    retries in the first `quiet_s` seconds log at DEBUG (for routine backpressure), later at WARNING."""
    sleep, clock = sleep or time.sleep, clock or time.monotonic    # looked up per call: tests patch them
    start, attempt = clock(), 0
    while True:
        attempt += 1
        try:
            return call()
        except Exception as exc:  # noqa: BLE001 - filtered by the predicate; the rest re-raised as is
            if not retriable(exc):
                raise
            elapsed = clock() - start
            remaining = deadline_s - elapsed
            if remaining <= 0:
                raise RetryError(what, elapsed, attempt, exc) from exc
            delay = min(remaining, backoff_s(attempt, initial_s, max_backoff_s, rng))
            logger.log(logging.DEBUG if elapsed < quiet_s else logging.WARNING,
                       "could not %s (attempt %d, %.1f s of %.1f s): %s; retrying in %.2f s",
                       what, attempt, elapsed, deadline_s, describe(exc), delay)
            sleep(delay)


def partitions_ok(tps):
    """The TopicPartitions of a commit/committed() result; raises the first per-partition error
    (a synchronous commit can succeed as a request yet fail for a partition)."""
    from confluent_kafka import KafkaException
    for tp in tps or ():
        if tp.error is not None:
            raise KafkaException(tp.error)
    return tps


# --- producers ----------------------------------------------------------------------------------

def produce(producer, topic: str, value, *, what: str = "", deadline_s: float = DEFAULT_DEADLINE_S,
            **kwargs) -> None:
    """producer.produce(...); a full local queue (BufferError) is served with poll() and retried."""
    try:    # the common case, without a closure: this is on the simulator's hot path
        return producer.produce(topic, value, **kwargs)
    except BufferError:
        pass
    retry(lambda: producer.produce(topic, value, **kwargs), what=what or f"produce to {topic} (queue full)",
          deadline_s=deadline_s, retriable=lambda e: isinstance(e, BufferError), initial_s=0.05,
          max_backoff_s=1.0, quiet_s=10.0, sleep=producer.poll)


def flush(producer, *, what: str, deadline_s: float = DEFAULT_DEADLINE_S, step_s: float = 5.0) -> None:
    """Flushes until every queued message is delivered (or failed through its delivery callback);
    raises RetryError if some are still queued once the deadline has passed."""
    def once():
        left = producer.flush(min(step_s, max(deadline_s, 0.1)))
        if left:
            raise Undelivered(left)
    # the flush itself waits: no sleep between steps
    retry(once, what=what, deadline_s=deadline_s, retriable=kafka_retriable, initial_s=0.0,
          sleep=lambda _s: None)
