"""Commit bookkeeping of bounded cost: "was commit X made", "what did app Y consume last" and
"which files did versions (a, b] add" read the newest commit files only, never
`DeltaTable.history()` and never the old versions; commit conflicts are retried where that is safe."""
from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import shutil

import pyarrow as pa
import pytest
from deltalake import DeltaTable
from deltalake.exceptions import CommitFailedError

from schemas import contracts
from transforms import cleansing as cl
from transforms import delta
from core import lake as lake_io

UTC = dt.timezone.utc
T0 = dt.datetime(2026, 11, 20, 12, tzinfo=UTC)
Q = "quarantine"


@pytest.fixture
def reads(monkeypatch):
    """Versions whose commit file (or commitInfo) was read, per table; history() is forbidden."""
    seen: dict[str, list[int]] = {}
    info, commit = lake_io.commit_info, lake_io.read_commit

    def spy(fn):
        def wrapped(lake, table, version):
            seen.setdefault(table, []).append(version)
            return fn(lake, table, version)
        return wrapped

    monkeypatch.setattr(lake_io, "commit_info", spy(info))
    monkeypatch.setattr(lake_io, "read_commit", spy(commit))
    monkeypatch.setattr(DeltaTable, "history", lambda *a, **k: pytest.fail("history() read every commit"))
    return seen


def q_rows(n: int = 1, tag: str = "e") -> pa.Table:
    return pa.Table.from_pylist([dict(event_id=f"{tag}{i}", device_id="d1", sensor_type="temperature", value=1.0,
                                      unit="C", ts=T0.isoformat(), seq=None, timestamp_ingested=T0,
                                      kafka_topic=None, kafka_partition=None, kafka_offset=None,
                                      reason="unknown_device", source_version=0, quarantined_at=T0)
                                 for i in range(n)], schema=contracts.QUARANTINE)


def landing_rows(tag: str) -> pa.Table:
    return pa.Table.from_pylist([dict(event_id=tag, device_id="d1", sensor_type="temperature", value=4.0, unit="C",
                                      ts=T0.isoformat(), seq=None, timestamp_ingested=T0, kafka_topic=None,
                                      kafka_partition=None, kafka_offset=None, ingest_date=T0.date())],
                                schema=contracts.RAW_SENSOR_READINGS)


def empty_commits(lake: str, table: str, n: int, app: str = "other") -> None:
    """n commits of another writer (no files: only the history grows)."""
    for i in range(n):
        lake_io.commit_files(lake, table, [], app=app, commit_id=f"{app}/{lake_io.latest_version(lake, table)}/{i}")


def test_a_commit_and_its_idempotency_check_read_only_the_newest_versions(lake, reads):
    lake_io.commit_files(lake, Q, lake_io.write_files(lake, Q, q_rows()), app="a", commit_id="a/0")
    empty_commits(lake, Q, 230, app="a")                   # the app's own commits (streaming-like)
    latest = lake_io.latest_version(lake, Q)
    assert latest == 230
    reads.clear()
    files = lake_io.write_files(lake, Q, q_rows(tag="n"))
    version = lake_io.commit_files(lake, Q, files, app="a", commit_id="a/new")
    assert version == latest + 1
    assert min(reads[Q]) >= latest and len(reads[Q]) <= 4, reads
    reads.clear()
    # a rerun of the same commit is a no-op, found without going further back than the app's newest commit
    assert lake_io.commit_files(lake, Q, files, app="a", commit_id="a/new") == version
    assert reads[Q] == [version]
    reads.clear()
    # with the version the caller planned on: only the versions after it
    assert lake_io.find_commit(lake, Q, "a/new", after=latest - 1) == version
    assert min(reads[Q]) > latest - 1
    assert lake_io.read(lake, Q).num_rows == 2


def test_last_consumed_of_an_app_after_many_commits_of_other_writers(lake, reads):
    lake_io.commit_files(lake, Q, lake_io.write_files(lake, Q, q_rows()), app="cleanse", commit_id="c/0",
                         inputs={"raw_sensor_readings": [-1, 7]})
    empty_commits(lake, Q, 120)
    reads.clear()
    assert lake_io.last_inputs(lake, Q, "cleanse") == {"raw_sensor_readings": [-1, 7]}
    first = len(reads[Q])
    assert first <= 122                 # the versions since the app's commit, once
    reads.clear()
    assert lake_io.last_inputs(lake, Q, "cleanse") == {"raw_sensor_readings": [-1, 7]}
    latest = lake_io.latest_version(lake, Q)
    assert min(reads[Q]) >= latest and len(reads[Q]) <= 2, reads       # the pointer: no rescan
    empty_commits(lake, Q, 5)
    reads.clear()
    assert lake_io.find_commit(lake, Q, "c/0", app="cleanse") == 0      # the app's newest commit, via the pointer
    assert lake_io.find_commit(lake, Q, "c/never", app="cleanse") is None
    assert min(reads[Q]) >= latest
    assert lake_io.last_inputs(lake, Q, "nobody") is None


