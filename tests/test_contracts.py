"""Contracts: TFDV schema files match the pyarrow contracts; simulator output validates; breaks,
domain violations and drift are reported and told apart."""
from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pytest

from simulation import fleet as fleet_mod
from simulation import generator, wire
from schemas import contracts, generate_tfdv
from transforms import validation
from tests.helpers import run_simulator
from core import lake as lake_io


@pytest.fixture(scope="module")
def healthy_lake(tmp_path_factory) -> str:
    lake = str(tmp_path_factory.mktemp("contracts") / "lake")
    run_simulator(lake, "--devices", "30", "--backfill_days", "2", "--archive_days", "1",
                  "--backfill_end", "2026-11-20", "--interval", "120", "--no_incidents",
                  "--mixed_unit_fraction", "0.3")
    return lake


@pytest.mark.parametrize("table", sorted(contracts.TABLES))
def test_checked_in_tfdv_schema_is_generated_from_the_contract(table):
    checked_in = Path(contracts.TABLES[table].tfdv_schema_file).read_text()
    assert checked_in == generate_tfdv.render(contracts.TABLES[table]), \
        "run `python -m schemas.generate_tfdv` after changing schemas/contracts.py"


def test_simulator_output_validates_against_every_contract_it_writes(healthy_lake):
    landing = lake_io.read(healthy_lake, "raw_sensor_readings")
    archive = pads.dataset(lake_io.table_uri(healthy_lake, "archive_raw_sensor_readings"),
                           partitioning="hive").to_table()
    archive = lake_io.conform("raw_sensor_readings", archive)
    devices = lake_io.read(healthy_lake, "devices")
    fleet = fleet_mod.make_fleet(30, seed=7, mixed_unit_fraction=0.3)
    chunk = generator.readings(fleet, landing["timestamp_ingested"][0].as_py(),
                               landing["timestamp_ingested"][0].as_py() + __import__("datetime").timedelta(hours=1),
                               60, [], 7)
    on_wire = pa.Table.from_pylist(
        [dict(r, ts=str(r["ts"])) for r in wire.reading_dicts(chunk)], schema=contracts.READING)
    for table, data in [("raw_sensor_readings", landing), ("archive_raw_sensor_readings", archive),
                        ("devices", devices), ("reading", on_wire)]:
        assert data.num_rows > 0
        report = validation.validate(table, [data])
        assert report.ok, report.summary()


@pytest.fixture(scope="module")
def sample(healthy_lake) -> pa.Table:
    return lake_io.read(healthy_lake, "raw_sensor_readings").slice(0, 20_000)


def test_dropped_required_and_optional_columns_are_hard_breaks(sample):
    report = validation.validate("raw_sensor_readings", [sample.drop(["device_id", "seq"])])
    assert {a.feature for a in report.hard_breaks} == {"device_id", "seq"}
    assert not report.domain_violations


def test_string_in_value_is_a_hard_break(sample):
    as_text = sample.set_column(sample.column_names.index("value"), "value", pc.cast(sample["value"], pa.string()))
    report = validation.validate("raw_sensor_readings", [as_text])
    assert [(a.feature, a.types) for a in report.hard_breaks] == [("value", ("UNEXPECTED_DATA_TYPE",))]


def test_missing_required_values_are_a_hard_break(sample):
    holes = pa.array([None if i % 100 == 0 else e for i, e in enumerate(sample["event_id"].to_pylist())])
    report = validation.validate("raw_sensor_readings", [sample.set_column(0, "event_id", holes)])
    assert [a.feature for a in report.hard_breaks] == ["event_id"]


def test_values_outside_their_domain_are_domain_violations(sample):
    sensors = sample["sensor_type"].to_pylist()
    value = sample["value"].to_numpy().copy()
    value[sensors.index("vibration")] = 999.0               # vibration range is 0..50 mm/s
    units = sample["unit"].to_pylist()
    units[5] = "furlongs"
    bad = (sample.set_column(sample.column_names.index("value"), "value", pa.array(value))
                 .set_column(sample.column_names.index("unit"), "unit", pa.array(units)))
    report = validation.validate("raw_sensor_readings", [bad])
    assert not report.hard_breaks
    assert {a.feature for a in report.domain_violations} == {"value__vibration", "unit"}


def test_drift_against_a_stored_baseline(sample, tmp_path):
    path = tmp_path / "baseline.pb"
    validation.save_baseline(validation.statistics("raw_sensor_readings", [sample]), path)
    baseline = validation.load_baseline(path)
    assert validation.validate("raw_sensor_readings", [sample], baseline=baseline).ok
    hotter = sample.set_column(sample.column_names.index("value"), "value", pc.multiply(sample["value"], 1.4))
    report = validation.validate("raw_sensor_readings", [hotter], baseline=baseline)
    assert report.drift and {a.kind for a in report.anomalies} == {"drift"}
    assert "value__suction_pressure" in {a.feature for a in report.drift}
