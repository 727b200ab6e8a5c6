"""Warm start of the acute rules from the lake: a job started without a savepoint (or a device met
without state) gets its 24 h vibration baseline back at once, instead of an hour of warm-up.

The baseline VIBRATION_SURGE needs is a sum, a count and the earliest reading per time bucket. At the
seed's rate 24 h of raw landing is ~20 billion readings, so the source is cheaper tables:
  * the 15-minute feature windows (``features``, window_size 15m): vibration mean x count per window,
    the window start standing in for its earliest reading;
  * the landing rows newer than a device's last feature window (vibration only, ingested within
    ``landing_lookback_s``), so the gap between the last features run and the restart is covered.
Features are computed from the cleansed GOOD readings while the rules see every in-range reading, so a
rebuilt bucket can differ from the live one by the readings the cleanse set aside; within the 3x
surge factor that is immaterial. Raw histories (spike, pressure, cooling windows of minutes) are not
rebuilt: those rules see their short windows again within minutes.

Pure numpy / pyarrow (no Beam). One load per worker process (see transforms.acute), kept for
``keep_s`` wall seconds: after that, devices new to the job have no recent history in the lake.
"""
from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from dataclasses import dataclass, replace

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads

from core import lake
from core.acute_rules import MINUTE_US, DeviceStates, RuleConfig, fixed_width
from core.arrays import to_numpy
from core.timestamps import parse_ts

log = logging.getLogger(__name__)
FEATURE_WINDOW = "15m"
FEATURE_WINDOW_US = 15 * MINUTE_US
DEFAULT_LANDING_LOOKBACK_S = 3 * 3600.0
DEFAULT_KEEP_S = 3600.0
PIECES = pa.schema([("device_id", pa.string()), ("start", pa.int64()), ("s", pa.float64()), ("n", pa.int64()),
                    ("first", pa.int64()), ("exact", pa.bool_())])
NO_TIME = np.iinfo(np.int64).min


@dataclass(frozen=True)
class Pieces:
    """Baseline pieces sorted by device: each a (start, sum, count, earliest) over a span of time
    that lies inside one bucket of any bucket size that is a multiple of 15 minutes."""
    ids: np.ndarray             # sorted unique device ids (fixed-width UTF-8)
    offsets: np.ndarray         # CSR offsets of each device's pieces
    start: np.ndarray
    s: np.ndarray
    n: np.ndarray
    first: np.ndarray
    exact: np.ndarray           # True: a single reading (fits any bucket size)

    @classmethod
    def empty(cls) -> "Pieces":
        return cls(fixed_width([]), np.zeros(1, np.int64), np.empty(0, np.int64), np.empty(0),
                   np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, bool))

    def __len__(self) -> int:
        return len(self.start)

    def states(self, ids: np.ndarray, bucket_us: np.ndarray) -> DeviceStates:
        """Empty states of the sorted unique ``ids`` with their vibration buckets rebuilt
        (``bucket_us`` per device). A device whose bucket size is not a multiple of the feature
        window gets only its exact (landing) pieces."""
        out = DeviceStates.empty(ids)
        if not len(self):
            return out
        pos = np.searchsorted(self.ids, out.ids)
        posc = np.minimum(pos, len(self.ids) - 1)
        hit = (pos < len(self.ids)) & (self.ids[posc] == out.ids)
        lo = self.offsets[posc]
        lengths = np.where(hit, self.offsets[posc + 1] - lo, 0)
        total = int(lengths.sum())
        if not total:
            return out
        dev = np.repeat(np.arange(len(out.ids)), lengths)
        rows = np.repeat(lo, lengths) + np.arange(total) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        whole = (bucket_us % FEATURE_WINDOW_US == 0)[dev]
        keep = whole | self.exact[rows]
        dev, rows = dev[keep], rows[keep]
        b = self.start[rows] // bucket_us[dev]
        key = np.lexsort((b, dev))
        dev, b, rows = dev[key], b[key], rows[key]
        new = np.ones(len(dev), bool)
        new[1:] = (dev[1:] != dev[:-1]) | (b[1:] != b[:-1])
        group = np.cumsum(new) - 1
        first = np.full(int(new.sum()), np.iinfo(np.int64).max)
        np.minimum.at(first, group, self.first[rows])
        vib = {"dev": dev[new], "b": b[new], "s": np.bincount(group, weights=self.s[rows]),
               "n": np.bincount(group, weights=self.n[rows]).astype(np.int64), "first": first}
        return replace(out, vib=vib)


def load(lake_root: str, config: RuleConfig, registry: pa.Table, now: dt.datetime,
         landing_lookback_s: float = DEFAULT_LANDING_LOOKBACK_S) -> Pieces:
    """The baseline pieces of every device, from the features and the recent landing rows."""
    th = config.for_model(None)
    horizon = now - dt.timedelta(microseconds=th.vibration_window_buckets * th.vibration_bucket_us
                                 + th.lateness_us + th.vibration_bucket_us)
    features = _feature_pieces(lake_root, horizon)
    since = now - dt.timedelta(seconds=landing_lookback_s)
    landing = _landing_pieces(lake_root, registry, since, _last_window_end(features))
    return _pieces(pa.concat_tables([features.drop(["window_end"]), landing]))


