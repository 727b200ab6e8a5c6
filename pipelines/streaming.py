"""The unbounded pipeline (DESIGN sections 1, 2, 5): Kafka -> decode -> landing + dead letters
(Delta, one commit per interval) and acute alerts (Kafka sensor.alerts + Delta alerts).

    sensor.readings --ReadFromKafka--> messages, windowed by Kafka record time into intervals
        -> batches of messages -> decode (Arrow) --+--> landing + deadletter commits per interval
                                                   +--> acute rules per device shard -> alerts

On the local Flink (scripts/services.sh start):
  python -m pipelines.streaming --runner=PortableRunner --job_endpoint=127.0.0.1:8099 \
      --environment_type=LOOPBACK --default_environment_type=EMBEDDED --max_bundle_time_mills=100
Java KafkaIO needs an expansion service (--expansion_service); the Python DirectRunner cannot run
it (no Docker for the Java SDK here), so DirectRunner tests feed the same graph from TestStream.
Kafka security
settings go in --kafka_config (JSON); values like "${SASL_PASSWORD}" are read from the environment
so that no secret is written in code, command lines or logs.
"""
from __future__ import annotations

import datetime as dt
import json
import logging
import os
import re
import sys
import time

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions, WorkerOptions
from apache_beam.transforms import window

from pipelines import cli
from pipelines.options import KafkaOptions, LakeOptions, ShardsOptions
from core.acute_rules import RuleConfig
from transforms.acute import DEFAULT_SHARDS, AcuteRules
from transforms.decode import DecodeMessages, KafkaMessage
from transforms.landing import LandDecoded, SinkAlerts, intervals

log = logging.getLogger("streaming")


class StreamingOptions(LakeOptions, KafkaOptions, ShardsOptions, PipelineOptions):
    option_defaults = {"shards": DEFAULT_SHARDS}      # keys of the stateful rule evaluation

    @classmethod
    def _add_argparse_args(cls, parser):
        g = parser.add_argument_group("streaming pipeline")
        g.add_argument("--alerts_topic", default="sensor.alerts", help="topic to publish acute alerts to")
        g.add_argument("--consumer_group", default="fleet-streaming",
                       help="Kafka consumer group; its committed offsets are where a restarted job resumes")
        g.add_argument("--kafka_config", default="{}",
                       help='extra Kafka client properties as JSON, e.g. {"security.protocol": "SASL_SSL", '
                            '"sasl.mechanism": "PLAIN", "sasl.jaas.config": "${KAFKA_JAAS}"}; ${VAR} is read '
                            "from the environment")
        g.add_argument("--commit_interval_s", type=float, default=60.0,
                       help="landing interval: one Delta commit per table per interval of Kafka record time")
        g.add_argument("--rules_config", default=None,
                       help="acute rule thresholds file, read on the driver (default: the package's "
                            "core/config/acute_rules.yaml)")
        g.add_argument("--registry_ttl_s", type=float, default=300.0,
                       help="how often workers reload the device registry")
        g.add_argument("--batch_messages", type=int, default=500,
                       help="Kafka messages decoded together into one Arrow batch (upper bound)")
        g.add_argument("--expansion_service", default="127.0.0.1:8096",
                       help="Beam expansion service for the Java KafkaIO; scripts/services.sh runs one with the "
                            "legacy (non-SDF) read and the EMBEDDED environment, which is what works on Flink")
        g.add_argument("--cold_start", action="store_true",
                       help="do not rebuild the 24 h vibration baselines of devices without rule state from the "
                            "lake's 15-minute features and recent landing rows (then VIBRATION_SURGE needs an "
                            "hour of readings after a start without a savepoint)")
        g.add_argument("--warm_as_of", default=None,
                       help="UTC time the warm start rebuilds the baselines for (default: the wall clock when a "
                            "worker starts; set it when replaying or simulating readings of another time)")
        g.add_argument("--max_num_records", type=int, default=None,
                       help="stop after this many Kafka records (bounded runs and tests only)")


def arg_parser():
    return cli.pipeline_parser(StreamingOptions, "python -m pipelines.streaming", __doc__)


