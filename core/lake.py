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


def open_table(lake: str, table: str, version: int | None = None, *,
               without_files: bool = False) -> DeltaTable | None:
    """The Delta table at ``version`` (default: latest), or None if it does not exist yet.
    ``without_files``: metadata and version only (no file list: cheaper for a large table)."""
    uri = table_uri(lake, table)
    if is_local(lake) and not os.path.exists(os.path.join(uri, "_delta_log")):
        return None
    try:
        return DeltaTable(uri, version=version, storage_options=storage_options(), without_files=without_files)
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
        configuration=TABLE_CONFIGURATION,
        custom_metadata=dict(custom_metadata) if custom_metadata else None,
    )
    return open_table(lake, table).version()


def overwrite(lake: str, table: str, data: pa.Table) -> int:
    """Replaces the table's content in one commit (used for the device registry)."""
    t = TABLES[table]
    write_deltalake(
        table_uri(lake, t), conform(table, data), mode="overwrite",
        partition_by=list(t.partition_by) or None, storage_options=storage_options(),
        configuration=TABLE_CONFIGURATION,
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
# The app the cleanse stamps on its commits, here rather than in transforms.cleansing so that the
# report finds the cleanse's inputs without importing Beam.
CLEANSE_APP = "cleanse"
# Statistics of every column, also past delta-rs' default of the first 32: a checkpoint (and so
# compaction, delta-rs' checkpoint every 100 commits) fails on a table whose non-nullable columns
# lack statistics ("unmasked nulls in non-nullable StructArray child"; features has 47 columns).
TABLE_CONFIGURATION = {"delta.dataSkippingNumIndexedCols": "-1"}


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
        stats = get_file_stats_from_metadata(f.metadata, num_indexed_cols=-1, columns_to_collect_stats=None)
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


# --- The commit log, read directly: bookkeeping of bounded cost ---------------------------------
# `DeltaTable.history()` reads every commit file of the table, so any "was commit X made" or "what
# did app Y consume last" through it grows with the lake's age (~130K commits at 90 days of one
# commit a minute). The questions below are answered from the newest commit files instead,
# `_delta_log/<version>.json`, read one at a time (local files directly, object stores through the
# DeltaStorageHandler), so each costs the versions committed since the caller last looked:
#   * find_commit(after=...) reads (after, latest] only: a commit made by a caller that planned on
#     version `after` can only be newer;
#   * find_commit(app=...) and last_inputs() read backward to the app's newest commit: an app's
#     commits to one table are made one at a time, so a commit being retried is the app's newest one
#     if it was made at all, and the newest one holds what the app consumed last;
#   * how far such a backward scan may have to go when other writers committed many versions
#     since is bounded by a per-app pointer, `<table>/_fleet_apps/<app>.json`: "up to version V,
#     the app's newest commit is P (with its commit info)". That is a fact about an immutable prefix
#     of the log, so a stale pointer (a crash after the commit, before the pointer) only means a
#     longer scan, never a wrong answer; it is verified against the log's version V when that file
#     still exists (a table dropped and recreated at the same path invalidates it).
# delta-rs 0.18 writes no `txn` (app transaction) actions through create_write_transaction and
# exposes none to Python, so the pointer stands in for them.

import threading  # noqa: E402
import time  # noqa: E402
from collections import OrderedDict  # noqa: E402
from urllib.parse import quote  # noqa: E402

LOG = "_delta_log"
APPS_DIR = "_fleet_apps"               # vacuum and pyarrow datasets skip names starting with "_"
POINTER_AFTER_SCAN = 32                # a backward scan longer than this refreshes the app pointer
_INFO_CACHE_SIZE = 50_000              # commit infos of remote tables (immutable): saves GETs


def _log_path(version: int) -> str:
    return f"{LOG}/{version:020d}.json"


class _Log:
    """Reads a table's log files: plain file I/O for a local table, else the DeltaStorageHandler."""

    def __init__(self, uri: str):
        self.uri = uri
        self.local = is_local(uri)
        self._handler = None if self.local else DeltaStorageHandler(uri, options=storage_options())

    def read(self, path: str) -> bytes | None:
        try:
            if self.local:
                with open(os.path.join(self.uri, path), "rb") as f:
                    return f.read()
            return self._handler.open_input_file(path).read()
        except FileNotFoundError:
            return None

    def tail(self, path: str, nbytes: int) -> tuple[bytes, int] | None:
        """The last ``nbytes`` of a file and its size (None: no such file)."""
        try:
            if self.local:
                with open(os.path.join(self.uri, path), "rb") as f:
                    size = f.seek(0, os.SEEK_END)
                    f.seek(max(0, size - nbytes))
                    return f.read(), size
            f = self._handler.open_input_file(path)
            size = f.size()
            f.seek(max(0, size - nbytes))
            return f.read(nbytes), size
        except FileNotFoundError:
            return None

    def exists(self, path: str) -> bool:
        if self.local:
            return os.path.exists(os.path.join(self.uri, path))
        return self._handler.get_file_info([path])[0].type != pa_fs.FileType.NotFound

    def write(self, path: str, data: bytes) -> None:
        """Replaces a small file atomically (a local rename; an object PUT is atomic)."""
        if self.local:
            full = os.path.join(self.uri, path)
            os.makedirs(os.path.dirname(full), exist_ok=True)
            tmp = f"{full}.{uuid.uuid4().hex}.tmp"
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, full)
            return
        with self._handler.open_output_stream(path) as out:
            out.write(data)


