"""Every accepted `ts` form, DST gaps and folds, and what is rejected."""
from __future__ import annotations

import datetime as dt

import pyarrow as pa
import pytest

from core.timestamps import parse_ts

UTC = dt.timezone.utc


@pytest.mark.parametrize("text, zone, expected", [
    ("1795000000000", None, dt.datetime(2026, 11, 18, 11, 6, 40, tzinfo=UTC)),
    ("1795000000123.0", None, dt.datetime(2026, 11, 18, 11, 6, 40, 123000, tzinfo=UTC)),
    ("2026-11-26T14:03:12.250+01:00", None, dt.datetime(2026, 11, 26, 13, 3, 12, 250000, tzinfo=UTC)),
    ("2026-11-26T14:03:12+01:00", None, dt.datetime(2026, 11, 26, 13, 3, 12, tzinfo=UTC)),
    ("2026-11-26T14:03:12.250Z", None, dt.datetime(2026, 11, 26, 14, 3, 12, 250000, tzinfo=UTC)),
    ("2026-11-26T14:03:12.250-05:00", "Europe/Berlin", dt.datetime(2026, 11, 26, 19, 3, 12, 250000, tzinfo=UTC)),
    # local time in the registry's zone
    ("2026-11-26T14:03:12.250", "Europe/Berlin", dt.datetime(2026, 11, 26, 13, 3, 12, 250000, tzinfo=UTC)),
    ("2026-07-01T12:00:00", "America/New_York", dt.datetime(2026, 7, 1, 16, 0, tzinfo=UTC)),
    ("2026-11-26T09:00:00.000", "Asia/Tokyo", dt.datetime(2026, 11, 26, 0, 0, tzinfo=UTC)),
    # DST gap (02:00-03:00 does not exist on 2026-03-29 in Berlin): read with the winter offset
    ("2026-03-29T02:30:00.000", "Europe/Berlin", dt.datetime(2026, 3, 29, 1, 30, tzinfo=UTC)),
    ("2026-03-29T03:30:00.000", "Europe/Berlin", dt.datetime(2026, 3, 29, 1, 30, tzinfo=UTC)),
    # DST fold (02:00-03:00 happens twice on 2026-10-25): the earlier instant
    ("2026-10-25T02:30:00.000", "Europe/Berlin", dt.datetime(2026, 10, 25, 0, 30, tzinfo=UTC)),
    ("2026-10-25T03:30:00.000", "Europe/Berlin", dt.datetime(2026, 10, 25, 2, 30, tzinfo=UTC)),
    # rarer ISO spellings take the slow path
    ("2026-11-26 14:03:12+01:00", None, dt.datetime(2026, 11, 26, 13, 3, 12, tzinfo=UTC)),
])
def test_accepted_forms(text, zone, expected):
    assert parse_ts(pa.array([text]), pa.array([zone], pa.string()))[0].as_py() == expected


@pytest.mark.parametrize("text, zone", [
    ("yesterday", "UTC"), ("", "UTC"), (None, "UTC"),
    ("2026-11-26T14:03:12", None),                 # local time, device zone unknown
    ("2026-13-40T99:00:00+01:00", None),
    ("99999999999999", None),                      # year 5138
    ("1970-01-01T00:00:00Z", None),                # before 2000: a device clock that was never set
])
def test_rejected_forms_are_null(text, zone):
    assert parse_ts(pa.array([text], pa.string()), pa.array([zone], pa.string()))[0].as_py() is None


def test_mixed_batch_keeps_row_order():
    ts = pa.array(["2026-11-26T14:03:12.250", "1795000000000", "bad", "2026-11-26T14:03:12.250+01:00"])
    zones = pa.array(["Asia/Tokyo", None, "UTC", None])
    out = parse_ts(ts, zones).to_pylist()
    assert out[0] == dt.datetime(2026, 11, 26, 5, 3, 12, 250000, tzinfo=UTC)
    assert out[1] == dt.datetime(2026, 11, 18, 11, 6, 40, tzinfo=UTC)
    assert out[2] is None
    assert out[3] == dt.datetime(2026, 11, 26, 13, 3, 12, 250000, tzinfo=UTC)
