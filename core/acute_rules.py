"""Acute rules (DESIGN section 5) as a columnar engine: all devices of a batch evaluated together.

Pure numpy (no Beam): `evaluate(states, batch, config, now)` takes a batch of readings of many
devices and the state of exactly those devices (`DeviceStates`, columnar), and returns their new
state, the alerts fired and counts. Its cost is proportional to the batch's readings plus the
touched devices' (bounded) state: readings are sorted by device and time once, and every rule is
array work over segments (offsets, prefix sums, searchsorted, sparse-table range maxima); only the
rare readings whose condition holds and that no existing alert suppresses go through a short exact
loop (suppression is sequential by nature).

State per device (all bounded, `DeviceStates`): the newest event time, event-id hashes of the last
`dedup_window` (duplicates), raw history per rule sensor (one, shared by the rules that watch
it) for the longest of their windows plus `reorder_slack` (current, suction pressure, temperature), vibration sums/counts/first time per
`bucket_minutes` over 24 h, and per rule the recent alerts and when their condition cleared.

Semantics (same as tests/reference_acute.py, the per-device engine this replaces):
- lateness: a reading more than `allowed_lateness` behind the newest reading of its device seen
  before it is late: counted, not evaluated. Others are merged into the history in time order and
  the rules are evaluated for them and for the history readings after them, as if in order. The
  history kept is each rule's window plus `reorder_slack` (30 s) behind the newest reading, not
  plus the whole lateness: exact for readings up to the slack out of order; a reading later than
  that (but within the lateness) is evaluated against the history still kept. This is what keeps
  the state under 4 KB per device (with the whole lateness: ~220 raw rows with event ids, ~10 KB).
- duplicates by event id (among non-late readings within the dedup window) are counted, not evaluated.
- suppression: a rule fires where its condition holds unless the same (device, rule) fired less than
  `suppression` of event time away, or fired before and its condition has not cleared since.
- windows: current pairs a reading with the one before it; pressure the max over [t - 60 s, t);
  cooling the least-squares slope over [t - 5 min, t]; vibration the mean of the 24 h of whole
  buckets before the reading's bucket, once the earliest reading in them is >= 1 h old.

A rule is a small class (`Rule`): its name, config block, sensor, the history it needs and a
vectorised `evaluate`; `RULES` is the one registry of rules (schemas.contracts.ACUTE_RULES is it).
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections import Counter
from dataclasses import dataclass, fields
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Callable, ClassVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import yaml

from schemas.sensors import SENSOR_TYPES

US = 1_000_000
MINUTE_US = 60 * US
NEVER = np.iinfo(np.int64).min // 2            # "no time" (no reading yet, condition not cleared)
# package data (setup.py ships core/config/*.yaml), read through importlib.resources: the same inside a
# wheel or a zip as in a checkout. Parsed on the driver; the DoFns receive the RuleConfig as a value.
DEFAULT_CONFIG = resources.files("core") / "config" / "acute_rules.yaml"
# codes in the sensor table's order: a new sensor type is appended there, so existing codes (in saved
# rule state) keep their meaning
SENSOR_CODES = {sensor: code for code, sensor in enumerate(SENSOR_TYPES)}


# --- configuration -------------------------------------------------------------------------

@dataclass(frozen=True)
class Thresholds:
    suppression_us: int
    lateness_us: int
    slack_us: int
    dedup_us: int
    current_factor: float
    current_gap_us: int
    pressure_window_us: int
    pressure_fraction: float
    pressure_kpa: float
    vibration_factor: float
    vibration_bucket_us: int
    vibration_window_buckets: int
    vibration_history_us: int
    cooling_window_us: int
    cooling_min_readings: int
    cooling_slope_per_minute: float

    @property
    def history_us(self) -> dict[str, int]:
        """How much raw history each rule sensor keeps behind the newest reading: the longest window of
        its rules (one history per sensor, however many rules watch it) plus the reorder slack."""
        out: dict[str, int] = {}
        for r in RULES:
            if r.window_us(self) is not None:
                out[r.sensor] = max(out.get(r.sensor, 0), r.window_us(self) + self.slack_us)
        return out


def _merge(base: dict, override: dict) -> dict:
    out = dict(base)
    for k, v in override.items():
        out[k] = _merge(base[k], v) if isinstance(v, dict) else v
    return out


class RuleConfig:
    """The rule thresholds file: defaults plus per-model overrides."""

    def __init__(self, raw: dict):
        self.raw = raw
        self._defaults = raw["defaults"]
        self._models = raw.get("models") or {}
        unknown = [m for m, o in self._models.items() for k in o if k not in self._defaults]
        if unknown:
            raise ValueError(f"acute rule config: unknown keys in model overrides: {unknown}")
        self.for_model = lru_cache(maxsize=None)(self._for_model)

    @classmethod
    def load(cls, path: str | Path | None = None) -> "RuleConfig":
        """The thresholds file at ``path``; by default the one shipped in the package."""
        return cls(yaml.safe_load(Path(path).read_text() if path else DEFAULT_CONFIG.read_text()))

    def __reduce__(self):
        # pickled (to the workers) as the parsed file; the per-model cache is rebuilt there
        return RuleConfig, (self.raw,)

    def _for_model(self, model: str | None) -> Thresholds:
        c = _merge(self._defaults, self._models.get(model, {})) if model else self._defaults
        v = c["vibration_surge"]
        bucket_us = int(v["bucket_minutes"] * MINUTE_US)
        window_us = int(v["window_hours"] * 60 * MINUTE_US)
        if window_us % bucket_us:
            raise ValueError("acute rule config: vibration window_hours must be whole buckets")
        return Thresholds(
            suppression_us=int(c["suppression_minutes"] * MINUTE_US),
            lateness_us=int(c["allowed_lateness_minutes"] * MINUTE_US),
            slack_us=int(c["reorder_slack_seconds"] * US),
            dedup_us=int(c["dedup_window_seconds"] * US),
            current_factor=float(c["current_spike"]["rated_current_factor"]),
            current_gap_us=int(c["current_spike"]["max_gap_seconds"] * US),
            pressure_window_us=int(c["pressure_drop"]["window_seconds"] * US),
            pressure_fraction=float(c["pressure_drop"]["min_drop_fraction"]),
            pressure_kpa=float(c["pressure_drop"]["min_drop_kpa"]),
            vibration_factor=float(v["factor"]),
            vibration_bucket_us=bucket_us,
            vibration_window_buckets=window_us // bucket_us,
            vibration_history_us=int(v["min_history_minutes"] * MINUTE_US),
            cooling_window_us=int(c["cooling_loss"]["window_seconds"] * US),
            cooling_min_readings=int(c["cooling_loss"]["min_readings"]),
            cooling_slope_per_minute=float(c["cooling_loss"]["max_slope_c_per_minute"]),
        )

    def params(self, models: np.ndarray) -> "Params":
        """Thresholds per device (row k: the device of model models[k]) as arrays."""
        keys = np.where(models == None, "", models).astype(str)  # noqa: E711 - object array
        uniq, inverse = np.unique(keys, return_inverse=True)
        per_model = [self.for_model(m or None) for m in uniq]
        return Params({f.name: np.array([getattr(t, f.name) for t in per_model])[inverse] for f in fields(Thresholds)})


class Params(dict):
    """Threshold field -> array over devices; attribute access for brevity."""
    __getattr__ = dict.__getitem__


# --- columnar state ------------------------------------------------------------------------

def _empty(**dtypes) -> dict[str, np.ndarray]:
    return {k: np.empty(0, d) for k, d in dtypes.items()}


HIST = dict(dev=np.int64, sensor=np.int8, t=np.int64, v=np.float64, eid="S1")   # eid: UTF-8, fixed width
SEEN = dict(dev=np.int64, t=np.int64, h=np.uint64)
VIB = dict(dev=np.int64, b=np.int64, s=np.float64, n=np.int64, first=np.int64)
FIRES = dict(dev=np.int64, rule=np.int8, f=np.int64, c=np.int64)
TABLES = {"hist": HIST, "seen": SEEN, "vib": VIB, "fires": FIRES}


_PACK_DEVICES = 4096             # pages of at least this many devices gather from packed rows


def _take_rows(table: dict, rows: np.ndarray) -> dict:
    return {k: v[rows] for k, v in table.items()}


def _concat_rows(tables: list[dict], schema: dict) -> dict:
    return {k: np.concatenate([t[k] for t in tables]) if tables else np.empty(0, d) for k, d in schema.items()}


def _offsets(dev: np.ndarray, n: int) -> np.ndarray:
    return np.searchsorted(dev, np.arange(n + 1), "left")


def _gather(offsets: np.ndarray, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row indices of segments idx (CSR offsets) in order, and the new segment number per row."""
    starts, lens = offsets[idx], offsets[idx + 1] - offsets[idx]
    total = int(lens.sum())
    seg = np.repeat(np.arange(len(idx)), lens)
    first = np.cumsum(lens) - lens
    return np.repeat(starts - first, lens) + np.arange(total), seg


