"""Streaming throughput and acute-alert latency: Kafka -> decode -> landing + dead letters + alerts.

On the local Flink (scripts/services.sh; started here when not running, stopped again after), one
streaming job on a fresh topic and lake, while the simulator produces gateway batches (and single
readings) in two phases:
  1. overload  --overload_rate readings/s for --overload_s: more than the job can take, so the
               rate at which readings land is its capacity; the lag shows the backlog and its drain
  2. steady    --steady_rate readings/s for --steady_s once the backlog has drained: the alert
               latency p50/p99 (a CRITICAL alert's detected_at minus its reading's Kafka append
               time) at a rate the job sustains
Every --sample_s: consumer lag (messages not yet landed: end offsets - the group's committed
offsets, which the landing commits after each Delta commit), landed readings, and the resident
memory of the TaskManager JVM and of the Python SDK worker (LOOPBACK: the submitting process).

On the DirectRunner (the default local runner): KafkaIO is a Java transform that needs a Java SDK
environment (Docker) the DirectRunner cannot start here, so the same graph after the read
(pipelines.streaming.FleetStreaming) runs over --direct_readings readings the simulator produced to
a fresh topic, read back by a Python consumer and fed in record-time order from a TestStream.

  python -m bench.bench_streaming                      # both runners, ~8 min
  python -m bench.bench_streaming --runners flink --single_fraction 0 --overload_rate 60000
                                                       # gateway batches only
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

from bench.machine import describe, machine

PROJECT_ROOT = Path(__file__).resolve().parent.parent
PARTITIONS = 4


def parse_args(argv=None) -> argparse.Namespace:
    class Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
        pass
    p = argparse.ArgumentParser(prog="python -m bench.bench_streaming", description=__doc__, formatter_class=Formatter)
    p.add_argument("--runners", default="flink,direct", help="comma-separated: flink, direct")
    p.add_argument("--devices", type=int, default=500,
                   help="simulated devices (the steady phase needs >= 20 simulated minutes for failures to occur)")
    p.add_argument("--interval", type=float, default=10, help="seconds between two readings of one sensor")
    p.add_argument("--batch_size", type=int, default=200, help="readings per gateway message")
    p.add_argument("--single_fraction", type=float, default=0.2,
                   help="share of devices that send each reading as its own message (the rest via gateways)")
    p.add_argument("--overload_rate", type=float, default=15000, help="target readings/s of the overload phase")
    p.add_argument("--overload_s", type=float, default=40, help="wall seconds of the overload phase")
    p.add_argument("--steady_rate", type=float, default=2500, help="target readings/s of the steady phase")
    p.add_argument("--steady_s", type=float, default=150, help="wall seconds of the steady phase")
    p.add_argument("--commit_interval_s", type=float, default=5, help="landing interval of the job")
    p.add_argument("--direct_readings", type=int, default=100000, help="readings fed to the DirectRunner")
    p.add_argument("--sample_s", type=float, default=2, help="seconds between lag/memory samples")
    p.add_argument("--workdir", default="/tmp/bench_streaming", help="lake, logs and samples of the run")
    p.add_argument("--bootstrap_servers", default="127.0.0.1:9092", help="Kafka")
    p.add_argument("--job_endpoint", default=f"127.0.0.1:{os.environ.get('JOB_SERVER_PORT', '8099')}",
                   help="Beam job server of the local Flink")
    p.add_argument("--flink_rest", default=f"127.0.0.1:{os.environ.get('FLINK_REST_PORT', '8081')}",
                   help="Flink REST address")
    return p.parse_args(argv)


# ---------------------------------------------------------------- services, Kafka

def services_running() -> bool:
    status = subprocess.run(["bash", "scripts/services.sh", "status"], cwd=PROJECT_ROOT, capture_output=True, text=True)
    return "kafka: running" in status.stdout and "flink: running" in status.stdout


def services(action: str) -> None:
    subprocess.run(["bash", "scripts/services.sh", action], cwd=PROJECT_ROOT, check=True)


def create_topic(bootstrap: str, topic: str, partitions: int = PARTITIONS) -> None:
    from confluent_kafka import KafkaError
    from confluent_kafka.admin import AdminClient, NewTopic
    from transforms.retry import kafka_error, retry
    admin = AdminClient({"bootstrap.servers": bootstrap})
    new = NewTopic(topic, partitions, 1, config={"message.timestamp.type": "LogAppendTime"})
    attempts = []

    def once() -> None:
        attempts.append(1)
        try:
            admin.create_topics([new])[topic].result(30)
        except Exception as exc:  # an attempt that timed out may have created it
            err = kafka_error(exc)
            if len(attempts) == 1 or err is None or err.code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise
    retry(once, what=f"create topic {topic}", deadline_s=60)


class Offsets:
    """End offsets of the topic and committed offsets of the job's group, summed over partitions."""

    def __init__(self, bootstrap: str, topic: str, group: str):
        from confluent_kafka import Consumer, TopicPartition
        self._consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
        self._partitions = [TopicPartition(topic, p) for p in range(PARTITIONS)]

    def lag(self) -> int:
        from transforms.retry import retry

        def once() -> int:
            ends = sum(self._consumer.get_watermark_offsets(tp, timeout=10)[1] for tp in self._partitions)
            committed = sum(max(tp.offset, 0) for tp in self._consumer.committed(self._partitions, timeout=10))
            return ends - committed
        return retry(once, what="read the job's consumer lag", deadline_s=30)

    def close(self) -> None:
        self._consumer.close()


