"""Reference: the per-device acute-rule engine this project ran before the columnar one
(core/acute_rules.py), kept to check the new engine against (tests/test_acute_equivalence.py).

It is the old `evaluate_device` unchanged except for three parameters taken from the new engine's
thresholds, so that both keep the same bounded state: vibration buckets of `vibration_bucket_us`
(was one minute), raw history of each rule's window plus `slack_us` (was plus the lateness), and
event ids remembered for `dedup_us` behind the newest reading (was: the lateness, once over 64).
"""
from __future__ import annotations

import datetime as dt
import json
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from core.acute_rules import NEVER, US, MINUTE_US, Thresholds, alert_id

# DESIGN section 5's rules and their sensors: the reference's own list, so a rule added to the engine
# (core.acute_rules.RULES) needs no change here; the equivalence test compares these rules' alerts
RULE_SENSOR = {"CURRENT_SPIKE": "compressor_current", "PRESSURE_DROP": "suction_pressure",
               "VIBRATION_SURGE": "vibration", "COOLING_LOSS": "temperature"}
RULES = tuple(RULE_SENSOR)

# --- state ---------------------------------------------------------------------------------

def _empty_history() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return np.empty(0, np.int64), np.empty(0, np.float64), np.empty(0, object)


@dataclass
class RuleState:
    fired: list[int] = field(default_factory=list)              # event times of alerts
    cleared: list[int | None] = field(default_factory=list)     # first false after each alert


@dataclass
class DeviceState:
    max_t: int = NEVER
    recent_ids: dict[str, int] = field(default_factory=dict)
    history: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = field(default_factory=dict)
    vib_minutes: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    vib_sums: np.ndarray = field(default_factory=lambda: np.empty(0, np.float64))
    vib_counts: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    vib_first: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    rules: dict[str, RuleState] = field(default_factory=lambda: {r: RuleState() for r in RULES})


@dataclass(frozen=True)
class DeviceInfo:
    device_id: str
    model: str | None
    rated_current_a: float | None


# --- evaluation ----------------------------------------------------------------------------

@dataclass
class _Series:
    """One sensor's merged history and new readings, sorted by time; `start` is the first row to
    evaluate (the earliest new reading): rows before it were evaluated in earlier batches."""
    t: np.ndarray
    v: np.ndarray
    ids: np.ndarray
    start: int


def _merge_series(old, t, v, ids) -> _Series:
    ot, ov, oi = old
    all_t, all_v, all_i = np.concatenate([ot, t]), np.concatenate([ov, v]), np.concatenate([oi, ids])
    order = np.argsort(all_t, kind="stable")
    all_t, all_v, all_i = all_t[order], all_v[order], all_i[order]
    return _Series(all_t, all_v, all_i, int(np.searchsorted(all_t, t.min(), "left")))


def _current_spike(s: _Series, th: Thresholds, info: DeviceInfo):
    if info.rated_current_a is None:
        return None
    limit = th.current_factor * info.rated_current_a
    i = np.arange(max(s.start, 1), len(s.t))
    cond = (s.v[i] > limit) & (s.v[i - 1] > limit) & (s.t[i] - s.t[i - 1] <= th.current_gap_us)
    context = lambda k: {"previous_value": float(s.v[k - 1]), "gap_seconds": (s.t[k] - s.t[k - 1]) / US,  # noqa: E731
                         "rated_current_a": info.rated_current_a}
    return i, cond, np.full(len(i), limit), context


def _pressure_drop(s: _Series, th: Thresholds, info: DeviceInfo):
    i = np.arange(s.start, len(s.t))
    lo = np.searchsorted(s.t, s.t[i] - th.pressure_window_us, "left")
    window_max = np.array([s.v[a:b].max() if b > a else np.nan for a, b in zip(lo, i)])
    limit = np.minimum(window_max * (1 - th.pressure_fraction), window_max - th.pressure_kpa)
    with np.errstate(invalid="ignore"):
        cond = ~np.isnan(window_max) & (s.v[i] <= limit)
    context = lambda k: {"window_max": float(window_max[k - s.start]),  # noqa: E731
                         "drop_kpa": float(window_max[k - s.start] - s.v[k])}
    return i, cond, limit, context


