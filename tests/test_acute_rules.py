"""The acute-rule engine on one device: thresholds, event time, lateness, suppression, warm-up."""
from __future__ import annotations

import datetime as dt
from collections import Counter

import numpy as np
import pytest
import yaml

from core.acute_rules import DEFAULT_CONFIG, Batch, DeviceStates, RuleConfig, alert_id, evaluate

T0 = int(dt.datetime(2026, 11, 20, tzinfo=dt.timezone.utc).timestamp() * 1_000_000)
S = 1_000_000
NOW = dt.datetime(2026, 11, 20, 12, tzinfo=dt.timezone.utc)
CONFIG = RuleConfig.load()


class Device:
    """Feeds readings one message at a time, as they would arrive, and collects alerts."""

    def __init__(self, model: str | None = "CX-200", rated: float | None = 20.0, config: RuleConfig = CONFIG):
        self.state = DeviceStates.empty(["dev-1"])
        self.model, self.rated, self.config = model, rated, config
        self.alerts: list[dict] = []
        self.counts: Counter = Counter()

    def send(self, *readings: tuple[str, str, float, float]) -> "Device":
        """readings: (event_id, sensor, seconds after T0, canonical value), in one batch."""
        ids, sensors, t, v = zip(*readings)
        n = len(ids)
        batch = Batch(np.array(["dev-1"] * n, object), np.array(ids, object), np.array(sensors, object),
                      T0 + (np.array(t) * S).astype(np.int64), np.array(v, float), np.array([self.model] * n, object),
                      np.full(n, np.nan if self.rated is None else self.rated))
        self.state, alerts, counts = evaluate(self.state, batch, self.config, NOW)
        self.alerts += alerts
        self.counts += counts
        return self

    def each(self, sensor: str, series: list[tuple[float, float]], prefix: str = "r") -> "Device":
        for n, (sec, value) in enumerate(series):
            self.send((f"{prefix}{n}", sensor, sec, value))
        return self

    def fired(self) -> list[tuple[str, str]]:
        return [(a["rule"], a["event_id"]) for a in self.alerts]


CUR = "compressor_current"


# --- CURRENT_SPIKE: 1.5 x rated (20 A -> 30 A), two consecutive readings within 30 s ---------

def test_current_spike_fires_at_the_second_reading_above():
    d = Device().each(CUR, [(0, 25), (10, 31), (20, 31), (30, 31)])
    assert d.fired() == [("CURRENT_SPIKE", "r2")]
    [a] = d.alerts
    assert a["threshold"] == 30.0 and a["value"] == 31.0 and a["severity"] == "CRITICAL"
    assert a["alert_id"] == alert_id("dev-1", "CURRENT_SPIKE", "r2")
    assert a["event_time"] == dt.datetime(2026, 11, 20, 0, 0, 20, tzinfo=dt.timezone.utc)


def test_current_spike_not_at_or_below_threshold_nor_far_apart():
    assert Device().each(CUR, [(0, 31), (10, 30.0), (20, 31)]).fired() == []
    assert Device().each(CUR, [(0, 31), (30.001, 31)]).fired() == []
    assert Device().each(CUR, [(0, 31), (30, 31)]).fired() == [("CURRENT_SPIKE", "r1")]


def test_current_spike_needs_a_rated_current():
    assert Device(rated=None).each(CUR, [(0, 99), (10, 99)]).fired() == []


def test_out_of_order_within_lateness_is_handled_in_event_time():
    d = Device().each(CUR, [(0, 25)])
    d.send(("b", CUR, 20, 31))          # arrives first
    d.send(("a", CUR, 10, 31))          # 10 s older, inside the lateness: pairs with b
    assert d.fired() == [("CURRENT_SPIKE", "b")]
    assert d.counts["late"] == 0


def test_too_late_readings_are_counted_and_not_evaluated():
    d = Device().each(CUR, [(0, 25), (700, 25)])
    d.send(("x", CUR, 10, 31)).send(("y", CUR, 20, 31))   # 11+ minutes behind the newest reading
    assert d.fired() == [] and d.counts["late"] == 2


def test_duplicate_readings_do_not_pair_with_themselves():
    d = Device().each(CUR, [(0, 25)])
    d.send(("s", CUR, 10, 31)).send(("s", CUR, 10, 31))
    assert d.fired() == [] and d.counts["duplicates"] == 1


def test_suppression_for_ten_minutes_then_rearm_after_clearing():
    d = Device()
    series = [(s, 31) for s in range(0, 130, 10)]        # above for 2 minutes: one alert, at 10 s
    series += [(130, 25), (200, 31), (210, 31)]          # clears, returns 200 s after the alert: suppressed
    series += [(300, 25), (700, 31), (710, 31)]          # clears, returns 700 s after it: fires again
    d.each(CUR, series)
    assert [(a["event_time"] - d.alerts[0]["event_time"]).total_seconds() for a in d.alerts] == [0, 700]
    assert d.alerts[0]["event_time"].second == 10


def test_continuous_condition_does_not_refire_without_clearing():
    d = Device().each(CUR, [(s, 31) for s in range(0, 1800, 10)])      # 30 minutes above, never clears
    assert len(d.alerts) == 1


