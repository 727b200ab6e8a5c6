"""Cleansing (Contract 2): dedup across and within landing versions and against the lookback, unit
conversion, time forms (DST gap and fold), quality flags, quarantine, crash recovery and the
reconciliation of a run over simulator data with every fault. Pipelines run on the DirectRunner."""
from __future__ import annotations

import datetime as dt
from collections import Counter

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from pipelines import cleanse
from schemas import contracts
from tests.helpers import ground_truth, run_simulator
from transforms import cleansing as cl
from core import lake as lake_io

UTC = dt.timezone.utc
T0 = dt.datetime(2026, 3, 28, 12, 0, tzinfo=UTC)
DEVICES = [("d1", "Europe/Berlin", True), ("d2", "UTC", False), ("d3", "America/New_York", True)]


def write_registry(lake: str, devices=DEVICES) -> None:
    lake_io.overwrite(lake, "devices", pa.Table.from_pylist([
        dict(device_id=d, site_id="s1", model="CX-200", timezone=tz, rated_current_a=15.0,
             commissioned_at=dt.datetime(2025, 1, 1, tzinfo=UTC), active=active) for d, tz, active in devices],
        schema=contracts.DEVICES))


def reading(event_id: str, t: dt.datetime, value: float = 4.0, *, device: str = "d1", sensor: str = "temperature",
            unit: str | None = "C", ts: str | None = None, ingested: dt.datetime | None = None,
            offset: int | None = None) -> dict:
    return dict(event_id=event_id, device_id=device, sensor_type=sensor, value=value, unit=unit,
                ts=ts if ts is not None else t.isoformat(), seq=None,
                timestamp_ingested=ingested or t + dt.timedelta(seconds=2),
                kafka_topic="sensor.readings" if offset is not None else None,
                kafka_partition=0 if offset is not None else None, kafka_offset=offset)


def land(lake: str, rows: list[dict]) -> int:
    table = pa.Table.from_pylist([dict(r, ingest_date=r["timestamp_ingested"].date()) for r in rows],
                                 schema=contracts.RAW_SENSOR_READINGS)
    return lake_io.append(lake, "raw_sensor_readings", table)


def run(lake: str, *args: str) -> dict:
    summary = cleanse.run(["--lake", lake, *args])
    assert summary["reconciles"], summary
    assert summary.get("commits_match_counts", True), summary
    return summary


def clean_rows(lake: str) -> list[dict]:
    return sorted(lake_io.read(lake, "clean_sensor_readings").to_pylist(),
                  key=lambda r: (r["event_id"], r["timestamp_ingested"]))


def by_id(lake: str) -> dict[str, dict]:
    rows = clean_rows(lake)
    assert len({r["event_id"] for r in rows}) == len(rows), "an event_id appears twice"
    return {r["event_id"]: r for r in rows}


def quarantine_rows(lake: str) -> dict[str, dict]:
    return {r["event_id"]: r for r in lake_io.read(lake, "quarantine").to_pylist()}


def minutes(n: int) -> dt.timedelta:
    return dt.timedelta(minutes=n)


# --- dedup --------------------------------------------------------------------------------------

def _replay_fixture(lake: str) -> None:
    write_registry(lake)
    land(lake, [reading(f"e{i}", T0 + minutes(i), 4.0 + i) for i in range(3)])
    # the device reconnects an hour later and re-sends e0 and e1, then sends e3
    later = T0 + minutes(60)
    land(lake, [reading("e0", T0, 4.0, ingested=later), reading("e1", T0 + minutes(1), 5.0, ingested=later),
                reading("e3", T0 + minutes(3), 7.0)])


def test_replay_in_a_later_landing_version_appears_once(lake):
    _replay_fixture(lake)
    first = run(lake, "--upto_version", "0")
    assert (first["rows_in"], first["clean"], first["duplicates_removed"]) == (3, 3, 0)
    second = run(lake)
    assert second["landing_versions"]["clean_sensor_readings"] == [0, 1]
    assert (second["rows_in"], second["clean"], second["quarantined"]) == (3, 1, 0)
    assert second["duplicates"] == {"duplicates_within_batch": 0, "duplicates_against_clean": 2}
    rows = by_id(lake)
    assert sorted(rows) == ["e0", "e1", "e2", "e3"]
    assert rows["e0"]["timestamp_ingested"] == T0 + dt.timedelta(seconds=2)    # the first copy stays
    assert lake_io.last_inputs(lake, "clean_sensor_readings", "cleanse")["raw_sensor_readings"] == [0, 1]


