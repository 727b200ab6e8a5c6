"""Cleansing of landed readings into Contract 2 (clean/sensor_readings) and the quarantine.

Vectorised logic (polars/pyarrow over whole Arrow tables) plus the composite PTransform
:class:`Cleanse` that the ``pipelines.cleanse`` entry point runs. Choices, and why:

* Quarantine (one reason per row, first that applies, in this order): ``unknown_device`` (not in
  the registry: the anti-join), ``inactive_device`` (registry ``active`` is false),
  ``unknown_sensor_type``, ``unknown_unit`` (a unit section 4 does not accept for the sensor: no
  canonical value exists), ``invalid_value`` (null/NaN/inf; the streaming decoder dead-letters
  these, so it is defence in depth), ``unparseable_ts``. Quarantined rows keep every copy as
  received (it is an evidence store) and are not deduplicated.
* Dedup by ``event_id``: within the new rows the earliest ingested copy is kept (ties: lower
  landing version, then time and value, so the choice is deterministic); a new row whose
  ``event_id`` is already clean is removed. "Already clean" looks back ``lookback`` (default 7
  days) before the newest ``timestamp_ingested`` of the new rows, a reference taken from the data
  so a rerun sees the same window. Copies of a reading carry the same ``ts`` and hence the same
  ``timestamp_utc``: only clean files whose ``timestamp_utc`` statistics overlap the hours of
  the new rows are read, which keeps the clean-side read proportional to the new data rather
  than to the lookback. A replay older than the lookback is not removed (tested, by design).
  Rows are sharded by device for the dedup and stuck-value steps: copies of a reading come from
  the same device; equal ``event_id`` from different devices are different readings.
* Quality flags (``quality_reasons`` sorted, ``quality`` the worst level):
  ``out_of_range`` -> BAD: the canonical value is outside its sensor's valid range.
  ``future_timestamp`` -> BAD: ``timestamp_utc`` later than ``timestamp_ingested`` plus a tolerance
  (default 5 min of clock skew). A reading cannot come from the future: the device clock is wrong,
  so its time, and the window it would feed, cannot be trusted.
  ``stuck_value`` -> SUSPECT: a run, per device and sensor in time order, of canonical values equal
  within the sensor's resolution (``schemas.sensors``: the same multiple of it once rounded, so the
  float noise of a unit conversion does not break a run) that is long in count AND in time: at
  least ``stuck_run_length`` readings (default 10) spanning at least ``stuck_min_duration_s``
  (default 9 min) from first to last. A steady quantised pressure at 1 s sampling repeats its value
  for seconds, a stuck sensor for many minutes; at the fleet's 1-minute sampling ten readings span
  9 min, so there the rule is the count rule it always was. Runs continue across runs through the
  clean rows of the hour (or the minimum duration, if longer) before the new rows; rows committed
  earlier are not re-flagged (the table is append-only), only the new rows of a run are.
  Late arrival is not a quality problem: replays are correct readings (features recompute the
  windows they touch).
* Time: :func:`core.timestamps.parse_ts` with the registry timezone (DST gap: offset before
  the gap; fold: the earlier instant). ``date`` is the UTC date of ``timestamp_utc``.
* Incremental reads: the caller plans which landing versions each output table still needs; a
  row goes to an output only if its landing version is newer than what that table consumed, so a
  run after a crash between the two commits fills the lagging table alone (with the registry
  version the other table was split with). Rows that the other table already consumed are counted
  as ``already_committed``; for every run
  ``rows_in = clean + quarantined + duplicates removed + already_committed``.

Scale (a 5-minute landing transaction of ~70M rows at the seed's fleet size): landing files are
read as row-group-sized Arrow tables and split per table (no per-row Python anywhere); only the
candidates cross a shuffle, as Arrow tables per (input chunk, device shard) of at most
``CleanseConfig.chunk`` rows and bytes (:mod:`transforms.arrow`: Flink fails on records above its
sort buffer), so ``shards`` should be a few times the worker count and bounds the memory of one
shard to new rows / shards (the shard's chunks are grouped, and concatenated only in its DoFn);
the clean-side read covers the hours the new rows fall into (plus the hour before), which for a
5-minute transaction is the previous few runs' files, not the 7-day lookback.
"""
from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass, field

