"""The Python SDK worker pool (`scripts/services.sh start workers`, pipelines/worker_pool.py) on the real
local Flink, with --environment_type=EXTERNAL: the Python work runs in the pool's worker processes (one
per --sdk_worker_parallelism), the streaming job's Java KafkaIO (EMBEDDED) works beside them, the pool
listens on 127.0.0.1 only, and `stop` leaves no worker process behind. Each test starts its own pool
(own run directory and port), so the shared one and other helpers' jobs are never disturbed."""
from __future__ import annotations

import os
import re
import socket
import subprocess
import time
import uuid
from pathlib import Path

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from tests import stream_fixture
from tests.conftest import FLINK_REST, KAFKA_BOOTSTRAP, PROJECT_ROOT, require_service
from tests.integration import flink_jobs
from tests.integration.test_streaming_flink import _landable, _landed, _produce, _topics, _wait_for_rows
from core import lake as lake_io

pytestmark = [pytest.mark.integration, pytest.mark.flink]

SDK_WORKERS = 2


class Pool:
    def __init__(self, run_dir: Path):
        self.run_dir = run_dir
        with socket.socket() as s:          # a free port for this test's own pool
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.log = run_dir / "logs/workers/pool.log"

    def services(self, action: str) -> subprocess.CompletedProcess:
        env = dict(os.environ, FLEET_RUN_DIR=str(self.run_dir), SDK_WORKER_POOL_PORT=str(self.port))
        return subprocess.run(["bash", str(PROJECT_ROOT / "scripts/services.sh"), action, "workers"], env=env,
                              capture_output=True, text=True, timeout=120)

    @property
    def pid(self) -> int:
        return int((self.run_dir / "workers/pool.pid").read_text())

    def workers(self) -> list[int]:
        """The pool's live SDK worker processes."""
        out = subprocess.run(["pgrep", "-P", str(self.pid), "-f", "sdk_worker_main"], capture_output=True,
                             text=True).stdout
        return [int(p) for p in out.split()]

    def started_workers(self) -> set[int]:
        return {int(p) for p in re.findall(r"started SDK worker \S+ \(pid (\d+)\)", self.log.read_text())}

    def args(self) -> list[str]:
        return ["--runner=PortableRunner", f"--job_endpoint={flink_jobs.JOB_ENDPOINT}",
                "--environment_type=EXTERNAL", f"--environment_config=127.0.0.1:{self.port}",
                f"--sdk_worker_parallelism={SDK_WORKERS}", "--default_environment_type=EMBEDDED"]


