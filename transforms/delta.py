"""Beam I/O for the lake's Delta tables.

Reading: delta-rs gives the exact file list of the versions needed; Beam's batched Parquet I/O
reads those files as Arrow tables (the partition columns, which Delta keeps in the paths, are added
back), as tables within a :class:`transforms.arrow.ChunkBound`. Writing: workers write Parquet files
into the table directory, then a single step commits them all in one Delta transaction, after the
data's TFDV statistics passed the contract.

Element sizes: upstream steps hand bounded chunks (a few MB) to the writer, which buffers them per
bundle up to ``target_bytes`` before writing, so files stay large however small the elements; the
written files' metadata reaches the commit through :class:`transforms.arrow.Gather` (one file per
element on the wire). The commit still holds every file's metadata: its size grows with the files
of one run (about 1 KB of statistics per file), which larger files keep small.
"""
from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass

import apache_beam as beam
import pyarrow as pa
import pyarrow.compute as pc
from apache_beam.metrics import Metrics
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.windowed_value import WindowedValue

from schemas.contracts import TABLES
from core import lake
from transforms.arrow import DEFAULT_BOUND, ChunkBound, Gather, ReadParquetChunks

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DeltaFile:
    uri: str
    partition_values: tuple[tuple[str, str | None], ...]


def snapshot_files(lake_root: str, table: str, version: int | None = None) -> list[DeltaFile]:
    dt = lake.open_table(lake_root, table, version)
    if dt is None:
        return []
    adds = dt.get_add_actions(flatten=False).to_pydict()
    root = lake.table_uri(lake_root, table)
    out = []
    # an unpartitioned table's add actions have no partition_values column
    for path, parts in zip(adds["path"], adds.get("partition_values") or [None] * len(adds["path"])):
        out.append(DeltaFile(f"{root}/{path}", tuple(sorted((parts or {}).items()))))
    return sorted(out, key=lambda f: f.uri)


def _typed(table: str, parts) -> tuple[tuple[str, object], ...]:
    """Partition values as the snapshot gives them (the log stores strings)."""
    schema = TABLES[table].schema
    out = []
    for name, value in parts:
        typ = schema.field(name).type if name in schema.names else pa.string()
        if value is not None and pa.types.is_date(typ):
            value = dt.date.fromisoformat(value)
        elif value is not None and pa.types.is_integer(typ):
            value = int(value)
        out.append((name, value))
    return tuple(out)


def added_files(lake_root: str, table: str, after_version: int | None, upto_version: int) -> list[DeltaFile]:
    """Data files committed in versions (after_version, upto_version] and not deleted since.

    Read from those versions' own commit files (cost: the new versions, not the table's age).
    Compaction (dataChange=false) adds no new data: its rewritten files are not returned, and the
    new files it compacted stay returned (they exist until vacuum's retention). Where a commit file
    is gone (log cleanup) the snapshots of both ends are diffed instead."""
    if after_version is None or after_version < 0:
        return snapshot_files(lake_root, table, upto_version)
    root = lake.table_uri(lake_root, table)
    added: dict[str, DeltaFile] = {}
    for version in range(after_version + 1, upto_version + 1):
        changes = lake.version_changes(lake_root, table, version)
        if changes is None:
            try:
                old = {f.uri for f in snapshot_files(lake_root, table, after_version)}
                return [f for f in snapshot_files(lake_root, table, upto_version) if f.uri not in old]
            except Exception as exc:  # noqa: BLE001 - delta-rs cannot time-travel into a cleaned log
                raise lake.cleaned_up(table, version, exc) from exc
        for r in changes.removes:
            if r.data_change:
                added.pop(f"{root}/{r.path}", None)
        for a in changes.adds:
            if a.data_change:
                added[f"{root}/{a.path}"] = DeltaFile(f"{root}/{a.path}", _typed(table, a.partition_values))
    return sorted(added.values(), key=lambda f: f.uri)


def with_partition_columns(table_name: str, data: pa.Table, partition_values) -> pa.Table:
    """Adds the partition columns back (Delta files do not store them) and casts to the contract; a
    nullable column the file predates reads as nulls, as Delta readers do after a schema change."""
    schema = TABLES[table_name].schema
    for name, value in partition_values:
        if name not in data.column_names:
            typ = schema.field(name).type
            if isinstance(value, str) and pa.types.is_date(typ):
                # pyarrow 10 cannot cast string -> date32 directly; via a timestamp it can
                column = pc.cast(pc.cast(pa.array([value] * data.num_rows, pa.string()), pa.timestamp("s")), typ)
            elif isinstance(value, str):
                column = pc.cast(pa.array([value] * data.num_rows, pa.string()), typ)
            else:
                column = pa.array([value] * data.num_rows, typ)
            data = data.append_column(name, column)
    for field in schema:        # a file written before a nullable column was added reads it as nulls
        if field.name not in data.column_names and field.nullable:
            data = data.append_column(field.name, pa.nulls(data.num_rows, field.type))
    return lake.conform(table_name, data)


def rows_in_version(lake_root: str, table: str, version: int) -> int:
    """Rows a commit added (the record counts of its add actions; one commit file read)."""
    changes = lake.version_changes(lake_root, table, version)
    if changes is None:      # the commit file is gone (log cleanup): diff the snapshots
        return _rows_by_snapshot(lake_root, table, version)
    return sum(a.num_records or 0 for a in changes.adds if a.data_change)