import apache_beam as beam
import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
from apache_beam.metrics import Metrics

from schemas import contracts
from schemas.sensors import SENSORS
from transforms import delta
from core import lake
from transforms.arrow import DEFAULT_BOUND, ChunkBound, ChunkTables, ElementSizes, ReadParquetChunks, SideTable
from transforms.arrow import chunks
from core.arrays import to_numpy
from core.timestamps import parse_ts

log = logging.getLogger(__name__)

LANDING = "raw_sensor_readings"
CLEAN = "clean_sensor_readings"
QUARANTINE = "quarantine"
DEVICES = "devices"
APP = lake.CLEANSE_APP

GOOD, SUSPECT, BAD = contracts.QUALITY_LEVELS
OUT_OF_RANGE = "out_of_range"
FUTURE_TIMESTAMP = "future_timestamp"
STUCK_VALUE = "stuck_value"
REASON_LEVEL = {FUTURE_TIMESTAMP: BAD, OUT_OF_RANGE: BAD, STUCK_VALUE: SUSPECT}

UNKNOWN_DEVICE = "unknown_device"
INACTIVE_DEVICE = "inactive_device"
UNKNOWN_SENSOR_TYPE = "unknown_sensor_type"
UNKNOWN_UNIT = "unknown_unit"
INVALID_VALUE = "invalid_value"
UNPARSEABLE_TS = "unparseable_ts"
QUARANTINE_REASONS = (UNKNOWN_DEVICE, INACTIVE_DEVICE, UNKNOWN_SENSOR_TYPE, UNKNOWN_UNIT, INVALID_VALUE,
                      UNPARSEABLE_TS)

# landing columns a cleanse run reads (the partition column ingest_date lives in the paths)
LANDING_COLUMNS = [f.name for f in contracts.RAW_SENSOR_READINGS if f.name != "ingest_date"]
CONTEXT_COLUMNS = ["event_id", "device_id", "sensor_type", "value", "timestamp_utc"]
US = 1_000_000
HOUR_US = 3600 * US


@dataclass(frozen=True)
class CleanseConfig:
    lookback_s: float = 7 * 86400
    future_tolerance_s: float = 300
    stuck_run_length: int = 10
    # a stuck run must also last this long: at 1 s sampling ten equal readings of a steady quantised
    # pressure are normal; 9 min is what ten readings meant at the fleet's 1-minute sampling
    stuck_min_duration_s: float = 540.0
    shards: int = 8
    chunk: ChunkBound = DEFAULT_BOUND        # most rows/bytes of one table element crossing a shuffle


# --- pure functions -------------------------------------------------------------------------------

def _conversions() -> pl.DataFrame:
    rows = [(s, u, scale, offset, spec.canonical_unit, spec.valid_min, spec.valid_max)
            for s, spec in SENSORS.items() for u, (scale, offset) in spec.conversions.items()]
    return pl.DataFrame(rows, schema=["sensor_type", "_unit", "_scale", "_offset", "_canonical", "_min", "_max"],
                        orient="row")


def registry_frame(registry: pa.Table) -> pl.DataFrame:
    """The registry columns cleansing needs; ``_known`` marks a registered device."""
    return (pl.from_arrow(registry.select(["device_id", "timezone", "active"]))
            .unique("device_id", keep="last").with_columns(_known=pl.lit(True)))


