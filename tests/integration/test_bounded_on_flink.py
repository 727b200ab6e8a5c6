"""Cleanse on the local Flink over shards whose elements, as the code before bounded
chunks built them, exceed Flink's sort-buffer record limit (6,684,672 bytes here: "The record exceeds
the maximum size of a sort buffer"), and the tables equal the DirectRunner's.

Input: 25 simulated devices, one reading per sensor per minute, 2 days (~360K readings, landing
v0 and v1), cleansed with 2 device shards and features with 1. The second cleanse reads the first
one's clean file as dedup context: that file holds ~180K rows (the old lake.write_files wrote one row
group up to 1M rows), so the old per-(row group, shard) context element was ~9 MB; the features read of the
same files made ~13 MB elements. The test computes those old sizes from the lake before the runs
(one table per row group per shard, as ReadAllFromParquetBatched and the old split_by_shard built
them) and asserts they exceed the limit, then runs the cleanse on Flink with the default bound.

Features follows on the cleansed lake. Beam's Flink batch translator pre-combines every GroupByKey's
values per key into ONE list record (Concatenate) before the sort, so what one key carries in total,
not each element, must stay under the limit. Features with ``--shards 1`` keyed only by shard would
put every row it computes (~260K rows, ~16 MB here: the test measures it as the DirectRunner's
largest group with the old keying) into one record; ``transforms.features.shard_layout`` sizes the device
shards and time buckets from the clean files' statistics instead, so no key reaches
``GROUP_BYTES``, and the features table equals the DirectRunner's.
"""
from __future__ import annotations

import pickle
import shutil
import subprocess
import sys
import time
from pathlib import Path

import dataclasses

import polars as pl
import pyarrow.parquet as pq
import pytest

from pipelines import cleanse, features
from tests.conftest import FLINK_REST, PROJECT_ROOT, require_service
from tests.helpers import run_simulator
from tests.integration.flink_jobs import JOB_ENDPOINT
from transforms import arrow
from transforms import cleansing as cl
from transforms import delta
from transforms import features as ft
from core import lake as lake_io

pytestmark = [pytest.mark.integration, pytest.mark.flink]

FLINK_SORT_RECORD_LIMIT = 6_684_672
FLINK_ARGS = ["--runner=PortableRunner", f"--job_endpoint={JOB_ENDPOINT}", "--environment_type=LOOPBACK",
              "--parallelism=1"]
UNBOUNDED = arrow.ChunkBound(rows=10**12, nbytes=10**15)      # the old behaviour: one table per shard
CLEANSE_SHARDS = 1         # few shards: all of a run's rows in one shard
FEATURES_ARGS = ["--shards", "1"]        # the fewest device shards: the layout adds what the volume needs
WALL_CLOCK = {"quarantined_at", "computed_at"}


