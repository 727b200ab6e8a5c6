"""In-process benchmark of the columnar acute-rule engine and its state store (one core).

    python -m bench.bench_acute [--json] [--batches 30] [--touched 400]

For a 1K- and a 100K-device shard store warmed with 24 h of history (built directly, as the engine
keeps it: raw histories, dedup ids, 48 vibration buckets), it streams batches shaped like a 100K-device
fleet's sub-second bundles: `--touched` devices per batch, each one tick of 5 readings. Timed per
batch, from the Arrow table the DoFn gets to the new state: Batch building, store lookup, evaluation
and write (with the page encoding a Beam state write does, and the tier merges; at 100K devices the
30 default batches see no merge into level 2, which comes every 256 batches: `--batches 300` for
the steady state). Then the reference per-device engine (tests/reference_acute.py) and the columnar
one run the same random stream with faults on a few devices, and their alerts are compared. Prints a
table, then one JSON line: readings_per_s_1k, readings_per_s_100k, state_bytes_per_device,
alerts_equal_reference.
"""
from __future__ import annotations

import argparse
import cProfile
import datetime as dt
import io
import json
import pstats
import time

import numpy as np
import pyarrow as pa

from core import acute_state
from core.acute_rules import (FIRES, HIST, SEEN, SENSOR_CODES, VIB, Batch, DeviceStates, RuleConfig, evaluate,
                                    fixed_width)
from core.acute_state import MemoryCells, Store

CONFIG = RuleConfig.load()
TH = CONFIG.for_model("CX-200")
T_END = int(dt.datetime(2026, 11, 21, tzinfo=dt.timezone.utc).timestamp()) * 1_000_000
STEP = 10_000_000
SENSORS = ("compressor_current", "suction_pressure", "discharge_pressure", "vibration", "temperature")
BASE = np.array([12.0, 400.0, 1400.0, 2.0, 4.0])
NOW = dt.datetime.now(dt.timezone.utc)


class EncodingCells(MemoryCells):
    """In-memory cells that also encode every page written (what a Beam state write costs)."""

    def __init__(self):
        super().__init__()
        self.bytes_written = 0

    def append(self, page):
        self.bytes_written += len(acute_state.encode(page))
        super().append(page)

    def set_level(self, i, page):
        if page is not None:
            self.bytes_written += len(acute_state.encode(page))
        super().set_level(i, page)


def warm_state(n: int, rng) -> DeviceStates:
    """n devices as after 24 h of 5 sensors every 10 s, newest reading at T_END."""
    names = [f"dev-{k:06d}" for k in range(n)]
    ids = fixed_width(names)
    max_t = np.full(n, T_END, np.int64)
    hist_parts = []
    for sensor, keep_us in TH.history_us.items():
        rows = keep_us // STEP + 1
        dev = np.repeat(np.arange(n), rows)
        back = np.tile(np.arange(rows)[::-1], n) * STEP
        t = T_END - back
        hist_parts.append({"dev": dev, "sensor": np.full(len(dev), SENSOR_CODES[sensor], np.int8), "t": t,
                           "v": BASE[SENSOR_CODES[sensor]] + rng.normal(0, 0.05, len(dev)),
                           "eid": fixed_width([f"{names[d]}-{SENSOR_CODES[sensor]}-{x // 1000}"
                                               for d, x in zip(dev, t)])})
    hist = {k: np.concatenate([h[k] for h in hist_parts]) for k in HIST}
    order = np.lexsort((hist["t"], hist["sensor"], hist["dev"]))
    hist = {k: v[order] for k, v in hist.items()}
    per = TH.dedup_us // STEP + 1
    sdev = np.repeat(np.arange(n), per * 5)
    st = T_END - np.tile(np.repeat(np.arange(per)[::-1], 5), n) * STEP
    seen = {"dev": sdev, "t": st, "h": rng.integers(0, 2**63, len(sdev)).astype(np.uint64)}
    nb = TH.vibration_window_buckets + 1
    bucket = TH.vibration_bucket_us
    vdev = np.repeat(np.arange(n), nb)
    b = T_END // bucket - np.tile(np.arange(nb)[::-1], n)
    per_bucket = bucket // STEP
    vib = {"dev": vdev, "b": b, "s": 2.0 * per_bucket + rng.normal(0, 0.1, len(vdev)),
           "n": np.full(len(vdev), per_bucket, np.int64), "first": b * bucket}
    fires = {k: np.empty(0, d) for k, d in FIRES.items()}
    assert set(seen) == set(SEEN) and set(vib) == set(VIB)
    return DeviceStates(ids, max_t, max_t.copy(), hist, seen, vib, fires)