def prepare(landing: pa.Table, source_version: int, registry: pl.DataFrame, config: CleanseConfig,
            quarantined_at: dt.datetime) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Splits landed rows into (candidates for clean, quarantine rows).

    Candidates carry the canonical value and unit, ``timestamp_utc``, ``source_version`` and the
    stateless flags ``_out_of_range`` and ``_future``; quarantine rows are in the QUARANTINE schema.
    """
    canonical_of = {s: spec.canonical_unit for s, spec in SENSORS.items()}
    df = (pl.from_arrow(landing.select(LANDING_COLUMNS))
          .with_columns(pl.lit(source_version, pl.Int64).alias("source_version"),
                        pl.coalesce(pl.col("unit"), pl.col("sensor_type").replace_strict(
                            canonical_of, default=None, return_dtype=pl.Utf8)).alias("_unit"))
          .join(registry, on="device_id", how="left", maintain_order="left")
          .join(_conversions(), on=["sensor_type", "_unit"], how="left", maintain_order="left"))
    ts = pl.from_arrow(parse_ts(df["ts"].to_arrow(), df["timezone"].to_arrow()))
    df = df.with_columns(ts.alias("timestamp_utc"))
    reason = (pl.when(pl.col("_known").is_null()).then(pl.lit(UNKNOWN_DEVICE))
              .when(~pl.col("active")).then(pl.lit(INACTIVE_DEVICE))
              .when(~pl.col("sensor_type").is_in(list(SENSORS))).then(pl.lit(UNKNOWN_SENSOR_TYPE))
              .when(pl.col("_scale").is_null()).then(pl.lit(UNKNOWN_UNIT))
              .when(pl.col("value").is_null() | ~pl.col("value").is_finite()).then(pl.lit(INVALID_VALUE))
              .when(pl.col("timestamp_utc").is_null()).then(pl.lit(UNPARSEABLE_TS)))
    df = df.with_columns(reason.alias("reason"))
    quarantine = (df.filter(pl.col("reason").is_not_null())
                  .with_columns(pl.lit(quarantined_at).dt.cast_time_unit("us").dt.convert_time_zone("UTC")
                                .alias("quarantined_at"))
                  .select(contracts.QUARANTINE.names))
    value = pl.col("value") * pl.col("_scale") + pl.col("_offset")
    tolerance = dt.timedelta(seconds=config.future_tolerance_s)
    candidates = (df.filter(pl.col("reason").is_null())
                  .with_columns(value.alias("value"), pl.col("_canonical").alias("unit"))
                  .with_columns(((pl.col("value") < pl.col("_min")) | (pl.col("value") > pl.col("_max")))
                                .alias("_out_of_range"),
                                (pl.col("timestamp_utc") > pl.col("timestamp_ingested") + tolerance).alias("_future"))
                  .select(["event_id", "device_id", "sensor_type", "value", "unit", "timestamp_utc",
                           "timestamp_ingested", "source_version", "_out_of_range", "_future"]))
    return candidates, quarantine


def dedup(new: pl.DataFrame, clean_ids: pl.Series | None) -> tuple[pl.DataFrame, int, int]:
    """Keeps one row per event_id and drops ids already clean: (rows, removed within, removed vs clean)."""
    duplicated = new["event_id"].is_duplicated()
    within = 0
    if duplicated.any():        # only the (few) repeated ids need ordering to pick the first copy
        copies = (new.filter(duplicated)
                  .sort(["event_id", "timestamp_ingested", "source_version", "timestamp_utc", "value"])
                  .unique("event_id", keep="first", maintain_order=True))
        within = int(duplicated.sum()) - copies.height
        new = pl.concat([new.filter(~duplicated), copies])
    if clean_ids is None or clean_ids.len() == 0:
        return new, within, 0
    kept = new.join(clean_ids.unique().to_frame("event_id"), on="event_id", how="anti", maintain_order="left")
    return kept, within, new.height - kept.height


def _resolutions() -> pl.DataFrame:
    return pl.DataFrame({"sensor_type": list(SENSORS), "_res": [spec.resolution for spec in SENSORS.values()]})


def stuck_mask(new: pl.DataFrame, context: pl.DataFrame | None, run_length: int,
               min_duration_s: float = 0.0) -> pl.Series:
    """True for new rows inside a stuck run (per device and sensor, in time order): values equal within
    the sensor's resolution (the same multiple of it once rounded), at least ``run_length`` of them
    AND spanning at least ``min_duration_s`` from the first to the last; earlier clean rows of the
    same device and sensor from ``context`` count."""
    cols = ["device_id", "sensor_type", "timestamp_utc", "event_id", "value"]
    parts = [new.select(cols).with_columns(pl.int_range(pl.len(), dtype=pl.Int64).alias("_i"))]
    if context is not None and context.height:
        keys = new.select("device_id", "sensor_type").unique()
        ctx = context.select(cols).join(keys, on=["device_id", "sensor_type"], how="semi")
        parts.append(ctx.with_columns(pl.lit(-1, pl.Int64).alias("_i")))
    both = (pl.concat(parts).sort(["device_id", "sensor_type", "timestamp_utc", "event_id"])
            .join(_resolutions(), on="sensor_type", how="left", maintain_order="left")
            .with_columns((pl.col("value") / pl.col("_res")).round(0).alias("_level")))
    starts = ((pl.col("_level") != pl.col("_level").shift(1)) | (pl.col("device_id") != pl.col("device_id").shift(1))
              | (pl.col("sensor_type") != pl.col("sensor_type").shift(1))).fill_null(True)
    both = both.with_columns(starts.cum_sum().alias("_run"))
    t = pl.col("timestamp_utc").dt.epoch("us")
    long_in_time = (t.max() - t.min()).over("_run") >= int(min_duration_s * US)
    both = both.with_columns(((pl.len().over("_run") >= run_length) & long_in_time).alias("_stuck"))
    flagged = both.filter(pl.col("_i") >= 0).sort("_i")["_stuck"]
    return flagged


def reasons_array(flags: dict[str, np.ndarray]) -> pa.ListArray:
    """quality_reasons as an Arrow list column, built from the flag columns (names in list order)."""
    names = list(flags)
    matrix = np.stack([flags[n] for n in names], axis=1)
    offsets = np.concatenate([[0], np.cumsum(matrix.sum(axis=1))]).astype(np.int32)
    values = np.array(names, dtype=object)[np.nonzero(matrix)[1]]     # row-major: each row's reasons in order
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values, pa.string()))


def finish(new: pl.DataFrame, stuck: pl.Series) -> pl.DataFrame:
    """Quality flags and the Contract 2 columns."""
    flags = {FUTURE_TIMESTAMP: new["_future"].to_numpy(), OUT_OF_RANGE: new["_out_of_range"].to_numpy(),
             STUCK_VALUE: stuck.to_numpy()}
    bad = pl.col("_future") | pl.col("_out_of_range")
    quality = pl.when(bad).then(pl.lit(BAD)).when(pl.col("_stuck")).then(pl.lit(SUSPECT)).otherwise(pl.lit(GOOD))
    return (new.with_columns(stuck.alias("_stuck"),
                             pl.from_arrow(reasons_array(flags)).alias("quality_reasons"))
            .with_columns(quality.alias("quality"), pl.col("timestamp_utc").dt.date().alias("date"))
            .select(contracts.CLEAN_SENSOR_READINGS.names))


def cleanse_shard(new: pl.DataFrame, context: pl.DataFrame | None, config: CleanseConfig) -> tuple[pa.Table, dict]:
    """Dedup and stateful flags of one shard's new rows against the clean context."""
    counts = {"candidates": new.height}
    rows, counts["duplicates_within_batch"], counts["duplicates_against_clean"] = dedup(
        new, context["event_id"] if context is not None else None)
    clean = finish(rows, stuck_mask(rows, context, config.stuck_run_length, config.stuck_min_duration_s))
    return lake.conform(CLEAN, clean.to_arrow()), counts


