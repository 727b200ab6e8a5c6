"""Point-in-time extraction: time travel excludes later commits (also while a writer appends),
both tiers are unioned, and the same arguments give byte-identical files and manifests."""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import threading

import pyarrow as pa
import pyarrow.compute as pc

from pipelines import archive, extract_training as et
from transforms import extraction
from transforms import archive as archive_tier
from tests.helpers import run_simulator
from core import lake as lake_io

UTC = dt.timezone.utc


def _simulate(lake: str) -> None:
    # 4 days: the oldest one straight into the archive, three days of landing commits
    run_simulator(lake, "--devices", "4", "--backfill_days", "4", "--backfill_end", "2026-10-05",
                  "--archive_days", "1", "--interval", "600")


def _files(directory: str) -> dict[str, str]:
    return {n: hashlib.sha256(open(os.path.join(directory, n), "rb").read()).hexdigest()
            for n in sorted(os.listdir(directory))}


def _late_rows(lake: str, n: int, tag: str) -> pa.Table:
    """Rows that, if visible, would fall into the extracted span."""
    rows = lake_io.read(lake, "raw_sensor_readings").slice(0, n)
    return rows.set_column(0, "event_id", pa.array([f"late-{tag}-{i}" for i in range(n)]))


def test_as_of_version_excludes_later_commits_while_a_writer_appends(lake, tmp_path):
    _simulate(lake)
    n = lake_io.open_table(lake, "raw_sensor_readings").version()
    expected = lake_io.read(lake, "raw_sensor_readings", version=n)
    lo, hi = "2026-10-01T00:00:00+00:00", "2026-10-06T00:00:00+00:00"
    args = ["--lake", lake, "--start", lo, "--end", hi, "--as_of_version", str(n)]

    stop = threading.Event()
    appended: list[int] = []

    def writer():
        i = 0
        while not stop.is_set() and i < 200:
            appended.append(lake_io.append(lake, "raw_sensor_readings", _late_rows(lake, 5, str(i))))
            i += 1

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        d1, m1 = et.run(args + ["--output", str(tmp_path / "a")])
        d2, m2 = et.run(args + ["--output", str(tmp_path / "b")])
    finally:
        stop.set()
        thread.join()
    assert appended and max(appended) > n, "the writer committed while the extraction ran"

    data, manifest = extraction.read_dataset(d1)
    assert manifest["inputs"]["version"] == n and manifest["spec"]["version"] == n
    assert not any(e.startswith("late-") for e in data["event_id"].to_pylist())
    # hot rows of version n in the span, plus the archive day, each exactly once
    archived = sum(archive_tier.read_archive_file(lake, a).num_rows for a in archive_tier.list_archive(lake))
    assert archived > 0 and len(manifest["inputs"]["archive_files"]) == len(archive_tier.list_archive(lake))
    assert data.num_rows == expected.num_rows + archived
    assert sorted(data["event_id"].to_pylist()) == sorted(
        expected["event_id"].to_pylist()
        + [e for a in archive_tier.list_archive(lake) for e in archive_tier.read_archive_file(lake, a)["event_id"].to_pylist()])
    # byte-identical files and manifest
    assert os.path.basename(d1) == os.path.basename(d2)
    assert _files(d1) == _files(d2)
    assert json.load(open(os.path.join(d1, "manifest.json"))) == m1 == m2


def test_as_of_timestamp_filters_and_sensors(lake, tmp_path):
    _simulate(lake)
    table = lake_io.open_table(lake, "raw_sensor_readings")
    v1_time = table.history()[::-1][1]["timestamp"]               # commit time of version 1
    lake_io.append(lake, "raw_sensor_readings", _late_rows(lake, 7, "x"))
    at = dt.datetime.fromtimestamp(v1_time / 1000 + 0.0005, UTC).isoformat()
    devices = sorted(set(lake_io.read(lake, "raw_sensor_readings")["device_id"].to_pylist()))[:2]
    d, manifest = et.run(["--lake", lake, "--start", "2026-10-02", "--end", "2026-10-04",
                          "--as_of_timestamp", at, "--devices", ",".join(devices), "--sensors", "vibration",
                          "--output", str(tmp_path)])
    assert manifest["inputs"]["version"] == 1
    data, _ = extraction.read_dataset(d)
    assert data.num_rows > 0
    assert set(data["device_id"].to_pylist()) <= set(devices)
    assert set(data["sensor_type"].to_pylist()) == {"vibration"}
    t = data["timestamp_ingested"]
    assert pc.min(t).as_py() >= dt.datetime(2026, 10, 2, tzinfo=UTC)
    assert pc.max(t).as_py() < dt.datetime(2026, 10, 4, tzinfo=UTC)
    v1 = lake_io.read(lake, "raw_sensor_readings", version=1)
    mask = pc.and_(pc.is_in(v1["device_id"], pa.array(devices)), pc.equal(v1["sensor_type"], "vibration"))
    mask = pc.and_(mask, pc.greater_equal(v1["timestamp_ingested"], pa.scalar(dt.datetime(2026, 10, 2, tzinfo=UTC))))
    mask = pc.and_(mask, pc.less(v1["timestamp_ingested"], pa.scalar(dt.datetime(2026, 10, 4, tzinfo=UTC))))
    assert data.num_rows == v1.filter(mask).num_rows


