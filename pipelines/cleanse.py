"""Incremental cleansing: landing/raw_sensor_readings -> clean/sensor_readings (Contract 2) + quarantine.

Each run reads only the landing Delta versions an output table has not consumed yet; the
consumed range is recorded in that table's commit (custom metadata fleet.inputs), in the same
Delta transaction as its rows, so a crash and rerun neither skips nor double-counts. If a crash
fell between the clean and the quarantine commit, the rerun fills the lagging table alone for
the versions it misses. Per run: one commit per output table, TFDV validation before it (a hard
contract break fails the run, drift against the stored baseline is reported), and a printed
reconciliation: rows in = clean + quarantined + duplicates removed (+ rows an earlier, interrupted
run already committed).

Dedup, quality flags and quarantine rules: see transforms/cleansing.py.

examples:
  python -m pipelines.cleanse                                  # all new landing versions, DirectRunner
  python -m pipelines.cleanse --lake /tmp/c4/lake --lookback_days 3
  python -m pipelines.cleanse --runner=FlinkRunner ...         # the Beam options: see the end of --help
"""
from __future__ import annotations

import logging

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from pipelines import cli
from pipelines.options import IncrementalJobOptions, option_group
from transforms import cleansing as cl
from core import lake
from transforms import delta
from transforms.baselines import baseline_path

log = logging.getLogger("cleanse")


class CleanseOptions(IncrementalJobOptions, PipelineOptions):
    option_defaults = {"shards": cl.CleanseConfig.shards}

    _add_argparse_args = option_group(
        "cleanse",
        ("--max_versions", dict(
            type=int, default=0,
            help="consume at most this many landing versions in one run, to catch up in steps (0: all)")),
        ("--lookback_days", dict(
            type=float, default=cl.CleanseConfig.lookback_s / 86400,
            help="dedup against clean rows up to this long before the newest ingestion time of the new rows; older "
                 "replays are not recognised")),
        ("--future_tolerance_seconds", dict(
            type=float, default=cl.CleanseConfig.future_tolerance_s,
            help="clock skew allowed before a reading later than its ingestion is flagged future_timestamp (BAD)")),
        ("--stuck_run_length", dict(
            type=int, default=cl.CleanseConfig.stuck_run_length,
            help="consecutive values of one device and sensor, equal within the sensor's resolution, flagged "
                 "stuck_value (SUSPECT) when they also span --stuck_min_duration_seconds")),
        ("--stuck_min_duration_seconds", dict(
            type=float, default=cl.CleanseConfig.stuck_min_duration_s,
            help="shortest time from the first to the last value of a stuck run: a steady quantised sensor sampled "
                 "every second is not stuck after 10 equal values")))


def arg_parser():
    return cli.pipeline_parser(CleanseOptions, "python -m pipelines.cleanse", __doc__)


def config_of(opts: CleanseOptions) -> cl.CleanseConfig:
    return cl.CleanseConfig(lookback_s=opts.lookback_days * 86400, future_tolerance_s=opts.future_tolerance_seconds,
                            stuck_run_length=opts.stuck_run_length, shards=opts.shards,
                            stuck_min_duration_s=opts.stuck_min_duration_seconds)


def build(pipeline: beam.Pipeline, plan: cl.CleansePlan, config: cl.CleanseConfig, opts: CleanseOptions) -> None:
    from transforms.validation import load_baseline
    outputs = pipeline | "Cleanse" >> cl.Cleanse(plan, config)
    for table in plan.tables_to_write():
        path = baseline_path(plan.lake, opts.baseline_dir, table)
        outputs[table] | f"Write_{table}" >> delta.WriteDelta(
            plan.lake, table, app=cl.APP, commit_id=plan.commit_id(table), inputs=plan.inputs(table),
            baseline=load_baseline(path) if path else None, sample_rate=opts.tfdv_sample_rate)