def shard_of(frame: pl.DataFrame, shards: int) -> pl.Series:
    """Shard per device (a stable hash: the same device lands in the same shard on every worker)."""
    return (frame["device_id"].hash(seed=20261) % shards).cast(pl.Int64)


def split_by_shard(frame: pl.DataFrame, shards: int, bound: ChunkBound = DEFAULT_BOUND):
    """(shard, Arrow table) pairs of the frame's rows, each table within ``bound`` (a shard's rows
    may span many tables: consumers group by shard and see them all)."""
    if frame.height == 0:
        return
    for (shard,), part in frame.with_columns(shard_of(frame, shards).alias("_shard")).partition_by(
            "_shard", as_dict=True).items():
        for table in chunks(part.drop("_shard").to_arrow(), bound):
            yield int(shard), table


# --- which clean files can hold duplicates or stuck-run context ------------------------------

def hour_buckets(timestamps: pa.Array | pa.ChunkedArray) -> set[int]:
    us = to_numpy(pc.cast(timestamps, pa.int64()))
    return set(np.unique(us // HOUR_US).tolist())


def context_intervals(buckets: set[int], lookback_start_us: int, hours_before: int = 1) -> list[tuple[int, int]]:
    """[start, end) in us: the hours of the new rows and ``hours_before`` hours before each
    (stuck-run context), not before the lookback start; merged and sorted."""
    spans = sorted((max((b - hours_before) * HOUR_US, lookback_start_us), (b + 1) * HOUR_US)
                   for b in buckets if (b + 1) * HOUR_US > lookback_start_us)
    merged: list[list[int]] = []
    for lo, hi in spans:
        if merged and lo <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], hi)
        else:
            merged.append([lo, hi])
    return [(lo, hi) for lo, hi in merged]


