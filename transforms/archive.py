"""The archive tier (landing older than the hot window, as Parquet partitions): its file layout,
the reader rule that makes a union of both tiers exact (``union_files``), and the move
(``plan_move`` + ``MoveToArchive``; ``move`` plans, runs and summarises one). The entry point,
with the steps and their crash safety, is ``python -m pipelines.archive``.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import os
import time
import uuid
from dataclasses import dataclass

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pa_fs
import pyarrow.parquet as pq
from apache_beam.metrics import Metrics
from apache_beam.options.pipeline_options import PipelineOptions

from schemas import contracts
from core import lake
from transforms.decode import DEVICE_ID
from transforms.delta import DeltaFile, snapshot_files, with_partition_columns
from transforms.arrow import Gather
from core.arrays import to_numpy
from transforms.runs import is_dry_run, metric_counters, print_summary
from core.timestamps import parse_ts

log = logging.getLogger("archive")

APP = "archive"
LANDING = "raw_sensor_readings"
ARCHIVE = "archive_raw_sensor_readings"
SOURCE_PREFIX = "landing-"
# columns stored in an archive file: Contract 1 without the hive partition column device_id
ARCHIVE_FILE_SCHEMA = pa.schema([f for f in contracts.RAW_SENSOR_READINGS if f.name != "device_id"])

# test hook: raise after a step to prove crash safety ("partial_write" | "written" | "removed")
CRASH_AFTER_ENV = "FLEET_ARCHIVE_CRASH_AFTER"


class SimulatedCrash(RuntimeError):
    pass


def _maybe_crash(step: str) -> None:
    if os.environ.get(CRASH_AFTER_ENV) == step:
        raise SimulatedCrash(f"simulated crash after step {step!r}")


# --- archive file system ----------------------------------------------------------------------

def archive_root(lake_root: str) -> str:
    return lake.table_uri(lake_root, ARCHIVE)


def _fs(lake_root: str) -> tuple[pa_fs.FileSystem, str]:
    """The archive's file system and its root path inside it."""
    root = archive_root(lake_root)
    if lake.is_local(lake_root):
        return pa_fs.LocalFileSystem(), os.path.abspath(root)
    return lake._filesystem(root), ""


def source_id(landing_path: str) -> str:
    """Stable id of a landing file (its path relative to the landing table root)."""
    return hashlib.sha1(landing_path.encode()).hexdigest()[:20]


@dataclass(frozen=True, order=True)
class ArchiveFile:
    path: str            # relative to the archive root: date=.../device_id=.../name.parquet
    size: int

    @property
    def date(self) -> str:
        return self.path.split("/")[0].split("=", 1)[1]

    @property
    def device_id(self) -> str:
        return self.path.split("/")[1].split("=", 1)[1]

    @property
    def source(self) -> str | None:
        """The source landing file id for files written by this pipeline (None for backfill files)."""
        name = self.path.rsplit("/", 1)[-1]
        return name[len(SOURCE_PREFIX):-len(".parquet")] if name.startswith(SOURCE_PREFIX) else None

    def uri(self, lake_root: str) -> str:
        return f"{archive_root(lake_root)}/{self.path}"


def list_archive(lake_root: str, dates: tuple[str | None, str | None] = (None, None),
                 devices: set[str] | None = None) -> list[ArchiveFile]:
    """Archive data files (sorted), optionally pruned by partition: date range [lo, hi] and devices.
    Temp files of an unfinished write (names starting with '.' or '_') are never listed."""
    fs, root = _fs(lake_root)
    try:
        info = fs.get_file_info(pa_fs.FileSelector(root or "/", recursive=True, allow_not_found=True))
    except FileNotFoundError:
        return []
    lo, hi = dates
    out = []
    base = (root or "/").rstrip("/") + "/"
    for f in info:
        if f.type != pa_fs.FileType.File:
            continue
        rel = f.path[len(base):] if f.path.startswith(base) else f.path.lstrip("/")
        parts = rel.split("/")
        name = parts[-1]
        if len(parts) != 3 or not name.endswith(".parquet") or name.startswith((".", "_")):
            continue
        af = ArchiveFile(rel, f.size)
        if (lo and af.date < lo) or (hi and af.date > hi) or (devices is not None and af.device_id not in devices):
            continue
        out.append(af)
    return sorted(out)


def landing_path(f: DeltaFile, lake_root: str) -> str:
    return f.uri[len(lake.table_uri(lake_root, LANDING)) + 1:]


