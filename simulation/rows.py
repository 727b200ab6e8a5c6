"""Row-level faults shared by the backfill and the stream: duplicates and replays."""
from __future__ import annotations

import copy
import datetime as dt

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from simulation import generator
from simulation.fleet import Device
from simulation.incidents import Incident
from simulation.profiles import IDEAL, SensorProfile


def _ms(t: dt.datetime) -> int:
    return int(t.timestamp() * 1000)


def duplicates(chunk: pa.Table, incidents: list[Incident]) -> pa.Table:
    """Second copies of the readings inside each `duplicates` incident's window."""
    parts = []
    for inc in incidents:
        if inc.mode != "duplicates":
            continue
        mask = pc.and_(pc.equal(chunk["device_id"], inc.device_id),
                       pc.and_(pc.greater_equal(chunk["_t_ms"], _ms(inc.start)), pc.less(chunk["_t_ms"], _ms(inc.end))))
        copies = chunk.filter(mask)
        inc.event_ids.extend(copies["event_id"].to_pylist())
        parts.append(copies)
    return pa.concat_tables(parts) if parts else chunk.slice(0, 0)


def replays(devices: list[Device], incidents: list[Incident], window_start: dt.datetime,
            window_end: dt.datetime, interval_s: float, seed: int,
            profile: SensorProfile = IDEAL) -> list[tuple[Incident, pa.Table]]:
    """For each replay whose reconnection falls in the window: the readings it re-sends."""
    by_id = {d.device_id: d for d in devices}
    out = []
    for inc in incidents:
        if inc.mode != "replay":
            continue
        at = dt.datetime.fromisoformat(inc.detail["replayed_at"])
        if window_start <= at < window_end:
            # the same rows as first sent: regenerate under a copy of the plan, which records touched ids
            rows = generator.readings([by_id[inc.device_id]], inc.start, inc.end, interval_s,
                                      copy.deepcopy(incidents), seed, profile)
            inc.event_ids = rows["event_id"].to_pylist()
            out.append((inc, rows))
    return out


def ingest_delay_ms(t_ms: np.ndarray, seed: int) -> np.ndarray:
    """A deterministic 0.2-3 s delay between a reading's time and its arrival."""
    u = generator.hash_normal(seed + 11, np.zeros(len(t_ms), dtype=np.int64), t_ms, 3)
    return (200 + np.abs(u) * 1000).clip(200, 3000).astype(np.int64)
