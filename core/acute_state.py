"""Acute-rule state at fleet scale: a versioned binary page format and a log-structured store.

A *page* is the columnar state (`acute_rules.DeviceStates`) of some devices, sorted by device id,
encoded in one fixed binary layout (no pickle): a header with a version byte and row counts, then
each column as a little-endian array. Times of history rows and ids are stored as 32-bit offsets
behind the device's newest reading when they fit (a flag says so). ~3.5 KB per device with 24 h of
readings every 10 s on 5 sensors (tests/test_acute_state.py).

The store keeps one shard's devices in a few state cells so that a batch reads and writes only what
it touches, whatever the shard's size (a Beam Python stateful DoFn has no MapState: its
ReadModifyWrite, Combining and Set states are all bags under the hood, read and written whole):
- `log`: an append-only bag; each batch appends ONE page holding just the devices it touched;
- `runs`: an append-only bag of merged pages; when the log holds `LOG_PAGES` pages they are merged
  into one run (appended: nothing already written is rewritten);
- `level2`: the merged page of everything older; the runs (and the log) are merged into it once they
  hold as many records as it does, or `MAX_RUNS` runs (a tiered LSM tree: a device's record is
  written about 3 times, amortised, whatever the shard's size; a level that grew with the shard and
  was rewritten whole at every log merge made that 10x and more at 100K devices).
- `level1`: the merged middle tier of layout version 1 stores; still read and merged, never written.
A lookup searches the pages newest first (binary search per page). Reads are cheap when the SDK
harness caches state across bundles (`--max_cache_memory_usage_mb`, Flink hands out cache tokens):
the decoded pages stay in memory and only appends and merges go to the runner.
`compact` (the eviction timer) merges everything into level 2 and drops devices idle past a horizon.
"""
from __future__ import annotations

import struct
from typing import Protocol

import numpy as np
import pyarrow as pa

from core.acute_rules import FIRES, HIST, NEVER, SEEN, VIB, DeviceStates, fixed_lengths, fixed_width

VERSION = 1
MAGIC = b"AS"
LOG_PAGES = 8
MAX_RUNS = 32
_HEADER = struct.Struct("<2sBBIIIII")          # magic, version, flags, devices, hist, seen, vib, fires
_T32_HIST, _T32_SEEN, _B32 = 1, 2, 4


class StateVersionError(ValueError):
    pass


# --- page coder ------------------------------------------------------------------------------

def _strings(values: np.ndarray) -> bytes:
    if values.dtype.kind == "S":
        grid, lengths = fixed_lengths(values)
        width = grid.shape[1]
        if width > 0xFFFF and len(lengths) and lengths.max() > 0xFFFF:
            raise ValueError("acute state: a string over 65535 bytes")
        pad = width - lengths
        total = int(pad.sum())
        if not total:
            return lengths.astype("<u2").tobytes() + grid.tobytes()
        # drop the padding bytes: positions of row r's pad run start at r * width + lengths[r]
        run = np.arange(len(lengths)) * width + lengths - (np.cumsum(pad) - pad)
        body = np.delete(grid.ravel(), np.repeat(run, pad) + np.arange(total))
        return lengths.astype("<u2").tobytes() + body.tobytes()
    arr = pa.array(values, pa.string())
    _, off, data = arr.buffers()
    offsets = np.frombuffer(off, np.int32, len(arr) + 1)
    lengths = np.diff(offsets)
    if len(lengths) and lengths.max() > 0xFFFF:
        raise ValueError("acute state: a string over 65535 bytes")
    body = data.to_pybytes()[offsets[0]:offsets[-1]] if data is not None else b""
    return lengths.astype("<u2").tobytes() + body


def _read_strings(buf: memoryview, pos: int, n: int) -> tuple[np.ndarray, int]:
    lengths = np.frombuffer(buf, "<u2", n, pos).astype(np.int32)
    pos += 2 * n
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    size = int(offsets[-1])
    arr = pa.Array.from_buffers(pa.string(), n, [None, pa.py_buffer(offsets.tobytes()),
                                                 pa.py_buffer(bytes(buf[pos:pos + size]))])
    return arr.to_numpy(zero_copy_only=False).astype(object), pos + size


def _fits32(x: np.ndarray) -> bool:
    return not len(x) or (int(x.min()) >= -2**31 and int(x.max()) < 2**31)


