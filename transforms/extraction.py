"""Point-in-time training extraction, the library: the spec that determines a dataset (``make_spec``),
its plan over both tiers, the Beam transform that writes it reproducibly (``ExtractDataset``),
``extract`` (plan, run, manifest) and ``read_dataset`` (checked against its manifest). What a
dataset holds and how it is read: ``python -m pipelines.extract_training --help``.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import io
import json
import logging
import os
import zlib
from dataclasses import asdict, dataclass, field

import apache_beam as beam
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq
from apache_beam.metrics import Metrics
from apache_beam.options.pipeline_options import PipelineOptions

from core import training_spans
from core.timestamps import utc_datetime
from transforms import archive
from transforms.runs import is_dry_run
from core.windows import MODEL_WINDOW
from schemas import contracts
from core import lake
from transforms.arrow import DEFAULT_BOUND, ChunkBound, ElementSizes, Gather, keyed_chunks
from transforms.delta import DeltaFile, snapshot_files, with_partition_columns

log = logging.getLogger("extract_training")

APP = "extract_training"
LANDING = "raw_sensor_readings"
FEATURES = "features"
# total order of the output rows (raw readings): every column that can tell two rows apart
RAW_ORDER = ["device_id", "timestamp_ingested", "event_id", "sensor_type", "ts", "value", "unit", "seq",
             "kafka_topic", "kafka_partition", "kafka_offset"]
FEATURE_ORDER = ["device_id", "window_start", "window_end", "computed_at"]
PARQUET_SETTINGS = dict(compression="zstd", compression_level=3, row_group_size=1 << 20, use_dictionary=True,
                        write_statistics=True, version="2.6", data_page_version="1.0")


@dataclass(frozen=True)
class ExtractSpec:
    """Everything that determines a dataset (and so its id)."""
    kind: str                                # raw | features
    start: str                               # ISO UTC, inclusive
    end: str                                 # ISO UTC, exclusive
    devices: tuple[str, ...] = ()            # empty: all
    sensors: tuple[str, ...] = ()            # empty: all
    version: int = -1                        # resolved Delta version of the hot table read
    window_size: str = MODEL_WINDOW          # features only
    shards_per_day: int = 1
    archive_slack_days: int = 30             # raw only: archive date partitions read before --start
    table_id: str = ""                       # the Delta table's id: the same version number of another
                                             # table (another lake) is other data
    spans: tuple[tuple[str, str, str], ...] = ()   # per-device (device_id, start, end); start/end: their envelope
    spans_sha256: str = ""                   # of the --spans file
    registry_version: int = -1               # registry version that resolved model spans

    def dataset_id(self) -> str:
        fields = asdict(self)
        if not self.spans:       # a dataset without spans keeps the id it had before spans existed
            for name in ("spans", "spans_sha256", "registry_version"):
                fields.pop(name)
        digest = hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]
        return f"{self.kind}-{self.start[:10]}-{self.end[:10]}-v{self.version}-{digest}"

    @property
    def start_dt(self) -> dt.datetime:
        return utc_datetime(self.start)

    @property
    def end_dt(self) -> dt.datetime:
        return utc_datetime(self.end)


@dataclass
class ExtractPlan:
    spec: ExtractSpec
    lake: str
    landing_files: list[DeltaFile] = field(default_factory=list)    # or features files
    archive_files: list[archive.ArchiveFile] = field(default_factory=list)

    def inputs(self) -> dict:
        table = LANDING if self.spec.kind == "raw" else FEATURES
        root = lake.table_uri(self.lake, table)
        out = {"table": table, "version": self.spec.version,
               "delta_files": [f.uri[len(root) + 1:] for f in self.landing_files]}
        if self.spec.kind == "raw":
            out["archive_files"] = [{"path": a.path, "size": a.size} for a in self.archive_files]
        return out


def resolve_version(lake_root: str, table: str, as_of_version: int | None, as_of_timestamp: str | None) -> int:
    """The Delta version to read: the given one, the last committed at or before a timestamp, or
    the latest."""
    if as_of_version is not None and as_of_timestamp:
        raise ValueError("give --as_of_version or --as_of_timestamp, not both")
    dt_ = lake.open_table(lake_root, table)
    if dt_ is None:
        return -1
    if as_of_version is not None:
        if as_of_version > dt_.version():
            raise ValueError(f"{table} has no version {as_of_version} (latest {dt_.version()})")
        return as_of_version
    if as_of_timestamp:
        dt_.load_with_datetime(utc_datetime(as_of_timestamp).isoformat())
    return dt_.version()


def _partition_in(value: str | None, lo: dt.date, hi: dt.date) -> bool:
    return value is not None and lo.isoformat() <= str(value) <= hi.isoformat()


def plan_extract(lake_root: str, spec: ExtractSpec) -> ExtractPlan:
    plan = ExtractPlan(spec, lake_root)
    start, end = spec.start_dt, spec.end_dt
    last_day = (end - dt.timedelta(microseconds=1)).date()
    if spec.kind == "raw":
        if spec.version >= 0:
            plan.landing_files = [f for f in snapshot_files(lake_root, LANDING, spec.version)
                                  if _partition_in(dict(f.partition_values).get("ingest_date"), start.date(),
                                                   last_day)]
        # the archive is partitioned by reading date: readings ingested in [start, end) were taken
        # at most `archive_slack_days` earlier (late replays) and not after `end` (+1 day of clock skew)
        lo = (start - dt.timedelta(days=spec.archive_slack_days)).date().isoformat()
        hi = (last_day + dt.timedelta(days=1)).isoformat()
        every = archive.list_archive(lake_root, (lo, hi), set(spec.devices) if spec.devices else None)
        # the reader rule needs the whole landing snapshot, not only the pruned files
        snapshot = snapshot_files(lake_root, LANDING, spec.version) if spec.version >= 0 else []
        plan.archive_files = archive.union_files(lake_root, snapshot, every)
    else:
        if spec.version >= 0:
            plan.landing_files = [
                f for f in snapshot_files(lake_root, FEATURES, spec.version)
                if str(dict(f.partition_values).get("window_size")) == spec.window_size
                and _partition_in(dict(f.partition_values).get("date"), start.date() - dt.timedelta(days=1),
                                  last_day)]
    return plan


# --- Beam: read -> filter -> shard -> sort -> write ------------------------------------------

def _filter(data: pa.Table, spec: ExtractSpec) -> pa.Table:
    if spec.kind == "raw":
        t = data["timestamp_ingested"]
        mask = pc.and_(pc.greater_equal(t, pa.scalar(spec.start_dt, contracts.UTC_TS)),
                       pc.less(t, pa.scalar(spec.end_dt, contracts.UTC_TS)))
        if spec.sensors:
            mask = pc.and_(mask, pc.is_in(data["sensor_type"], pa.array(spec.sensors, pa.string())))
    else:
        t = data["window_start"]
        mask = pc.and_(pc.greater_equal(t, pa.scalar(spec.start_dt, contracts.UTC_TS)),
                       pc.less(t, pa.scalar(spec.end_dt, contracts.UTC_TS)))
        mask = pc.and_(mask, pc.equal(data["window_size"], spec.window_size))
    if spec.devices:
        mask = pc.and_(mask, pc.is_in(data["device_id"], pa.array(spec.devices, pa.string())))
    if spec.spans:
        mask = pc.and_(mask, training_spans.in_spans(data["device_id"], t, spec.spans))
    return data.filter(mask)


def feature_columns_for(sensors: tuple[str, ...]) -> list[str]:
    cols = contracts.feature_columns()
    if not sensors:
        return [f.name for f in contracts.FEATURES]
    keep = [c for c in cols if any(c.startswith(f"{s}_") for s in sensors)]
    return ["device_id", "window_size", "window_start", "window_end"] + keep + ["computed_at", "date"]


def shard_of(data: pa.Table, spec: ExtractSpec) -> list[tuple[str, pa.Table]]:
    """Splits rows into output shards: <day>-<bucket> by ingestion day (raw) or window day (features).
    A shard's table is as large as the input's rows of that shard: chunk it before a shuffle."""
    if data.num_rows == 0:
        return []
    col = "timestamp_ingested" if spec.kind == "raw" else "window_start"
    days = pc.strftime(data[col], format="%Y-%m-%d").to_pylist()
    buckets = [zlib.crc32(d.encode()) % spec.shards_per_day for d in data["device_id"].to_pylist()]
    keys = pa.array([f"{d}-{b:03d}" for d, b in zip(days, buckets)])
    out = []
    for key in sorted(set(keys.to_pylist())):
        out.append((key, data.filter(pc.equal(keys, key))))
    return out


def read_filter(spec: ExtractSpec, in_file: set[str]) -> pads.Expression | None:
    """The extraction's row filter as a dataset expression over the columns stored in a file (pushed
    down into the Parquet reader: row groups are skipped by their statistics, rows filtered while
    reading, so only matching rows are ever held)."""
    col = "timestamp_ingested" if spec.kind == "raw" else "window_start"
    expr = ((pads.field(col) >= pa.scalar(spec.start_dt, contracts.UTC_TS))
            & (pads.field(col) < pa.scalar(spec.end_dt, contracts.UTC_TS)))
    if spec.devices and "device_id" in in_file:
        expr = expr & pads.field("device_id").isin(list(spec.devices))
    if spec.kind == "raw" and spec.sensors:
        expr = expr & pads.field("sensor_type").isin(list(spec.sensors))
    return expr


def read_filtered(path: str, spec: ExtractSpec, filesystem=None, batch_rows: int = 1 << 20):
    """Yields the rows of one Parquet file that pass the extraction filter, in tables of ~batch_rows."""
    dataset = pads.dataset(path, format="parquet", filesystem=filesystem)
    expr = read_filter(spec, set(dataset.schema.names))
    pending, rows = [], 0
    for batch in dataset.to_batches(filter=expr, batch_size=64 * 1024):
        if batch.num_rows:
            pending.append(batch)
            rows += batch.num_rows
        if rows >= batch_rows:
            yield pa.Table.from_batches(pending)
            pending, rows = [], 0
    if pending:
        yield pa.Table.from_batches(pending)


class _ReadArchive(beam.DoFn):
    def __init__(self, lake_root: str, spec: ExtractSpec):
        self._lake, self._spec = lake_root, spec

    def process(self, path_size):
        path, size = path_size
        af = archive.ArchiveFile(path, size)
        fs, root = archive._fs(self._lake)
        full = f"{root}/{af.path}" if root else f"/{af.path}"
        for data in read_filtered(full, self._spec, fs):
            data = data.append_column("device_id", pa.array([af.device_id] * data.num_rows, pa.string()))
            yield lake.conform(LANDING, data.drop([c for c in ("date",) if c in data.column_names]))


class _ReadDelta(beam.DoFn):
    def __init__(self, table: str, spec: ExtractSpec):
        self._table, self._spec = table, spec

    def process(self, element):
        uri, partition_values = element
        for data in read_filtered(uri.removeprefix("file://"), self._spec):
            yield with_partition_columns(self._table, data, partition_values)


def write_shard(directory: str, key: str, tables: list[pa.Table], spec: ExtractSpec) -> dict:
    """Sorts a shard's rows into the total order and writes it with fixed settings."""
    data = pa.concat_tables(tables) if tables else None
    order = RAW_ORDER if spec.kind == "raw" else FEATURE_ORDER
    data = data.sort_by([(c, "ascending") for c in order]).combine_chunks()
    data = data.replace_schema_metadata(None)
    buf = io.BytesIO()
    pq.write_table(data, buf, **PARQUET_SETTINGS)
    payload = buf.getvalue()
    name = f"part-{key}.parquet"
    path = os.path.join(directory, name)
    tmp = f"{path}.tmp"
    with open(tmp, "wb") as fh:
        fh.write(payload)
    os.replace(tmp, path)
    return {"file": name, "rows": data.num_rows, "bytes": len(payload),
            "sha256": hashlib.sha256(payload).hexdigest()}


