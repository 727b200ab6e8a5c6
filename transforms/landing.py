"""Landing of the streaming path: every decoded reading and dead letter lands in Delta exactly once,
one atomic commit per table per interval, and alerts are committed and published.

    Decoded batches (windowed by Kafka record time into intervals)
      -> write Parquet files in parallel (rows of already-committed messages dropped)
      -> (one key per interval) commit all files of the interval in one Delta transaction per table
      -> commit the consumer group's Kafka offsets up to the contiguous prefix of landed messages

Each commit records the Kafka offsets it contains (commit metadata `fleet.inputs`). After a restart
or failover, replayed messages are recognised by their offsets and dropped, so nothing lands twice;
the consumer group's position only moves past messages whose rows are committed, so nothing is lost
when the job is cancelled with data in flight. Files written but not committed stay invisible.
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
import typing
from dataclasses import dataclass, field

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.metrics import Metrics
from apache_beam.transforms import window

from core import lake
from core.arrays import to_numpy
from transforms.decode import Decoded
from core.offsets import OffsetSet

log = logging.getLogger(__name__)
APP = "streaming"
TABLES = ("raw_sensor_readings", "deadletter")
HISTORY_COMMITS = 500    # how far back a restarted job looks for offsets it already landed


def committed_offsets(lake_root: str, table: str) -> OffsetSet:
    """Offsets of the messages already landed in `table` by the streaming job, from the commits of
    the newest HISTORY_COMMITS versions (their commit files only: the cost does not grow with the
    table's age; object-store reads are cached, so a refresh reads just the versions since)."""
    out = OffsetSet()
    for h in lake.commits(lake_root, table, APP, limit=HISTORY_COMMITS):
        out.update(OffsetSet.from_json(json.loads(h.get(lake.COMMIT_INPUTS, "{}")).get("kafka")))
    return out


def message_offsets(data: pa.Table) -> OffsetSet:
    out = OffsetSet()
    if data.num_rows:
        keys = pa.table({"t": data["kafka_topic"], "p": data["kafka_partition"], "o": data["kafka_offset"]})
        for (topic, partition), group in keys.to_pandas().groupby(["t", "p"]):
            out.add(topic, int(partition), group["o"].to_numpy())
    return out


def drop_committed(data: pa.Table, committed: OffsetSet) -> pa.Table:
    if not data.num_rows or not len(committed):
        return data
    drop = np.zeros(data.num_rows, bool)
    topics = to_numpy(data["kafka_topic"])
    parts = to_numpy(data["kafka_partition"])
    offs = to_numpy(data["kafka_offset"])
    for topic, partition in committed.partitions():
        m = (topics == topic) & (parts == partition)
        if m.any():
            drop[m] = committed.contains(topic, partition, offs[m])
    return data.filter(pa.array(~drop))


@dataclass
class Pending:
    """Files written for one decoded batch, not yet committed, and the messages they came from."""
    files: dict[str, list[lake.WrittenFile]] = field(default_factory=dict)
    offsets: dict[str, OffsetSet] = field(default_factory=dict)   # per table: messages with rows in it
    messages: OffsetSet = field(default_factory=OffsetSet)         # every message of the batch
    rows: dict[str, int] = field(default_factory=dict)


class _WriteFilesFn(beam.DoFn):
    def __init__(self, lake_root: str, refresh_s: float = 60.0):
        self._lake, self._refresh_s = lake_root, refresh_s
        self.replayed = Metrics.counter("landing", "replayed_rows_dropped")

    def setup(self):
        self._committed, self._loaded = {}, -1e18

    def _view(self) -> dict[str, OffsetSet]:
        if time.monotonic() - self._loaded > self._refresh_s:
            self._committed = {t: committed_offsets(self._lake, t) for t in TABLES}
            self._loaded = time.monotonic()
        return self._committed

    def process(self, decoded: Decoded):
        committed = self._view()
        pending = Pending()
        for topic, partition, offset in decoded.offsets:
            pending.messages.add(topic, partition, [offset])
        for table, data in (("raw_sensor_readings", decoded.readings), ("deadletter", decoded.deadletters)):
            fresh = drop_committed(data, committed[table])
            self.replayed.inc(data.num_rows - fresh.num_rows)
            if fresh.num_rows:
                pending.files[table] = lake.write_files(self._lake, table, fresh, prefix="stream")
                pending.offsets[table] = message_offsets(fresh)
                pending.rows[table] = fresh.num_rows
        yield pending


class _CommitFn(beam.DoFn):
    """One per interval (single key): commits every table's files, then the Kafka offsets."""

    def __init__(self, lake_root: str, kafka_commit: dict | None):
        self._lake, self._kafka_commit = lake_root, kafka_commit
        self.commits = Metrics.counter("landing", "commits")
        self.landed = Metrics.counter("landing", "landed_rows")
        self.deadlettered = Metrics.counter("landing", "deadletter_rows")
        self.rewritten = Metrics.counter("landing", "files_rewritten_after_replay")

    def setup(self):
        self._committed = {t: committed_offsets(self._lake, t) for t in TABLES}
        self._done = OffsetSet()
        self._consumer = None
        if self._kafka_commit:
            from confluent_kafka import Consumer
            self._consumer = Consumer({**self._kafka_commit, "enable.auto.commit": False})

    def teardown(self):
        if self._consumer is not None:
            self._consumer.close()

    def process(self, element, win=beam.DoFn.WindowParam):
        _, pendings = element
        pendings = list(pendings)
        for table in TABLES:
            self._commit_table(table, [p for p in pendings if table in p.files], win)
        for p in pendings:
            self._done.update(p.messages)
        if self._consumer is not None:
            try:
                self._commit_kafka()
            except Exception as exc:  # noqa: BLE001 - e.g. the broker is down: the next interval retries
                # correctness does not depend on it: a restart re-reads from the older position and
                # the offsets recorded in the Delta commits drop what already landed
                log.warning("could not commit consumer offsets (%s); will retry next interval", exc)
        yield {t: sum(p.rows.get(t, 0) for p in pendings) for t in TABLES}

    def _commit_table(self, table: str, pendings: list[Pending], win) -> None:
        if not pendings:
            return
        committed = self._committed[table]
        files, offsets, rows = [], OffsetSet(), 0
        for p in pendings:
            p_files, p_offsets = p.files[table], p.offsets[table]
            if _overlaps(committed, p_offsets):
                p_files, p_offsets = self._rewrite(table, p_files, committed)
                self.rewritten.inc()
            files += p_files
            offsets.update(p_offsets)
            rows += sum(f.num_rows for f in p_files)
        if not files:
            return
        digest = hashlib.sha1(offsets.to_json().encode()).hexdigest()[:20]
        version = lake.commit_files(self._lake, table, files, app=APP, commit_id=f"{APP}:{table}:{digest}",
                                    inputs={"kafka": offsets.to_json(), "window_end": str(win.end)})
        committed.update(offsets)
        self.commits.inc()
        (self.landed if table == "raw_sensor_readings" else self.deadlettered).inc(rows)
        log.info("landing: %s v%d, %d rows from %d messages (interval ending %s)",
                 table, version, rows, len(offsets), win.end.to_utc_datetime().isoformat())

    def _rewrite(self, table: str, files: list, committed: OffsetSet):
        """Rare: a replay raced with the writers' view of what is committed. Drop those rows."""
        uri = lake.table_uri(self._lake, table)
        fs = lake._filesystem(uri)
        from transforms.delta import with_partition_columns
        parts = [with_partition_columns(table, pq.read_table(f.path, filesystem=fs), f.partition_values)
                 for f in files]
        data = drop_committed(pa.concat_tables(parts), committed)
        if not data.num_rows:
            return [], OffsetSet()
        return lake.write_files(self._lake, table, data, prefix="stream"), message_offsets(data)

    def _commit_kafka(self, deadline_s: float = 30.0) -> None:
        # transient errors (coordinator loading or moved, a leader election) are retried for a while;
        # past the deadline the caller logs and the next interval tries again
        from confluent_kafka import TopicPartition
        from core.retry import partitions_ok, retry
        wanted = [TopicPartition(t, p) for t, p in self._done.partitions()]
        positions = retry(lambda: partitions_ok(self._consumer.committed(wanted, timeout=10)),
                          what="read the consumer group's committed offsets", deadline_s=deadline_s)
        advance = []
        for tp in positions:
            start = tp.offset if tp.offset >= 0 else 0
            end = self._done.prefix_end(tp.topic, tp.partition, start)
            if end > start:
                advance.append(TopicPartition(tp.topic, tp.partition, end))
        if advance:
            # idempotent: the same absolute offsets again
            retry(lambda: partitions_ok(self._consumer.commit(offsets=advance, asynchronous=False)),
                  what="commit the consumer group's offsets after landing", deadline_s=deadline_s)


def ranges_of(offsets: OffsetSet, topic: str, partition: int) -> list[list[int]]:
    return offsets._ranges.get(OffsetSet.key(topic, partition), [])


def _overlaps(committed: OffsetSet, offsets: OffsetSet) -> bool:
    for topic, partition in offsets.partitions():
        for lo, hi in ranges_of(offsets, topic, partition):
            probe = np.arange(lo, hi + 1) if hi - lo < 100_000 else np.array([lo, hi])
            if committed.contains(topic, partition, probe).any():
                return True
    return False


LATE_DATA_S = 7 * 24 * 3600


def intervals(interval_s: float) -> beam.WindowInto:
    """Fixed intervals of record time, committed when the watermark passes their end. A record that
    arrives behind the watermark anyway (e.g. from a topic that was not always LogAppendTime) is not
    dropped: it fires a late pane of its interval, committed like any other."""
    from apache_beam.transforms import trigger
    return beam.WindowInto(window.FixedWindows(interval_s),
                           trigger=trigger.AfterWatermark(late=trigger.AfterCount(1)),
                           allowed_lateness=LATE_DATA_S, accumulation_mode=trigger.AccumulationMode.DISCARDING)


@beam.typehints.with_input_types(Decoded)
class LandDecoded(beam.PTransform):
    """Windowed PCollection[Decoded] -> one landing + dead-letter commit per interval."""

    def __init__(self, lake_root: str, interval_s: float, kafka_commit: dict | None = None):
        super().__init__()
        self._lake, self._interval, self._kafka_commit = lake_root, interval_s, kafka_commit

    def expand(self, decoded):
        return (decoded
                | "Interval" >> intervals(self._interval)
                | "WriteFiles" >> beam.ParDo(_WriteFilesFn(self._lake))
                | "OneKey" >> beam.WithKeys(0)
                | "PerInterval" >> beam.GroupByKey()
                | "Commit" >> beam.ParDo(_CommitFn(self._lake, self._kafka_commit)))


# --- alerts ----------------------------------------------------------------------------------

DEDUP_HORIZON_US = 24 * 3600 * 10**6   # alert ids remembered this long (event time) for dedup


class RecentAlertIds:
    """Alert ids with their event time, for the last ``horizon_us`` of event time only.

    Ids are deterministic from device, rule and triggering reading, so a repeat is a reading seen again
    (a replay after a restart resumes from the last landed offsets: minutes, not days). Remembering a
    bounded horizon keeps memory flat however long the job runs and however big the table grows."""

    def __init__(self, horizon_us: int = DEDUP_HORIZON_US):
        self.horizon_us = horizon_us
        self._ids: dict[str, int] = {}
        self._newest = 0

    def add(self, ids, event_us) -> None:
        for alert_id, t in zip(ids, event_us):
            self._ids[alert_id] = int(t)
            self._newest = max(self._newest, int(t))
        cutoff = self._newest - self.horizon_us
        if any(t < cutoff for t in self._ids.values()):
            self._ids = {a: t for a, t in self._ids.items() if t >= cutoff}

    def __contains__(self, alert_id: str) -> bool:
        return alert_id in self._ids

    def __len__(self) -> int:
        return len(self._ids)


def recent_alert_ids(lake_root: str, horizon_us: int = DEDUP_HORIZON_US) -> RecentAlertIds:
    """The alerts table's ids of the newest ``horizon_us`` of event time (file statistics prune the rest)."""
    import pyarrow.compute as pc
    import pyarrow.dataset as pads
    known = RecentAlertIds(horizon_us)
    table = lake.open_table(lake_root, "alerts")
    if table is None:
        return known
    stats = table.get_add_actions(flatten=True)
    if stats.num_rows == 0:
        return known
    newest = pc.max(stats["max.event_time"]).cast(pa.int64()).as_py() if "max.event_time" in stats.schema.names \
        else None
    if newest is None:      # files without statistics: read the column (still one column only)
        newest = pc.max(lake.read(lake_root, "alerts", columns=["event_time"])["event_time"]).cast(pa.int64()).as_py()
    cutoff = pa.scalar(newest - horizon_us, pa.timestamp("us", tz="UTC"))
    recent = table.to_pyarrow_dataset().to_table(columns=["alert_id", "event_time"],
                                                 filter=pads.field("event_time") >= cutoff)
    known.add(recent["alert_id"].to_pylist(), recent["event_time"].cast(pa.int64()).to_pylist())
    return known


class _CommitAlertsFn(beam.DoFn):
    def __init__(self, lake_root: str):
        self._lake = lake_root
        self.committed = Metrics.counter("alerts", "committed")
        self.duplicates = Metrics.counter("alerts", "duplicates_dropped")

    def setup(self):
        self._known = recent_alert_ids(self._lake)

    def process(self, element, win=beam.DoFn.WindowParam):
        _, alerts = element
        alerts = list(alerts)
        fresh = {a["alert_id"]: a for a in alerts if a["alert_id"] not in self._known}
        self.duplicates.inc(len(alerts) - len(fresh))
        if not fresh:
            return
        data = pa.Table.from_pylist(sorted(fresh.values(), key=lambda a: (a["event_time"], a["alert_id"])),
                                    schema=lake.TABLES["alerts"].schema)
        ids = sorted(fresh)
        files = lake.write_files(self._lake, "alerts", data, prefix="acute")
        digest = hashlib.sha1("".join(ids).encode()).hexdigest()[:20]
        version = lake.commit_files(self._lake, "alerts", files, app=APP, commit_id=f"{APP}:alerts:{digest}",
                                    inputs={"window_end": str(win.end)})
        self._known.add(ids, [_event_us(fresh[i]["event_time"]) for i in ids])
        self.committed.inc(len(ids))
        log.info("alerts: v%d, %d alerts", version, len(ids))
        yield len(ids)


def _event_us(t) -> int:
    return int(t.timestamp() * 10**6) if hasattr(t, "timestamp") else int(t)


class _PublishAlertsFn(beam.DoFn):
    """Publishes each alert to Kafka as it fires (JSON, key device_id); ids make repeats idempotent.

    A full local queue is served (poll) and retried. A bundle finishes once its alerts are delivered:
    an alert whose delivery failed with a retriable error is produced again, until the deadline, then
    the bundle fails and Beam retries it. A non-retriable failure is counted and logged, not retried
    (the alert is still committed to the alerts table)."""

    def __init__(self, producer_config: dict, topic: str, deadline_s: float = 120.0):
        self._config, self._topic, self._deadline_s = producer_config, topic, deadline_s
        self.published = Metrics.counter("alerts", "published")
        self.republished = Metrics.counter("alerts", "republished")
        self.failed = Metrics.counter("alerts", "publish_failed")

    def setup(self):
        from confluent_kafka import Producer
        self._producer = Producer({"linger.ms": 5, **self._config})
        self._again: list[tuple[bytes, bytes]] = []    # (key, body) of retriable delivery failures

    def _on_delivery(self, err, msg):
        from core.retry import describe, kafka_retriable
        if err is None:
            self.published.inc()
        elif kafka_retriable(err):
            self._again.append((msg.key(), msg.value()))
        else:
            self.failed.inc()
            log.error("alert not published to %s: %s", self._topic, describe(err))

    def _produce(self, key: bytes, body: bytes) -> None:
        from core import retry
        retry.produce(self._producer, self._topic, body, key=key, on_delivery=self._on_delivery,
                      what=f"queue an alert for {self._topic} (local queue full)", deadline_s=self._deadline_s)

    def process(self, alert: dict):
        body = json.dumps({k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in alert.items()})
        self._produce(alert["device_id"].encode(), body.encode())
        self._producer.poll(0)

    def _deliver(self) -> None:
        again, self._again = self._again, []
        for key, body in again:
            self._produce(key, body)
        self.republished.inc(len(again))
        left = self._producer.flush(10)     # delivery callbacks run here and may refill _again
        if left or self._again:
            from core.retry import Undelivered
            raise Undelivered(left + len(self._again))

    def finish_bundle(self):
        from core.retry import retry
        retry(self._deliver, what=f"deliver the bundle's alerts to {self._topic}", deadline_s=self._deadline_s,
              initial_s=0.5)

    def teardown(self):
        self._producer.flush(30)    # best effort: every bundle already flushed its alerts


@beam.typehints.with_input_types(typing.Dict[str, typing.Any])
class SinkAlerts(beam.PTransform):
    """Alerts -> Kafka (immediately, if a producer config is given) and the alerts table (per interval)."""

    def __init__(self, lake_root: str, interval_s: float, producer_config: dict | None = None,
                 topic: str = "sensor.alerts"):
        super().__init__()
        self._lake, self._interval, self._producer, self._topic = lake_root, interval_s, producer_config, topic

    def expand(self, alerts):
        if self._producer:
            alerts | "PublishKafka" >> beam.ParDo(_PublishAlertsFn(self._producer, self._topic))
        return (alerts
                | "Interval" >> intervals(self._interval)
                | "OneKey" >> beam.WithKeys(0)
                | "PerInterval" >> beam.GroupByKey()
                | "Commit" >> beam.ParDo(_CommitAlertsFn(self._lake)))