def test_replay_cleansed_in_one_run_gives_the_same_rows(lake, tmp_path):
    _replay_fixture(lake)
    summary = run(lake)
    assert summary["duplicates"] == {"duplicates_within_batch": 2, "duplicates_against_clean": 0}
    other = str(tmp_path / "two_runs" / "lake")
    _replay_fixture(other)
    run(other, "--upto_version", "0")
    run(other)
    assert clean_rows(lake) == clean_rows(other)


def test_duplicates_within_one_version_keep_the_earliest_copy(lake):
    write_registry(lake)
    land(lake, [reading("e1", T0, 4.0, ingested=T0 + dt.timedelta(seconds=9), offset=11),
                reading("e1", T0, 4.0, ingested=T0 + dt.timedelta(seconds=3), offset=10),
                reading("e1", T0, 4.0, ingested=T0 + dt.timedelta(seconds=5), offset=12),
                reading("e2", T0 + minutes(1), 4.5)])
    summary = run(lake)
    assert (summary["rows_in"], summary["clean"], summary["duplicates_removed"]) == (4, 2, 2)
    assert summary["duplicates"]["duplicates_within_batch"] == 2
    assert by_id(lake)["e1"]["timestamp_ingested"] == T0 + dt.timedelta(seconds=3)


def _late_replay(lake: str) -> None:
    write_registry(lake)
    land(lake, [reading("e1", T0, 4.0), reading("e2", T0 + minutes(1), 4.5)])
    # e1 replayed three days later, together with a fresh reading
    later = T0 + dt.timedelta(days=3)
    land(lake, [reading("e1", T0, 4.0, ingested=later), reading("e9", later, 4.2)])


def test_replay_outside_the_lookback_is_not_recognised(lake):
    _late_replay(lake)
    run(lake, "--upto_version", "0", "--lookback_days", "1")
    summary = run(lake, "--lookback_days", "1")
    assert (summary["clean"], summary["duplicates_removed"], summary["context_files"]) == (2, 0, 0)
    assert Counter(r["event_id"] for r in clean_rows(lake)) == {"e1": 2, "e2": 1, "e9": 1}


def test_replay_inside_the_lookback_is_removed(lake):
    _late_replay(lake)
    run(lake, "--upto_version", "0", "--lookback_days", "4")
    summary = run(lake, "--lookback_days", "4")
    assert (summary["clean"], summary["duplicates"]["duplicates_against_clean"]) == (1, 1)
    assert sorted(by_id(lake)) == ["e1", "e2", "e9"]


# --- units, time forms, quarantine (one landing version, one run) ------------------------------

UNIT_CASES = [  # sensor, value, unit, canonical value, canonical unit
    ("compressor_current", 12.5, "A", 12.5, "A"),
    ("compressor_current", 12500.0, "mA", 12.5, "A"),
    ("compressor_current", 12.5, None, 12.5, "A"),
    ("suction_pressure", 350.0, "kPa", 350.0, "kPa"),
    ("suction_pressure", 3.5, "bar", 350.0, "kPa"),
    ("suction_pressure", 50.0, "psi", 344.7378646584, "kPa"),
    ("discharge_pressure", 14.0, "bar", 1400.0, "kPa"),
    ("discharge_pressure", 200.0, "psi", 1378.9514586336, "kPa"),
    ("discharge_pressure", 1400.0, None, 1400.0, "kPa"),
    ("vibration", 2.5, "mm/s", 2.5, "mm/s"),
    ("vibration", 0.1, "in/s", 2.54, "mm/s"),
    ("temperature", 4.0, "C", 4.0, "C"),
    ("temperature", 50.0, "F", 10.0, "C"),
    ("temperature", 277.15, "K", 4.0, "C"),
]
INGESTED = dt.datetime(2026, 10, 26, 12, 0, tzinfo=UTC)
TIME_CASES = [  # event_id, ts as sent by d1 (Europe/Berlin), timestamp_utc
    ("t-epoch", "1774699200000", dt.datetime(2026, 3, 28, 12, 0, tzinfo=UTC)),
    ("t-epoch-frac", "1774699200123.0", dt.datetime(2026, 3, 28, 12, 0, 0, 123000, tzinfo=UTC)),
    ("t-offset", "2026-03-28T13:00:00.250+01:00", dt.datetime(2026, 3, 28, 12, 0, 0, 250000, tzinfo=UTC)),
    ("t-zulu", "2026-03-28T12:00:00Z", dt.datetime(2026, 3, 28, 12, 0, tzinfo=UTC)),
    ("t-local", "2026-03-28T13:00:00", dt.datetime(2026, 3, 28, 12, 0, tzinfo=UTC)),
    ("t-local-summer", "2026-07-01T14:00:00", dt.datetime(2026, 7, 1, 12, 0, tzinfo=UTC)),
    # 02:30 does not exist on 29 March in Berlin: read with the offset before the gap (+01:00)
    ("t-dst-gap", "2026-03-29T02:30:00", dt.datetime(2026, 3, 29, 1, 30, tzinfo=UTC)),
    # 02:30 happens twice on 25 October: the earlier one (+02:00)
    ("t-dst-fold", "2026-10-25T02:30:00", dt.datetime(2026, 10, 25, 0, 30, tzinfo=UTC)),
    ("t-fold-after", "2026-10-25T03:30:00", dt.datetime(2026, 10, 25, 2, 30, tzinfo=UTC)),
]


