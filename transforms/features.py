"""Windowed features per device from clean readings (the features table).

Vectorised logic (polars over Arrow tables) plus the composite PTransforms run by
``pipelines.features``. Definitions, and why:

* Windows are tumbling and aligned to the Unix epoch in UTC (a 1d window is a UTC day); sizes are
  an option (``30s``, ``15m``, ``1h``, ``1d``...). ``date`` is the UTC date of ``window_start``.
* One row per device and window holding at least one clean reading of any quality. The statistics
  below use GOOD readings only; a sensor without GOOD readings has ``count`` 0, ``missing_ratio`` 1
  and null statistics. So that no reading vanishes from the model inputs (an overload beyond the
  valid range is BAD, a stuck sensor SUSPECT), every sensor also has ``all_min`` and ``all_max``, the
  extremes of its readings of any quality (null without readings), and ``bad_count`` and
  ``suspect_count``, its BAD and SUSPECT readings in the window.
* Per sensor: ``mean``; ``std`` (sample, n-1; null below 2 readings); ``min``; ``max``; ``last`` (the
  value of the latest reading); ``slope`` (least squares, canonical unit per minute; null below two
  distinct times); ``count``; ``missing_ratio`` = 1 - count / expected, clipped to [0, 1], where
  expected = window length / sampling interval and the interval is the median gap between
  consecutive readings of one sensor of the device in the window (any quality; the registry holds
  no interval), or ``default_interval_s`` when no sensor has two readings there. A regular grid puts
  floor(W/I) or ceil(W/I) readings into a window of length W, so expected is floor(W/I) (plus a
  little slack for timestamp jitter): a healthy device has missing_ratio 0 whatever its phase.
* Cross-sensor, from the window means: ``pressure_ratio`` = discharge / suction pressure;
  saturation temperatures from the pressures by a Clausius-Clapeyron fit for R134a (the registry
  names no refrigerant, so these are proxies that track change, not absolute thermodynamics):
  ``current_per_lift`` = current / (T_sat(discharge) - T_sat(suction)) in A per K of temperature
  lift, and ``superheat_proxy`` = temperature - T_sat(suction).
* Incremental by time. The watermark is the newest ``timestamp_ingested`` in clean minus the
  allowed lateness; a window is computed once it has closed (end <= watermark), so features never
  describe half a window. Each run computes the windows that closed since the previous run's
  watermark (recorded per window size in the commit) and recomputes, from all their clean rows,
  the closed windows that clean rows new since the previous run fall into (late data). Recomputed
  windows replace their old rows: the partitions (window_size x date) they live in are rewritten
  in the run's single commit (the old rows of other windows carried over), so the table never
  holds two rows of one window.

Scale: clean files are chosen by their ``timestamp_utc`` statistics, so a run reads the hours its
closing windows span (a day once a day for 1d windows). A late reading makes its whole window be
recomputed for its device, and the files of that span are read for all devices and filtered: a
late reading in a closed 1d window re-reads that day. Allowed lateness above the usual ingestion
delay keeps this rare; clean files clustered by device shard would bound it to one shard. Every
element crossing a shuffle is an Arrow table within ``FeaturesConfig.chunk`` (:mod:`transforms.arrow`):
a key's rows are grouped as many chunks and concatenated in its DoFn; the late windows reach
their consumers as a side input of bounded chunks, deduplicated once per DoFn instance. On Flink a
key's chunks become ONE record before the sort, so a key's total is bounded too: rows are keyed by
(device shard, time bucket), both sized per run from the clean files' statistics
(:func:`shard_layout`, :class:`ShardLayout`), so each key carries about a quarter of
``FeaturesConfig.group_bytes`` (4 MB) and every window of a device lies whole in one key.
"""
from __future__ import annotations

import datetime as dt
import logging
import math
from dataclasses import dataclass, field

import apache_beam as beam
import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
from apache_beam.metrics import Metrics

from schemas import contracts
from schemas.sensors import SENSOR_TYPES
from transforms import delta
from core import lake
from transforms.arrow import DEFAULT_BOUND, ChunkBound, ChunkTables, ElementSizes, Gather, ReadParquetChunks
from core.arrays import to_numpy
from core.windows import MODEL_WINDOW, WindowSize, parse_window_sizes
from transforms.arrow import SideTable, chunks
from transforms.cleansing import BAD, CLEAN, GOOD, SUSPECT, files_overlapping, shard_of

