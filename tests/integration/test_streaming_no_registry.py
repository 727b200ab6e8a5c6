"""The streaming job on the real Flink with no device registry in the lake: every reading still lands
(unknown devices flow through the acute stage instead of failing it), and once the registry is
written the running job picks it up within its TTL: an acute rule that needs the registry's rated
current (CURRENT_SPIKE) then fires for a registered device."""
from __future__ import annotations

import time

import pytest

from tests import stream_fixture
from tests.integration import flink_jobs
from tests.integration.test_streaming_flink import _landable, _landed, _pipeline_args, _produce, streaming_topics, _wait_for_rows
from core import lake as lake_io

pytestmark = [pytest.mark.integration, pytest.mark.flink]
TTL_S = 2.0


def _wait_for_tasks_running(jid: str, timeout_s: float = 300) -> None:
    """Other jobs may hold the cluster's slots: wait until every task of ours is deployed."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        tasks = flink_jobs.rest(f"/jobs/{jid}")["vertices"]
        if tasks and all(v["status"] == "RUNNING" for v in tasks):
            return
        time.sleep(1)
    raise TimeoutError(f"job {jid}: tasks not all running (cluster slots taken by other jobs?)")


def _failovers(exceptions: dict) -> list[str]:
    """Exceptions that restarted the job, other than waiting for slots that other jobs hold."""
    entries = exceptions.get("exceptionHistory", {}).get("entries", [])
    return [e["exceptionName"] for e in entries if "NoResourceAvailable" not in e.get("stacktrace", "")]


def _wait_for_alert(lake: str, device: str, rule: str, timeout_s: float = 180) -> list[tuple[str, str]]:
    deadline = time.monotonic() + timeout_s
    found: list[tuple[str, str]] = []
    while time.monotonic() < deadline:
        alerts = lake_io.read(lake, "alerts")
        found = list(zip(alerts["device_id"].to_pylist(), alerts["rule"].to_pylist()))
        if (device, rule) in found:
            break
        time.sleep(2)
    return found


def test_streaming_without_a_registry_lands_everything_then_picks_the_registry_up(tmp_path):
    suffix, readings, alerts_topic = streaming_topics()
    fixture_lake = str(tmp_path / "fixture")            # the fixture writes its registry here, not in the job's lake
    lake = str(tmp_path / "lake")
    fx = stream_fixture.build(fixture_lake, minutes=75, wire_faults=False)
    registry = lake_io.read(fixture_lake, "devices")
    spiking = next(d for d, rule in fx.expected_alerts if rule == "CURRENT_SPIKE")
    cut_ms = (stream_fixture.START.timestamp() + 20 * 60) * 1000
    cut = next(k for k, m in enumerate(fx.messages) if m.timestamp_ms > cut_ms)
    first, second = fx.messages[:cut], fx.messages[cut:]
    args = _pipeline_args(lake, readings, alerts_topic, f"it-{suffix}") + [
        f"--registry_ttl_s={TTL_S}", "--max_cache_memory_usage_mb=64"]
    assert lake_io.open_table(lake, "devices") is None

    known = {j["jid"] for j in flink_jobs.jobs()}
    process = flink_jobs.start("pipelines.streaming", args, tmp_path / "run.log")
    jid = None
    try:
        jid = flink_jobs.wait_for_running_job(known)
        _wait_for_tasks_running(jid)
        _produce(readings, first)
        expected_first = _landable(fx, first)
        rows = _wait_for_rows(lake, sum(expected_first.values()))
        assert rows == sum(expected_first.values()), (tmp_path / "run.log").read_text()[-3000:]
        assert _landed(lake) == expected_first
        assert flink_jobs.rest(f"/jobs/{jid}")["state"] == "RUNNING"
        assert lake_io.read(lake, "alerts").num_rows == 0 or \
            "CURRENT_SPIKE" not in lake_io.read(lake, "alerts")["rule"].to_pylist()

        lake_io.overwrite(lake, "devices", registry)
        written = time.monotonic()
        while time.monotonic() < written + 2 * TTL_S:   # the workers' cached registry expires
            time.sleep(0.2)
        _produce(readings, second)
        expected_all = _landable(fx, fx.messages)
        rows = _wait_for_rows(lake, sum(expected_all.values()))
        assert rows == sum(expected_all.values()), (tmp_path / "run.log").read_text()[-3000:]
        found = _wait_for_alert(lake, spiking, "CURRENT_SPIKE")
        exceptions = flink_jobs.rest(f"/jobs/{jid}/exceptions")
    finally:
        flink_jobs.stop(process, jid)
    assert _landed(lake) == expected_all
    assert (spiking, "CURRENT_SPIKE") in found, (found, (tmp_path / "run.log").read_text()[-3000:])
    assert set(found) <= fx.expected_alerts
    # the job never failed over (a crash in Enrich would restart it)
    assert not _failovers(exceptions), exceptions