def encode(states: DeviceStates) -> bytes:
    """One page: devices and their rows, columns as little-endian arrays (layout version 1)."""
    n = len(states)
    h, s, v, f = states.hist, states.seen, states.vib, states.fires
    counts = [np.bincount(t["dev"], minlength=n) for t in (h, s, v, f)]
    if any(len(c) and c.max() > 0xFFFF for c in counts):
        raise ValueError("acute state: over 65535 rows of one device in one table")
    hist_off = states.max_t[h["dev"]] - h["t"]
    seen_off = states.max_t[s["dev"]] - s["t"]
    flags = (_T32_HIST if _fits32(hist_off) else 0) | (_T32_SEEN if _fits32(seen_off) else 0) | \
        (_B32 if _fits32(v["b"]) else 0)
    parts = [_HEADER.pack(MAGIC, VERSION, flags, n, len(h["t"]), len(s["t"]), len(v["b"]), len(f["f"])),
             states.max_t.astype("<i8").tobytes(), states.seen_at.astype("<i8").tobytes(),
             *(c.astype("<u2").tobytes() for c in counts), _strings(states.ids),
             # hist
             h["sensor"].astype("<i1").tobytes(),
             hist_off.astype("<i4" if flags & _T32_HIST else "<i8").tobytes(),
             h["v"].astype("<f8").tobytes(), _strings(h["eid"]),
             # seen
             seen_off.astype("<i4" if flags & _T32_SEEN else "<i8").tobytes(), s["h"].astype("<u8").tobytes(),
             # vibration buckets
             v["b"].astype("<i4" if flags & _B32 else "<i8").tobytes(), v["s"].astype("<f8").tobytes(),
             v["n"].astype("<i4").tobytes(), v["first"].astype("<i8").tobytes(),
             # alerts
             f["rule"].astype("<i1").tobytes(), f["f"].astype("<i8").tobytes(), f["c"].astype("<i8").tobytes()]
    return b"".join(parts)


class _Reader:
    def __init__(self, data: bytes):
        self.buf, self.pos = memoryview(data), 0

    def array(self, dtype: str, n: int) -> np.ndarray:
        a = np.frombuffer(self.buf, dtype, n, self.pos)
        self.pos += a.nbytes
        return a.astype(dtype.lstrip("<"))

    def strings(self, n: int, fixed: bool = False) -> np.ndarray:
        if fixed:
            lengths = np.frombuffer(self.buf, "<u2", n, self.pos).astype(np.int64)
            self.pos += 2 * n
            size = int(lengths.sum())
            data = np.frombuffer(self.buf, np.uint8, size, self.pos)
            self.pos += size
            width = max(int(lengths.max()) if n else 1, 1)
            grid = np.zeros((n, width), np.uint8)
            offsets = np.cumsum(lengths) - lengths
            grid[np.repeat(np.arange(n), lengths), np.arange(size) - np.repeat(offsets, lengths)] = data
            return grid.view(f"S{width}").ravel()
        out, self.pos = _read_strings(self.buf, self.pos, n)
        return out


def decode(data: bytes) -> DeviceStates:
    if len(data) < _HEADER.size or data[:2] != MAGIC:
        raise StateVersionError("acute state: not a state page")
    magic, version, flags, n, nh, ns, nv, nf = _HEADER.unpack_from(data)
    if version != VERSION:
        raise StateVersionError(f"acute state: page version {version}, this code reads version {VERSION}")
    r = _Reader(data)
    r.pos = _HEADER.size
    max_t, seen_at = r.array("<i8", n), r.array("<i8", n)
    devs = [np.repeat(np.arange(n), r.array("<u2", n).astype(np.int64)) for _ in range(4)]
    ids = r.strings(n, fixed=True)
    hist = {"dev": devs[0], "sensor": r.array("<i1", nh)}
    hist["t"] = max_t[devs[0]] - r.array("<i4" if flags & _T32_HIST else "<i8", nh).astype(np.int64)
    hist["v"], hist["eid"] = r.array("<f8", nh), r.strings(nh, fixed=True)
    seen = {"dev": devs[1]}
    seen["t"] = max_t[devs[1]] - r.array("<i4" if flags & _T32_SEEN else "<i8", ns).astype(np.int64)
    seen["h"] = r.array("<u8", ns)
    vib = {"dev": devs[2], "b": r.array("<i4" if flags & _B32 else "<i8", nv).astype(np.int64),
           "s": r.array("<f8", nv), "n": r.array("<i4", nv).astype(np.int64), "first": r.array("<i8", nv)}
    fires = {"dev": devs[3], "rule": r.array("<i1", nf), "f": r.array("<i8", nf), "c": r.array("<i8", nf)}
    for table, schema in ((hist, HIST), (seen, SEEN), (vib, VIB), (fires, FIRES)):
        for k, dtype in schema.items():
            if dtype is not object and not (isinstance(dtype, str) and dtype.startswith("S")):
                table[k] = table[k].astype(dtype, copy=False)
    return DeviceStates(ids, max_t, seen_at, hist, seen, vib, fires)


# --- log-structured store ------------------------------------------------------------------

class Cells(Protocol):
    """Where a store keeps its pages (Beam state cells, or memory in tests and the bench)."""

    def log(self) -> list[DeviceStates]: ...
    def append(self, page: DeviceStates) -> None: ...
    def clear_log(self) -> None: ...
    def runs(self) -> list[DeviceStates]: ...
    def add_run(self, page: DeviceStates) -> None: ...
    def clear_runs(self) -> None: ...
    def level(self, i: int) -> DeviceStates | None: ...
    def set_level(self, i: int, page: DeviceStates | None) -> None: ...


