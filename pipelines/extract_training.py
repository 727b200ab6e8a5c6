"""Point-in-time training extraction: a reproducible dataset of raw readings or features.

Raw readings (``--kind raw``) come from both tiers: the landing table (hot, Delta) as of one
version (``--as_of_version`` or ``--as_of_timestamp``; default: the latest at start, which the
manifest then pins) unioned with the archive's Parquet partitions (cold; the reader rule of
``transforms.archive.union_files`` makes the union exact while an archive move is in flight). Rows
are kept when ``--start <= timestamp_ingested < --end``, and for the given devices and sensors.
A reading that landed after the as-of point is not in that Delta snapshot, so it never appears,
however much the streaming pipeline appends meanwhile (MVCC: the reader's snapshot is fixed).

Features (``--kind features``) come from the features table as of a version or timestamp,
for windows with ``--start <= window_start < --end`` of one ``--window_size``.

Per-device spans (``--spans FILE``, instead of ``--start/--end``): time spans per device or per
device model, e.g. known-good periods or the first hours after commissioning (format:
core/training_spans.py). Each device's rows are kept inside its own spans only; ``--devices``
still filters. The spec, and so the manifest and the dataset id, records the resolved per-device
spans, the spans file's sha256 and the registry version that resolved models.

Output: ``<output>/<dataset_id>/`` with ``part-<shard>.parquet`` files (rows sorted by a total
order, fixed Parquet writer settings, no wall-clock values) and ``manifest.json`` (parameters, the
Delta version read, the landing and archive files read, every output file with rows and sha256).
The same arguments give byte-identical files and manifest. ``dataset_id`` defaults to a digest of
the parameters and the resolved version.

examples:
  python -m pipelines.extract_training --start 2026-10-18 --end 2026-10-22 --as_of_version 12
  python -m pipelines.extract_training --kind features --window_size 1h --start 2026-10-18 --end 2026-10-22
  python -m pipelines.extract_training --devices dev-00001,dev-00002 --sensors vibration \\
      --start 2026-06-01 --end 2026-10-01 --as_of_timestamp 2026-10-02T00:00:00
  python -m pipelines.extract_training --kind features --spans known_good.csv --devices dev-00001
"""

from __future__ import annotations

import sys
import time

from apache_beam.options.pipeline_options import PipelineOptions

from pipelines import cli
from pipelines.options import LakeOptions, SpanOptions, WindowSizeOptions
from transforms.extraction import ExtractSpec, extract, make_spec


class ExtractOptions(LakeOptions, SpanOptions, WindowSizeOptions, PipelineOptions):
    @classmethod
    def _add_argparse_args(cls, parser):
        g = parser.add_argument_group("extract_training")
        g.add_argument("--kind", default="raw", choices=["raw", "features"],
                       help="raw readings (landing + archive) or features (features table; of --window_size)")
        g.add_argument("--devices", default="", help="comma-separated device ids (default: all)")
        g.add_argument("--spans", default=None,
                       help="CSV/JSON of per-device or per-model time spans (device_id|model, start, end), "
                            "instead of --start/--end; see core/training_spans.py")
        g.add_argument("--sensors", default="", help="comma-separated sensor types (default: all)")
        g.add_argument("--shards_per_day", type=int, default=ExtractSpec.shards_per_day,
                       help="output files per day (by device hash)")
        g.add_argument("--archive_slack_days", type=int, default=ExtractSpec.archive_slack_days,
                       help="raw only: read archive date partitions this many days before --start (late data)")
        g.add_argument("--output", default=None, help="parent directory of the dataset (default: <lake>/training)")
        g.add_argument("--dataset_id", default=None,
                       help="dataset directory name (default: kind, span, version and a digest of all parameters)")


def arg_parser():
    return cli.pipeline_parser(ExtractOptions, "python -m pipelines.extract_training", __doc__)


def spec_from(opts) -> ExtractSpec:
    return make_spec(opts.lake, opts.kind, opts.start, opts.end, opts.devices, opts.sensors, opts.as_of_version,
                     opts.as_of_timestamp, opts.window_size, opts.shards_per_day, opts.archive_slack_days,
                     opts.spans)


def run(argv: list[str] | None = None) -> tuple[str, dict]:
    options = cli.pipeline_options(arg_parser(), argv)
    opts = options.view_as(ExtractOptions)
    spec = spec_from(opts)
    started = time.monotonic()
    directory, manifest = extract(opts.lake, spec, opts.output, opts.dataset_id, options)
    if not manifest:     # --dry_run
        return directory, manifest
    summary = {"dataset": directory, "rows": manifest["rows"], "files": len(manifest["files"]),
               "version": spec.version, "archive_files": len(manifest["inputs"].get("archive_files", [])),
               "elapsed_s": round(time.monotonic() - started, 2)}
    cli.print_summary("extract", summary)
    return directory, manifest


main = cli.entry_point(run)


if __name__ == "__main__":
    cli.exit_process(main)