def _listen_addresses(port: int) -> set[str]:
    """Local addresses of the sockets listening on `port` (from /proc/net/tcp, tcp6)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:
                found.add(address)
    return found


LOOPBACK = {"0100007F", "0000000000000000FFFF00000100007F", "00000000000000000000000001000000"}


def _session(sid: int) -> list[str]:
    """The live processes of a session (the pool's, by its setsid); zombies are dead already."""
    out = subprocess.run(["ps", "-o", "pid=,stat=,args=", "--sid", str(sid)], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if line.split()[1][0] != "Z"]


def _session_alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _tasks_running(jid: str) -> bool:
    job = flink_jobs.rest(f"/jobs/{jid}")
    assert job["state"] not in ("FAILED", "CANCELED", "FINISHED"), job["state"]
    return job["state"] == "RUNNING" and all(v["status"] == "RUNNING" for v in job["vertices"])


def _wait_for_free_slots(slots: int = 2) -> None:
    # other helpers' jobs share the cluster's slots; a job that waits for slots over 5 minutes fails
    _wait(lambda: flink_jobs.rest("/overview")["slots-available"] >= slots, 600, f"{slots} free Flink slots")


def _wait(condition, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


@pytest.fixture
def pool(tmp_path):
    require_service("Flink job server", flink_jobs.JOB_ENDPOINT)
    pool = Pool(tmp_path / "run")
    started = pool.services("start")
    try:
        assert started.returncode == 0, started.stderr
        again = pool.services("start")          # idempotent: the healthy pool is left alone
        assert again.returncode == 0 and "already running" in again.stderr, again.stderr
        assert _listen_addresses(pool.port) and _listen_addresses(pool.port) <= LOOPBACK, \
            _listen_addresses(pool.port)
        assert "running" in pool.services("status").stdout
        yield pool
    finally:
        pool.services("stop")


def test_batch_job_runs_in_the_pool_worker_processes(pool, tmp_path):
    out = tmp_path / "out"
    _wait_for_free_slots()
    # each element records the process that handled it; the lambda travels by value (cloudpickle)
    with beam.Pipeline(options=PipelineOptions(pool.args() + ["--parallelism=2"])) as p:
        (p | beam.Create(list(range(40))) | beam.Reshuffle()
           | beam.Map(lambda x: f"{x} {x * x} {os.getpid()} {os.getppid()}")
           | beam.io.WriteToText(str(out), shard_name_template=""))
    rows = [line.split() for line in out.read_text().splitlines()]
    assert sorted((int(x), int(sq)) for x, sq, _, _ in rows) == [(x, x * x) for x in range(40)]
    pids = {int(pid) for _, _, pid, _ in rows}
    assert {int(ppid) for _, _, _, ppid in rows} == {pool.pid}
    assert os.getpid() not in pids and pids <= pool.started_workers()
    # the runner stops the job's workers when it is done: a long-lived pool does not accumulate them
    _wait(lambda: not pool.workers(), 60, "the finished job's SDK workers to exit")


def test_streaming_job_on_the_pool_reads_kafka_lands_exactly_and_stop_leaves_no_worker(pool, tmp_path):
    require_service("Kafka", KAFKA_BOOTSTRAP)
    require_service("Flink", FLINK_REST)
    suffix = uuid.uuid4().hex[:8]
    readings, alerts_topic = _topics(suffix)
    lake = str(tmp_path / "lake")
    fx = stream_fixture.build(lake, minutes=80)
    args = ["--lake", lake, "--topic", readings, "--alerts_topic", alerts_topic, "--consumer_group", f"wp-{suffix}",
            "--commit_interval_s", "5", "--shards", "4", *pool.args(), "--max_bundle_time_mills=100",
            "--checkpointing_interval=10000", "--parallelism=2"]
    _wait_for_free_slots()
    name = f"worker-pool-{suffix}"            # other helpers' jobs share the cluster: find ours by name
    process = flink_jobs.start("pipelines.streaming", [*args, f"--job_name={name}"], tmp_path / "streaming.log")
    jid = None
    try:
        jid = _wait(lambda: next((j["jid"] for j in flink_jobs.jobs("RUNNING") if j["name"] == name), None), 180,
                    f"Flink job {name} running")
        # the cluster is shared: the job's tasks may wait for other jobs' slots first
        _wait(lambda: _tasks_running(jid), 600, "free Flink slots and the job's tasks running")
        workers = _wait(lambda: len(pool.workers()) == SDK_WORKERS and pool.workers(), 180,
                        f"{SDK_WORKERS} SDK workers in the pool")
        cpu_before = {w: _cpu_seconds(w) for w in workers}
        _produce(readings, fx.messages)
        expected = _landable(fx, fx.messages)
        rows = _wait_for_rows(lake, sum(expected.values()))
        assert rows == sum(expected.values()), (tmp_path / "streaming.log").read_text()[-3000:]
        _wait(lambda: lake_io.open_table(lake, "alerts") and lake_io.read(lake, "alerts").num_rows
              >= len(fx.expected_alerts), 60, "the acute alerts")
        # the same two processes did the work: no worker was replaced, none is idle
        assert sorted(pool.workers()) == sorted(workers)
        used = {w: _cpu_seconds(w) - cpu_before[w] for w in workers}
        rss = {w: re.search(r"VmRSS:\s+(\d+)", Path(f"/proc/{w}/status").read_text()).group(1) for w in workers}
        print(f"\nSDK worker CPU seconds while processing {rows} readings: {used}; RSS kB: {rss}")
        assert all(s > 0 for s in used.values()), used

        pool_pid = pool.pid
        t0 = time.monotonic()
        stopped = pool.services("stop")             # while the job still uses its workers
        assert stopped.returncode == 0, stopped.stderr
        print(f"pool stop with {len(workers)} busy workers: {time.monotonic() - t0:.1f} s")
        assert _session(pool_pid) == [] and not any(_session_alive(w) for w in workers)
        assert not _listen_addresses(pool.port) and "stopped" in pool.services("status").stdout
    finally:
        flink_jobs.stop(process, jid)
    assert _landed(lake) == expected
    alerts = lake_io.read(lake, "alerts")
    assert sorted(zip(alerts["device_id"].to_pylist(), alerts["rule"].to_pylist())) == sorted(fx.expected_alerts)
