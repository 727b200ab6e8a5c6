"""Run report of the main job: one self-contained HTML file (plots embedded as PNG) and a console
summary, from a lake and the simulator's ground truth. Exits 1 when a reconciliation check fails.

Sections:
  1. reconciliation, each number computed independently of the pipelines' own counters:
     stream  produced event ids (<ground_truth>/stream.produced.parquet) = ids landed by the
             streaming job (landing rows with Kafka coordinates) + ids the contract rejects;
             landed and rejected ids are disjoint; landed rows = produced good readings (copies
             included); dead-letter rows per reason = wire-fault messages per reason
             (stream.jsonl); every dead-lettered event id is a rejected one;
     lake    landed rows (backfill + stream, at the landing version the cleanse consumed) =
             clean + quarantined + duplicates removed, where duplicates removed = landed rows -
             distinct (device_id, event_id) among them (quarantined readings keep every copy, so
             their copies are not counted as removed); clean = distinct readings not quarantined;
             quarantine = every landed copy of its readings; clean keys unique; no clean or
             quarantined reading without a landed row; landing append-only since that version;
  2. sensor traces of one failing device per failure mode (clean table, canonical units) with
     acute (CRITICAL) and model (WARNING/HIGH) alerts and the incident span;
  3. alert timeline by rule; 4. anomaly score distributions with thresholds per model;
  5. detection quality against the ground truth (pipelines.evaluate);
  6. latency from arrival (landing timestamp_ingested of the triggering reading) to acute alert
     (detected_at), and which acute incidents of the stream got their expected rule's alert; both are
     checks that fail the run (an alert later than 2 minutes, an incident without its alert).

examples:
  python -m pipelines.report
  python -m pipelines.report --lake /tmp/rep/lake --out /tmp/rep/report.html --png_dir /tmp/rep/png
  python -m pipelines.report --started_at "$(date -u +%FT%TZ)" --title "nightly run"
"""
from __future__ import annotations

import argparse
import datetime as dt
import logging
import sys
import time
from pathlib import Path

from pipelines import cli
from pipelines.reporting import figures, inputs, render
from pipelines.reporting.checks import failed
from pipelines.reporting.inputs import ReportData
from pipelines.options import LakeOptions, declare
from core import lake

log = logging.getLogger("report")


def _started_at(text: str) -> dt.datetime:
    try:
        return dt.datetime.fromtimestamp(float(text), dt.timezone.utc)
    except ValueError:
        return cli.utc_datetime(text)


def arg_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m pipelines.report", description=__doc__, formatter_class=cli.HelpFormatter)
    declare(p, LakeOptions)
    p.add_argument("--ground_truth_dir", default=None,
                   help="the simulator's ground truth (backfill.jsonl, stream.jsonl, stream.produced.parquet); "
                        "None: <lake>/../ground_truth")
    p.add_argument("--out", default="./data/report.html", help="HTML file to write")
    p.add_argument("--title", default="Compressor fleet: run report", help="report title")
    p.add_argument("--started_at", type=_started_at, default=None,
                   help="when the run started (ISO-8601, naive = UTC, or epoch seconds): the header shows the wall time")
    p.add_argument("--eval_from", type=cli.utc_datetime, default=None,
                   help="judge detection from this UTC time on, as pipelines.evaluate --eval_from does (run_local: "
                        "the end of the training span; default: the first scored window)")
    p.add_argument("--window_size", default=None, help="score window size for sections 4-5 (None: 1h if scored, else the first scored size)")
    p.add_argument("--maintenance_json", default=None,
                   help="summary JSON of pipelines.maintain (--json): the header shows file counts before and after")
    p.add_argument("--max_traces", type=int, default=7, help="failing devices to plot (one per failure mode)")
    p.add_argument("--png_dir", default=None,
                   help="also write every figure as a PNG file into this folder (replaces its trace_*.png)")
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return arg_parser().parse_args(argv)


def write(d: ReportData, out: str, png_dir: str | None) -> None:
    pngs = figures.figures(d)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(render.render_html(d, pngs), encoding="utf-8")
    if png_dir:
        Path(png_dir).mkdir(parents=True, exist_ok=True)
        for stale in Path(png_dir).glob("trace_*.png"):     # traces of an earlier report
            stale.unlink()
        for name, data in pngs.items():
            (Path(png_dir) / f"{name}.png").write_bytes(data)


def main(argv: list[str] | None = None) -> int:
    cli.setup_logging()
    opts = parse_args(argv)
    started = time.monotonic()
    data = inputs.gather(opts)
    write(data, opts.out, opts.png_dir)
    print(render.console_summary(data, opts.out))
    log.info("report written in %.1f s", time.monotonic() - started)
    for c in failed(data.checks):
        log.error("reconciliation FAIL: %s: %s (expected %s, got %s) %s", c.section, c.name, c.expected, c.actual,
                  c.detail)
    return 1 if failed(data.checks) else 0


if __name__ == "__main__":
    cli.exit_process(main)