def test_a_pointer_of_a_dropped_and_recreated_table_is_not_trusted(lake):
    lake_io.commit_files(lake, Q, lake_io.write_files(lake, Q, q_rows()), app="cleanse", commit_id="c/0",
                         inputs={"x": 1})
    empty_commits(lake, Q, 40)
    assert lake_io.last_inputs(lake, Q, "cleanse") == {"x": 1}              # writes a pointer at the top
    uri = lake_io.table_uri(lake, Q)
    pointer = os.path.join(uri, lake_io.APPS_DIR, "cleanse.json")
    assert os.path.exists(pointer)
    saved = open(pointer).read()
    shutil.rmtree(uri)
    lake_io.commit_files(lake, Q, lake_io.write_files(lake, Q, q_rows()), app="other", commit_id="o/0")
    empty_commits(lake, Q, 45)
    os.makedirs(os.path.dirname(pointer), exist_ok=True)
    open(pointer, "w").write(saved)                                         # a leftover of the old table
    assert lake_io.last_inputs(lake, Q, "cleanse") is None
    assert lake_io.find_commit(lake, Q, "c/0", app="cleanse") is None


def test_cleanse_planning_reads_only_the_new_landing_versions(lake, reads):
    L = cl.LANDING
    lake_io.commit_files(lake, L, lake_io.write_files(lake, L, landing_rows("r0")), app="streaming",
                         commit_id="s/0")
    empty_commits(lake, L, 150, app="streaming")
    consumed = lake_io.latest_version(lake, L)
    for t in (cl.CLEAN, cl.QUARANTINE):
        lake_io.commit_files(lake, t, [], app=cl.APP, commit_id=f"{t}/done",
                             inputs={L: [-1, consumed], cl.DEVICES: None})
    new = lake_io.commit_files(lake, L, lake_io.write_files(lake, L, landing_rows("r1")), app="streaming",
                               commit_id="s/new")
    reads.clear()
    plan = cl.plan_run(lake)
    assert plan.after == {cl.CLEAN: consumed, cl.QUARANTINE: consumed} and plan.upto == new
    assert [f.version for f in plan.landing_files] == [new] and len(plan.landing_files) == 1
    assert reads[L] == [new], reads                  # one commit file of landing, nothing older
    assert all(len(v) <= 2 for t, v in reads.items() if t != L), reads


def test_added_files_follow_each_versions_actions(lake, reads):
    L = cl.LANDING
    v0 = lake_io.commit_files(lake, L, lake_io.write_files(lake, L, landing_rows("a")), app="s", commit_id="0")
    empty_commits(lake, L, 60, app="s")
    v1 = lake_io.commit_files(lake, L, lake_io.write_files(lake, L, landing_rows("b")), app="s", commit_id="1")
    reads.clear()
    got = delta.added_files(lake, L, v1 - 1, v1)
    assert reads[L] == [v1]
    assert [f.uri for f in got] == [f.uri for f in delta.snapshot_files(lake, L) if f.uri not in
                                    {g.uri for g in delta.snapshot_files(lake, L, v1 - 1)}]
    assert got[0].partition_values == delta.snapshot_files(lake, L, v0)[0].partition_values   # typed alike
    # a deleted file is not "added"; a version that deletes data fails the cleanse planner
    lake_io.open_table(lake, L).delete("event_id = 'b'")
    assert delta.added_files(lake, L, v1 - 1, v1 + 1) == []
    with pytest.raises(RuntimeError, match="append-only"):
        cl.landing_files(lake, v1, v1 + 1)


def test_a_missing_commit_file_falls_back_to_the_snapshot_diff_or_fails_clearly(lake):
    L = cl.LANDING
    log = os.path.join(lake_io.table_uri(lake, L), "_delta_log")
    for i in range(3):
        lake_io.commit_files(lake, L, lake_io.write_files(lake, L, landing_rows(f"x{i}")), app="s", commit_id=str(i))
    lake_io.open_table(lake, L).create_checkpoint()                      # at version 2
    lake_io.commit_files(lake, L, lake_io.write_files(lake, L, landing_rows("x3")), app="s", commit_id="3")
    os.remove(os.path.join(log, f"{2:020d}.json"))                     # the checkpoint still holds version 2
    old = {f.uri for f in delta.snapshot_files(lake, L, 0)}
    expected = [f.uri for f in delta.snapshot_files(lake, L, 3) if f.uri not in old]
    assert [f.uri for f in delta.added_files(lake, L, 0, 3)] == expected and len(expected) == 3
    assert [f.version for f in cl.landing_files(lake, 0, 3)] == [1, 2, 3]
    # log cleanup: the commit files before the checkpoint are gone, and time travel there with them
    for v in (0, 1):
        os.remove(os.path.join(log, f"{v:020d}.json"))
    with pytest.raises(lake_io.LogCleanedUp, match="version 1 was removed by log cleanup"):
        cl.landing_files(lake, 0, 3)
    with pytest.raises(lake_io.LogCleanedUp):
        delta.added_files(lake, L, 0, 3)
    assert [f.version for f in cl.landing_files(lake, 2, 3)] == [3]      # newer versions are unaffected
    assert lake_io.latest_version(lake, L) == 3


