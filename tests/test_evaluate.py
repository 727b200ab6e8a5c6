"""evaluate: point-wise measures over judged windows, next to the incident table."""
from __future__ import annotations

import datetime as dt
import json

import pyarrow as pa
import pytest

from pipelines import evaluate as ev

T0 = dt.datetime(2026, 11, 1, tzinfo=dt.timezone.utc)
HOUR = dt.timedelta(hours=1)


def _scores(flags: dict[str, list[bool]]) -> pa.Table:
    rows = [(dev, T0 + k * HOUR, f) for dev, fl in flags.items() for k, f in enumerate(fl)]
    n = len(rows)
    return pa.table({
        "device_id": [r[0] for r in rows], "window_start": [r[1] for r in rows],
        "window_end": [r[1] + HOUR for r in rows], "model": ["statistical"] * n, "model_version": ["v0001"] * n,
        "score": [float(r[2]) for r in rows], "threshold": [0.5] * n, "is_anomaly": [r[2] for r in rows],
        "scored_at": [T0] * n})


def _incident(device: str, start_h: float, end_h: float, kind="failure", mode="cooling_loss", category="acute"):
    s, e = T0 + start_h * HOUR, T0 + end_h * HOUR
    return {"kind": kind, "mode": mode, "category": category, "device_id": device, "start": s.isoformat(),
            "end": e.isoformat(), "start_s": s.timestamp(), "end_s": e.timestamp()}


def test_pointwise_counts_every_judged_window_once_and_leaves_data_faults_out():
    # dev-a: failure over windows 2-3 (flagged: 3 and a false alarm at 0); dev-b: normal, a data fault
    # over window 1 (flagged there: neither a false nor a true alarm), flagged at 4 (false alarm)
    scores = _scores({"dev-a": [True, False, False, True, False, False],
                      "dev-b": [False, True, False, False, True, False]})
    truth = [_incident("dev-a", 2, 4), _incident("dev-b", 1, 2, kind="data_fault", mode="stuck_value")]

    pw = ev.evaluate(scores, truth)["models"]["statistical"]["pointwise"]

    assert (pw["tp"], pw["fp"], pw["fn"], pw["tn"]) == (1, 2, 1, 7)
    assert pw["f1"] == 2 * 1 / (2 * 1 + 2 + 1)
    assert pw["false_alarm_rate"] == 2 / 9
    assert pw["missed_alarm_rate"] == 1 / 2


def test_render_shows_the_pointwise_table_and_counts_skipped_incidents_by_mode():
    scores = _scores({"dev-a": [False, True, True, False]})
    truth = [_incident("dev-a", 1, 3), _incident("dev-a", -5, -4), _incident("dev-b", -9, -8),
             _incident("dev-c", -7, -6, mode="pressure_drop")]

    text = ev.render(ev.evaluate(scores, truth))

    assert "| statistical      | 1.000 | 0.00% | 0.00% | 2 | 0 | 0 | 2 |" in text
    assert text.endswith("not judged (started before the scored span, listed in the JSON report): 3: "
                         "cooling_loss 2, pressure_drop 1")


def test_the_ground_truth_folder_holds_the_live_streams_failures_too(tmp_path):
    """The stream's acute failures happen in the scored span: judged without them, the windows they
    flag would count as false positives."""
    history, live = _incident("dev-a", 0, 1), _incident("dev-b", 2, 3, mode="current_spike")
    for name, record in (("backfill.jsonl", history), ("stream.jsonl", live)):
        (tmp_path / name).write_text(json.dumps({k: v for k, v in record.items() if not k.endswith("_s")}) + "\n")
    truth = ev.load_truth(tmp_path)
    assert [(r["source"], r["device_id"], r["start_s"]) for r in truth] == [
        ("backfill", "dev-a", history["start_s"]), ("stream", "dev-b", live["start_s"])]
    scores = _scores({"dev-a": [False] * 4, "dev-b": [False, False, True, False]})
    assert ev.evaluate(scores, truth)["models"]["statistical"]["false_positive_windows"] == 0
    assert ev.evaluate(scores, ev.load_truth(tmp_path / "backfill.jsonl"))["models"]["statistical"][
        "false_positive_windows"] == 1
    with pytest.raises(SystemExit, match="no ground truth"):
        ev.load_truth(tmp_path / "missing")