class _ShardChunks(beam.DoFn):
    """Rows -> (output shard, Arrow chunk within ``bound``): an output file's rows cross the shuffle as
    many bounded chunks and are concatenated (and sorted) in :func:`write_shard`."""

    def __init__(self, spec: ExtractSpec, bound: ChunkBound = DEFAULT_BOUND):
        self._spec, self._bound = spec, bound

    def setup(self):
        self._sizes = ElementSizes("extract_shards")

    def process(self, data: pa.Table):
        for key, part in shard_of(data, self._spec):
            for key_, chunk in keyed_chunks(key, part, self._bound):
                yield key_, self._sizes.observe(chunk)


class _WriteShard(beam.DoFn):
    def __init__(self, directory: str, spec: ExtractSpec):
        self._dir, self._spec = directory, spec
        self._rows = Metrics.counter(APP, "rows_written")
        self._files = Metrics.counter(APP, "files_written")

    def process(self, keyed):
        key, tables = keyed
        info = write_shard(self._dir, key, list(tables), self._spec)
        self._rows.inc(info["rows"])
        self._files.inc()
        yield info


class ExtractDataset(beam.PTransform):
    """Reads the planned files of both tiers, filters, and writes sorted shards. Output: file infos."""

    def __init__(self, plan: ExtractPlan, directory: str, bound: ChunkBound = DEFAULT_BOUND):
        super().__init__()
        self._plan, self._dir, self._bound = plan, directory, bound

    def expand(self, pbegin):
        plan, spec = self._plan, self._plan.spec
        table = LANDING if spec.kind == "raw" else FEATURES
        columns = None if spec.kind == "raw" else feature_columns_for(spec.sensors)
        rows_in = Metrics.counter(APP, "rows_read")

        def keep(data):
            rows_in.inc(data.num_rows)
            out = _filter(data, spec)
            return out if columns is None else out.select(columns)

        hot = (pbegin
               | "HotFiles" >> beam.Create([(f.uri, f.partition_values) for f in plan.landing_files])
               | "ReadHot" >> beam.ParDo(_ReadDelta(table, spec)))
        parts = [hot]
        if spec.kind == "raw":
            parts.append(pbegin
                         | "ColdFiles" >> beam.Create([(a.path, a.size) for a in plan.archive_files])
                         | "ReadCold" >> beam.ParDo(_ReadArchive(plan.lake, spec)))
        return (parts | "Union" >> beam.Flatten()
                | "Filter" >> beam.Map(keep)
                | "Shard" >> beam.ParDo(_ShardChunks(spec, self._bound))
                | "GroupShards" >> beam.GroupByKey()
                | "WriteShards" >> beam.ParDo(_WriteShard(self._dir, spec)))


