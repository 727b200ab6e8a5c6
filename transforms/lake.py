"""The lake (DESIGN section 3): table locations and Delta access through delta-rs.

``--lake`` is a local path or an object-store URI (s3://, gs://, abfss://); credentials come
from the environment the way delta-rs reads them (AWS_*, GOOGLE_*, AZURE_*), never from code.
"""
from __future__ import annotations

import os
from typing import Mapping

import pyarrow as pa
from deltalake import DeltaTable, write_deltalake

from schemas.contracts import TABLES, Table

DEFAULT_LAKE = "./data/lake"


def is_local(lake: str) -> bool:
    return "://" not in lake or lake.startswith("file://")


def table_uri(lake: str, table: str | Table) -> str:
    t = TABLES[table] if isinstance(table, str) else table
    base = lake.removeprefix("file://") if is_local(lake) else lake
    return f"{base.rstrip('/')}/{t.path}"


def storage_options() -> Mapping[str, str] | None:
    """delta-rs storage options from FLEET_STORAGE_* environment variables (or None)."""
    prefix = "FLEET_STORAGE_"
    opts = {k[len(prefix):].lower(): v for k, v in os.environ.items() if k.startswith(prefix)}
    return opts or None


def open_table(lake: str, table: str, version: int | None = None) -> DeltaTable | None:
    """The Delta table at ``version`` (default: latest), or None if it does not exist yet."""
    uri = table_uri(lake, table)
    if is_local(lake) and not os.path.exists(os.path.join(uri, "_delta_log")):
        return None
    try:
        return DeltaTable(uri, version=version, storage_options=storage_options())
    except Exception as exc:  # delta-rs raises TableNotFoundError for a missing remote table
        if "not found" in str(exc).lower() or "no files in log segment" in str(exc).lower():
            return None
        raise


def conform(table: str, data: pa.Table) -> pa.Table:
    """Casts ``data`` to the table's contract schema (column order, types, nullability)."""
    schema = TABLES[table].schema
    missing = [f.name for f in schema if f.name not in data.column_names]
    if missing:
        raise ValueError(f"{table}: missing columns {missing}")
    return pa.Table.from_arrays([data.column(f.name).cast(f.type) for f in schema], schema=schema)


def append(lake: str, table: str, data: pa.Table, *, custom_metadata: Mapping[str, str] | None = None) -> int:
    """Appends ``data`` to a Delta table in one commit; returns the new version."""
    t = TABLES[table]
    write_deltalake(
        table_uri(lake, t), conform(table, data), mode="append",
        partition_by=list(t.partition_by) or None, storage_options=storage_options(),
        custom_metadata=dict(custom_metadata) if custom_metadata else None,
    )
    return open_table(lake, table).version()


def overwrite(lake: str, table: str, data: pa.Table) -> int:
    """Replaces the table's content in one commit (used for the device registry)."""
    t = TABLES[table]
    write_deltalake(
        table_uri(lake, t), conform(table, data), mode="overwrite",
        partition_by=list(t.partition_by) or None, storage_options=storage_options(),
    )
    return open_table(lake, table).version()


def read(lake: str, table: str, version: int | None = None, columns: list[str] | None = None) -> pa.Table:
    """The whole table (at ``version``) as Arrow, or an empty table of its schema."""
    dt = open_table(lake, table, version)
    if dt is None:
        return TABLES[table].schema.empty_table()
    return dt.to_pyarrow_table(columns=columns)


# --- Committing files written elsewhere (by Beam workers) -------------------------------------
# Pipelines write Parquet files into a table's directory from many workers, then commit them all
# in one Delta transaction. Files that are written but not committed are invisible to readers
# (a crash before the commit leaves the table unchanged; `vacuum` removes such orphans later).
# Each commit carries `fleet.commit_id`; committing an id that is already in the table's history
# is a no-op, which makes a replayed or rerun commit idempotent.

import datetime as _dt  # noqa: E402
import json  # noqa: E402
import uuid  # noqa: E402
from dataclasses import dataclass  # noqa: E402

import pyarrow.dataset as pads  # noqa: E402
import pyarrow.fs as pa_fs  # noqa: E402
from deltalake._internal import write_new_deltalake  # noqa: E402
from deltalake.fs import DeltaStorageHandler  # noqa: E402
from deltalake.writer import AddAction, DeltaJSONEncoder, get_file_stats_from_metadata  # noqa: E402

COMMIT_ID = "fleet.commit_id"
COMMIT_APP = "fleet.app"
COMMIT_INPUTS = "fleet.inputs"


@dataclass(frozen=True)
class WrittenFile:
    """A data file written into a table's directory, not yet committed (a Delta `add` action)."""
    path: str                                   # relative to the table root
    size: int
    partition_values: tuple[tuple[str, str | None], ...]
    stats: str
    num_rows: int

    def add_action(self) -> AddAction:
        return AddAction(self.path, self.size, dict(self.partition_values),
                         int(_dt.datetime.now().timestamp() * 1000), True, self.stats)


