"""Windowed feature engineering: clean/sensor_readings -> features (one row per device x window).

Per device, tumbling event-time windows (default 15 min, 1 h and 1 day; any set, e.g. 30s for a
test bench): per sensor mean, std, min, max, last, slope, count and missing ratio over GOOD
readings, the extremes of readings of any quality and the BAD and SUSPECT counts (all_min, all_max,
bad_count, suspect_count: an overload beyond the valid range still reaches the models), plus
cross-sensor features (discharge/suction pressure ratio, current per K of
temperature lift, a superheat proxy). Incremental by time: a run computes the windows that closed
since the previous run (watermark = newest ingestion in clean minus --allowed_lateness_seconds)
and recomputes the closed windows that newly cleansed (late) readings fall into, replacing their
rows. One Delta commit per run, recording the clean versions consumed and the watermark; TFDV
validation before it (hard break: the run fails, nothing committed; drift against the baseline:
reported). Definitions: transforms/features.py.

examples:
  python -m pipelines.features                                   # 15m, 1h, 1d windows, DirectRunner
  python -m pipelines.features --window_sizes 30s,5m --sampling_interval_seconds 1
  python -m pipelines.features --runner=FlinkRunner ...          # the Beam options: see the end of --help
"""
from __future__ import annotations

import datetime as dt

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from pipelines import cli
from pipelines.options import IncrementalJobOptions, option_group
from core import lake
from transforms import features as ft
from transforms.baselines import baseline_path
from transforms.delta import rows_in_version


class FeaturesOptions(IncrementalJobOptions, PipelineOptions):
    option_defaults = {"shards": ft.FeaturesConfig.shards}

    _add_argparse_args = option_group(
        "features",
        ("--window_sizes", dict(
            default=",".join(s.label for s in ft.FeaturesConfig.sizes),
            help="comma list of tumbling window sizes, each a number and s, m, h or d")),
        ("--allowed_lateness_seconds", dict(
            type=float, default=60.0,
            help="a window is computed once clean holds readings ingested this long after its end; readings later "
                 "than that make the run recompute the window")),
        ("--sampling_interval_seconds", dict(
            type=float, default=ft.FeaturesConfig.default_interval_s,
            help="sampling interval assumed for missing_ratio when a window has too few readings to measure it")))


def arg_parser():
    return cli.pipeline_parser(FeaturesOptions, "python -m pipelines.features", __doc__)


def config_of(opts: FeaturesOptions) -> ft.FeaturesConfig:
    return ft.FeaturesConfig(sizes=ft.parse_window_sizes(opts.window_sizes),
                             default_interval_s=opts.sampling_interval_seconds, shards=opts.shards)


def build(pipeline: beam.Pipeline, plan: ft.FeaturesPlan, config: ft.FeaturesConfig, opts: FeaturesOptions,
          layout: ft.ShardLayout | None = None) -> None:
    from transforms.validation import load_baseline
    path = baseline_path(plan.lake, opts.baseline_dir, ft.FEATURES)
    tables, late = pipeline | "Features" >> ft.ComputeFeatures(plan, config, layout)
    tables | "Write" >> ft.WriteFeatures(plan, config.sizes, late, baseline=load_baseline(path) if path else None,
                                         sample_rate=opts.tfdv_sample_rate)


def _iso(us: int | None) -> str | None:
    return None if us is None else dt.datetime.fromtimestamp(us / 1e6, dt.timezone.utc).isoformat()


def largest_group_bytes(result) -> int | None:
    """The most bytes one key of the features grouping carried (None where the runner reports none)."""
    from apache_beam.metrics.metric import MetricsFilter
    found = result.metrics().query(MetricsFilter().with_namespace(ft.APP).with_name("group_bytes"))["distributions"]
    values = [d.committed if d.committed is not None else d.attempted for d in found]
    return max((v.max for v in values if v is not None and v.count), default=None)