def kafka_properties(opts) -> dict:
    """Extra client properties with ${VAR} references resolved from the environment."""
    raw = json.loads(opts.kafka_config or "{}")

    def resolve(value: str) -> str:
        def env(m):
            if m.group(1) not in os.environ:
                raise ValueError(f"--kafka_config refers to ${{{m.group(1)}}}, which is not set")
            return os.environ[m.group(1)]
        return re.sub(r"\$\{(\w+)\}", env, value) if isinstance(value, str) else value
    return {k: resolve(v) for k, v in raw.items()}


class ReadKafkaMessages(beam.PTransform):
    """KafkaIO (Java, through the expansion service) -> KafkaMessage, timestamped by record time.

    Offsets are not committed by KafkaIO: the landing commits them once the messages' rows are in
    Delta (transforms.landing), so a restarted job resumes exactly after what has landed.
    """

    def __init__(self, opts):
        super().__init__()
        self._opts = opts

    def expand(self, pbegin):
        from apache_beam.io.kafka import ReadFromKafka
        o = self._opts
        consumer = {"bootstrap.servers": o.bootstrap_servers, "group.id": o.consumer_group,
                    "auto.offset.reset": "earliest", "enable.auto.commit": "false", **kafka_properties(o)}
        return (pbegin
                | "ReadFromKafka" >> ReadFromKafka(
                    consumer_config=consumer, topics=[o.topic], with_metadata=True,
                    timestamp_policy=ReadFromKafka.log_append_time, commit_offset_in_finalize=False,
                    max_num_records=o.max_num_records, expansion_service=o.expansion_service)
                | "ToMessage" >> beam.Map(lambda r: KafkaMessage(r.topic, r.partition, r.offset, r.timestamp,
                                                                 r.key, r.value)))


class FleetStreaming(beam.PTransform):
    """Kafka messages (timestamped by record time) -> landing, dead letters and alerts."""

    def __init__(self, lake_root: str, *, interval_s: float = 60.0, shards: int = DEFAULT_SHARDS,
                 batch_messages: int = 500, rules: RuleConfig | None = None, registry_ttl_s: float = 300.0,
                 kafka_producer: dict | None = None, kafka_commit: dict | None = None,
                 alerts_topic: str = "sensor.alerts", warm_start: bool = True,
                 warm_as_of: dt.datetime | None = None):
        super().__init__()
        self._warm_start, self._warm_as_of = warm_start, warm_as_of
        self._lake, self._interval, self._shards = lake_root, interval_s, shards
        self._batch, self._rules, self._ttl = batch_messages, rules, registry_ttl_s
        self._producer, self._commit, self._alerts_topic = kafka_producer, kafka_commit, alerts_topic

    def expand(self, messages):
        decoded = (messages
                   | "Interval" >> intervals(self._interval)
                   | "Batch" >> beam.BatchElements(min_batch_size=1, max_batch_size=self._batch)
                   | "Decode" >> DecodeMessages())
        decoded | "Land" >> LandDecoded(self._lake, self._interval, self._commit)
        alerts = (decoded
                  | "Readings" >> beam.Map(lambda d: d.readings)
                  | "Continuous" >> beam.WindowInto(window.GlobalWindows())
                  | "AcuteRules" >> AcuteRules(self._lake, self._shards, self._rules, self._ttl,
                                               warm_start=self._warm_start,
                                               warm_as_of=self._warm_as_of))
        alerts | "Alerts" >> SinkAlerts(self._lake, self._interval, self._producer, self._alerts_topic)
        return alerts


TOPIC_CHECK_DEADLINE_S = 60.0


def missing_topics(admin, topics, wait_s: float = 5.0, deadline_s: float = TOPIC_CHECK_DEADLINE_S) -> list[str]:
    """Topics the broker does not list; waits a little, as a just-created topic can take a moment to
    appear in the metadata. Transient metadata errors are retried up to `deadline_s`."""
    from core.retry import retry
    deadline = time.monotonic() + wait_s
    while True:
        listed = retry(lambda: admin.list_topics(timeout=15).topics, what="list the Kafka topics",
                       deadline_s=deadline_s)
        missing = [t for t in topics if t not in listed]
        if not missing or time.monotonic() > deadline:
            return missing
        time.sleep(0.5)


