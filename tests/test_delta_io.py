"""Beam Delta I/O: files written by workers become visible only with the single commit; a failed
commit or a contract break leaves the table unchanged; commits are idempotent by id."""
from __future__ import annotations

import datetime as dt

import apache_beam as beam
import pyarrow as pa
import pytest
from apache_beam.testing.util import assert_that, equal_to

from simulation import fleet as fleet_mod
from simulation import generator
from simulation.backfill import _to_landing
from transforms.validation import ContractViolation
from transforms import delta
from core import lake as lake_io

UTC = dt.timezone.utc


def _landing_rows(hours: int = 2, seed: int = 1) -> pa.Table:
    fleet = fleet_mod.make_fleet(4, seed)
    start = dt.datetime(2026, 11, 1, 23, tzinfo=UTC)          # crosses a date partition
    chunk = generator.readings(fleet, start, start + dt.timedelta(hours=hours), 60, [], seed)
    return _to_landing(chunk, chunk["_t_ms"].to_numpy() + 1000)


def _write(lake: str, batches: list[pa.Table], commit_id: str = "run-1") -> None:
    with beam.Pipeline() as p:
        (p | beam.Create(batches, reshuffle=False)
           | delta.WriteDelta(lake, "raw_sensor_readings", app="test", commit_id=commit_id, inputs={"x": [0, 1]}))


def test_write_commits_once_and_reads_back(lake):
    data = _landing_rows()
    halves = [data.slice(0, data.num_rows // 2), data.slice(data.num_rows // 2)]
    _write(lake, halves)
    table = lake_io.open_table(lake, "raw_sensor_readings")
    assert table.version() == 0
    assert len(table.files()) == 2          # one file per batch: the halves fall on two ingest dates
    assert sorted(lake_io.read(lake, "raw_sensor_readings")["event_id"].to_pylist()) == \
        sorted(data["event_id"].to_pylist())
    assert lake_io.last_inputs(lake, "raw_sensor_readings", "test") == {"x": [0, 1]}

    files = delta.snapshot_files(lake, "raw_sensor_readings")
    with beam.Pipeline() as p:
        ids = (p | delta.ReadDeltaFiles("raw_sensor_readings", files)
                 | beam.FlatMap(lambda t: zip(t["event_id"].to_pylist(), t["ingest_date"].to_pylist())))
        expected = list(zip(data["event_id"].to_pylist(), data["ingest_date"].to_pylist()))
        assert_that(ids, equal_to(expected))


def test_rerun_of_a_committed_id_is_a_no_op(lake):
    data = _landing_rows()
    _write(lake, [data])
    _write(lake, [data])
    assert lake_io.open_table(lake, "raw_sensor_readings").version() == 0
    assert lake_io.read(lake, "raw_sensor_readings").num_rows == data.num_rows


def test_crash_between_file_writes_and_commit_leaves_table_unchanged(lake, monkeypatch):
    first = _landing_rows(seed=1)
    _write(lake, [first], commit_id="run-1")
    second = _landing_rows(seed=2)

    def crash(*args, **kwargs):
        raise RuntimeError("injected crash before commit")
    with monkeypatch.context() as m:
        m.setattr(lake_io, "commit_files", crash)
        with pytest.raises(Exception, match="injected crash"):
            _write(lake, [second], commit_id="run-2")
    assert lake_io.open_table(lake, "raw_sensor_readings").version() == 0
    assert lake_io.read(lake, "raw_sensor_readings").num_rows == first.num_rows
    _write(lake, [second], commit_id="run-2")             # the rerun
    after = lake_io.read(lake, "raw_sensor_readings")
    assert lake_io.open_table(lake, "raw_sensor_readings").version() == 1
    assert sorted(after["event_id"].to_pylist()) == sorted(first["event_id"].to_pylist() + second["event_id"].to_pylist())


def test_contract_break_fails_before_commit(lake):
    data = _landing_rows()
    broken = data.set_column(data.column_names.index("event_id"), "event_id",
                             pa.array([None] * data.num_rows, pa.string()))
    with pytest.raises(Exception, match="event_id"):
        _write(lake, [broken])
    assert lake_io.open_table(lake, "raw_sensor_readings") is None
