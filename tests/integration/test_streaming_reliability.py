"""Reliability of the streaming path on the real Flink and broker: a kill -9 of the job's process
and a broker restart, mid-run, lose nothing and duplicate nothing (landing and alerts)."""
from __future__ import annotations

import os
import signal
import subprocess
import time
from collections import Counter

import pytest

from tests import stream_fixture
from tests.conftest import PROJECT_ROOT
from tests.integration import flink_jobs
from tests.integration.test_streaming_flink import (_landable, _landed, _pipeline_args, _produce, streaming_topics,
                                                    _wait_for_rows)
from core import lake as lake_io

pytestmark = [pytest.mark.integration, pytest.mark.flink]


@pytest.fixture
def setup(tmp_path):
    suffix, readings, alerts = streaming_topics()
    lake = str(tmp_path / "lake")
    fx = stream_fixture.build(lake, minutes=85)
    return tmp_path, lake, fx, _pipeline_args(lake, readings, alerts, f"rel-{suffix}"), readings


def _assert_exactly_once(lake: str, fx) -> None:
    assert _landed(lake) == _landable(fx, fx.messages)
    alerts = lake_io.read(lake, "alerts")
    assert len(set(alerts["alert_id"].to_pylist())) == alerts.num_rows
    assert sorted(zip(alerts["device_id"].to_pylist(), alerts["rule"].to_pylist())) == sorted(fx.expected_alerts)


def test_kill_9_of_the_streaming_job_mid_run(setup):
    tmp_path, lake, fx, args, topic = setup
    # Kill once the first minutes have landed. The rule state dies with the job (an unclean stop has
    # no savepoint), so the restarted job needs the same hour of vibration history as a fresh start:
    # killing early keeps every injected failure alertable after the restart.
    early_ms = (stream_fixture.START.timestamp() + 3 * 60) * 1000
    half = next(k for k, m in enumerate(fx.messages) if m.timestamp_ms > early_ms)
    known = {j["jid"] for j in flink_jobs.jobs()}
    process = flink_jobs.start("pipelines.streaming", args, tmp_path / "run1.log")
    jid = flink_jobs.wait_for_running_job(known)
    _produce(topic, fx.messages[:half])
    _wait_for_rows(lake, 1, timeout_s=120)               # mid-run: landing has started
    os.kill(process.pid, signal.SIGKILL)                 # the client and its SDK worker die at once
    process.wait()
    flink_jobs.cancel(jid)                               # the orphaned Flink job cannot make progress
    landed_at_kill = sum(_landed(lake).values())
    _produce(topic, fx.messages[half:])

    known = {j["jid"] for j in flink_jobs.jobs()}
    process = flink_jobs.start("pipelines.streaming", args, tmp_path / "run2.log")
    jid = None
    try:
        jid = flink_jobs.wait_for_running_job(known)
        _wait_for_rows(lake, sum(_landable(fx, fx.messages).values()))
        time.sleep(8)
    finally:
        flink_jobs.stop(process, jid)
    print(f"\nkill -9 after {landed_at_kill} rows had landed; after restart: {sum(_landed(lake).values())} rows, "
          f"{lake_io.read(lake, 'alerts').num_rows} alerts")
    _assert_exactly_once(lake, fx)


def _services(action: str) -> None:
    subprocess.run(["bash", str(PROJECT_ROOT / "scripts/services.sh"), action, "kafka"], check=True, timeout=180)


def test_broker_stopped_and_restarted_mid_run(setup):
    tmp_path, lake, fx, args, topic = setup
    third = len(fx.messages) // 3
    known = {j["jid"] for j in flink_jobs.jobs()}
    process = flink_jobs.start("pipelines.streaming", args, tmp_path / "run.log")
    jid = None
    try:
        jid = flink_jobs.wait_for_running_job(known)
        _produce(topic, fx.messages[:third])
        _wait_for_rows(lake, 1, timeout_s=120)
        _services("stop")
        time.sleep(15)                                  # the job keeps running without a broker
        _services("start")
        _produce(topic, fx.messages[third:])
        _wait_for_rows(lake, sum(_landable(fx, fx.messages).values()), timeout_s=300)
        time.sleep(8)
        assert flink_jobs.rest(f"/jobs/{jid}")["state"] == "RUNNING"
    finally:
        flink_jobs.stop(process, jid)
    print(f"\nbroker restart mid-run: {sum(_landed(lake).values())} rows landed, "
          f"{lake_io.read(lake, 'deadletter').num_rows} dead letters, {lake_io.read(lake, 'alerts').num_rows} alerts")
    _assert_exactly_once(lake, fx)