def _cooling_loss(s: _Series, th: Thresholds, info: DeviceInfo):
    i = np.arange(s.start, len(s.t))
    x = (s.t - s.t[0]) / MINUTE_US
    y = s.v

    def prefix(a):
        return np.concatenate([[0.0], np.cumsum(a)])
    cn, cx, cy, cxy, cxx = prefix(np.ones_like(x)), prefix(x), prefix(y), prefix(x * y), prefix(x * x)
    lo = np.searchsorted(s.t, s.t[i] - th.cooling_window_us, "left")
    hi = i + 1
    n, sx, sy = cn[hi] - cn[lo], cx[hi] - cx[lo], cy[hi] - cy[lo]
    sxy, sxx = cxy[hi] - cxy[lo], cxx[hi] - cxx[lo]
    denominator = n * sxx - sx * sx
    with np.errstate(invalid="ignore", divide="ignore"):
        slope = np.where(denominator > 0, (n * sxy - sx * sy) / denominator, np.nan)
        cond = (n >= th.cooling_min_readings) & (slope > th.cooling_slope_per_minute)
    context = lambda k: {"readings": int(n[k - s.start]), "temperature": float(s.v[k]),  # noqa: E731
                         "window_seconds": th.cooling_window_us / US}
    # for this rule the alert's value is the slope, compared with the slope limit
    return i, cond, np.full(len(i), th.cooling_slope_per_minute), context, slope


