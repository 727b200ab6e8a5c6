"""Cleanse (and features) throughput beside a plain polars reference and a per-element Beam version.

On one simulated landing table (bench_batch's simulator, every data fault; cached in --workdir):

  * beam       `pipelines.cleanse` (vectorised: polars over Arrow batches inside Beam), DirectRunner,
               timed like bench_batch (pipeline construction, TFDV validation and Delta commits included);
  * polars     a straightforward single-process polars implementation of the same cleansing rules
               (read all landing Parquet, join the registry, quarantine, units, dedup, flags, write
               clean + quarantine Parquet), written independently of transforms/cleansing.py;
  * per-elem   a per-element Beam version (row dicts, Python per row, GroupByKey dedup and stuck
               runs, WriteToParquet) on the DirectRunner. It is slow, so it runs on a subset: every
               k-th device with all its rows (every fault kind stays in), about --per_element_rows
               rows. The vectorised cleanse and the polars reference also run on that subset.

Every implementation's counts (clean by quality, quarantined by reason, duplicates removed,
quality flags) and a digest of its clean rows (a hash of every column) are compared; mismatches
are printed, and the exit code is 1 when any are found. Also `pipelines.features` on the full
clean output (Beam rows/s; no polars reference of the features).

Goals: vectorised cleanse >= 0.3x the polars reference (same full input) and >= 20x the
per-element version (full-input Beam rows/s over the per-element rows/s on the subset; the ratio
on the subset alone is printed too, where Beam's fixed costs weigh more).

  python -m bench.bench_cleanse_reference --devices 50 --days 1     # ~370k readings, quick check
  python -m bench.bench_cleanse_reference --devices 700             # ~10M readings
"""
from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import math
import os
import re
import shutil
import sys
import time
from pathlib import Path
from zoneinfo import ZoneInfo

import apache_beam as beam
import polars as pl

from bench.bench_batch import fresh_copy, simulated_lake
from bench.machine import machine
from schemas import contracts
from schemas.sensors import SENSORS
from transforms import delta
from core import lake

LANDING, CLEAN, QUARANTINE, DEVICES = "raw_sensor_readings", "clean_sensor_readings", "quarantine", "devices"
READ_COLUMNS = ["event_id", "device_id", "sensor_type", "value", "unit", "ts", "seq", "timestamp_ingested",
                "kafka_topic", "kafka_partition", "kafka_offset"]
REASONS = ("unknown_device", "inactive_device", "unknown_sensor_type", "unknown_unit", "invalid_value",
           "unparseable_ts")
FLAGS = ("future_timestamp", "out_of_range", "stuck_value")      # quality_reasons in this (sorted) order
QUALITIES = ("GOOD", "SUSPECT", "BAD")
FUTURE_TOLERANCE = dt.timedelta(minutes=5)
STUCK_RUN = 10
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
TS_MIN_US = int((dt.datetime(2000, 1, 1, tzinfo=dt.timezone.utc) - EPOCH).total_seconds()) * 1_000_000
TS_MAX_US = int((dt.datetime(2100, 1, 1, tzinfo=dt.timezone.utc) - EPOCH).total_seconds()) * 1_000_000
EPOCH_TEXT = r"^-?\d{1,15}(\.\d+)?$"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.bench_cleanse_reference", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--devices", type=int, default=350, help="simulated devices (700: ~10M readings over 2 days)")
    p.add_argument("--days", type=float, default=2, help="days of history (one landing version per day)")
    p.add_argument("--interval", type=float, default=60, help="seconds between readings of one sensor")
    p.add_argument("--per_element_rows", type=int, default=500_000,
                   help="about this many rows (whole devices) for the per-element version")
    p.add_argument("--skip_features", action="store_true", help="do not run pipelines.features afterwards")
    p.add_argument("--workdir", default="/tmp/bench_batch",
                   help="where the simulated lake (shared with bench_batch, by parameters) and the runs live")
    return p.parse_args(argv)


# --- inputs ---------------------------------------------------------------------------------------

