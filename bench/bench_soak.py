"""Soak run of the streaming job: memory over a long run at a steady rate with hostile messages.

On the local Flink (scripts/services.sh start), one streaming job on a fresh topic and lake while the
simulator produces --rate readings/s (about half the job's capacity: see bench.bench_streaming) for
--minutes, in segments of --segment_s, each with wire-fault messages making up --hostile_fraction of
its messages (bad JSON, missing fields, wrong types, non-finite values, oversized readings, batches
and messages, ...). Every --sample_s: resident memory of the TaskManager JVM and of every Python SDK
worker process of the worker pool (EXTERNAL environment, as run_local runs the job), the consumer
lag and the landed readings.

Reported: the RSS slope (MB/hour, least squares after --warmup_minutes) per process, the lag at the
end, and that readings in = landed + dead-lettered. Beam Python SDK 2.67-2.75 leaks memory when
bundles fail repeatedly (apache/beam#39406, fixed in 2.76): a hostile message must be a dead letter,
never a failed bundle, so a flat slope says this pipeline does not trigger it. Not part of CI.

  python -m bench.bench_soak                         # 30 minutes at 3,000 readings/s
  python -m bench.bench_soak --minutes 5 --rate 2000  # a short check
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import subprocess
import time
import uuid
from pathlib import Path

import numpy as np

from bench.bench_streaming import (Offsets, accepted_readings, create_topic, job_args, landed_rows, pids, produce,
                                   readings_per_second, rss_mb, write_registry)
from bench.machine import describe, machine

WIRE_FAULT_TYPES = 9      # simulation.incidents.WIRE_FAULTS


def parse_args(argv=None) -> argparse.Namespace:
    class Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
        pass
    p = argparse.ArgumentParser(prog="python -m bench.bench_soak", description=__doc__, formatter_class=Formatter)
    p.add_argument("--minutes", type=float, default=30, help="wall minutes of producing")
    p.add_argument("--rate", type=float, default=3000, help="readings/s (about half the measured capacity)")
    p.add_argument("--hostile_fraction", type=float, default=0.01, help="share of messages that are wire faults")
    p.add_argument("--segment_s", type=float, default=60, help="wall seconds per producer segment")
    p.add_argument("--warmup_minutes", type=float, default=5, help="left out of the memory slope")
    p.add_argument("--devices", type=int, default=500, help="simulated devices")
    p.add_argument("--interval", type=float, default=10, help="seconds between two readings of one sensor")
    p.add_argument("--batch_size", type=int, default=200, help="readings per gateway message")
    p.add_argument("--single_fraction", type=float, default=0.2, help="share of devices sending single readings")
    p.add_argument("--sample_s", type=float, default=10, help="seconds between samples")
    p.add_argument("--commit_interval_s", type=float, default=10, help="landing interval of the job")
    p.add_argument("--workdir", default="/tmp/bench_soak", help="lake, logs and samples of the run")
    p.add_argument("--bootstrap_servers", default="127.0.0.1:9092", help="Kafka")
    p.add_argument("--job_endpoint", default=f"127.0.0.1:{os.environ.get('JOB_SERVER_PORT', '8099')}",
                   help="Beam job server of the local Flink")
    p.add_argument("--json", action="store_true", help="print only the JSON line at the end")
    return p.parse_args(argv)


def slope_mb_per_h(points: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of (seconds, MB) in MB per hour."""
    if len(points) < 3:
        return None
    t, mb = np.array(points).T
    return round(float(np.polyfit(t / 3600, mb, 1)[0]), 1)


def hostile_per_type(args) -> int:
    messages_per_reading = args.single_fraction + (1 - args.single_fraction) / args.batch_size
    messages = args.rate * args.segment_s * messages_per_reading
    return max(1, math.ceil(args.hostile_fraction * messages / WIRE_FAULT_TYPES))


def sample(t0: float, lake: str, offsets: Offsets) -> dict:
    tm = (pids("TaskManagerRunner") or [None])[0]
    return {"t_s": round(time.monotonic() - t0, 1), "landed": landed_rows(lake), "lag": offsets.lag(),
            "taskmanager_mb": rss_mb(tm) if tm else 0.0,
            "workers_mb": {str(p): rss_mb(p) for p in sorted(pids("sdk_worker_main"))}}