def timestamp_type(admin, topic: str, deadline_s: float = TOPIC_CHECK_DEADLINE_S) -> str:
    """The topic's message.timestamp.type; the topic is listed, so "unknown topic" is transient here."""
    from confluent_kafka.admin import ConfigResource
    from core.retry import kafka_new_topic_retriable, retry
    resource = ConfigResource("topic", topic)

    def once() -> str:    # a future answers once: every attempt asks again
        return admin.describe_configs([resource])[resource].result(timeout=15)["message.timestamp.type"].value
    return retry(once, what=f"read the configuration of topic {topic}", deadline_s=deadline_s,
                 retriable=kafka_new_topic_retriable)


def check_topics(opts) -> None:
    """Both topics must exist: a missing alerts topic would fail every bundle that publishes an
    alert, over and over. The readings topic must stamp records with the broker's append time: that
    is the record time the pipeline reads (timestamp_ingested, event time of the intervals); a topic
    with producer CreateTime records makes KafkaIO's LogAppendTime policy fail on the first record."""
    from confluent_kafka.admin import AdminClient
    admin = AdminClient({"bootstrap.servers": opts.bootstrap_servers, **kafka_properties(opts)})
    try:
        missing = missing_topics(admin, (opts.topic, opts.alerts_topic))
        kind = None if missing else timestamp_type(admin, opts.topic)
    except Exception as exc:  # noqa: BLE001 - still unreachable after the retries: KafkaIO's to report
        log.warning("could not check topics %s and %s: %s", opts.topic, opts.alerts_topic, exc)
        return
    if missing:
        raise SystemExit(f"topic(s) {', '.join(missing)} do not exist on {opts.bootstrap_servers}; create them "
                         f"first (scripts/services.sh creates sensor.readings and sensor.alerts)")
    if kind != "LogAppendTime":
        raise SystemExit(
            f"topic {opts.topic} uses message.timestamp.type={kind}; the streaming pipeline needs LogAppendTime "
            f"(records stamped with their arrival time). Set it on a new topic, e.g. kafka-topics --create "
            f"--config message.timestamp.type=LogAppendTime (scripts/services.sh does).")


def build(p: beam.Pipeline, opts) -> None:
    client = {"bootstrap.servers": opts.bootstrap_servers, **kafka_properties(opts)}
    (p
     | "Kafka" >> ReadKafkaMessages(opts)
     | "Fleet" >> FleetStreaming(
         opts.lake, interval_s=opts.commit_interval_s, shards=opts.shards, batch_messages=opts.batch_messages,
         rules=RuleConfig.load(opts.rules_config), registry_ttl_s=opts.registry_ttl_s, kafka_producer=client,
         kafka_commit={**client, "group.id": opts.consumer_group}, alerts_topic=opts.alerts_topic,
         warm_start=not opts.cold_start,
         warm_as_of=cli.utc_datetime(opts.warm_as_of) if opts.warm_as_of else None))


STATE_CACHE_MB = 256


def main(argv: list[str] | None = None) -> int:
    cli.setup_logging()
    options = cli.pipeline_options(arg_parser(), argv)
    opts = options.view_as(StreamingOptions)
    if opts.max_num_records is None:
        options.view_as(StandardOptions).streaming = True
    if not options.view_as(WorkerOptions).max_cache_memory_usage_mb:
        # the acute rules' state store reads only the pages a batch needs thanks to the SDK's state
        # cache across bundles, which Beam leaves off by default
        options.view_as(WorkerOptions).max_cache_memory_usage_mb = STATE_CACHE_MB
    if options.view_as(StandardOptions).runner != "DataflowRunner":
        check_topics(opts)
    log.info("reading %s from %s (group %s), landing into %s every %.0f s",
             opts.topic, opts.bootstrap_servers, opts.consumer_group, opts.lake, opts.commit_interval_s)
    p = beam.Pipeline(options=options)
    build(p, opts)
    result = p.run()
    result.wait_until_finish()
    return 0


if __name__ == "__main__":
    cli.exit_process(main)