def union_files(lake_root: str, landing_files: list[DeltaFile], archive_files: list[ArchiveFile]
                ) -> list[ArchiveFile]:
    """The reader rule of the two tiers: archive files to read together with ``landing_files`` (a
    landing snapshot). Copies of landing files still in that snapshot are skipped."""
    in_landing = {source_id(landing_path(f, lake_root)) for f in landing_files}
    return [a for a in archive_files if a.source is None or a.source not in in_landing]


def read_archive_file(lake_root: str, af: ArchiveFile, columns: list[str] | None = None) -> pa.Table:
    """One archive file in the Contract 1 schema (device_id comes back from the path)."""
    fs, root = _fs(lake_root)
    path = f"{root}/{af.path}" if root else f"/{af.path}"
    data = pq.read_table(path, filesystem=fs)
    data = data.append_column("device_id", pa.array([af.device_id] * data.num_rows, pa.string()))
    data = lake.conform(LANDING, data.drop([c for c in ("date",) if c in data.column_names]))
    return data.select(columns) if columns else data


# --- the move ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class ArchivePlan:
    lake: str
    version: int                 # the landing snapshot planned at
    cutoff: dt.date              # ingest_date < cutoff moves
    files: tuple[DeltaFile, ...]

    @property
    def commit_id(self) -> str:
        digest = hashlib.sha1("\n".join(f.uri for f in self.files).encode()).hexdigest()[:16]
        return f"{APP}-v{self.version}-{digest}"


def plan_move(lake_root: str, hot_days: float, now: dt.datetime) -> ArchivePlan | None:
    dt_ = lake.open_table(lake_root, LANDING)
    if dt_ is None:
        return None
    version = dt_.version()
    cutoff = (now - dt.timedelta(days=hot_days)).date()
    files = [f for f in snapshot_files(lake_root, LANDING, version)
             if (p := dict(f.partition_values).get("ingest_date")) is not None and str(p) < cutoff.isoformat()]
    return ArchivePlan(lake_root, version, cutoff, tuple(files))


def reading_dates(data: pa.Table, timezones: dict[str, str]) -> pa.Array:
    """UTC date (YYYY-MM-DD) of each reading; the ingestion date where `ts` does not parse."""
    tz = pa.array([timezones.get(d) for d in data["device_id"].to_pylist()], pa.string())
    utc = parse_ts(data["ts"], tz)
    when = pc.if_else(pc.is_null(utc), data["timestamp_ingested"].combine_chunks(), utc)
    return pc.strftime(when, format="%Y-%m-%d")


def _write_atomic(fs: pa_fs.FileSystem, root: str, rel: str, table: pa.Table) -> int:
    final = f"{root}/{rel}" if root else f"/{rel}"
    directory, name = final.rsplit("/", 1)
    fs.create_dir(directory, recursive=True)
    tmp = f"{directory}/.{name}.{uuid.uuid4().hex}.tmp"
    pq.write_table(table, tmp, filesystem=fs, compression="zstd")
    fs.move(tmp, final)        # a rename: readers see the whole file or none
    return table.num_rows


class _ArchiveLandingFile(beam.DoFn):
    """One landing file -> its archive files (one per reading date x device). Yields rows moved."""

    def __init__(self, lake_root: str):
        self._lake = lake_root
        self._rows = Metrics.counter(APP, "rows_archived")
        self._files = Metrics.counter(APP, "archive_files_written")
        self._sources = Metrics.counter(APP, "landing_files_archived")

    def setup(self):
        reg = lake.read(self._lake, "devices", columns=["device_id", "timezone"])
        self._tz = dict(zip(reg["device_id"].to_pylist(), reg["timezone"].to_pylist()))

    def process(self, element: tuple[str, tuple]):
        uri, partition_values = element
        data = with_partition_columns(LANDING, pq.read_table(uri.removeprefix("file://")), partition_values)
        src = source_id(landing_path(DeltaFile(uri, partition_values), self._lake))
        dates = reading_dates(data, self._tz)
        keyed = data.append_column("_date", dates).sort_by(
            [("_date", "ascending"), ("device_id", "ascending"), ("timestamp_ingested", "ascending"),
             ("event_id", "ascending")])
        unsafe = [d for d in pc.unique(keyed["device_id"]).to_pylist() if not DEVICE_ID.fullmatch(d or "")]
        if unsafe:
            # the decoder never lands such ids; a row written by other means must not name a folder
            raise ValueError(f"{uri} holds device_id values that cannot name an archive folder (not "
                             f"{DEVICE_ID.pattern}): {unsafe[:5]}; nothing was moved")
        fs, root = _fs(self._lake)
        keys = np.char.add(np.asarray(to_numpy(keyed["_date"]), dtype=str),
                           np.asarray(to_numpy(keyed["device_id"]), dtype=str))
        starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]]) if len(keys) else np.array([], int)
        ends = np.r_[starts[1:], len(keys)]
        written = 0
        for i, (lo, hi) in enumerate(zip(starts.tolist(), ends.tolist())):
            part = keyed.slice(lo, hi - lo)
            date, device = part["_date"][0].as_py(), part["device_id"][0].as_py()
            part = part.select(ARCHIVE_FILE_SCHEMA.names).cast(ARCHIVE_FILE_SCHEMA)
            written += _write_atomic(fs, root, f"date={date}/device_id={device}/{SOURCE_PREFIX}{src}.parquet", part)
            self._files.inc()
            if i == 0:
                _maybe_crash("partial_write")
        self._rows.inc(written)
        self._sources.inc()
        yield uri, data.num_rows, written