def _rows_by_snapshot(lake_root: str, table: str, version: int) -> int:
    before = {f.uri for f in snapshot_files(lake_root, table, version - 1)} if version else set()
    actions = lake.open_table(lake_root, table, version).get_add_actions(flatten=True).to_pydict()
    root = lake.table_uri(lake_root, table)
    counts = zip(actions.get("path", []), actions.get("num_records", []))    # no columns when no files
    return sum(n for p, n in counts if f"{root}/{p}" not in before)


class ReadDeltaFiles(beam.PTransform):
    """Reads the given files of a Delta table: PCollection of Arrow tables in the contract schema
    (or the given columns), each within ``bound`` rows and bytes before the partition columns."""

    def __init__(self, table: str, files: list[DeltaFile], columns: list[str] | None = None,
                 bound: ChunkBound = DEFAULT_BOUND):
        super().__init__()
        self._table = table
        self._files = files
        self._columns = columns
        self._bound = bound

    def expand(self, pbegin):
        parts = {f.uri: f.partition_values for f in self._files}
        table = self._table
        return (pbegin
                | "FileList" >> beam.Create(sorted(parts))
                | "ReadParquet" >> ReadParquetChunks(with_filename=True, columns=self._columns, bound=self._bound,
                                                     site=f"read_{table}")
                | "AddPartitions" >> beam.MapTuple(
                    lambda uri, data: with_partition_columns(table, data, parts[uri]) if self._columns is None
                    else data))


DEFAULT_TARGET_BYTES = 128 << 20      # Arrow bytes buffered per bundle before a write


class _WriteFiles(beam.DoFn):
    """Buffers the bundle's tables up to ``target_bytes`` and writes them together: few, large files
    from many small elements (and so few file entries for the commit to gather). Global window only
    (bounded pipelines): files written at the end of a bundle are emitted in it."""

    def __init__(self, lake_root: str, table: str, target_bytes: int = DEFAULT_TARGET_BYTES):
        self._lake = lake_root
        self._table = table
        self._target = target_bytes
        self._rows = Metrics.counter("delta_write", f"{table}_rows")
        self._files = Metrics.counter("delta_write", f"{table}_files")

    def start_bundle(self):
        self._pending, self._bytes = [], 0

    def process(self, data: pa.Table):
        if data.num_rows == 0:
            return
        self._pending.append(lake.conform(self._table, data))
        self._bytes += data.nbytes
        if self._bytes >= self._target:
            yield from self._flush()

    def finish_bundle(self):
        for written in self._flush():
            yield WindowedValue(written, GlobalWindow().max_timestamp(), [GlobalWindow()])

    def _flush(self):
        if not self._pending:
            return
        # one chunk per column: the Parquet writer makes a row group per input chunk otherwise
        data = pa.concat_tables(self._pending).combine_chunks()
        self._pending, self._bytes = [], 0
        for written in lake.write_files(self._lake, self._table, data):
            self._rows.inc(written.num_rows)
            self._files.inc()
            yield written


class _Commit(beam.DoFn):
    def __init__(self, lake_root: str, table: str, app: str, commit_id: str, inputs: dict):
        self._args = (lake_root, table)
        self._meta = dict(app=app, commit_id=commit_id, inputs=inputs)
        self._commits = Metrics.counter("delta_write", f"{table}_commits")

    def process(self, files: list, validation_report=None):
        if validation_report is not None and validation_report.hard_breaks:
            from transforms.validation import ContractViolation
            raise ContractViolation(validation_report)
        version = lake.commit_files(*self._args, sorted(files, key=lambda f: f.path), **self._meta)
        self._commits.inc()
        log.info("committed %d files (%d rows) to %s as version %d", len(files),
                 sum(f.num_rows for f in files), self._args[1], version)
        yield version


@beam.typehints.with_input_types(pa.Table)
@beam.typehints.with_output_types(int)
class WriteDelta(beam.PTransform):
    """Writes a bounded PCollection of Arrow tables to a Delta table in ONE commit.

    With ``validate``, TFDV statistics of the data are checked against the table's contract first:
    a hard break fails the run before the commit (the table stays unchanged); domain violations and
    drift (against ``baseline``) are logged. Output: a PCollection with the committed version.
    """

    def __init__(self, lake_root: str, table: str, *, app: str, commit_id: str, inputs: dict | None = None,
                 validate: bool = True, baseline=None, sample_rate: float | None = None):
        super().__init__()
        self._lake, self._table = lake_root, table
        self._app, self._commit_id, self._inputs = app, commit_id, inputs or {}
        self._validate, self._baseline, self._sample_rate = validate, baseline, sample_rate

    def expand(self, tables):
        files = (tables
                 | "WriteFiles" >> beam.ParDo(_WriteFiles(self._lake, self._table))
                 | "AllFiles" >> Gather())
        commit = _Commit(self._lake, self._table, self._app, self._commit_id, self._inputs)
        if not self._validate:
            return files | "Commit" >> beam.ParDo(commit)
        from transforms.validation import ValidateContract
        report = tables | "Validate" >> ValidateContract(self._table, self._baseline, self._sample_rate)
        return files | "Commit" >> beam.ParDo(commit, validation_report=beam.pvalue.AsSingleton(report))