def manifest_of(plan: ExtractPlan, files: list[dict], dataset_id: str) -> dict:
    return {
        "dataset_id": dataset_id,
        "kind": plan.spec.kind,
        "spec": asdict(plan.spec),
        "inputs": plan.inputs(),
        "files": sorted(files, key=lambda f: f["file"]),
        "rows": sum(f["rows"] for f in files),
        "writer": {"format": "parquet", "pyarrow": pa.__version__, **PARQUET_SETTINGS},
    }


def extract(lake_root: str, spec: ExtractSpec, output: str | None = None, dataset_id: str | None = None,
            options: PipelineOptions | None = None) -> tuple[str, dict]:
    """Runs the extraction (spec.version must be resolved). Returns (dataset directory, manifest)."""
    dataset_id = dataset_id or spec.dataset_id()
    base = output or os.path.join(lake_root.removeprefix("file://"), "training")
    directory = os.path.join(base, dataset_id)
    plan = plan_extract(lake_root, spec)
    staging = f"{directory}.staging-{os.getpid()}"
    os.makedirs(staging, exist_ok=True)
    pipeline = beam.Pipeline(options=options)
    files = (pipeline | "Extract" >> ExtractDataset(plan, staging) | "AllFiles" >> Gather())
    manifest_holder: list[dict] = []

    def write_manifest(infos):
        manifest = manifest_of(plan, infos, dataset_id)
        with open(os.path.join(staging, "manifest.json"), "w") as fh:
            json.dump(manifest, fh, indent=2, sort_keys=True)
            fh.write("\n")
        return manifest["rows"]

    _ = files | "Manifest" >> beam.Map(write_manifest)
    result = pipeline.run()
    if options is not None and is_dry_run(options):
        os.rmdir(staging)
        return directory, {}
    result.wait_until_finish()
    # publish: the dataset directory appears complete (manifest included) or not at all
    if os.path.exists(directory):
        import shutil
        shutil.rmtree(directory)
    os.replace(staging, directory)
    with open(os.path.join(directory, "manifest.json")) as fh:
        manifest_holder.append(json.load(fh))
    return directory, manifest_holder[0]