def _add_vibration(state: DeviceState, t: np.ndarray, v: np.ndarray, th: Thresholds) -> None:
    minutes = np.concatenate([state.vib_minutes, t // th.vibration_bucket_us])
    sums = np.concatenate([state.vib_sums, v])
    counts = np.concatenate([state.vib_counts, np.ones(len(t), np.int64)])
    firsts = np.concatenate([state.vib_first, t])
    keys, inverse = np.unique(minutes, return_inverse=True)
    state.vib_minutes = keys
    state.vib_sums = np.bincount(inverse, weights=sums, minlength=len(keys))
    state.vib_counts = np.bincount(inverse, weights=counts, minlength=len(keys)).astype(np.int64)
    first = np.full(len(keys), np.iinfo(np.int64).max)
    np.minimum.at(first, inverse, firsts)
    state.vib_first = first


def _vibration_surge(state: DeviceState, t: np.ndarray, v: np.ndarray, th: Thresholds):
    m = t // th.vibration_bucket_us
    lo = np.searchsorted(state.vib_minutes, m - th.vibration_window_buckets, "left")
    hi = np.searchsorted(state.vib_minutes, m, "left")          # whole minutes before the reading's
    cs = np.concatenate([[0.0], np.cumsum(state.vib_sums)])
    cc = np.concatenate([[0], np.cumsum(state.vib_counts)])
    total, count = cs[hi] - cs[lo], cc[hi] - cc[lo]
    earliest = np.where(hi > lo, state.vib_first[np.minimum(lo, len(state.vib_first) - 1)], t)
    with np.errstate(invalid="ignore", divide="ignore"):
        average = np.where(count > 0, total / count, np.nan)
        cond = (count > 0) & (t - earliest >= th.vibration_history_us) & (v > th.vibration_factor * average)
    return cond, th.vibration_factor * average, average, (t - earliest) / MINUTE_US / 60


def _fire(state: RuleState, t: np.ndarray, cond: np.ndarray, th: Thresholds) -> np.ndarray:
    """Applies suppression and re-arming to condition flags in time order; returns the rows that fire."""
    fires = np.zeros(len(t), bool)
    false_t = t[~cond]
    for k in np.flatnonzero(cond):
        tk = t[k]
        _record_clearing(state, false_t[false_t < tk])
        if any(abs(tk - f) < th.suppression_us for f in state.fired):
            continue
        before = [(f, c) for f, c in zip(state.fired, state.cleared) if f < tk]
        if before and (before[-1][1] is None or before[-1][1] > tk):
            continue   # fired before and not cleared since: not re-armed
        state.fired.append(int(tk))
        state.cleared.append(None)
        order = np.argsort(state.fired, kind="stable")
        state.fired = [state.fired[o] for o in order]
        state.cleared = [state.cleared[o] for o in order]
        fires[k] = True
    _record_clearing(state, false_t)
    return fires


def _record_clearing(state: RuleState, false_t: np.ndarray) -> None:
    for n, (f, c) in enumerate(zip(state.fired, state.cleared)):
        if c is None:
            later = false_t[false_t > f]
            if len(later):
                state.cleared[n] = int(later.min())


@dataclass
class Readings:
    """One device's new readings, in arrival order, values in canonical units, times in UTC us."""
    event_id: np.ndarray
    sensor: np.ndarray
    t: np.ndarray
    value: np.ndarray


def evaluate_device(state: DeviceState, info: DeviceInfo, th: Thresholds, new: Readings,
                    detected_at: dt.datetime) -> tuple[list[dict], Counter]:
    """Updates the device's state with new readings; returns the alerts fired and counts."""
    counts: Counter = Counter()
    running = np.maximum.accumulate(np.concatenate([[state.max_t], new.t]))[:-1]
    late = new.t < running - th.lateness_us
    seen, duplicate = state.recent_ids, np.zeros(len(new.t), bool)
    for k, event_id in enumerate(new.event_id):
        if event_id in seen:
            duplicate[k] = True
        elif not late[k]:
            seen[event_id] = int(new.t[k])
    counts["late"] += int(late.sum())
    counts["duplicates"] += int((duplicate & ~late).sum())
    keep = ~late & ~duplicate
    if len(new.t):
        state.max_t = max(state.max_t, int(new.t.max()))
    counts["evaluated"] += int(keep.sum())
    alerts: list[dict] = []
    for rule in RULES:
        sensor = RULE_SENSOR[rule]
        rows = keep & (new.sensor == sensor)
        if not rows.any():
            continue
        t, v, ids = new.t[rows], new.value[rows], new.event_id[rows]
        if rule == "VIBRATION_SURGE":
            _add_vibration(state, t, v, th)
            order = np.argsort(t, kind="stable")
            t, v, ids = t[order], v[order], ids[order]
            cond, limit, average, hours = _vibration_surge(state, t, v, th)
            for k in np.flatnonzero(_fire(state.rules[rule], t, cond, th)):
                alerts.append(_alert(info, rule, ids[k], t[k], v[k], limit[k], detected_at,
                                     {"moving_average": float(average[k]), "hours_of_data": float(hours[k])}))
            continue
        series = _merge_series(state.history.get(sensor, _empty_history()), t, v, ids)
        result = {"CURRENT_SPIKE": _current_spike, "PRESSURE_DROP": _pressure_drop,
                  "COOLING_LOSS": _cooling_loss}[rule](series, th, info)
        if result is not None:
            i, cond, limit, context, *slope = result
            for k in np.flatnonzero(_fire(state.rules[rule], series.t[i], cond, th)):
                row = i[k]
                value = slope[0][k] if slope else series.v[row]
                alerts.append(_alert(info, rule, series.ids[row], series.t[row], value, limit[k], detected_at,
                                     context(row)))
        keep_from = np.searchsorted(series.t, state.max_t - th.history_us[sensor], "left")
        state.history[sensor] = (series.t[keep_from:], series.v[keep_from:], series.ids[keep_from:])
    _trim(state, th)
    for a in alerts:
        counts[f"alerts_{a['rule']}"] += 1
    return alerts, counts


def _trim(state: DeviceState, th: Thresholds) -> None:
    state.recent_ids = {e: t for e, t in state.recent_ids.items() if t >= state.max_t - th.dedup_us}
    oldest_minute = (state.max_t - th.lateness_us) // th.vibration_bucket_us - th.vibration_window_buckets - 1
    if len(state.vib_minutes) and state.vib_minutes[0] < oldest_minute:
        k = np.searchsorted(state.vib_minutes, oldest_minute, "left")
        state.vib_minutes, state.vib_sums = state.vib_minutes[k:], state.vib_sums[k:]
        state.vib_counts, state.vib_first = state.vib_counts[k:], state.vib_first[k:]
    keep_alerts = state.max_t - th.vibration_window_buckets * th.vibration_bucket_us
    for r in state.rules.values():
        while len(r.fired) > 1 and r.fired[0] < keep_alerts:
            r.fired.pop(0)
            r.cleared.pop(0)


def _alert(info: DeviceInfo, rule: str, event_id: str, t: int, value: float, threshold: float,
           detected_at: dt.datetime, context: dict) -> dict:
    return {
        "alert_id": alert_id(info.device_id, rule, str(event_id)),
        "device_id": info.device_id,
        "rule": rule,
        "severity": "CRITICAL",
        "event_time": dt.datetime.fromtimestamp(int(t) / US, dt.timezone.utc),
        "detected_at": detected_at,
        "value": float(value),
        "threshold": float(threshold),
        "context": json.dumps({k: round(v, 6) if isinstance(v, float) else v for k, v in context.items()},
                              sort_keys=True),
        "event_id": str(event_id),
    }