def test_union_is_exact_during_an_archive_move(lake, tmp_path, monkeypatch):
    """An archive move interrupted before its landing commit: extraction sees each reading once."""
    _simulate(lake)
    args = ["--lake", lake, "--start", "2026-09-01", "--end", "2026-10-06"]
    _, before = et.run(args + ["--output", str(tmp_path / "before")])
    monkeypatch.setenv(archive_tier.CRASH_AFTER_ENV, "written")
    try:
        archive.run(["--lake", lake, "--hot_days", "2", "--now", "2026-10-05T06:00:00"])
    except Exception as exc:  # noqa: BLE001
        assert "simulated crash" in str(exc)
    monkeypatch.delenv(archive_tier.CRASH_AFTER_ENV)
    d_mid, mid = et.run(args + ["--output", str(tmp_path / "mid")])
    assert mid["rows"] == before["rows"]
    archive.run(["--lake", lake, "--hot_days", "2", "--now", "2026-10-05T06:00:00"])
    d_after, after = et.run(args + ["--output", str(tmp_path / "after")])
    assert after["rows"] == before["rows"] and after["spec"]["version"] > before["spec"]["version"]
    a, _ = extraction.read_dataset(d_mid)
    b, _ = extraction.read_dataset(d_after)
    assert sorted(a["event_id"].to_pylist()) == sorted(b["event_id"].to_pylist())


def test_features_extraction_is_point_in_time_and_reproducible(lake, tmp_path):
    from simulation import synthetic
    start = dt.datetime(2026, 10, 1, tzinfo=UTC)
    features, _ = synthetic.fleet_features(6, start, 3, seed=3)
    day = pa.scalar(start + dt.timedelta(days=2), features["window_start"].type)
    first = lake_io.append(lake, "features", features.filter(pc.less(features["window_start"], day)))
    lake_io.append(lake, "features", features.filter(pc.greater_equal(features["window_start"], day)))
    args = ["--lake", lake, "--kind", "features", "--start", "2026-10-01", "--end", "2026-10-04",
            "--as_of_version", str(first), "--sensors", "vibration,temperature"]
    d1, m1 = et.run(args + ["--output", str(tmp_path / "a")])
    d2, m2 = et.run(args + ["--output", str(tmp_path / "b")])
    assert _files(d1) == _files(d2) and m1 == m2
    data, manifest = extraction.read_dataset(d1)
    assert data.num_rows == features.filter(pc.less(features["window_start"], day)).num_rows
    assert "vibration_mean" in data.column_names and "compressor_current_mean" not in data.column_names
    assert manifest["inputs"]["table"] == "features" and manifest["inputs"]["version"] == first


def _span_fixture(lake: str, days: int = 3):
    """Synthetic features of 6 devices over `days` days in one commit, and the fleet's registry."""
    from simulation import synthetic
    from simulation import fleet as fleet_mod
    start = dt.datetime(2026, 10, 1, tzinfo=UTC)
    features, _ = synthetic.fleet_features(6, start, days, seed=3)
    lake_io.append(lake, "features", features)
    registry = fleet_mod.registry_table(fleet_mod.make_fleet(6, 3))
    commissioned = [start + dt.timedelta(hours=5 * i) for i in range(registry.num_rows)]
    registry = registry.set_column(registry.schema.get_field_index("commissioned_at"), "commissioned_at",
                                   pa.array(commissioned, registry.schema.field("commissioned_at").type))
    lake_io.overwrite(lake, "devices", registry)
    return features, registry


def _rows_in(features: pa.Table, spans: dict[str, list[tuple[dt.datetime, dt.datetime]]]) -> list[tuple]:
    """Reference: (device, window_start) of the windows inside their device's spans, row by row."""
    return sorted((d, w) for d, w in zip(features["device_id"].to_pylist(), features["window_start"].to_pylist())
                  if any(lo <= w < hi for lo, hi in spans.get(d, [])))