# ---------------------------------------------------------------- sampling

def rss_mb(pid: int) -> float:
    try:
        return int(re.search(r"VmRSS:\s+(\d+)", Path(f"/proc/{pid}/status").read_text()).group(1)) / 1024
    except (OSError, AttributeError):
        return 0.0


def taskmanager_pid() -> int | None:
    found = subprocess.run(["pgrep", "-f", "TaskManagerRunner"], capture_output=True, text=True).stdout.split()
    return int(found[0]) if found else None


def landed_rows(lake: str) -> int:
    from transforms import lake as lake_io
    table = lake_io.open_table(lake, "raw_sensor_readings")
    if table is None:
        return 0
    return int(sum(table.get_add_actions(flatten=True).column("num_records").to_pylist()))


class Sampler(threading.Thread):
    """Lag, landed readings and memory every `every_s` seconds, with a progress line."""

    def __init__(self, lake: str, offsets: Offsets, worker_pid: int, every_s: float):
        super().__init__(daemon=True)
        self.lake, self.offsets, self.worker_pid, self.every_s = lake, offsets, worker_pid, every_s
        self.samples: list[dict] = []
        self.phase, self.began = "start", {}
        self._halt = threading.Event()
        self._t0 = time.monotonic()

    def run(self) -> None:
        tm = taskmanager_pid()
        while not self._halt.wait(self.every_s):
            s = {"t_s": round(time.monotonic() - self._t0, 1), "phase": self.phase, "lag_messages": self.offsets.lag(),
                 "landed": landed_rows(self.lake), "taskmanager_mb": rss_mb(tm) if tm else 0.0,
                 "python_worker_mb": rss_mb(self.worker_pid)}
            self.samples.append(s)
            if len(self.samples) % 5 == 1:
                print(f"    t={s['t_s']:6.1f}s {s['phase']:<9} landed {s['landed']:>10,}  lag {s['lag_messages']:>7,} msgs"
                      f"  TM {s['taskmanager_mb']:.0f} MB  worker {s['python_worker_mb']:.0f} MB", flush=True)

    def begin(self, phase: str) -> None:
        self.phase, self.began[phase] = phase, round(time.monotonic() - self._t0, 1)

    def last(self) -> dict:
        return self.samples[-1] if self.samples else {"landed": 0, "lag_messages": 0}

    def stop(self) -> None:
        self._halt.set()
        self.join()


# ---------------------------------------------------------------- producing

