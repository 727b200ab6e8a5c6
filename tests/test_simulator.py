"""The fleet simulator: determinism, and every injected incident visible in the data with its label."""
from __future__ import annotations

import datetime as dt
from collections import Counter
from pathlib import Path

import numpy as np
import orjson
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pytest

from simulation import fleet as fleet_mod
from simulation import generator, wire
from simulation.incidents import ACUTE_MODES, GRADUAL_MODES, WIRE_FAULTS
from tests.helpers import canonical_values, event_time_ms, ground_truth, rows_of, run_simulator
from core import lake as lake_io

UTC = dt.timezone.utc
END = "2026-11-20T00:00:00"
ALL_FAULTS = "stuck_value,dropout,duplicates,replay,out_of_range,unknown_device"
BACKFILL = ["--devices", "40", "--backfill_days", "3", "--backfill_end", END, "--interval", "60",
            "--data_faults", ALL_FAULTS, "--inactive_fraction", "0.05", "--mixed_unit_fraction", "0.2"]


@pytest.fixture(scope="module")
def simulated(tmp_path_factory) -> str:
    lake = str(tmp_path_factory.mktemp("sim") / "lake")
    run_simulator(lake, *BACKFILL, "--archive_days", "1")
    return lake


def _landing(lake: str):
    return lake_io.read(lake, "raw_sensor_readings")


def _archive(lake: str):
    return pads.dataset(lake_io.table_uri(lake, "archive_raw_sensor_readings"), partitioning="hive").to_table()


def _all_rows(lake: str):
    import pyarrow as pa
    archive = _archive(lake)
    landing = _landing(lake)
    return pa.concat_tables([landing.select(["event_id", "device_id", "sensor_type", "value", "unit", "ts"]),
                             archive.select(["event_id", "device_id", "sensor_type", "value", "unit", "ts"])
                             .cast(landing.select(["event_id", "device_id", "sensor_type", "value", "unit", "ts"]).schema)])


def test_same_seed_same_output_and_other_seed_differs(tmp_path, simulated):
    again = str(tmp_path / "again" / "lake")
    run_simulator(again, *BACKFILL, "--archive_days", "1")
    for table in ("devices", "raw_sensor_readings"):
        assert _sorted(lake_io.read(again, table)).equals(_sorted(lake_io.read(simulated, table))), table
    assert _sorted(_archive(again)).equals(_sorted(_archive(simulated)))
    truth = Path(simulated).parent / "ground_truth" / "backfill.jsonl"
    assert (Path(again).parent / "ground_truth" / "backfill.jsonl").read_bytes() == truth.read_bytes()

    other = str(tmp_path / "other" / "lake")
    run_simulator(other, *BACKFILL, "--seed", "8")
    assert not _sorted(lake_io.read(other, "raw_sensor_readings")).equals(
        _sorted(lake_io.read(simulated, "raw_sensor_readings")))


def _sorted(table):
    """Delta and dataset reads do not promise file order; compare rows in a canonical order."""
    keys = [k for k in ("device_id", "event_id", "timestamp_ingested") if k in table.column_names]
    return table.sort_by([(k, "ascending") for k in keys])


def test_chunking_does_not_change_readings():
    fleet = fleet_mod.make_fleet(5, seed=3)
    start = dt.datetime(2026, 3, 29, 0, 0, tzinfo=UTC)   # spans the European DST change
    whole = generator.readings(fleet, start, start + dt.timedelta(hours=4), 30, [], 3)
    halves = [generator.readings(fleet, start + dt.timedelta(hours=h), start + dt.timedelta(hours=h + 2), 30, [], 3)
              for h in (0, 2)]
    import pyarrow as pa
    assert pa.concat_tables(halves).equals(whole)
    assert whole.num_rows == 5 * 5 * 4 * 120


def test_registry_and_storage_layout(simulated):
    registry = lake_io.read(simulated, "devices")
    assert registry.num_rows == 40
    assert set(registry["model"].to_pylist()) <= set(fleet_mod.MODELS)
    assert lake_io.open_table(simulated, "raw_sensor_readings").version() == 1   # two landing days
    archive_dirs = sorted(p.name for p in Path(lake_io.table_uri(simulated, "archive_raw_sensor_readings")).iterdir())
    assert archive_dirs == ["date=2026-11-17"]


