"""Minimal unbounded Kafka -> Python DoFns -> keyed stateful DoFn with event-time timers on Flink.

ReadFromKafka (Java KafkaIO, cross-language, expanded by the Flink job server's expansion service)
-> Parse (Python) -> "seen" JSONL files
               -> StatefulTimers keyed by device_id (BagState + event-time timer) -> "fired" JSONL files
               -> FixedWindows(--window-s) + CombinePerKey(count) -> "windows" JSONL files

Every output line carries wall-clock times so latency can be computed offline (analyze.py).

Example (the recipe that works, see README.md in this folder):
  python probe_pipeline.py --topic T --group G --out /tmp/kprobe/out/run1 \
      --timestamp-policy CreateTime --expansion-service 127.0.0.1:18297 -- \
      --runner=PortableRunner --job_endpoint=127.0.0.1:18299 --streaming \
      --environment_type=LOOPBACK --default_environment_type=EMBEDDED \
      --checkpointing_interval=10000 --parallelism=2
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
import uuid

import apache_beam as beam
from apache_beam.coders import coders
from apache_beam.io.kafka import ReadFromKafka
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.transforms import window
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.userstate import BagStateSpec, ReadModifyWriteStateSpec, TimerSpec, on_timer


def now_ms() -> int:
    return int(time.time() * 1000)


class WriteJsonl(beam.DoFn):
    """Appends elements (dicts) as JSON lines to <out>/<prefix>-<uuid>.jsonl, flushed per bundle."""

    def __init__(self, out: str, prefix: str):
        self.out, self.prefix = out, prefix

    def setup(self):
        os.makedirs(self.out, exist_ok=True)
        self.path = os.path.join(self.out, f"{self.prefix}-{os.getpid()}-{uuid.uuid4().hex[:8]}.jsonl")
        self.f = open(self.path, "a", buffering=1 << 16)

    def process(self, element):
        self.f.write(json.dumps(element) + "\n")

    def finish_bundle(self):
        self.f.flush()

    def teardown(self):
        try:
            self.f.close()
        except Exception:  # noqa: BLE001
            pass


class Parse(beam.DoFn):
    """Kafka Row (with_metadata) -> one (device_id, reading) per reading; heartbeats are dropped here
    (they only exist to move each partition's watermark)."""

    def __init__(self, light: bool):
        self.light = light

    def process(self, rec, ts=beam.DoFn.TimestampParam):
        seen = now_ms()
        body = json.loads(rec.value)
        items = body if isinstance(body, list) else [body]
        if self.light:   # throughput mode: count readings, emit one summary per message
            yield ("_msg", {"n": len(items), "partition": rec.partition, "offset": rec.offset,
                            "seen_ms": seen, "kafka_ts": rec.timestamp})
            return
        for r in items:
            if r.get("heartbeat"):
                continue
            yield (r["device_id"], {
                "event_id": r.get("event_id"), "prod_ms": r.get("prod_ms"), "seen_ms": seen,
                "partition": rec.partition, "offset": rec.offset, "kafka_ts": rec.timestamp,
                "elem_ts_ms": int(ts.micros // 1000) if ts.micros > -2**62 else None,
            })


class StatefulTimers(beam.DoFn):
    """Per device: buffer readings; an event-time timer at (max element timestamp + delay) emits them.
    A processing-time timer is also set (as a fall-back indicator) and counted separately."""
    BUF = BagStateSpec("buf", coders.PickleCoder())
    MAXTS = ReadModifyWriteStateSpec("maxts", coders.VarIntCoder())
    EVT = TimerSpec("evt", TimeDomain.WATERMARK)

    def __init__(self, delay_s: float):
        self.delay_s = delay_s

    def process(self, kv, ts=beam.DoFn.TimestampParam, buf=beam.DoFn.StateParam(BUF),
                maxts=beam.DoFn.StateParam(MAXTS), evt=beam.DoFn.TimerParam(EVT)):
        key, r = kv
        r = dict(r, state_in_ms=now_ms())
        buf.add(r)
        t = int(ts.micros // 1000)
        m = maxts.read()
        if m is None or t > m:
            maxts.write(t)
            evt.set(window.Timestamp(micros=(t + int(self.delay_s * 1000)) * 1000))

    @on_timer(EVT)
    def on_evt(self, key=beam.DoFn.KeyParam, fire_ts=beam.DoFn.TimestampParam,
               buf=beam.DoFn.StateParam(BUF)):
        fired = now_ms()
        for r in buf.read():
            yield dict(r, device_id=key, fired_ms=fired, timer_ts_ms=int(fire_ts.micros // 1000))
        buf.clear()


class Summarise(beam.DoFn):
    def process(self, kv, win=beam.DoFn.WindowParam):
        key, n = kv
        yield {"key": key, "count": n, "win_end_ms": int(win.end.micros // 1000), "closed_ms": now_ms()}


def build(p, a):
    consumer = {"bootstrap.servers": a.bootstrap, "auto.offset.reset": a.offset_reset}
    if a.group:
        consumer["group.id"] = a.group
        # ReadFromKafka from Python passes ONLY this dict to the Kafka consumer (KafkaIO's own
        # defaults are not applied), so Kafka's enable.auto.commit=true would be in force.
        consumer["enable.auto.commit"] = "false"
    for kv in a.consumer_extra:
        k, v = kv.split("=", 1)
        consumer[k] = v
    kw = {}
    if a.expansion_service:
        kw["expansion_service"] = a.expansion_service
    if a.max_num_records:
        kw["max_num_records"] = a.max_num_records
    recs = p | "ReadFromKafka" >> ReadFromKafka(
        consumer_config=consumer, topics=[a.topic], with_metadata=True,
        timestamp_policy=a.timestamp_policy, commit_offset_in_finalize=a.commit,
        consumer_polling_timeout=a.poll_timeout, **kw)
    parsed = recs | "Parse" >> beam.ParDo(Parse(a.light))
    parsed | "SeenOut" >> beam.Map(lambda kv: dict(kv[1], device_id=kv[0])) \
           | "WriteSeen" >> beam.ParDo(WriteJsonl(a.out, "seen"))
    if a.stateful:
        parsed | "Stateful" >> beam.ParDo(StatefulTimers(a.timer_delay_s)) \
               | "WriteFired" >> beam.ParDo(WriteJsonl(a.out, "fired"))
    if a.window_s:
        (parsed | "Window" >> beam.WindowInto(window.FixedWindows(a.window_s))
                | "Count" >> beam.combiners.Count.PerKey()
                | "Summ" >> beam.ParDo(Summarise())
                | "WriteWin" >> beam.ParDo(WriteJsonl(a.out, "windows")))


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--topic", required=True)
    ap.add_argument("--group", default=None)
    ap.add_argument("--bootstrap", default="127.0.0.1:9092")
    ap.add_argument("--offset-reset", default="earliest")
    ap.add_argument("--timestamp-policy", default="CreateTime")
    ap.add_argument("--consumer-extra", action="append", default=[], help="k=v Kafka consumer property")
    ap.add_argument("--commit", action="store_true", help="commit_offset_in_finalize=True")
    ap.add_argument("--poll-timeout", type=int, default=2)
    ap.add_argument("--expansion-service", default="127.0.0.1:18297")
    ap.add_argument("--max-num-records", type=int, default=None)
    ap.add_argument("--out", required=True)
    ap.add_argument("--no-stateful", dest="stateful", action="store_false")
    ap.add_argument("--timer-delay-s", type=float, default=0.0)
    ap.add_argument("--window-s", type=int, default=10)
    ap.add_argument("--light", action="store_true", help="throughput mode: no per-reading output")
    ap.add_argument("--detach", action="store_true", help="return after submission (not with LOOPBACK)")
    a, beam_args = ap.parse_known_args(argv)
    beam_args = [x for x in beam_args if x != "--"]
    opts = PipelineOptions(beam_args)
    p = beam.Pipeline(options=opts)
    build(p, a)
    res = p.run()
    print("submitted", getattr(res, "_job_id", None), flush=True)
    if not a.detach:
        res.wait_until_finish()
        print("final state", res.state, flush=True)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    main()