def simulated_seconds(args, rate: float, wall_s: float) -> float:
    """Simulated time that `wall_s` seconds at `rate` readings/s cover for the bench's fleet."""
    from schemas.sensors import SENSOR_TYPES
    return wall_s * rate / (args.devices * len(SENSOR_TYPES) / args.interval)


def produce(args, lake: str, topic: str, phase: str, start: dt.datetime, rate: float, wall_s: float,
            *extra: str) -> dict:
    """Runs the simulator's stream at `rate` for `wall_s`; returns what it reported."""
    sim_minutes = simulated_seconds(args, rate, wall_s) / 60
    out = subprocess.run(
        [sys.executable, "-m", "pipelines.simulate", "--lake", lake, "--devices", str(args.devices), "--stream",
         "--topic", topic, "--bootstrap_servers", args.bootstrap_servers, "--interval", str(args.interval),
         "--stream_start", start.isoformat(), "--stream_minutes", f"{sim_minutes:.3f}", "--rate", str(rate),
         "--batch_size", str(args.batch_size), "--single_fraction", str(args.single_fraction),
         "--ground_truth", str(Path(lake).parent / f"truth-{phase}.jsonl"), *extra],
        cwd=PROJECT_ROOT, capture_output=True, text=True)
    done = re.search(r"stream done: (\d+) messages, (\d+) readings in ([\d.]+) s \((\d+) readings/s\)", out.stderr)
    if out.returncode or not done:
        raise SystemExit(f"the simulator failed in phase {phase}:\n{out.stderr[-3000:]}")
    messages, readings, seconds, per_s = done.groups()
    return {"messages": int(messages), "readings": int(readings), "seconds": float(seconds), "readings_per_s": int(per_s),
            "sim_minutes": round(sim_minutes, 2), "end": start + dt.timedelta(minutes=sim_minutes)}


def write_registry(args, lake: str) -> None:
    subprocess.run([sys.executable, "-m", "pipelines.simulate", "--lake", lake, "--devices", str(args.devices),
                    "--registry_only"], cwd=PROJECT_ROOT, check=True, capture_output=True)


def accepted_readings(lake: str, phase: str) -> int:
    import pyarrow.parquet as pq
    kinds = pq.read_table(Path(lake).parent / f"truth-{phase}.produced.parquet", columns=["kind"])
    return kinds["kind"].to_pylist().count("reading")


