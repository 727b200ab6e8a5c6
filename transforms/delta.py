"""Beam I/O for the lake's Delta tables.

Reading: delta-rs gives the exact file list of the versions needed; Beam's batched Parquet I/O
reads those files as Arrow tables (the partition columns, which Delta keeps in the paths, are added
back). Writing: workers write Parquet files into the table directory, then a single step commits
them all in one Delta transaction, after the data's TFDV statistics passed the contract.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import apache_beam as beam
import pyarrow as pa
import pyarrow.compute as pc
from apache_beam.io.parquetio import ReadAllFromParquetBatched
from apache_beam.metrics import Metrics

from schemas.contracts import TABLES
from transforms import lake

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


def added_files(lake_root: str, table: str, after_version: int | None, upto_version: int) -> list[DeltaFile]:
    """Files committed in versions (after_version, upto_version] of an append-only table."""
    old = {f.uri for f in snapshot_files(lake_root, table, after_version)} if after_version is not None else set()
    return [f for f in snapshot_files(lake_root, table, upto_version) if f.uri not in old]


def with_partition_columns(table_name: str, data: pa.Table, partition_values) -> pa.Table:
    """Adds the partition columns back and casts to the contract (Delta files do not store them)."""
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
    return lake.conform(table_name, data)


class ReadDeltaFiles(beam.PTransform):
    """Reads the given files of a Delta table: PCollection of Arrow tables in the contract schema."""

    def __init__(self, table: str, files: list[DeltaFile], columns: list[str] | None = None):
        super().__init__()
        self._table = table
        self._files = files
        self._columns = columns

    def expand(self, pbegin):
        parts = {f.uri: f.partition_values for f in self._files}
        table = self._table
        return (pbegin
                | "FileList" >> beam.Create(sorted(parts))
                | "ReadParquet" >> ReadAllFromParquetBatched(with_filename=True, columns=self._columns)
                | "AddPartitions" >> beam.MapTuple(
                    lambda uri, data: with_partition_columns(table, data, parts[uri]) if self._columns is None
                    else data))


class _WriteFiles(beam.DoFn):
    def __init__(self, lake_root: str, table: str):
        self._lake = lake_root
        self._table = table
        self._rows = Metrics.counter("delta_write", f"{table}_rows")
        self._files = Metrics.counter("delta_write", f"{table}_files")

    def process(self, data: pa.Table):
        if data.num_rows == 0:
            return
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
            from schemas.validation import ContractViolation
            raise ContractViolation(validation_report)
        version = lake.commit_files(*self._args, sorted(files, key=lambda f: f.path), **self._meta)
        self._commits.inc()
        log.info("committed %d files (%d rows) to %s as version %d", len(files),
                 sum(f.num_rows for f in files), self._args[1], version)
        yield version


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
                 | "AllFiles" >> beam.combiners.ToList())
        commit = _Commit(self._lake, self._table, self._app, self._commit_id, self._inputs)
        if not self._validate:
            return files | "Commit" >> beam.ParDo(commit)
        from schemas.validation import ValidateContract
        report = tables | "Validate" >> ValidateContract(self._table, self._baseline, self._sample_rate)
        return files | "Commit" >> beam.ParDo(commit, validation_report=beam.pvalue.AsSingleton(report))