@dataclass
class DeviceStates:
    """The state of a set of devices, columnar: per-device arrays and row tables sorted by device."""
    ids: np.ndarray                 # device ids (UTF-8, fixed width), sorted in a page
    max_t: np.ndarray               # newest event time seen (us), NEVER if none
    seen_at: np.ndarray             # newest arrival (element) time (us): eviction
    hist: dict                      # rule sensors' raw history, sorted by (dev, sensor, t)
    seen: dict                      # event-id hashes for duplicates
    vib: dict                       # vibration buckets, sorted by (dev, b)
    fires: dict                     # alerts per rule: time f and first clearing c (NEVER: not yet)

    def __len__(self):
        return len(self.ids)

    @classmethod
    def empty(cls, ids=()) -> "DeviceStates":
        ids = fixed_width(ids if isinstance(ids, np.ndarray) and ids.dtype.kind == "S" else list(ids))
        n = len(ids)
        return cls(ids, np.full(n, NEVER, np.int64), np.full(n, NEVER, np.int64),
                   *(_empty(**s) for s in TABLES.values()))

    def offsets(self, name: str) -> np.ndarray:
        """CSR offsets of a row table by device, computed once (states are not mutated in place)."""
        cache = self.__dict__.setdefault("_offsets", {})
        if name not in cache:
            cache[name] = _offsets(getattr(self, name)["dev"], len(self))
        return cache[name]

    def tables(self) -> dict[str, dict]:
        return {"hist": self.hist, "seen": self.seen, "vib": self.vib, "fires": self.fires}

    def take(self, idx: np.ndarray) -> "DeviceStates":
        """The devices at positions idx (in that order)."""
        idx = np.asarray(idx, np.int64)
        return DeviceStates.gather([self], np.zeros(len(idx), np.int64), idx, self.ids[idx])

    def _records(self, name: str) -> tuple[np.ndarray, np.dtype] | None:
        """A large page's table (but dev) as one array of packed rows (cached): a gather of a few
        devices then reads one block per device instead of one per column, which is what a lookup in
        a page far larger than the CPU caches costs. The table's columns become views of it (the page
        is held once)."""
        if len(self) < _PACK_DEVICES:
            return None
        cache = self.__dict__.setdefault("_packed", {})
        if name not in cache:
            table = getattr(self, name)
            cols = [k for k in table if k != "dev"]
            rec = np.empty(len(table["dev"]), [(k, table[k].dtype) for k in cols])
            for k in cols:
                rec[k] = table[k]
            setattr(self, name, {"dev": table["dev"], **{k: rec[k] for k in cols}})
            cache[name] = rec.view(np.dtype((np.void, rec.dtype.itemsize))), rec.dtype
        return cache[name]

    @staticmethod
    def gather(pages: list["DeviceStates"], page: np.ndarray, pos: np.ndarray, ids: np.ndarray) -> "DeviceStates":
        """Device k of the result is device pos[k] of pages[page[k]] (named ids[k]): one gather per page
        and column straight into the result (no concatenation, no reordering pass)."""
        n = len(page)
        used = [(k, p, np.flatnonzero(page == k)) for k, p in enumerate(pages)]
        used = [(p, sel, pos[sel]) for k, p, sel in used if len(sel)]
        per_device = {}
        for name in ("max_t", "seen_at"):
            per_device[name] = np.empty(n, np.int64)
            for p, sel, at in used:
                per_device[name][sel] = getattr(p, name)[at]
        out = {}
        for name, schema in TABLES.items():
            lens = np.zeros(n, np.int64)
            for p, sel, at in used:
                off = p.offsets(name)
                lens[sel] = off[at + 1] - off[at]
            dest_off = np.concatenate([[0], np.cumsum(lens)])
            cols = [k for k in schema if k != "dev"]
            table = {k: np.empty(int(dest_off[-1]), np.result_type(*(getattr(p, name)[k].dtype for p, _, _ in used))
                                 if used else schema[k]) for k in cols}
            for p, sel, at in used:
                rows, _ = _gather(p.offsets(name), at)
                dest, _ = _gather(dest_off, sel)
                packed = p._records(name)
                src = packed[0].take(rows).view(packed[1]) if packed is not None else getattr(p, name)
                for k in cols:
                    table[k][dest] = src[k] if packed is not None else src[k][rows]
            table["dev"] = np.repeat(np.arange(n), lens)
            out[name] = {k: table[k] for k in schema}
        return DeviceStates(ids, per_device["max_t"], per_device["seen_at"], **out)

    @staticmethod
    def concat(parts: list["DeviceStates"]) -> "DeviceStates":
        parts = [p for p in parts if len(p)]
        if not parts:
            return DeviceStates.empty()
        base = np.cumsum([0] + [len(p) for p in parts[:-1]])
        out = {}
        for name, schema in TABLES.items():
            tables = []
            for b, p in zip(base, parts):
                t = dict(getattr(p, name))
                t["dev"] = t["dev"] + b
                tables.append(t)
            out[name] = _concat_rows(tables, schema)
        return DeviceStates(np.concatenate([p.ids for p in parts]), np.concatenate([p.max_t for p in parts]),
                            np.concatenate([p.seen_at for p in parts]), **out)

    def nbytes(self) -> int:
        """Bytes of the arrays (strings at their UTF-8 length): an in-memory size estimate."""
        size = self.max_t.nbytes + self.seen_at.nbytes + self.ids.nbytes
        for table in self.tables().values():
            for k, v in table.items():
                size += sum(len(s.encode()) for s in v) if v.dtype == object else v.nbytes
        return size