def test_every_failure_mode_is_labelled_and_in_the_data(simulated):
    truth = ground_truth(simulated)
    failures = [t for t in truth if t["kind"] == "failure"]
    modes = Counter(t["mode"] for t in failures)
    assert set(ACUTE_MODES) | set(GRADUAL_MODES) <= set(modes)
    for t in failures:
        if t["category"] != "gradual":
            assert t["expected_rule"] == ACUTE_MODES[t["mode"]][0]
    rows = _all_rows(simulated)
    registry = {r["device_id"]: r for r in lake_io.read(simulated, "devices").to_pylist()}
    for t in failures:
        sensor_rows = rows_of(rows, t["device_id"], t["sensor"])
        t_ms = event_time_ms(sensor_rows)
        start, end = (int(dt.datetime.fromisoformat(t[k]).timestamp() * 1000) for k in ("start", "end"))
        inside = (t_ms >= start) & (t_ms < end)
        before = (t_ms < start) & (t_ms >= start - 3600_000)
        values = canonical_values(sensor_rows)
        assert inside.any(), t
        if t["mode"] == "current_spike":
            assert (values[inside] > 1.5 * registry[t["device_id"]]["rated_current_a"]).all()
        elif t["mode"] == "pressure_drop":
            assert values[inside].max() < 0.65 * values[before].min()
        elif t["mode"] == "vibration_surge":
            assert values[inside].min() > 3 * values[before].mean()
        elif t["mode"] == "cooling_loss":
            slope = np.polyfit(t_ms[inside] / 60000.0, values[inside], 1)[0]
            assert slope > 0.5
        else:  # gradual: the last day of the span is well off the first
            span = end - start
            first = values[(t_ms >= start) & (t_ms < start + span * 0.1)].mean()
            last = values[(t_ms >= end - span * 0.1) & (t_ms < end)].mean()
            assert abs(last - first) / abs(first) > 0.1, t


def test_every_data_fault_is_labelled_and_in_the_data(simulated):
    truth = ground_truth(simulated)
    faults = {t["mode"]: t for t in truth if t["kind"] == "data_fault"}
    assert set(ALL_FAULTS.split(",")) | {"inactive_device", "mixed_units", "time_forms"} <= set(faults)
    rows = _all_rows(simulated)
    registry = {r["device_id"]: r for r in lake_io.read(simulated, "devices").to_pylist()}
    ids = Counter(rows["event_id"].to_pylist())

    dup = faults["duplicates"]
    assert dup["event_ids"] and all(ids[e] == 2 for e in dup["event_ids"])

    replay = faults["replay"]
    landing = _landing(simulated)
    replayed = landing.filter(pc.is_in(landing["event_id"], value_set=__import__("pyarrow").array(replay["event_ids"])))
    assert replay["event_ids"] and replayed.num_rows == 2 * len(replay["event_ids"])
    arrivals = replayed["timestamp_ingested"].cast("int64").to_numpy() // 1000
    replayed_at = dt.datetime.fromisoformat(replay["detail"]["replayed_at"]).timestamp() * 1000
    assert (arrivals >= replayed_at).sum() == len(replay["event_ids"])   # one copy arrives at reconnection

    oor = faults["out_of_range"]
    oor_rows = rows.filter(pc.is_in(rows["event_id"], value_set=__import__("pyarrow").array(oor["event_ids"])))
    from schemas.sensors import SENSORS
    assert oor_rows.num_rows == len(oor["event_ids"]) > 0
    assert (canonical_values(oor_rows) > SENSORS[oor["sensor"]].valid_max).all()

    stuck = faults["stuck_value"]
    stuck_rows = rows.filter(pc.is_in(rows["event_id"], value_set=__import__("pyarrow").array(stuck["event_ids"])))
    assert stuck_rows.num_rows > 10 and len(set(stuck_rows["value"].to_pylist())) == 1

    drop = faults["dropout"]
    t_ms = event_time_ms(rows_of(rows, drop["device_id"]))
    start, end = (dt.datetime.fromisoformat(drop[k]).timestamp() * 1000 for k in ("start", "end"))
    assert not ((t_ms >= start) & (t_ms < end)).any() and len(t_ms) > 0

    unknown = faults["unknown_device"]["device_id"]
    assert unknown not in registry and rows_of(rows, unknown).num_rows > 0
    inactive = faults["inactive_device"]["device_id"]
    assert registry[inactive]["active"] is False and rows_of(rows, inactive).num_rows > 0

    mixed = faults["mixed_units"]
    for sensor, unit in mixed["detail"]["units"].items():
        assert set(rows_of(rows, mixed["device_id"], sensor)["unit"].to_pylist()) == {unit}

    forms = {t["device_id"]: t["detail"]["ts_form"] for t in truth if t["mode"] == "time_forms"}
    assert set(forms.values()) == {"iso_local", "epoch_ms"}
    for device_id, form in forms.items():
        ts = rows_of(rows, device_id)["ts"].to_pylist()[0]
        assert ts.isdigit() if form == "epoch_ms" else (len(ts) == 23 and "T" in ts)


