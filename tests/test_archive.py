"""Archive move (landing -> cold Parquet): crash-safe at every step, exact once across both tiers."""
from __future__ import annotations

import collections

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from pipelines import archive
from transforms import archive as archive_tier
from tests.helpers import run_simulator
from core import lake as lake_io
from transforms.delta import snapshot_files

NOW = "2026-10-05T06:00:00"
KEY = ["event_id", "device_id", "sensor_type", "value", "ts", "timestamp_ingested"]


def _simulate(lake: str) -> None:
    run_simulator(lake, "--devices", "4", "--backfill_days", "4", "--backfill_end", "2026-10-05",
                  "--interval", "600", "--fault_fraction", "0.3")


def union_rows(lake: str, version: int | None = None) -> collections.Counter:
    """What a reader of both tiers sees at a landing version: multiset of readings."""
    table = lake_io.open_table(lake, "raw_sensor_readings", version)
    files = snapshot_files(lake, "raw_sensor_readings", table.version())
    hot = table.to_pyarrow_table(columns=KEY)
    cold = [archive_tier.read_archive_file(lake, a, KEY)
            for a in archive_tier.union_files(lake, files, archive_tier.list_archive(lake))]
    rows = pa.concat_tables([hot] + cold)
    return collections.Counter(zip(*[rows[c].to_pylist() for c in KEY]))


def _run(lake: str, *extra: str) -> dict:
    return archive.run(["--lake", lake, "--hot_days", "2", "--now", NOW, *extra])


def _old_landing_files(lake: str) -> int:
    return sum(1 for f in snapshot_files(lake, "raw_sensor_readings")
               if str(dict(f.partition_values)["ingest_date"]) < "2026-10-03")


def test_move_without_crash(lake):
    _simulate(lake)
    before = union_rows(lake)
    version_before = lake_io.open_table(lake, "raw_sensor_readings").version()
    assert _old_landing_files(lake) > 0
    summary = _run(lake)
    assert summary["rows_archived"] > 0 and summary["removed_in_version"] == version_before + 1
    assert _old_landing_files(lake) == 0
    assert union_rows(lake) == before
    # a reader time-travelling to the version before the move still sees every reading once
    assert union_rows(lake, version_before) == before
    # archive partitions are date=YYYY-MM-DD/device_id=... holding the readings of that device
    files = archive_tier.list_archive(lake)
    assert all(a.path.startswith("date=2026-") and "/device_id=dev-" in a.path for a in files)
    one = archive_tier.read_archive_file(lake, files[0])
    assert pc.all(pc.equal(one["device_id"], files[0].device_id)).as_py()
    # nothing left to move: a rerun is a no-op
    assert _run(lake).get("nothing_to_do")
    assert union_rows(lake) == before


@pytest.mark.parametrize("step", ["partial_write", "written", "removed"])
def test_interrupted_move_then_rerun(lake, step, monkeypatch):
    _simulate(lake)
    before = union_rows(lake)
    monkeypatch.setenv(archive_tier.CRASH_AFTER_ENV, step)
    with pytest.raises(Exception, match="simulated crash"):
        _run(lake)
    # at the moment of the crash a union reader sees every reading exactly once
    assert union_rows(lake) == before
    assert _old_landing_files(lake) == (0 if step == "removed" else _old_landing_files(lake))
    if step != "removed":
        assert _old_landing_files(lake) > 0
        assert archive_tier.list_archive(lake), "the crash happened after some archive files were written"
    monkeypatch.delenv(archive_tier.CRASH_AFTER_ENV)
    _run(lake)
    assert _old_landing_files(lake) == 0
    assert union_rows(lake) == before
    # no duplicate archive files for one source: one file per (date, device, source)
    names = [a.path for a in archive_tier.list_archive(lake)]
    assert len(names) == len(set(names))


def test_move_does_not_remove_files_appended_concurrently(lake):
    """A landing file appended into an old partition after planning is not archived, so it must
    not be removed either: delta-rs refuses the stale DELETE; the rerun plans again."""
    _simulate(lake)
    plan = archive_tier.plan_move(lake, 2, archive.cli.utc_datetime(NOW))
    landed = lake_io.read(lake, "raw_sensor_readings")
    late = landed.filter(pc.less(landed["ingest_date"], pa.scalar(plan.cutoff, pa.date32()))).slice(0, 3)
    late = late.set_column(0, "event_id", pa.array(["late-1", "late-2", "late-3"]))
    lake_io.append(lake, "raw_sensor_readings", late)          # lands in an old ingest_date partition
    before = union_rows(lake)
    import apache_beam as beam
    with pytest.raises(Exception, match="concurrent"):
        with beam.Pipeline() as p:
            _ = p | archive_tier.MoveToArchive(plan)
    assert union_rows(lake) == before
    _run(lake)
    assert union_rows(lake) == before and _old_landing_files(lake) == 0


@pytest.mark.parametrize("device_id", ["../../outside", "dev/evil", "dev 1", ""])
def test_device_ids_that_cannot_name_a_folder_stop_the_move(lake, tmp_path, device_id):
    _simulate(lake)
    landing = lake_io.read(lake, "raw_sensor_readings")
    old = landing.filter(pc.less(pc.cast(landing["ingest_date"], pa.string()), "2026-10-03"))
    odd = old.slice(0, 1).set_column(old.schema.get_field_index("device_id"), "device_id", pa.array([device_id]))
    lake_io.append(lake, "raw_sensor_readings", odd)
    before = union_rows(lake)
    with pytest.raises(Exception, match="cannot name an archive folder"):
        _run(lake)
    assert union_rows(lake) == before                     # nothing moved, nothing lost
    archive_root = tmp_path / "lake" / "archive"
    outside = [p for p in (tmp_path).rglob("*.parquet") if "outside" in str(p) or "evil" in str(p)]
    assert outside == [] and not any(" " in p.name for p in archive_root.rglob("*"))
