"""Backfill commits one Delta version per simulated day; time travel returns exact commits."""
from __future__ import annotations

import datetime as dt

import pyarrow.compute as pc

from simulation import fleet as fleet_mod
from simulation import generator
from tests.helpers import run_simulator
from core import lake as lake_io

UTC = dt.timezone.utc


def test_time_travel_to_each_version_returns_exactly_its_commits(lake):
    run_simulator(lake, "--devices", "12", "--backfill_days", "3", "--backfill_end", "2026-11-20",
                  "--interval", "300", "--no_incidents")
    table = lake_io.open_table(lake, "raw_sensor_readings")
    assert table.version() == 2

    fleet = fleet_mod.make_fleet(12, seed=7, inactive_fraction=0)
    expected = [set(generator.readings(fleet, dt.datetime(2026, 11, 17 + d, tzinfo=UTC),
                                       dt.datetime(2026, 11, 18 + d, tzinfo=UTC), 300, [], 7)["event_id"].to_pylist())
                for d in range(3)]
    v0 = lake_io.read(lake, "raw_sensor_readings", version=0)
    assert v0.num_rows == len(expected[0]) == 12 * 5 * 288
    assert set(v0["event_id"].to_pylist()) == expected[0]
    v1 = lake_io.read(lake, "raw_sensor_readings", version=1)
    assert set(v1["event_id"].to_pylist()) == expected[0] | expected[1] and v1.num_rows == 2 * v0.num_rows
    latest = lake_io.read(lake, "raw_sensor_readings")
    assert latest.num_rows == 3 * v0.num_rows
    # landing is partitioned by the UTC date of arrival
    assert set(pc.unique(v0["ingest_date"]).to_pylist()) <= {dt.date(2026, 11, 17), dt.date(2026, 11, 18)}
