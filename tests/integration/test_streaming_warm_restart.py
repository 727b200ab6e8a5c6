"""Restart without a savepoint on the real Flink: the streaming job is cancelled after an hour of
simulated readings and a new job starts on the same lake and consumer group with no state. Its
acute rules rebuild the 24 h vibration baselines from the lake (core.acute_warm), so a
VIBRATION_SURGE right after the restart fires, although the new job has seen only minutes of
readings (a cold job needs an hour). Nothing is lost across the restart."""
from __future__ import annotations

import datetime as dt

import pytest

from tests import stream_fixture
from tests.integration import flink_jobs
from tests.integration.test_streaming_flink import _landable, _landed, _pipeline_args, _produce, streaming_topics, _wait_for_rows
from tests.integration.test_streaming_no_registry import _wait_for_alert, _wait_for_tasks_running

pytestmark = [pytest.mark.integration, pytest.mark.flink]
RESTART_AT = stream_fixture.START + dt.timedelta(minutes=62)   # > 1 h of history before, surges after


def _run_until_landed(args: list[str], topic: str, messages, expected: int, log) -> tuple:
    known = {j["jid"] for j in flink_jobs.jobs()}
    process = flink_jobs.start("pipelines.streaming", args, log)
    jid = flink_jobs.wait_for_running_job(known)
    _wait_for_tasks_running(jid)
    _produce(topic, messages)
    return process, jid, _wait_for_rows(lake_of(args), expected)


def lake_of(args: list[str]) -> str:
    return args[args.index("--lake") + 1]


def test_surge_fires_right_after_a_restart_without_savepoint(tmp_path):
    suffix, readings, alerts_topic = streaming_topics()
    lake = str(tmp_path / "lake")
    fx = stream_fixture.build(lake, minutes=75, wire_faults=False, with_duplicates=False)
    surging = next(d for d, rule in fx.expected_alerts if rule == "VIBRATION_SURGE")
    cut_ms = RESTART_AT.timestamp() * 1000
    cut = next(k for k, m in enumerate(fx.messages) if m.timestamp_ms > cut_ms)
    before, after = fx.messages[:cut], fx.messages[cut:]
    args = _pipeline_args(lake, readings, alerts_topic, f"it-{suffix}") + ["--max_cache_memory_usage_mb=64"]

    process, jid, rows = _run_until_landed(args, readings, before, sum(_landable(fx, before).values()),
                                           tmp_path / "first.log")
    try:
        assert rows == sum(_landable(fx, before).values())
    finally:
        flink_jobs.stop(process, jid)          # cancelled: no savepoint, the state is gone

    process, jid = None, None
    try:
        process, jid, rows = _run_until_landed(args, readings, after, len(_landable(fx, fx.messages)),
                                               tmp_path / "second.log")
        found = _wait_for_alert(lake, surging, "VIBRATION_SURGE")
    finally:
        if process:
            flink_jobs.stop(process, jid)
    assert (surging, "VIBRATION_SURGE") in found, (found, (tmp_path / "second.log").read_text()[-3000:])
    assert set(found) <= fx.expected_alerts
    assert set(_landed(lake)) == set(_landable(fx, fx.messages))     # nothing lost across the restart
