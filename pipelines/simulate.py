"""Fleet simulator (DESIGN section 6).

Writes the device registry, backfills history straight into the landing table (Delta, one commit
per simulated day) and the cold archive (Parquet), and/or streams live readings into Kafka at a
given pace, as single readings and gateway batches. It injects labelled failure modes (acute,
gradual) and data faults, and writes the ground truth to a separate JSON Lines file. The same
--seed gives the same registry, readings, messages and ground truth, also on another day: the simulated
clock ends at a fixed ``--end`` (default DEFAULT_END, not the wall clock), since the readings' noise
and daily cycles depend on absolute time. A live stream runs on the wall clock by default (its
readings carry times just before they arrive, as a real fleet's do); ``--stream-start end``
continues right after the history instead, so that the live readings are the same on every day too.

examples:
  # 200 devices, 14 days of history at one reading per sensor per minute
  python -m pipelines.simulate --devices 200 --backfill_days 14 --interval 60
  # then 30 simulated minutes of live readings, 60x faster than real time
  python -m pipelines.simulate --devices 200 --stream --stream_minutes 30 --acceleration 60
  # sensors as real ones report (pulsation, accelerometer RMS, quantised) at 1 s, plus 7 test-bench runs
  python -m pipelines.simulate --devices 10 --backfill_days 0.25 --interval 1 --sensor_profile realistic --test_bench 7
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import logging
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pipelines import cli
from pipelines.options import KafkaOptions, LakeOptions, declare
from simulation import DEFAULT_END
from simulation import fleet as fleet_mod
from simulation.backfill import backfill
from simulation.incidents import (ACUTE_MODES, DATA_FAULTS, GRADUAL_MODES, WIRE_FAULTS, PlanConfig,
                                            plan_incidents, unknown_devices)
from simulation.profiles import PROFILES
from simulation.stream import StreamConfig, stream
from simulation.testbench import BENCH_MODES, TAIL, bench_devices, failure_length, plan_bench
from schemas.sensors import SENSOR_TYPES
from core import lake

log = logging.getLogger("simulate")
UTC = dt.timezone.utc


def _wall_now() -> dt.datetime:
    return dt.datetime.now(UTC)


def _end_arg(text: str) -> dt.datetime:
    """--end: an ISO date/time (UTC), or ``today`` (00:00 UTC of the wall clock's day)."""
    if text == "today":
        return _wall_now().replace(hour=0, minute=0, second=0, microsecond=0)
    return cli.utc_datetime(text)


def _stream_start_arg(text: str) -> dt.datetime | str:
    return text if text == "end" else cli.utc_datetime(text)


def stream_start(requested: dt.datetime | str | None, history_end: dt.datetime, sim_seconds: float,
                 wall_seconds: float) -> dt.datetime:
    """The live stream's simulated start: as given; ``end``: the history's end; default: so that the
    simulated clock reaches the wall clock as the stream ends (readings never arrive before their time)."""
    if requested == "end":
        return history_end
    if requested is not None:
        return requested
    return _wall_now().replace(microsecond=0) - dt.timedelta(seconds=sim_seconds - wall_seconds)


def arg_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m pipelines.simulate", description=__doc__,
                                formatter_class=cli.HelpFormatter)
    g = p.add_argument_group("fleet")
    declare(g, LakeOptions)
    g.add_argument("--devices", type=int, default=200, help="number of registered devices")
    g.add_argument("--devices_per_site", type=int, default=10, help="devices behind one gateway")
    g.add_argument("--seed", type=int, default=7, help="random seed: same seed, same output")
    g.add_argument("--interval", type=float, default=60.0,
                   help="seconds between two readings of one sensor (simulated time); down to 1 (1 s sampling)")
    g.add_argument("--sensor_profile", choices=sorted(PROFILES), default="ideal",
                   help="how the sensors report: 'ideal' (smooth gaussian noise, unquantised; the default and "
                        "the output of earlier versions) or 'realistic' (pump pulsation on suction and discharge "
                        "pressure, vibration as the RMS of an accelerometer burst, every value quantised to its "
                        "sensor type's resolution in the canonical unit)")
    g.add_argument("--registry_only", action="store_true",
                   help="write the device registry and stop (e.g. before starting the streaming job)")
    g.add_argument("--ground_truth", default=None,
                   help="ground-truth JSON Lines file (default: <lake>/../ground_truth/<mode>.jsonl)")

    g = p.add_argument_group("backfill (history straight into the lake)")
    g.add_argument("--backfill_days", type=float, default=0, help="days of history to write (0: none)")
    g.add_argument("--end", "--backfill_end", dest="backfill_end", type=_end_arg, default=DEFAULT_END,
                   help="end of the simulated history, UTC; fixed by default so that the data does not depend on "
                        "the day of the run ('today': 00:00 UTC of the wall clock's day)")
    g.add_argument("--archive_days", type=float, default=0,
                   help="the oldest days of the history go to the Parquet archive instead of landing")
    g.add_argument("--test_bench", type=int, default=0,
                   help="extra short-lived test-bench devices (TB-0000, ...; registered, site bench-0000), each "
                        "reporting for a few hours inside the history with exactly one failure, the modes cycling "
                        f"through {', '.join(BENCH_MODES)}; recorded in the ground truth (detail.test_bench)")

    g = p.add_argument_group("stream (live readings into Kafka)")
    g.add_argument("--stream", action="store_true", help="produce live readings to Kafka")
    declare(p, KafkaOptions)          # its own group: kafka
    g.add_argument("--stream_start", type=_stream_start_arg, default=None,
                   help="simulated start time, UTC, or 'end': right after the history (--end), the same on "
                        "every day (default: so that the simulated clock reaches the wall clock as the stream "
                        "ends: readings never arrive before their own time)")
    g.add_argument("--stream_minutes", type=float, default=10.0, help="simulated minutes to produce")
    g.add_argument("--acceleration", type=float, default=StreamConfig.acceleration,
                   help="simulated seconds per wall-clock second (0: as fast as possible)")
    g.add_argument("--rate", type=float, default=None,
                   help="target readings/s; sets --acceleration from the fleet size and --interval")
    g.add_argument("--batch_size", type=int, default=StreamConfig.batch_size,
                   help="readings per gateway batch message (max 1000)")
    g.add_argument("--single_fraction", type=float, default=StreamConfig.single_fraction,
                   help="share of devices sending single-reading messages instead of gateway batches")
    g.add_argument("--wire_faults", type=int, default=1,
                   help=f"messages per wire fault type to inject ({', '.join(WIRE_FAULTS)})")

    g = p.add_argument_group("injected incidents")
    g.add_argument("--acute_fraction", type=float, default=PlanConfig.acute_fraction,
                   help=f"share of devices per acute mode ({', '.join(ACUTE_MODES)}), at least 1 each")
    g.add_argument("--gradual_fraction", type=float, default=PlanConfig.gradual_fraction,
                   help=f"share of devices per gradual mode ({', '.join(GRADUAL_MODES)}); spans >= 1 day")
    g.add_argument("--fault_fraction", type=float, default=PlanConfig.fault_fraction,
                   help="share of devices per data fault")
    g.add_argument("--unknown_devices", type=int, default=PlanConfig.unknown_devices,
                   help="unregistered devices that send readings")
    g.add_argument("--inactive_fraction", type=float, default=0.02, help="share of devices marked inactive")
    g.add_argument("--mixed_unit_fraction", type=float, default=0.1,
                   help="share of devices reporting in non-canonical units")
    g.add_argument("--no_incidents", action="store_true", help="a healthy fleet with clean data")
    g.add_argument("--acute_modes", default=",".join(PlanConfig.acute_modes), help="acute modes to inject (comma list)")
    g.add_argument("--warmup_minutes", type=float, default=PlanConfig.warmup / dt.timedelta(minutes=1),
                   help="no failure starts earlier in the span: the vibration rule needs an hour of history; "
                        "lower it when the consumer already saw the devices (and leave out vibration_surge)")
    g.add_argument("--data_faults", default=",".join(PlanConfig.data_faults),
                   help=f"data faults to inject (comma list of {', '.join(DATA_FAULTS)})")
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = arg_parser()
    args = p.parse_args(argv)
    if not args.backfill_days and not args.stream and not args.registry_only:
        p.error("nothing to do: give --backfill_days N and/or --stream (or --registry_only)")
    if args.test_bench < 0 or (args.test_bench and not args.backfill_days):
        p.error("--test_bench needs a history (--backfill_days) to put the bench runs in, and N >= 0")
    if args.test_bench:
        need = max(failure_length(m) for m in BENCH_MODES[:args.test_bench]) + TAIL \
            + dt.timedelta(minutes=args.warmup_minutes)
        if dt.timedelta(days=args.backfill_days) < need:
            p.error(f"--test_bench: a bench run needs {need} of history, --backfill_days gives less")
    if not 1 <= args.batch_size <= 1000:
        p.error("--batch_size must be between 1 and 1000 (the contract's batch limit)")
    return args