def files_overlapping(lake_root: str, table: str, version: int | None, column: str,
                      intervals: list[tuple[int, int]]) -> list[str]:
    """URIs of the table's files (at ``version``) whose ``column`` statistics overlap any interval;
    a file without statistics is included."""
    if version is None or not intervals:
        return []
    dt_ = lake.open_table(lake_root, table, version)
    actions = dt_.get_add_actions(flatten=True)
    root = lake.table_uri(lake_root, table)
    paths = actions["path"].to_pylist()
    if f"min.{column}" not in actions.schema.names:
        return [f"{root}/{p}" for p in paths]
    lo, hi = (pc.cast(actions[f"{s}.{column}"], pa.int64()) for s in ("min", "max"))
    missing = to_numpy(pc.or_(pc.is_null(lo), pc.is_null(hi)))
    lo, hi = (to_numpy(pc.fill_null(a, 0)) for a in (lo, hi))
    starts = np.array([a for a, _ in intervals], dtype=np.int64)
    ends = np.array([b for _, b in intervals], dtype=np.int64)
    # statistics are at millisecond precision at worst: widen by 1 ms
    k = np.searchsorted(starts, hi + 1000, side="right") - 1     # last interval starting <= file max
    overlap = (k >= 0) & (ends[np.clip(k, 0, None)] > lo - 1000)
    return sorted(f"{root}/{p}" for p, keep in zip(paths, overlap | missing) if keep)


# --- Beam ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class LandingFile:
    uri: str
    version: int


@dataclass(frozen=True)
class CleansePlan:
    """What one run reads and writes; computed from Delta metadata before the pipeline starts."""
    lake: str
    upto: int                                  # newest landing version this run consumes
    after: dict[str, int]                      # output table -> landing version it consumed (-1: none)
    landing_files: tuple[LandingFile, ...]     # files of versions (min(after), upto]
    devices_files: tuple[delta.DeltaFile, ...]
    devices_version: int | None
    clean_version: int | None                  # clean snapshot the dedup context is read from
    run_at: dt.datetime = field(default_factory=lambda: dt.datetime.now(dt.timezone.utc))

    @property
    def read_after(self) -> int:
        return min(self.after.values())

    def tables_to_write(self) -> list[str]:
        return [t for t, a in self.after.items() if a < self.upto]

    def inputs(self, table: str) -> dict:
        return {LANDING: [self.after[table], self.upto], DEVICES: self.devices_version}

    def commit_id(self, table: str) -> str:
        return f"{APP}/{table}/{self.after[table]}-{self.upto}"


def _counter(name: str):
    return Metrics.counter(APP, name)


