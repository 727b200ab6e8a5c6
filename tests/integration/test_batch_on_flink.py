"""The bounded pipelines on the local Flink cluster give the same tables as on the DirectRunner.

Two copies of one simulated lake (two landing versions, every data fault): on one, cleanse and
features run in-process on the DirectRunner; on the other, the same commands run on the shared
Flink cluster (scripts/services.sh start) through Beam's Flink job server, in a subprocess each.
Both are incremental (two cleanse and two features runs), so the clean-context and commit paths
run on Flink too. Run-time columns (quarantined_at, computed_at) are left out of the comparison.
"""
from __future__ import annotations

import shutil
import subprocess
import sys

import polars as pl
import pytest

from pipelines import cleanse, features
from tests.conftest import FLINK_REST, PROJECT_ROOT, require_service
from tests.helpers import run_simulator
from core import lake as lake_io

pytestmark = [pytest.mark.integration, pytest.mark.flink]

JOB_SERVER_JAR = PROJECT_ROOT / ".cache/jvm/beam/beam-runners-flink-1.20-job-server-2.72.0.jar"
# parallelism 1: each blocking exchange of a batch job takes 512 network buffers (Flink's sort-shuffle
# minimum) and the shared task manager, which also runs the streaming job, has ~8000
FLINK_ARGS = ["--runner=FlinkRunner", f"--flink_master={FLINK_REST}", f"--flink_job_server_jar={JOB_SERVER_JAR}",
              "--environment_type=LOOPBACK", "--parallelism=1"]
FAULTS = "stuck_value,dropout,duplicates,replay,out_of_range,unknown_device,inactive_device"
STEPS = [("cleanse", ["--upto_version", "0"]), ("features", []), ("cleanse", []), ("features", [])]
RUN_TIME_COLUMNS = {"quarantined_at", "computed_at"}


def _on_flink(module: str, lake: str, args: list[str]) -> str:
    proc = subprocess.run([sys.executable, "-m", f"pipelines.{module}", "--lake", lake, *args, *FLINK_ARGS],
                          cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc.stdout


def _canonical(lake: str, table: str) -> pl.DataFrame:
    frame = pl.from_arrow(lake_io.read(lake, table))
    frame = frame.drop([c for c in frame.columns if c in RUN_TIME_COLUMNS])
    keys = [c for c in ("event_id", "device_id", "window_size", "window_start", "timestamp_ingested", "kafka_offset")
            if c in frame.columns]
    return frame.sort(keys)


def test_cleanse_and_features_on_flink_equal_the_direct_runner(tmp_path):
    require_service("Flink", FLINK_REST)
    if not JOB_SERVER_JAR.exists():
        pytest.fail(f"{JOB_SERVER_JAR} missing: run scripts/setup.sh")
    direct = str(tmp_path / "direct" / "lake")
    run_simulator(direct, "--devices", "12", "--backfill_days", "2", "--backfill_end", "2026-11-20",
                  "--interval", "300", "--data_faults", FAULTS, "--inactive_fraction", "0.1",
                  "--mixed_unit_fraction", "0.3")
    flink = str(tmp_path / "flink" / "lake")
    shutil.copytree(direct, flink)

    for module, args in STEPS:
        summary = {"cleanse": cleanse, "features": features}[module].run(["--lake", direct, *args])
        assert summary.get("reconciles", True) and not summary.get("nothing_to_do"), summary
        out = _on_flink(module, flink, args)
        assert ("reconciles             yes" in out) if module == "cleanse" else ("features run" in out), out

    for table in ("clean_sensor_readings", "quarantine", "features"):
        a, b = _canonical(direct, table), _canonical(flink, table)
        assert a.height > 0, table
        assert a.equals(b), f"{table}: DirectRunner and FlinkRunner differ"
        assert lake_io.open_table(direct, table).version() == lake_io.open_table(flink, table).version()