def landing_files(lake_root: str) -> list[tuple[str, int]]:
    """(file, landing version that added it), in version order."""
    latest = lake.open_table(lake_root, LANDING).version()
    seen: set[str] = set()
    out = []
    for version in range(latest + 1):
        for f in delta.snapshot_files(lake_root, LANDING, version):
            if f.uri not in seen:
                seen.add(f.uri)
                out.append((f.uri, version))
    return out


def subset_lake(source: Path, workdir: str, rows: int) -> Path:
    """A lake with the registry and every k-th device's landing rows (same versions), cached."""
    src = str(source / "lake")
    files = landing_files(src)
    ids = (pl.scan_parquet([f for f, _ in files]).select(pl.col("device_id").unique().sort()).collect())["device_id"]
    total = lake.open_table(src, LANDING).to_pyarrow_dataset().count_rows()
    step = max(1, math.ceil(total / max(rows, 1)))
    target = Path(workdir) / f"{source.name}-every{step}"
    if (target / "lake" / "landing").exists():
        return target
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(Path(lake.table_uri(src, DEVICES)), Path(lake.table_uri(str(target / "lake"), DEVICES)))
    keep = ids.gather(list(range(0, len(ids), step))).to_list()
    for version in sorted({v for _, v in files}):
        part = (pl.read_parquet([f for f, v in files if v == version], columns=READ_COLUMNS)
                .filter(pl.col("device_id").is_in(keep))
                .with_columns(pl.col("timestamp_ingested").dt.date().alias("ingest_date")))
        lake.append(str(target / "lake"), LANDING, part.to_arrow())
    return target


def registry(lake_root: str) -> pl.DataFrame:
    return pl.from_arrow(lake.read(lake_root, DEVICES, columns=["device_id", "timezone", "active"]))


# --- the polars reference -------------------------------------------------------------------------

def conversions() -> pl.DataFrame:
    """(sensor_type, unit) -> scale, offset, canonical unit, valid range (DESIGN section 4)."""
    return pl.DataFrame(
        [(s, u, scale, offset, spec.canonical_unit, spec.valid_min, spec.valid_max)
         for s, spec in SENSORS.items() for u, (scale, offset) in spec.conversions.items()],
        schema=["sensor_type", "unit", "scale", "offset", "canonical", "vmin", "vmax"], orient="row")


def local_to_utc_us(naive: pl.Expr, zone: str) -> pl.Expr:
    """A device-local time in ``zone`` as UTC epoch us: the earlier instant in a DST fold; in a gap, the
    offset in force before it (localize 3 h earlier, add the 3 h back)."""
    local = naive.dt.replace_time_zone(zone, ambiguous="earliest", non_existent="null")
    before_gap = (naive - dt.timedelta(hours=3)).dt.replace_time_zone(
        zone, ambiguous="earliest", non_existent="null") + dt.timedelta(hours=3)
    return pl.coalesce(local, before_gap).dt.epoch("us")


def timestamp_utc(zones: list[str]) -> pl.Expr:
    """`ts` (epoch ms, ISO with offset or Z, ISO local time in the registry zone) as UTC; null otherwise
    (also for a space instead of the ISO 'T', which the project's parser still accepts; the simulator
    writes only the three DESIGN forms)."""
    text = pl.col("ts").str.strip_chars()
    epoch = pl.when(text.str.contains(EPOCH_TEXT)).then((text.cast(pl.Float64, strict=False) * 1000).round(0))
    offset = text.str.to_datetime("%Y-%m-%dT%H:%M:%S%.f%#z", strict=False, time_unit="us").dt.epoch("us")
    naive = text.str.to_datetime("%Y-%m-%dT%H:%M:%S%.f", strict=False, time_unit="us")
    local = pl.coalesce([pl.when(pl.col("timezone") == z).then(local_to_utc_us(naive, z)) for z in zones])
    us = pl.coalesce(epoch.cast(pl.Int64), offset, local)
    return (pl.when((us >= TS_MIN_US) & (us < TS_MAX_US)).then(us).cast(pl.Datetime("us"))
            .dt.replace_time_zone("UTC"))


