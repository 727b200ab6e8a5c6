"""Model alerts an operator can act on (issue 14 item 7): consecutive anomalous windows of a device are
one incident, opened once, escalated WARNING -> HIGH once as it worsens or persists, closed when the
device is normal again, with its top contributing sensors; deterministic ids, also across runs."""
from __future__ import annotations

import dataclasses
import datetime as dt
import json

import apache_beam as beam
import pyarrow as pa
from apache_beam.testing.test_pipeline import TestPipeline
from apache_beam.testing.util import assert_that, equal_to

from transforms.scoring import CLOSED, ESCALATED, OPEN, IncidentPolicy, _Incidents, incident_alert_id, incident_rows

UTC = dt.timezone.utc
T0 = dt.datetime(2026, 10, 1, tzinfo=UTC)
AT = dt.datetime(2026, 10, 5, tzinfo=UTC)
H = dt.timedelta(hours=1)
POLICY = IncidentPolicy(high_factor=2.0, open_after=1, escalate_after=4, gap=1, top_k=3)
KW = dict(window_s=3600.0, policy=POLICY, detected_at=AT)


def windows(marks: str, device_tops=("vibration_max", "vibration_std", "temperature_mean"), offset: int = 0):
    """One window per character from T0 + offset hours: '.' normal, 'w' anomalous (score 1.5), 'h' HIGH (2.5),
    ' ' no window (not scored)."""
    out = []
    for i, c in enumerate(marks):
        if c == " ":
            continue
        start = T0 + (offset + i) * H
        w = {"window_start": start, "window_end": start + H, "anomalous": c != "."}
        if c != ".":
            w.update(score=1.5 if c == "w" else 2.5, top_features=list(device_tops))
        out.append(w)
    return out


def summary(rows: list[dict]) -> list[tuple]:
    out = []
    for r in rows:
        c = json.loads(r["context"])
        out.append((c["status"], r["severity"], r["event_time"], c["first_window_start"], c["windows"],
                    c["reason"], tuple(c["top_sensors"])))
    return out


def test_one_incident_opened_once_escalated_once_and_closed():
    rows, open_ = incident_rows("d1", windows("..ww.whwww..w.."), None, **KW)
    first, second = T0 + 2 * H, T0 + 12 * H
    assert summary(rows) == [
        (OPEN, "WARNING", first, first.isoformat(), 1, "score", ("vibration", "temperature")),
        (ESCALATED, "HIGH", T0 + 6 * H, first.isoformat(), 4, "score", ("vibration", "temperature")),
        (CLOSED, "HIGH", T0 + 11 * H, first.isoformat(), 7, "normal", ("vibration", "temperature")),
        (OPEN, "WARNING", second, second.isoformat(), 1, "score", ("vibration", "temperature")),
        (CLOSED, "WARNING", T0 + 14 * H, second.isoformat(), 1, "normal", ("vibration", "temperature")),
    ]
    assert open_ is None
    assert [r["alert_id"] for r in rows] == [incident_alert_id("d1", first, s) for s in (OPEN, ESCALATED, CLOSED)] + \
        [incident_alert_id("d1", second, s) for s in (OPEN, CLOSED)]
    assert [r["value"] for r in rows] == [1.5, 2.5, 2.5, 1.5, 1.5]
    assert [r["threshold"] for r in rows] == [1.0, 2.0, 2.0, 1.0, 1.0]
    ctx = json.loads(rows[0]["context"])
    assert ctx["incident_id"] == incident_alert_id("d1", first, OPEN) == json.loads(rows[2]["context"])["incident_id"]


def test_escalation_by_persistence_and_an_incident_opened_high():
    rows, open_ = incident_rows("d1", windows("wwwww"), None, **KW)
    assert [(s[0], s[1], s[2], s[5]) for s in summary(rows)] == [
        (OPEN, "WARNING", T0, "score"), (ESCALATED, "HIGH", T0 + 3 * H, "persisted")]
    assert (open_.windows, open_.level, open_.last_end, open_.seen_until) == (5, 2, T0 + 5 * H, T0 + 4 * H)
    rows, _ = incident_rows("d1", windows("hww.."), None, **KW)
    assert [(s[0], s[1]) for s in summary(rows)] == [(OPEN, "HIGH"), (CLOSED, "HIGH")]


def test_an_incident_continues_across_runs_with_the_same_ids():
    all_at_once, _ = incident_rows("d1", windows("wwh..", ("suction_pressure_min", "pressure_ratio")), None, **KW)
    first_rows, open_ = incident_rows("d1", windows("ww", ("suction_pressure_min", "pressure_ratio")), None, **KW)
    later = windows("wwh..", ("suction_pressure_min", "pressure_ratio"))
    second_rows, closed = incident_rows("d1", later, open_, **KW)     # the first two windows again: skipped
    assert closed is None and open_.windows == 2       # the prior is not changed in place
    assert [r["alert_id"] for r in first_rows + second_rows] == [r["alert_id"] for r in all_at_once]
    assert [summary([r])[0][:3] for r in first_rows + second_rows] == [
        (OPEN, "WARNING", T0), (ESCALATED, "HIGH", T0 + 2 * H), (CLOSED, "HIGH", T0 + 4 * H)]
    # a cross feature names its sensors: suction pressure leads (in every window's first place)
    assert summary(second_rows)[-1][6] == ("suction_pressure", "discharge_pressure")