def _start_on_flink(module: str, lake: str, args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", f"pipelines.{module}", "--lake", lake, *args, *FLINK_ARGS],
                            cwd=PROJECT_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(proc: subprocess.Popen) -> str:
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stdout[-3000:] + stderr[-5000:]
    return stdout


def _canonical(lake: str, table: str) -> pl.DataFrame:
    frame = pl.from_arrow(lake_io.read(lake, table))
    frame = frame.drop([c for c in frame.columns if c in WALL_CLOCK])
    return frame.sort([c for c in frame.columns if frame.schema[c] != pl.List(pl.Utf8)])


def _old_row_groups(lake: str, table: str, columns: list[str]):
    """The tables the old read handed on: one per row group as the old writer wrote them, which was
    one row group per file below 1M rows (files here are smaller)."""
    for f in delta.snapshot_files(lake, table):
        yield pq.read_table(f.uri.removeprefix("file://"), columns=columns)


def _largest_pickled(pairs) -> int:
    return max((len(pickle.dumps(t)) for _, t in pairs), default=0)


def old_context_element_bytes(lake: str) -> int:
    """Largest dedup-context element the old cleanse would have shuffled (all clean rows are inside
    the lookback and the hours of the new rows here)."""
    return max(_largest_pickled(cl.split_by_shard(pl.from_arrow(rg), CLEANSE_SHARDS, UNBOUNDED))
               for rg in _old_row_groups(lake, cl.CLEAN, cl.CONTEXT_COLUMNS))


def test_cleanse_shards_beyond_flinks_record_limit_run_on_flink_like_the_direct_runner(tmp_path):
    require_service("Flink", FLINK_REST)
    require_service("Beam job server", JOB_ENDPOINT)
    base = str(tmp_path / "base" / "lake")
    run_simulator(base, "--devices", "18", "--backfill_days", "2", "--backfill_end", "2026-11-20",
                  "--interval", "60", "--data_faults", "duplicates,replay,stuck_value,out_of_range")
    # landing v0 cleansed once (DirectRunner): its clean file is the second run's dedup context
    assert cleanse.run(["--lake", base, "--upto_version", "0", "--shards", "1"])["reconciles"]
    old_sizes = {"cleanse_context": old_context_element_bytes(base)}
    direct, flink = str(tmp_path / "direct" / "lake"), str(tmp_path / "flink" / "lake")
    for copy in ("direct", "flink"):
        shutil.copytree(tmp_path / "base", tmp_path / copy)

    # each step on Flink (a subprocess) while the DirectRunner runs it here
    started = time.monotonic()
    proc = _start_on_flink("cleanse", flink, ["--shards", str(CLEANSE_SHARDS)])
    summary = cleanse.run(["--lake", direct, "--shards", str(CLEANSE_SHARDS)])
    assert "reconciles             yes" in _finish(proc)
    print(f"cleanse: {time.monotonic() - started:.1f} s")
    assert summary["reconciles"] and summary["context_rows"] > 100_000, summary

    print("old element sizes (bytes):", old_sizes)
    for site, size in old_sizes.items():
        assert size > FLINK_SORT_RECORD_LIMIT, (site, size)
    for table in ("clean_sensor_readings", "quarantine"):
        a, b = _canonical(direct, table), _canonical(flink, table)
        assert a.height > 0 or table == "quarantine", table      # no unknown devices in this input
        assert a.equals(b), f"{table}: DirectRunner and Flink differ"
        assert lake_io.open_table(direct, table).version() == lake_io.open_table(flink, table).version()

    # features over the whole cleansed lake: the old keying's one group vs the layout's, then on Flink
    plan = ft.plan_run(direct, ft.FeaturesConfig().sizes, 60.0)
    config = dataclasses.replace(ft.FeaturesConfig(), shards=1)
    layout = ft.shard_layout(plan, config)
    old_group = _old_features_group_bytes(tmp_path, direct)
    print("features layout:", layout, "old group bytes:", old_group)
    assert old_group > FLINK_SORT_RECORD_LIMIT and layout.shards > 1
    started = time.monotonic()
    proc = _start_on_flink("features", flink, FEATURES_ARGS)
    summary = features.run(["--lake", direct, *FEATURES_ARGS])
    out = _finish(proc)
    print(f"features: {time.monotonic() - started:.1f} s")
    assert summary["commit_matches_counts"] and summary["feature_rows"] > 0, summary
    assert summary["layout"]["largest_group_bytes"] < ft.GROUP_BYTES, summary["layout"]
    assert f"features v{summary['commit']['version']} ({summary['commit']['rows']} rows)" in out
    a, b = _canonical(direct, "features"), _canonical(flink, "features")
    assert a.height == summary["feature_rows"] and a.equals(b), "features: DirectRunner and Flink differ"


def _old_features_group_bytes(tmp_path, lake: str) -> int:
    """The largest group the old keying (device shard only, here one shard) made: a DirectRunner run on
    a copy with a group bound no run reaches (one key)."""
    copy = tmp_path / "old_keying"
    shutil.copytree(Path(lake).parent, copy)
    plan = ft.plan_run(str(copy / "lake"), ft.FeaturesConfig().sizes, 60.0)
    config = dataclasses.replace(ft.FeaturesConfig(), shards=1, group_bytes=10**15)
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions
    pipeline = beam.Pipeline(options=PipelineOptions([]))
    pipeline | ft.ComputeFeatures(plan, config)
    result = pipeline.run()
    result.wait_until_finish()
    return features.largest_group_bytes(result)