@pytest.fixture(scope="module")
def forms_lake(tmp_path_factory) -> tuple[str, dict]:
    lake = str(tmp_path_factory.mktemp("forms") / "lake")
    write_registry(lake)
    rows = [reading(f"u{i}", T0 + minutes(i), value, sensor=sensor, unit=unit, ingested=INGESTED)
            for i, (sensor, value, unit, _, _) in enumerate(UNIT_CASES)]
    rows += [reading(eid, T0, 4.0, ts=ts, ingested=INGESTED) for eid, ts, _ in TIME_CASES]
    rows += [reading("t-local-ny", T0, 4.0, device="d3", ts="2026-03-28T08:00:00", ingested=INGESTED)]
    rows += [reading("q-unknown", T0, 4.0, device="dx", ingested=INGESTED, offset=7),
             reading("q-inactive", T0, 4.0, device="d2", ingested=INGESTED),
             reading("q-unit", T0, 4.0, unit="furlong/s", sensor="vibration", ingested=INGESTED),
             reading("q-sensor", T0, 4.0, sensor="oil_level", unit=None, ingested=INGESTED),
             reading("q-ts", T0, 4.0, ts="yesterday noon", ingested=INGESTED),
             reading("q-ts-empty", T0, 4.0, ts="", ingested=INGESTED)]
    land(lake, rows)
    return lake, run(lake)


@pytest.mark.parametrize("case", range(len(UNIT_CASES)), ids=[f"{c[0]}-{c[2]}" for c in UNIT_CASES])
def test_each_unit_is_converted_to_the_canonical_unit(forms_lake, case):
    sensor, _, _, expected, unit = UNIT_CASES[case]
    row = by_id(forms_lake[0])[f"u{case}"]
    assert (row["sensor_type"], row["unit"]) == (sensor, unit)
    assert row["value"] == pytest.approx(expected, rel=1e-12)
    assert (row["quality"], row["quality_reasons"]) == ("GOOD", [])


@pytest.mark.parametrize("event_id,ts,expected", TIME_CASES, ids=[c[0] for c in TIME_CASES])
def test_each_time_form_is_normalised_to_utc(forms_lake, event_id, ts, expected):
    row = by_id(forms_lake[0])[event_id]
    assert row["timestamp_utc"] == expected
    assert row["date"] == expected.date()


def test_local_time_uses_the_devices_own_timezone(forms_lake):
    assert by_id(forms_lake[0])["t-local-ny"]["timestamp_utc"] == dt.datetime(2026, 3, 28, 12, 0, tzinfo=UTC)


