"""Lake upkeep: compaction, checkpoint and vacuum keep every pinned training read byte-identical and
every incremental pipeline exactly where it was; removed files outside the retention are deleted."""
from __future__ import annotations

import hashlib
import os

import pyarrow as pa
import pytest

from pipelines import cleanse, extract_training as et, features, maintain
from tests.helpers import run_simulator
from core import lake as lake_io

LANDING = "raw_sensor_readings"
SPAN = ["--start", "2026-10-01T00:00:00+00:00", "--end", "2026-10-06T00:00:00+00:00"]
FEATURE_ARGS = ["--window_sizes", "1h", "--sampling_interval_seconds", "600"]


def _dataset_hashes(directory: str) -> dict[str, str]:
    return {n: hashlib.sha256(open(os.path.join(directory, n), "rb").read()).hexdigest()
            for n in sorted(os.listdir(directory))}


def _extract(lake: str, version: int, out: str | None = None) -> dict[str, str]:
    """Hashes of an extraction at ``version`` (default output: <lake>/training, where maintain finds pins)."""
    directory, _ = et.run(["--lake", lake, *SPAN, "--as_of_version", str(version), *(["--output", out] if out else [])])
    return _dataset_hashes(directory)


def _more_landing(lake: str, tag: str, n: int = 40) -> int:
    rows = lake_io.read(lake, LANDING).slice(0, n)
    return lake_io.append(lake, LANDING, rows.set_column(0, "event_id", pa.array([f"{tag}-{i}" for i in range(n)])))


def _data_files(lake: str, table: str) -> int:
    root = lake_io.table_uri(lake, table)
    return sum(f.endswith(".parquet") for d, _, files in os.walk(root) if "_delta_log" not in d for f in files)


@pytest.fixture
def small_lake(lake):
    run_simulator(lake, "--devices", "4", "--backfill_days", "3", "--backfill_end", "2026-10-05", "--interval", "600")
    for i in range(3):                      # small commits, as the streaming landing makes them
        _more_landing(lake, f"extra{i}")
    assert cleanse.run(["--lake", lake])["reconciles"]
    features.run(["--lake", lake, *FEATURE_ARGS])
    return lake


def test_pinned_reads_stay_byte_identical_and_pipelines_continue_where_they_were(small_lake, tmp_path):
    lake = small_lake
    latest = lake_io.open_table(lake, LANDING).version()
    before = {v: _extract(lake, v) for v in range(latest + 1)}
    files_before = lake_io.open_table(lake, LANDING).get_add_actions().num_rows

    summary = maintain.run(["--lake", lake, "--skip_archive", "--vacuum_retention_hours", "0"])

    assert not summary["errors"]
    landing = summary["tables"][LANDING]
    assert landing["files_before"] == files_before and landing["files_after"] < files_before
    assert summary["pins"]["protected"] == latest + 1
    assert landing["vacuumed_files"] == 0          # every removed file still serves a pinned version
    for v in range(latest + 1):
        assert _extract(lake, v, str(tmp_path / f"after{v}")) == before[v], f"version {v} changed"

    # the OPTIMIZE commits are no new data: no rows, then exactly the new rows
    s = cleanse.run(["--lake", lake])
    assert s.get("nothing_to_do") or (s["rows_in"] == 0 and s["reconciles"])
    f = features.run(["--lake", lake, *FEATURE_ARGS])
    print("FEATURES AFTER MAINTAIN", f)
    assert f.get("nothing_to_do") or f["new_clean_rows"] == 0
    _more_landing(lake, "after-maintain", 25)
    s = cleanse.run(["--lake", lake])
    assert s["rows_in"] == 25 and s["reconciles"]


def test_vacuum_deletes_removed_files_outside_the_retention_and_keeps_the_table_whole(small_lake):
    lake = small_lake
    rows = lake_io.read(lake, LANDING).num_rows
    maintain.run(["--lake", lake, "--skip_archive", "--tables", LANDING])       # compaction, protected
    on_disk = _data_files(lake, LANDING)
    live = lake_io.open_table(lake, LANDING).get_add_actions().num_rows
    assert on_disk > live

    s = maintain.run(["--lake", lake, "--skip_archive", "--tables", LANDING, "--vacuum_retention_hours", "0",
                      "--pin_retention_days", "0"])

    assert s["tables"][LANDING]["vacuumed_files"] == on_disk - live
    assert _data_files(lake, LANDING) == live
    assert lake_io.read(lake, LANDING).num_rows == rows


def test_dry_run_changes_nothing(small_lake):
    lake = small_lake
    version = lake_io.open_table(lake, LANDING).version()
    s = maintain.run(["--lake", lake, "--dry_run", "--tables", LANDING])
    assert s["tables"][LANDING]["compacted_files"] == 0
    assert lake_io.open_table(lake, LANDING).version() == version


def test_the_archive_move_is_no_new_data_and_no_error_for_the_cleanse(small_lake):
    lake = small_lake
    rows = lake_io.read(lake, LANDING).num_rows
    s = maintain.run(["--lake", lake, "--hot_days", "1", "--now", "2026-10-10T00:00:00"])
    assert s["archive"]["files"] > 0 and not s["errors"]
    assert lake_io.read(lake, LANDING).num_rows < rows            # moved out of landing

    first = cleanse.run(["--lake", lake])
    assert first.get("nothing_to_do") or first["rows_in"] == 0
    _more_landing_recent(lake, 30)
    assert cleanse.run(["--lake", lake])["rows_in"] == 30


def _more_landing_recent(lake: str, n: int) -> None:
    """n new landing rows of a recent ingest date (content from the archive: landing is empty now)."""
    import datetime as dt
    from transforms import archive as archive_tier
    rows = archive_tier.read_archive_file(lake, archive_tier.list_archive(lake)[0]).slice(0, n)
    rows = rows.set_column(rows.schema.get_field_index("ingest_date"), "ingest_date",
                           pa.array([dt.date(2026, 10, 9)] * rows.num_rows, pa.date32()))
    lake_io.append(lake, LANDING, rows.set_column(0, "event_id", pa.array([f"recent-{i}" for i in range(n)])))
