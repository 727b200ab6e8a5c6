"""Per-device training spans for ``extract_training --spans FILE``.

A spans file lists time spans per device or per device model: CSV with a header, or JSON (a list
of objects, or ``{"spans": [...]}``). Each entry has exactly one of ``device_id`` / ``model``, a
``start`` (ISO UTC, or ``commissioned``: the device's ``commissioned_at`` in the registry) and an
``end`` (ISO UTC, exclusive, or ``+<n><s|m|h|d>`` after the start, e.g. ``+20m``)::

    device_id,start,end
    dev-00001,2026-10-01T00:00:00,2026-10-03T00:00:00
    ,,                                   <- blank lines are skipped
    model,start,end
    CX-200,commissioned,+2d              <- (in its own file or mixed with device rows)

A device's own entries replace its model's. Entries are resolved into concrete, merged spans per
device (a model's devices and commissioning times come from the registry, whose version is
pinned), which is what the extraction filters on and what its manifest records.
"""
from __future__ import annotations

import csv
import datetime as dt
import hashlib
import io
import json
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from core import lake
from core.arrays import to_numpy
from core.timestamps import utc_datetime
from core.windows import parse_window_sizes

COMMISSIONED = "commissioned"


class SpansError(ValueError):
    """A spans file that cannot be used, with the entry at fault."""


@dataclass(frozen=True)
class SpanEntry:
    device_id: str | None
    model: str | None
    start: str
    end: str

    @property
    def where(self) -> str:
        return f"device {self.device_id}" if self.device_id else f"model {self.model}"


@dataclass(frozen=True)
class ResolvedSpans:
    spans: tuple[tuple[str, str, str], ...]      # (device_id, start ISO, end ISO), merged, sorted
    sha256: str                                  # of the spans file's bytes
    registry_version: int                        # registry version read (-1: not needed)


def _cell(row: dict, key: str) -> str | None:
    """A spans file entry's field, stripped (None: missing or blank)."""
    return str(row.get(key) or "").strip() or None


def _entries(payload: bytes, name: str) -> list[SpanEntry]:
    text = payload.decode("utf-8")
    if name.endswith(".json") or text.lstrip()[:1] in ("[", "{"):
        rows = json.loads(text)
        rows = rows.get("spans") if isinstance(rows, dict) else rows
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            raise SpansError(f"{name}: expected a JSON list of span objects (or {{'spans': [...]}})")
    else:
        rows = [r for r in csv.DictReader(io.StringIO(text)) if any((v or "").strip() for v in r.values())]
    out = []
    for i, r in enumerate(rows, 1):
        entry = SpanEntry(_cell(r, "device_id"), _cell(r, "model"), _cell(r, "start") or "", _cell(r, "end") or "")
        if (entry.device_id is None) == (entry.model is None):
            raise SpansError(f"{name} entry {i}: give exactly one of device_id or model, got {r}")
        if not entry.start or not entry.end:
            raise SpansError(f"{name} entry {i} ({entry.where}): start and end are required")
        out.append(entry)
    if not out:
        raise SpansError(f"{name}: no spans")
    return out


def _end_of(entry: SpanEntry, start: dt.datetime) -> dt.datetime:
    if entry.end.startswith("+"):
        try:
            return start + dt.timedelta(seconds=parse_window_sizes(entry.end[1:])[0].seconds)
        except ValueError as exc:
            raise SpansError(f"{entry.where}: end {entry.end!r}: {exc}") from None
    return _time(entry, entry.end)


def _time(entry: SpanEntry, text: str) -> dt.datetime:
    try:
        return utc_datetime(text)
    except ValueError:
        raise SpansError(f"{entry.where}: {text!r} is not an ISO date/time") from None


def _registry(lake_root: str) -> tuple[dict[str, tuple[str, dt.datetime]], int]:
    table = lake.open_table(lake_root, "devices")
    if table is None:
        raise SpansError("spans by model or from commissioning need the device registry, and the lake has none")
    rows = table.to_pyarrow_table(columns=["device_id", "model", "commissioned_at"]).to_pydict()
    return ({d: (m, c) for d, m, c in zip(rows["device_id"], rows["model"], rows["commissioned_at"])},
            table.version())