def test_unknown_inactive_and_unusable_readings_are_quarantined_as_received(forms_lake):
    lake, summary = forms_lake
    q = quarantine_rows(lake)
    assert {k: v["reason"] for k, v in q.items()} == {
        "q-unknown": "unknown_device", "q-inactive": "inactive_device", "q-unit": "unknown_unit",
        "q-sensor": "unknown_sensor_type", "q-ts": "unparseable_ts", "q-ts-empty": "unparseable_ts"}
    assert summary["quarantined_by_reason"] == {"unknown_device": 1, "inactive_device": 1, "unknown_unit": 1,
                                                "unknown_sensor_type": 1, "invalid_value": 0, "unparseable_ts": 2}
    unknown = q["q-unknown"]
    assert (unknown["unit"], unknown["ts"], unknown["kafka_offset"], unknown["source_version"]) == \
        ("C", T0.isoformat(), 7, 0)
    assert not set(q) & set(by_id(lake))
    n = len(UNIT_CASES) + len(TIME_CASES) + 1
    assert (summary["rows_in"], summary["clean"], summary["quarantined"]) == (n + 6, n, 6)


# --- quality flags ------------------------------------------------------------------------------

def test_each_quality_flag_and_reason(lake):
    write_registry(lake)
    t = T0
    rows = [
        reading("good", t, 4.0),
        reading("max-edge", t, 50.0, sensor="vibration", unit="mm/s"),          # the range is inclusive
        reading("oor-high", t + minutes(1), 50.5, sensor="vibration", unit="mm/s"),
        reading("oor-low", t, -61.0),
        reading("oor-unit", t, 2.0, sensor="vibration", unit="in/s"),         # 50.8 mm/s
        reading("future", t + minutes(10), 4.0, sensor="suction_pressure", unit="kPa", ingested=t),
        reading("skew-ok", t + minutes(4), 4.0, sensor="discharge_pressure", unit="kPa", ingested=t),
    ]
    # current: 10 equal values in a row (stuck); the 11th differs
    rows += [reading(f"stuck{i}", t + minutes(i), 12.0, device="d3", sensor="compressor_current", unit="A")
             for i in range(10)]
    rows += [reading("stuck-end", t + minutes(10), 12.1, device="d3", sensor="compressor_current", unit="A")]
    # suction: 9 equal values are not a stuck run
    rows += [reading(f"nine{i}", t + minutes(i), 300.0, device="d3", sensor="suction_pressure", unit="kPa")
             for i in range(9)]
    # discharge: stuck far out of range, landed out of order
    rows += [reading(f"both{i}", t + minutes(9 - i), 9999.0, device="d3", sensor="discharge_pressure", unit="kPa")
             for i in range(10)]
    land(lake, rows)
    summary = run(lake)
    got = {k: (v["quality"], v["quality_reasons"]) for k, v in by_id(lake).items()}
    assert got["good"] == got["max-edge"] == got["skew-ok"] == ("GOOD", [])
    assert got["oor-high"] == got["oor-low"] == got["oor-unit"] == ("BAD", ["out_of_range"])
    assert got["future"] == ("BAD", ["future_timestamp"])
    assert all(got[f"stuck{i}"] == ("SUSPECT", ["stuck_value"]) for i in range(10))
    assert got["stuck-end"] == ("GOOD", [])
    assert all(got[f"nine{i}"] == ("GOOD", []) for i in range(9))
    assert all(got[f"both{i}"] == ("BAD", ["out_of_range", "stuck_value"]) for i in range(10))
    assert summary["clean_by_quality"] == {"GOOD": 13, "SUSPECT": 10, "BAD": 14}
    assert summary["flags"] == {"future_timestamp": 1, "out_of_range": 13, "stuck_value": 20}


def test_a_stuck_run_continues_across_runs_through_clean_context(lake):
    write_registry(lake)
    sensor = dict(device="d3", sensor="vibration", unit="mm/s")
    land(lake, [reading(f"a{i}", T0 + minutes(i), 2.5 if i >= 2 else 2.0 + i / 10, **sensor) for i in range(8)])
    first = run(lake)
    assert first["flags"]["stuck_value"] == 0                        # a0, a1 differ; a2..a7: 6 equal
    land(lake, [reading(f"b{i}", T0 + minutes(8 + i), 2.5, **sensor) for i in range(4)]
         + [reading("c0", T0 + minutes(12), 2.6, **sensor)])
    second = run(lake)
    assert second["context_rows"] == 8
    got = {k: v["quality"] for k, v in by_id(lake).items()}
    assert [got[f"b{i}"] for i in range(4)] == ["SUSPECT"] * 4        # 6 earlier + 4 new = 10 in a row
    assert [got[f"a{i}"] for i in range(8)] == ["GOOD"] * 8            # committed rows are not rewritten
    assert got["c0"] == "GOOD"