log = logging.getLogger(__name__)

FEATURES = "features"
APP = "features"
US = 1_000_000
ROW_COLUMNS = ["device_id", "sensor_type", "value", "timestamp_utc", "quality"]
GROUP_BYTES = 4 << 20       # well under Flink's 6,684,672-byte sort-buffer record limit
SHARD_FILL = 0.25           # shards are sized for a quarter of the bound: devices hash unevenly into shards
# Arrow bytes of one row of ROW_COLUMNS besides its device id: offsets, sensor type, value, time, quality
ROW_FIXED_BYTES = 3 * 4 + max(map(len, SENSOR_TYPES)) + 8 + 8 + max(map(len, contracts.QUALITY_LEVELS))
TABLES_PARTITIONS = contracts.TABLES[FEATURES].partition_by
LATE_SCHEMA = pa.schema([("device_id", pa.string()), ("window_size", pa.string()), ("window_start", pa.int64())])
# R134a saturation pressure (kPa) ~ exp(A - B / T[K]); fitted at 0 and 40 C, within 2 % from -26 to 60 C
SAT_A, SAT_B = 15.421, 2661.0
EXPECTED_SLACK = 0.05      # of one sampling interval


@dataclass(frozen=True)
class FeaturesConfig:
    sizes: tuple[WindowSize, ...] = parse_window_sizes(f"15m,{MODEL_WINDOW},1d")   # always the model window
    default_interval_s: float = 60.0
    shards: int = 8                          # fewest device shards (more when the run's volume needs them)
    chunk: ChunkBound = DEFAULT_BOUND        # most rows/bytes of one table element crossing a shuffle
    group_bytes: int = GROUP_BYTES           # most bytes all elements of one ByShard key should carry


@dataclass(frozen=True)
class ShardLayout:
    """How the rows a run computes are keyed for the one grouping: (device shard, time bucket).

    Beam's Flink batch translator concatenates all values of a key into ONE record before its sort,
    so a key's total, not each element, must stay under Flink's sort-buffer limit. A key holds the
    rows of its devices within one time bucket: a multiple of every window size, aligned to the
    epoch like the windows, so every window of a device lies whole in one key."""
    shards: int
    bucket_us: int

    def keys(self, rows: pl.DataFrame) -> list[pl.Series]:
        return [shard_of(rows, self.shards).alias("_shard"), (_epoch_us() // self.bucket_us).alias("_bucket")]


@dataclass(frozen=True)
class FeaturesPlan:
    """What one run reads and writes; computed from Delta metadata before the pipeline starts."""
    lake: str
    clean_after: int                             # clean version consumed by the previous run (-1: none)
    clean_upto: int                              # clean version this run reads
    new_files: tuple[delta.DeltaFile, ...]       # clean files of versions (clean_after, clean_upto]
    previous: dict[str, int | None]              # window size -> watermark (us) of the previous run
    watermark_us: int
    features_version: int | None
    missing_columns: tuple[str, ...] = ()      # contract columns the features table's schema lacks
    computed_at: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.timezone.utc))

    def closing(self, size: WindowSize) -> tuple[int | None, int]:
        """Windows with end in (previous, watermark] close in this run."""
        return self.previous.get(size.label), max(self.watermark_us, self.previous.get(size.label) or 0)

    def inputs(self, sizes) -> dict:
        return {CLEAN: [self.clean_after, self.clean_upto],
                "watermarks_us": {s.label: self.closing(s)[1] for s in sizes}}

    def schema_upgrade_filters(self) -> list[tuple]:
        """Filters of an overwrite that replaces nothing, for a table written before columns were added:
        delta-rs 0.18 updates a table's schema in an overwrite only (an append would keep the old schema
        and hide the new columns). Its rows read the added columns as nulls."""
        return [("window_size", "=", "")] if self.missing_columns else []

    def commit_id(self, sizes) -> str:
        return f"{APP}/{self.clean_after}-{self.clean_upto}/{'+'.join(s.label for s in sizes)}"


# --- pure functions -------------------------------------------------------------------------------

def _epoch_us(col: str = "timestamp_utc") -> pl.Expr:
    return pl.col(col).dt.epoch("us")