def _filesystem(uri: str) -> pa_fs.FileSystem:
    return pa_fs.PyFileSystem(DeltaStorageHandler(uri, options=storage_options()))


def write_files(lake: str, table: str, data: pa.Table, prefix: str = "part") -> list[WrittenFile]:
    """Writes ``data`` as Parquet files into the table directory (hive-partitioned like the table)."""
    t = TABLES[table]
    data = conform(table, data)
    written: list[WrittenFile] = []

    def visitor(f) -> None:
        path = f.path.lstrip("/")
        parts = {}
        for segment in path.split("/")[:-1]:
            key, value = segment.split("=", 1)
            parts[key] = None if value == "__HIVE_DEFAULT_PARTITION__" else _unquote(value)
        stats = get_file_stats_from_metadata(f.metadata, num_indexed_cols=32, columns_to_collect_stats=None)
        written.append(WrittenFile(path, f.size, tuple(sorted(parts.items())),
                                   json.dumps(stats, cls=DeltaJSONEncoder), f.metadata.num_rows))

    partitioning = (pads.partitioning(pa.schema([t.schema.field(c) for c in t.partition_by]), flavor="hive")
                    if t.partition_by else None)
    pads.write_dataset(
        data, base_dir="/", basename_template=f"{prefix}-{uuid.uuid4()}-{{i}}.parquet", format="parquet",
        partitioning=partitioning, file_visitor=visitor, existing_data_behavior="overwrite_or_ignore",
        filesystem=_filesystem(table_uri(lake, t)), max_partitions=10_000,
        file_options=pads.ParquetFileFormat().make_write_options(use_compliant_nested_type=False))
    return written


def _unquote(value: str) -> str:
    from urllib.parse import unquote
    return unquote(value)


def commits(lake: str, table: str, app: str | None = None, limit: int | None = None) -> list[dict]:
    """The table's commit infos carrying our metadata, newest first (optionally of one app)."""
    dt = open_table(lake, table)
    if dt is None:
        return []
    out = [h for h in dt.history(limit) if COMMIT_ID in h]
    return [h for h in out if app is None or h.get(COMMIT_APP) == app]


def find_commit(lake: str, table: str, commit_id: str) -> int | None:
    """The version that committed ``commit_id``, if any."""
    for h in commits(lake, table):
        if h[COMMIT_ID] == commit_id:
            return h["version"]
    return None


def last_inputs(lake: str, table: str, app: str) -> dict | None:
    """The input versions recorded by ``app``'s newest commit to ``table``."""
    for h in commits(lake, table, app):
        return json.loads(h.get(COMMIT_INPUTS, "{}"))
    return None


def commit_files(lake: str, table: str, files: list[WrittenFile], *, app: str, commit_id: str,
                 inputs: dict | None = None, mode: str = "append",
                 partition_filters: list[tuple] | None = None, read_version: int | None = None) -> int:
    """Commits written files in one Delta transaction; returns the version (idempotent by id).

    ``mode="overwrite"`` with ``partition_filters`` (delta-rs filters, e.g.
    ``[("date", "in", ["2026-11-18"])]``) also removes the files of the matching partitions in the
    same transaction, to replace them with ``files``. ``read_version``: the version the caller
    planned on (read what it replaces from); the commit fails if the table moved on since.
    """
    existing = find_commit(lake, table, commit_id)
    if existing is not None:
        return existing
    if mode not in ("append", "overwrite") or (mode == "overwrite" and not partition_filters):
        raise ValueError(f"commit_files: mode {mode!r}: append, or overwrite with partition_filters "
                         "(a whole-table overwrite is not offered)")
    t = TABLES[table]
    metadata = {COMMIT_ID: commit_id, COMMIT_APP: app, COMMIT_INPUTS: json.dumps(inputs or {}, sort_keys=True)}
    adds = [f.add_action() for f in files]
    dt = open_table(lake, table)
    current = dt.version() if dt is not None else None
    if read_version is not None and current != read_version:
        raise RuntimeError(f"{table} moved from version {read_version} to {current} while {commit_id} ran; "
                           "rerun it")
    if dt is None:
        write_new_deltalake(table_uri(lake, t), t.schema, adds, "append", list(t.partition_by), None, None,
                            None, storage_options(), metadata)
    else:
        # deltalake 0.18 has no public call to commit files written elsewhere; this is the one
        # its own pyarrow writer uses.
        dt._table.create_write_transaction(adds, mode, list(t.partition_by), t.schema,
                                           partition_filters if mode == "overwrite" else None, metadata)
    version = find_commit(lake, table, commit_id)
    assert version is not None, f"commit {commit_id} to {table} not found after committing"
    return version