def summarize(plan: ft.FeaturesPlan, config: ft.FeaturesConfig, c: dict[str, int], elapsed_s: float,
              layout: ft.ShardLayout | None = None, largest_group: int | None = None) -> dict:
    version = lake.find_commit(plan.lake, ft.FEATURES, plan.commit_id(config.sizes))
    s = {
        "clean_versions": [plan.clean_after, plan.clean_upto],
        "watermarks": {size.label: [_iso(plan.closing(size)[0]), _iso(plan.closing(size)[1])] for size in config.sizes},
        "new_clean_rows": c.get("new_clean_rows", 0),
        "clean_rows_read": c.get("clean_rows_read", 0),
        "clean_rows_selected": c.get("clean_rows_selected", 0),
        "feature_rows": c.get("feature_rows", 0),
        "carried_over_rows": c.get("carried_over_rows", 0),
        "commit": {"version": version,
                   "rows": rows_in_version(plan.lake, ft.FEATURES, version) if version is not None else None},
        "elapsed_s": round(elapsed_s, 2),
        "layout": {"shards": layout.shards, "bucket_s": layout.bucket_us // ft.US, "groups": c.get("groups", 0),
                   "largest_group_bytes": largest_group} if layout else None,
    }
    s["rows_per_s"] = round(s["clean_rows_read"] / elapsed_s) if elapsed_s else None
    s["commit_matches_counts"] = s["commit"]["rows"] == s["feature_rows"] + s["carried_over_rows"]
    return s


def render(s: dict) -> str:
    return "\n".join([
        "features run",
        f"  clean versions         ({s['clean_versions'][0]}, {s['clean_versions'][1]}]",
        "  watermarks             " + ", ".join(f"{k}: {a} -> {b}" for k, (a, b) in s["watermarks"].items()),
        f"  new clean rows         {s['new_clean_rows']:>12,}",
        f"  clean rows read        {s['clean_rows_read']:>12,}   in computed windows {s['clean_rows_selected']:,}",
        f"  feature rows           {s['feature_rows']:>12,}   + {s['carried_over_rows']:,} carried over in "
        "rewritten partitions",
        f"  commit                 features v{s['commit']['version']} ({s['commit']['rows']} rows)",
        f"  elapsed                {s['elapsed_s']} s, {s['rows_per_s'] or 0:,} clean rows/s",
    ] + ([f"  keys                   {s['layout']['shards']} device shards x {s['layout']['bucket_s']} s buckets: "
          f"{s['layout']['groups']:,} groups, largest {s['layout']['largest_group_bytes'] or 0:,} bytes"]
         if s.get("layout") else []))


def run(argv: list[str] | None = None) -> dict:
    """Runs one features pass; returns its summary (also printed)."""
    options = cli.pipeline_options(arg_parser(), argv)
    opts = options.view_as(FeaturesOptions)
    config = config_of(opts)
    plan = ft.plan_run(opts.lake, config.sizes, opts.allowed_lateness_seconds, opts.upto_version)
    if plan is None:
        print("features: nothing to do (no clean versions newer than the last run)")
        return {"nothing_to_do": True, "feature_rows": 0}
    layout = ft.shard_layout(plan, config)
    return cli.run_incremental(
        "features", options, lambda pipeline: build(pipeline, plan, config, opts, layout),
        lambda result, elapsed_s: summarize(plan, config, cli.metric_counters(result, ft.APP), elapsed_s, layout,
                                            largest_group_bytes(result)), render,
        baseline_dir=opts.baseline_dir, summary_json=opts.summary_json, dry_run={"dry_run": True},
        committed=lambda summary: [(plan.lake, ft.FEATURES, summary["commit"]["version"])]
        if summary["commit"]["version"] is not None else [])


main = cli.entry_point(run, ok=lambda summary: summary.get("commit_matches_counts", True))


if __name__ == "__main__":
    cli.exit_process(main)