_logs: dict[str, _Log] = {}
_infos: OrderedDict = OrderedDict()
_lock = threading.Lock()
# counts every commit file read (tests assert that bookkeeping stays off old versions)
log_reads: dict[str, int] = {"commit": 0, "info": 0}


def _log(lake: str, table: str) -> _Log:
    uri = table_uri(lake, table)
    if uri not in _logs:
        _logs[uri] = _Log(uri)
    return _logs[uri]


def _parse(lines: bytes) -> list[dict]:
    return [json.loads(line) for line in lines.splitlines() if line.strip()]


def read_commit(lake: str, table: str, version: int) -> list[dict] | None:
    """Every action of one commit (None: no such version, or its file was cleaned up)."""
    log_reads["commit"] += 1
    data = _log(lake, table).read(_log_path(version))
    return None if data is None else _parse(data)


def _info_line(data: bytes) -> dict | None:
    for line in data.splitlines():
        if line.startswith(b'{"commitInfo"'):
            try:
                return json.loads(line)["commitInfo"]
            except ValueError:        # cut off at the start of a tail read
                return None
    return None


def commit_info(lake: str, table: str, version: int) -> dict | None:
    """The commitInfo of one version, with its ``version`` (None: no such file); {} if it has none.

    delta-rs writes commitInfo as the last line, after the add actions (possibly megabytes): the
    tail of the file is read first, the whole file only when commitInfo is not in it."""
    log = _log(lake, table)
    key = (log.uri, version)
    if not log.local and key in _infos:
        return _infos[key]
    log_reads["info"] += 1
    tail = log.tail(_log_path(version), 64 * 1024)
    if tail is None:
        return None
    data, size = tail
    info = _info_line(data)
    if info is None and len(data) < size:
        whole = log.read(_log_path(version))
        info = _info_line(whole) if whole is not None else None
    info = dict(info or {}, version=version)
    if not log.local:
        with _lock:
            _infos[key] = info
            while len(_infos) > _INFO_CACHE_SIZE:
                _infos.popitem(last=False)
    return info


