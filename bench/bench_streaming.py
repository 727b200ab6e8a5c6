"""Streaming throughput and acute-alert latency at fleet scale: Kafka -> decode -> landing + dead
letters + alerts.

On the local Flink (scripts/services.sh; started here when not running, stopped again after), for
each fleet size of --fleet_sizes and each --parallelism, one streaming job on a fresh topic and lake,
its Python running in the SDK worker pool (EXTERNAL, one SDK worker per slot), as in run_local:
  0. warm     the lake gets --warm_hours of 15-minute vibration features per device, so the job's
              acute rules start with 24 h baselines (core.acute_warm) instead of empty state
  1. prefill  --prefill_readings readings of the whole fleet (gateway batches, --single_fraction
              single readings), produced to the topic BEFORE the job starts, so the producer is
              not the bottleneck; the job then drains the backlog: readings landed per second
              between its first landing commit and an empty lag is its capacity
  2. steady   the simulator streams at --steady_fraction of that capacity for --steady_s, with
              acute failures: alert latency p50/p99 (a CRITICAL alert's detected_at minus its
              reading's Kafka append time) at a rate the job sustains
Every --sample_s: consumer lag (end offsets - the group's committed offsets, which the landing
commits after each Delta commit), landed readings, resident memory of the TaskManager JVM and of
each SDK worker process.

On the DirectRunner: KafkaIO is a Java transform that needs a Java SDK environment (Docker) the
DirectRunner cannot start here, so the same graph after the read (pipelines.streaming.FleetStreaming)
runs over --direct_readings readings the simulator produced to a fresh topic, read back by a Python
consumer and fed in record-time order from a TestStream.

  python -m bench.bench_streaming --runners flink --fleet_sizes 1000,10000,100000 --parallelism 1,2
  python -m bench.bench_streaming --runners flink --devices 100000 --json
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import pstats
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
SEED = 7


def parse_args(argv=None) -> argparse.Namespace:
    class Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
        pass
    p = argparse.ArgumentParser(prog="python -m bench.bench_streaming", description=__doc__, formatter_class=Formatter)
    p.add_argument("--runners", default="flink,direct", help="comma-separated: flink, direct")
    p.add_argument("--devices", type=int, default=500,
                   help="simulated devices, when --fleet_sizes is not given")
    p.add_argument("--fleet_sizes", default=None,
                   help="comma-separated fleet sizes to measure one after the other, e.g. 1000,10000,100000")
    p.add_argument("--parallelism", default="2",
                   help="comma-separated Flink parallelisms (SDK workers) to measure for each fleet size, e.g. 1,2")
    p.add_argument("--prefill_readings", type=int, default=1_000_000,
                   help="readings produced to the topic before the job starts (whole ticks of the fleet)")
    p.add_argument("--warm_hours", type=float, default=24,
                   help="hours of 15-minute vibration features written per device before the job starts "
                        "(0: the job starts with empty rule state)")
    p.add_argument("--steady_fraction", type=float, default=0.8,
                   help="the steady phase's rate as a share of the capacity the prefill measured")
    p.add_argument("--json", action="store_true", help="end with one JSON line of the results (always printed)")
    p.add_argument("--interval", type=float, default=10, help="seconds between two readings of one sensor")
    p.add_argument("--batch_size", type=int, default=200, help="readings per gateway message")
    p.add_argument("--single_fraction", type=float, default=0.2,
                   help="share of devices that send each reading as its own message (the rest via gateways)")
    p.add_argument("--steady_s", type=float, default=120, help="wall seconds of the steady phase")
    p.add_argument("--commit_interval_s", type=float, default=5, help="landing interval of the job")
    p.add_argument("--direct_readings", type=int, default=100000, help="readings fed to the DirectRunner")
    p.add_argument("--sample_s", type=float, default=2, help="seconds between lag/memory samples")
    p.add_argument("--profile_sample_rate", type=float, default=0.0,
                   help="share of bundles each SDK worker profiles with cProfile (Beam's --profile_cpu); the report "
                        "then says where the Python time goes, per stage and per function (0: no profile; "
                        "profiling slows the job, so compare capacities of unprofiled runs)")
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
    return all(f"{name}: running" in status.stdout for name in ("kafka", "flink", "workers"))


def services(action: str) -> None:
    subprocess.run(["bash", "scripts/services.sh", action], cwd=PROJECT_ROOT, check=True)


def create_topic(bootstrap: str, topic: str, partitions: int = PARTITIONS) -> None:
    from confluent_kafka import KafkaError
    from confluent_kafka.admin import AdminClient, NewTopic
    from core.retry import kafka_error, retry
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
        from core.retry import retry

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


def pids(pattern: str) -> list[int]:
    """This checkout's processes matching `pattern`: their working directory is the project (services.sh
    starts them there), so a second stack on other ports (another checkout) is not counted."""
    def ours(pid: str) -> bool:
        try:
            return Path(os.readlink(f"/proc/{pid}/cwd")).is_relative_to(PROJECT_ROOT)
        except OSError:
            return False
    found = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True).stdout.split()
    return [int(p) for p in found if ours(p)]


def landed_rows(lake: str) -> int:
    from core import lake as lake_io
    table = lake_io.open_table(lake, "raw_sensor_readings")
    if table is None:
        return 0
    return int(sum(table.get_add_actions(flatten=True).column("num_records").to_pylist()))


class Sampler(threading.Thread):
    """Lag, landed readings and memory (TaskManager, each SDK worker) every `every_s` seconds."""

    def __init__(self, lake: str, offsets: Offsets, every_s: float):
        super().__init__(daemon=True)
        self.lake, self.offsets, self.every_s = lake, offsets, every_s
        self.samples: list[dict] = []
        self.phase, self.began = "start", {}
        self._halt = threading.Event()
        self._t0 = time.monotonic()

    def run(self) -> None:
        tm = (pids("TaskManagerRunner") or [None])[0]
        while not self._halt.wait(self.every_s):
            workers = [rss_mb(p) for p in pids("sdk_worker_main")]
            s = {"t_s": round(time.monotonic() - self._t0, 1), "phase": self.phase, "lag_messages": self.offsets.lag(),
                 "landed": landed_rows(self.lake), "taskmanager_mb": rss_mb(tm) if tm else 0.0,
                 "sdk_workers_mb": [round(w) for w in workers]}
            self.samples.append(s)
            if len(self.samples) % 5 == 1:
                print(f"    t={s['t_s']:6.1f}s {s['phase']:<8} landed {s['landed']:>10,}  lag {s['lag_messages']:>7,} msgs"
                      f"  TM {s['taskmanager_mb']:.0f} MB  SDK workers {s['sdk_workers_mb']} MB", flush=True)

    def begin(self, phase: str) -> None:
        self.phase, self.began[phase] = phase, round(time.monotonic() - self._t0, 1)

    def last(self) -> dict:
        return self.samples[-1] if self.samples else {"landed": 0, "lag_messages": -1}

    def stop(self) -> None:
        self._halt.set()
        self.join()


# ---------------------------------------------------------------- producing

def readings_per_second(devices: int, interval: float) -> float:
    from schemas.sensors import SENSOR_TYPES
    return devices * len(SENSOR_TYPES) / interval


def produce(args, devices: int, lake: str, topic: str, phase: str, start: dt.datetime, rate: float,
            wall_s: float, *extra: str) -> dict:
    """Runs the simulator's stream at `rate` for `wall_s`; returns what it reported."""
    sim_minutes = wall_s * rate / readings_per_second(devices, args.interval) / 60
    out = subprocess.run(
        [sys.executable, "-m", "pipelines.simulate", "--lake", lake, "--devices", str(devices), "--stream",
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


def write_registry(lake: str, devices: int, seed: int = SEED) -> list:
    from simulation.fleet import make_fleet, registry_table
    from core import lake as lake_io
    fleet = make_fleet(devices, seed)
    lake_io.overwrite(lake, "devices", registry_table(fleet))
    return fleet


def write_warm_features(lake: str, fleet: list, end: dt.datetime, hours: float) -> int:
    """`hours` of 15-minute vibration feature windows per device ending at `end` (mean 2 mm/s): the
    baselines the job's acute rules rebuild at start (core.acute_warm)."""
    import numpy as np
    import pyarrow as pa
    from core import lake as lake_io
    windows = int(hours * 4)
    if not windows:
        return 0
    schema = lake_io.TABLES["features"].schema
    ids = np.array([d.device_id for d in fleet], dtype=object)
    window_us = 900 * 10**6
    end_us = int(end.timestamp()) // 900 * window_us
    for first in range(0, windows, 16):             # 16 windows of the whole fleet per commit
        starts = end_us - window_us * (1 + np.arange(first, min(windows, first + 16)))
        start_us = np.repeat(starts, len(ids))
        n = len(start_us)
        given = {"device_id": pa.array(np.tile(ids, len(starts)), pa.string()), "window_size": pa.array(["15m"] * n),
                 "window_start": pa.array(start_us, pa.timestamp("us", "UTC")),
                 "window_end": pa.array(start_us + window_us, pa.timestamp("us", "UTC")),
                 "vibration_mean": pa.array(np.full(n, 2.0)), "vibration_count": pa.array(np.full(n, 90)),
                 "computed_at": pa.array(start_us + window_us, pa.timestamp("us", "UTC")),
                 "date": pa.array(start_us // 86_400_000_000, pa.int32()).cast(pa.date32())}
        lake_io.append(lake, "features", pa.table({f.name: given.get(f.name, pa.nulls(n, f.type)) for f in schema}))
    return windows * len(ids)


class Ticks:
    """The fleet's readings tick by tick (no incidents), as Kafka messages produced as fast as Kafka
    takes them or paced to a rate. `surge` ticks carry acute failures on two devices with canonical
    units (a current spike over two ticks and a vibration surge): the alerts whose latency counts."""

    def __init__(self, args, fleet: list, topic: str):
        from confluent_kafka import Producer
        from simulation.stream import StreamConfig
        self.args, self.fleet, self.topic = args, fleet, topic
        self.cfg = StreamConfig(batch_size=args.batch_size, single_fraction=args.single_fraction,
                                interval_s=args.interval)
        self.by_id = {d.device_id: d for d in fleet}
        self.plain = [d for d in fleet if not d.units]
        self.producer = Producer({"bootstrap.servers": args.bootstrap_servers, "linger.ms": 20,
                                  "batch.size": 1_000_000, "queue.buffering.max.kbytes": 1_000_000,
                                  "message.max.bytes": 2_000_000, "enable.idempotence": True})
        self.messages = self.readings = self.surges = 0

    def produce(self, start: dt.datetime, ticks: int, rate: float | None = None, surge: bool = False) -> dict:
        from simulation import generator
        from simulation.stream import messages_for
        step = dt.timedelta(seconds=self.args.interval)
        t0, produced0 = time.monotonic(), self.readings
        for k in range(ticks):
            t = start + k * step
            chunk = generator.readings(self.fleet, t, t + step, self.args.interval, [], SEED)
            if surge:
                chunk = self._with_failures(chunk, k)
            for key, body, _ts_ms, ids in messages_for(chunk, self.by_id, self.cfg):
                self._send(key, body)
                self.messages, self.readings = self.messages + 1, self.readings + len(ids)
            self.producer.poll(0)
            if rate:                            # paced: no faster than `rate` readings/s on average
                ahead = (self.readings - produced0) / rate - (time.monotonic() - t0)
                if ahead > 0:
                    time.sleep(ahead)
        if self.producer.flush(120):
            raise SystemExit("messages still undelivered after 120 s")
        seconds = time.monotonic() - t0
        return {"readings": self.readings - produced0, "ticks": ticks, "seconds": round(seconds, 1),
                "readings_per_s": round((self.readings - produced0) / seconds),
                "end": start + ticks * step}

    def _send(self, key: str, body: bytes) -> None:
        while True:
            try:
                self.producer.produce(self.topic, body, key=key)
                return
            except BufferError:             # the local queue is full: let it drain
                self.producer.poll(0.05)

    def _with_failures(self, chunk, k: int):
        import numpy as np
        import pyarrow as pa
        import pyarrow.compute as pc
        pair = self.plain[(k // 2 * 2) % len(self.plain):][:2]        # the same two devices for two ticks
        value = np.asarray(chunk["value"], np.float64).copy()
        device = chunk["device_id"]
        sensor = chunk["sensor_type"]
        for d in pair:
            mine = pc.equal(device, d.device_id)
            current = np.asarray(pc.and_(mine, pc.equal(sensor, "compressor_current")))
            value[current] = 3.0 * d.rated_current_a
            if k % 2:
                value[np.asarray(pc.and_(mine, pc.equal(sensor, "vibration")))] = 40.0
        self.surges += len(pair)
        return chunk.set_column(chunk.column_names.index("value"), "value", pa.array(value))


def accepted_readings(lake: str, phase: str) -> int:
    """Readings of a simulator phase the contract accepts (its ground truth's produced kinds)."""
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

def capacity(samples: list[dict]) -> dict:
    """Readings landed per second from the job's first landing commit until the prefilled backlog
    was gone: the rate a saturated job sustains (warm-up before the first commit excluded)."""
    first = next((s for s in samples if s["landed"] > 0), None)
    drained = next((s for s in samples if s["phase"] == "drain" and s["lag_messages"] == 0), None)
    if first is None or drained is None or drained["t_s"] <= first["t_s"]:
        return {"readings_per_s": None}
    seconds = drained["t_s"] - first["t_s"]
    readings = drained["landed"] - first["landed"]
    return {"readings_per_s": round(readings / seconds), "over_s": round(seconds, 1), "readings": readings,
            "first_commit_after_s": first["t_s"]}


def alert_latency(lake: str, since: dt.datetime | None = None, until: dt.datetime | None = None) -> dict:
    import polars as pl
    from pipelines.reporting.checks import KEY, acute_latency
    from core import lake as lake_io
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

def job_args(args, lake: str, topic: str, group: str, parallelism: int) -> list[str]:
    """The streaming job as run_local runs it: Python in the SDK worker pool, one worker per slot."""
    return ["--lake", lake, "--topic", topic, "--alerts_topic", f"{topic}.alerts", "--consumer_group", group,
            f"--job_name={group}", "--bootstrap_servers", args.bootstrap_servers,
            "--commit_interval_s", str(args.commit_interval_s), "--runner=PortableRunner",
            f"--job_endpoint={args.job_endpoint}", "--environment_type=EXTERNAL",
            f"--environment_config=127.0.0.1:{os.environ.get('SDK_WORKER_POOL_PORT', '50000')}",
            f"--expansion_service=127.0.0.1:{os.environ.get('KAFKA_EXPANSION_PORT', '8096')}",
            f"--sdk_worker_parallelism={parallelism}", "--default_environment_type=EMBEDDED",
            "--max_bundle_time_mills=100", "--checkpointing_interval=30000", f"--parallelism={parallelism}"]


def run_flink(args, workdir: Path, devices: int, parallelism: int) -> dict:
    from tests.integration import flink_jobs
    suffix = uuid.uuid4().hex[:8]
    run_dir = workdir / f"flink-{devices}-p{parallelism}-{suffix}"
    topic, group, lake = f"bench.readings.{suffix}", f"bench-{suffix}", str(run_dir / "lake")
    create_topic(args.bootstrap_servers, topic)
    create_topic(args.bootstrap_servers, f"{topic}.alerts", partitions=1)
    log = run_dir / "streaming.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    others = [j["jid"] for j in flink_jobs.jobs("RUNNING")]
    if others:
        raise SystemExit(f"{len(others)} other job(s) running on the Flink cluster ({', '.join(others)}): they would "
                         f"share the CPU; cancel them first (flink_rest {args.flink_rest})")
    now = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    fleet = write_registry(lake, devices)          # before the job: its workers read it
    w0 = time.monotonic()
    warm_windows = write_warm_features(lake, fleet, now - dt.timedelta(minutes=30), args.warm_hours)
    print(f"  {devices:,} devices, parallelism {parallelism}: {warm_windows:,} feature windows written in "
          f"{time.monotonic() - w0:.0f} s; prefilling the topic", flush=True)
    ticks = Ticks(args, fleet, topic)
    n_ticks = max(1, round(args.prefill_readings / readings_per_second(devices, 1)))
    filled = ticks.produce(now - n_ticks * dt.timedelta(seconds=args.interval), n_ticks)
    filled["messages"] = ticks.messages
    del filled["end"]
    print(f"  prefilled {filled['readings']:,} readings in {filled['messages']:,} messages in {filled['seconds']} s "
          f"({filled['readings_per_s']:,}/s); starting the job", flush=True)
    known = {j["jid"] for j in flink_jobs.jobs()}
    profiling = [] if not args.profile_sample_rate else [
        "--profile_cpu", f"--profile_location={run_dir / 'profile'}", f"--profile_sample_rate={args.profile_sample_rate}"]
    job = flink_jobs.start("pipelines.streaming", job_args(args, lake, topic, group, parallelism) + profiling, log)
    jid = None
    offsets = Offsets(args.bootstrap_servers, topic, group)
    sampler = Sampler(lake, offsets, args.sample_s)
    try:
        jid = flink_jobs.wait_for_running_job(known, timeout_s=180)
        sampler.start()
        sampler.begin("drain")
        drain_s = wait_for(sampler, filled["readings"], timeout_s=3600)
        cap = capacity(sampler.samples)
        rate = max(1000.0, args.steady_fraction * (cap["readings_per_s"] or 1000))
        print(f"  drained in {drain_s:.0f} s: {cap['readings_per_s'] or 0:,} readings/s; steady phase at {rate:,.0f}/s",
              flush=True)
        steady_from = dt.datetime.now(dt.timezone.utc)
        sampler.begin("steady")
        steady_ticks = max(2, round(args.steady_s * rate / readings_per_second(devices, 1)))
        steady = ticks.produce(now, steady_ticks, rate=rate, surge=True)
        steady_until = dt.datetime.now(dt.timezone.utc)
        sampler.begin("tail")
        wait_for(sampler, filled["readings"] + steady["readings"], timeout_s=900)
        time.sleep(2 * args.commit_interval_s)      # the alerts of the last interval
    finally:
        try:
            sampler.stop()
            offsets.close()
        finally:
            flink_jobs.stop(job, jid)
    samples = sampler.samples
    (run_dir / "samples.json").write_text(json.dumps(samples, default=str))
    latency = alert_latency(lake, since=steady_from, until=steady_until)
    return {"devices": devices, "parallelism": parallelism, "prefill": filled, "warm_feature_windows": warm_windows,
            "capacity": cap, "drain_s": round(drain_s, 1),
            "steady_producer": {k: v for k, v in steady.items() if k != "end"}, "surged_devices": ticks.surges,
            "steady_max_lag_messages": max((s["lag_messages"] for s in samples if s["phase"] == "steady"), default=0),
            "latency_steady": latency,
            "peak_taskmanager_mb": round(max(s["taskmanager_mb"] for s in samples)),
            "peak_sdk_worker_mb": max((max(s["sdk_workers_mb"], default=0) for s in samples), default=0),
            "sdk_workers": max(len(s["sdk_workers_mb"]) for s in samples),
            "profile": profile_summary(run_dir / "profile" / "cpu_profile"),
            "samples_file": str(run_dir / "samples.json")}


# Where a profiled bundle's time goes: the project's stage functions (cumulative, so a stage counts
# what it calls) and the functions with the most time of their own.
STAGES = {"decode": "transforms/decode.py", "landing": "transforms/landing.py", "acute rules": "transforms/acute.py"}


def profile_summary(cpu_dir: Path, top: int = 12) -> dict | None:
    files = [str(f) for f in sorted(cpu_dir.glob("*")) if not f.name.endswith(".tmp")] if cpu_dir.is_dir() else []
    if not files:
        return None
    stats = pstats.Stats(files[0])
    for f in files[1:]:
        stats.add(f)
    total = sum(tt for _, _, tt, _, _ in stats.stats.values()) or 1e-9
    stage_s = Counter()
    for (path, _, name), (_, _, _, ct, callers) in stats.stats.items():
        for stage, suffix in STAGES.items():
            # a stage's entry points: its functions called from outside the stage's module
            if path.endswith(suffix) and not any(c[0].endswith(suffix) for c in callers):
                stage_s[stage] += ct
    own = sorted(stats.stats.items(), key=lambda kv: -kv[1][2])[:top]
    return {"bundles": len(files), "profiled_s": round(total, 1),
            "stage_share": {k: round(v / total, 3) for k, v in stage_s.most_common()},
            "top_own_time": [{"function": name if path == "~" else f"{Path(path).parent.name}/{Path(path).name}:{line}({name})",
                              "share": round(tt / total, 3), "calls": nc}
                             for (path, line, name), (_, nc, tt, _, _) in own]}


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
    rate = 40000.0
    write_registry(lake, args.devices)
    produced = produce(args, args.devices, lake, topic, "direct", start, rate, args.direct_readings / rate)
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

GOAL_RATE, GOAL_P99_S, GOAL_COST_RATIO = 233_000, 5.0, 1.5


def table(result: dict) -> str:
    lines = [f"machine: {describe(result['machine'])}",
             f"readings every {result['interval_s']:g} s per sensor; gateway batches of {result['batch_size']} "
             f"readings, {result['single_fraction']:.0%} of devices send single readings"]
    runs = result.get("flink") or []
    if runs:
        lines += ["", "FlinkRunner (local cluster, PortableRunner + job server; Python in the SDK worker pool)",
                  f"  {'devices':>8} {'par':>3} {'prefill/s':>10} {'capacity/s':>11} {'steady/s':>9} "
                  f"{'p50 s':>6} {'p99 s':>6} {'alerts':>6} {'TM MB':>6} {'SDK MB':>7}"]
        for r in runs:
            st = r["latency_steady"]
            lines.append(f"  {r['devices']:>8,} {r['parallelism']:>3} {r['prefill']['readings_per_s']:>10,} "
                         f"{r['capacity']['readings_per_s'] or 0:>11,} {r['steady_producer']['readings_per_s']:>9,} "
                         f"{st['p50_s'] if st['p50_s'] is not None else '-':>6} "
                         f"{st['p99_s'] if st['p99_s'] is not None else '-':>6} {st['critical_alerts']:>6} "
                         f"{r['peak_taskmanager_mb']:>6} {r['peak_sdk_worker_mb']:>7}")
        for r in runs:
            if r.get("profile"):
                lines += profile_lines(r)
    d = result.get("direct")
    if d:
        lines += ["", d["runner"], f"  {d['messages']:,} messages of {d['readings']:,} readings, {d['landed']:,} landed in {d['seconds']} s: "
                  f"{d['readings_per_s']:,} readings/s; {d['latency']['critical_alerts']} CRITICAL alerts"]
    lines += ["", "goals:"] + [f"  {g}" for g in result["goals"]]
    return "\n".join(lines)


def profile_lines(r: dict) -> list[str]:
    prof = r["profile"]
    stages = ", ".join(f"{k} {v:.0%}" for k, v in prof["stage_share"].items())
    lines = ["", f"  profile of {r['devices']:,} devices, parallelism {r['parallelism']}: {prof['bundles']:,} bundles, "
                 f"{prof['profiled_s']} s of Python; stages (cumulative): {stages}", "  own time:"]
    return lines + [f"    {f['share']:>6.1%} {f['calls']:>10,}  {f['function']}" for f in prof["top_own_time"]]


def _met(ok: bool) -> str:
    return "MET" if ok else "NOT MET"


def goals(result: dict) -> list[str]:
    runs = result.get("flink") or []
    if not runs:
        return ["(Flink not run)"]
    largest = max(runs, key=lambda r: (r["devices"], r["capacity"]["readings_per_s"] or 0))
    rate, p99 = largest["capacity"]["readings_per_s"] or 0, largest["latency_steady"]["p99_s"]
    out = [f"{GOAL_RATE:,} readings/s at {largest['devices']:,} devices: {_met(rate >= GOAL_RATE)} ({rate:,}/s, "
           f"{rate / GOAL_RATE:.1%} of the goal)",
           f"p99 alert latency < {GOAL_P99_S:g} s at {result['steady_fraction']:.0%} of capacity: "
           f"{_met(p99 is not None and p99 < GOAL_P99_S)} ({p99} s)"]
    same_par = [r for r in runs if r["parallelism"] == largest["parallelism"]]
    small = min(same_par, key=lambda r: r["devices"])
    if small["devices"] < largest["devices"] and small["capacity"]["readings_per_s"] and rate:
        ratio = small["capacity"]["readings_per_s"] / rate
        out.append(f"cost per reading at {largest['devices']:,} devices <= {GOAL_COST_RATIO}x that at "
                   f"{small['devices']:,}: {_met(ratio <= GOAL_COST_RATIO)} ({ratio:.2f}x)")
    return out


def summary(result: dict) -> dict:
    """The last JSON line's headline figures: the largest fleet's run at the highest parallelism."""
    runs = result.get("flink") or []
    if not runs:
        return {}
    top = max(runs, key=lambda r: (r["devices"], r["parallelism"]))
    return {"devices": top["devices"], "parallelism": top["parallelism"],
            "readings_per_s": top["capacity"]["readings_per_s"],
            "p99_alert_latency_s": top["latency_steady"]["p99_s"],
            "peak_rss_mb": {"taskmanager": top["peak_taskmanager_mb"], "sdk_worker": top["peak_sdk_worker_mb"]}}


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
    result = {"benchmark": "streaming", "machine": machine(), "interval_s": args.interval,
              "batch_size": args.batch_size, "single_fraction": args.single_fraction,
              "steady_fraction": args.steady_fraction}
    sizes = [int(x) for x in (args.fleet_sizes or str(args.devices)).split(",")]
    parallelisms = [int(x) for x in args.parallelism.split(",")]
    try:
        runners = args.runners.split(",")
        if "flink" in runners:
            result["flink"] = []
            for devices in sizes:
                for parallelism in parallelisms:
                    print(f"==> Flink, {devices:,} devices, parallelism {parallelism}", flush=True)
                    result["flink"].append(run_flink(args, workdir, devices, parallelism))
        if "direct" in runners:
            print("==> DirectRunner", flush=True)
            result["direct"] = run_direct(args, workdir)
    finally:
        if started_services:
            services("stop")
    result["goals"] = goals(result)
    result.update(summary(result))
    print("\n" + table(result))
    print(json.dumps(result, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
