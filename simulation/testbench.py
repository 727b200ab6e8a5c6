"""Test-bench devices: short-lived compressors, each run for a few hours with exactly one failure.

They are registered like the fleet (ids TB-0000, TB-0001, ..., site ``bench-0000``, canonical units,
ISO times with offset) but report only inside their own window of the backfill span: a warm-up of
healthy readings (``PlanConfig.warmup``, so the vibration rule has its hour of history), one failure,
then ``TAIL`` of readings after it. The modes cycle through the gradual modes, then the acute ones.
A bench gradual failure is compressed to ``BENCH_GRADUAL`` and does not turn into an acute one, so
each bench device has exactly one failure in the ground truth (``detail.test_bench`` is true).
They draw from their own random streams: adding them changes nothing else the simulator writes.
"""
from __future__ import annotations

import dataclasses
import datetime as dt

import numpy as np

from simulation.fleet import Device, make_fleet
from simulation.incidents import ACUTE_MODES, GRADUAL_MODES, WARMUP, Incident

BENCH_MODES: tuple[str, ...] = tuple(GRADUAL_MODES) + tuple(ACUTE_MODES)
BENCH_GRADUAL = dt.timedelta(hours=2)
TAIL = dt.timedelta(minutes=20)
FIRST_INDEX = 900_000          # device indices (the noise keys) well clear of the fleet's


def bench_devices(n: int, seed: int) -> list[Device]:
    """``n`` bench devices without windows yet (their registry rows do not depend on the span)."""
    base = make_fleet(n, seed * 1_000_003 + 5, inactive_fraction=0.0, mixed_unit_fraction=0.0,
                      ts_form_weights=(1.0, 0.0, 0.0))
    return [dataclasses.replace(d, index=FIRST_INDEX + i, device_id=f"TB-{i:04d}", site_id="bench-0000",
                                timezone="UTC") for i, d in enumerate(base)]


def failure_length(mode: str) -> dt.timedelta:
    return BENCH_GRADUAL if mode in GRADUAL_MODES else ACUTE_MODES[mode][2]


def plan_bench(devices: list[Device], start: dt.datetime, end: dt.datetime, seed: int,
               warmup: dt.timedelta = WARMUP) -> tuple[list[Device], list[Incident]]:
    """Places each bench device's window in [start, end) and gives it its one failure."""
    rng = np.random.default_rng([seed, 5])
    placed, incidents = [], []
    for i, d in enumerate(devices):
        mode = BENCH_MODES[i % len(BENCH_MODES)]
        length = warmup + failure_length(mode) + TAIL
        room = (end - start - length).total_seconds()
        if room < 0:
            raise ValueError(f"a test-bench {mode} run needs {length} of span, the backfill has {end - start}")
        w0 = start + dt.timedelta(seconds=round(float(rng.uniform(0, room))))
        d = dataclasses.replace(d, window=(w0, w0 + length))
        s = w0 + warmup
        if mode in GRADUAL_MODES:
            inc = Incident("failure", mode, d.device_id, d.index, s, s + BENCH_GRADUAL, sensor=GRADUAL_MODES[mode][0],
                           category="gradual", detail={"test_bench": True})
        else:
            rule, sensor, duration = ACUTE_MODES[mode]
            inc = Incident("failure", mode, d.device_id, d.index, s, s + duration, sensor=sensor,
                           expected_rule=rule, category="acute", detail={"test_bench": True})
        placed.append(d)
        incidents.append(inc)
    return placed, incidents