class _RemoveFromLanding(beam.DoFn):
    """After every archive file is written: removes the planned files from landing in one commit."""

    def __init__(self, plan: ArchivePlan):
        self._plan = plan
        self._removed = Metrics.counter(APP, "landing_files_removed")

    def process(self, results: list):
        plan = self._plan
        done = {uri for uri, _, _ in results}
        missing = [f.uri for f in plan.files if f.uri not in done]
        bad = [(uri, n, w) for uri, n, w in results if n != w]
        if missing or bad:
            raise RuntimeError(f"archive incomplete, landing left unchanged: missing {missing[:3]}, "
                               f"row mismatch {bad[:3]}")
        _maybe_crash("written")
        if lake.find_commit(plan.lake, LANDING, plan.commit_id) is None:
            table = lake.open_table(plan.lake, LANDING, plan.version)
            metadata = {lake.COMMIT_ID: plan.commit_id, lake.COMMIT_APP: APP,
                        lake.COMMIT_INPUTS: json.dumps({"landing_version": plan.version,
                                                        "files": len(plan.files)})}
            table.delete(f"ingest_date < '{plan.cutoff.isoformat()}'", custom_metadata=metadata)
            self._removed.inc(len(plan.files))
        _maybe_crash("removed")
        yield lake.find_commit(plan.lake, LANDING, plan.commit_id)


class MoveToArchive(beam.PTransform):
    """Writes the planned landing files into the archive, then removes them from landing (one commit)."""

    def __init__(self, plan: ArchivePlan):
        super().__init__()
        self._plan = plan

    def expand(self, pbegin):
        return (pbegin
                | "LandingFiles" >> beam.Create([(f.uri, f.partition_values) for f in self._plan.files])
                | "Spread" >> beam.Reshuffle()
                | "WriteArchive" >> beam.ParDo(_ArchiveLandingFile(self._plan.lake))
                # one small (uri, rows, written) per landing file crosses the shuffle, not a bundle's list
                | "AllWritten" >> Gather()
                | "RemoveFromLanding" >> beam.ParDo(_RemoveFromLanding(self._plan)))


def move(options: PipelineOptions, lake_root: str, hot_days: float, now: dt.datetime,
         dry_run_plan: bool = False) -> dict:
    """Plans and runs one archive move with ``options`` (the runner's); returns its summary (printed)."""
    plan = plan_move(lake_root, hot_days, now)
    if plan is None or not plan.files:
        summary = {"moved_files": 0, "nothing_to_do": True,
                   "landing_version": None if plan is None else plan.version}
        print(f"archive: nothing older than {hot_days:g} days in landing")
        return summary
    summary = {"landing_version": plan.version, "cutoff": plan.cutoff.isoformat(), "files": len(plan.files),
               "commit_id": plan.commit_id}
    if dry_run_plan:
        print("ARCHIVE_PLAN " + json.dumps(summary, sort_keys=True))
        return summary
    started = time.monotonic()
    pipeline = beam.Pipeline(options=options)
    _ = pipeline | "Archive" >> MoveToArchive(plan)
    result = pipeline.run()
    if is_dry_run(options):
        return dict(summary, dry_run=True)
    result.wait_until_finish()
    summary.update(metric_counters(result, APP), removed_in_version=lake.find_commit(lake_root, LANDING, plan.commit_id),
                   elapsed_s=round(time.monotonic() - started, 2))
    print_summary("archive", summary)
    return summary
