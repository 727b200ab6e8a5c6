"""Windowed features: values equal hand-computed ones on a small fixture (30 s and 1 min windows, as a
test bench uses), windows are computed once closed, and late data recomputes exactly the windows it
touched, replacing their rows in the same single commit."""
from __future__ import annotations

import dataclasses
import datetime as dt

import pyarrow as pa
import pytest

from pipelines import features
from schemas import contracts
from transforms import features as ft
from core import lake as lake_io

UTC = dt.timezone.utc
T0 = dt.datetime(2026, 3, 28, 12, 0, tzinfo=UTC)
TSAT_300, TSAT_1200 = 0.693823405183366, 46.26238054233016     # R134a fit, by hand: B / (A - ln p) - 273.15


def s(seconds: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=seconds)


def row(device: str, sensor: str, at: float, value: float, ingested: float, quality: str = "GOOD") -> dict:
    unit = {"temperature": "C", "suction_pressure": "kPa", "discharge_pressure": "kPa",
            "compressor_current": "A", "vibration": "mm/s"}[sensor]
    return dict(event_id=f"{device}-{sensor}-{at}", device_id=device, sensor_type=sensor, value=value, unit=unit,
                timestamp_utc=s(at), timestamp_ingested=s(ingested), quality=quality,
                quality_reasons=[] if quality == "GOOD" else ["out_of_range"], date=s(at).date())


def add_clean(lake: str, rows: list[dict]) -> int:
    data = pa.Table.from_pylist(rows, schema=contracts.CLEAN_SENSOR_READINGS)
    return lake_io.append(lake, "clean_sensor_readings", data)


FIRST = [
    row("d1", "temperature", 0, 1.0, 100), row("d1", "temperature", 10, 2.0, 100),
    row("d1", "temperature", 20, 4.0, 100), row("d1", "temperature", 25, 99.0, 100, quality="BAD"),
    row("d1", "temperature", 35, 5.0, 100), row("d1", "temperature", 95, 8.0, 100),
    row("d1", "suction_pressure", 0, 300.0, 100), row("d1", "suction_pressure", 10, 300.0, 100),
    row("d1", "discharge_pressure", 0, 1200.0, 100), row("d1", "discharge_pressure", 10, 1200.0, 100),
    row("d1", "compressor_current", 0, 10.0, 100), row("d1", "compressor_current", 10, 10.0, 100),
    row("d2", "temperature", 5, 3.0, 100),
]
# ten minutes later: a late reading inside the first windows, and an on-time one
SECOND = [row("d1", "temperature", 15, 7.0, 600), row("d1", "temperature", 65, 6.0, 600)]
ARGS = ["--window_sizes", "30s,1m", "--allowed_lateness_seconds", "0", "--sampling_interval_seconds", "10"]


def run(lake: str) -> dict:
    summary = features.run(["--lake", lake, *ARGS])
    assert summary.get("nothing_to_do") or summary["commit_matches_counts"], summary
    return summary


def table(lake: str) -> dict[tuple, dict]:
    rows = lake_io.read(lake, "features").to_pylist()
    keyed = {(r["device_id"], r["window_size"], (r["window_start"] - T0).total_seconds()): r for r in rows}
    assert len(keyed) == len(rows), "a window appears twice"
    return keyed


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    lake = str(tmp_path_factory.mktemp("features") / "lake")
    add_clean(lake, FIRST)
    first = run(lake)
    after_first = table(lake)
    add_clean(lake, SECOND)
    second = run(lake)
    return lake, first, after_first, second, table(lake)


def test_window_sizes_option():
    assert [w.label for w in ft.parse_window_sizes("1d,15m,1h,30s,90s")] == ["30s", "90s", "15m", "1h", "1d"]
    assert ft.parse_window_sizes("60s")[0].label == "1m"
    for bad in ("15", "0m", "15 minutes", ""):
        with pytest.raises(ValueError):
            ft.parse_window_sizes(bad)
    from core.windows import MODEL_WINDOW, parse_window_size
    assert parse_window_size("60m").seconds == 3600 and parse_window_size(MODEL_WINDOW).label == MODEL_WINDOW
    assert parse_window_size(MODEL_WINDOW) in ft.FeaturesConfig.sizes       # the features job computes it
    for bad in ("15m,1h", "1h,", "0m", ""):
        with pytest.raises(ValueError):
            parse_window_size(bad)


def test_first_run_computes_only_closed_windows(runs):
    _, first, rows, _, _ = runs
    # watermark = newest ingestion (T0+100 s): 30 s windows up to [60, 90) and the 1 min window [0, 60) closed
    assert sorted(rows) == [("d1", "1m", 0), ("d1", "30s", 0), ("d1", "30s", 30), ("d2", "1m", 0), ("d2", "30s", 0)]
    assert first["feature_rows"] == 5 and first["commit"]["version"] == 0
    assert first["clean_rows_read"] == len(FIRST) and first["clean_rows_selected"] == len(FIRST) - 1


