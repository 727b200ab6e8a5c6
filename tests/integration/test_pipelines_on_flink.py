"""The other bounded pipelines on the local Flink cluster give the same output as on the DirectRunner
(cleanse and features: tests/integration/test_batch_on_flink.py).

Beam pipelines among the entry points: streaming (unbounded: test_streaming_flink.py), cleanse,
features, score, archive, extract_training, and train when it extracts its dataset first (--start:
the extraction is a Beam pipeline, the fitting is plain Python). simulate and evaluate build no Beam
pipeline.

The inputs are built once per module: a small simulated lake (landing + archive, data faults) and a
lake of synthetic feature windows (two versions, with failures) with models trained on earlier
windows. Each test runs a pipeline on the DirectRunner in-process and the same command on the
cluster the environment names (FLINK_REST_PORT, JOB_SERVER_PORT: PortableRunner to its Beam job
server, LOOPBACK workers in the subprocess), on copies of the same input, and compares the Delta
tables / Parquet files written, without the wall-clock columns (scored_at, detected_at).
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from pipelines import archive, extract_training, score, train
from transforms import archive as archive_tier
from schemas.contracts import TABLES
from tests.conftest import FLINK_REST, PROJECT_ROOT, require_service
from tests.helpers import run_simulator
from tests.integration.flink_jobs import JOB_ENDPOINT, jobs
from core import lake as lake_io
from transforms.delta import snapshot_files

pytestmark = [pytest.mark.integration, pytest.mark.flink]

# parallelism 1: see test_batch_on_flink.py (network buffers of the shared task manager)
FLINK_ARGS = ["--runner=PortableRunner", f"--job_endpoint={JOB_ENDPOINT}", "--environment_type=LOOPBACK",
              "--parallelism=1"]
UTC = dt.timezone.utc
START = dt.datetime(2026, 10, 1, tzinfo=UTC)
WALL_CLOCK_COLUMNS = {"scored_at", "detected_at", "quarantined_at", "computed_at", "deadlettered_at"}
SMALL_TRAINING = ["--ae_epochs", "3", "--if_trees", "20"]


def on_flink(module: str, args: list[str]) -> str:
    """Runs `python -m pipelines.<module> args` on the cluster; returns its stdout."""
    known = {j["jid"] for j in jobs()}
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", f"pipelines.{module}", *args, *FLINK_ARGS], cwd=PROJECT_ROOT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert [j for j in jobs("FINISHED") if j["jid"] not in known], "no Flink job finished"
    print(f"{module} on Flink: {time.monotonic() - started:.1f} s")
    return proc.stdout


def summary_line(stdout: str, tag: str) -> dict:
    line = next(line for line in stdout.splitlines() if line.startswith(tag + " "))
    return json.loads(line[len(tag) + 1:])


def canonical(lake: str, table: str, keys: list[str]) -> pl.DataFrame:
    frame = pl.from_arrow(lake_io.read(lake, table))
    return frame.drop([c for c in frame.columns if c in WALL_CLOCK_COLUMNS]).sort(keys)


def file_digests(directory: str | Path) -> dict[str, str]:
    root = Path(directory)
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def copy_lake(source: str, target: Path) -> str:
    """A copy of a lake (and its sibling ground truth) at target/lake."""
    shutil.copytree(Path(source).parent, target)
    return str(target / "lake")


def _between(t: pa.Table, lo: dt.datetime, hi: dt.datetime) -> pa.Table:
    ts = t["window_start"]
    return t.filter(pc.and_(pc.greater_equal(ts, pa.scalar(lo, ts.type)), pc.less(ts, pa.scalar(hi, ts.type))))


@pytest.fixture(scope="module")
def cluster():
    require_service("Flink", FLINK_REST)
    require_service("Beam job server", JOB_ENDPOINT)


@pytest.fixture(scope="module")
def raw_lake(cluster, tmp_path_factory) -> str:
    """Simulated readings: 2026-10-02 in the archive, 10-03 and 10-04 in landing (versions 0, 1)."""
    lake = str(tmp_path_factory.mktemp("raw") / "lake")
    run_simulator(lake, "--devices", "6", "--backfill_days", "3", "--backfill_end", "2026-10-05",
                  "--archive_days", "1", "--interval", "300", "--fault_fraction", "0.3")
    return lake


@pytest.fixture(scope="module")
def features_lake(cluster, tmp_path_factory) -> tuple[str, str]:
    """(lake, models root): 1h feature windows of 8 devices, 2026-10-03 as features v0 and 10-04 as v1,
    failures after 10-03; models trained on 10-01 and 10-02."""
    from simulation import synthetic
    from pipelines.train import TrainParams
    features, _ = synthetic.fleet_features(8, START, 4, seed=5, healthy_days=2, gradual_fraction=0.15,
                                           acute_fraction=0.15)
    models = str(tmp_path_factory.mktemp("models"))
    train.train(_between(features, START, START + dt.timedelta(days=2)), {"dataset_id": "fixture"}, models,
                TrainParams(ae_epochs=3, if_trees=20))
    lake = str(tmp_path_factory.mktemp("features") / "lake")
    for day in (2, 3):
        lake_io.append(lake, "features",
                       _between(features, START + dt.timedelta(days=day), START + dt.timedelta(days=day + 1)))
    return lake, models


def test_score_on_flink_equals_the_direct_runner(features_lake, tmp_path):
    lake, models = features_lake
    direct, flink = copy_lake(lake, tmp_path / "direct"), copy_lake(lake, tmp_path / "flink")
    args = ["--models", models, "--block_rows", "64"]
    # features v0 scored on the DirectRunner in both lakes; then v1 on each runner: that run continues
    # the alert episodes of the first (prior state, known alerts)
    for lake_copy in (direct, flink):
        assert score.run(["--lake", lake_copy, *args, "--upto_features_version", "0"])["alerts"] > 0
    expected = score.run(["--lake", direct, *args])
    got = summary_line(on_flink("score", ["--lake", flink, *args]), "SCORE_SUMMARY")
    assert expected["features_versions"] == [0, 1] and expected["score_rows"] > 0 and expected["alerts"] > 0
    for key in ("features_versions", "models", "score_rows", "alerts", "windows_in", "commits",
                "anomalous_windows_ensemble"):
        assert got[key] == expected[key], key

    scores = canonical(direct, "scores", ["device_id", "window_start", "model"])
    assert scores.height == 4 * lake_io.read(lake, "features").num_rows
    assert scores.equals(canonical(flink, "scores", ["device_id", "window_start", "model"]))
    alerts = canonical(direct, "alerts", ["alert_id"])
    assert alerts.height > 0
    assert alerts.equals(canonical(flink, "alerts", ["alert_id"]))
    for table in ("scores", "alerts"):
        assert lake_io.open_table(direct, table).version() == lake_io.open_table(flink, table).version() == 1


def test_archive_on_flink_equals_the_direct_runner(raw_lake, tmp_path):
    direct, flink = copy_lake(raw_lake, tmp_path / "direct"), copy_lake(raw_lake, tmp_path / "flink")
    # hot window of one day at 10-05 06:00: landing's 10-03 partition moves
    args = ["--hot_days", "1", "--now", "2026-10-05T06:00:00"]
    expected = archive.run(["--lake", direct, *args])
    got = summary_line(on_flink("archive", ["--lake", flink, *args]), "ARCHIVE_SUMMARY")
    assert expected["rows_archived"] > 0 and expected["removed_in_version"] == 2
    # (the commit id digests the files' absolute URIs: it differs between the two lake copies)
    for key in ("landing_version", "cutoff", "files", "rows_archived", "archive_files_written",
                "landing_files_archived", "landing_files_removed", "removed_in_version"):
        assert got[key] == expected[key], key

    # the archive: same files (names derive from the source landing files), same bytes
    archived = file_digests(archive_tier.archive_root(flink))
    assert file_digests(archive_tier.archive_root(direct)) == archived
    assert any(p.startswith("date=2026-10-03/") and "/landing-" in p for p in archived)

    # landing: the same commit removed the same files
    def landing_files(lake: str) -> list[str]:
        root = lake_io.table_uri(lake, "raw_sensor_readings")
        return [f.uri[len(root):] for f in snapshot_files(lake, "raw_sensor_readings")]

    assert landing_files(direct) == landing_files(flink)
    assert all("ingest_date=2026-10-03" not in p for p in landing_files(flink))
    for copy in (direct, flink):
        assert lake_io.open_table(copy, "raw_sensor_readings").version() == 2
    every = [f.name for f in TABLES["raw_sensor_readings"].schema]
    assert canonical(direct, "raw_sensor_readings", every).equals(canonical(flink, "raw_sensor_readings", every))


def test_extract_training_raw_on_flink_equals_the_direct_runner(raw_lake, tmp_path):
    # read-only on the lake: both runs read the same one, into their own output directories;
    # the span covers the archive day and both landing days (both tiers are read)
    args = ["--lake", raw_lake, "--kind", "raw", "--start", "2026-10-01", "--end", "2026-10-06",
            "--shards_per_day", "2"]
    d_direct, m_direct = extract_training.run(args + ["--output", str(tmp_path / "direct")])
    got = summary_line(on_flink("extract_training", args + ["--output", str(tmp_path / "flink")]),
                       "EXTRACT_SUMMARY")
    d_flink = got["dataset"]
    assert Path(d_flink).name == Path(d_direct).name
    assert m_direct["rows"] > 0 and got["rows"] == m_direct["rows"] and got["archive_files"] > 0
    assert {f["file"][len("part-"):len("part-2026-10-03")] for f in m_direct["files"]} >= {
        "2026-10-02", "2026-10-03", "2026-10-04"}
    # byte-identical shards and manifest
    assert file_digests(d_direct) == file_digests(d_flink)


def test_train_extracts_its_dataset_on_flink_like_the_direct_runner(features_lake, tmp_path):
    lake, _ = features_lake
    direct, flink = copy_lake(lake, tmp_path / "direct"), copy_lake(lake, tmp_path / "flink")
    args = ["--start", "2026-10-03", "--end", "2026-10-05", "--as_of_version", "1", *SMALL_TRAINING]
    expected = train.run(["--lake", direct, "--models", str(tmp_path / "direct" / "models"), *args])
    out = on_flink("train", ["--lake", flink, "--models", str(tmp_path / "flink" / "models"), *args])
    got = summary_line(out, "TRAIN_SUMMARY")

    # the extracted dataset (the Beam part): same files, byte for byte
    datasets = [sorted((Path(copy) / "training").iterdir()) for copy in (direct, flink)]
    assert [d.name for d in datasets[0]] == [d.name for d in datasets[1]] and len(datasets[0]) == 1
    assert file_digests(datasets[0][0]) == file_digests(datasets[1][0])
    manifest = json.loads((datasets[1][0] / "manifest.json").read_text())
    assert manifest["rows"] == lake_io.read(lake, "features").num_rows and manifest["inputs"]["version"] == 1
    # the models fitted on it in the launcher process: same versions, thresholds and training windows
    for name, version in expected.items():
        assert got[name]["version"] == version.version == "v0001"
        assert got[name]["threshold"] == pytest.approx(version.metadata["threshold"], rel=1e-9), name
        meta = json.loads((Path(got[name]["path"]) / "metadata.json").read_text())
        assert meta["training_windows"] == version.metadata["training_windows"] == manifest["rows"]
        assert meta["training_data"]["dataset_id"] == version.metadata["training_data"]["dataset_id"]
