"""Vectorised parsing of Contract 1's `ts` into UTC, for the streaming rules and for cleansing.

Accepted forms (DESIGN section 2):
  * epoch milliseconds ("1795000000000", or the JSON number rendered as text);
  * ISO-8601 with an offset or Z ("2026-11-26T14:03:12.250+01:00");
  * ISO-8601 without an offset: the device's local time in its registry IANA timezone.
    In a DST fold (the repeated hour) the earlier instant is taken; a time inside a DST gap
    (which a clock that has not switched yet still shows) is read with the offset in force just
    before the gap, like Python's zoneinfo with fold=0.
Anything else, or a local time without a known timezone, or a time outside 2000..2100, is null.
"""
from __future__ import annotations

import datetime as dt

import numpy as np
import polars as pl
import pyarrow as pa

UTC_US = pa.timestamp("us", tz="UTC")
_MIN = dt.datetime(2000, 1, 1, tzinfo=dt.timezone.utc)
_MAX = dt.datetime(2100, 1, 1, tzinfo=dt.timezone.utc)
_EPOCH = r"^-?\d{1,15}(\.\d+)?$"


def _localize(naive: pl.Series, zone: str) -> pl.Series:
    local = naive.dt.replace_time_zone(zone, ambiguous="earliest", non_existent="null")
    gap = local.is_null() & naive.is_not_null()
    if gap.any():
        before = (naive - dt.timedelta(hours=2)).dt.replace_time_zone(zone, ambiguous="earliest")
        offset = before.dt.replace_time_zone(None) - before.dt.convert_time_zone("UTC").dt.replace_time_zone(None)
        shifted = (naive - offset).dt.replace_time_zone("UTC").dt.convert_time_zone(zone)
        local = pl.select(pl.when(gap).then(shifted).otherwise(local)).to_series()
    return local.dt.convert_time_zone("UTC")


def _python_fallback(text: str | None, zone: str | None) -> int | None:
    if text is None:
        return None
    try:
        value = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        return None
    if value.tzinfo is None:
        if not zone:
            return None
        from zoneinfo import ZoneInfo
        value = value.replace(tzinfo=ZoneInfo(zone), fold=0)
    return int(value.timestamp() * 1_000_000)


def parse_ts(ts: pa.Array | pa.ChunkedArray, timezones: pa.Array | pa.ChunkedArray | None = None) -> pa.Array:
    """UTC timestamps (us) for each `ts`; null where it cannot be parsed. ``timezones`` gives the
    device's IANA zone per row (needed only for local times)."""
    frame = pl.DataFrame({"ts": pl.Series(pa.array(ts) if isinstance(ts, list) else ts, dtype=pl.Utf8),
                          "tz": pl.Series(timezones, dtype=pl.Utf8) if timezones is not None
                          else pl.Series([None] * len(ts), dtype=pl.Utf8)})
    text = frame["ts"].str.strip_chars()
    is_epoch = text.str.contains(_EPOCH).fill_null(False)
    epoch = pl.select(pl.when(is_epoch).then(text).otherwise(None).cast(pl.Float64) * 1000).to_series()
    utc = pl.from_epoch(epoch.round(0).cast(pl.Int64), time_unit="us").dt.replace_time_zone("UTC")
    with_offset = text.str.to_datetime("%Y-%m-%dT%H:%M:%S%.f%#z", strict=False, time_unit="us")
    utc = utc.fill_null(with_offset.dt.convert_time_zone("UTC"))
    naive = text.str.to_datetime("%Y-%m-%dT%H:%M:%S%.f", strict=False, time_unit="us")
    naive = pl.select(pl.when(utc.is_null()).then(naive).otherwise(None)).to_series()
    if naive.is_not_null().any():
        local = pl.Series([None] * len(text), dtype=pl.Datetime("us", "UTC"))
        for zone in frame["tz"].filter(naive.is_not_null()).unique().drop_nulls().to_list():
            rows = naive.is_not_null() & (frame["tz"] == zone).fill_null(False)
            local = pl.select(pl.when(rows).then(_localize(naive, zone)).otherwise(local)).to_series()
        utc = utc.fill_null(local)
    result = utc.dt.epoch("us").to_numpy().astype("float64")
    missing = np.isnan(result)
    if missing.any():   # rare forms (a space separator, a basic-format offset...): the slow path
        texts, zones = text.to_list(), frame["tz"].to_list()
        for i in np.flatnonzero(missing):
            value = _python_fallback(texts[i], zones[i])
            if value is not None:
                result[i] = value
    valid = ~np.isnan(result)
    lo, hi = int(_MIN.timestamp() * 1e6), int(_MAX.timestamp() * 1e6)
    valid[valid] &= (result[valid] >= lo) & (result[valid] < hi)
    return pa.array(np.where(valid, result, 0).astype(np.int64), mask=~valid).cast(UTC_US)


def utc_datetime(text: str) -> dt.datetime:
    """argparse type: ISO date or datetime, naive values are UTC."""
    value = dt.datetime.fromisoformat(text)
    return value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)