def test_features_equal_hand_computed_values(runs):
    rows = runs[2]
    w = rows[("d1", "30s", 0)]
    assert (w["window_start"], w["window_end"], w["date"]) == (T0, s(30), T0.date())
    # temperature: GOOD 1, 2, 4 at 0, 10, 20 s (the BAD 99 at 25 s is left out)
    assert w["temperature_mean"] == pytest.approx(7 / 3)
    assert w["temperature_std"] == pytest.approx(1.5275252316519465)      # sqrt(7/3), n - 1
    assert (w["temperature_min"], w["temperature_max"], w["temperature_last"]) == (1.0, 4.0, 4.0)
    assert w["temperature_slope"] == pytest.approx(9.0)                      # 0.15 per s = 9 per minute
    assert w["temperature_count"] == 3
    # interval: median gap 10 s -> 3 readings expected per sensor in 30 s
    assert w["temperature_missing_ratio"] == 0.0
    assert w["suction_pressure_missing_ratio"] == pytest.approx(1 / 3)
    assert (w["suction_pressure_mean"], w["suction_pressure_std"], w["suction_pressure_slope"]) == (300.0, 0.0, 0.0)
    assert (w["vibration_count"], w["vibration_missing_ratio"], w["vibration_mean"], w["vibration_std"]) == \
        (0, 1.0, None, None)
    assert w["pressure_ratio"] == pytest.approx(4.0)
    assert w["current_per_lift"] == pytest.approx(10.0 / (TSAT_1200 - TSAT_300))
    assert w["superheat_proxy"] == pytest.approx(7 / 3 - TSAT_300)

    single = rows[("d1", "30s", 30)]          # one reading: no std or slope; interval from the option
    assert (single["temperature_mean"], single["temperature_last"], single["temperature_count"]) == (5.0, 5.0, 1)
    assert (single["temperature_std"], single["temperature_slope"]) == (None, None)
    assert single["temperature_missing_ratio"] == pytest.approx(2 / 3)
    assert (single["pressure_ratio"], single["current_per_lift"], single["superheat_proxy"]) == (None, None, None)

    minute = rows[("d1", "1m", 0)]            # GOOD 1, 2, 4, 5 at 0, 10, 20, 35 s
    assert minute["temperature_mean"] == pytest.approx(3.0)
    assert minute["temperature_std"] == pytest.approx((10 / 3) ** 0.5)
    assert minute["temperature_slope"] == pytest.approx(60 * 80 / 668.75)
    assert (minute["temperature_last"], minute["temperature_count"]) == (5.0, 4)
    assert minute["temperature_missing_ratio"] == pytest.approx(1 - 4 / 6)
    assert rows[("d2", "1m", 0)]["temperature_missing_ratio"] == pytest.approx(1 - 1 / 6)


def test_an_overload_above_the_valid_range_changes_the_window_features(runs, tmp_path):
    """The BAD 99 C at 25 s (valid range up to 80 C) is left out of the GOOD statistics, but shows in
    the extremes of all readings and the BAD count; a SUSPECT reading shows in its count."""
    w = runs[2][("d1", "30s", 0)]
    assert (w["temperature_all_min"], w["temperature_all_max"]) == (1.0, 99.0)
    assert (w["temperature_bad_count"], w["temperature_suspect_count"], w["temperature_max"]) == (1, 0, 4.0)
    assert (w["suction_pressure_all_min"], w["suction_pressure_all_max"], w["suction_pressure_bad_count"]) == \
        (300.0, 300.0, 0)
    assert (w["vibration_all_max"], w["vibration_bad_count"], w["vibration_suspect_count"]) == (None, 0, 0)

    def window(rows: list[dict], name: str) -> dict:
        lake = str(tmp_path / name / "lake")
        add_clean(lake, rows)
        run(lake)
        return table(lake)[("d1", "30s", 0)]
    others = [r for r in FIRST if r["quality"] == "GOOD"]
    without = window(others, "without")
    changed = {c for c in w if w[c] != without[c]} - {"computed_at"}
    assert changed == {"temperature_all_max", "temperature_bad_count"}
    assert (without["temperature_all_max"], without["temperature_bad_count"]) == (4.0, 0)
    suspect = window(others + [row("d1", "temperature", 25, 4.0, 100, quality="SUSPECT")], "suspect")
    changed = {c for c in w if suspect[c] != without[c]} - {"computed_at"}
    assert changed == {"temperature_suspect_count"} and suspect["temperature_suspect_count"] == 1


