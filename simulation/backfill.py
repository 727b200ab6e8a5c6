"""History straight into the lake: landing (Delta, one commit per simulated day) and the
cold archive (Parquet, hive partitions date=YYYY-MM-DD/device_id=...)."""
from __future__ import annotations

import datetime as dt
import logging
import time
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads

from simulation import generator, rows
from simulation.fleet import Device
from simulation.incidents import Incident
from simulation.profiles import IDEAL, SensorProfile
from schemas import contracts
from core import lake

log = logging.getLogger(__name__)


@dataclass
class BackfillResult:
    landed_rows: int = 0
    archived_rows: int = 0
    commits: list[int] = None
    duplicate_rows: int = 0
    replayed_rows: int = 0


def _to_landing(chunk: pa.Table, ingested_ms: np.ndarray) -> pa.Table:
    ingested = pa.array(ingested_ms * 1000, pa.int64()).cast(contracts.UTC_TS)
    out = chunk.drop(["_t_ms"]) if "_t_ms" in chunk.column_names else chunk
    n = out.num_rows
    return (out.append_column("timestamp_ingested", ingested)
               .append_column("kafka_topic", pa.nulls(n, pa.string()))
               .append_column("kafka_partition", pa.nulls(n, pa.int32()))
               .append_column("kafka_offset", pa.nulls(n, pa.int64()))
               .append_column("ingest_date", pc.cast(ingested, pa.date32())))


# at most this many sampling steps per device go into one chunk (one commit): a day at the default
# 60 s interval; finer sampling (down to 1 s) cuts each day into pieces so memory stays bounded
MAX_STEPS_PER_CHUNK = 1440


def write_archive(lake_root: str, landing: pa.Table, reading_ms: np.ndarray, day: dt.date,
                  part: str = "") -> None:
    """Archive partitions by the reading's UTC date; files are named by day (and piece of the day,
    if cut) so reruns replace them."""
    date = pc.cast(pc.cast(pa.array(reading_ms * 1000).cast(contracts.UTC_TS), pa.date32()), pa.string())
    table = lake.conform("raw_sensor_readings", landing).append_column("date", date)
    pads.write_dataset(
        table, lake.table_uri(lake_root, "archive_raw_sensor_readings"), format="parquet",
        partitioning=pads.partitioning(pa.schema([("date", pa.string()), ("device_id", pa.string())]),
                                       flavor="hive"),
        basename_template=f"backfill-{day.isoformat()}{part}-{{i}}.parquet",
        existing_data_behavior="overwrite_or_ignore", max_partitions=100_000)


def backfill(lake_root: str, devices: list[Device], incidents: list[Incident], start: dt.datetime,
             end: dt.datetime, interval_s: float, seed: int, archive_before: dt.datetime | None,
             profile: SensorProfile = IDEAL) -> BackfillResult:
    result = BackfillResult(commits=[])
    n_days = int(np.ceil((end - start) / dt.timedelta(days=1)))
    t0 = time.monotonic()
    pieces = max(1, int(np.ceil(86400 / interval_s / MAX_STEPS_PER_CHUNK)))
    windows = []
    for i in range(n_days):
        day = start + dt.timedelta(days=i)
        for k in range(pieces):
            lo = day + dt.timedelta(days=1) * k / pieces
            if lo < end:
                windows.append((i, k, lo, min(day + dt.timedelta(days=1) * (k + 1) / pieces, end)))
    for i, k, day_start, day_end in windows:
        part = f"-p{k:03d}" if pieces > 1 else ""
        chunk = generator.readings(devices, day_start, day_end, interval_s, incidents, seed, profile)
        dups = rows.duplicates(chunk, incidents)
        parts = [chunk, dups]
        ingested = [chunk["_t_ms"].to_numpy() + rows.ingest_delay_ms(chunk["_t_ms"].to_numpy(), seed),
                    dups["_t_ms"].to_numpy() + 5000]
        for inc, replayed in rows.replays(devices, incidents, day_start, day_end, interval_s, seed, profile):
            at_ms = int(dt.datetime.fromisoformat(inc.detail["replayed_at"]).timestamp() * 1000)
            parts.append(replayed)
            ingested.append(at_ms + np.arange(replayed.num_rows, dtype=np.int64))
            result.replayed_rows += replayed.num_rows
        result.duplicate_rows += dups.num_rows
        day = pa.concat_tables([p.select(chunk.column_names) for p in parts])
        ingested_ms = np.concatenate(ingested)
        landing = _to_landing(day, ingested_ms)
        if archive_before is not None and day_end <= archive_before:
            write_archive(lake_root, landing, day["_t_ms"].to_numpy(), (start + dt.timedelta(days=i)).date(), part)
            result.archived_rows += landing.num_rows
            where = "archive"
        else:
            version = lake.append(lake_root, "raw_sensor_readings", landing,
                                  custom_metadata={"writer": "simulate.backfill", "day": day_start.date().isoformat(),
                                                   **({"piece": str(k)} if pieces > 1 else {})})
            result.commits.append(version)
            result.landed_rows += landing.num_rows
            where = f"landing v{version}"
        done = result.landed_rows + result.archived_rows
        log.info("backfill day %d/%d (%s%s): %d readings -> %s; %d total, %.0f readings/s",
                 i + 1, n_days, day_start.date(), f" piece {k + 1}/{pieces}" if pieces > 1 else "", landing.num_rows, where, done, done / (time.monotonic() - t0))
    return result