def test_spans_per_device_give_exactly_those_rows_pinned_and_reproducible(lake, tmp_path):
    features, _ = _span_fixture(lake)
    devices = sorted(set(features["device_id"].to_pylist()))
    a, b, c = devices[:3]
    t = lambda day, hour: dt.datetime(2026, 10, day, hour, tzinfo=UTC)  # noqa: E731
    spans_file = tmp_path / "spans.csv"
    spans_file.write_text("device_id,start,end\n"
                          f"{a},2026-10-01T00:00:00,2026-10-01T06:00:00\n"
                          f"{a},2026-10-02T12:00:00,+1h\n"              # a second span of the same device
                          f"{a},2026-10-01T05:00:00,2026-10-01T08:00:00\n"  # overlaps the first: merged
                          f"{b},2026-10-03,2026-10-04\n"
                          f"{c},2026-10-02,2026-10-03\n")
    args = ["--lake", lake, "--kind", "features", "--spans", str(spans_file), "--devices", f"{a},{b}"]
    d1, m1 = et.run(args + ["--output", str(tmp_path / "one")])
    d2, m2 = et.run(args + ["--output", str(tmp_path / "two")])
    data, manifest = extraction.read_dataset(d1)
    expected = {a: [(t(1, 0), t(1, 8)), (t(2, 12), t(2, 13))], b: [(t(3, 0), t(4, 0))]}    # c: not in --devices
    assert data.num_rows == len(_rows_in(features, expected)) > 0
    assert sorted(zip(data["device_id"].to_pylist(), data["window_start"].to_pylist())) == _rows_in(features, expected)
    # the manifest pins the resolved spans and the file they came from
    assert manifest["spec"]["spans"] == [[d, lo.isoformat(), hi.isoformat()] for d in (a, b) for lo, hi in expected[d]]
    assert manifest["spec"]["spans_sha256"] == hashlib.sha256(spans_file.read_bytes()).hexdigest()
    assert manifest["spec"]["devices"] == [a, b]
    # byte-identical output; other spans are another dataset
    assert os.path.basename(d1) == os.path.basename(d2) and _files(d1) == _files(d2) and m1 == m2
    spans_file.write_text(spans_file.read_text().replace("+1h", "+2h"))
    d3, m3 = et.run(args + ["--output", str(tmp_path / "three")])
    longer = dict(expected, **{a: [(t(1, 0), t(1, 8)), (t(2, 12), t(2, 14))]})    # one hour more of a's span
    assert os.path.basename(d3) != os.path.basename(d1) and m3["rows"] == len(_rows_in(features, longer)) > m1["rows"]


def test_spans_per_model_from_commissioning_with_device_override(lake, tmp_path):
    features, registry = _span_fixture(lake)
    by_model = {}
    for d, m, c in zip(*[registry[k].to_pylist() for k in ("device_id", "model", "commissioned_at")]):
        by_model.setdefault(m, []).append((d, c))
    model, members = max(by_model.items(), key=lambda kv: len(kv[1]))
    override = members[0][0]
    spans_file = tmp_path / "spans.json"
    spans_file.write_text(json.dumps({"spans": [
        {"model": model, "start": "commissioned", "end": "+6h"},
        {"device_id": override, "start": "2026-10-03T00:00:00", "end": "2026-10-03T02:00:00"}]}))
    _, manifest = et.run(["--lake", lake, "--kind", "features", "--spans", str(spans_file),
                          "--output", str(tmp_path / "out")])
    expected = {d: [(c, c + dt.timedelta(hours=6))] for d, c in members if d != override}
    expected[override] = [(dt.datetime(2026, 10, 3, tzinfo=UTC), dt.datetime(2026, 10, 3, 2, tzinfo=UTC))]
    data, _ = extraction.read_dataset(os.path.join(str(tmp_path / "out"), manifest["dataset_id"]))
    assert sorted(zip(data["device_id"].to_pylist(), data["window_start"].to_pylist())) == _rows_in(features, expected)
    assert data.num_rows > 0 and manifest["spec"]["registry_version"] == lake_io.open_table(lake, "devices").version()


def test_spans_bad_input_is_refused_readably(lake, tmp_path):
    import pytest
    _span_fixture(lake, days=1)
    cases = {"device_id,model,start,end\nd1,CX-200,2026-10-01,2026-10-02\n": "exactly one of device_id or model",
             "device_id,start,end\nd1,2026-10-02,2026-10-01\n": "is not after start",
             "model,start,end\nNOPE,2026-10-01,+1d\n": "has no devices in the registry",
             "device_id,start,end\nd1,yesterday,+1d\n": "is not an ISO date",
             "device_id,start,end\n": "no spans"}
    for i, (text, message) in enumerate(cases.items()):
        path = tmp_path / f"bad{i}.csv"
        path.write_text(text)
        with pytest.raises(SystemExit, match=message):
            et.run(["--lake", lake, "--kind", "features", "--spans", str(path), "--output", str(tmp_path)])
    with pytest.raises(SystemExit, match="not both"):
        et.run(["--lake", lake, "--kind", "features", "--spans", str(path), "--start", "2026-10-01"])