def test_late_data_recomputes_exactly_the_windows_it_touched(runs):
    lake, first, before, second, after = runs
    # late: [0, 30) and [0, 60) got a reading, [60, 90) closed empty and got one; closing: [90, 120), [60, 120)
    assert set(after) == set(before) | {("d1", "30s", 60), ("d1", "30s", 90), ("d1", "1m", 60)}
    assert (second["feature_rows"], second["carried_over_rows"], second["commit"]["rows"]) == (5, 3, 8)
    assert second["commit"]["version"] == 1
    history = lake_io.open_table(lake, "features").history()
    assert history[0]["operationParameters"]["mode"] == "Overwrite"

    w = after[("d1", "30s", 0)]                 # now 1, 2, 7, 4 at 0, 10, 15, 20 s
    assert w["temperature_mean"] == pytest.approx(3.5)
    assert w["temperature_std"] == pytest.approx(7 ** 0.5)
    assert w["temperature_slope"] == pytest.approx(60 * 47.5 / 218.75)
    assert (w["temperature_last"], w["temperature_count"], w["temperature_missing_ratio"]) == (4.0, 4, 0.0)
    assert w["superheat_proxy"] == pytest.approx(3.5 - TSAT_300)
    assert w["computed_at"] > before[("d1", "30s", 0)]["computed_at"]
    minute = after[("d1", "1m", 0)]
    assert (minute["temperature_count"], minute["temperature_mean"]) == (5, pytest.approx(19 / 5))
    # untouched windows are carried over as they were
    for key in [("d1", "30s", 30), ("d2", "30s", 0), ("d2", "1m", 0)]:
        assert after[key] == before[key]
    closing = after[("d1", "1m", 60)]            # 6 at 65 s, 8 at 95 s
    assert (closing["temperature_mean"], closing["temperature_count"]) == (7.0, 2)
    assert closing["temperature_slope"] == pytest.approx(4.0)
    assert closing["temperature_missing_ratio"] == 0.0       # median gap 30 s: 2 expected
    assert after[("d1", "30s", 60)]["temperature_last"] == 6.0


def test_a_run_without_new_clean_versions_does_nothing(runs):
    lake = runs[0]
    assert features.run(["--lake", lake, *ARGS]).get("nothing_to_do")
    assert lake_io.open_table(lake, "features").version() == 1
    assert lake_io.last_inputs(lake, "features", "features")["clean_sensor_readings"] == [0, 1]


def test_crash_between_writing_files_and_the_commit_then_rerun(runs, tmp_path, monkeypatch):
    """The late-data run dies after writing its files, before its commit: the table is unchanged, and
    the rerun gives exactly the uninterrupted result."""
    *_, uninterrupted = runs
    lake = str(tmp_path / "lake")
    add_clean(lake, FIRST)
    run(lake)
    add_clean(lake, SECOND)
    version, before = lake_io.open_table(lake, "features").version(), table(lake)

    def crash(*args, **kwargs):
        raise RuntimeError("injected crash before the commit")
    with monkeypatch.context() as m:
        m.setattr(lake_io, "commit_files", crash)
        with pytest.raises(Exception, match="injected crash"):
            features.run(["--lake", lake, *ARGS])
    assert lake_io.open_table(lake, "features").version() == version and table(lake) == before
    run(lake)
    assert _values(table(lake)) == _values(uninterrupted)


def _values(rows: dict[tuple, dict]) -> dict[tuple, dict]:
    """Window rows without the run-dependent columns."""
    return {k: {c: v for c, v in r.items() if c not in ("computed_at", "source_version")} for k, r in rows.items()}


def test_a_table_written_before_the_quality_columns_gets_them(tmp_path, monkeypatch):
    """A features table of the older contract (no all_min/all_max/bad_count/suspect_count): the next
    run's commit adds the columns to the table's schema, its old rows read them as nulls."""
    lake = str(tmp_path / "lake")
    table_ = contracts.TABLES["features"]
    old = pa.schema([f for f in table_.schema if not f.name.endswith(contracts.QUALITY_STATS)])
    with monkeypatch.context() as m:
        m.setitem(contracts.TABLES, "features", dataclasses.replace(table_, schema=old))
        add_clean(lake, FIRST)
        run(lake)
    assert "temperature_all_max" not in lake_io.open_table(lake, "features").schema().to_pyarrow().names
    add_clean(lake, [row("d1", "temperature", 125, 90.0, 200, quality="BAD")])
    second = run(lake)
    assert second["feature_rows"] == 4 and second["carried_over_rows"] == 0        # [90, 180) closed
    rows = table(lake)
    assert len(rows) == 9
    assert rows[("d1", "30s", 0)]["temperature_all_max"] is None               # written before
    assert (rows[("d1", "30s", 120)]["temperature_all_max"], rows[("d1", "30s", 120)]["temperature_bad_count"]) \
        == (90.0, 1)