# --- hashing, segments ---------------------------------------------------------------------

_FNV_OFFSET, _FNV_PRIME = np.uint64(0xCBF29CE484222325), np.uint64(0x100000001B3)


def fixed_width(strings) -> np.ndarray:
    """UTF-8 strings as a numpy fixed-width bytes array ('S'): gathers and sorts run in C, unlike
    object arrays. Built from the Arrow buffers with one vectorised scatter."""
    if isinstance(strings, np.ndarray) and strings.dtype.kind == "S":
        return strings
    arr = strings if isinstance(strings, (pa.Array, pa.ChunkedArray)) else pa.array(strings, pa.string())
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    n = len(arr)
    if n == 0:
        return np.empty(0, "S1")
    _, off_buf, data_buf = arr.buffers()
    offsets = np.frombuffer(off_buf, np.int32, n + 1, arr.offset * 4).astype(np.int64)
    lengths = np.diff(offsets)
    width = max(int(lengths.max()), 1)
    data = np.frombuffer(data_buf, np.uint8) if data_buf is not None else np.zeros(0, np.uint8)
    grid = np.zeros((n, width), np.uint8)
    row = np.repeat(np.arange(n), lengths)
    col = np.arange(int(lengths.sum())) - np.repeat(offsets[:-1] - offsets[0], lengths)
    grid[row, col] = data[offsets[0]:offsets[-1]]
    return grid.view(f"S{width}").ravel()