def _feature_pieces(lake_root: str, horizon: dt.datetime) -> pa.Table:
    table = lake.open_table(lake_root, "features")
    schema = PIECES.append(pa.field("window_end", pa.int64()))
    if table is None:
        return schema.empty_table()
    f = table.to_pyarrow_dataset().to_table(
        columns=["device_id", "window_start", "window_end", "vibration_mean", "vibration_count"],
        filter=(pads.field("window_size") == FEATURE_WINDOW) & (pads.field("date") >= horizon.date())
        & (pads.field("window_start") >= pa.scalar(horizon, pa.timestamp("us", "UTC")))
        & (pads.field("vibration_count") > 0))
    start = f["window_start"].cast(pa.int64())
    count = f["vibration_count"].cast(pa.int64())
    return pa.table({"device_id": f["device_id"].cast(pa.string()), "start": start,
                     "s": pc.multiply(f["vibration_mean"], count.cast(pa.float64())), "n": count, "first": start,
                     "exact": pa.array(np.zeros(f.num_rows, bool)), "window_end": f["window_end"].cast(pa.int64())},
                    schema=schema)


def _last_window_end(features: pa.Table) -> pa.Table:
    """Per device, the end of its newest feature window (landing rows from there on are added)."""
    last = features.group_by("device_id").aggregate([("window_end", "max")])
    return pa.table({"device_id": last["device_id"].combine_chunks(),
                     "cutoff": last["window_end_max"].combine_chunks()})


def _landing_pieces(lake_root: str, registry: pa.Table, since: dt.datetime, cutoffs: pa.Table) -> pa.Table:
    from core.readings import canonical_values, in_range     # the streaming path's own conversions
    table = lake.open_table(lake_root, "raw_sensor_readings")
    empty = PIECES.empty_table()
    if table is None:
        return empty
    rows = table.to_pyarrow_dataset().to_table(
        columns=["device_id", "ts", "value", "unit", "sensor_type"],
        filter=(pads.field("ingest_date") >= since.date()) & (pads.field("sensor_type") == "vibration")
        & (pads.field("timestamp_ingested") >= pa.scalar(since, pa.timestamp("us", "UTC"))))
    if not rows.num_rows:
        return empty
    zones = registry["timezone"].take(pc.index_in(rows["device_id"], value_set=registry["device_id"].combine_chunks()))
    t = parse_ts(rows["ts"], zones).cast(pa.int64())
    value = canonical_values(rows["sensor_type"], rows["unit"], rows["value"])
    cutoff = cutoffs["cutoff"].take(pc.index_in(rows["device_id"], value_set=cutoffs["device_id"]))
    t_np = np.asarray(to_numpy(t.fill_null(NO_TIME)), np.int64)
    cut_np = np.asarray(to_numpy(cutoff.fill_null(NO_TIME)), np.int64)
    keep = np.asarray(t.is_valid()) & in_range(rows["sensor_type"], value) & (t_np >= cut_np)
    n = int(keep.sum())
    return pa.table({"device_id": rows["device_id"].filter(pa.array(keep)), "start": t_np[keep], "s": value[keep],
                     "n": np.ones(n, np.int64), "first": t_np[keep], "exact": np.ones(n, bool)})


def _pieces(table: pa.Table) -> Pieces:
    if not table.num_rows:
        return Pieces.empty()
    names, index = np.unique(fixed_width(table["device_id"]), return_inverse=True)
    order = np.argsort(index, kind="stable")
    col = {c: np.asarray(to_numpy(table[c]))[order] for c in ("start", "s", "n", "first", "exact")}
    offsets = np.searchsorted(index[order], np.arange(len(names) + 1))
    return Pieces(names, offsets, col["start"].astype(np.int64), col["s"].astype(np.float64),
                  col["n"].astype(np.int64), col["first"].astype(np.int64), col["exact"].astype(bool))


class WarmStart:
    """One worker process's warm-start source: loaded on first use, dropped after ``keep_s``."""

    def __init__(self, lake_root: str, config: RuleConfig, landing_lookback_s: float = DEFAULT_LANDING_LOOKBACK_S,
                 keep_s: float = DEFAULT_KEEP_S, as_of: dt.datetime | None = None):
        self._lake, self._config, self._lookback, self._keep = lake_root, config, landing_lookback_s, keep_s
        self._as_of = as_of                  # None: the wall clock when first used (a replay sets its own clock)
        self._pieces: Pieces | None = None
        self._loaded_at = None
        self._lock = threading.Lock()        # bundles of one process run in threads

    def states(self, ids: np.ndarray, models: np.ndarray, registry: pa.Table) -> DeviceStates:
        """States for devices the job has no state for: rebuilt baselines while the source is kept."""
        with self._lock:
            self._load_once(registry)
        pieces = self._pieces
        if pieces is None or time.monotonic() - self._loaded_at > self._keep:
            self._pieces = None             # free the memory: the job's own state has taken over
            return DeviceStates.empty(ids)
        bucket_us = np.array([self._config.for_model(m).vibration_bucket_us for m in models], np.int64)
        return pieces.states(ids, bucket_us)

    def _load_once(self, registry: pa.Table) -> None:
        if self._loaded_at is None:
            t0 = time.monotonic()
            try:
                self._pieces = load(self._lake, self._config, registry,
                                    self._as_of or dt.datetime.now(dt.timezone.utc), self._lookback)
            except Exception:  # noqa: BLE001 - a warm start is an optimisation: never fail the job on it
                log.exception("acute warm start: reading the baselines from the lake failed; starting cold")
                self._pieces = Pieces.empty()
            self._loaded_at = time.monotonic()
            log.info("acute warm start: %d baseline pieces of %d devices from %s in %.1f s", len(self._pieces),
                     len(self._pieces.ids), self._lake, self._loaded_at - t0)
