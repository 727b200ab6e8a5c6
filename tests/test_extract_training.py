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
from tests.helpers import run_simulator
from transforms import lake as lake_io

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

    data, manifest = et.read_dataset(d1)
    assert manifest["inputs"]["version"] == n and manifest["spec"]["version"] == n
    assert not any(e.startswith("late-") for e in data["event_id"].to_pylist())
    # hot rows of version n in the span, plus the archive day, each exactly once
    archived = sum(archive.read_archive_file(lake, a).num_rows for a in archive.list_archive(lake))
    assert archived > 0 and len(manifest["inputs"]["archive_files"]) == len(archive.list_archive(lake))
    assert data.num_rows == expected.num_rows + archived
    assert sorted(data["event_id"].to_pylist()) == sorted(
        expected["event_id"].to_pylist()
        + [e for a in archive.list_archive(lake) for e in archive.read_archive_file(lake, a)["event_id"].to_pylist()])
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
    data, _ = et.read_dataset(d)
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
    monkeypatch.setenv(archive.CRASH_AFTER_ENV, "written")
    try:
        archive.run(["--lake", lake, "--hot_days", "2", "--now", "2026-10-05T06:00:00"])
    except Exception as exc:  # noqa: BLE001
        assert "simulated crash" in str(exc)
    monkeypatch.delenv(archive.CRASH_AFTER_ENV)
    d_mid, mid = et.run(args + ["--output", str(tmp_path / "mid")])
    assert mid["rows"] == before["rows"]
    archive.run(["--lake", lake, "--hot_days", "2", "--now", "2026-10-05T06:00:00"])
    d_after, after = et.run(args + ["--output", str(tmp_path / "after")])
    assert after["rows"] == before["rows"] and after["spec"]["version"] > before["spec"]["version"]
    a, _ = et.read_dataset(d_mid)
    b, _ = et.read_dataset(d_after)
    assert sorted(a["event_id"].to_pylist()) == sorted(b["event_id"].to_pylist())


def test_features_extraction_is_point_in_time_and_reproducible(lake, tmp_path):
    from models import synthetic
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
    data, manifest = et.read_dataset(d1)
    assert data.num_rows == features.filter(pc.less(features["window_start"], day)).num_rows
    assert "vibration_mean" in data.column_names and "compressor_current_mean" not in data.column_names
    assert manifest["inputs"]["table"] == "features" and manifest["inputs"]["version"] == first