def quarantine_reason() -> pl.Expr:
    return (pl.when(pl.col("active").is_null()).then(pl.lit("unknown_device"))
            .when(~pl.col("active")).then(pl.lit("inactive_device"))
            .when(~pl.col("sensor_type").is_in(list(SENSORS))).then(pl.lit("unknown_sensor_type"))
            .when(pl.col("scale").is_null()).then(pl.lit("unknown_unit"))
            .when(pl.col("value").is_null() | ~pl.col("value").is_finite()).then(pl.lit("invalid_value"))
            .when(pl.col("timestamp_utc").is_null()).then(pl.lit("unparseable_ts")))


def polars_reference(lake_root: str, out_dir: str) -> dict:
    """Cleanses all landing rows of ``lake_root`` with plain polars; writes clean.parquet and
    quarantine.parquet to ``out_dir``; returns the counts."""
    run_at = dt.datetime.now(dt.timezone.utc)
    landing = pl.concat([pl.read_parquet(f, columns=READ_COLUMNS).with_columns(source_version=pl.lit(v, pl.Int64))
                         for f, v in landing_files(lake_root)])
    devices = registry(lake_root).unique("device_id", keep="last")
    canonical = {s: spec.canonical_unit for s, spec in SENSORS.items()}
    df = (landing
          .join(devices, on="device_id", how="left")
          .with_columns(pl.coalesce("unit", pl.col("sensor_type").replace_strict(canonical, default=None))
                        .alias("_unit"))
          .join(conversions().rename({"unit": "_unit"}), on=["sensor_type", "_unit"], how="left")
          .with_columns(timestamp_utc(devices["timezone"].unique().to_list()).alias("timestamp_utc"))
          .with_columns(quarantine_reason().alias("reason")))

    quarantine = (df.filter(pl.col("reason").is_not_null())
                  .with_columns(pl.lit(run_at).dt.cast_time_unit("us").alias("quarantined_at"))
                  .select(contracts.QUARANTINE.names))
    # dedup by event_id: the earliest ingested copy (ties: landing version, time, value)
    candidates = (df.filter(pl.col("reason").is_null())
                  .with_columns(pl.col("value") * pl.col("scale") + pl.col("offset"), pl.col("canonical").alias("unit"))
                  .sort("event_id", "timestamp_ingested", "source_version", "timestamp_utc", "value")
                  .unique("event_id", keep="first"))
    # stuck: a run of >= STUCK_RUN equal values per device and sensor, in time order
    clean = (candidates
             .sort("device_id", "sensor_type", "timestamp_utc", "event_id")
             .with_columns(pl.col("value").rle_id().over("device_id", "sensor_type").alias("_run"))
             .with_columns(
                 (pl.col("timestamp_utc") > pl.col("timestamp_ingested") + FUTURE_TOLERANCE).alias("future_timestamp"),
                 ((pl.col("value") < pl.col("vmin")) | (pl.col("value") > pl.col("vmax"))).alias("out_of_range"),
                 (pl.len().over("device_id", "sensor_type", "_run") >= STUCK_RUN).alias("stuck_value"))
             .with_columns(
                 pl.concat_list([pl.when(pl.col(f)).then(pl.lit(f)) for f in FLAGS]).list.drop_nulls()
                 .alias("quality_reasons"),
                 pl.when(pl.col("future_timestamp") | pl.col("out_of_range")).then(pl.lit("BAD"))
                 .when(pl.col("stuck_value")).then(pl.lit("SUSPECT")).otherwise(pl.lit("GOOD")).alias("quality"),
                 pl.col("timestamp_utc").dt.date().alias("date")))

    Path(out_dir).mkdir(parents=True, exist_ok=True)
    clean.select(contracts.CLEAN_SENSOR_READINGS.names).write_parquet(f"{out_dir}/clean.parquet")
    quarantine.write_parquet(f"{out_dir}/quarantine.parquet")
    by_reason = dict(quarantine.group_by("reason").len().iter_rows())
    by_quality = dict(clean.group_by("quality").len().iter_rows())
    return {"rows_in": landing.height, "clean": clean.height, "quarantined": quarantine.height,
            "duplicates_removed": df.height - quarantine.height - clean.height,
            "quarantined_by_reason": {r: by_reason.get(r, 0) for r in REASONS},
            "clean_by_quality": {q: by_quality.get(q, 0) for q in QUALITIES},
            "flags": {f: int(clean[f].sum()) for f in FLAGS}}