def latest_version(lake: str, table: str, hint: int | None = None) -> int | None:
    """The table's newest version without loading its snapshot (None: no table).

    Starts at the newest checkpoint (``_last_checkpoint``, rewritten every 100 commits) or
    ``hint``, whichever is newer, and gallops forward over the commit files that exist: a few
    probes, whatever the table's age."""
    log = _log(lake, table)
    start = -1
    raw = log.read(f"{LOG}/_last_checkpoint")
    if raw:
        try:
            start = int(json.loads(raw)["version"])
        except (ValueError, KeyError):
            start = -1
    if hint is not None and hint > start:
        start = hint
    if start >= 0 and not log.exists(_log_path(start)):
        start = -1                    # a stale hint (or a table recreated at this path)
    if start < 0 and not log.exists(_log_path(0)):
        # a log that starts at a checkpoint after cleanup has no 0.json: ask delta-rs
        dt = open_table(lake, table, without_files=True)
        return dt.version() if dt is not None else None
    lo, step = max(start, 0), 1
    while log.exists(_log_path(lo + step)):
        lo, step = lo + step, step * 2
    hi = lo + step                    # lo exists, hi does not: bisect
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if log.exists(_log_path(mid)) else (lo, mid)
    return lo


def _infos_backward(lake: str, table: str, latest: int, stop: int):
    """Commit infos of versions latest, latest-1, ... > stop (ends early where the log was cleaned)."""
    for version in range(latest, stop, -1):
        info = commit_info(lake, table, version)
        if info is None:
            return
        yield info


def _pointer_path(app: str) -> str:
    return f"{APPS_DIR}/{quote(app, safe='')}.json"


def _read_pointer(lake: str, table: str, app: str, latest: int) -> dict | None:
    """The app pointer if it is consistent with this table's log (else None: scan without it)."""
    raw = _log(lake, table).read(_pointer_path(app))
    if not raw:
        return None
    try:
        p = json.loads(raw)
        upto, stamp = int(p["upto"]), (p["upto_timestamp"], p.get("upto_commit_id"))
    except (ValueError, KeyError, TypeError):
        return None
    if upto > latest:
        return None
    at = commit_info(lake, table, upto)
    if at is not None and (at.get("timestamp"), at.get(COMMIT_ID)) != stamp:
        return None                   # another table's log now lives at this path
    return p


def _write_pointer(lake: str, table: str, app: str, upto_info: dict, newest: dict | None) -> None:
    body = {"upto": upto_info["version"], "upto_timestamp": upto_info.get("timestamp"),
            "upto_commit_id": upto_info.get(COMMIT_ID), "newest": newest}
    try:
        _log(lake, table).write(_pointer_path(app), json.dumps(body, sort_keys=True).encode())
    except OSError as exc:            # only an optimisation: the next scan is longer
        import logging
        logging.getLogger(__name__).warning("could not write the %s pointer of %s: %s", app, table, exc)


def newest_commit(lake: str, table: str, app: str, latest: int | None = None) -> dict | None:
    """The commit info (with ``version``) of ``app``'s newest commit to ``table``, or None.

    Reads the versions since the app's newest commit, or since its pointer's ``upto``."""
    latest = latest_version(lake, table) if latest is None else latest
    if latest is None:
        return None
    pointer = _read_pointer(lake, table, app, latest)
    floor = pointer["upto"] if pointer else -1
    found, scanned, top = None, 0, None
    for info in _infos_backward(lake, table, latest, floor):
        top = top or info
        scanned += 1
        if info.get(COMMIT_APP) == app and COMMIT_ID in info:
            found = info
            break
    else:
        found = pointer["newest"] if pointer else None
    if scanned > POINTER_AFTER_SCAN and top is not None:
        _write_pointer(lake, table, app, top, found)
    return found


def commits(lake: str, table: str, app: str | None = None, limit: int | None = None) -> list[dict]:
    """Commit infos carrying our metadata among the newest ``limit`` versions (default: every
    version whose file is still there), newest first, optionally of one app. Costs ``limit``."""
    latest = latest_version(lake, table)
    if latest is None:
        return []
    stop = -1 if limit is None else max(-1, latest - limit)
    return [h for h in _infos_backward(lake, table, latest, stop)
            if COMMIT_ID in h and (app is None or h.get(COMMIT_APP) == app)]


