"""Bounded element sizes (transforms/arrow.py): the chunking helper's row and byte bounds, compact
chunks (what crosses a shuffle is the chunk, not its parent's buffers), the bounded Parquet reader,
Gather, and cleanse + features giving identical tables with a tiny bound (100 rows: every device
shard spans many chunks, so dedup across chunks, stuck runs and windows spanning chunks are
exercised) and with the default one. DirectRunner."""
from __future__ import annotations

import dataclasses
import datetime as dt
import pickle
import shutil

import apache_beam as beam
import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from apache_beam.testing.util import assert_that, equal_to

from pipelines import cleanse, features
from schemas import contracts
from schemas.sensors import SENSORS
from tests.helpers import run_simulator
from transforms import arrow
from transforms import cleansing as cl
from transforms import features as ft
from core import lake as lake_io

TINY = arrow.ChunkBound(rows=100, nbytes=4096)


def _table(n: int, seed: int = 1) -> pa.Table:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 200, n)            # variable-width rows: the byte bound must still hold
    return pa.table({"i": np.arange(n), "v": rng.random(n),
                     "s": pa.array(["x" * int(k) for k in lengths]),
                     "l": pa.array([["a"] * int(k % 4) for k in lengths], pa.list_(pa.string()))})


@pytest.mark.parametrize("bound", [arrow.ChunkBound(rows=1000, nbytes=1 << 30), arrow.ChunkBound(rows=10**9, nbytes=20_000),
                                   arrow.ChunkBound(rows=50, nbytes=3000)])
def test_chunks_hold_both_bounds_and_keep_every_row_in_order(bound):
    table = _table(20_000)
    parts = list(arrow.chunks(table, bound))
    assert len(parts) > 1
    for part in parts:
        assert 0 < part.num_rows <= bound.rows
        assert part.nbytes <= bound.nbytes
        # compact: the pickled chunk is its own rows, not the 2+ MB parent
        assert len(pickle.dumps(part)) <= part.nbytes + 4096
    assert pa.concat_tables(parts).equals(table)


def test_a_slice_is_compacted_before_it_leaves():
    table = _table(50_000)
    part = table.slice(100, 10)
    assert len(pickle.dumps(part)) > 1_000_000          # pyarrow 10 pickles the parent's buffers
    (chunk,) = arrow.chunks(part)
    assert chunk.equals(part) and len(pickle.dumps(chunk)) < 20_000


def test_one_row_larger_than_the_byte_bound_goes_alone_and_empty_gives_nothing():
    table = pa.table({"s": ["a" * 10_000, "b", "c"]})
    parts = list(arrow.chunks(table, arrow.ChunkBound(rows=10, nbytes=1000)))
    assert [p.num_rows for p in parts] == [1, 1, 1] and pa.concat_tables(parts).equals(table)
    assert list(arrow.chunks(table.slice(0, 0))) == []


def test_read_parquet_chunks_splits_row_groups(tmp_path):
    table = _table(30_000)
    path = tmp_path / "one_group.parquet"
    pq.write_table(table, path, row_group_size=30_000)          # one row group of ~3 MB
    with beam.Pipeline() as p:
        out = (p | beam.Create([str(path)])
               | arrow.ReadParquetChunks(with_filename=True, bound=arrow.ChunkBound(rows=4000, nbytes=200_000)))
        sizes = out | beam.MapTuple(lambda uri, t: (uri == str(path), t.num_rows <= 4000 and t.nbytes <= 200_000))
        rows = out | beam.MapTuple(lambda _, t: t.num_rows) | beam.CombineGlobally(sum)
        chunks_ = out | beam.combiners.Count.Globally()
        assert_that(sizes | beam.Distinct(), equal_to([(True, True)]), label="bounded")
        assert_that(rows, equal_to([30_000]), label="rows")
        assert_that(chunks_ | beam.Map(lambda n: n >= 15), equal_to([True]), label="many")


def test_gather_lists_every_element_and_an_empty_input_as_an_empty_list():
    with beam.Pipeline() as p:
        full = p | "Full" >> beam.Create(list(range(50))) | "GatherFull" >> arrow.Gather()
        empty = p | "Empty" >> beam.Create([]) | "GatherEmpty" >> arrow.Gather()
        assert_that(full | "SortFull" >> beam.Map(sorted), equal_to([list(range(50))]), label="full")
        assert_that(empty, equal_to([[]]), label="empty")