def tick_batch(ids: np.ndarray, t: np.ndarray, rng) -> pa.Table:
    """One tick of 5 readings per device (device k at time t[k]), as the Arrow table the DoFn gets."""
    n = len(ids)
    dev = np.repeat(ids, 5)
    tt = np.repeat(t, 5)
    code = np.tile(np.arange(5), n)
    eid = fnv_free_ids(dev, code, tt)
    return pa.table({"device_id": pa.array([d.decode() for d in dev], pa.string()),
                     "event_id": pa.array(eid, pa.string()), "sensor_type": pa.array(np.array(SENSORS)[code]),
                     "t_us": tt, "value": BASE[code] + rng.normal(0, 0.05, 5 * n),
                     "model": pa.array(["CX-200"] * (5 * n)), "rated_current_a": np.full(5 * n, 20.0)})


def fnv_free_ids(dev, code, t):
    return np.array([f"{d.decode()}-{c}-{x // 1000}" for d, c, x in zip(dev, code, t)], object)


def bench_size(n: int, batches: int, touched: int, rng, profile: bool = False) -> dict:
    t0 = time.perf_counter()
    state = warm_state(n, rng)
    cells = EncodingCells()
    cells.set_level(2, state)
    store = Store(cells)
    build_s = time.perf_counter() - t0
    clock = dict(zip(state.ids, state.max_t))
    prepared = []
    for _ in range(batches + 3):
        ids = np.sort(rng.choice(state.ids, min(touched, n), replace=False))
        t = np.array([clock[d] for d in ids]) + STEP
        for d, x in zip(ids, t):
            clock[d] = x
        prepared.append(tick_batch(ids, t, rng))
    cells.bytes_written = 0
    timed = 0.0
    readings = 0
    prof = cProfile.Profile() if profile else None
    for k, table in enumerate(prepared):
        start = time.perf_counter()
        if prof and k >= 3:
            prof.enable()
        batch = Batch.from_table(table, int(table["t_us"][0].as_py()))      # what the DoFn does
        ids, index = batch.devices()
        new, _, _ = evaluate(store.lookup(ids), batch, CONFIG, NOW, index)
        store.write(new)
        if prof and k >= 3:
            prof.disable()
        if k >= 3:                                       # the first batches warm caches up
            timed += time.perf_counter() - start
            readings += len(batch.t)
    per_device = len(acute_state.encode(store.lookup(state.ids[:200]))) / 200
    out = {"devices": n, "batches": batches, "readings": readings, "seconds": timed,
           "readings_per_s": readings / timed, "us_per_reading": timed / readings * 1e6,
           "state_bytes_per_device": per_device, "written_bytes_per_reading": cells.bytes_written / readings,
           "build_s": build_s}
    if prof:
        s = io.StringIO()
        pstats.Stats(prof, stream=s).sort_stats("cumulative").print_stats(18)
        out["profile"] = s.getvalue()
    return out


def reference_check() -> bool:
    """The columnar engine and the per-device reference fire the same alerts on a faulty stream."""
    from tests.test_acute_equivalence import key, run_columnar, run_reference, stream
    readings, rng = stream(20261201, 4, 100, 0.05, 0.03, 0.03)
    bounds = np.sort(rng.choice(np.arange(1, len(readings)), 30, replace=False))
    batches = [[readings[i] for i in b] for b in np.split(np.arange(len(readings)), bounds) if len(b)]
    ref_alerts, ref_counts = run_reference(batches)
    new_alerts, new_counts = run_columnar(batches)
    return bool(ref_alerts) and key(ref_alerts) == key(new_alerts) and ref_counts == new_counts


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", action="store_true", help="end with one JSON line of the results")
    ap.add_argument("--batches", type=int, default=30)
    ap.add_argument("--touched", type=int, default=400, help="devices per batch (one tick of 5 readings each)")
    ap.add_argument("--profile", action="store_true", help="cProfile the 100K run")
    args = ap.parse_args(argv)
    rng = np.random.default_rng(1)
    small = bench_size(1_000, args.batches, args.touched, rng)
    large = bench_size(100_000, args.batches, args.touched, rng, profile=args.profile)
    equal = reference_check()
    print(f"{'devices':>8} {'readings/s':>12} {'us/reading':>11} {'state B/dev':>12} {'written B/reading':>18}")
    for r in (small, large):
        print(f"{r['devices']:>8} {r['readings_per_s']:>12,.0f} {r['us_per_reading']:>11.2f} "
              f"{r['state_bytes_per_device']:>12,.0f} {r['written_bytes_per_reading']:>18,.0f}")
    ratio = large["us_per_reading"] / small["us_per_reading"]
    print(f"cost per reading 100K / 1K: {ratio:.2f}x; alerts equal to the reference: {equal}")
    if args.profile:
        print(large["profile"])
    if args.json:
        print(json.dumps({"readings_per_s_1k": round(small["readings_per_s"]),
                          "readings_per_s_100k": round(large["readings_per_s"]),
                          "cost_ratio_100k_1k": round(ratio, 3),
                          "state_bytes_per_device": round(large["state_bytes_per_device"]),
                          "alerts_equal_reference": equal}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
