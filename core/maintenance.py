"""The lake's upkeep (no Beam): compaction, checkpoints and vacuum of the Delta tables.

- Compaction rewrites small files into larger ones in an OPTIMIZE commit whose actions carry
  ``dataChange=false``: the rows are the same, so incremental readers (cleanse, features, score)
  skip such a version instead of reading its files as new data. delta-rs allows it beside
  concurrent appends (the streaming landing keeps committing meanwhile).
- A checkpoint at the latest version bounds what opening a table reads (delta-rs also writes one
  every 100 commits).
- Vacuum deletes files that were removed from a table (by compaction, the archive move, an
  overwrite) longer ago than the retention. The retention is never shorter than the age of the
  oldest Delta version that a training manifest pins, as long as that pin is younger than
  ``pin_retention``: every such version stays readable by time travel (the documented guarantee
  for point-in-time extractions). Older pins are reported, not protected.
"""
from __future__ import annotations

import datetime as dt
import json
import logging
import math
import os
from dataclasses import dataclass, field

from schemas import contracts
from core import lake

log = logging.getLogger(__name__)
APP = "maintain"
HOUR_MS = 3600 * 1000


@dataclass(frozen=True)
class Policy:
    target_file_bytes: int = 128 * 1024 * 1024
    vacuum_retention: dt.timedelta = dt.timedelta(days=7)     # delta-rs' own minimum by default
    pin_retention: dt.timedelta = dt.timedelta(days=30)       # pinned training reads stay readable this long


@dataclass
class TableUpkeep:
    table: str
    version_before: int
    files_before: int
    files_after: int = 0
    version_after: int = 0
    compacted_files: int = 0
    vacuumed_files: int = 0
    checkpoint_version: int | None = None
    retention_hours: int = 0

    def as_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass(frozen=True)
class Pin:
    table: str
    version: int
    dataset: str
    committed_at: dt.datetime


@dataclass
class Pins:
    protected: list[Pin] = field(default_factory=list)
    expired: list[Pin] = field(default_factory=list)


def delta_tables() -> list[str]:
    return [name for name, t in contracts.TABLES.items() if t.format == "delta"]


def commit_time(lake_root: str, table: str, version: int) -> dt.datetime:
    """When ``version`` was committed: its commitInfo timestamp (reads the commit file's tail)."""
    info = lake.commit_info(lake_root, table, version)
    if info is None:
        raise FileNotFoundError(f"{table} version {version}: commit file gone")
    if "timestamp" not in info:
        raise ValueError(f"{table} version {version}: no commitInfo timestamp")
    return dt.datetime.fromtimestamp(info["timestamp"] / 1000, dt.timezone.utc)


def training_pins(lake_root: str, now: dt.datetime, policy: Policy, roots: list[str] = ()) -> Pins:
    """The Delta versions pinned by the training manifests in <lake>/training and ``roots``."""
    pins = Pins()
    for path, dataset in _manifests([os.path.join(lake_root.removeprefix("file://"), "training"), *roots]):
        with open(path) as fh:
            spec = json.load(fh)["spec"]
        table = "raw_sensor_readings" if spec["kind"] == "raw" else "features"
        if spec.get("version") is None or spec["version"] < 0:
            continue
        try:
            pin = Pin(table, int(spec["version"]), dataset, commit_time(lake_root, table, int(spec["version"])))
        except (FileNotFoundError, OSError):      # the log entry itself is gone: nothing left to protect
            continue
        (pins.protected if now - pin.committed_at <= policy.pin_retention else pins.expired).append(pin)
    return pins


def _manifests(roots: list[str]):
    for root in roots:
        if os.path.isdir(root):
            for dataset in sorted(os.listdir(root)):
                path = os.path.join(root, dataset, "manifest.json")
                if os.path.isfile(path):
                    yield path, dataset


def retention_hours(table: str, pins: Pins, now: dt.datetime, policy: Policy) -> int:
    """Hours of removed files vacuum keeps for ``table``: at least the policy's, and enough for every
    protected pin (files removed after a pinned version was committed are younger than the pin)."""
    hours = policy.vacuum_retention / dt.timedelta(hours=1)
    for pin in pins.protected:
        if pin.table == table:
            hours = max(hours, (now - pin.committed_at) / dt.timedelta(hours=1) + 1)
    return math.ceil(hours)


def file_count(table) -> int:
    return table.get_add_actions(flatten=False).num_rows


def _last_checkpoint(lake_root: str, table: str) -> int | None:
    fs = lake._filesystem(lake.table_uri(lake_root, table))
    try:
        with fs.open_input_stream("_delta_log/_last_checkpoint") as stream:
            return int(json.loads(stream.read())["version"])
    except (FileNotFoundError, OSError, KeyError, ValueError):
        return None


def upkeep(lake_root: str, name: str, pins: Pins, now: dt.datetime, policy: Policy,
           dry_run: bool = False) -> TableUpkeep | None:
    """Compacts, checkpoints and vacuums one table; None when the table does not exist."""
    table = lake.open_table(lake_root, name)
    if table is None:
        return None
    out = TableUpkeep(name, table.version(), file_count(table))
    out.retention_hours = retention_hours(name, pins, now, policy)
    if not dry_run:
        if table.metadata().configuration != {**table.metadata().configuration, **lake.TABLE_CONFIGURATION}:
            table.alter.set_table_properties(lake.TABLE_CONFIGURATION)   # lakes made before it was set
        metrics = table.optimize.compact(target_size=policy.target_file_bytes,
                                         custom_metadata={lake.COMMIT_APP: APP})
        out.compacted_files = int(metrics.get("numFilesRemoved", 0))
        table = lake.open_table(lake_root, name)
        if _last_checkpoint(lake_root, name) != table.version():
            table.create_checkpoint()
        out.checkpoint_version = table.version()
    # the retention is explicit here (policy and pins), so delta-rs' table minimum does not apply
    out.vacuumed_files = len(table.vacuum(retention_hours=out.retention_hours, dry_run=dry_run,
                                          enforce_retention_duration=False,
                                          custom_metadata={lake.COMMIT_APP: APP}))
    table = lake.open_table(lake_root, name)
    out.version_after, out.files_after = table.version(), file_count(table)
    log.info("%s: %d -> %d files (compacted %d, vacuumed %d, retention %d h), version %d -> %d", name,
             out.files_before, out.files_after, out.compacted_files, out.vacuumed_files, out.retention_hours,
             out.version_before, out.version_after)
    return out