def _series(sensor: str, values, step_s: float, device: str = "d1", start: dt.datetime = T0) -> pl.DataFrame:
    return pl.DataFrame({"device_id": device, "sensor_type": sensor,
                         "event_id": [f"{sensor}{i}" for i in range(len(values))], "value": [float(v) for v in values],
                         "timestamp_utc": [start + dt.timedelta(seconds=i * step_s) for i in range(len(values))]},
                        schema_overrides={"timestamp_utc": pl.Datetime("us", "UTC")})


def test_stuck_value_needs_a_run_long_in_time_and_equal_within_the_resolution():
    config = cl.CleanseConfig()

    def stuck(frame, context=None):
        return cl.stuck_mask(frame, context, config.stuck_run_length, config.stuck_min_duration_s).to_list()
    # 1 s sampling: a quantised pressure (1 kPa) steady for 2 minutes at a time is not stuck
    steady = _series("suction_pressure", [300.0] * 120 + [301.0] * 120 + [300.0] * 120, 1)
    assert not any(stuck(steady))
    # ... a sensor repeating its value for 15 minutes is (all of the run, not only its end)
    frozen = _series("suction_pressure", [299.0] * 30 + [300.0] * 900 + [301.0] * 30, 1)
    assert stuck(frozen) == [False] * 30 + [True] * 900 + [False] * 30
    # equal within the resolution: psi converted to kPa carries float noise, still one run; a step
    # of one resolution ends it
    psi = 43.5113 * 6.894757293168
    noisy = _series("suction_pressure", [psi + e for e in (1e-9, -1e-9) * 300] + [psi + 1.0] * 5, 2)
    assert stuck(noisy) == [True] * 600 + [False] * 5
    # the count still applies: at 5 min sampling two equal readings span 5 min but are not a run
    slow = _series("temperature", [4.0, 4.0, 4.0, 5.0], 300)
    assert not any(stuck(slow))
    # and the time counts across the context: 8 min of earlier clean rows + 2 min of new ones
    ctx = _series("vibration", [2.5] * 480, 1)
    new = _series("vibration", [2.5] * 120, 1, start=T0 + dt.timedelta(seconds=480))
    assert all(stuck(new, ctx.with_columns(pl.col("event_id") + "c"))) and not any(stuck(new))


# --- crash recovery -----------------------------------------------------------------------------

def _two_versions(lake: str) -> None:
    write_registry(lake)
    land(lake, [reading(f"e{i}", T0 + minutes(i), 4.0 + i) for i in range(4)]
         + [reading("x0", T0, 1.0, device="dx")])
    later = T0 + minutes(30)
    land(lake, [reading("e1", T0 + minutes(1), 5.0, ingested=later)]
         + [reading(f"f{i}", T0 + minutes(20 + i), 3.0, device="d3") for i in range(3)]
         + [reading("x1", T0, 1.0, device="dx"), reading("i1", T0, 1.0, device="d2")])


def _state(lake: str) -> dict:
    return {t: (lake_io.open_table(lake, t).version(), lake_io.read(lake, t).num_rows)
            for t in ("clean_sensor_readings", "quarantine")}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> str:
    lake = str(tmp_path_factory.mktemp("uninterrupted") / "lake")
    _two_versions(lake)
    run(lake, "--upto_version", "0")
    run(lake)
    return lake


def _same_tables(a: str, b: str) -> None:
    assert clean_rows(a) == clean_rows(b)
    qa, qb = (sorted((dict(r, quarantined_at=None) for r in quarantine_rows(x).values()), key=lambda r: r["event_id"])
              for x in (a, b))
    assert qa == qb


def test_crash_between_writing_files_and_committing_leaves_tables_unchanged(lake, uninterrupted, monkeypatch):
    _two_versions(lake)
    run(lake, "--upto_version", "0")
    before = _state(lake)

    def crash(*args, **kwargs):
        raise RuntimeError("injected crash before the commit")
    with monkeypatch.context() as m:
        m.setattr(lake_io, "commit_files", crash)
        with pytest.raises(Exception, match="injected crash"):
            cleanse.run(["--lake", lake])
    assert _state(lake) == before
    summary = run(lake)
    assert (summary["rows_in"], summary["clean"], summary["quarantined"], summary["duplicates_removed"],
            summary["already_committed"]) == (6, 3, 2, 1, 0)
    _same_tables(lake, uninterrupted)