def fixed_lengths(fixed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The uint8 matrix of a fixed-width array and each string's length (trailing NULs excluded)."""
    width = fixed.dtype.itemsize
    grid = np.ascontiguousarray(fixed).view(np.uint8).reshape(len(fixed), width)
    lengths = np.full(len(fixed), width, np.int64)
    rows = np.flatnonzero(grid[:, width - 1] == 0)      # padded rows: walk their trailing NULs back
    for j in range(width - 1, -1, -1):                   # (cost: the padding, not the whole grid)
        if not len(rows):
            break
        lengths[rows] = j
        rows = rows[grid[rows, j - 1] == 0] if j else rows[:0]
    return grid, lengths


def fnv1a64(strings) -> np.ndarray:
    """FNV-1a 64-bit hashes of UTF-8 strings, vectorised over positions (stable across processes:
    they are persisted in the state)."""
    grid, length = fixed_lengths(fixed_width(strings))
    h = np.full(len(length), _FNV_OFFSET, np.uint64)
    with np.errstate(over="ignore"):
        for j in range(int(length.max()) if len(length) else 0):
            live = length > j
            h = np.where(live, (h ^ grid[:, j].astype(np.uint64)) * _FNV_PRIME, h)
    return h


def _dense_rank(*arrays: np.ndarray) -> tuple[list[np.ndarray], int]:
    """Ranks of values in a shared order (so that (segment, value) pairs become sortable ints)."""
    allv = np.concatenate(arrays)
    uniq, inv = np.unique(allv, return_inverse=True)
    out, pos = [], 0
    for a in arrays:
        out.append(inv[pos:pos + len(a)].astype(np.int64))
        pos += len(a)
    return out, len(uniq)


def _composite(dev_arrays, t_arrays) -> list[np.ndarray]:
    """Sortable int64 keys of (segment, time) pairs: dev * span + (t - tmin) when that fits in 63
    bits (the usual case: times of a batch and its history span minutes), else dense ranks."""
    lo = min((int(t.min()) for t in t_arrays if len(t)), default=0)
    hi = max((int(t.max()) for t in t_arrays if len(t)), default=0)
    top = max((int(d.max()) for d in dev_arrays if len(d)), default=0) + 1
    span = hi - lo + 1
    if span * top < 2**62:
        return [d * span + (t - lo) for d, t in zip(dev_arrays, t_arrays)]
    ranks, n = _dense_rank(*t_arrays)
    return [d * (n + 1) + r for d, r in zip(dev_arrays, ranks)]


def _segment_search(dev: np.ndarray, t: np.ndarray, qdev: np.ndarray, qt: np.ndarray, side: str) -> np.ndarray:
    """searchsorted of (qdev, qt) among rows sorted by (dev, t): positions stay inside segments."""
    if not len(t):
        return np.zeros(len(qt), np.int64)
    qt = np.clip(qt, int(t.min()) - 1, int(t.max()) + 1)          # the same answers, a bounded span
    keys, queries = _composite([dev, qdev], [t, qt])
    return np.searchsorted(keys, queries, side)


def _argsort_by(dev: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Stable order by (dev, t); cheap on the nearly sorted input the state gives (timsort runs)."""
    if not len(t):
        return np.zeros(0, np.int64)
    [key] = _composite([dev], [t])
    return np.argsort(key, kind="stable")


def _segment_cummax(seg: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Inclusive running max within segments of rows sorted by segment."""
    if not len(values):
        return values
    uniq, r = np.unique(values, return_inverse=True)
    width = len(uniq) + 1
    acc = np.maximum.accumulate(seg * width + r)
    return uniq[acc - seg * width]


def _padded_cumsum(seg_start: np.ndarray, seg_len: np.ndarray, values: list[np.ndarray]) -> list[np.ndarray]:
    """Per segment: [0, cumsum(values of the segment)] flattened, computed row-wise exactly as
    np.cumsum does on each segment alone (same float rounding as a per-device loop); the prefix of
    segment k at local position j is out[seg_start[k] + k + j]."""
    nseg, width = len(seg_len), int(seg_len.max()) if len(seg_len) else 0
    row = np.repeat(np.arange(nseg), seg_len)
    col = np.arange(int(seg_len.sum())) - np.repeat(seg_start, seg_len)
    out = []
    for v in values:
        grid = np.zeros((nseg, width + 1), dtype=v.dtype)
        grid[row, col + 1] = v
        out.append(np.cumsum(grid, axis=1))
    return out


def _range_max(v: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """max(v[lo:hi]) per query (nan where empty), by a sparse table: O(n log w)."""
    length = hi - lo
    out = np.full(len(lo), np.nan)
    if not len(v) or not (length > 0).any():
        return out
    levels = [v]
    while (1 << len(levels)) <= length.max():
        prev, step = levels[-1], 1 << (len(levels) - 1)
        nxt = prev.copy()
        nxt[:-step] = np.maximum(prev[:-step], prev[step:])
        levels.append(nxt)
    ok = length > 0
    k = np.floor(np.log2(np.maximum(length, 1))).astype(np.int64)
    table = np.stack(levels)
    a = table[k[ok], lo[ok]]
    b = table[k[ok], hi[ok] - (1 << k[ok])]
    out[ok] = np.maximum(a, b)
    return out


# --- rules -----------------------------------------------------------------------------------

@dataclass
class Series:
    """One sensor's merged rows (history + new) of many devices, sorted by (device, time)."""
    dev: np.ndarray
    t: np.ndarray
    v: np.ndarray
    eid: np.ndarray                 # event ids (the engine passes row numbers into its id strings)
    evaluate: np.ndarray            # rows to evaluate: at or after the device's earliest new reading
    seg_start: np.ndarray           # per device (segment number): first row
    seg_len: np.ndarray
    device_index: np.ndarray        # segment -> device position in the batch


@dataclass
class Evaluation:
    rows: np.ndarray                # evaluated rows (indices into the series), in time order per device
    cond: np.ndarray                # the rule's condition on those rows
    value: np.ndarray               # alert value per evaluated row
    threshold: np.ndarray
    context: Callable[[int], dict]  # context of evaluated row k (position in rows)


class Rule:
    """One acute rule. `window_field`: the Thresholds field of the raw history its sensor needs behind
    a reading (None: none, only the reorder slack; a rule on the reading alone). `keeps_buckets`: the
    rule keeps the per-bucket sums of the engine's bucket path instead (vibration's 24 h average).
    `evaluate(series, p)`: condition, value, threshold and context for the rows to evaluate; p holds
    thresholds per device (segment)."""
    name: ClassVar[str]
    config_key: ClassVar[str]
    sensor: ClassVar[str]
    window_field: ClassVar[str | None] = None
    keeps_buckets: ClassVar[bool] = False

    def window_us(self, th: Thresholds) -> int | None:
        """Raw history behind the newest reading (None: the rule keeps no raw history)."""
        if self.keeps_buckets:
            return None
        return getattr(th, self.window_field) if self.window_field else 0

    def window(self, p: Params) -> np.ndarray:
        """window_us per device (segment)."""
        return p[self.window_field] if self.window_field else np.zeros(len(p.suppression_us), np.int64)

    def evaluate(self, s: Series, p: Params) -> Evaluation | None:
        raise NotImplementedError


class CurrentSpike(Rule):
    name, config_key, sensor = "CURRENT_SPIKE", "current_spike", "compressor_current"
    window_field = "current_gap_us"

    def evaluate(self, s, p):
        rated = p.rated[s.dev]
        first = np.zeros(len(s.t), bool)
        first[s.seg_start[s.seg_len > 0]] = True
        rows = np.flatnonzero(s.evaluate & ~first & ~np.isnan(rated))
        limit = (p.current_factor * p.rated)[s.dev[rows]]
        prev_v, gap = s.v[rows - 1], s.t[rows] - s.t[rows - 1]
        cond = (s.v[rows] > limit) & (prev_v > limit) & (gap <= p.current_gap_us[s.dev[rows]])
        return Evaluation(rows, cond, s.v[rows], limit, lambda k: {
            "previous_value": float(prev_v[k]), "gap_seconds": gap[k] / US,
            "rated_current_a": float(rated[rows[k]])})


class TrailingWindowRule(Rule):
    """A rule over the trailing window of each row to evaluate (from t - window up to the row):
    `over_windows` gets the rows, their devices (segments) and each window's first row."""

    def evaluate(self, s, p):
        rows = np.flatnonzero(s.evaluate)
        d = s.dev[rows]
        lo = _segment_search(s.dev, s.t, d, s.t[rows] - self.window(p)[d], "left")
        return self.over_windows(s, p, rows, d, lo)

    def over_windows(self, s: Series, p: Params, rows: np.ndarray, d: np.ndarray, lo: np.ndarray) -> Evaluation:
        raise NotImplementedError


class PressureDrop(TrailingWindowRule):
    name, config_key, sensor = "PRESSURE_DROP", "pressure_drop", "suction_pressure"
    window_field = "pressure_window_us"

    def over_windows(self, s, p, rows, d, lo):
        window_max = _range_max(s.v, lo, rows)         # [t - window, t): the row itself excluded
        limit = np.minimum(window_max * (1 - p.pressure_fraction[d]), window_max - p.pressure_kpa[d])
        with np.errstate(invalid="ignore"):
            cond = ~np.isnan(window_max) & (s.v[rows] <= limit)
        v = s.v[rows]
        return Evaluation(rows, cond, v, limit, lambda k: {
            "window_max": float(window_max[k]), "drop_kpa": float(window_max[k] - v[k])})


class CoolingLoss(TrailingWindowRule):
    name, config_key, sensor = "COOLING_LOSS", "cooling_loss", "temperature"
    window_field = "cooling_window_us"

    def over_windows(self, s, p, rows, d, lo):
        x = (s.t - s.t[s.seg_start[s.dev]]) / MINUTE_US
        y = s.v
        cn, cx, cy, cxy, cxx = _padded_cumsum(s.seg_start, s.seg_len, [np.ones_like(x), x, y, x * y, x * x])
        n, sx, sy, sxy, sxx = (_pref(c, s, d, rows + 1) - _pref(c, s, d, lo) for c in (cn, cx, cy, cxy, cxx))
        denominator = n * sxx - sx * sx
        with np.errstate(invalid="ignore", divide="ignore"):
            slope = np.where(denominator > 0, (n * sxy - sx * sy) / denominator, np.nan)
            cond = (n >= p.cooling_min_readings[d]) & (slope > p.cooling_slope_per_minute[d])
        v = s.v[rows]
        window_s = p.cooling_window_us[d] / US
        # for this rule the alert's value is the slope, compared with the slope limit
        return Evaluation(rows, cond, slope, p.cooling_slope_per_minute[d].astype(float), lambda k: {
            "readings": int(n[k]), "temperature": float(v[k]), "window_seconds": float(window_s[k])})


def _pref(grid: np.ndarray, s: Series, d: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """Prefix (exclusive) sum up to global row pos of segment d, from a padded cumsum grid."""
    return grid[d, pos - s.seg_start[d]]


class VibrationSurge(Rule):
    name, config_key, sensor = "VIBRATION_SURGE", "vibration_surge", "vibration"
    keeps_buckets = True            # sums and counts per bucket, not raw history

    def evaluate(self, s, p):       # s: new rows sorted by (dev, t); s.buckets set by the engine
        raise NotImplementedError("evaluated by the engine's bucket path")


RULES: tuple[Rule, ...] = (CurrentSpike(), PressureDrop(), VibrationSurge(), CoolingLoss())
RULE_NAMES: tuple[str, ...] = tuple(r.name for r in RULES)
RULE_SENSOR = {r.name: r.sensor for r in RULES}


# --- batches, alerts -----------------------------------------------------------------------

@dataclass
class Batch:
    """Readings of many devices in arrival order; values canonical, times UTC us; model and
    rated_current_a per reading from the registry (None / nan when unknown)."""
    device: np.ndarray
    event_id: np.ndarray
    sensor: np.ndarray
    t: np.ndarray
    value: np.ndarray
    model: np.ndarray
    rated: np.ndarray
    arrived: np.ndarray | None = None       # element time (us) per reading, for eviction

    @classmethod
    def from_table(cls, table: pa.Table, arrived_us: int) -> "Batch":
        """A batch of the acute stage's Arrow table (device_id, event_id, sensor_type, t_us, value, model,
        rated_current_a), all arrived at arrived_us: ids straight from the Arrow buffers to fixed width,
        sensor and model as objects made once per distinct value (no Python string per reading)."""
        def column(name):
            c = table[name]
            return c.combine_chunks() if isinstance(c, pa.ChunkedArray) else c

        def objects(name):
            enc = pc.dictionary_encode(column(name))
            return np.array(enc.dictionary.to_pylist() + [None], object)[enc.indices.fill_null(-1).to_numpy()]
        return cls(fixed_width(column("device_id")), fixed_width(column("event_id")), objects("sensor_type"),
                   column("t_us").to_numpy(zero_copy_only=False).astype(np.int64),
                   column("value").to_numpy(zero_copy_only=False).astype(np.float64), objects("model"),
                   column("rated_current_a").to_numpy(zero_copy_only=False).astype(np.float64),
                   np.full(table.num_rows, arrived_us, np.int64))

    def devices(self) -> tuple[np.ndarray, np.ndarray]:
        """Sorted unique device ids and each reading's position among them."""
        names, index = np.unique(fixed_width(self.device), return_inverse=True)
        return names, index.astype(np.int64)


def alert_id(device_id: str, rule: str, event_id: str) -> str:
    return hashlib.sha1(f"{device_id}|{rule}|{event_id}".encode()).hexdigest()[:32]


def _alert(device_id: str, rule: str, event_id: str, t: int, value: float, threshold: float,
           detected_at: dt.datetime, context: dict) -> dict:
    return {
        "alert_id": alert_id(device_id, rule, _text(event_id)),
        "device_id": device_id,
        "rule": rule,
        "severity": "CRITICAL",
        "event_time": dt.datetime.fromtimestamp(int(t) / US, dt.timezone.utc),
        "detected_at": detected_at,
        "value": float(value),
        "threshold": float(threshold),
        "context": json.dumps({k: round(v, 6) if isinstance(v, float) else v for k, v in context.items()},
                              sort_keys=True),
        "event_id": _text(event_id),
    }


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


# --- suppression ---------------------------------------------------------------------------

def _fire(dev: np.ndarray, t: np.ndarray, cond: np.ndarray, fires: dict, rule_code: int,
          supp: np.ndarray) -> tuple[np.ndarray, dict]:
    """Suppression and re-arming over evaluated rows (sorted by device, then time) of one rule.
    fires: this rule's alerts of the devices (dev, f, c) sorted by (dev, f). Returns the rows that
    fire and the rule's updated alerts (clearing times filled in)."""
    fd, ff, fc = fires["dev"], fires["f"], fires["c"]
    false_dev, false_t = dev[~cond], t[~cond]
    cand = np.flatnonzero(cond)
    if len(cand) and len(fd):
        cd, ct = dev[cand], t[cand]
        # an existing alert within the suppression span of the candidate
        j = _segment_search(fd, ff, cd, ct - supp[cd], "right")
        jj = np.minimum(j, len(fd) - 1)
        near = (j < len(fd)) & (fd[jj] == cd) & (np.abs(ff[jj] - ct) < supp[cd])
        # the latest existing alert before it, if not re-armed by then (no clearing in between)
        k = _segment_search(fd, ff, cd, ct, "left") - 1
        kb = np.maximum(k, 0)
        has_before = (k >= 0) & (fd[kb] == cd)
        between = np.zeros(len(cd), bool)
        if len(false_t):
            q = _segment_search(false_dev, false_t, cd, ff[kb], "right")
            qq = np.minimum(q, len(false_t) - 1)
            between = (q < len(false_t)) & (false_dev[qq] == cd) & (false_t[qq] < ct)
        rearmed = np.where(fc[kb] != NEVER, fc[kb] <= ct, between)
        cand = cand[~(near | (has_before & ~rearmed))]
    fired = np.zeros(len(t), bool)
    new_dev, new_f = [], []
    if len(cand):                   # rare: the exact sequential rule, on these rows only
        for device in np.unique(dev[cand]):
            seg = slice(*np.searchsorted(fd, [device, device + 1]))
            state_f, state_c = list(ff[seg]), list(fc[seg])
            ft = false_t[slice(*np.searchsorted(false_dev, [device, device + 1]))]
            lst_f, lst_c = state_f, [None if c == NEVER else int(c) for c in state_c]
            for row in cand[dev[cand] == device]:
                tk = t[row]
                _record_clearing(lst_f, lst_c, ft[ft < tk])
                if any(abs(tk - f) < supp[device] for f in lst_f):
                    continue
                before = [(f, c) for f, c in zip(lst_f, lst_c) if f < tk]
                if before and (before[-1][1] is None or before[-1][1] > tk):
                    continue
                order = np.argsort(lst_f + [int(tk)], kind="stable")
                lst_f = [(lst_f + [int(tk)])[o] for o in order]
                lst_c = [(lst_c + [None])[o] for o in order]
                fired[row] = True
                new_dev.append(device)
                new_f.append(int(tk))
    # merge the new alerts into the table; clearing = first false row after each uncleared alert
    all_dev = np.concatenate([fd, np.array(new_dev, np.int64)])
    all_f = np.concatenate([ff, np.array(new_f, np.int64)])
    all_c = np.concatenate([fc, np.full(len(new_dev), NEVER, np.int64)])
    order = np.lexsort((all_f, all_dev))
    all_dev, all_f, all_c = all_dev[order], all_f[order], all_c[order]
    open_ = all_c == NEVER
    if open_.any() and len(false_t):
        q = _segment_search(false_dev, false_t, all_dev[open_], all_f[open_], "right")
        qq = np.minimum(q, len(false_t) - 1)
        hit = (q < len(false_t)) & (false_dev[qq] == all_dev[open_])
        c = all_c[open_]
        c[hit] = false_t[qq[hit]]
        all_c[open_] = c
    return fired, {"dev": all_dev, "rule": np.full(len(all_dev), rule_code, np.int8), "f": all_f, "c": all_c}


def _record_clearing(fired: list, cleared: list, false_t: np.ndarray) -> None:
    for n, (f, c) in enumerate(zip(fired, cleared)):
        if c is None:
            later = false_t[false_t > f]
            if len(later):
                cleared[n] = int(later.min())


# --- the engine ----------------------------------------------------------------------------

def evaluate(states: DeviceStates, batch: Batch, config: RuleConfig, detected_at: dt.datetime,
             device_index: np.ndarray | None = None) -> tuple[DeviceStates, list[dict], Counter]:
    """Evaluates a batch against the state of its devices. `states.ids` must be the batch's sorted
    unique devices (Batch.devices()); `device_index` the reading -> device positions if known.
    Returns the devices' new state (same order), the alerts fired and counts."""
    if device_index is None:
        ids, device_index = batch.devices()
        assert np.array_equal(ids, states.ids), "states must be aligned with the batch's devices"
    ndev = len(states)
    counts: Counter = Counter()
    # per-device thresholds and registry facts (a device's first reading in the batch)
    order = np.argsort(device_index, kind="stable")                 # by device, arrival kept
    dev = device_index[order]
    t = np.asarray(batch.t, np.int64)[order]
    starts = _offsets(dev, ndev)
    first_row = order[starts[:-1]]
    p = config.params(np.asarray(batch.model, object)[first_row])
    rated = np.asarray(batch.rated, np.float64)[first_row] if batch.rated is not None else np.full(ndev, np.nan)
    p["rated"] = rated

    # lateness against the newest reading before each (state, then earlier in the batch)
    inclusive = _segment_cummax(dev, t)
    before = np.full(len(t), NEVER, np.int64)
    same = np.zeros(len(t), bool)
    same[1:] = dev[1:] == dev[:-1]
    before[1:] = np.where(same[1:], inclusive[:-1], NEVER)
    running = np.maximum(before, states.max_t[dev])
    late = t < running - p.lateness_us[dev]

    # duplicates: the event id seen before (state) or earlier in the batch by a non-late reading
    eid = fixed_width(batch.event_id)[order]
    key = fnv1a64(eid)
    in_state = _pair_in(dev, key, states.seen["dev"], states.seen["h"])
    pos = np.arange(len(t))
    by_key = np.lexsort((pos, key, dev))
    kd, kk = dev[by_key], key[by_key]
    new_group = np.ones(len(t), bool)
    new_group[1:] = (kd[1:] != kd[:-1]) | (kk[1:] != kk[:-1])
    nonlate = (~late[by_key]).astype(np.int64)
    csum = np.cumsum(nonlate) - nonlate
    group_start = np.maximum.accumulate(np.where(new_group, np.arange(len(t)), 0))
    earlier = np.zeros(len(t), bool)
    earlier[by_key] = (csum - csum[group_start]) > 0
    duplicate = in_state | earlier
    counts["late"] += int(late.sum())
    counts["duplicates"] += int((duplicate & ~late).sum())
    keep = ~late & ~duplicate
    counts["evaluated"] += int(keep.sum())

    max_t = np.maximum(states.max_t, np.maximum.reduceat(t, starts[:-1]) if len(t) else states.max_t)
    arrived = np.asarray(batch.arrived, np.int64)[order] if batch.arrived is not None else None
    # arrival (element) time drives eviction; without one, event time stands in
    seen_at = np.maximum(states.seen_at, np.maximum.reduceat(arrived, starts[:-1]) if arrived is not None
                         else max_t)

    sensor = np.asarray(batch.sensor, object)[order]
    value = np.asarray(batch.value, np.float64)[order]
    alerts: list[dict] = []
    hist_parts, fire_parts = [], []
    vib_state = states.vib
    # histories carry event ids as row numbers into `eids` (state rows, then the batch's): the strings
    # are gathered once, into the new state, instead of at every step of the merge
    eids = np.concatenate([states.hist["eid"], eid])
    hist_rows = {**states.hist, "eid": np.arange(len(states.hist["t"]))}
    # one history per sensor, merged once and kept for the longest window of the rules that watch it
    windowed = [r for r in RULES if not r.keeps_buckets]
    series_of: dict[str, Series | None] = {}
    for name in dict.fromkeys(r.sensor for r in windowed):
        rows = np.flatnonzero(keep & (sensor == name))
        code = SENSOR_CODES[name]
        old = _take_rows(hist_rows, np.flatnonzero(states.hist["sensor"] == code))
        if not len(rows):
            hist_parts.append(old)
            series_of[name] = None
            continue
        retention = p.slack_us + np.maximum.reduce([r.window(p) for r in windowed if r.sensor == name])
        series_of[name], kept_hist = _merge_series(old, dev[rows], t[rows], value[rows], len(states.hist["t"]) + rows,
                                                   ndev, code, max_t, retention)
        hist_parts.append(kept_hist)
    for rule_code, rule in enumerate(RULES):
        rule_fires = _rule_rows(states.fires, rule_code)
        if rule.keeps_buckets:
            rows = np.flatnonzero(keep & (sensor == rule.sensor))
            evaluation, ev_dev, ev_t, ev_eid, vib_state = _vibration(states, dev[rows], t[rows], value[rows],
                                                                    eid[rows], p, ndev)
        else:
            series = series_of[rule.sensor]
            if series is None:
                fire_parts.append(rule_fires)
                continue
            evaluation = rule.evaluate(series, p) if len(series.t) else None
            if evaluation is None:
                fire_parts.append(rule_fires)
                continue
            ev_dev, ev_t, ev_eid = series.dev[evaluation.rows], series.t[evaluation.rows], \
                eids[series.eid[evaluation.rows]]
        if evaluation is None or not len(evaluation.rows):
            fire_parts.append(rule_fires)
            continue
        fired, updated = _fire(ev_dev, ev_t, evaluation.cond, rule_fires, rule_code, p.suppression_us)
        fire_parts.append(updated)
        for k in np.flatnonzero(fired):
            alerts.append(_alert(_text(states.ids[ev_dev[k]]), rule.name, ev_eid[k], ev_t[k], evaluation.value[k],
                                 evaluation.threshold[k], detected_at, evaluation.context(k)))
    for a in alerts:
        counts[f"alerts_{a['rule']}"] += 1

    # new state: histories, seen ids, buckets, alerts, all trimmed to what the rules can still need
    hist = _sort_rows(_concat_rows(hist_parts, HIST), ("dev", "sensor", "t"))
    hist["eid"] = eids[hist["eid"]]
    add = np.flatnonzero(keep)
    seen = _concat_rows([states.seen, {"dev": dev[add], "t": t[add], "h": key[add]}], SEEN)
    seen = _take_rows(seen, np.flatnonzero(seen["t"] >= (max_t - p.dedup_us)[seen["dev"]]))
    seen = _sort_rows(seen, ("dev",))
    oldest = (max_t - p.lateness_us) // p.vibration_bucket_us - p.vibration_window_buckets - 1
    vib = _take_rows(vib_state, np.flatnonzero(vib_state["b"] >= oldest[vib_state["dev"]]))
    fires = _trim_fires(_sort_rows(_concat_rows(fire_parts, FIRES), ("dev", "rule", "f")),
                        max_t - p.lateness_us - p.suppression_us)
    return DeviceStates(states.ids, max_t, seen_at, hist, seen, vib, fires), alerts, counts


def _pair_in(dev: np.ndarray, key: np.ndarray, sdev: np.ndarray, skey: np.ndarray) -> np.ndarray:
    """(dev, key) pairs present among (sdev, skey)."""
    if not len(skey):
        return np.zeros(len(key), bool)
    mix = np.uint64(0x9E3779B97F4A7C15)
    with np.errstate(over="ignore"):
        a = key ^ (dev.astype(np.uint64) * mix)
        b = skey ^ (sdev.astype(np.uint64) * mix)
    return np.isin(a, b)


def _sort_rows(table: dict, keys: tuple[str, ...]) -> dict:
    if len(keys) == 1:
        order = np.argsort(table[keys[0]], kind="stable")
    else:                               # (dev, small code, time): the code folds into the segment
        seg = table[keys[0]] * 8 + table[keys[1]].astype(np.int64)
        order = _argsort_by(seg, table[keys[2]])
    return _take_rows(table, order)


def _rule_rows(fires: dict, rule_code: int) -> dict:
    return _take_rows(fires, np.flatnonzero(fires["rule"] == rule_code))


def _trim_fires(fires: dict, horizon: np.ndarray) -> dict:
    """Keeps alerts that can still suppress (after horizon) and the latest before it (re-arming)."""
    if not len(fires["f"]):
        return fires
    d, r, f = fires["dev"], fires["rule"], fires["f"]
    recent = f >= horizon[d]
    last_of_group = np.ones(len(f), bool)
    last_of_group[:-1] = (d[1:] != d[:-1]) | (r[1:] != r[:-1]) | recent[1:]
    keep = recent | (~recent & last_of_group)
    return _take_rows(fires, np.flatnonzero(keep))


def _merge_series(old: dict, ndev_rows: np.ndarray, t: np.ndarray, v: np.ndarray, eid: np.ndarray, ndev: int,
                  code: int, max_t: np.ndarray, retention: np.ndarray) -> tuple[Series, dict]:
    """Merges new rows (dev, arrival order) into the devices' history of one sensor. Only devices
    with new rows are evaluated and trimmed; the others' history is returned unchanged."""
    has_new = np.zeros(ndev, bool)
    has_new[ndev_rows] = True
    touched = has_new[old["dev"]]
    untouched = _take_rows(old, np.flatnonzero(~touched))
    o = _take_rows(old, np.flatnonzero(touched))
    all_dev = np.concatenate([o["dev"], ndev_rows])
    all_t = np.concatenate([o["t"], t])
    all_v = np.concatenate([o["v"], v])
    all_e = np.concatenate([o["eid"], eid])
    order = _argsort_by(all_dev, all_t)                               # ties: history first, then arrival
    all_dev, all_t, all_v, all_e = all_dev[order], all_t[order], all_v[order], all_e[order]
    min_new = np.full(ndev, np.iinfo(np.int64).max)
    np.minimum.at(min_new, ndev_rows, t)
    seg_start = np.searchsorted(all_dev, np.arange(ndev), "left")
    seg_end = np.searchsorted(all_dev, np.arange(ndev), "right")
    series = Series(all_dev, all_t, all_v, all_e, all_t >= min_new[all_dev], seg_start, seg_end - seg_start,
                    np.arange(ndev))
    keep = all_t >= (max_t - retention)[all_dev]
    kept = {"dev": all_dev[keep], "sensor": np.full(int(keep.sum()), code, np.int8), "t": all_t[keep],
            "v": all_v[keep], "eid": all_e[keep]}
    return series, _concat_rows([untouched, kept], HIST)


def _vibration(states: DeviceStates, d: np.ndarray, t: np.ndarray, v: np.ndarray, eid: np.ndarray, p: Params,
               ndev: int):
    """Adds the new vibration readings to the buckets, then evaluates them (in time order) against
    the whole buckets of the 24 h before each reading's bucket."""
    old = states.vib
    bucket_us = p.vibration_bucket_us
    b_new = t // bucket_us[d] if len(t) else np.empty(0, np.int64)
    all_dev = np.concatenate([old["dev"], d])
    all_b = np.concatenate([old["b"], b_new])
    all_s = np.concatenate([old["s"], v])
    all_n = np.concatenate([old["n"], np.ones(len(t), np.int64)])
    all_first = np.concatenate([old["first"], t])
    order = _argsort_by(all_dev, all_b)
    sd, sb = all_dev[order], all_b[order]
    new_group = np.ones(len(sd), bool)
    new_group[1:] = (sd[1:] != sd[:-1]) | (sb[1:] != sb[:-1])
    group_sorted = np.cumsum(new_group) - 1
    group = np.empty(len(sd), np.int64)
    group[order] = group_sorted
    ngroups = int(new_group.sum())
    sums = np.bincount(group, weights=all_s, minlength=ngroups)           # in input order: as per device
    cnts = np.bincount(group, weights=all_n, minlength=ngroups).astype(np.int64)
    first = np.full(ngroups, np.iinfo(np.int64).max)
    np.minimum.at(first, group, all_first)
    gdev, gb = sd[new_group], sb[new_group]
    vib = {"dev": gdev, "b": gb, "s": sums, "n": cnts, "first": first}
    if not len(t):
        return None, None, None, None, vib
    o = _argsort_by(d, t)               # stable: by device, then time
    d, t, v, eid, m = d[o], t[o], v[o], eid[o], b_new[o]
    seg_start = np.searchsorted(gdev, np.arange(ndev), "left")
    seg_len = np.searchsorted(gdev, np.arange(ndev), "right") - seg_start
    lo = _segment_search(gdev, gb, d, m - p.vibration_window_buckets[d], "left")
    hi = _segment_search(gdev, gb, d, m, "left")
    cs, cc = _padded_cumsum(seg_start, seg_len, [sums, cnts])
    total = cs[d, hi - seg_start[d]] - cs[d, lo - seg_start[d]]
    count = cc[d, hi - seg_start[d]] - cc[d, lo - seg_start[d]]
    earliest = np.where(hi > lo, first[np.minimum(lo, len(first) - 1)], t)
    factor = p.vibration_factor[d]
    with np.errstate(invalid="ignore", divide="ignore"):
        average = np.where(count > 0, total / count, np.nan)
        cond = (count > 0) & (t - earliest >= p.vibration_history_us[d]) & (v > factor * average)
    limit = factor * average
    hours = (t - earliest) / MINUTE_US / 60
    ev = Evaluation(np.arange(len(t)), cond, v, limit, lambda k: {
        "moving_average": float(average[k]), "hours_of_data": float(hours[k])})
    return ev, d, t, eid, vib