# --- the per-element Beam version -----------------------------------------------------------------

def _counter(name: str):
    return beam.metrics.Metrics.counter("per_element", name)


# created once: a metric object per row would slow the per-element version for no reason
ROWS_IN, DUPLICATES = _counter("rows_in"), _counter("duplicates_removed")
QUARANTINED = {r: _counter(f"quarantined_{r}") for r in REASONS}
CLEAN_BY_QUALITY = {q: _counter(f"clean_{q}") for q in QUALITIES}
FLAGGED = {f: _counter(f"flag_{f}") for f in FLAGS}

def us_of(t: dt.datetime) -> int:
    return (t - EPOCH) // dt.timedelta(microseconds=1)


def parse_ts_row(text: str | None, zone: str | None) -> int | None:
    """One `ts` as UTC epoch us (zoneinfo's fold=0: earlier instant in a fold, pre-gap offset in a gap)."""
    if text is None:
        return None
    text = text.strip()
    if re.fullmatch(EPOCH_TEXT, text):
        us = round(float(text) * 1000)
    else:
        try:
            t = dt.datetime.fromisoformat(text)
        except ValueError:
            return None
        if t.tzinfo is None:
            if not zone:
                return None
            t = t.replace(tzinfo=ZoneInfo(zone))
        us = us_of(t)
    return us if TS_MIN_US <= us < TS_MAX_US else None


class PrepareRow(beam.DoFn):
    """One landed row -> quarantine row (tagged) or (event_id, candidate with canonical value and flags)."""

    def __init__(self, versions: dict[str, int], run_at: dt.datetime):
        self._versions, self._run_at = versions, run_at

    def process(self, element, devices):
        uri, row = element
        ROWS_IN.inc()
        device = devices.get(row["device_id"])
        spec = SENSORS.get(row["sensor_type"])
        unit = row["unit"] or (spec.canonical_unit if spec else None)
        ts_us = parse_ts_row(row["ts"], device["timezone"] if device else None)
        value = row["value"]
        reason = ("unknown_device" if device is None else "inactive_device" if not device["active"]
                  else "unknown_sensor_type" if spec is None else "unknown_unit" if unit not in spec.conversions
                  else "invalid_value" if value is None or not math.isfinite(value)
                  else "unparseable_ts" if ts_us is None else None)
        version = self._versions[uri]
        if reason:
            QUARANTINED[reason].inc()
            yield beam.pvalue.TaggedOutput(QUARANTINE, dict(row, reason=reason, source_version=version,
                                                            quarantined_at=self._run_at))
            return
        scale, offset = spec.conversions[unit]
        value = value * scale + offset
        ingested_us = us_of(row["timestamp_ingested"])
        yield row["event_id"], dict(
            event_id=row["event_id"], device_id=row["device_id"], sensor_type=row["sensor_type"], value=value,
            unit=spec.canonical_unit, ts_us=ts_us, timestamp_ingested=row["timestamp_ingested"],
            ingested_us=ingested_us, version=version,
            future_timestamp=ts_us > ingested_us + FUTURE_TOLERANCE // dt.timedelta(microseconds=1),
            out_of_range=not spec.valid_min <= value <= spec.valid_max)


def earliest_copy(element):
    _, copies = element
    copies = list(copies)
    DUPLICATES.inc(len(copies) - 1)
    row = min(copies, key=lambda r: (r["ingested_us"], r["version"], r["ts_us"], r["value"]))
    yield (row["device_id"], row["sensor_type"]), row


