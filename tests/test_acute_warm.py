"""Warm start of the acute rules from the lake (core.acute_warm): after a start without a
savepoint, VIBRATION_SURGE fires at once on a device whose 24 h baseline is in the lake."""
from __future__ import annotations

import datetime as dt

import numpy as np
import pyarrow as pa
import pytest

from core import lake
from core.acute_rules import Batch, DeviceStates, RuleConfig, evaluate, fixed_width
from core.acute_warm import WarmStart, load

NOW = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
US = 1_000_000


def _ts(t: dt.datetime) -> str:
    return t.isoformat().replace("+00:00", "Z")


def _write_features(root: str, device: str, windows: list[tuple[dt.datetime, float, int]]) -> None:
    schema = lake.TABLES["features"].schema
    n = len(windows)
    given = {
        "device_id": pa.array([device] * n), "window_size": pa.array(["15m"] * n),
        "window_start": pa.array([w[0] for w in windows], pa.timestamp("us", "UTC")),
        "window_end": pa.array([w[0] + dt.timedelta(minutes=15) for w in windows], pa.timestamp("us", "UTC")),
        "vibration_mean": pa.array([w[1] for w in windows]), "vibration_count": pa.array([w[2] for w in windows]),
        "computed_at": pa.array([NOW] * n, pa.timestamp("us", "UTC")),
        "date": pa.array([w[0].date() for w in windows], pa.date32()),
    }
    lake.append(root, "features", pa.table({f.name: given.get(f.name, pa.nulls(n, f.type)) for f in schema}))


def _write_landing(root: str, device: str, readings: list[tuple[dt.datetime, float]], unit: str = "mm/s",
                   ingested: dt.datetime = NOW - dt.timedelta(minutes=5)) -> None:
    schema = lake.TABLES["raw_sensor_readings"].schema
    n = len(readings)
    given = {
        "event_id": pa.array([f"{device}-{i}" for i in range(n)]), "device_id": pa.array([device] * n),
        "sensor_type": pa.array(["vibration"] * n), "value": pa.array([r[1] for r in readings]),
        "unit": pa.array([unit] * n), "ts": pa.array([_ts(r[0]) for r in readings]),
        "timestamp_ingested": pa.array([ingested] * n, pa.timestamp("us", "UTC")),
        "ingest_date": pa.array([NOW.date()] * n, pa.date32()),
    }
    lake.append(root, "raw_sensor_readings",
                pa.table({f.name: given.get(f.name, pa.nulls(n, f.type)) for f in schema}))


def _surge(states: DeviceStates, device: str, value: float, config: RuleConfig) -> list[dict]:
    t = int(NOW.timestamp() * US)
    batch = Batch(np.array([device], object), np.array([f"{device}-surge"], object), np.array(["vibration"], object),
                  np.array([t]), np.array([value]), np.array([None], object), np.array([np.nan]))
    _, alerts, _ = evaluate(states, batch, config, NOW)
    return [a["rule"] for a in alerts]


@pytest.fixture
def config() -> RuleConfig:
    return RuleConfig.load()


def test_surge_fires_right_after_a_cold_restart_from_features_and_landing(tmp_path, config):
    root = str(tmp_path / "lake")
    # 20 h of 15-minute feature windows at 2 mm/s, then 40 min of landing rows newer than the last one
    last = NOW - dt.timedelta(minutes=40)
    _write_features(root, "d1", [(last - dt.timedelta(minutes=15 * (k + 1)), 2.0, 90) for k in range(80)])
    _write_landing(root, "d1", [(last + dt.timedelta(seconds=10 * k), 2.0) for k in range(200)])
    warm = WarmStart(root, config)
    registry = lake.TABLES["devices"].schema.empty_table()
    ids = fixed_width(["d1"])
    warmed = warm.states(ids, np.array([None], object), registry)
    assert _surge(warmed, "d1", 7.0, config) == ["VIBRATION_SURGE"]     # 7 > 3 x 2
    assert _surge(DeviceStates.empty(ids), "d1", 7.0, config) == []     # cold: no hour of history yet
    assert _surge(warmed, "d1", 5.0, config) == []                      # below 3 x the baseline


def test_rebuilt_buckets_equal_the_readings_sums(tmp_path, config):
    """Landing rows only: every bucket's sum, count and earliest reading are exact; rows ingested
    before the lookback and readings in another unit (in/s) are handled like the live path."""
    root = str(tmp_path / "lake")
    start = NOW - dt.timedelta(hours=2)
    rows = [(start + dt.timedelta(seconds=10 * k), 1.0 + (k % 7) * 0.1) for k in range(600)]
    _write_landing(root, "d1", rows)
    _write_landing(root, "d2", [(start, 0.1)], unit="in/s")
    _write_landing(root, "d2", [(start, 9.0)], ingested=NOW - dt.timedelta(hours=5))    # before the lookback
    registry = lake.TABLES["devices"].schema.empty_table()
    pieces = load(root, config, registry, NOW)
    bucket_us = config.for_model(None).vibration_bucket_us
    vib = pieces.states(fixed_width(["d1", "d2"]), np.array([bucket_us, bucket_us])).vib
    t = np.array([int(r[0].timestamp() * US) for r in rows])
    v = np.array([r[1] for r in rows])
    b = t // bucket_us
    d1 = vib["dev"] == 0
    for k, bucket in enumerate(vib["b"][d1]):
        assert vib["n"][d1][k] == (b == bucket).sum()
        assert vib["s"][d1][k] == pytest.approx(v[b == bucket].sum())
        assert vib["first"][d1][k] == t[b == bucket].min()
    assert vib["s"][vib["dev"] == 1] == pytest.approx([2.54])          # 0.1 in/s in mm/s


def test_no_lake_tables_gives_empty_states(tmp_path, config):
    warm = WarmStart(str(tmp_path / "nothing"), config)
    states = warm.states(fixed_width(["d1"]), np.array([None], object), lake.TABLES["devices"].schema.empty_table())
    assert len(states) == 1 and len(states.vib["dev"]) == 0
