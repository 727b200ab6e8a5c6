"""Commit bookkeeping against the lake's age: one commit, the cleanse planning and the table open
at 100, 1,000 and 10,000 commits of the landing table.

The streaming job commits to landing once a minute for 90 days (~130K commits); the bookkeeping of
a commit ("was it made already", "which version is it") and of planning ("what did cleanse consume
last", "which files did the new versions add") must not grow with that. The table is driven to each
age by small commits of the streaming app through the project's own commit path
(`lake.commit_files`, no files: only the history grows, so what is measured is the history's
cost, not the file count's, which compaction bounds). At each age it measures (median of --repeat):

  commit   lake.commit_files of one small written file (idempotency check, commit, version lookup)
  plan     cleansing.plan_run for one new landing version (cleanse consumed all but the newest)
  check    find_commit of a rerun commit + last_inputs of the streaming app (the bookkeeping alone)
  open     lake.open_table (delta-rs: newest checkpoint + the commits after it)
  history  DeltaTable.history(), for contrast: what the bookkeeping used to read per commit

and the commit files each step read. Prints a table, the machine, and one JSON line last.

  python -m bench.bench_lake_history --json
  python -m bench.bench_lake_history --ages 100,1000 --repeat 3
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa

from bench.machine import describe, machine

T0 = dt.datetime(2026, 11, 20, 12, tzinfo=dt.timezone.utc)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.bench_lake_history", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ages", default="100,1000,10000", help="landing table ages (commits) to measure at")
    p.add_argument("--repeat", type=int, default=5, help="measurements per figure (the median is reported)")
    p.add_argument("--workdir", default=None, help="where the lake lives (default: a temporary directory)")
    p.add_argument("--bulk", choices=("log", "commit"), default="log",
                   help="how the table is aged: commit files written straight into the log (fast), or "
                        "lake.commit_files per commit (~100 ms each at 10,000 commits on this machine)")
    p.add_argument("--json", action="store_true", help="(the JSON line is always printed last; kept for scripts)")
    return p.parse_args(argv)


def _landing_rows(tag: str) -> pa.Table:
    from schemas import contracts
    return pa.Table.from_pylist([dict(event_id=tag, device_id="d1", sensor_type="temperature", value=4.0, unit="C",
                                      ts=T0.isoformat(), seq=None, timestamp_ingested=T0, kafka_topic=None,
                                      kafka_partition=None, kafka_offset=None, ingest_date=T0.date())],
                                schema=contracts.RAW_SENSOR_READINGS)


def _registry(lake_root: str) -> None:
    from schemas import contracts
    from core import lake
    lake.overwrite(lake_root, "devices", pa.Table.from_pylist([dict(
        device_id="d1", site_id="s1", model="CX-200", timezone="UTC", rated_current_a=15.0,
        commissioned_at=T0, active=True)], schema=contracts.DEVICES))


class Bench:
    def __init__(self, lake_root: str):
        from transforms import cleansing as cl
        from core import lake
        self.lake, self.cl, self.io = lake_root, cl, lake
        self.n = 0

    def commit(self, files=()) -> int:
        self.n += 1
        return self.io.commit_files(self.lake, self.cl.LANDING, list(files), app="streaming",
                                    commit_id=f"streaming:bench:{self.n}")

    def age_to(self, commits: int, bulk: str) -> None:
        latest = self.io.latest_version(self.lake, self.cl.LANDING)
        if bulk == "commit":
            while latest + 1 < commits:
                latest = self.commit()
            return
        # the same commits written straight into the log (commitInfo only, as delta-rs writes an empty
        # append), with delta-rs's checkpoint every 100 versions: minutes of commits in seconds
        log = Path(self.io.table_uri(self.lake, self.cl.LANDING)) / "_delta_log"
        for version in range(latest + 1, commits):
            self.n += 1
            info = {"timestamp": int(time.time() * 1000), "operation": "WRITE",
                    "operationParameters": {"mode": "Append", "partitionBy": "[\"ingest_date\"]"},
                    self.io.COMMIT_ID: f"streaming:bench:{self.n}", self.io.COMMIT_APP: "streaming",
                    self.io.COMMIT_INPUTS: "{}", "clientVersion": "bench_lake_history"}
            with open(log / f"{version:020d}.json", "x") as f:      # "x": never over an existing commit
                f.write(json.dumps({"commitInfo": info}) + "\n")
            if version % 100 == 99:
                self.io.open_table(self.lake, self.cl.LANDING).create_checkpoint()

    def consumed_all_but_newest(self) -> int:
        """Cleanse "consumed" landing up to the latest version; then one new landing version."""
        io, cl = self.io, self.cl
        consumed = io.latest_version(self.lake, cl.LANDING)
        for table in (cl.CLEAN, cl.QUARANTINE):
            after = cl.consumed(self.lake, table)
            io.commit_files(self.lake, table, [], app=cl.APP, commit_id=f"{cl.APP}/{table}/{after}-{consumed}",
                            inputs={cl.LANDING: [after, consumed], cl.DEVICES: 0})
        return self.commit(io.write_files(self.lake, cl.LANDING, _landing_rows(f"new-{consumed}")))


def _timed(fn, repeat: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeat):
        started = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times), out


def _reads(io, fn) -> tuple[object, int]:
    before = io.log_reads["commit"] + io.log_reads["info"]
    out = fn()
    return out, io.log_reads["commit"] + io.log_reads["info"] - before


def measure(b: Bench, repeat: int) -> dict:
    io, cl = b.io, b.cl
    # one commit of one small file (files written outside the timing: the bookkeeping is measured)
    commit_times, commit_reads = [], []
    for i in range(repeat):
        files = io.write_files(b.lake, cl.LANDING, _landing_rows(f"c{b.n}-{i}"))
        started = time.perf_counter()
        _, n = _reads(io, lambda: b.commit(files))
        commit_times.append(time.perf_counter() - started)
        commit_reads.append(n)
    new = b.consumed_all_but_newest()
    plan_s, plan = _timed(lambda: cl.plan_run(b.lake), repeat)
    assert [f.version for f in plan.landing_files] == [new], plan.landing_files
    _, plan_reads = _reads(io, lambda: cl.plan_run(b.lake))
    # the bookkeeping alone: "was this commit made" (a rerun) and "what did streaming commit last"
    last_id = f"streaming:bench:{b.n}"
    check_s, found = _timed(lambda: (io.find_commit(b.lake, cl.LANDING, last_id, app="streaming"),
                                     io.last_inputs(b.lake, cl.LANDING, "streaming")), repeat)
    assert found[0] == new, found
    open_s, _ = _timed(lambda: io.open_table(b.lake, cl.LANDING), repeat)
    table = io.open_table(b.lake, cl.LANDING)
    history_s, _ = _timed(table.history, 1)
    return {"commits": table.version() + 1, "commit_s": statistics.median(commit_times),
            "commit_reads": max(commit_reads), "plan_s": plan_s, "plan_reads": plan_reads, "check_s": check_s,
            "open_s": open_s, "history_s": history_s}


def render(rows: list[dict], bulk_s: float) -> str:
    lines = ["lake bookkeeping against the landing table's age (median times; reads = commit files read)",
             f"{'commits':>8} {'commit ms':>10} {'reads':>6} {'plan ms':>9} {'reads':>6} {'check ms':>9} "
             f"{'open ms':>9} {'history() ms':>13}"]
    for r in rows:
        lines.append(f"{r['commits']:>8,} {r['commit_s'] * 1e3:>10.1f} {r['commit_reads']:>6} "
                     f"{r['plan_s'] * 1e3:>9.1f} {r['plan_reads']:>6} {r['check_s'] * 1e3:>9.2f} "
                     f"{r['open_s'] * 1e3:>9.1f} "
                     f"{r['history_s'] * 1e3:>13.1f}")
    first, last = rows[0], rows[-1]
    lines.append(f"ratio {last['commits']:,} / {first['commits']:,} commits: "
                 + ", ".join(f"{k} {last[k + '_s'] / first[k + '_s']:.2f}x" for k in ("commit", "plan", "check", "open")))
    lines.append(f"driving the table to {last['commits']:,} commits took {bulk_s:.0f} s")
    lines.append(f"machine: {describe(machine())}")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    ages = sorted(int(a) for a in args.ages.split(","))
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench_lake_history-"))
    lake_root = str(work / "lake")
    shutil.rmtree(lake_root, ignore_errors=True)
    _registry(lake_root)
    b = Bench(lake_root)
    b.commit(b.io.write_files(lake_root, b.cl.LANDING, _landing_rows("first")))
    rows, bulk_s = [], 0.0
    for age in ages:
        started = time.perf_counter()
        b.age_to(age, args.bulk)
        bulk_s += time.perf_counter() - started
        rows.append(measure(b, args.repeat))
        print(f"  measured at {rows[-1]['commits']:,} commits", file=sys.stderr, flush=True)
    print(render(rows, bulk_s))
    out = {"machine": machine(), "bulk_s": round(bulk_s, 1)}
    for age, r in zip(ages, rows):
        for k in ("commit_s", "plan_s", "check_s", "open_s", "history_s"):
            out[f"{k[:-2]}_s_{age}"] = round(r[k], 5)
        out[f"commit_reads_{age}"], out[f"plan_reads_{age}"] = r["commit_reads"], r["plan_reads"]
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(out, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
