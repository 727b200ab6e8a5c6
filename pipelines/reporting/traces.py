"""Which failures the report traces, over which span and sensors, and which alerts go with them.
Pure logic on the ground truth's dicts and the alerts frame: no Beam, no lake IO, no matplotlib."""
from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass

import polars as pl

from simulation.incidents import ACUTE_MODES, GRADUAL_MODES


def alert_spans(alerts: pl.DataFrame) -> pl.DataFrame:
    """Adds ``until``: the end of the scored window a model alert stands for (its context's
    window_end); an acute alert's event time."""
    ends = []
    for t, ctx in zip(alerts.get_column("event_time").to_list(), alerts.get_column("context").to_list()):
        try:
            ends.append(dt.datetime.fromisoformat(json.loads(ctx)["window_end"]))
        except (TypeError, ValueError, KeyError):
            ends.append(t)
    return alerts.with_columns(until=pl.Series(ends, dtype=pl.Datetime("us", "UTC")))


def alerts_near(alerts: pl.DataFrame, device_id: str, lo: dt.datetime, hi: dt.datetime) -> pl.DataFrame:
    """The device's alerts whose event time (to ``until``, if given) overlaps [lo, hi]."""
    until = "until" if "until" in alerts.columns else "event_time"
    return alerts.filter((pl.col("device_id") == device_id) & (pl.col(until) >= lo) & (pl.col("event_time") <= hi))


def pick_trace_incidents(truth: list[dict], alerts: pl.DataFrame, active: set[str], limit: int = 7) -> list[dict]:
    """One failure per mode, most interesting first. Only devices whose readings reach clean data
    (``active`` registry devices), and acute modes from the stream where there is one (its
    seconds-apart readings show the event; the history's minutes-apart ones may miss it). Then:
    missed ones (no alert of the device around the failure), gradual ones (the batch path's early
    warning, ending in an acute phase), the rest; within a group in time order."""
    failures = [r for r in truth if r["kind"] == "failure" and r.get("category") in ("acute", "gradual")
                and r["device_id"] in active]

    def key(r: dict) -> tuple:
        near = alerts_near(alerts, r["device_id"], *trace_window(r, truth))
        acute_from_history = r["category"] == "acute" and r.get("source") != "stream"
        return (acute_from_history, near.height > 0, r["category"] != "gradual", r["start_s"])

    best: dict[str, tuple] = {}
    for r in failures:
        k = key(r)
        if r["mode"] not in best or k < best[r["mode"]][0]:
            best[r["mode"]] = (k, r)
    return [r for _, r in sorted(best.values(), key=lambda kr: kr[0])][:limit]


def follow_up(r: dict, truth: list[dict]) -> dict | None:
    """The acute failure a gradual one turns into."""
    for o in truth:
        if o["device_id"] == r["device_id"] and o.get("category") == "acute_after_gradual" and o["start_s"] == r["end_s"]:
            return o
    return None


def trace_window(r: dict, truth: list[dict], margin_s: float = 1800) -> tuple[dt.datetime, dt.datetime]:
    end = (follow_up(r, truth) or r)["end_s"]
    pad = max(margin_s, 0.15 * (end - r["start_s"])) if r["category"] == "gradual" else margin_s
    utc = dt.timezone.utc
    return dt.datetime.fromtimestamp(r["start_s"] - pad, utc), dt.datetime.fromtimestamp(end + pad, utc)


def trace_sensors(r: dict) -> list[str]:
    if r["category"] == "gradual":
        sensor, turns_into = GRADUAL_MODES[r["mode"]]
        return list(dict.fromkeys([sensor, ACUTE_MODES[turns_into][1]]))
    return [r["sensor"] or ACUTE_MODES[r["mode"]][1]]


@dataclass
class Trace:
    incident: dict
    follow_up: dict | None
    window: tuple[dt.datetime, dt.datetime]
    series: dict[str, pl.DataFrame]      # sensor -> timestamp_utc, value, quality
    alerts: pl.DataFrame


def figure_name(n: int, t: Trace) -> str:
    """The name of the n-th (from 1) trace's figure: its PNG file and the HTML image it shows as."""
    return f"trace_{n:02d}_{t.incident['mode']}_{t.incident['device_id']}"