def test_split_by_shard_keeps_a_shard_whole_across_bounded_chunks():
    frame = pl.DataFrame({"device_id": [f"d{i % 7}" for i in range(3000)], "x": list(range(3000))})
    pairs = list(cl.split_by_shard(frame, 3, TINY))
    assert all(t.num_rows <= TINY.rows and t.nbytes <= TINY.nbytes for _, t in pairs)
    by_shard = {}
    for shard, t in pairs:
        by_shard.setdefault(shard, []).append(t)
    for shard, tables in by_shard.items():
        assert len(tables) > 1
        got = pl.from_arrow(pa.concat_tables(tables))
        assert (cl.shard_of(got, 3) == shard).all()
    assert sum(t.num_rows for _, t in pairs) == 3000


# --- the pipelines: tiny bound vs default -------------------------------------------------------

WALL_CLOCK = {"quarantined_at", "computed_at"}
FAULTS = "stuck_value,dropout,duplicates,replay,out_of_range,unknown_device,inactive_device"


def _canonical(lake: str, table: str) -> pl.DataFrame:
    frame = pl.from_arrow(lake_io.read(lake, table))
    frame = frame.drop([c for c in frame.columns if c in WALL_CLOCK])
    # every column: quarantine keeps each copy of a reading, and copies tie on any key
    return frame.sort([c for c in frame.columns if frame.schema[c] != pl.List(pl.Utf8)])


def _run_steps(lake: str, bound: arrow.ChunkBound, monkeypatch) -> list[dict]:
    clean_config, features_config = cleanse.config_of, features.config_of
    monkeypatch.setattr(cleanse, "config_of", lambda o: dataclasses.replace(clean_config(o), chunk=bound))
    monkeypatch.setattr(features, "config_of", lambda o: dataclasses.replace(features_config(o), chunk=bound))
    out = [cleanse.run(["--lake", lake, "--upto_version", "0"]), features.run(["--lake", lake]),
           cleanse.run(["--lake", lake]), features.run(["--lake", lake])]
    monkeypatch.undo()
    return out


def test_cleanse_and_features_are_identical_with_a_tiny_bound(tmp_path, monkeypatch):
    base = str(tmp_path / "default" / "lake")
    run_simulator(base, "--devices", "6", "--backfill_days", "2", "--backfill_end", "2026-11-20",
                  "--interval", "300", "--data_faults", FAULTS, "--inactive_fraction", "0.2",
                  "--mixed_unit_fraction", "0.3")
    # a device reconnecting: 600 readings of landing v0 land again after v1 (dedup against clean)
    replay = lake_io.read(base, "raw_sensor_readings", 0).slice(0, 600)
    assert lake_io.append(base, "raw_sensor_readings", replay) == 2
    tiny = str(tmp_path / "tiny" / "lake")
    shutil.copytree(base, tiny)

    expected = _run_steps(base, arrow.DEFAULT_BOUND, monkeypatch)
    got = _run_steps(tiny, TINY, monkeypatch)
    first, second = expected[0], expected[2]
    # the paths the chunking could break were exercised: shards far above 100 rows, duplicates within
    # the new rows and against clean (the context), stuck runs, windows recomputed for late data
    assert first["clean"] > 8 * 100 * 3
    assert second["duplicates"]["duplicates_against_clean"] > 0 and second["context_rows"] > 0
    assert first["duplicates"]["duplicates_within_batch"] + second["duplicates"]["duplicates_within_batch"] > 0
    assert first["flags"]["stuck_value"] + second["flags"]["stuck_value"] > 0
    assert expected[3]["feature_rows"] > 0
    for e, g in zip(expected, got):
        assert g.get("reconciles", True) and g.get("commits_match_counts", True), g
        for key in ("rows_in", "clean", "quarantined", "duplicates", "flags", "context_rows", "feature_rows",
                    "carried_over_rows", "clean_rows_selected", "new_clean_rows"):
            assert g.get(key) == e.get(key), key
    for table in ("clean_sensor_readings", "quarantine", "features"):
        a, b = _canonical(base, table), _canonical(tiny, table)
        assert a.height > 0, table
        assert a.equals(b), f"{table}: a 100-row bound changed the output"


