"""bench.bench_testbed's spans builder: each bench device's first N minutes, before its failure."""
from __future__ import annotations

import datetime as dt

import pytest

from bench.bench_testbed import bench_runs, spans_csv
from core import training_spans
from simulation.testbench import bench_devices, plan_bench

UTC = dt.timezone.utc


def _truth(warmup: dt.timedelta):
    start, end = dt.datetime(2026, 11, 29, tzinfo=UTC), dt.datetime(2026, 11, 30, tzinfo=UTC)
    placed, incidents = plan_bench(bench_devices(9, 7), start, end, 7, warmup)
    fleet_failure = {"kind": "failure", "mode": "bearing_wear", "device_id": "dev-00001", "detail": {},
                     "start": "2026-11-29T03:00:00+00:00", "end": "2026-11-29T05:00:00+00:00"}
    return placed, [i.to_json() for i in incidents] + [fleet_failure]


def test_runs_start_where_the_simulator_placed_the_bench_devices():
    placed, truth = _truth(dt.timedelta(minutes=15))
    runs = bench_runs(truth, 15)
    assert sorted(runs) == sorted(d.device_id for d in placed)          # the fleet's failure is left out
    for d in placed:
        assert runs[d.device_id][0] == d.window[0]
        assert runs[d.device_id][1] - runs[d.device_id][0] == dt.timedelta(minutes=15)


def test_spans_file_resolves_to_the_first_minutes_of_each_run(tmp_path):
    placed, truth = _truth(dt.timedelta(minutes=15))
    path = tmp_path / "spans.csv"
    path.write_text(spans_csv(truth, 15, 10))
    resolved = training_spans.resolve(str(tmp_path / "lake"), str(path))
    assert resolved.registry_version == -1                               # explicit times: no registry needed
    by_device = {d: (s, e) for d, s, e in resolved.spans}
    assert len(resolved.spans) == len(placed) == len(by_device)
    for d in placed:
        s, e = (dt.datetime.fromisoformat(t) for t in by_device[d.device_id])
        assert s == d.window[0] and e == d.window[0] + dt.timedelta(minutes=10)


def test_a_span_reaching_into_the_failure_or_no_bench_device_is_refused():
    _, truth = _truth(dt.timedelta(minutes=15))
    with pytest.raises(ValueError):
        spans_csv(truth, 15, 20)
    with pytest.raises(ValueError):
        spans_csv([r for r in truth if not r["detail"]], 15, 10)
