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