def _csv(text: str) -> tuple[str, ...]:
    return tuple(x for x in text.split(",") if x)


def write_registry(lake_root: str, registry: pa.Table) -> None:
    current = lake.read(lake_root, "devices")
    if current.num_rows and current.sort_by("device_id").equals(registry.sort_by("device_id")):
        log.info("registry unchanged (%d devices)", registry.num_rows)
        return
    version = lake.overwrite(lake_root, "devices", registry)
    log.info("registry written: %d devices, %d inactive (registry/devices v%d)",
             registry.num_rows, registry.num_rows - sum(registry["active"].to_pylist()), version)


def write_ground_truth(path: Path, incidents) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = sorted((i.to_json() for i in incidents), key=lambda r: (r["start"], r["device_id"], r["mode"]))
    with path.open("w") as f:
        for r in rows:
            f.write(json.dumps(r, sort_keys=True) + "\n")
    log.info("ground truth: %d incidents -> %s", len(rows), path)


def main(argv: list[str] | None = None) -> int:
    cli.setup_logging()
    args = parse_args(argv)
    fleet = fleet_mod.make_fleet(args.devices, args.seed, args.devices_per_site,
                                 inactive_fraction=0 if args.no_incidents else args.inactive_fraction,
                                 mixed_unit_fraction=args.mixed_unit_fraction)
    bench = bench_devices(args.test_bench, args.seed) if args.test_bench and args.backfill_days else []
    write_registry(args.lake, fleet_mod.registry_table(fleet + bench))
    if args.registry_only:
        return 0
    faults = () if args.no_incidents else _csv(args.data_faults)
    extra = unknown_devices(fleet, args.unknown_devices, args.seed) if "unknown_device" in faults else []
    plan = PlanConfig(
        acute_fraction=args.acute_fraction, gradual_fraction=args.gradual_fraction,
        fault_fraction=args.fault_fraction, unknown_devices=len(extra),
        acute_modes=() if args.no_incidents else _csv(args.acute_modes),
        gradual_modes=() if args.no_incidents else tuple(GRADUAL_MODES),
        data_faults=faults, warmup=dt.timedelta(minutes=args.warmup_minutes))
    truth_dir = Path(args.lake).parent / "ground_truth"

    if args.backfill_days:
        end = args.backfill_end
        start = end - dt.timedelta(days=args.backfill_days)
        incidents = plan_incidents(fleet, start, end, args.seed, args.interval, plan)
        incidents += _unknown_device_incidents(extra, start, end)
        bench, bench_incidents = plan_bench(bench, start, end, args.seed, plan.warmup)
        incidents += bench_incidents
        log.info("backfill %s .. %s: %d devices (+%d unknown, +%d on the test bench), %d incidents",
                 start, end, len(fleet), len(extra), len(bench), len(incidents))
        archive_before = start + dt.timedelta(days=args.archive_days) if args.archive_days else None
        res = backfill(args.lake, fleet + extra + bench, incidents, start, end, args.interval, args.seed, archive_before,
                       PROFILES[args.sensor_profile])
        log.info("backfill done: %d rows landed in %d commits (versions %s), %d archived, %d duplicates, %d replayed",
                 res.landed_rows, len(res.commits), _span(res.commits), res.archived_rows,
                 res.duplicate_rows, res.replayed_rows)
        write_ground_truth(Path(args.ground_truth or truth_dir / "backfill.jsonl"), incidents)

    if args.stream:
        sim_seconds = args.stream_minutes * 60
        acceleration = args.acceleration
        if args.rate:
            per_sim_second = len(SENSOR_TYPES) * (len(fleet) + len(extra)) / args.interval
            acceleration = args.rate / per_sim_second
        wall_seconds = sim_seconds / acceleration if acceleration > 0 else 0
        start = stream_start(args.stream_start, args.backfill_end, sim_seconds, wall_seconds)
        end = start + dt.timedelta(seconds=sim_seconds)
        incidents = plan_incidents(fleet, start, end, args.seed + 1, args.interval, plan)
        incidents += _unknown_device_incidents(extra, start, end)
        cfg = StreamConfig(
            bootstrap_servers=args.bootstrap_servers, topic=args.topic, start=start, sim_seconds=sim_seconds,
            interval_s=args.interval, acceleration=acceleration, batch_size=args.batch_size,
            single_fraction=args.single_fraction, profile=PROFILES[args.sensor_profile],
            wire_faults={} if args.no_incidents else {f: args.wire_faults for f in WIRE_FAULTS})
        log.info("stream %s .. %s to %s/%s at %.1fx real time: %d devices, %d incidents",
                 start, end, args.bootstrap_servers, args.topic, acceleration, len(fleet) + len(extra), len(incidents))
        res, wire_incidents = stream(fleet + extra, incidents, cfg, args.seed)
        truth = Path(args.ground_truth or truth_dir / "stream.jsonl")
        write_ground_truth(truth, incidents + wire_incidents)
        produced = pa.table({"event_id": [p[0] for p in res.produced], "kind": [p[1] for p in res.produced],
                             "expected_reason": pa.array([p[2] for p in res.produced], pa.string())})
        pq.write_table(produced, truth.with_suffix(".produced.parquet"))
        log.info("stream done: %d messages, %d readings in %.1f s (%.0f readings/s); produced ids -> %s",
                 res.messages, res.readings, res.wall_seconds, res.readings / max(res.wall_seconds, 1e-9),
                 truth.with_suffix(".produced.parquet"))
        if res.delivery_errors:
            log.error("%d delivery errors, first: %s", len(res.delivery_errors), res.delivery_errors[0])
            return 1
    return 0


def _unknown_device_incidents(extra, start, end):
    from simulation.incidents import Incident
    return [Incident("data_fault", "unknown_device", d.device_id, d.index, start, end) for d in extra]


def _span(versions: list[int]) -> str:
    return f"{versions[0]}..{versions[-1]}" if versions else "-"


if __name__ == "__main__":
    cli.exit_process(main)