def find_commit(lake: str, table: str, commit_id: str, *, after: int | None = None, app: str | None = None,
                latest: int | None = None) -> int | None:
    """The version that committed ``commit_id``, if any.

    ``after``: the table version the committing run planned on (its commit can only be newer):
    reads (after, latest]. ``app``: the app that makes it: reads back to the app's newest commit
    (see above). Neither: reads back until found (fine right after a commit; unbounded if it was
    never made)."""
    latest = latest_version(lake, table) if latest is None else latest
    if latest is None:
        return None
    floor = after if after is not None else -1
    pointer = _read_pointer(lake, table, app, latest) if app is not None and after is None else None
    if pointer:
        floor = max(floor, pointer["upto"])
    for info in _infos_backward(lake, table, latest, floor):
        if info.get(COMMIT_ID) == commit_id:
            return info["version"]
        if app is not None and after is None and info.get(COMMIT_APP) == app and COMMIT_ID in info:
            return None               # the app's newest commit is another one
    newest = pointer["newest"] if pointer else None
    return newest["version"] if newest and newest.get(COMMIT_ID) == commit_id else None


def last_inputs(lake: str, table: str, app: str) -> dict | None:
    """The input versions recorded by ``app``'s newest commit to ``table``."""
    info = newest_commit(lake, table, app)
    return None if info is None else json.loads(info.get(COMMIT_INPUTS, "{}"))


class CommitConflict(RuntimeError):
    """The commit kept failing on concurrent commits; the written files stay uncommitted."""


COMMIT_ATTEMPTS = 6
COMMIT_BACKOFF_S = 0.2


def _is_conflict(exc: Exception) -> bool:
    from deltalake.exceptions import CommitFailedError
    text = str(exc).lower()
    return isinstance(exc, CommitFailedError) or "conflict" in text or "version already exists" in text \
        or "concurrent" in text


def commit_files(lake: str, table: str, files: list[WrittenFile], *, app: str, commit_id: str,
                 inputs: dict | None = None, mode: str = "append",
                 partition_filters: list[tuple] | None = None, read_version: int | None = None) -> int:
    """Commits written files in one Delta transaction; returns the version (idempotent by id).

    ``mode="overwrite"`` with ``partition_filters`` (delta-rs filters, e.g.
    ``[("date", "in", ["2026-11-18"])]``) also removes the files of the matching partitions in the
    same transaction, to replace them with ``files``. ``read_version``: the version the caller
    planned on (read what it replaces from); the commit fails if the table moved on since.

    Bookkeeping reads only the versions since ``read_version`` (or since ``app``'s newest commit).
    An append that loses a race with a concurrent commit is retried with backoff (delta-rs
    rebases appends itself; this covers what it gives up on), then fails with CommitConflict; a
    commit with ``read_version`` is never retried onto a moved table.
    """
    if mode not in ("append", "overwrite") or (mode == "overwrite" and not partition_filters):
        raise ValueError(f"commit_files: mode {mode!r}: append, or overwrite with partition_filters "
                         "(a whole-table overwrite is not offered)")
    existing = find_commit(lake, table, commit_id, after=read_version, app=app)
    if existing is not None:
        return existing
    t = TABLES[table]
    metadata = {COMMIT_ID: commit_id, COMMIT_APP: app, COMMIT_INPUTS: json.dumps(inputs or {}, sort_keys=True)}
    adds = [f.add_action() for f in files]
    for attempt in range(COMMIT_ATTEMPTS):
        # an append needs no file list (delta-rs writes its checkpoints from the log all the same)
        dt = open_table(lake, table, without_files=mode == "append")
        current = dt.version() if dt is not None else None
        if read_version is not None and current != read_version:
            raise RuntimeError(f"{table} moved from version {read_version} to {current} while {commit_id} ran; "
                               "rerun it")
        try:
            if dt is None:
                write_new_deltalake(table_uri(lake, t), t.schema, adds, "append", list(t.partition_by), None,
                                    None, TABLE_CONFIGURATION, storage_options(), metadata)
            else:
                # deltalake 0.18 has no public call to commit files written elsewhere; this is the one
                # its own pyarrow writer uses.
                dt._table.create_write_transaction(adds, mode, list(t.partition_by), t.schema,
                                                   partition_filters if mode == "overwrite" else None, metadata)
            break
        except Exception as exc:  # noqa: BLE001 - only conflicts are retried
            if not _is_conflict(exc) and not (dt is None and "already exists" in str(exc).lower()):
                raise
            # the attempt may have landed before failing (e.g. a lost reply from an object store)
            landed = find_commit(lake, table, commit_id, after=current if current is not None else -1)
            if landed is not None:
                return _committed(lake, table, app, landed)
            if read_version is not None or attempt == COMMIT_ATTEMPTS - 1:
                raise CommitConflict(f"commit {commit_id} to {table} failed {attempt + 1} time(s) on concurrent "
                                     f"commits ({exc}); its files are written but not committed: rerun") from exc
            time.sleep(COMMIT_BACKOFF_S * 2 ** attempt)
    version = find_commit(lake, table, commit_id, after=current if current is not None else -1)
    assert version is not None, f"commit {commit_id} to {table} not found after committing"
    return _committed(lake, table, app, version)


