"""Small helpers for tests: run the simulator, read what it wrote."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipelines import simulate
from schemas.sensors import SENSORS


def run_simulator(lake: str, *args: str) -> None:
    assert simulate.main(["--lake", lake, *args]) == 0


def ground_truth(lake: str, mode: str = "backfill") -> list[dict]:
    path = Path(lake).parent / "ground_truth" / f"{mode}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


def event_time_ms(table: pa.Table) -> np.ndarray:
    """The true reading time the simulator encodes as the last part of each event_id."""
    return np.array([int(e.rsplit("-", 1)[1]) for e in table["event_id"].to_pylist()], dtype=np.int64)


def canonical_values(table: pa.Table) -> np.ndarray:
    value = table["value"].to_numpy().copy()
    sensors = table["sensor_type"].to_pylist()
    units = table["unit"].to_pylist()
    for i, (s, u) in enumerate(zip(sensors, units)):
        scale, offset = SENSORS[s].conversions[u or SENSORS[s].canonical_unit]
        value[i] = value[i] * scale + offset
    return value


def rows_of(table: pa.Table, device_id: str, sensor: str | None = None) -> pa.Table:
    mask = pc.equal(table["device_id"], device_id)
    if sensor:
        mask = pc.and_(mask, pc.equal(table["sensor_type"], sensor))
    return table.filter(mask)
