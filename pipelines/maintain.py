"""The lake's upkeep, as a Delta user expects it: run it from cron (or any scheduler) every hour or so.

  1. archive   landing older than the hot window moves to the Parquet archive (as pipelines.archive)
  2. compact   small files of every Delta table into files of --target_file_mb (an OPTIMIZE commit,
               dataChange=false: incremental readers skip it, nothing is read twice)
  3. checkpoint at each table's latest version (opening a table stays cheap however old it is)
  4. vacuum    files removed longer ago than the retention; the retention covers every Delta version a
               training manifest pins, for --pin_retention_days after that version was committed, so
               `extract_training --as_of_version N` stays byte-identical for those versions

Safe beside the running streaming job (compaction conflicts only with non-append writers; a failed
step is reported and the next run repeats it). Prints one line per table and a MAINTAIN_SUMMARY JSON
line; --json also writes it to a file.

examples:
  python -m pipelines.maintain                         # everything, 90-day hot window
  python -m pipelines.maintain --skip_archive --dry_run  # what vacuum would delete; no change
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time

from pipelines import cli
from pipelines.options import HotWindowOptions, LakeOptions, declare
from core import maintenance

HOUR, DAY = dt.timedelta(hours=1), dt.timedelta(days=1)


def arg_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m pipelines.maintain", description=__doc__,
                                formatter_class=cli.HelpFormatter, epilog=cli.BEAM_OPTIONS_EPILOG,
                                allow_abbrev=False)
    declare(p, LakeOptions, HotWindowOptions)
    g = p.add_argument_group("maintain")
    g.add_argument("--tables", default="", help="comma-separated table names (default: every Delta table)")
    g.add_argument("--target_file_mb", type=int, default=maintenance.Policy.target_file_bytes // 2**20,
                   help="compaction target file size")
    g.add_argument("--vacuum_retention_hours", type=int, default=maintenance.Policy.vacuum_retention // HOUR,
                   help="removed files younger than this are kept (Delta time travel window)")
    g.add_argument("--pin_retention_days", type=float, default=maintenance.Policy.pin_retention / DAY,
                   help="versions pinned by training manifests stay readable this long after their commit")
    g.add_argument("--training_dirs", default="",
                   help="comma-separated folders of training datasets outside <lake>/training whose pins count too")
    g.add_argument("--skip_archive", action="store_true", help="do not run the archive move")
    g.add_argument("--dry_run", action="store_true",
                   help="no archive move, compaction or checkpoint; report what vacuum would delete")
    g.add_argument("--json", default=None, help="also write the summary JSON to this file")
    return p


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, list[str]]:
    """(maintain's options, the rest: Beam options for the archive move)."""
    return arg_parser().parse_known_args(argv)


def run(argv: list[str] | None = None) -> dict:
    opts, beam_args = parse_args(argv)
    now = cli.utc_datetime(opts.now) if opts.now else dt.datetime.now(dt.timezone.utc)
    policy = maintenance.Policy(target_file_bytes=opts.target_file_mb * 1024 * 1024,
                                vacuum_retention=dt.timedelta(hours=opts.vacuum_retention_hours),
                                pin_retention=dt.timedelta(days=opts.pin_retention_days))
    started = time.monotonic()
    summary: dict = {"archive": None, "tables": {}, "errors": {}}
    if not opts.skip_archive and not opts.dry_run:
        summary["archive"] = _archive(opts, now, beam_args)
    pins = maintenance.training_pins(opts.lake, now, policy, _split(opts.training_dirs))
    summary["pins"] = {"protected": len(pins.protected), "expired": [f"{p.dataset}@{p.table}v{p.version}"
                                                                     for p in pins.expired]}
    names = _split(opts.tables) or maintenance.delta_tables()
    for name in names:
        try:
            done = maintenance.upkeep(opts.lake, name, pins, now, policy, opts.dry_run)
        except Exception as exc:     # one table's failure must not stop the others' upkeep
            summary["errors"][name] = f"{type(exc).__name__}: {exc}"
            print(f"maintain: {name}: FAILED {exc}", file=sys.stderr)
            continue
        if done:
            summary["tables"][name] = done.as_dict()
            print(f"  {name:<24} files {done.files_before:>7,} -> {done.files_after:>7,}   compacted "
                  f"{done.compacted_files:>6,}  vacuumed {done.vacuumed_files:>6,}  retention {done.retention_hours} h")
    summary["elapsed_s"] = round(time.monotonic() - started, 2)
    cli.print_summary("maintain", summary)
    if opts.json:
        with open(opts.json, "w") as fh:
            json.dump(summary, fh, indent=2, sort_keys=True)
    return summary


def _split(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _archive(opts, now: dt.datetime, beam_args: list[str]) -> dict:
    from apache_beam.options.pipeline_options import PipelineOptions
    from transforms import archive
    return archive.move(PipelineOptions(beam_args), opts.lake, opts.hot_days, now)


main = cli.entry_point(run, ok=lambda summary: not summary["errors"])


if __name__ == "__main__":
    cli.exit_process(main)