def read_dataset(directory: str) -> tuple[pa.Table, dict]:
    """A dataset's rows (in file order) and its manifest; verifies every file's sha256."""
    with open(os.path.join(directory, "manifest.json")) as fh:
        manifest = json.load(fh)
    tables = []
    for f in manifest["files"]:
        with open(os.path.join(directory, f["file"]), "rb") as fh:
            payload = fh.read()
        if hashlib.sha256(payload).hexdigest() != f["sha256"]:
            raise ValueError(f"{directory}/{f['file']}: sha256 does not match the manifest")
        tables.append(pq.read_table(io.BytesIO(payload)))
    if not tables:
        schema = contracts.RAW_SENSOR_READINGS if manifest["kind"] == "raw" else contracts.FEATURES
        return schema.empty_table(), manifest
    return pa.concat_tables(tables), manifest


def make_spec(lake_root: str, kind: str, start: str, end: str | None = None, devices: str = "", sensors: str = "",
              as_of_version: int | None = None, as_of_timestamp: str | None = None, window_size: str = MODEL_WINDOW,
              shards_per_day: int = 1, archive_slack_days: int = 30, spans: str | None = None) -> ExtractSpec:
    """An ExtractSpec from command-line style values, with the hot table's version (and the
    per-device spans of a ``spans`` file) resolved."""
    def split(text: str | None) -> tuple[str, ...]:
        """A comma list -> its distinct items, sorted."""
        return tuple(sorted({x.strip() for x in (text or "").split(",") if x.strip()}))

    resolved = None
    if spans:
        if start or end:
            raise SystemExit("extract_training: give --spans or --start/--end, not both")
        try:
            resolved = training_spans.resolve(lake_root, spans, split(devices))
        except (OSError, training_spans.SpansError) as exc:
            raise SystemExit(f"extract_training: --spans {spans}: {exc}") from None
        start, end = training_spans.envelope(resolved.spans)
        devices = ",".join(sorted({d for d, _, _ in resolved.spans}))
    if not start:
        raise SystemExit("extract_training: --start (or --spans) is required")
    end_dt = utc_datetime(end) if end else dt.datetime.now(dt.timezone.utc).replace(
        hour=0, minute=0, second=0, microsecond=0)
    table = LANDING if kind == "raw" else FEATURES
    version = resolve_version(lake_root, table, as_of_version, as_of_timestamp)
    opened = lake.open_table(lake_root, table)
    table_id = opened.metadata().id if opened is not None else ""
    return ExtractSpec(kind=kind, start=utc_datetime(start).isoformat(), end=end_dt.isoformat(),
                       devices=split(devices), sensors=split(sensors), version=version, window_size=window_size,
                       shards_per_day=shards_per_day, archive_slack_days=archive_slack_days,
                       table_id=str(table_id), **({} if resolved is None else {
                           "spans": resolved.spans, "spans_sha256": resolved.sha256,
                           "registry_version": resolved.registry_version}))