# --- features: what one key of its grouping carries in total --------------------------------

FLINK_SORT_RECORD_LIMIT = 6_684_672
DAY = dt.datetime(2026, 11, 19, tzinfo=dt.timezone.utc)


def _clean_lake(path: str, devices: int, minutes: int = 1440 + 10) -> str:
    """A clean table of ``devices`` devices x 5 sensors, one reading a minute for a day and 10 min:
    the day's windows have closed."""
    n_t = minutes
    t = np.arange(n_t, dtype=np.int64) * 60_000_000 + int(DAY.timestamp() * 1e6)
    sensors = list(SENSORS)
    dev, sen, k = (a.ravel() for a in np.meshgrid(np.arange(devices), np.arange(len(sensors)), np.arange(n_t),
                                                    indexing="ij"))
    ts = pa.array(t[k]).cast(contracts.UTC_TS)
    rng = np.random.default_rng(devices)
    data = pa.table({
        "event_id": pa.array([f"e{i}" for i in range(len(k))]),
        "device_id": pa.array(np.char.add("dev-", dev.astype(str)).astype(object)),
        "sensor_type": pa.array(np.array(sensors, dtype=object)[sen]),
        "value": pa.array(10 + rng.random(len(k))),
        "unit": pa.array(np.array([SENSORS[s].canonical_unit for s in sensors], dtype=object)[sen]),
        "timestamp_utc": ts, "timestamp_ingested": ts,
        "quality": pa.array(np.where(k % 97 == 0, "BAD", "GOOD").astype(object)),
        "quality_reasons": pa.array([[]] * len(k), pa.list_(pa.string())),
        "date": ts.cast(pa.date32()),
    })
    lake_io.append(path, "clean_sensor_readings", data)
    return path


def _features_with(lake: str, config_of, monkeypatch, **changes) -> dict:
    monkeypatch.setattr(features, "config_of", lambda o: dataclasses.replace(config_of(o), **changes))
    try:
        return features.run(["--lake", lake, "--shards", "1"])
    finally:
        monkeypatch.undo()


def test_features_shards_grow_with_volume_and_no_key_outgrows_the_bound(tmp_path, monkeypatch):
    config = ft.FeaturesConfig(shards=1)
    small, large = (_clean_lake(str(tmp_path / name / "lake"), n) for name, n in (("small", 4), ("large", 48)))
    layouts = {name: ft.shard_layout(ft.plan_run(path, config.sizes, 60.0), config)
               for name, path in (("small", small), ("large", large))}
    assert layouts["small"].shards < layouts["large"].shards, layouts
    assert layouts["large"].bucket_us == 86400 * 10**6             # every 1d window whole in one key
    assert layouts["large"].shards > 10

    same = str(tmp_path / "one_key" / "lake")
    shutil.copytree(tmp_path / "large", tmp_path / "one_key")
    got = _features_with(large, features.config_of, monkeypatch)
    # the old keying: one shard, so one key held every row the run computes
    old = _features_with(same, features.config_of, monkeypatch, group_bytes=10**15)
    assert old["layout"]["shards"] == 1 and old["layout"]["groups"] <= 2
    # that old key was several times Flink's record limit; now no key reaches the bound
    assert old["layout"]["largest_group_bytes"] > 2 * FLINK_SORT_RECORD_LIMIT, old["layout"]
    assert got["layout"]["largest_group_bytes"] < ft.GROUP_BYTES, got["layout"]
    assert got["layout"]["shards"] > 10 and got["layout"]["groups"] > 10       # a shard may get no device
    assert got["feature_rows"] == old["feature_rows"] == 48 * (1 + 24 + 96) and got["clean_rows_selected"] > 300_000
    a, b = _canonical(large, "features"), _canonical(same, "features")
    assert a.equals(b), "the keying changed the features"


def test_rows_per_bucket_spreads_each_file_over_its_time_range():
    lo, hi = np.array([0, 50]), np.array([100, 150])
    got = ft.rows_per_bucket(lo, hi, np.array([100.0, 10.0]), np.array([0, 50, 100, 150, 200]))
    assert got == pytest.approx([50, 55, 5, 0])