def test_per_model_override_through_the_registry_model():
    raw = yaml.safe_load(DEFAULT_CONFIG.read_text())
    raw["models"] = {"BIG-1": {"current_spike": {"rated_current_factor": 2.0}}}
    config = RuleConfig(raw)
    series = [(0, 31), (10, 35), (20, 41), (30, 42)]
    assert Device(model="BIG-1", config=config).each(CUR, series).fired() == [("CURRENT_SPIKE", "r3")]
    assert Device(model="CX-200", config=config).each(CUR, series).fired() == [("CURRENT_SPIKE", "r1")]


def test_unknown_override_key_is_a_configuration_error():
    raw = yaml.safe_load(DEFAULT_CONFIG.read_text())
    raw["models"] = {"X": {"current_spikes": {}}}
    with pytest.raises(ValueError, match="unknown keys"):
        RuleConfig(raw)


# --- PRESSURE_DROP: >= 35 % and >= 100 kPa below the max of the trailing 60 s -----------------

SUC = "suction_pressure"


def test_pressure_drop_fires_at_the_crossing_reading():
    d = Device().each(SUC, [(0, 400), (10, 398), (20, 300), (30, 260)])
    assert d.fired() == [("PRESSURE_DROP", "r3")]
    assert d.alerts[0]["threshold"] == 260.0


def test_pressure_drop_needs_both_fraction_and_kpa():
    assert Device().each(SUC, [(0, 400), (10, 260.5)]).fired() == []                  # 34.9 %
    assert Device().each(SUC, [(0, 250), (10, 155)]).fired() == []                    # 38 % but 95 kPa
    assert Device().each(SUC, [(0, 250), (10, 150)]).fired() == [("PRESSURE_DROP", "r1")]


def test_pressure_drop_window_is_sixty_seconds():
    assert Device().each(SUC, [(0, 400), (61, 250)]).fired() == []
    assert Device().each(SUC, [(0, 400), (59, 250)]).fired() == [("PRESSURE_DROP", "r1")]


# --- VIBRATION_SURGE: > 3 x the 24 h moving average, after 1 h of data ----------------------

VIB = "vibration"


def _baseline(minutes: int) -> list[tuple[float, float]]:
    return [(m * 60.0, 2.0) for m in range(minutes)]


def test_vibration_surge_fires_above_three_times_the_average():
    assert Device().each(VIB, _baseline(61) + [(61 * 60, 6.0)]).fired() == []
    d = Device().each(VIB, _baseline(61) + [(61 * 60, 6.01)])
    assert d.fired() == [("VIBRATION_SURGE", "r61")]
    assert d.alerts[0]["threshold"] == pytest.approx(6.0)


def test_vibration_warm_up_needs_one_hour_of_history():
    assert Device().each(VIB, _baseline(50) + [(50 * 60, 20.0)]).fired() == []
    assert Device().each(VIB, _baseline(59) + [(59 * 60 + 59, 20.0)]).fired() == []
    assert Device().each(VIB, _baseline(60) + [(60 * 60, 20.0)]).fired() == [("VIBRATION_SURGE", "r60")]


def test_vibration_average_spans_24_hours():
    # a high day-old level has left the window: the average is the recent 1.0
    series = [(h * 3600.0, 10.0) for h in range(0, 3)] + [(h * 3600.0, 1.0) for h in range(3, 28)]
    series.append((28 * 3600.0, 3.5))
    assert Device().each(VIB, series).fired() == [("VIBRATION_SURGE", f"r{len(series) - 1}")]


# --- COOLING_LOSS: slope over the trailing 5 min (>= 5 readings) above 0.5 C/min -------------

TMP = "temperature"


def test_cooling_loss_fires_when_the_slope_passes_the_limit():
    rising = [(30.0 * k, 3.0 + 0.3 * k) for k in range(8)]          # +0.6 C/min from the start
    d = Device().each(TMP, rising)
    assert d.fired() == [("COOLING_LOSS", "r4")]                     # the fifth reading
    assert d.alerts[0]["value"] == pytest.approx(0.6) and d.alerts[0]["threshold"] == 0.5


def test_cooling_loss_not_below_the_limit_or_with_too_few_readings():
    assert Device().each(TMP, [(30.0 * k, 3.0 + 0.245 * k) for k in range(12)]).fired() == []   # 0.49 C/min
    assert Device().each(TMP, [(60.0 * k, 3.0 + 2 * k) for k in range(4)]).fired() == []       # 4 readings


def test_cooling_loss_model_override_for_freezers():
    rising = [(30.0 * k, -20.0 + 0.35 * k) for k in range(10)]      # +0.7 C/min
    assert Device(model="CX-200").each(TMP, rising).fired() == [("COOLING_LOSS", "r4")]
    assert Device(model="FZ-500").each(TMP, rising).fired() == []    # limit 0.8 for freezers


def test_one_batch_equals_one_reading_at_a_time():
    readings = [(f"c{k}", CUR, 10.0 * k, 31.0 if 3 <= k <= 5 else 25.0) for k in range(10)]
    readings += [(f"p{k}", SUC, 10.0 * k, 400.0 if k < 6 else 200.0) for k in range(10)]
    one_by_one = Device()
    for r in readings:
        one_by_one.send(r)
    batched = Device().send(*readings)
    assert batched.fired() == one_by_one.fired() == [("CURRENT_SPIKE", "c4"), ("PRESSURE_DROP", "p6")]
