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


# --- sensor profiles, 1 s sampling, test bench --------------------------------------------------

def _plan(fleet, start, end, seed, interval_s):
    from simulation.incidents import PlanConfig, plan_incidents
    return plan_incidents(fleet, start, end, seed, interval_s,
                          PlanConfig(data_faults=("stuck_value", "dropout", "duplicates", "out_of_range")))


def _series(table, device_id, sensor):
    import polars as pl
    df = pl.from_arrow(table.select(["device_id", "sensor_type", "value", "_t_ms"]))
    return df.filter((pl.col("device_id") == device_id) & (pl.col("sensor_type") == sensor))


def test_realistic_values_are_quantised_in_the_canonical_unit():
    from schemas.sensors import SENSORS
    from simulation.profiles import REALISTIC
    fleet = fleet_mod.make_fleet(10, seed=5, mixed_unit_fraction=0.5)
    assert any(d.units for d in fleet)
    end = dt.datetime(2026, 11, 20, tzinfo=UTC)
    start = end - dt.timedelta(hours=3)
    table = generator.readings(fleet, start, end, 60, _plan(fleet, start, end, 5, 60), 5, REALISTIC)
    canon = canonical_values(table)
    sensors = np.array(table["sensor_type"].to_pylist())
    units = np.array(table["unit"].to_pylist())
    for s, spec in SENSORS.items():
        for unit in set(units[sensors == s]):
            m = (sensors == s) & (units == unit)
            scale = spec.conversions[unit][0]
            off = np.abs(canon[m] - np.round(canon[m] / spec.resolution) * spec.resolution)
            # only the 4-decimal rounding of the converted value may move it off the step
            assert off.max() <= 0.5e-4 * scale + 1e-9, (s, unit, off.max())
    ideal = canonical_values(generator.readings(fleet, start, end, 60, _plan(fleet, start, end, 5, 60), 5))
    assert np.abs(ideal - np.round(ideal)).max() > 0.1        # the ideal profile is not quantised


def test_realistic_pressure_shows_the_pump_pulsation_at_1s_sampling():
    from simulation.profiles import REALISTIC
    fleet = fleet_mod.make_fleet(3, seed=4, mixed_unit_fraction=0)
    start = dt.datetime(2026, 6, 1, tzinfo=UTC)
    end = start + dt.timedelta(minutes=20)
    real = generator.readings(fleet, start, end, 1, [], 4, REALISTIC)
    ideal = generator.readings(fleet, start, end, 1, [], 4)

    def spectrum(table, device_id, sensor):
        x = _series(table, device_id, sensor)["value"].to_numpy()
        x = x - np.polyval(np.polyfit(np.arange(len(x)), x, 1), np.arange(len(x)))
        power = np.abs(np.fft.rfft(x)) ** 2
        return np.fft.rfftfreq(len(x), 1.0), power

    for d in fleet:
        for sensor in ("suction_pressure", "discharge_pressure"):
            freq, power = spectrum(real, d.device_id, sensor)
            peak = int(np.argmax(power[1:])) + 1
            assert 0.07 <= freq[peak] <= 0.31, (d.device_id, sensor, freq[peak])
            assert power[peak] > 50 * np.median(power[1:])            # a line, not noise
            h = 2 * freq[peak] if 2 * freq[peak] <= 0.5 else 1 - 2 * freq[peak]      # aliased above Nyquist
            harmonic = int(np.argmin(np.abs(freq - h)))
            assert power[harmonic - 2:harmonic + 3].max() > 10 * np.median(power[1:])
            # the autocorrelation comes back at the ripple's period
            x = _series(real, d.device_id, sensor)["value"].to_numpy()
            x = x - x.mean()
            lag = int(round(1 / freq[peak]))
            assert np.corrcoef(x[:-lag], x[lag:])[0, 1] > 0.3
            _, flat = spectrum(ideal, d.device_id, sensor)
            assert flat[1:].max() < 20 * np.median(flat[1:])            # the ideal profile has no ripple


def test_realistic_vibration_is_a_positive_right_skewed_rms():
    from scipy import stats
    from simulation.profiles import REALISTIC
    fleet = fleet_mod.make_fleet(6, seed=9, mixed_unit_fraction=0)
    start = dt.datetime(2026, 6, 1, tzinfo=UTC)
    table = generator.readings(fleet, start, start + dt.timedelta(days=1), 60, [], 9, REALISTIC)
    for d in fleet:
        v = _series(table, d.device_id, "vibration")["value"].to_numpy()
        assert (v > 0).all()
        assert stats.skew(v) > 0.15, d.device_id
        assert abs(v.mean() / d.vibration_mm_s - 1) < 0.15


def test_realistic_is_deterministic_and_chunking_does_not_change_it():
    import pyarrow as pa
    from simulation.profiles import REALISTIC
    fleet = fleet_mod.make_fleet(5, seed=3, mixed_unit_fraction=0.4)
    start = dt.datetime(2026, 3, 29, 0, 0, tzinfo=UTC)
    end = start + dt.timedelta(hours=4)

    def run(a, b, seed=3):
        return generator.readings(fleet, a, b, 30, _plan(fleet, start, end, seed, 30), seed, REALISTIC)
    whole = run(start, end)
    assert run(start, end).equals(whole)
    mid = start + dt.timedelta(hours=1, minutes=7)
    assert pa.concat_tables([run(start, mid), run(mid, end)]).equals(whole)
    assert not run(start, end, seed=4).equals(whole)
    assert not generator.readings(fleet, start, end, 30, _plan(fleet, start, end, 3, 30), 3).equals(whole)