class MemoryCells:
    def __init__(self):
        self._log, self._runs, self._levels = [], [], {1: None, 2: None}
        self.written_devices = 0            # devices written (appended or merged): write amplification

    def log(self):
        return list(self._log)

    def append(self, page):
        self._log.append(page)
        self.written_devices += len(page)

    def clear_log(self):
        self._log = []

    def runs(self):
        return list(self._runs)

    def add_run(self, page):
        self._runs.append(page)
        self.written_devices += len(page)

    def clear_runs(self):
        self._runs = []

    def level(self, i):
        return self._levels[i]

    def set_level(self, i, page):
        self._levels[i] = page
        self.written_devices += len(page) if page is not None else 0


def merge(pages_newest_first: list[DeviceStates], keep=None) -> DeviceStates:
    """One page: per device its newest record; keep(states) -> bool mask drops devices."""
    pages = [p for p in pages_newest_first if p is not None and len(p)]
    if not pages:
        return DeviceStates.empty()
    if len(pages) == 1:
        out = pages[0]
    else:
        sizes = np.array([len(p) for p in pages])
        base = np.cumsum(sizes) - sizes
        ids, first = np.unique(np.concatenate([p.ids for p in pages]), return_index=True)   # first = newest
        page = np.searchsorted(base, first, "right") - 1
        out = DeviceStates.gather(pages, page, first - base[page], ids)
    return out.take(np.flatnonzero(keep(out))) if keep is not None else out


class Store:
    """One shard's device states over `Cells`: lookups and writes touch only the batch's devices."""

    def __init__(self, cells: Cells, log_pages: int = LOG_PAGES, max_runs: int = MAX_RUNS):
        self._cells, self._log_pages, self._max_runs = cells, log_pages, max_runs
        self._pages = None

    def _newest_first(self) -> list[DeviceStates]:
        if self._pages is None:
            self._pages = [p for p in reversed(self._cells.log())] + [p for p in reversed(self._cells.runs())] + \
                [p for p in (self._cells.level(1), self._cells.level(2)) if p is not None]
        return self._pages

    def lookup(self, ids: np.ndarray, fill=None) -> DeviceStates:
        """States of the sorted unique `ids`, in that order. Devices the store does not hold get
        ``fill(their ids)`` (default: empty states)."""
        ids = fixed_width(ids)
        pages = list(self._newest_first())
        page = np.full(len(ids), -1, np.int64)
        pos = np.zeros(len(ids), np.int64)
        for k, p in enumerate(pages):
            todo = np.flatnonzero(page < 0)
            if not len(todo):
                break
            if not len(p):
                continue
            at = np.minimum(np.searchsorted(p.ids, ids[todo]), len(p) - 1)
            hit = p.ids[at] == ids[todo]
            page[todo[hit]], pos[todo[hit]] = k, at[hit]
        missing = np.flatnonzero(page < 0)
        if len(missing):
            pages.append((fill or DeviceStates.empty)(ids[missing]))
            page[missing], pos[missing] = len(pages) - 1, np.arange(len(missing))
        return DeviceStates.gather(pages, page, pos, ids)

    def write(self, page: DeviceStates) -> None:
        """Appends the touched devices' new states; merges tiers when the log is full."""
        self._cells.append(page)
        self._pages = None
        log = self._cells.log()
        if len(log) < self._log_pages:
            return
        run = merge(list(reversed(log)))
        runs, l1, l2 = self._cells.runs(), self._cells.level(1), self._cells.level(2)
        records = len(run) + sum(len(r) for r in runs) + (len(l1) if l1 is not None else 0)
        if l2 is None or records >= len(l2) or len(runs) + 1 >= self._max_runs:
            self._cells.set_level(2, merge([run] + list(reversed(runs)) + [l1, l2]))
            self._cells.set_level(1, None)
            self._cells.clear_runs()
        else:
            self._cells.add_run(run)
        self._cells.clear_log()

    def compact(self, now_us: int, horizon_us: int) -> tuple[int, int]:
        """Merges everything into one page without the devices silent since before now - horizon.
        Returns (devices kept, devices evicted)."""
        pages = self._newest_first()
        whole = merge(pages)
        kept = merge([whole], keep=lambda s: s.seen_at >= now_us - horizon_us)
        self._cells.clear_log()
        self._cells.clear_runs()
        self._cells.set_level(1, None)
        self._cells.set_level(2, kept if len(kept) else None)
        self._pages = None
        return len(kept), len(whole) - len(kept)

    def devices(self) -> int:
        return len(merge(self._newest_first()))


__all__ = ["VERSION", "Store", "MemoryCells", "StateVersionError", "decode", "encode", "merge", "NEVER"]
