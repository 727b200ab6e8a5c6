"""The local Flink cluster: starts from the assembled home, runs a Beam pipeline on FlinkRunner with
the job server jar from our Maven build, stops, and leaves no process behind. It uses its own
ports and run directory so it never disturbs the cluster other tests share."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request

import pytest

from tests.conftest import PROJECT_ROOT

pytestmark = [pytest.mark.integration, pytest.mark.flink]

JOB_SERVER_JAR = PROJECT_ROOT / ".cache/jvm/beam/beam-runners-flink-1.20-job-server-2.72.0.jar"
REST_PORT, RPC_PORT = 18181, 16223


def _services(action: str, run_dir) -> subprocess.CompletedProcess:
    env = dict(os.environ, FLEET_RUN_DIR=str(run_dir), FLINK_REST_PORT=str(REST_PORT),
               FLINK_RPC_PORT=str(RPC_PORT), FLINK_TM_MEMORY="3g", FLINK_TM_METASPACE="512m", FLINK_TM_TASK_HEAP="768m", FLINK_TM_TASK_OFF_HEAP="256m", FLINK_SLOTS="2",
               JOB_SERVER_PORT="18199", ARTIFACT_PORT="18198", EXPANSION_PORT="18197", KAFKA_EXPANSION_PORT="18196")
    return subprocess.run(["bash", str(PROJECT_ROOT / "scripts/services.sh"), action, "flink"], env=env,
                          capture_output=True, text=True, timeout=180)


def _cluster_processes(run_dir) -> list[str]:
    out = subprocess.run(["pgrep", "-af", str(run_dir)], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if "java" in line]


def test_cluster_runs_a_beam_pipeline_and_stops_cleanly(tmp_path):
    if not JOB_SERVER_JAR.exists():
        pytest.fail(f"{JOB_SERVER_JAR} missing: run scripts/setup.sh")
    run_dir = tmp_path / "run"
    started = time.monotonic()
    result = _services("start", run_dir)
    try:
        assert result.returncode == 0, result.stderr
        startup_s = time.monotonic() - started
        overview = json.load(urllib.request.urlopen(f"http://127.0.0.1:{REST_PORT}/overview", timeout=5))
        assert overview["taskmanagers"] == 1 and overview["flink-version"] == "1.20.3"
        print(f"flink start-up {startup_s:.1f} s")

        output = tmp_path / "counts.txt"
        run = subprocess.run(
            [sys.executable, "-m", "tests.integration.flink_wordcount", "--output", str(output),
             "--runner=FlinkRunner", f"--flink_master=127.0.0.1:{REST_PORT}",
             f"--flink_job_server_jar={JOB_SERVER_JAR}", "--environment_type=LOOPBACK", "--parallelism=2"],
            cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stderr[-3000:]
        assert sorted(output.read_text().split()) == ["compressor=2", "current=1", "pressure=1", "suction=1",
                                                      "vibration=1"]
        jobs = json.load(urllib.request.urlopen(f"http://127.0.0.1:{REST_PORT}/jobs/overview", timeout=5))["jobs"]
        assert [j["state"] for j in jobs] == ["FINISHED"]
    finally:
        stopped = _services("stop", run_dir)
    assert stopped.returncode == 0, stopped.stderr
    assert _cluster_processes(run_dir) == []
    job_servers = subprocess.run(["pgrep", "-af", JOB_SERVER_JAR.name], capture_output=True, text=True).stdout
    assert [line for line in job_servers.splitlines() if f"127.0.0.1:{REST_PORT}" in line] == []
