"""Archive tier: moves landing data older than the hot window into the cold Parquet archive.

    landing/raw_sensor_readings (Delta, partition ingest_date)  --older than --hot_days-->
    archive/raw_sensor_readings/date=YYYY-MM-DD/device_id=.../landing-<source id>.parquet

What moves: whole landing files of the ingest_date partitions older than the hot window, taken
from ONE landing snapshot (version V). Each landing file becomes one archive file per
(reading date, device) it holds; `date` is the reading's UTC date (`ts` parsed with the device's
registry timezone; the ingestion date when `ts` cannot be parsed). Archive file names are derived
from the source landing file (`landing-<sha1 of its path>.parquet`), so a rerun rewrites the same
names instead of adding copies.

The move is crash-safe because of one reader rule (``union_files``): an archive file whose source
landing file is still in the landing snapshot being read is skipped, the landing copy is read
instead. Steps:

  1. plan at landing version V: files of ingest_date < cutoff;
  2. write all their archive files (each atomically: temp name, then rename); verify the row counts;
  3. remove exactly those files from landing in one Delta commit (a partition-only DELETE read at
     version V: pure file removal, no rewrite; delta-rs refuses it if a concurrent commit added
     files to those partitions, and the rerun plans again).

A crash before 3 leaves every reading in landing, and the archive copies invisible to a union
reader (rule above); after 3 every reading is in the archive and not in landing. Either way a reader
of both tiers sees each landed reading exactly once, at every moment and at every landing version
it time-travels to. Rerunning completes an interrupted move; with nothing old left it is a no-op.

examples:
  python -m pipelines.archive                       # 90-day hot window, relative to today (UTC)
  python -m pipelines.archive --hot_days 30 --now 2026-11-01
  python -m pipelines.archive --dry_run_plan         # print what would move, change nothing
"""

from __future__ import annotations

import datetime as dt
import sys

from apache_beam.options.pipeline_options import PipelineOptions

from pipelines import cli
from pipelines.options import HotWindowOptions, LakeOptions
from transforms import archive


class ArchiveOptions(LakeOptions, HotWindowOptions, PipelineOptions):
    @classmethod
    def _add_argparse_args(cls, parser):
        g = parser.add_argument_group("archive")
        g.add_argument("--dry_run_plan", action="store_true", default=False,
                       help="print the plan (files, rows, cutoff) and change nothing")


def arg_parser():
    return cli.pipeline_parser(ArchiveOptions, "python -m pipelines.archive", __doc__)


def run(argv: list[str] | None = None) -> dict:
    options = cli.pipeline_options(arg_parser(), argv)
    opts = options.view_as(ArchiveOptions)
    now = cli.utc_datetime(opts.now) if opts.now else dt.datetime.now(dt.timezone.utc)
    return archive.move(options, opts.lake, opts.hot_days, now, opts.dry_run_plan)


main = cli.entry_point(run)


if __name__ == "__main__":
    cli.exit_process(main)