def summarize(plan: cl.CleansePlan, c: dict[str, int], elapsed_s: float) -> dict:
    quarantined = {r: c.get(f"quarantined_{r}", 0) for r in cl.QUARANTINE_REASONS}
    clean = {q: c.get(f"clean_{q}", 0) for q in cl.contracts.QUALITY_LEVELS}
    dups = {k: c.get(k, 0) for k in ("duplicates_within_batch", "duplicates_against_clean")}
    s = {
        "landing_versions": {t: [a, plan.upto] for t, a in plan.after.items()},
        "rows_in": c.get("rows_in", 0),
        "clean": sum(clean.values()), "clean_by_quality": clean,
        "quarantined": sum(quarantined.values()), "quarantined_by_reason": quarantined,
        "duplicates_removed": sum(dups.values()), "duplicates": dups,
        "already_committed": c.get("already_committed", 0),
        "flags": {r: c.get(f"flag_{r}", 0) for r in cl.REASON_LEVEL},
        "context_files": c.get("context_files", 0), "context_rows": c.get("context_rows", 0),
        "elapsed_s": round(elapsed_s, 2),
    }
    s["reconciles"] = s["rows_in"] == s["clean"] + s["quarantined"] + s["duplicates_removed"] + s["already_committed"]
    s["rows_per_s"] = round(s["rows_in"] / elapsed_s) if elapsed_s else None
    s["commits"] = {}
    for table in plan.tables_to_write():
        # the run's own commit is the newest cleanse commit of the table: one or two commit files read
        version = lake.find_commit(plan.lake, table, plan.commit_id(table), app=cl.APP)
        s["commits"][table] = {"version": version,
                               "rows": delta.rows_in_version(plan.lake, table, version) if version is not None else None}
    written = {cl.CLEAN: s["clean"], cl.QUARANTINE: s["quarantined"]}
    s["commits_match_counts"] = all(v["rows"] == written[t] for t, v in s["commits"].items())
    return s


def render(s: dict) -> str:
    q = ", ".join(f"{k} {v}" for k, v in s["quarantined_by_reason"].items() if v) or "-"
    lines = [
        "cleanse reconciliation",
        f"  landing versions       {', '.join(f'{t} ({a}, {u}]' for t, (a, u) in s['landing_versions'].items())}",
        f"  rows in                {s['rows_in']:>12,}",
        f"  clean                  {s['clean']:>12,}   "
        + ", ".join(f"{k} {v:,}" for k, v in s["clean_by_quality"].items()),
        f"  quarantined            {s['quarantined']:>12,}   {q}",
        f"  duplicates removed     {s['duplicates_removed']:>12,}   within batch "
        f"{s['duplicates']['duplicates_within_batch']:,}, "
        f"against clean {s['duplicates']['duplicates_against_clean']:,}",
        f"  already committed      {s['already_committed']:>12,}",
        f"  reconciles             {'yes' if s['reconciles'] else 'NO'}: rows in = clean + quarantined + duplicates"
        " removed + already committed",
        f"  flags                  " + ", ".join(f"{k} {v:,}" for k, v in s["flags"].items()),
        f"  commits                " + ", ".join(f"{t} v{c['version']} ({c['rows']:,} rows)" for t, c in
                                                 s["commits"].items()),
        f"  elapsed                {s['elapsed_s']} s, {s['rows_per_s'] or 0:,} rows/s",
    ]
    return "\n".join(lines)


def run(argv: list[str] | None = None) -> dict:
    """Runs one cleanse; returns the reconciliation summary (also printed)."""
    options = cli.pipeline_options(arg_parser(), argv)
    opts = options.view_as(CleanseOptions)
    plan = cl.plan_run(opts.lake, opts.upto_version, opts.max_versions or None)
    if plan is None or not plan.tables_to_write():
        print(f"cleanse: nothing to do ({'no landing table' if plan is None else f'landing v{plan.upto} consumed'})")
        return {"rows_in": 0, "reconciles": True, "nothing_to_do": True}
    log.info("landing versions %s, %d files", {t: (a, plan.upto) for t, a in plan.after.items()},
             len(plan.landing_files))
    return cli.run_incremental(
        "cleanse", options, lambda pipeline: build(pipeline, plan, config_of(opts), opts),
        lambda result, elapsed_s: summarize(plan, cli.metric_counters(result, cl.APP), elapsed_s), render,
        baseline_dir=opts.baseline_dir, summary_json=opts.summary_json, dry_run={"dry_run": True, "reconciles": True},
        committed=lambda summary: [(plan.lake, table, c["version"]) for table, c in summary["commits"].items()
                                   if c["version"] is not None])


main = cli.entry_point(run, ok=lambda summary: summary["reconciles"] and summary.get("commits_match_counts", True))


if __name__ == "__main__":
    cli.exit_process(main)