class _Prepare(beam.DoFn):
    """Landed rows -> candidates for clean (main) and quarantine rows (tagged)."""

    def __init__(self, plan: CleansePlan, config: CleanseConfig):
        self._after = dict(plan.after)
        self._run_at = plan.run_at
        self._config = config
        self._versions = {f.uri: f.version for f in plan.landing_files}
        self._registry = SideTable(_concat_registry)
        self._rows_in = _counter("rows_in")
        self._already = _counter("already_committed")
        self._quarantined = {r: _counter(f"quarantined_{r}") for r in QUARANTINE_REASONS}

    def process(self, element, registry_chunks):
        uri, table = element
        version = self._versions[uri]
        self._rows_in.inc(table.num_rows)
        registry = self._registry.get(registry_chunks)
        candidates, quarantine = prepare(table, version, registry, self._config, self._run_at)
        if version > self._after[CLEAN]:
            yield candidates.to_arrow()
        else:
            self._already.inc(candidates.height)
        if version > self._after[QUARANTINE]:
            for reason, n in quarantine.group_by("reason").len().iter_rows():
                self._quarantined[reason].inc(n)
            if quarantine.height:
                yield beam.pvalue.TaggedOutput(QUARANTINE, lake.conform(QUARANTINE, quarantine.to_arrow()))
        else:
            self._already.inc(quarantine.height)


class _Footprint(beam.CombineFn):
    """Hours touched by the candidates and their newest ingestion time."""

    def create_accumulator(self):
        return set(), None

    def add_input(self, acc, table: pa.Table):
        buckets, newest = acc
        if table.num_rows:
            buckets |= hour_buckets(table["timestamp_utc"])
            top = pc.max(table["timestamp_ingested"]).as_py()
            newest = top if newest is None else max(newest, top)
        return buckets, newest

    def merge_accumulators(self, accs):
        buckets, newest = set(), None
        for b, n in accs:
            buckets |= b
            newest = n if newest is None else newest if n is None else max(newest, n)
        return buckets, newest

    def extract_output(self, acc):
        return acc


def lookback_start_us(footprint, lookback_s: float) -> int:
    newest = footprint[1]
    if newest is None:
        return 0
    return int(newest.timestamp() * US) - int(lookback_s * US)


class _ContextFiles(beam.DoFn):
    def __init__(self, lake_root: str, version: int | None, config: CleanseConfig):
        self._lake, self._version, self._lookback_s = lake_root, version, config.lookback_s
        # a stuck run of the new rows must be seen over its minimum duration
        self._hours_before = max(1, int(np.ceil(config.stuck_min_duration_s * US / HOUR_US)))
        self._files = Metrics.counter(APP, "context_files")

    def process(self, footprint):
        intervals = context_intervals(footprint[0], lookback_start_us(footprint, self._lookback_s),
                                      self._hours_before)
        for uri in files_overlapping(self._lake, CLEAN, self._version, "timestamp_utc", intervals):
            self._files.inc()
            yield uri


class _ContextToShards(beam.DoFn):
    """Clean rows inside the lookback, keyed by shard."""

    def __init__(self, config: CleanseConfig):
        self._config = config
        self._rows = Metrics.counter(APP, "context_rows")

    def setup(self):
        self._sizes = ElementSizes("cleanse_context")

    def process(self, table: pa.Table, footprint):
        start = lookback_start_us(footprint, self._config.lookback_s)
        frame = pl.from_arrow(table.select(CONTEXT_COLUMNS))
        frame = frame.filter(pl.col("timestamp_utc").dt.epoch("us") >= start)
        self._rows.inc(frame.height)
        for shard, part in split_by_shard(frame, self._config.shards, self._config.chunk):
            yield shard, self._sizes.observe(part)


class _NewToShards(beam.DoFn):
    def __init__(self, config: CleanseConfig):
        self._config = config

    def setup(self):
        self._sizes = ElementSizes("cleanse_new")

    def process(self, table: pa.Table):
        for shard, part in split_by_shard(pl.from_arrow(table), self._config.shards, self._config.chunk):
            yield shard, self._sizes.observe(part)