def test_failures_act_on_the_realistic_signals():
    from simulation.incidents import Incident
    from simulation.profiles import REALISTIC
    fleet = fleet_mod.make_fleet(2, seed=6, mixed_unit_fraction=0)
    start = dt.datetime(2026, 6, 1, tzinfo=UTC)
    when = start + dt.timedelta(hours=1)
    incidents = [Incident("failure", "pressure_drop", fleet[0].device_id, 0, when, when + dt.timedelta(minutes=10),
                          sensor="suction_pressure", category="acute"),
                 Incident("failure", "vibration_surge", fleet[1].device_id, 1, when, when + dt.timedelta(minutes=5),
                          sensor="vibration", category="acute")]
    table = generator.readings(fleet, start, when + dt.timedelta(minutes=20), 10, incidents, 6, REALISTIC)
    for inc, ratio in zip(incidents, (0.65, 3.0)):
        s = _series(table, inc.device_id, inc.sensor)
        t, v = s["_t_ms"].to_numpy(), s["value"].to_numpy()
        inside = (t >= when.timestamp() * 1000) & (t < inc.end.timestamp() * 1000)
        before = t < when.timestamp() * 1000
        if inc.mode == "pressure_drop":
            assert v[inside].max() < ratio * v[before].min()
        else:
            assert np.median(v[inside]) > ratio * np.median(v[before])


def test_row_faults_stay_meaningful_at_1s_sampling_and_the_default_plan_does_not_move():
    fleet = fleet_mod.make_fleet(6, seed=2)
    end = dt.datetime(2026, 11, 20, tzinfo=UTC)
    start = end - dt.timedelta(hours=2)
    for interval, seconds in ((1, 50), (10, 50), (60, 300)):
        plan = _plan(fleet, start, end, 2, interval)
        for inc in plan:
            if inc.mode in ("duplicates", "out_of_range"):
                assert (inc.end - inc.start).total_seconds() == seconds, (interval, inc.mode)


def test_backfill_at_1s_sampling(tmp_path):
    lake = str(tmp_path / "lake")
    run_simulator(lake, "--devices", "3", "--backfill_days", "0.02", "--backfill_end", END, "--interval", "1",
                  "--data_faults", "duplicates,out_of_range", "--sensor_profile", "realistic")
    landing = _landing(lake)
    assert lake_io.open_table(lake, "raw_sensor_readings").version() == 1       # 28.8 min: two 24 min pieces
    ids = Counter(landing["event_id"].to_pylist())
    assert len(ids) == 3 * 1728 * 5
    dup = [t for t in ground_truth(lake) if t["mode"] == "duplicates"][0]
    assert len(dup["event_ids"]) == 50 * 5 and all(ids[e] == 2 for e in dup["event_ids"])
    t_ms = np.unique(event_time_ms(rows_of(landing, "dev-00000", "temperature")))     # duplicates once
    assert set(np.diff(t_ms)) == {1000}


def test_test_bench_devices_each_have_one_failure_and_leave_the_rest_alone(tmp_path):
    from simulation.testbench import BENCH_MODES
    args = ["--devices", "4", "--backfill_days", "1", "--backfill_end", END, "--interval", "120"]
    plain, bench = str(tmp_path / "plain" / "lake"), str(tmp_path / "bench" / "lake")
    run_simulator(plain, *args)
    run_simulator(bench, *args, "--test_bench", "9")
    truth = ground_truth(bench)
    registry = lake_io.read(bench, "devices")["device_id"].to_pylist()
    rows = _landing(bench)
    tb_ids = [f"TB-{i:04d}" for i in range(9)]
    assert set(tb_ids) <= set(registry)
    for i, device_id in enumerate(tb_ids):
        mine = [t for t in truth if t["device_id"] == device_id]
        assert len(mine) == 1 and mine[0]["kind"] == "failure" and mine[0]["detail"] == {"test_bench": True}
        assert mine[0]["mode"] == BENCH_MODES[i % len(BENCH_MODES)]
        t_ms = event_time_ms(rows_of(rows, device_id))
        start = dt.datetime.fromisoformat(mine[0]["start"]).timestamp() * 1000
        end = dt.datetime.fromisoformat(mine[0]["end"]).timestamp() * 1000
        assert len(t_ms) and t_ms.min() >= start - 66 * 60_000 and t_ms.max() < end + 21 * 60_000
        assert ((t_ms >= start) & (t_ms < end)).any() and (t_ms < start - 60 * 60_000).any()
    # everything else is what the run without a test bench wrote
    import pyarrow as pa
    others = rows.filter(pc.invert(pc.is_in(rows["device_id"], value_set=pa.array(tb_ids))))
    assert _sorted(others).equals(_sorted(_landing(plain)))
    assert [t for t in truth if not t["device_id"].startswith("TB-")] == ground_truth(plain)