def test_a_normal_window_inside_the_gap_does_not_close_it():
    rows, open_ = incident_rows("d1", windows("w."), None, **KW)
    assert [s[0] for s in summary(rows)] == [OPEN] and open_.seen_until == T0 + H


def test_gaps_within_episode_gap_and_windows_not_scored():
    # one normal window inside the gap continues the incident; two windows missing (not scored) do not
    # close it, the next anomalous window beyond the gap opens a new one
    rows, _ = incident_rows("d1", windows("w.w  w"), None, **KW)
    assert [(s[0], s[2]) for s in summary(rows)] == [(OPEN, T0), (CLOSED, T0 + 5 * H), (OPEN, T0 + 5 * H)]


def test_a_lone_anomalous_window_raises_nothing_when_incidents_open_after_two():
    kw = dict(KW, policy=dataclasses.replace(POLICY, open_after=2))
    rows, open_ = incident_rows("d1", windows("..w...w.."), None, **kw)
    assert rows == [] and open_ is None
    # two in a row open it, with the first window as its event time; a HIGH window opens it at once
    rows, _ = incident_rows("d1", windows("..ww...h.."), None, **kw)
    assert [(s[0], s[1], s[2], s[4], s[5]) for s in summary(rows)] == [
        (OPEN, "WARNING", T0 + 2 * H, 2, "persisted"), (CLOSED, "WARNING", T0 + 5 * H, 2, "normal"),
        (OPEN, "HIGH", T0 + 7 * H, 1, "score"), (CLOSED, "HIGH", T0 + 9 * H, 1, "normal")]
    assert rows[0]["alert_id"] == incident_alert_id("d1", T0 + 2 * H, OPEN)


def test_a_pending_incident_continues_across_runs():
    kw = dict(KW, policy=dataclasses.replace(POLICY, open_after=2))
    first_rows, pending = incident_rows("d1", windows("w"), None, **kw)
    assert first_rows == [] and (pending.level, pending.windows) == (0, 1)
    rows, _ = incident_rows("d1", windows("ww.."), pending, **kw)
    assert [(s[0], s[2], s[4]) for s in summary(rows)] == [(OPEN, T0, 2), (CLOSED, T0 + 3 * H, 2)]


def test_the_incidents_dofn_groups_normal_and_anomalous_windows_of_a_device():
    marks = windows("ww..")
    elements = [("d1", w) for w in marks if w["anomalous"]] + \
        [("d1", {"normal": [w for w in marks if not w["anomalous"]]})]
    with TestPipeline() as p:
        out = (p | beam.Create(elements) | beam.GroupByKey()
               | beam.ParDo(_Incidents(3600.0, POLICY, [], {}, AT))
               | beam.FlatMap(lambda t: [(r["alert_id"], r["severity"]) for r in t.to_pylist()]))
        assert_that(out, equal_to([(incident_alert_id("d1", T0, OPEN), "WARNING"),
                                   (incident_alert_id("d1", T0, CLOSED), "WARNING")]))


def test_evaluate_reports_incidents_per_1000_device_days_and_the_false_ones():
    from pipelines.evaluate import incident_alerts
    # 3 devices x 48 h of ensemble windows = 6 device-days
    scores = pa.Table.from_pylist([{"device_id": d, "model": "ensemble", "window_start": T0 + h * H,
                                    "window_end": T0 + (h + 1) * H} for d in ("a", "b", "c") for h in range(48)])
    rows = []
    for device, marks in (("a", "." * 10 + "wwwww.."), ("b", "." * 20 + "w.."), ("c", "ww.." + "." * 20 + "h..")):
        rows += incident_rows(device, windows(marks), None, **KW)[0]
    alerts = pa.Table.from_pylist(rows)
    iso = lambda h: (T0 + h * H).isoformat()  # noqa: E731
    truth = [{"kind": "failure", "mode": "bearing_wear", "category": "gradual", "device_id": "a",
              "start": iso(12), "end": iso(30)},
             {"kind": "data_fault", "mode": "out_of_range", "device_id": "b", "start": iso(20.5), "end": iso(20.6)},
             {"kind": "failure", "mode": "current_spike", "category": "acute", "device_id": "c",
              "start": iso(40), "end": iso(41)}]
    for r in truth:
        r["start_s"], r["end_s"] = (dt.datetime.fromisoformat(r[k]).timestamp() for k in ("start", "end"))
    report = incident_alerts(alerts, scores, truth, (T0.timestamp(), (T0 + 48 * H).timestamp()))
    # a: one incident (5 windows, escalated by persistence) on its failure; b: one on a data fault;
    # c: a false one at 0 h and a HIGH one at 24 h (no failure then)
    assert report == {"device_days": 6.0, "incidents": 4, "true": 1, "data_fault": 1, "false": 2, "high": 2,
                      "per_1000_device_days": 4000 / 6, "false_per_1000_device_days": 2000 / 6}