class _CleanseShard(beam.DoFn):
    def __init__(self, config: CleanseConfig):
        self._config = config
        self._counters = {n: _counter(n) for n in ("duplicates_within_batch", "duplicates_against_clean")}
        self._quality = {q: _counter(f"clean_{q}") for q in contracts.QUALITY_LEVELS}
        self._reasons = {r: _counter(f"flag_{r}") for r in REASON_LEVEL}

    def process(self, element):
        _, groups = element
        new = [t for t in groups["new"] if t.num_rows]
        if not new:
            return
        ctx = [t for t in groups["ctx"] if t.num_rows]
        # one contiguous chunk: polars ops over hundreds of small chunks are several times slower
        context = pl.from_arrow(pa.concat_tables(ctx)).rechunk() if ctx else None
        clean, counts = cleanse_shard(pl.from_arrow(pa.concat_tables(new)).rechunk(), context, self._config)
        for name, counter in self._counters.items():
            counter.inc(counts[name])
        frame = pl.from_arrow(clean.select(["quality", "quality_reasons"]))
        for q, n in frame.group_by("quality").len().iter_rows():
            self._quality[q].inc(n)
        for r, n in frame["quality_reasons"].explode().drop_nulls().value_counts().iter_rows():
            self._reasons[r].inc(n)
        yield clean


def _concat_registry(tables: list[pa.Table]) -> pl.DataFrame:
    data = pa.concat_tables(tables) if tables else contracts.DEVICES.empty_table()
    return registry_frame(data)


class ReadLanding(beam.PTransform):
    """The given landing files as (uri, Arrow table) pairs, tables within ``bound``."""

    def __init__(self, files: tuple[LandingFile, ...], bound: ChunkBound = DEFAULT_BOUND):
        super().__init__()
        self._uris = sorted(f.uri for f in files)
        self._bound = bound

    def expand(self, pbegin):
        return (pbegin
                | "Files" >> beam.Create(self._uris)
                | "Read" >> ReadParquetChunks(columns=LANDING_COLUMNS, with_filename=True, bound=self._bound,
                                              site="cleanse_landing"))


class Cleanse(beam.PTransform):
    """Landing versions of a plan -> {"clean": Arrow tables, "quarantine": Arrow tables}."""

    def __init__(self, plan: CleansePlan, config: CleanseConfig = CleanseConfig()):
        super().__init__()
        self._plan, self._config = plan, config

    def expand(self, pbegin):
        plan, config = self._plan, self._config
        # the registry (100K devices: ~10 MB) reaches every worker as bounded chunks, not one table
        registry = pbegin | "ReadRegistry" >> delta.ReadDeltaFiles(DEVICES, list(plan.devices_files),
                                                                   bound=config.chunk)
        prepared = (pbegin
                    | "ReadLanding" >> ReadLanding(plan.landing_files, config.chunk)
                    | "Prepare" >> beam.ParDo(_Prepare(plan, config), registry_chunks=beam.pvalue.AsList(registry))
                    .with_outputs(QUARANTINE, main="candidates"))
        candidates = prepared.candidates
        footprint = candidates | "Footprint" >> beam.CombineGlobally(_Footprint())
        context = (footprint
                   | "ContextFiles" >> beam.ParDo(_ContextFiles(plan.lake, plan.clean_version, config))
                   | "ReadContext" >> ReadParquetChunks(columns=CONTEXT_COLUMNS, bound=config.chunk,
                                                        site="cleanse_context_read")
                   | "ContextShards" >> beam.ParDo(_ContextToShards(config),
                                                   footprint=beam.pvalue.AsSingleton(footprint)))
        new = candidates | "NewShards" >> beam.ParDo(_NewToShards(config))
        # a shard's rows arrive as many bounded chunks; _CleanseShard concatenates them, so dedup and
        # stuck runs see the whole shard whatever the chunking
        clean = ({"new": new, "ctx": context}
                 | "ByShard" >> beam.CoGroupByKey()
                 | "DedupAndFlag" >> beam.ParDo(_CleanseShard(config))
                 | "CleanChunks" >> ChunkTables("cleanse_clean", config.chunk))
        return {CLEAN: clean, QUARANTINE: prepared[QUARANTINE]}


# --- planning (driver side, Delta metadata only) ----------------------------------------------