def _committed(lake: str, table: str, app: str, version: int) -> int:
    info = commit_info(lake, table, version)
    if info:
        _write_pointer(lake, table, app, info, info)
    return version


class LogCleanedUp(RuntimeError):
    """A commit file needed to tell which files versions added is gone, and so is the snapshot before."""


def cleaned_up(table: str, version: int, exc: Exception) -> LogCleanedUp:
    return LogCleanedUp(f"{table}: the commit file of version {version} was removed by log cleanup "
                        f"(delta.logRetentionDuration) and the snapshots around it cannot be loaded ({exc}); "
                        "the files it added can no longer be told: restore the log or replan from a newer version")


@dataclass(frozen=True)
class FileChange:
    """One add or remove action of a commit (``path`` relative to the table root)."""
    path: str
    partition_values: tuple[tuple[str, str | None], ...]
    data_change: bool
    num_records: int | None = None


@dataclass(frozen=True)
class VersionChanges:
    version: int
    operation: str | None
    adds: tuple[FileChange, ...]
    removes: tuple[FileChange, ...]
    app: str | None = None                     # fleet.app of the commit


def _num_records(stats: str | None) -> int | None:
    try:
        return int(json.loads(stats)["numRecords"]) if stats else None
    except (ValueError, KeyError, TypeError):
        return None


def version_changes(lake: str, table: str, version: int) -> VersionChanges | None:
    """The files one version added and removed, from its own commit file (None: the file is gone,
    e.g. after log cleanup; the caller falls back to a snapshot diff)."""
    actions = read_commit(lake, table, version)
    if actions is None:
        return None
    adds, removes, operation, app = [], [], None, None
    for a in actions:
        if "add" in a:
            x = a["add"]
            adds.append(FileChange(x["path"], tuple(sorted((x.get("partitionValues") or {}).items())),
                                   bool(x.get("dataChange", True)), _num_records(x.get("stats"))))
        elif "remove" in a:
            x = a["remove"]
            removes.append(FileChange(x["path"], tuple(sorted((x.get("partitionValues") or {}).items())),
                                      bool(x.get("dataChange", True))))
        elif "commitInfo" in a:
            operation, app = a["commitInfo"].get("operation"), a["commitInfo"].get(COMMIT_APP)
    return VersionChanges(version, operation, tuple(adds), tuple(removes), app)