def _merge(spans: list[tuple[dt.datetime, dt.datetime]]) -> list[tuple[dt.datetime, dt.datetime]]:
    out: list[list[dt.datetime]] = []
    for lo, hi in sorted(spans):
        if out and lo <= out[-1][1]:
            out[-1][1] = max(out[-1][1], hi)
        else:
            out.append([lo, hi])
    return [(lo, hi) for lo, hi in out]


def resolve(lake_root: str, path: str, devices: tuple[str, ...] = ()) -> ResolvedSpans:
    """The spans file at ``path`` as merged per-device spans, restricted to ``devices`` if given."""
    with open(path, "rb") as fh:
        payload = fh.read()
    entries = _entries(payload, path)
    needs_registry = any(e.model or e.start == COMMISSIONED for e in entries)
    registry, registry_version = _registry(lake_root) if needs_registry else ({}, -1)
    by_model: dict[str, list[str]] = {}
    for d, (m, _) in registry.items():
        by_model.setdefault(m, []).append(d)
    own = {e.device_id for e in entries if e.device_id}
    per_device: dict[str, list[tuple[dt.datetime, dt.datetime]]] = {}
    for e in entries:
        if e.model and e.model not in by_model:
            raise SpansError(f"model {e.model!r} has no devices in the registry (version {registry_version})")
        targets = [e.device_id] if e.device_id else [d for d in sorted(by_model[e.model]) if d not in own]
        for d in targets:
            if e.start == COMMISSIONED:
                if d not in registry:
                    raise SpansError(f"device {d}: start 'commissioned' but the device is not in the registry")
                start = registry[d][1]
            else:
                start = _time(e, e.start)
            end = _end_of(e, start)
            if end <= start:
                raise SpansError(f"{e.where}: end {end.isoformat()} is not after start {start.isoformat()}")
            per_device.setdefault(d, []).append((start, end))
    keep = set(devices) if devices else None
    spans = tuple((d, lo.isoformat(), hi.isoformat()) for d in sorted(per_device) if keep is None or d in keep
                  for lo, hi in _merge(per_device[d]))
    if not spans:
        raise SpansError(f"{path}: no span is left for the devices {sorted(devices)}")
    return ResolvedSpans(spans, hashlib.sha256(payload).hexdigest(), registry_version)


def envelope(spans: tuple[tuple[str, str, str], ...]) -> tuple[str, str]:
    """Earliest start and latest end of the spans (ISO)."""
    return (min(utc_datetime(s).isoformat() for _, s, _ in spans),
            max(utc_datetime(e).isoformat() for _, _, e in spans))


def in_spans(device_ids: pa.ChunkedArray | pa.Array, times: pa.ChunkedArray | pa.Array,
             spans: tuple[tuple[str, str, str], ...]) -> pa.Array:
    """Boolean mask: the row's time lies in one of its device's spans (vectorised: one pass per span
    rank, i.e. as many passes as the most spans any one device has)."""
    devices = sorted({d for d, _, _ in spans})
    code = pc.index_in(device_ids, value_set=pa.array(devices, pa.string()))
    code = to_numpy(code.fill_null(-1)).astype(np.int64)
    unit = times.type.unit
    t = to_numpy(pc.cast(times, pa.int64()).fill_null(np.iinfo(np.int64).min)).astype(np.int64)
    ranks: list[tuple[np.ndarray, np.ndarray]] = []
    index = {d: i for i, d in enumerate(devices)}
    rank_of: dict[str, int] = {}

    def as_int(s) -> int:
        return pa.scalar(utc_datetime(s), pa.timestamp(unit, "UTC")).cast(pa.int64()).as_py()

    for d, lo, hi in spans:
        r = rank_of.get(d, 0)
        rank_of[d] = r + 1
        if r == len(ranks):      # empty spans (lo = hi) for devices without an r-th span
            ranks.append((np.zeros(len(devices) + 1, np.int64), np.zeros(len(devices) + 1, np.int64)))
        ranks[r][0][index[d]], ranks[r][1][index[d]] = as_int(lo), as_int(hi)
    mask = np.zeros(len(t), dtype=bool)
    for lo, hi in ranks:         # code -1 (a device without spans) takes the last, empty slot
        mask |= (t >= lo[code]) & (t < hi[code])
    return pa.array(mask)