def run(args) -> dict:
    from tests.integration import flink_jobs
    suffix = uuid.uuid4().hex[:8]
    work = Path(args.workdir) / suffix
    lake, topic, group = str(work / "lake"), f"soak.readings.{suffix}", f"soak-{suffix}"
    create_topic(args.bootstrap_servers, topic)
    create_topic(args.bootstrap_servers, f"{topic}.alerts", partitions=1)
    work.mkdir(parents=True, exist_ok=True)
    write_registry(lake, args.devices)
    known = {j["jid"] for j in flink_jobs.jobs()}
    job = flink_jobs.start("pipelines.streaming", job_args(args, lake, topic, group, parallelism=2),
                           work / "streaming.log")
    jid, samples, produced, t0 = None, [], [], time.monotonic()
    offsets = Offsets(args.bootstrap_servers, topic, group)
    segments = max(1, round(args.minutes * 60 / args.segment_s))
    start = (dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
             - dt.timedelta(seconds=segments * args.segment_s * args.rate
                            / readings_per_second(args.devices, args.interval) + 60))
    try:
        jid = flink_jobs.wait_for_running_job(known, timeout_s=180)
        for n in range(segments):
            seg = produce(args, args.devices, lake, topic, f"seg{n:03d}", start, args.rate, args.segment_s,
                          "--wire_faults", str(hostile_per_type(args)), "--seed", str(n + 1))
            start = seg["end"]
            produced.append(seg)
            samples.append(sample(t0, lake, offsets))
            s = samples[-1]
            if not args.json:
                print(f"  {n + 1:>3}/{segments} t={s['t_s']:7.1f}s landed {s['landed']:>10,} lag {s['lag']:>6,}"
                      f"  TM {s['taskmanager_mb']:.0f} MB  workers "
                      + " ".join(f"{mb:.0f}" for mb in s["workers_mb"].values()) + " MB", flush=True)
        expected = sum(accepted_readings(lake, f"seg{n:03d}") for n in range(segments))
        deadline = time.monotonic() + 600
        while landed_rows(lake) < expected and time.monotonic() < deadline:
            time.sleep(2)
    finally:
        offsets.close()
        flink_jobs.stop(job, jid)
    (work / "samples.json").write_text(json.dumps(samples))
    return summarise(args, samples, produced, expected, lake)


def summarise(args, samples: list[dict], produced: list[dict], expected: int, lake: str) -> dict:
    from core import lake as lake_io
    warm = [s for s in samples if s["t_s"] >= args.warmup_minutes * 60]
    workers = sorted({p for s in warm for p in s["workers_mb"]})
    dead = lake_io.read(lake, "deadletter", columns=["reason"]).num_rows
    return {
        "minutes": args.minutes, "rate": args.rate, "environment": "EXTERNAL (SDK worker pool)",
        "produced_readings": sum(p["readings"] for p in produced), "produced_messages": sum(p["messages"] for p in produced),
        "accepted_readings": expected, "landed": landed_rows(lake), "deadletter_rows": dead,
        "max_lag": max((s["lag"] for s in samples), default=0), "final_lag": samples[-1]["lag"] if samples else None,
        "taskmanager_mb": [round(samples[0]["taskmanager_mb"]), round(samples[-1]["taskmanager_mb"])] if samples else None,
        "taskmanager_slope_mb_per_h": slope_mb_per_h([(s["t_s"], s["taskmanager_mb"]) for s in warm]),
        "worker_slopes_mb_per_h": {p: slope_mb_per_h([(s["t_s"], s["workers_mb"][p]) for s in warm
                                                      if p in s["workers_mb"]]) for p in workers},
        "worker_peak_mb": {p: round(max(s["workers_mb"].get(p, 0) for s in samples)) for p in workers},
    }


def main(argv=None) -> int:
    args = parse_args(argv)
    if not args.json:
        print(describe(machine()))
        print(f"soak: {args.minutes:g} min at {args.rate:,.0f} readings/s, {args.hostile_fraction:.0%} hostile "
              f"messages ({hostile_per_type(args)} per fault type per {args.segment_s:g} s segment), "
              f"SDK workers in the worker pool", flush=True)
    result = run(args)
    if not args.json:
        for k, v in result.items():
            print(f"  {k:<28} {v}")
    print(json.dumps(result, sort_keys=True))
    return 0 if result["landed"] >= result["accepted_readings"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
