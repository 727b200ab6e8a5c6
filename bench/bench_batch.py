"""Throughput of the bounded pipelines (cleanse, features) on the DirectRunner.

Simulates a fleet's history into a landing table (every data fault: duplicates, replays, stuck and
out-of-range values, dropouts, unknown and inactive devices, mixed units and time forms), then runs
`pipelines.cleanse` over all of it and `pipelines.features` over the clean result, each as one
run, and prints rows/s as a table and one JSON line. The default fleet (350 devices x 2 days at
one reading per sensor per minute) lands about 5.07M readings. The simulated lake is cached in
--workdir (by its parameters) and copied before each measured run; run times exclude the one-off
TensorFlow import, include pipeline construction, TFDV validation and the Delta commits.

  python -m bench.bench_batch                       # ~5M readings
  python -m bench.bench_batch --devices 700         # ~10M
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

FAULTS = "stuck_value,dropout,duplicates,replay,out_of_range,unknown_device,inactive_device"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.bench_batch", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--devices", type=int, default=350, help="simulated devices")
    p.add_argument("--days", type=float, default=2, help="days of history (one landing version per day)")
    p.add_argument("--interval", type=float, default=60, help="seconds between readings of one sensor")
    p.add_argument("--workdir", default="/tmp/bench_batch", help="where the simulated lake and the runs live")
    p.add_argument("--repeat", type=int, default=1, help="measured runs of each pipeline (the best is reported)")
    p.add_argument("--keep", action="store_true", help="keep the lake of the last run")
    return p.parse_args(argv)


def simulated_lake(args) -> Path:
    from tests.helpers import run_simulator
    source = Path(args.workdir) / f"source-{args.devices}d-{args.days:g}days-{args.interval:g}s"
    if not (source / "lake" / "landing").exists():
        shutil.rmtree(source, ignore_errors=True)
        run_simulator(str(source / "lake"), "--devices", str(args.devices), "--backfill_days", str(args.days),
                      "--backfill_end", "2026-11-20", "--interval", str(args.interval), "--data_faults", FAULTS,
                      "--inactive_fraction", "0.02", "--mixed_unit_fraction", "0.1")
    return source


def fresh_copy(source: Path, workdir: str, name: str = "run") -> str:
    target = Path(workdir) / name
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(source, target)
    return str(target / "lake")


def measure(args) -> dict:
    from pipelines import cleanse, cli, features
    import transforms.validation  # noqa: F401  (TensorFlow's import, once, outside the timings)
    cli.setup_logging("WARNING")
    source = simulated_lake(args)
    best: dict[str, dict] = {}
    for _ in range(args.repeat):
        lake = fresh_copy(source, args.workdir)
        c = cleanse.run(["--lake", lake])
        f = features.run(["--lake", lake])
        for name, summary, rows in (("cleanse", c, c["rows_in"]), ("features", f, f["clean_rows_read"])):
            if name not in best or summary["elapsed_s"] < best[name]["elapsed_s"]:
                best[name] = {"rows": rows, "elapsed_s": summary["elapsed_s"],
                              "rows_per_s": round(rows / summary["elapsed_s"]), "summary": summary}
    if not args.keep:
        shutil.rmtree(Path(args.workdir) / "run", ignore_errors=True)
    load = os.getloadavg()
    return {"runner": "DirectRunner", "devices": args.devices, "days": args.days, "interval_s": args.interval,
            "readings": best["cleanse"]["rows"], "cpus": os.cpu_count(), "load_avg_1m": round(load[0], 2),
            "cleanse": best["cleanse"], "features": best["features"]}


def render(r: dict) -> str:
    c, f = r["cleanse"]["summary"], r["features"]["summary"]
    lines = [
        f"bounded pipelines on the DirectRunner: {r['readings']:,} readings ({r['devices']} devices x {r['days']:g} "
        f"days, every {r['interval_s']:g} s), {r['cpus']} CPUs, load {r['load_avg_1m']}",
        f"{'pipeline':<10} {'rows in':>12} {'seconds':>9} {'rows/s':>10}  output",
        f"{'cleanse':<10} {r['cleanse']['rows']:>12,} {r['cleanse']['elapsed_s']:>9.1f} "
        f"{r['cleanse']['rows_per_s']:>10,}  clean {c['clean']:,} + quarantined {c['quarantined']:,} + "
        f"duplicates removed {c['duplicates_removed']:,} (reconciles: {c['reconciles']})",
        f"{'features':<10} {r['features']['rows']:>12,} {r['features']['elapsed_s']:>9.1f} "
        f"{r['features']['rows_per_s']:>10,}  {f['feature_rows']:,} feature rows",
    ]
    return "\n".join(lines)


def main(argv=None) -> int:
    result = measure(parse_args(argv))
    print(render(result))
    print("BENCH_BATCH " + json.dumps({k: v if k not in ("cleanse", "features") else
                                       {kk: vv for kk, vv in v.items() if kk != "summary"}
                                       for k, v in result.items()}, sort_keys=True))
    return 0 if result["cleanse"]["summary"]["reconciles"] else 1


if __name__ == "__main__":
    sys.exit(main())