def wait_for(sampler: Sampler, landed_at_least: int, timeout_s: float) -> float:
    """Seconds until `landed_at_least` readings have landed and the lag is zero."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        s = sampler.last()
        if s["landed"] >= landed_at_least and s["lag_messages"] == 0:
            return time.monotonic() - t0
        time.sleep(1)
    raise SystemExit(f"the job had not landed {landed_at_least} readings after {timeout_s:.0f} s "
                     f"(landed {sampler.last()['landed']})")


# ---------------------------------------------------------------- measures

def capacity(samples: list[dict], overload_began_s: float) -> dict:
    """Readings landed from the start of the overload phase until its backlog was gone, per second:
    the rate a saturated job sustains (everything from reading Kafka to the Delta commits and the
    offset commits is inside that span; the job was idle before it)."""
    drained = next((s for s in samples if s["phase"] == "drain" and s["lag_messages"] == 0), None)
    if drained is None:
        return {"readings_per_s": None}
    seconds = drained["t_s"] - overload_began_s
    return {"readings_per_s": round(drained["landed"] / seconds), "over_s": round(seconds, 1),
            "readings": drained["landed"]}


def alert_latency(lake: str, since: dt.datetime | None = None, until: dt.datetime | None = None) -> dict:
    import polars as pl
    from pipelines.report import KEY, acute_latency
    from transforms import lake as lake_io
    alerts = pl.from_arrow(lake_io.read(lake, "alerts", columns=KEY + ["severity", "event_time", "detected_at", "rule"]))
    landing = pl.from_arrow(lake_io.read(lake, "raw_sensor_readings", columns=KEY + ["timestamp_ingested"]))
    arrived = landing.group_by(KEY).agg(pl.col("timestamp_ingested").min())
    alerts = alerts.join(arrived, on=KEY, how="left")
    if since:
        alerts = alerts.filter(pl.col("timestamp_ingested") >= since)
    if until:
        alerts = alerts.filter(pl.col("timestamp_ingested") < until)
    lat = acute_latency(alerts.drop("timestamp_ingested"), landing)
    return {"critical_alerts": lat.alerts, "p50_s": _round(lat.p50_s), "p99_s": _round(lat.p99_s),
            "max_s": _round(lat.max_s), "by_rule": dict(Counter(lat.per_alert.get_column("rule").to_list()))}


def _round(x):
    return None if x is None else round(x, 2)


# ---------------------------------------------------------------- runners

def run_flink(args, workdir: Path) -> dict:
    from tests.integration import flink_jobs
    suffix = uuid.uuid4().hex[:8]
    topic, group, lake = f"bench.readings.{suffix}", f"bench-{suffix}", str(workdir / f"flink-{suffix}" / "lake")
    create_topic(args.bootstrap_servers, topic)
    create_topic(args.bootstrap_servers, f"bench.alerts.{suffix}", partitions=1)
    log = workdir / f"flink-{suffix}" / "streaming.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    sim_total = (simulated_seconds(args, args.overload_rate, args.overload_s)
                 + simulated_seconds(args, args.steady_rate, args.steady_s))
    start = dt.datetime.now(dt.timezone.utc).replace(microsecond=0) - dt.timedelta(seconds=sim_total + 60)
    others = [j["jid"] for j in flink_jobs.jobs("RUNNING")]
    if others:
        raise SystemExit(f"{len(others)} other job(s) running on the Flink cluster ({', '.join(others)}): they would "
                         f"share the CPU; cancel them first (flink_rest {args.flink_rest})")
    write_registry(args, lake)          # before the job: its workers read it
    known = {j["jid"] for j in flink_jobs.jobs()}
    job = flink_jobs.start("pipelines.streaming", [
        "--lake", lake, "--topic", topic, "--alerts_topic", f"bench.alerts.{suffix}", "--consumer_group", group,
        "--bootstrap_servers", args.bootstrap_servers, "--commit_interval_s", str(args.commit_interval_s),
        "--runner=PortableRunner", f"--job_endpoint={args.job_endpoint}", "--environment_type=LOOPBACK",
        "--default_environment_type=EMBEDDED", "--max_bundle_time_mills=100", "--checkpointing_interval=30000",
        "--parallelism=2"], log)
    jid = None
    offsets = Offsets(args.bootstrap_servers, topic, group)
    sampler = Sampler(lake, offsets, job.pid, args.sample_s)
    try:
        jid = flink_jobs.wait_for_running_job(known, timeout_s=180)
        print(f"  Flink job {jid} running; log {log}", flush=True)
        sampler.start()
        sampler.begin("overload")
        over = produce(args, lake, topic, "overload", start, args.overload_rate, args.overload_s)
        print(f"  overload phase produced {over['readings']:,} readings in {over['seconds']} s "
              f"({over['readings_per_s']:,}/s); draining", flush=True)
        sampler.begin("drain")
        expected = accepted_readings(lake, "overload")
        drain_s = wait_for(sampler, expected, timeout_s=1800)
        steady_from = dt.datetime.now(dt.timezone.utc)
        sampler.begin("steady")
        # the job has seen these devices through the overload phase: failures may start at once;
        # not vibration surges, whose rule needs an hour of history
        steady = produce(args, lake, topic, "steady", over["end"], args.steady_rate, args.steady_s,
                         "--warmup_minutes", "0", "--acute_modes", "current_spike,pressure_drop,cooling_loss")
        steady_until = dt.datetime.now(dt.timezone.utc)
        print(f"  steady phase produced {steady['readings']:,} readings in {steady['seconds']} s "
              f"({steady['readings_per_s']:,}/s)", flush=True)
        sampler.begin("tail")
        wait_for(sampler, expected + accepted_readings(lake, "steady"), timeout_s=600)
        time.sleep(2 * args.commit_interval_s)      # the alerts of the last interval
    finally:
        try:
            sampler.stop()
            offsets.close()
        finally:
            flink_jobs.stop(job, jid)
    samples = sampler.samples
    (workdir / f"flink-{suffix}" / "samples.json").write_text(json.dumps(samples, default=str))
    return {"runner": "FlinkRunner (local cluster, PortableRunner + job server, parallelism 2)",
            "overload_producer": {k: v for k, v in over.items() if k != "end"},
            "steady_producer": {k: v for k, v in steady.items() if k != "end"},
            "capacity": capacity(samples, sampler.began["overload"]), "drain_after_overload_s": round(drain_s, 1),
            "steady_max_lag_messages": max((s["lag_messages"] for s in samples if s["phase"] == "steady"), default=0),
            "latency_steady": alert_latency(lake, since=steady_from, until=steady_until),
            "latency_overload": alert_latency(lake, until=steady_from),
            "peak_taskmanager_mb": round(max(s["taskmanager_mb"] for s in samples)),
            "peak_python_worker_mb": round(max(s["python_worker_mb"] for s in samples)),
            "lag_over_time": [(s["t_s"], s["phase"], s["lag_messages"], s["landed"]) for s in samples[::5]],
            "samples_file": str(workdir / f"flink-{suffix}" / "samples.json")}


def read_messages(bootstrap: str, topic: str, limit: int):
    """The first `limit` messages of the topic, in partition/offset order interleaved by time."""
    from confluent_kafka import Consumer
    from transforms.decode import KafkaMessage
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"bench-read-{uuid.uuid4().hex}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    consumer.subscribe([topic])
    messages, idle = [], 0
    while len(messages) < limit and idle < 10:
        batch = consumer.consume(10000, timeout=1)
        idle = 0 if batch else idle + 1
        messages += [KafkaMessage(m.topic(), m.partition(), m.offset(), m.timestamp()[1], m.key(), m.value())
                     for m in batch if not m.error()]
    consumer.close()
    return sorted(messages[:limit], key=lambda m: (m.timestamp_ms, m.partition, m.offset))


def run_direct(args, workdir: Path) -> dict:
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
    from pipelines.streaming import FleetStreaming
    from tests.stream_fixture import as_test_stream
    suffix = uuid.uuid4().hex[:8]
    topic, lake = f"bench.readings.{suffix}", str(workdir / f"direct-{suffix}" / "lake")
    create_topic(args.bootstrap_servers, topic)
    start = dt.datetime.now(dt.timezone.utc).replace(microsecond=0) - dt.timedelta(hours=3)
    rate = min(args.overload_rate, 40000)
    produced = produce(args, lake, topic, "direct", start, rate, args.direct_readings / rate)
    messages = read_messages(args.bootstrap_servers, topic, produced["messages"])
    options = PipelineOptions(["--runner=DirectRunner"])
    options.view_as(StandardOptions).streaming = True
    p = beam.Pipeline(options=options)
    _ = (p | as_test_stream(messages, per_step=500)
         | FleetStreaming(lake, interval_s=args.commit_interval_s, shards=4, batch_messages=500))
    t0 = time.monotonic()
    p.run().wait_until_finish()
    seconds = time.monotonic() - t0
    landed = landed_rows(lake)
    return {"runner": "DirectRunner (streaming, TestStream over messages read from Kafka)",
            "messages": len(messages), "readings": produced["readings"], "landed": landed, "seconds": round(seconds, 1),
            "readings_per_s": round(landed / seconds), "latency": alert_latency(lake)}


# ---------------------------------------------------------------- report

GOAL_RATE, GOAL_P99_S = 233_000, 5.0


def table(result: dict) -> str:
    lines = [f"machine: {describe(result['machine'])}", f"fleet: {result['devices']} devices x 5 sensors every "
             f"{result['interval_s']:g} s; gateway batches of {result['batch_size']} readings, "
             f"{result['single_fraction']:.0%} of devices send single readings"]
    f = result.get("flink")
    if f:
        cap, st, ov = f["capacity"], f["latency_steady"], f["latency_overload"]
        lines += ["", f"{f['runner']}",
                  f"  {'producer, overload phase':<38} {f['overload_producer']['readings']:>10,} readings at "
                  f"{f['overload_producer']['readings_per_s']:>7,}/s",
                  f"  {'sustained landing rate (saturated)':<38} {cap['readings_per_s'] or 0:>10,} readings/s over "
                  f"{cap.get('over_s', 0)} s",
                  f"  {'backlog drained after producer stopped':<38} {f['drain_after_overload_s']:>10} s",
                  f"  {'producer, steady phase':<38} {f['steady_producer']['readings']:>10,} readings at "
                  f"{f['steady_producer']['readings_per_s']:>7,}/s; max lag {f['steady_max_lag_messages']} messages",
                  f"  {'alert latency, steady (p50/p99/max)':<38} {st['p50_s']} / {st['p99_s']} / {st['max_s']} s "
                  f"over {st['critical_alerts']} CRITICAL alerts",
                  f"  {'alert latency, overload (p50/p99/max)':<38} {ov['p50_s']} / {ov['p99_s']} / {ov['max_s']} s "
                  f"over {ov['critical_alerts']} CRITICAL alerts (queueing included)",
                  f"  {'peak memory':<38} TaskManager {f['peak_taskmanager_mb']} MB, Python worker "
                  f"{f['peak_python_worker_mb']} MB",
                  "  lag over time (t s, phase, messages behind, readings landed):",
                  *[f"    {t:7.1f} {ph:<9} {lag:>8,} {landed:>11,}" for t, ph, lag, landed in f["lag_over_time"]]]
    d = result.get("direct")
    if d:
        lines += ["", d["runner"], f"  {d['messages']:,} messages of {d['readings']:,} readings, {d['landed']:,} landed in {d['seconds']} s: "
                  f"{d['readings_per_s']:,} readings/s; {d['latency']['critical_alerts']} CRITICAL alerts"]
    lines += ["", "goals:"] + [f"  {g}" for g in result["goals"]]
    return "\n".join(lines)


def goals(result: dict) -> list[str]:
    f = result.get("flink")
    if not f:
        return ["(Flink not run)"]
    rate, p99 = f["capacity"]["readings_per_s"] or 0, f["latency_steady"]["p99_s"]
    return [f"{GOAL_RATE:,} readings/s: {'MET' if rate >= GOAL_RATE else 'NOT MET'} ({rate:,}/s, "
            f"{rate / GOAL_RATE:.1%} of the goal)",
            f"p99 alert latency < {GOAL_P99_S:g} s: {'MET' if p99 is not None and p99 < GOAL_P99_S else 'NOT MET'} "
            f"({p99} s at {f['steady_producer']['readings_per_s']:,} readings/s)"]


def main(argv=None) -> int:
    args = parse_args(argv)
    sys.path.insert(0, str(PROJECT_ROOT))
    from pipelines import cli
    cli.setup_logging("WARNING")
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    started_services = not services_running()
    if started_services:
        services("start")
    result = {"benchmark": "streaming", "machine": machine(), "devices": args.devices, "interval_s": args.interval,
              "batch_size": args.batch_size, "single_fraction": args.single_fraction}
    try:
        runners = args.runners.split(",")
        if "flink" in runners:
            print("==> Flink", flush=True)
            result["flink"] = run_flink(args, workdir)
        if "direct" in runners:
            print("==> DirectRunner", flush=True)
            result["direct"] = run_direct(args, workdir)
    finally:
        if started_services:
            services("stop")
    result["goals"] = goals(result)
    print("\n" + table(result))
    print(json.dumps(result, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