def test_crash_between_the_clean_and_the_quarantine_commit_is_repaired(lake, uninterrupted, monkeypatch):
    _two_versions(lake)
    run(lake, "--upto_version", "0")
    real_commit = lake_io.commit_files

    def die_after_the_clean_commit(lake_root, table, *args, **kwargs):
        # the runner may reach either commit first: the quarantine's never lands, the process dies
        # right after the clean one
        if table == "quarantine":
            return -1
        real_commit(lake_root, table, *args, **kwargs)
        raise RuntimeError("injected crash after the clean commit")
    with monkeypatch.context() as m:
        m.setattr(lake_io, "commit_files", die_after_the_clean_commit)
        with pytest.raises(Exception, match="injected crash"):
            cleanse.run(["--lake", lake])
    assert cl.consumed(lake, "clean_sensor_readings") == 1 and cl.consumed(lake, "quarantine") == 0
    clean_version = lake_io.open_table(lake, "clean_sensor_readings").version()
    # d2 is activated before the rerun: the repair still splits with the registry the clean side used
    write_registry(lake, [("d1", "Europe/Berlin", True), ("d2", "UTC", True), ("d3", "America/New_York", True)])
    summary = run(lake)
    # only the quarantine catches up; the clean side of version 1 is counted, not written again
    assert summary["landing_versions"] == {"clean_sensor_readings": [1, 1], "quarantine": [0, 1]}
    assert (summary["rows_in"], summary["clean"], summary["quarantined"], summary["already_committed"]) == (6, 0, 2, 4)
    assert lake_io.open_table(lake, "clean_sensor_readings").version() == clean_version
    _same_tables(lake, uninterrupted)
    assert cleanse.run(["--lake", lake]).get("nothing_to_do")


# --- simulator data with every fault ------------------------------------------------------------

FAULTS = "stuck_value,dropout,duplicates,replay,out_of_range,unknown_device,inactive_device"


def test_reconciliation_over_simulator_data_with_every_fault(lake):
    run_simulator(lake, "--devices", "20", "--backfill_days", "2", "--backfill_end", "2026-11-20",
                  "--interval", "300", "--data_faults", FAULTS, "--inactive_fraction", "0.1",
                  "--mixed_unit_fraction", "0.3")
    first = run(lake, "--upto_version", "0")
    second = run(lake)
    landing = lake_io.read(lake, "raw_sensor_readings")
    registry = {r["device_id"]: r for r in lake_io.read(lake, "devices").to_pylist()}
    truth = ground_truth(lake)
    faults = {t["mode"]: t for t in truth if t["kind"] == "data_fault"}
    usable = pc.is_in(landing["device_id"], pa.array([d for d, r in registry.items() if r["active"]]))
    usable_rows = landing.filter(usable)
    copies = Counter(usable_rows["event_id"].to_pylist())

    total = {k: first[k] + second[k] for k in ("rows_in", "clean", "quarantined", "duplicates_removed")}
    assert total["rows_in"] == landing.num_rows
    assert total["quarantined"] == landing.num_rows - usable_rows.num_rows > 0
    assert total["clean"] == len(copies)
    assert total["duplicates_removed"] == sum(n - 1 for n in copies.values()) > 0
    # every injected duplicate and replay is gone; replays landed a day later were found in clean
    dup_ids = faults["duplicates"]["event_ids"] + faults["replay"]["event_ids"]
    assert total["duplicates_removed"] == sum(1 for e in dup_ids if e in copies)
    clean = pl.from_arrow(lake_io.read(lake, "clean_sensor_readings"))
    assert clean["event_id"].n_unique() == clean.height == len(copies)
    def flagged(reason: str) -> set[str]:
        return set(clean.filter(pl.col("quality_reasons").list.contains(reason))["event_id"])
    assert flagged("out_of_range") == set(faults["out_of_range"]["event_ids"]) & set(copies)
    stuck = set(faults["stuck_value"]["event_ids"]) & set(copies)
    # rows of a run cut by the first run's end are flagged only once 10 of them are seen
    assert flagged("stuck_value") <= stuck and len(stuck - flagged("stuck_value")) < 10
    reasons = Counter(lake_io.read(lake, "quarantine")["reason"].to_pylist())
    assert set(reasons) == {"unknown_device", "inactive_device"}
    print("reconciliation:", total, "quarantine:", dict(reasons))