class _Flaky:
    """A DeltaTable whose next commits raise CommitFailedError (optionally after committing)."""

    def __init__(self, table, failures: list[bool]):
        self._t, self._failures = table, failures

    def __getattr__(self, name):
        return getattr(self._t, name)

    @property
    def _table(self):
        outer = self

        class Raw:
            def __getattr__(self, name):
                return getattr(outer._t._table, name)

            def create_write_transaction(self, *args):
                if outer._failures:
                    landed = outer._failures.pop(0)
                    if landed:
                        outer._t._table.create_write_transaction(*args)
                    raise CommitFailedError("Transaction failed: version already exists")
                return outer._t._table.create_write_transaction(*args)
        return Raw()


def _flaky(monkeypatch, failures: list[bool]):
    real = lake_io.open_table
    monkeypatch.setattr(lake_io, "open_table", lambda *a, **k: None if (t := real(*a, **k)) is None
                        else _Flaky(t, failures))
    monkeypatch.setattr(lake_io, "COMMIT_BACKOFF_S", 0.001)


def test_a_conflicting_append_is_retried_and_lands_once(lake, monkeypatch):
    lake_io.commit_files(lake, Q, lake_io.write_files(lake, Q, q_rows()), app="a", commit_id="a/0")
    _flaky(monkeypatch, [False, True])          # a plain failure, then one that landed before failing
    version = lake_io.commit_files(lake, Q, lake_io.write_files(lake, Q, q_rows(tag="n")), app="a", commit_id="a/1")
    assert version == 1
    assert lake_io.latest_version(lake, Q) == 1 and lake_io.read(lake, Q).num_rows == 2


def test_conflicts_that_persist_or_hit_a_planned_version_fail_clearly(lake, monkeypatch):
    lake_io.commit_files(lake, Q, lake_io.write_files(lake, Q, q_rows()), app="a", commit_id="a/0")
    _flaky(monkeypatch, [False] * lake_io.COMMIT_ATTEMPTS)
    with pytest.raises(lake_io.CommitConflict, match="failed 6 time"):
        lake_io.commit_files(lake, Q, lake_io.write_files(lake, Q, q_rows(tag="n")), app="a", commit_id="a/1")
    _flaky(monkeypatch, [False])
    with pytest.raises(lake_io.CommitConflict, match="failed 1 time"):     # planned on v0: never retried
        lake_io.commit_files(lake, Q, lake_io.write_files(lake, Q, q_rows(tag="m")), app="a", commit_id="a/2",
                             read_version=0)
    monkeypatch.undo()
    empty_commits(lake, Q, 1)
    with pytest.raises(RuntimeError, match="moved from version 0 to 1"):
        lake_io.commit_files(lake, Q, lake_io.write_files(lake, Q, q_rows(tag="k")), app="a", commit_id="a/3",
                             read_version=0)
    assert lake_io.read(lake, Q).num_rows == 1


def test_latest_version_and_the_log_readers_agree_with_delta_rs(lake):
    lake_io.commit_files(lake, Q, lake_io.write_files(lake, Q, q_rows()), app="a", commit_id="a/0")
    empty_commits(lake, Q, 104, app="a")                  # past a checkpoint (every 100 commits)
    table = lake_io.open_table(lake, Q)
    assert lake_io.latest_version(lake, Q) == table.version() == 104
    assert lake_io.latest_version(lake, Q, hint=50) == 104
    info = lake_io.commit_info(lake, Q, 104)
    assert info[lake_io.COMMIT_APP] == "a" and info["version"] == 104
    assert json.loads(info[lake_io.COMMIT_INPUTS]) == {}
    assert lake_io.latest_version(lake, "features") is None and lake_io.last_inputs(lake, "features", "x") is None
    assert [h["version"] for h in lake_io.commits(lake, Q, "a", limit=3)] == [104, 103, 102]


def test_the_archive_move_of_consumed_files_is_no_new_data_but_of_unconsumed_ones_fails(lake):
    L = cl.LANDING
    for tag in ("a", "b"):
        lake_io.commit_files(lake, L, lake_io.write_files(lake, L, landing_rows(tag)), app="s", commit_id=tag)
    lake_io.open_table(lake, L).delete("event_id = 'a'", custom_metadata={
        lake_io.COMMIT_ID: "archive-v1", lake_io.COMMIT_APP: cl.ARCHIVE_APP, lake_io.COMMIT_INPUTS: "{}"})
    assert [f.version for f in cl.landing_files(lake, 0, 2)] == [1]          # "a" was consumed (version 0)
    with pytest.raises(RuntimeError, match="1 not cleansed yet"):
        cl.landing_files(lake, -1, 2)