def flag_series(element):
    """All rows of one device and sensor: stuck runs in time order, then the Contract 2 row."""
    _, rows = element
    rows = sorted(rows, key=lambda r: (r["ts_us"], r["event_id"]))
    start = 0
    for i in range(1, len(rows) + 1):
        if i == len(rows) or rows[i]["value"] != rows[start]["value"]:
            for r in rows[start:i]:
                r["stuck_value"] = i - start >= STUCK_RUN
            start = i
    for r in rows:
        reasons = [f for f in FLAGS if r[f]]
        quality = "BAD" if r["future_timestamp"] or r["out_of_range"] else "SUSPECT" if r["stuck_value"] else "GOOD"
        CLEAN_BY_QUALITY[quality].inc()
        for f in reasons:
            FLAGGED[f].inc()
        t = EPOCH + dt.timedelta(microseconds=r["ts_us"])
        yield dict(event_id=r["event_id"], device_id=r["device_id"], sensor_type=r["sensor_type"], value=r["value"],
                   unit=r["unit"], timestamp_utc=t, timestamp_ingested=r["timestamp_ingested"], quality=quality,
                   quality_reasons=reasons, date=t.date())


def per_element_cleanse(lake_root: str, out_dir: str) -> dict:
    """The per-element Beam cleanse of every landing row of ``lake_root``; returns counts and seconds."""
    from apache_beam.io.parquetio import ReadAllFromParquet, WriteToParquet
    from pipelines import cli
    started = time.monotonic()
    files = landing_files(lake_root)
    registry_files = [f.uri for f in delta.snapshot_files(lake_root, DEVICES)]
    with beam.Pipeline() as p:
        devices = (p | "RegistryFiles" >> beam.Create(registry_files)
                   | "ReadRegistry" >> ReadAllFromParquet(columns=["device_id", "timezone", "active"])
                   | "ById" >> beam.Map(lambda r: (r["device_id"], r)))
        prepared = (p | "LandingFiles" >> beam.Create([f for f, _ in files])
                    | "ReadLanding" >> ReadAllFromParquet(columns=READ_COLUMNS, with_filename=True)
                    | "Prepare" >> beam.ParDo(PrepareRow(dict(files), dt.datetime.now(dt.timezone.utc)),
                                              devices=beam.pvalue.AsDict(devices))
                    .with_output_types(tuple[str, dict]).with_outputs(QUARANTINE, main="candidates"))
        (prepared.candidates
         | "ByEventId" >> beam.GroupByKey()
         | "Dedup" >> beam.FlatMap(earliest_copy)
         | "BySeries" >> beam.GroupByKey()
         | "Flag" >> beam.FlatMap(flag_series)
         | "WriteClean" >> WriteToParquet(f"{out_dir}/clean", contracts.CLEAN_SENSOR_READINGS, file_name_suffix=".parquet"))
        (prepared[QUARANTINE]
         | "WriteQuarantine" >> WriteToParquet(f"{out_dir}/quarantine", contracts.QUARANTINE,
                                               file_name_suffix=".parquet"))
    elapsed = time.monotonic() - started
    c = cli.metric_counters(p.result, "per_element")
    counts = {"rows_in": c.get("rows_in", 0), "duplicates_removed": c.get("duplicates_removed", 0),
              "quarantined_by_reason": {r: c.get(f"quarantined_{r}", 0) for r in REASONS},
              "clean_by_quality": {q: c.get(f"clean_{q}", 0) for q in QUALITIES},
              "flags": {f: c.get(f"flag_{f}", 0) for f in FLAGS}}
    counts["clean"] = sum(counts["clean_by_quality"].values())
    counts["quarantined"] = sum(counts["quarantined_by_reason"].values())
    return {"counts": counts, "elapsed_s": elapsed}


# --- the vectorised Beam pipelines ----------------------------------------------------------------

def beam_cleanse(lake_root: str) -> dict:
    from pipelines import cleanse
    with contextlib.redirect_stdout(sys.stderr):      # its own report: keep stdout to the table and JSON
        s = cleanse.run(["--lake", lake_root])
    keys = ("rows_in", "clean", "quarantined", "duplicates_removed", "quarantined_by_reason", "clean_by_quality",
            "flags")
    return {"counts": {k: s[k] for k in keys}, "elapsed_s": s["elapsed_s"], "reconciles": s["reconciles"]}


def beam_features(lake_root: str) -> dict:
    from pipelines import features
    with contextlib.redirect_stdout(sys.stderr):
        s = features.run(["--lake", lake_root])
    return {"rows": s["clean_rows_read"], "feature_rows": s["feature_rows"], "elapsed_s": s["elapsed_s"]}