@pytest.mark.parametrize("fault", sorted(WIRE_FAULTS))
def test_wire_fault_messages(fault):
    template = {"event_id": "", "device_id": "dev-00001", "sensor_type": "temperature", "value": 1.5,
                "unit": "C", "ts": 1795000000000}
    body, bad, good = wire.wire_fault_message(fault, 0, template)
    if fault == "bad_json":
        with pytest.raises(orjson.JSONDecodeError):
            orjson.loads(body)
        return
    if fault == "non_finite":
        assert b"1e999" in body
        return
    readings = orjson.loads(body)
    assert {r["event_id"] for r in readings} == set(bad) | set(good)
    if fault == "oversized_batch":
        assert len(readings) == 1001
    elif fault == "oversized_message":
        assert len(body) > 1024 * 1024
    else:
        [bad_reading] = [r for r in readings if r["event_id"] in bad]
        check = {"missing_field": lambda r: "value" not in r,
                 "wrong_type": lambda r: isinstance(r["value"], str),
                 "unknown_sensor_type": lambda r: r["sensor_type"] == "oil_level",
                 "invalid_device_id": lambda r: "/" in r["device_id"],
                 "oversized_reading": lambda r: len(orjson.dumps(r)) > 4096}[fault]
        assert check(bad_reading) and len(good) == 2


def test_history_does_not_depend_on_the_day_of_the_run(tmp_path, monkeypatch):
    """Without --end the history ends at the fixed DEFAULT_END: runs on two different days give
    identical readings, archive and ground truth (the wall clock used to set the end)."""
    from pipelines import simulate
    lakes = []
    for day in (dt.datetime(2026, 12, 2, 9, 30, tzinfo=UTC), dt.datetime(2027, 3, 15, 17, 5, tzinfo=UTC)):
        monkeypatch.setattr(simulate, "_wall_now", lambda day=day: day)
        lake = str(tmp_path / day.date().isoformat() / "lake")
        run_simulator(lake, "--devices", "12", "--backfill_days", "2", "--archive_days", "1", "--interval", "300")
        lakes.append(lake)
    a, b = lakes
    assert _landing(a).num_rows > 0 and _sorted(_landing(a)).equals(_sorted(_landing(b)))
    assert _sorted(_archive(a)).equals(_sorted(_archive(b)))
    assert (Path(a).parent / "ground_truth" / "backfill.jsonl").read_bytes() == \
        (Path(b).parent / "ground_truth" / "backfill.jsonl").read_bytes()
    newest = max(event_time_ms(_landing(a))) / 1000
    assert simulate.DEFAULT_END.timestamp() - 300 <= newest < simulate.DEFAULT_END.timestamp()


def test_stream_start_follows_the_history_or_the_wall_clock(monkeypatch):
    from pipelines import simulate
    now = dt.datetime(2027, 1, 5, 12, 0, 0, tzinfo=UTC)
    monkeypatch.setattr(simulate, "_wall_now", lambda: now)
    end = simulate.parse_args(["--stream", "--stream_start", "end"])
    assert end.backfill_end == simulate.DEFAULT_END
    assert simulate.stream_start(end.stream_start, end.backfill_end, 5400, 180) == simulate.DEFAULT_END
    live = simulate.parse_args(["--stream"])
    assert simulate.stream_start(live.stream_start, live.backfill_end, 5400, 180) == now - dt.timedelta(seconds=5220)
    assert simulate.parse_args(["--backfill_days", "1", "--end", "today"]).backfill_end == dt.datetime(2027, 1, 5, tzinfo=UTC)


def _default_fingerprint(interval_s: float = 60.0, hours: float = 26) -> str:
    """sha256 of a small fleet's default readings (incidents included) and of its ground truth."""
    import hashlib
    import json
    from simulation.incidents import PlanConfig, plan_incidents
    fleet = fleet_mod.make_fleet(8, seed=11, mixed_unit_fraction=0.3, inactive_fraction=0.1)
    end = dt.datetime(2026, 11, 20, tzinfo=UTC)
    start = end - dt.timedelta(hours=hours)
    plan = PlanConfig(data_faults=("stuck_value", "dropout", "duplicates", "replay", "out_of_range"))
    incidents = plan_incidents(fleet, start, end, 11, interval_s, plan)
    table = generator.readings(fleet, start, end, interval_s, incidents, 11)
    h = hashlib.sha256()
    cols = [table[c].to_pylist() for c in ("event_id", "device_id", "sensor_type", "value", "unit", "ts", "seq")]
    for row in sorted(zip(*cols)):
        h.update(("|".join(map(repr, row)) + "\n").encode())
    for inc in incidents:
        h.update(json.dumps(inc.to_json(), sort_keys=True).encode())
    return h.hexdigest()


DEFAULT_FINGERPRINT = "ffed0d1fd89371ba2937e993f0a1bd0497930e52cd7ec31b8bc70c4a644e00fb"


def test_default_output_is_pinned():
    """The default simulator's output for a seed is fixed: the main job and its tests depend on it."""
    assert _default_fingerprint() == DEFAULT_FINGERPRINT