def with_window(rows: pl.DataFrame, size: WindowSize) -> pl.DataFrame:
    return rows.with_columns((_epoch_us() // size.us * size.us).alias("_ws"))


def late_windows(new_rows: pl.DataFrame, plan: FeaturesPlan, sizes) -> pl.DataFrame:
    """(device_id, window_size, window_start us) of closed windows that new clean rows fall into."""
    parts = []
    for size in sizes:
        previous = plan.previous.get(size.label)
        if previous is None or new_rows.height == 0:
            continue
        w = with_window(new_rows.select("device_id", "timestamp_utc"), size)
        w = w.filter(pl.col("_ws") + size.us <= previous).select(
            "device_id", pl.lit(size.label).alias("window_size"), pl.col("_ws").alias("window_start")).unique()
        parts.append(w)
    return pl.concat(parts) if parts else pl.from_arrow(LATE_SCHEMA.empty_table())


def window_mask(rows: pl.DataFrame, size: WindowSize, plan: FeaturesPlan, late: pl.DataFrame) -> pl.Series:
    """True for rows (with ``_ws`` of ``size``) of windows this run computes: closing or late ones."""
    previous, watermark = plan.closing(size)
    end = pl.col("_ws") + size.us
    closing = rows.select((end <= watermark) & (end > previous if previous is not None else pl.lit(True))).to_series()
    mine = late.filter(pl.col("window_size") == size.label).select("device_id", pl.col("window_start").alias("_ws"))
    if mine.height == 0:
        return closing
    is_late = rows.select("device_id", "_ws").join(mine.with_columns(_late=pl.lit(True)), on=["device_id", "_ws"],
                                                   how="left", maintain_order="left")["_late"].fill_null(False)
    return closing | is_late


def select_windows(rows: pl.DataFrame, size: WindowSize, plan: FeaturesPlan, late: pl.DataFrame) -> pl.DataFrame:
    """Rows (with ``_ws``) of the windows this run computes for ``size``."""
    w = with_window(rows, size)
    return w.filter(window_mask(w, size, plan, late))


def read_intervals(plan: FeaturesPlan, sizes, late: pl.DataFrame) -> list[tuple[int, int]]:
    """[start, end) in us of clean data the run needs: closing windows of every size, late windows."""
    spans = []
    for size in sizes:
        previous, watermark = plan.closing(size)
        lo = (previous // size.us) * size.us if previous is not None else 0
        hi = (watermark // size.us) * size.us
        if hi > lo:
            spans.append((lo, hi))
        mine = late.filter(pl.col("window_size") == size.label)["window_start"].unique().sort().to_list()
        spans += [(s, s + size.us) for s in mine]
    merged: list[list[int]] = []
    for lo, hi in sorted(spans):
        if merged and lo <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], hi)
        else:
            merged.append([lo, hi])
    return [(a, b) for a, b in merged]


def _sensor_stats(good: pl.DataFrame) -> pl.DataFrame:
    t = (_epoch_us() - pl.col("_ws")) / 60e6          # minutes into the window
    slope = pl.cov(t, pl.col("value")) / t.var()
    return (good.group_by("device_id", "_ws", "sensor_type").agg(
        pl.col("value").mean().alias("mean"),
        pl.col("value").std().alias("std"),
        pl.col("value").min().alias("min"),
        pl.col("value").max().alias("max"),
        pl.col("value").sort_by(["timestamp_utc", "value"]).last().alias("last"),
        pl.when(slope.is_finite()).then(slope).otherwise(None).alias("slope"),
        pl.len().cast(pl.Int64).alias("count")))


def _quality_stats(rows: pl.DataFrame) -> pl.DataFrame:
    """Per sensor, over readings of every quality: the extremes and the BAD and SUSPECT counts."""
    quality = pl.col("quality")
    return (rows.group_by("device_id", "_ws", "sensor_type").agg(
        pl.col("value").min().alias("all_min"),
        pl.col("value").max().alias("all_max"),
        (quality == BAD).sum().cast(pl.Int64).alias("bad_count"),
        (quality == SUSPECT).sum().cast(pl.Int64).alias("suspect_count")))


def _intervals(rows: pl.DataFrame, default_s: float) -> pl.DataFrame:
    """Median gap (us) between consecutive readings of one sensor, per device and window."""
    gaps = (rows.select("device_id", "_ws", "sensor_type", _epoch_us().alias("_t"))
            .sort("device_id", "_ws", "sensor_type", "_t")
            .with_columns(pl.col("_t").diff().over("device_id", "_ws", "sensor_type").alias("_gap")))
    return (gaps.group_by("device_id", "_ws")
            .agg(pl.col("_gap").filter(pl.col("_gap") > 0).median().alias("_interval"))
            .with_columns(pl.col("_interval").fill_null(default_s * US)))


def saturation_c(pressure_kpa: pl.Expr) -> pl.Expr:
    return pl.when(pressure_kpa > 0).then(SAT_B / (SAT_A - pressure_kpa.log()) - 273.15).otherwise(None)


def cross_features(wide: pl.DataFrame) -> pl.DataFrame:
    suction, discharge = pl.col("suction_pressure_mean"), pl.col("discharge_pressure_mean")
    lift = saturation_c(discharge) - saturation_c(suction)
    return wide.with_columns(
        pl.when(suction > 0).then(discharge / suction).otherwise(None).alias("pressure_ratio"),
        pl.when(lift > 0).then(pl.col("compressor_current_mean") / lift).otherwise(None).alias("current_per_lift"),
        (pl.col("temperature_mean") - saturation_c(suction)).alias("superheat_proxy"))


def window_features(rows: pl.DataFrame, size: WindowSize, default_interval_s: float,
                    computed_at: dt.datetime) -> pl.DataFrame:
    """Feature rows of the windows in ``rows`` (which carry ``_ws``), in the FEATURES schema."""
    windows = _intervals(rows, default_interval_s).with_columns(
        (pl.lit(size.us) / pl.col("_interval") + EXPECTED_SLACK).floor().clip(lower_bound=1).alias("_expected"))
    keys = ["device_id", "_ws", "sensor_type"]
    stats = _quality_stats(rows).join(_sensor_stats(rows.filter(pl.col("quality") == GOOD)), on=keys, how="left")
    wide = windows
    for sensor in SENSOR_TYPES:
        s = stats.filter(pl.col("sensor_type") == sensor).drop("sensor_type")
        s = s.rename({c: f"{sensor}_{c}" for c in s.columns if c not in ("device_id", "_ws")})
        wide = wide.join(s, on=["device_id", "_ws"], how="left")
        count = pl.col(f"{sensor}_count").fill_null(0)
        counts = (pl.col(f"{sensor}_{c}").fill_null(0) for c in ("count", "bad_count", "suspect_count"))
        wide = wide.with_columns(*counts,
                                 (1 - count / pl.col("_expected")).clip(0, 1).alias(f"{sensor}_missing_ratio"))
    start = pl.from_epoch(pl.col("_ws"), time_unit="us").dt.replace_time_zone("UTC")
    out = cross_features(wide).with_columns(
        pl.lit(size.label).alias("window_size"), start.alias("window_start"),
        (start + dt.timedelta(seconds=size.seconds)).alias("window_end"),
        pl.lit(computed_at).dt.cast_time_unit("us").dt.convert_time_zone("UTC").alias("computed_at"),
        start.dt.date().alias("date"))
    return out.select(contracts.FEATURES.names).sort("device_id", "window_start")


def compute_features(rows: pl.DataFrame, plan: FeaturesPlan, config: FeaturesConfig,
                     late: pl.DataFrame) -> pa.Table:
    """Features of every window this run computes that ``rows`` (all of its devices' rows) cover."""
    parts = []
    for size in config.sizes:
        selected = select_windows(rows, size, plan, late)
        if selected.height:
            parts.append(window_features(selected, size, config.default_interval_s, plan.computed_at))
    if not parts:
        return contracts.FEATURES.empty_table()
    return lake.conform(FEATURES, pl.concat(parts).to_arrow())


def split_by_key(rows: pl.DataFrame, layout: ShardLayout, bound: ChunkBound):
    """((shard, bucket), Arrow table) pairs of the rows, each table within ``bound``."""
    if rows.height == 0:
        return
    keyed = rows.with_columns(*layout.keys(rows))
    for (shard, bucket), part in keyed.partition_by("_shard", "_bucket", as_dict=True).items():
        for table in chunks(part.drop("_shard", "_bucket").to_arrow(), bound):
            yield (int(shard), int(bucket)), table


def replaced_partitions(late: pl.DataFrame) -> list[tuple]:
    """delta-rs partition filters of the partitions late windows live in ([] when none).

    One conjunction can only say sizes x dates; partitions in that product without a late window
    are rewritten unchanged, which costs a little I/O and keeps the commit single."""
    if late.height == 0:
        return []
    dates = (pl.from_epoch(late["window_start"], time_unit="us").dt.date().unique().sort().cast(pl.Utf8).to_list())
    return [("window_size", "in", sorted(late["window_size"].unique().to_list())), ("date", "in", dates)]


def partition_values_of(path: str) -> dict[str, str]:
    out = {}
    for segment in path.split("/")[:-1]:
        if "=" in segment:
            key, value = segment.split("=", 1)
            out[key] = lake._unquote(value)
    return out


def with_added_columns(old: pa.Table) -> pa.Table:
    """Rows of a file written before columns were added to the contract, with those (nullable)
    columns as nulls: what Delta reads for a column a file does not have."""
    partitions = TABLES_PARTITIONS
    for f in contracts.FEATURES:
        if f.name not in old.column_names and f.name not in partitions:
            if not f.nullable:
                raise ValueError(f"features file without the required column {f.name!r}")
            old = old.append_column(f, pa.nulls(old.num_rows, f.type))
    return old


def carry_over(old: pa.Table, uri: str, late: pl.DataFrame) -> pa.Table:
    """Old feature rows of a rewritten partition, minus the windows recomputed in this run."""
    parts = partition_values_of(uri)
    values = {"window_size": parts["window_size"], "date": dt.date.fromisoformat(parts["date"])}
    data = delta.with_partition_columns(FEATURES, with_added_columns(old), sorted(values.items()))
    frame = pl.from_arrow(data)
    keys = late.filter(pl.col("window_size") == parts.get("window_size")).select(
        "device_id", pl.from_epoch(pl.col("window_start"), time_unit="us").dt.replace_time_zone("UTC"))
    kept = frame.join(keys, on=["device_id", "window_start"], how="anti", maintain_order="left")
    return lake.conform(FEATURES, kept.to_arrow())


# --- Beam ---------------------------------------------------------------------------------------

def _concat_late(tables: list[pa.Table]) -> pa.Table:
    tables = [t for t in tables if t.num_rows]
    if not tables:
        return LATE_SCHEMA.empty_table()
    return pl.from_arrow(pa.concat_tables(tables)).unique().sort("window_size", "device_id", "window_start").to_arrow()


def _late_frame(tables: list[pa.Table]) -> pl.DataFrame:
    return pl.from_arrow(_concat_late(tables))


def _late_side(late) -> beam.pvalue.AsList:
    """The late windows as a side input: a list of bounded chunks (see :class:`SideTable`)."""
    return beam.pvalue.AsList(late)


class _LateWindows(beam.DoFn):
    def __init__(self, plan: FeaturesPlan, config: FeaturesConfig):
        self._plan, self._config = plan, config
        self._new_rows = Metrics.counter(APP, "new_clean_rows")

    def process(self, table: pa.Table):
        self._new_rows.inc(table.num_rows)
        late = late_windows(pl.from_arrow(table), self._plan, self._config.sizes)
        if late.height:
            yield late.to_arrow().cast(LATE_SCHEMA)


class _CleanFiles(beam.DoFn):
    def __init__(self, plan: FeaturesPlan, config: FeaturesConfig):
        self._plan, self._config = plan, config
        self._late = SideTable(_late_frame)
        self._files = Metrics.counter(APP, "clean_files_read")

    def process(self, _, late_chunks):
        intervals = read_intervals(self._plan, self._config.sizes, self._late.get(late_chunks))
        for uri in files_overlapping(self._plan.lake, CLEAN, self._plan.clean_upto, "timestamp_utc", intervals):
            self._files.inc()
            yield uri


class _SelectRows(beam.DoFn):
    """Clean rows of the windows this run computes, keyed by device shard."""

    def __init__(self, plan: FeaturesPlan, config: FeaturesConfig, layout: ShardLayout):
        self._plan, self._config, self._layout = plan, config, layout
        self._late = SideTable(_late_frame)
        self._read = Metrics.counter(APP, "clean_rows_read")
        self._selected = Metrics.counter(APP, "clean_rows_selected")

    def setup(self):
        self._sizes = ElementSizes("features_rows")

    def process(self, table: pa.Table, late_chunks):
        self._read.inc(table.num_rows)
        rows = pl.from_arrow(table.select(ROW_COLUMNS))
        late_frame = self._late.get(late_chunks)
        keep = pl.repeat(False, rows.height, eager=True)
        for size in self._config.sizes:
            keep = keep | window_mask(with_window(rows, size), size, self._plan, late_frame)
        rows = rows.filter(keep)
        self._selected.inc(rows.height)
        for key, part in split_by_key(rows, self._layout, self._config.chunk):
            yield key, self._sizes.observe(part)


class _ComputeFeatures(beam.DoFn):
    def __init__(self, plan: FeaturesPlan, config: FeaturesConfig):
        self._plan, self._config = plan, config
        self._late = SideTable(_late_frame)
        self._rows = Metrics.counter(APP, "feature_rows")
        self._groups = Metrics.counter(APP, "groups")
        # what one key carried in total: what Flink's batch GroupByKey makes one record of
        self._group_bytes = Metrics.distribution(APP, "group_bytes")

    def process(self, element, late_chunks):
        _, tables = element
        tables = list(tables)
        self._groups.inc()
        self._group_bytes.update(sum(t.nbytes for t in tables))
        # all chunks of the shard, in a fixed row order: the float sums, hence the features, are
        # identical on every runner and for every chunking
        rows = (pl.from_arrow(pa.concat_tables(tables)).rechunk()
                .sort("device_id", "sensor_type", "timestamp_utc", "value"))
        out = compute_features(rows, self._plan, self._config, self._late.get(late_chunks))
        self._rows.inc(out.num_rows)
        yield out


class _OldFiles(beam.DoFn):
    def __init__(self, plan: FeaturesPlan):
        self._plan = plan
        self._late = SideTable(_late_frame)

    def process(self, _, late_chunks):
        filters = replaced_partitions(self._late.get(late_chunks))
        if not filters or self._plan.features_version is None:
            return
        table = lake.open_table(self._plan.lake, FEATURES, self._plan.features_version)
        root = lake.table_uri(self._plan.lake, FEATURES)
        for path in sorted(table.files(filters)):
            yield f"{root}/{path}"


class _CarryOver(beam.DoFn):
    def __init__(self):
        self._late = SideTable(_late_frame)
        self._rows = Metrics.counter(APP, "carried_over_rows")

    def process(self, element, late_chunks):
        uri, old = element
        kept = carry_over(old, uri, self._late.get(late_chunks))
        self._rows.inc(kept.num_rows)
        yield kept


class ComputeFeatures(beam.PTransform):
    """Clean data of a plan -> (feature tables to write, the late windows as bounded Arrow chunks:
    pass them on as a side input with ``beam.pvalue.AsList``)."""

    def __init__(self, plan: FeaturesPlan, config: FeaturesConfig, layout: ShardLayout | None = None):
        super().__init__()
        self._plan, self._config = plan, config
        self.layout = layout or shard_layout(plan, config)

    def expand(self, pbegin):
        plan, config = self._plan, self._config
        late = (pbegin
                | "ReadNew" >> delta.ReadDeltaFiles(CLEAN, list(plan.new_files), columns=["device_id", "timestamp_utc"],
                                                    bound=config.chunk)
                | "LateWindows" >> beam.ParDo(_LateWindows(plan, config))
                | "LateChunks" >> ChunkTables("features_late", config.chunk))
        late_si = _late_side(late)
        once = pbegin | "Once" >> beam.Create([None])
        features = (once
                    | "CleanFiles" >> beam.ParDo(_CleanFiles(plan, config), late_si)
                    | "ReadClean" >> ReadParquetChunks(columns=ROW_COLUMNS, bound=config.chunk, site="features_clean")
                    | "SelectRows" >> beam.ParDo(_SelectRows(plan, config, self.layout), late_si)
                    | "ByShard" >> beam.GroupByKey()
                    | "Features" >> beam.ParDo(_ComputeFeatures(plan, config), late_si))
        carried = (once
                   | "OldFiles" >> beam.ParDo(_OldFiles(plan), late_si)
                   | "ReadOld" >> ReadParquetChunks(with_filename=True, bound=config.chunk, site="features_old")
                   | "CarryOver" >> beam.ParDo(_CarryOver(), late_si))
        out = (features, carried) | "All" >> beam.Flatten() | "OutChunks" >> ChunkTables("features_out", config.chunk)
        return out, late


class _Commit(beam.DoFn):
    def __init__(self, plan: FeaturesPlan, sizes):
        self._plan = plan
        self._meta = dict(app=APP, commit_id=plan.commit_id(sizes), inputs=plan.inputs(sizes))
        self._late = SideTable(_late_frame)
        self._commits = Metrics.counter(APP, "commits")

    def process(self, files: list, report, late_chunks):
        if report is not None and report.hard_breaks:
            from transforms.validation import ContractViolation
            raise ContractViolation(report)
        filters = replaced_partitions(self._late.get(late_chunks)) or self._plan.schema_upgrade_filters()
        version = lake.commit_files(self._plan.lake, FEATURES, sorted(files, key=lambda f: f.path), **self._meta,
                                    mode="overwrite" if filters else "append", partition_filters=filters or None,
                                    read_version=self._plan.features_version)
        self._commits.inc()
        log.info("committed %d files (%d rows) to features as version %d, replacing partitions %s", len(files),
                 sum(f.num_rows for f in files), version, filters or "none")
        yield version


class WriteFeatures(beam.PTransform):
    """Writes feature tables in ONE commit that also replaces the partitions late windows touched;
    TFDV-validated first (a hard break fails the run before the commit, drift is reported)."""

    def __init__(self, plan: FeaturesPlan, sizes, late, baseline=None, sample_rate: float | None = None):
        super().__init__()
        self._plan, self._sizes, self._late = plan, sizes, late
        self._baseline, self._sample_rate = baseline, sample_rate

    def expand(self, tables):
        from transforms.validation import ValidateContract
        files = (tables
                 | "WriteFiles" >> beam.ParDo(delta._WriteFiles(self._plan.lake, FEATURES))
                 | "AllFiles" >> Gather())
        report = tables | "Validate" >> ValidateContract(FEATURES, self._baseline, self._sample_rate)
        return files | "Commit" >> beam.ParDo(_Commit(self._plan, self._sizes),
                                              report=beam.pvalue.AsSingleton(report),
                                              late_chunks=_late_side(self._late))


# --- planning (driver side, Delta metadata only) ----------------------------------------------

def newest_ingestion_us(lake_root: str, version: int) -> int | None:
    """Newest ``timestamp_ingested`` in clean at ``version``, from the files' statistics."""
    actions = lake.open_table(lake_root, CLEAN, version).get_add_actions(flatten=True)
    column = "max.timestamp_ingested"
    if actions.num_rows == 0:
        return None
    if column in actions.schema.names and actions[column].null_count == 0:
        return int(pc.max(actions[column].cast(pa.int64())).as_py())
    data = lake.read(lake_root, CLEAN, version, columns=["timestamp_ingested"])
    return int(pc.max(data["timestamp_ingested"].cast(pa.int64())).as_py()) if data.num_rows else None


def rows_per_bucket(lo: np.ndarray, hi: np.ndarray, rows: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Rows between consecutive ``edges`` (us) of files holding ``rows`` rows with times in [lo, hi],
    each file's rows spread evenly over its time range (a file's statistics say no more)."""
    hi = np.maximum(hi, lo + 1)
    points = np.unique(np.concatenate([lo, hi]))
    rate = rows / (hi - lo)
    slope = np.zeros(len(points))
    np.add.at(slope, np.searchsorted(points, lo), rate)
    np.add.at(slope, np.searchsorted(points, hi), -rate)
    cumulative = np.concatenate([[0.0], np.cumsum(np.cumsum(slope)[:-1] * np.diff(points))])
    return np.diff(np.interp(edges, points, cumulative))


def shard_layout(plan: FeaturesPlan, config: FeaturesConfig) -> ShardLayout:
    """The keys of a run from its volume, from the clean files' statistics (row counts, time ranges):

    * the time bucket is the smallest multiple of every window size (their lcm) times a power of two,
      the largest whose busiest bucket still fits ``config.shards`` shards (few keys for small runs);
    * the device shards are as many as the busiest bucket needs to keep an average key at
      ``SHARD_FILL`` of ``config.group_bytes``, at least ``config.shards``.

    The rows counted are those of the files overlapping the closing windows and the time the new
    files span (late windows lie there), the files' rows spread evenly over their time ranges. One
    device's rows in one bucket (a day of 1 s readings of 1d windows) cannot be split: that volume is
    the limit of this layout."""
    unit = math.lcm(*(size.us for size in config.sizes))
    actions = (lake.open_table(plan.lake, CLEAN, plan.clean_upto).get_add_actions(flatten=True)
               if plan.clean_upto >= 0 else None)
    if actions is None or actions.num_rows == 0 or "min.timestamp_utc" not in actions.schema.names:
        return ShardLayout(config.shards, unit)
    lo, hi = (to_numpy(pc.fill_null(pc.cast(actions[f"{m}.timestamp_utc"], pa.int64()), 0)).astype(np.int64)
              for m in ("min", "max"))
    rows = to_numpy(pc.fill_null(actions["num_records"], 0)).astype(np.float64)
    spans = read_intervals(plan, config.sizes, pl.from_arrow(LATE_SCHEMA.empty_table()))
    new = {f.uri for f in plan.new_files}
    root = lake.table_uri(plan.lake, CLEAN)
    is_new = np.array([f"{root}/{p}" in new for p in actions["path"].to_pylist()])
    if is_new.any():
        spans.append((int(lo[is_new].min()), int(hi[is_new].max()) + 1))
    if not spans:                  # nothing closes and no new file is in the snapshot (compacted since)
        return ShardLayout(config.shards, unit)
    # the buckets (of ``unit``) that hold data and are read: files' ranges clipped to the read spans
    first, last = max(int(lo.min()), min(a for a, _ in spans)), min(int(hi.max()) + 1, max(b for _, b in spans))
    if last <= first:
        return ShardLayout(config.shards, unit)
    edges = np.arange(first // unit, last // unit + 2, dtype=np.int64) * unit
    counts = rows_per_bucket(lo, hi, rows, edges)
    inside = np.zeros(len(counts), bool)
    for a, b in spans:
        inside |= (edges[1:] > a) & (edges[:-1] < b)
    counts = np.where(inside, counts, 0.0)
    row_bytes = ROW_FIXED_BYTES + _device_id_bytes(actions)
    per_key = SHARD_FILL * config.group_bytes
    k = 1
    while k * 2 <= len(counts) and _busiest(counts, edges[0] // unit, k * 2) * row_bytes <= config.shards * per_key:
        k *= 2
    busiest = _busiest(counts, edges[0] // unit, k) * row_bytes
    layout = ShardLayout(max(config.shards, math.ceil(busiest / per_key)), unit * k)
    log.info("features layout: %d device shards x buckets of %d s (busiest bucket ~%.1f MB)", layout.shards,
             layout.bucket_us // US, busiest / 1e6)
    return layout


def _busiest(counts: np.ndarray, first_unit: int, k: int) -> float:
    """Most rows in one epoch-aligned group of ``k`` consecutive buckets."""
    groups = (first_unit + np.arange(len(counts))) // k
    return float(np.bincount(groups - groups[0], weights=counts).max())


def _device_id_bytes(actions: pa.Table) -> int:
    """Longest device id in the files' statistics (they may truncate it: at least 32), else the
    contract's longest (64)."""
    names = [c for c in ("min.device_id", "max.device_id") if c in actions.schema.names]
    lengths = [pc.max(pc.utf8_length(actions[c])).as_py() for c in names]
    lengths = [n for n in lengths if n is not None]
    return max(32, *lengths) if lengths else 64


def _missing_columns(lake_root: str, version: int | None) -> tuple[str, ...]:
    if version is None:
        return ()
    names = set(lake.open_table(lake_root, FEATURES, version, without_files=True).schema().to_pyarrow().names)
    return tuple(f.name for f in contracts.FEATURES if f.name not in names)


def plan_run(lake_root: str, sizes, allowed_lateness_s: float, upto: int | None = None) -> FeaturesPlan | None:
    """The next run's plan, or None when clean has nothing new. Bookkeeping reads the log of the new
    clean versions and features' newest commit only (not the tables' whole history)."""
    latest = lake.latest_version(lake_root, CLEAN)
    if latest is None:
        return None
    target = latest if upto is None else min(upto, latest)
    inputs = lake.last_inputs(lake_root, FEATURES, APP) or {}
    after = int(inputs[CLEAN][1]) if CLEAN in inputs else -1
    if target <= after:
        return None
    previous = {s.label: inputs.get("watermarks_us", {}).get(s.label) for s in sizes}
    newest = newest_ingestion_us(lake_root, target)
    features_version = lake.latest_version(lake_root, FEATURES)
    return FeaturesPlan(
        missing_columns=_missing_columns(lake_root, features_version),
        lake=lake_root, clean_after=after, clean_upto=target,
        new_files=tuple(delta.added_files(lake_root, CLEAN, after if after >= 0 else None, target)),
        previous=previous, watermark_us=(newest or 0) - int(allowed_lateness_s * US),
        features_version=features_version)