# --- comparison and report ------------------------------------------------------------------------

def clean_digest(files: list[str]) -> int:
    """Order-independent hash of every clean row's columns (equal digests: the same clean rows)."""
    # date is left out: delta files keep it in the path only (and it follows from timestamp_utc)
    cols = [c for c in contracts.CLEAN_SENSOR_READINGS.names if c not in ("quality_reasons", "date")]
    row = pl.concat_str([pl.col(c).cast(pl.Utf8) for c in cols] + [pl.col("quality_reasons").list.join(",")],
                        separator="|")
    return int(pl.scan_parquet(files, hive_partitioning=False).select((row.hash(7) % 1_000_000_007).sum())
               .collect().item())


def flat(counts: dict) -> dict[str, int]:
    out = {}
    for k, v in counts.items():
        out.update({f"{k}.{kk}": vv for kk, vv in v.items()} if isinstance(v, dict) else {k: v})
    return out


def mismatches(reference: dict, other: dict) -> list[str]:
    a, b = flat(reference), flat(other)
    return [f"{k}: {a.get(k)} vs {b.get(k)}" for k in sorted(a.keys() | b.keys()) if a.get(k) != b.get(k)]


def timed(name: str, fn, *args) -> dict:
    print(f"... {name}", file=sys.stderr, flush=True)
    started = time.monotonic()
    out = fn(*args)
    return out if isinstance(out, dict) and "elapsed_s" in out else {"counts": out, "elapsed_s": time.monotonic() - started}


def measure_on(lake_root: str, out: Path, with_per_element: bool) -> dict:
    """Beam cleanse, polars reference (and per-element) on one lake: counts, digests, seconds."""
    runs = {"beam": timed("vectorised Beam cleanse", beam_cleanse, lake_root)}
    runs["beam"]["digest"] = clean_digest([f.uri for f in delta.snapshot_files(lake_root, CLEAN)])
    runs["polars"] = timed("polars reference", polars_reference, lake_root, str(out / "polars"))
    runs["polars"]["digest"] = clean_digest([str(out / "polars" / "clean.parquet")])
    if with_per_element:
        runs["per_element"] = timed("per-element Beam cleanse", per_element_cleanse, lake_root, str(out / "pe"))
        runs["per_element"]["digest"] = clean_digest([str(f) for f in (out / "pe").glob("clean*.parquet")])
    rows = runs["beam"]["counts"]["rows_in"]
    for name, r in runs.items():
        r["elapsed_s"] = round(r["elapsed_s"], 2)
        r["rows_per_s"] = round(r["counts"]["rows_in"] / r["elapsed_s"])
        if name != "polars":     # the polars reference is what the others are checked against
            r["mismatches"] = mismatches(runs["polars"]["counts"], r["counts"])
            if r["digest"] != runs["polars"]["digest"]:
                r["mismatches"].append("clean rows digest differs")
    return {"rows": rows, "runs": runs}


def measure(args) -> dict:
    import transforms.validation  # noqa: F401  (TensorFlow's import, once, outside the timings)
    from pipelines import cli
    cli.setup_logging("WARNING")
    load_start = round(os.getloadavg()[0], 2)     # other work on the machine skews every figure
    source = simulated_lake(args)
    out = Path(args.workdir) / "cleanse-reference-out"
    shutil.rmtree(out, ignore_errors=True)
    full_lake = fresh_copy(source, args.workdir, "run-cleanse-reference")
    full = measure_on(full_lake, out / "full", with_per_element=False)
    if not args.skip_features:
        full["features"] = timed("Beam features", beam_features, full_lake)
        full["features"]["rows_per_s"] = round(full["features"]["rows"] / full["features"]["elapsed_s"])
    subset_source = subset_lake(source, args.workdir, args.per_element_rows)
    subset = measure_on(fresh_copy(subset_source, args.workdir, "run-cleanse-reference"), out / "subset", True)
    shutil.rmtree(Path(args.workdir) / "run-cleanse-reference", ignore_errors=True)
    shutil.rmtree(out, ignore_errors=True)
    b, pol, pe = full["runs"]["beam"], full["runs"]["polars"], subset["runs"]["per_element"]
    ratios = {"beam_vs_polars": round(b["rows_per_s"] / pol["rows_per_s"], 3),
              "beam_vs_per_element": round(b["rows_per_s"] / pe["rows_per_s"], 1),
              "beam_vs_per_element_same_subset": round(subset["runs"]["beam"]["rows_per_s"] / pe["rows_per_s"], 1),
              "beam_vs_polars_subset": round(subset["runs"]["beam"]["rows_per_s"] / subset["runs"]["polars"]["rows_per_s"], 3)}
    all_runs = list(full["runs"].items()) + list(subset["runs"].items())
    return {"runner": "DirectRunner", "machine": machine(), "load_avg_1m": [load_start, round(os.getloadavg()[0], 2)],
            "devices": args.devices, "days": args.days, "interval_s": args.interval,
            "full": full, "subset": subset, "ratios": ratios,
            "goals": {"beam_vs_polars_ge_0.3": ratios["beam_vs_polars"] >= 0.3,
                      "beam_vs_per_element_ge_20": ratios["beam_vs_per_element"] >= 20},
            "counts_match": all(not r.get("mismatches") for _, r in all_runs)}