def consumed(lake_root: str, table: str) -> int:
    """The newest landing version ``table`` has consumed (-1: none)."""
    inputs = lake.last_inputs(lake_root, table, APP) or {}
    span = inputs.get(LANDING)
    return int(span[1]) if span else -1


ARCHIVE_APP = "archive"        # pipelines.archive: moves landing files past the hot window to the archive


def landing_files(lake_root: str, after: int, upto: int) -> list[LandingFile]:
    """Files added by landing versions (after, upto], each with its version, from each version's own
    commit file (cost: the new versions, not the table's age). Landing is append-only: a version that
    removes data (dataChange=true) fails the run, except the archive's move of files consumed before
    this range (their rows are in clean already); compaction (dataChange=false) is no new data."""
    root = lake.table_uri(lake_root, LANDING)
    out: list[LandingFile] = []
    for version in range(after + 1, upto + 1):
        changes = lake.version_changes(lake_root, LANDING, version) or _snapshot_changes(lake_root, version)
        removed = {f"{root}/{r.path}" for r in changes.removes if r.data_change}
        unconsumed = removed & {f.uri for f in out}
        if removed and (changes.app != ARCHIVE_APP or unconsumed):
            raise RuntimeError(f"landing version {version} ({changes.operation}, {changes.app}) removed "
                               f"{len(removed)} files ({len(unconsumed)} not cleansed yet); landing must be "
                               "append-only")
        out += [LandingFile(f"{root}/{a.path}", version) for a in sorted(changes.adds, key=lambda a: a.path)
                if a.data_change]
    return out


def _snapshot_changes(lake_root: str, version: int) -> lake.VersionChanges:
    """A version's changes from the snapshots around it, for a commit file that log cleanup removed
    (whether a removal was compaction cannot be told then: it counts as a data change)."""
    try:
        before = {f.uri: f for f in delta.snapshot_files(lake_root, LANDING, version - 1)} if version else {}
        now = {f.uri: f for f in delta.snapshot_files(lake_root, LANDING, version)}
    except Exception as exc:  # noqa: BLE001 - delta-rs cannot time-travel into a cleaned log
        raise lake.cleaned_up(LANDING, version, exc) from exc
    root = lake.table_uri(lake_root, LANDING) + "/"

    def change(f) -> lake.FileChange:
        return lake.FileChange(f.uri.removeprefix(root), f.partition_values, True)

    return lake.VersionChanges(version, None, tuple(change(now[u]) for u in sorted(now.keys() - before.keys())),
                               tuple(change(before[u]) for u in sorted(before.keys() - now.keys())))


def plan_run(lake_root: str, upto: int | None = None, max_versions: int | None = None) -> CleansePlan | None:
    """The next run's plan, or None when there is no landing table yet. Reads the Delta log of the
    landing versions not consumed yet and each output table's newest cleanse commit, no snapshot
    but the registry's: the same cost at 100 landing versions as at 100,000."""
    latest = lake.latest_version(lake_root, LANDING)
    if latest is None:
        return None
    inputs = {t: lake.last_inputs(lake_root, t, APP) or {} for t in (CLEAN, QUARANTINE)}
    after = {t: int(i[LANDING][1]) if i.get(LANDING) else -1 for t, i in inputs.items()}
    target = latest if upto is None else min(upto, latest)
    if max_versions:
        target = min(target, min(after.values()) + max_versions)
    read_after = min(after.values())
    files = landing_files(lake_root, read_after, target) if target > read_after else []
    # repairing a table that lags behind the other: use the registry the other one was split with,
    # so a device (de)activated in between cannot drop a row from both tables or put it in both
    ahead = max(after, key=after.get)
    pinned = inputs[ahead].get(DEVICES) if after[CLEAN] != after[QUARANTINE] else None
    devices_version = pinned if pinned is not None else lake.latest_version(lake_root, DEVICES)
    return CleansePlan(
        lake=lake_root, upto=target, after=after, landing_files=tuple(files),
        devices_files=tuple(delta.snapshot_files(lake_root, DEVICES, devices_version))
        if devices_version is not None else (),
        devices_version=devices_version,
        clean_version=lake.latest_version(lake_root, CLEAN))