def render(r: dict) -> str:
    m = r["machine"]
    lines = [f"cleanse beside references, {r['runner']} (in-process), {m['cpus']} cores, {m['ram_gib']} GiB RAM, "
             f"{m['cpu_model']}, load (1 min) {r['load_avg_1m'][0]} at start, {r['load_avg_1m'][1]} at end",
             f"input: simulated landing, {r['devices']} devices x {r['days']:g} days every {r['interval_s']:g} s "
             f"= {r['full']['rows']:,} rows; subset: every k-th device = {r['subset']['rows']:,} rows",
             f"{'input':<7} {'implementation':<30} {'rows':>11} {'seconds':>8} {'rows/s':>9}  counts vs polars"]
    names = {"beam": "Beam cleanse (vectorised)", "polars": "polars reference", "per_element": "Beam per-element"}
    for label in ("full", "subset"):
        for name, run in r[label]["runs"].items():
            check = "(reference)" if name == "polars" else "match" if not run["mismatches"] else \
                "MISMATCH: " + "; ".join(run["mismatches"])
            lines.append(f"{label:<7} {names[name]:<30} {run['counts']['rows_in']:>11,} {run['elapsed_s']:>8.1f} "
                         f"{run['rows_per_s']:>9,}  {check}")
    if "features" in r["full"]:
        f = r["full"]["features"]
        lines.append(f"{'full':<7} {'Beam features (clean rows in)':<30} {f['rows']:>11,} {f['elapsed_s']:>8.1f} "
                     f"{f['rows_per_s']:>9,}  {f['feature_rows']:,} feature rows")
    x, g = r["ratios"], r["goals"]
    c = r["full"]["runs"]["polars"]["counts"]
    lines += [f"full input: clean {c['clean']:,}, quarantined {c['quarantined']:,}, duplicates removed "
              f"{c['duplicates_removed']:,}, flags " + ", ".join(f"{k} {v:,}" for k, v in c["flags"].items()),
              f"Beam / polars (full)                     {x['beam_vs_polars']:>6}x   goal >= 0.3x: "
              f"{'yes' if g['beam_vs_polars_ge_0.3'] else 'NO'}",
              f"Beam (full) / per-element (subset)       {x['beam_vs_per_element']:>6}x   goal >= 20x: "
              f"{'yes' if g['beam_vs_per_element_ge_20'] else 'NO'}",
              f"Beam / per-element (both on the subset)  {x['beam_vs_per_element_same_subset']:>6}x",
              f"Beam / polars (subset)                   {x['beam_vs_polars_subset']:>6}x",
              f"counts and clean rows agree across implementations: {'yes' if r['counts_match'] else 'NO'}"]
    return "\n".join(lines)


def main(argv=None) -> int:
    result = measure(parse_args(argv))
    print(render(result))
    print("BENCH_CLEANSE_REFERENCE " + json.dumps(result, sort_keys=True))
    return 0 if result["counts_match"] else 1


if __name__ == "__main__":
    sys.exit(main())
