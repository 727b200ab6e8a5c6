"""Run report of the main job: one self-contained HTML file (plots embedded as PNG) and a console
summary, from a lake and the simulator's ground truth. Exits 1 when a reconciliation check fails.

Sections:
  1. reconciliation, each number computed independently of the pipelines' own counters:
     stream  produced event ids (<ground_truth>/stream.produced.parquet) = ids landed by the
             streaming job (landing rows with Kafka coordinates) + ids the contract rejects;
             landed and rejected ids are disjoint; landed rows = produced good readings (copies
             included); dead-letter rows per reason = wire-fault messages per reason
             (stream.jsonl); every dead-lettered event id is a rejected one;
     lake    landed rows (backfill + stream, at the landing version the cleanse consumed) =
             clean + quarantined + duplicates removed, where duplicates removed = landed rows -
             distinct (device_id, event_id) among them (quarantined readings keep every copy, so
             their copies are not counted as removed); clean = distinct readings not quarantined;
             quarantine = every landed copy of its readings; clean keys unique; no clean or
             quarantined reading without a landed row; landing append-only since that version;
  2. sensor traces of one failing device per failure mode (clean table, canonical units) with
     acute (CRITICAL) and model (WARNING/HIGH) alerts and the incident span;
  3. alert timeline by rule; 4. anomaly score distributions with thresholds per model;
  5. detection quality against the ground truth (pipelines.evaluate);
  6. latency from arrival (landing timestamp_ingested of the triggering reading) to acute alert
     (detected_at), and which acute incidents of the stream got their expected rule's alert; both are
     checks that fail the run (an alert later than 2 minutes, an incident without its alert).

examples:
  python -m pipelines.report
  python -m pipelines.report --lake /tmp/rep/lake --out /tmp/rep/report.html --png_dir /tmp/rep/png
  python -m pipelines.report --started_at "$(date -u +%FT%TZ)" --title "nightly run"
"""
from __future__ import annotations

import argparse
import base64
import datetime as dt
import html
import io
import json
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.dataset as pads

from pipelines import cli
from pipelines import evaluate as ev
from pipelines.options import LakeOptions, declare
from pipelines.simulation.incidents import ACUTE_MODES, GRADUAL_MODES
from schemas import contracts
from schemas.sensors import SENSORS
from transforms import lake

log = logging.getLogger("report")

LANDING, CLEAN, QUARANTINE = "raw_sensor_readings", "clean_sensor_readings", "quarantine"
CLEANSE_APP = "cleanse"                  # transforms.cleansing.APP (not imported: it pulls in Beam IO)
KEY = ["device_id", "event_id"]
LATENCY_BUDGET_S = 120.0                 # DESIGN section 5: under 2 minutes from arrival to alert
OK, FAIL, INFO, SKIP = "OK", "FAIL", "INFO", "SKIP"


# --- reconciliation (pure) ----------------------------------------------------------------------

@dataclass(frozen=True)
class Check:
    section: str            # stream | lake
    name: str
    expected: object
    actual: object
    status: str             # OK | FAIL | INFO | SKIP
    detail: str = ""


def _check(section: str, name: str, expected, actual, detail: str = "") -> Check:
    return Check(section, name, expected, actual, OK if expected == actual else FAIL, detail)


def _ids(df: pl.DataFrame) -> pl.Series:
    return df.get_column("event_id").drop_nulls().unique()


def _minus(a: pl.Series, b: pl.Series, how: str = "anti") -> pl.Series:
    """Ids of ``a`` not in ``b`` (``how="semi"``: in ``b``)."""
    return a.to_frame("id").join(b.to_frame("id"), on="id", how=how).get_column("id")


def reconcile_stream(produced: pl.DataFrame | None, landed: pl.DataFrame, deadletter: pl.DataFrame,
                     wire_faults: list[dict] | None) -> list[Check]:
    """``produced``: event_id, kind, expected_reason (one row per reading sent, copies included);
    ``landed``: landing rows of the streaming job (event_id); ``deadletter``: reason, event_id,
    source; ``wire_faults``: the wire-fault incidents of stream.jsonl (one per message)."""
    s = "stream"
    if produced is None:
        return [Check(s, "produced readings", "-", landed.height, SKIP if landed.height == 0 else FAIL,
                      "no stream.produced.parquet: " + ("no stream was produced" if landed.height == 0
                                                         else "stream rows landed but what was produced is unknown"))]
    rejected = _ids(produced.filter(pl.col("expected_reason").is_not_null()))
    good_rows = produced.filter(pl.col("expected_reason").is_null()).height
    produced_ids, landed_ids = _ids(produced), _ids(landed)
    accounted = pl.concat([landed_ids, rejected]).unique()
    missing = _minus(produced_ids, accounted)
    unexpected = _minus(landed_ids, produced_ids)
    both = _minus(landed_ids, rejected, how="semi")
    checks = [
        Check(s, "produced ids = landed ids + rejected ids", produced_ids.len(), accounted.len(),
              OK if missing.len() == 0 and unexpected.len() == 0 else FAIL,
              f"{landed_ids.len():,} landed, {rejected.len():,} rejected by contract; "
              f"{missing.len():,} produced but neither landed nor rejected{_examples(missing)}, "
              f"{unexpected.len():,} landed but never produced{_examples(unexpected)}"),
        _check(s, "landed ids and rejected ids are disjoint", 0, both.len(), _examples(both).strip(" ()")),
        _check(s, "landed rows = produced good readings (copies included)", good_rows, landed.height,
               "duplicates and replays on the wire land as sent; cleansing removes them"),
    ]
    return checks + _deadletter_checks(deadletter.filter(pl.col("source") == "streaming"), rejected, wire_faults)


def _deadletter_checks(dead: pl.DataFrame, rejected: pl.Series, wire_faults: list[dict] | None) -> list[Check]:
    s = "stream"
    stray = _minus(_ids(dead), rejected)
    checks = [_check(s, "dead-lettered event ids are rejected ids", 0, stray.len(),
                     f"{_ids(dead).len():,} dead-letter rows carry an event id (whole-message rejects carry none)"
                     + _examples(stray))]
    if wire_faults is None:
        return checks + [Check(s, "dead-letter rows by reason", "-", dead.height, SKIP, "no stream.jsonl")]
    expected: dict[str, int] = {}
    for r in wire_faults:
        reason = r["detail"]["expected_reason"]
        expected[reason] = expected.get(reason, 0) + 1
    actual = dict(dead.group_by("reason").agg(pl.len().alias("n")).iter_rows())
    for reason in sorted(set(expected) | set(actual)):
        checks.append(_check(s, f"dead-letter rows: {reason}", expected.get(reason, 0), actual.get(reason, 0),
                             "one row per wire-fault message (a whole-message reject covers all its readings)"))
    return checks


def _examples(ids: pl.Series, n: int = 3) -> str:
    return f" (e.g. {', '.join(ids.head(n).to_list())})" if ids.len() else ""


@dataclass(frozen=True)
class LakeVersions:
    landing_latest: int
    clean_consumed: int | None       # newest landing version the clean table's cleanse commit consumed
    quarantine_consumed: int | None


def reconcile_lake(landing: pl.DataFrame, clean: pl.DataFrame, quarantine: pl.DataFrame, versions: LakeVersions,
                   landing_latest: pl.DataFrame | None = None) -> list[Check]:
    """``landing``: the landing rows (device_id, event_id) at the version the cleanse consumed;
    ``clean``/``quarantine``: their rows' keys; ``landing_latest``: the latest landing rows' keys,
    when newer than the consumed version (to check that landing stayed append-only)."""
    s = "lake"
    v = versions
    if v.clean_consumed is None:
        return [Check(s, "cleanse consumed landing", "-", "-", SKIP, "no cleanse commit in the clean table")]
    checks = [_consumed_check(v)]
    landed, distinct = landing.height, landing.select(KEY).unique()
    q_keys = quarantine.select(KEY).unique()
    landed_q = landing.join(q_keys, on=KEY, how="semi").height          # landed copies of quarantined readings
    distinct_q = distinct.join(q_keys, on=KEY, how="semi").height
    dups_removed = (landed - landed_q) - (distinct.height - distinct_q)
    clean_keys = clean.select(KEY).unique()
    orphans = pl.concat([clean_keys, q_keys]).unique().join(distinct, on=KEY, how="anti").height
    checks += [
        _check(s, "landed rows = clean + quarantined + duplicates removed", landed,
               clean.height + quarantine.height + dups_removed,
               f"landed {landed:,} (landing v{v.clean_consumed}), clean {clean.height:,}, quarantined "
               f"{quarantine.height:,}, duplicates removed {dups_removed:,} = landed - distinct (device_id, "
               f"event_id), quarantined copies kept ({landed_q - distinct_q:,})"),
        _check(s, "clean rows = distinct landed readings not quarantined", distinct.height - distinct_q, clean.height,
               f"{distinct.height:,} distinct (device_id, event_id) landed, {distinct_q:,} of them quarantined"),
        _check(s, "quarantined rows = landed copies of quarantined readings", landed_q, quarantine.height),
        _check(s, "clean (device_id, event_id) unique", clean.height, clean_keys.height),
        _check(s, "clean or quarantined readings without a landed row", 0, orphans),
    ]
    if landing_latest is not None:
        checks.append(_check(s, f"landing append-only since v{v.clean_consumed}", 0, _vanished(landing, landing_latest),
                             f"rows of landing v{v.clean_consumed} missing from v{v.landing_latest}"))
    return checks


def _vanished(before: pl.DataFrame, after: pl.DataFrame) -> int:
    """Rows (copies counted) of ``before`` that ``after`` no longer holds."""
    counts = [df.group_by(KEY).agg(pl.len().alias(n)) for df, n in ((before, "n_before"), (after, "n_after"))]
    joined = counts[0].join(counts[1], on=KEY, how="left").with_columns(pl.col("n_after").fill_null(0))
    return int((joined.get_column("n_before").cast(pl.Int64) - joined.get_column("n_after").cast(pl.Int64))
               .clip(lower_bound=0).sum())


def _consumed_check(v: LakeVersions) -> Check:
    if v.quarantine_consumed != v.clean_consumed:
        return Check("lake", "clean and quarantine consumed the same landing version", v.clean_consumed,
                     v.quarantine_consumed, FAIL, "a cleanse run was interrupted between its two commits; rerun it")
    lag = v.landing_latest - v.clean_consumed
    detail = (f"cleanse is up to date with landing v{v.landing_latest}" if lag == 0 else
              f"cleanse has not consumed landing v{v.clean_consumed + 1}..v{v.landing_latest}: "
              f"comparing against v{v.clean_consumed}, the version it consumed")
    return Check("lake", "landing version consumed by the cleanse", v.landing_latest, v.clean_consumed, INFO, detail)


def latency_checks(lat: Latency, incidents: IncidentMatch) -> list[Check]:
    """The seed's safety requirement as checks that fail the run: every acute incident of the stream
    gets its alert, each alert within the budget after its triggering reading arrived."""
    s = "latency"
    return [
        _check(s, "stream acute incidents with their rule's alert", incidents.incidents.height, incidents.alerted),
        _check(s, "acute alerts joined to the landing row of their triggering reading", lat.alerts, lat.joined),
        _check(s, f"acute alerts later than {lat.budget_s:.0f} s after arrival", 0, lat.over_budget,
               f"p50 {_s(lat.p50_s)}, p99 {_s(lat.p99_s)}, max {_s(lat.max_s)}"),
    ]


def failed(checks: list[Check]) -> list[Check]:
    return [c for c in checks if c.status == FAIL]


# --- latency and incident matching (pure) -------------------------------------------------------

@dataclass
class Latency:
    per_alert: pl.DataFrame      # acute alerts + arrived_at (first landing of the triggering reading), latency_s
    alerts: int                  # acute alerts
    joined: int                  # of those, with a landed triggering reading
    p50_s: float | None
    p99_s: float | None
    max_s: float | None
    over_budget: int             # alerts later than budget_s after arrival
    budget_s: float = LATENCY_BUDGET_S


def acute_latency(alerts: pl.DataFrame, landing: pl.DataFrame, budget_s: float = LATENCY_BUDGET_S) -> Latency:
    """detected_at - timestamp_ingested of the triggering reading, per CRITICAL alert. A reading that
    landed more than once (duplicates, replays) counts from its first arrival. p99: numpy's linear
    interpolation."""
    acute = alerts.filter(pl.col("severity") == "CRITICAL")
    arrived = (landing.join(acute.select(KEY).unique(), on=KEY, how="semi")
               .group_by(KEY).agg(pl.col("timestamp_ingested").min().alias("arrived_at")))
    per = (acute.join(arrived, on=KEY, how="left")
           .with_columns(latency_s=(pl.col("detected_at") - pl.col("arrived_at")).dt.total_microseconds() / 1e6)
           .sort("event_time"))
    lat = per.get_column("latency_s").drop_nulls().to_numpy()
    stat = (lambda f: float(f(lat)) if len(lat) else None)
    return Latency(per, acute.height, len(lat), stat(np.median), stat(lambda x: np.percentile(x, 99)), stat(np.max),
                   int((lat > budget_s).sum()), budget_s)


@dataclass
class IncidentMatch:
    incidents: pl.DataFrame        # acute incidents of the stream: device_id, mode, rule, start, end, alerted, delay_s
    unmatched_alerts: pl.DataFrame  # CRITICAL alerts that match no incident of the ground truth

    @property
    def alerted(self) -> int:
        return int(self.incidents.get_column("alerted").sum()) if self.incidents.height else 0


def match_incidents(alerts: pl.DataFrame, truth: list[dict], before_s: float = 60, after_s: float = 300) -> IncidentMatch:
    """An incident got its alert when a CRITICAL alert of its expected rule and device has its
    event time in [start - before_s, end + after_s]. Incidents counted: acute ones (also the acute
    end of a gradual failure) of the stream ground truth; alerts are matched against all of it."""
    acute = alerts.filter(pl.col("severity") == "CRITICAL")
    rows, matched = [], set()
    for r in (r for r in truth if r["kind"] == "failure" and r.get("expected_rule")):
        lo = dt.datetime.fromtimestamp(r["start_s"] - before_s, dt.timezone.utc)
        hi = dt.datetime.fromtimestamp(r["end_s"] + after_s, dt.timezone.utc)
        hits = acute.filter((pl.col("device_id") == r["device_id"]) & (pl.col("rule") == r["expected_rule"])
                            & (pl.col("event_time") >= lo) & (pl.col("event_time") <= hi))
        matched.update(hits.get_column("alert_id").to_list())
        if r.get("source") == "stream":
            first = hits.get_column("event_time").min() if hits.height else None
            rows.append({"device_id": r["device_id"], "mode": r["mode"], "rule": r["expected_rule"],
                         "category": r["category"], "start": r["start"], "end": r["end"], "alerted": hits.height > 0,
                         "delay_s": first.timestamp() - r["start_s"] if first else None})
    schema = {"device_id": pl.String, "mode": pl.String, "rule": pl.String, "category": pl.String, "start": pl.String,
              "end": pl.String, "alerted": pl.Boolean, "delay_s": pl.Float64}
    matched_ids = pl.DataFrame({"alert_id": sorted(matched)}, schema={"alert_id": pl.String})
    return IncidentMatch(pl.DataFrame(rows, schema=schema), acute.join(matched_ids, on="alert_id", how="anti"))


# --- which failures to trace (pure) -------------------------------------------------------------

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


# --- loading ------------------------------------------------------------------------------------

def load_truth(truth_dir: Path) -> list[dict]:
    rows = []
    for source in ("backfill", "stream"):
        path = truth_dir / f"{source}.jsonl"
        if path.exists():
            rows += [dict(r, source=source) for r in ev.load_truth(path)]
    return rows


def read_frame(lake_root: str, table: str, columns: list[str], version: int | None = None) -> pl.DataFrame:
    return pl.from_arrow(lake.read(lake_root, table, version, columns=columns))


def table_facts(lake_root: str) -> dict[str, tuple[int, int]]:
    """Delta table -> (version, rows), rows from the log's per-file record counts."""
    out = {}
    for name, t in contracts.TABLES.items():
        if t.format != "delta" or (table := lake.open_table(lake_root, name)) is None:
            continue
        actions = table.get_add_actions(flatten=True).to_pydict()
        out[name] = (table.version(), int(sum(actions.get("num_records", []) or [0])))
    return out


def consumed_version(lake_root: str, table: str) -> int | None:
    inputs = lake.last_inputs(lake_root, table, CLEANSE_APP) or {}
    span = inputs.get(LANDING)
    return int(span[1]) if span else None


@dataclass
class Trace:
    incident: dict
    follow_up: dict | None
    window: tuple[dt.datetime, dt.datetime]
    series: dict[str, pl.DataFrame]      # sensor -> timestamp_utc, value, quality
    alerts: pl.DataFrame


def read_trace(lake_root: str, r: dict, truth: list[dict], alerts: pl.DataFrame) -> Trace:
    lo, hi = trace_window(r, truth)
    sensors = trace_sensors(r)
    table = lake.open_table(lake_root, CLEAN)
    data = pl.DataFrame()
    if table is not None:
        ts = lambda d: pa.scalar(d, contracts.UTC_TS)  # noqa: E731
        expr = ((pads.field("device_id") == r["device_id"]) & pads.field("sensor_type").isin(sensors)
                & (pads.field("date") >= pa.scalar(lo.date(), pa.date32()))
                & (pads.field("date") <= pa.scalar(hi.date(), pa.date32()))
                & (pads.field("timestamp_utc") >= ts(lo)) & (pads.field("timestamp_utc") <= ts(hi)))
        data = pl.from_arrow(table.to_pyarrow_dataset().to_table(
            filter=expr, columns=["sensor_type", "timestamp_utc", "value", "quality"])).sort("timestamp_utc")
    series = {s: data.filter(pl.col("sensor_type") == s) if data.height else data for s in sensors}
    return Trace(r, follow_up(r, truth), (lo, hi), series, alerts_near(alerts, r["device_id"], lo, hi))


@dataclass
class ReportData:
    lake: str
    title: str
    truth_dir: Path
    facts: dict
    checks: list[Check]
    alerts: pl.DataFrame
    traces: list[Trace] = field(default_factory=list)
    window_size: str | None = None
    scores: pa.Table | None = None
    detection: dict | None = None
    detection_error: str | None = None
    latency: Latency | None = None
    incidents: IncidentMatch | None = None
    upkeep: dict | None = None                # pipelines.maintain's summary, if it ran


def gather(opts: argparse.Namespace) -> ReportData:
    root = opts.lake
    truth_dir = Path(opts.ground_truth_dir or Path(root.removeprefix("file://")).parent / "ground_truth")
    landing_table = lake.open_table(root, LANDING)
    if landing_table is None:
        raise SystemExit(f"report: no landing table under {root}")
    landing = read_frame(root, LANDING, KEY + ["kafka_topic", "timestamp_ingested"])
    alerts = alert_spans(read_frame(root, "alerts", ["alert_id", "device_id", "rule", "severity", "event_time",
                                                     "detected_at", "event_id", "context"]))
    truth = load_truth(truth_dir)
    checks = stream_checks(root, truth_dir, landing, truth) + lake_checks(root, landing_table.version(), landing)
    devices = read_frame(root, "devices", ["device_id", "active"])
    data = ReportData(root, opts.title, truth_dir, run_facts(root, landing, devices, opts), checks, alerts)
    data.latency = acute_latency(alerts, landing.select(KEY + ["timestamp_ingested"]))
    data.incidents = match_incidents(alerts, truth)
    data.checks += latency_checks(data.latency, data.incidents)
    data.upkeep = load_upkeep(opts.maintenance_json)
    active = set(devices.filter(pl.col("active")).get_column("device_id").to_list())
    data.traces = [read_trace(root, r, truth, alerts)
                   for r in pick_trace_incidents(truth, alerts, active, opts.max_traces)]
    add_detection(data, truth, opts.window_size)
    return data


def load_upkeep(path: str | None) -> dict | None:
    if not path or not Path(path).exists():
        return None
    return json.loads(Path(path).read_text())


def upkeep_rows(upkeep: dict | None) -> list[tuple[str, int, int, int]]:
    """(table, files before, files after, files vacuumed) of a maintain run."""
    return [(name, t["files_before"], t["files_after"], t["vacuumed_files"])
            for name, t in sorted((upkeep or {}).get("tables", {}).items())]


def stream_checks(root: str, truth_dir: Path, landing: pl.DataFrame, truth: list[dict]) -> list[Check]:
    produced_path = truth_dir / "stream.produced.parquet"
    produced = pl.read_parquet(produced_path) if produced_path.exists() else None
    wire = ([r for r in truth if r["source"] == "stream" and "expected_reason" in (r.get("detail") or {})]
            if (truth_dir / "stream.jsonl").exists() else None)
    dead = read_frame(root, "deadletter", ["reason", "event_id", "source"])
    return reconcile_stream(produced, landing.filter(pl.col("kafka_topic").is_not_null()), dead, wire)


def lake_checks(root: str, latest: int, landing_latest: pl.DataFrame) -> list[Check]:
    versions = LakeVersions(latest, consumed_version(root, CLEAN), consumed_version(root, QUARANTINE))
    if versions.clean_consumed is None:
        return reconcile_lake(landing_latest, pl.DataFrame(), pl.DataFrame(), versions)
    same = versions.clean_consumed == latest
    landing = landing_latest.select(KEY) if same else read_frame(root, LANDING, KEY, versions.clean_consumed)
    return reconcile_lake(landing, read_frame(root, CLEAN, KEY), read_frame(root, QUARANTINE, KEY), versions,
                          None if same else landing_latest.select(KEY))


def run_facts(root: str, landing: pl.DataFrame, devices: pl.DataFrame, opts: argparse.Namespace) -> dict:
    facts = {"lake": root, "generated_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
             "devices": devices.height, "active_devices": int(devices.get_column("active").sum()) if devices.height else 0,
             "tables": table_facts(root)}
    for name, rows, unit in (("history_days", landing.filter(pl.col("kafka_topic").is_null()), 86400),
                             ("stream_minutes", landing.filter(pl.col("kafka_topic").is_not_null()), 60)):
        t = rows.get_column("timestamp_ingested")
        facts[name] = (t.max() - t.min()).total_seconds() / unit if rows.height else 0.0
        facts[name.split("_")[0] + "_rows"] = rows.height
    if opts.started_at:
        facts["started_at"] = opts.started_at.isoformat()
        facts["wall_time_s"] = (dt.datetime.now(dt.timezone.utc) - opts.started_at).total_seconds()
    return facts


def add_detection(data: ReportData, truth: list[dict], window_size: str | None) -> None:
    if lake.open_table(data.lake, "scores") is None:
        data.detection_error = "no scores table"
        return
    sizes = sorted(set(read_frame(data.lake, "scores", ["window_size"]).get_column("window_size").to_list()))
    data.window_size = window_size or ("1h" if "1h" in sizes else (sizes[0] if sizes else None))
    if data.window_size not in sizes:
        data.detection_error = f"no scores of window size {data.window_size} (have: {', '.join(sizes) or '-'})"
        return
    data.scores = ev.load_scores(data.lake, data.window_size)
    if not truth:
        data.detection_error = f"no ground truth under {data.truth_dir}"
        return
    data.detection = ev.evaluate(data.scores, truth)


# --- figures ------------------------------------------------------------------------------------

def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _naive(values) -> np.ndarray:
    """UTC datetimes (Python or polars) as naive numpy datetime64 for matplotlib."""
    return np.array([v.replace(tzinfo=None) for v in values], dtype="datetime64[us]")


SEVERITY_STYLE = {"CRITICAL": ("tab:red", "-"), "HIGH": ("tab:purple", "--"), "WARNING": ("tab:orange", "--")}


def fig_trace(t: Trace):
    plt = _plt()
    r = t.incident
    sensors = list(t.series)
    fig, axes = plt.subplots(len(sensors), 1, figsize=(12, 2.6 * len(sensors) + 0.6), sharex=True, squeeze=False)
    for ax, sensor in zip(axes[:, 0], sensors):
        s = t.series[sensor]
        if s.height:
            x = _naive(s.get_column("timestamp_utc").to_list())
            ax.plot(x, s.get_column("value").to_numpy(), lw=0.8, marker="." if s.height < 500 else None, ms=2,
                    color="tab:blue", label=sensor)
            bad = (s.get_column("quality") != "GOOD").to_numpy()
            if bad.any():
                ax.plot(x[bad], s.get_column("value").to_numpy()[bad], "x", color="black", ms=4,
                        label="SUSPECT/BAD quality")
        else:
            ax.text(0.5, 0.5, "no clean readings in this span", transform=ax.transAxes, ha="center", color="gray")
        _shade_incident(ax, r, t.follow_up)
        _mark_alerts(ax, t.alerts)
        ax.set_ylabel(f"{sensor}\n({SENSORS[sensor].canonical_unit})")
        ax.set_xlim(*_naive(_plotted_span(t)))
        ax.grid(alpha=0.3)
        _dedup_legend(ax)
    axes[-1, 0].set_xlabel("time (UTC)")
    fig.suptitle(f"{r['device_id']}: {r['mode']} ({r['category']}, {r['source']} data)", fontsize=11)
    fig.autofmt_xdate()
    return fig


def _plotted_span(t: Trace) -> tuple[dt.datetime, dt.datetime]:
    """The trace window, cut short where the data end (a stream that stopped) after the incident."""
    lo, hi = t.window
    ends = [s.get_column("timestamp_utc").max() for s in t.series.values() if s.height]
    incident_end = dt.datetime.fromisoformat((t.follow_up or t.incident)["end"])
    if ends:
        hi = min(hi, max(max(ends), incident_end) + (hi - lo) * 0.03)
    return lo, hi


def _shade_incident(ax, r: dict, follow: dict | None) -> None:
    span = _naive([dt.datetime.fromisoformat(r["start"]), dt.datetime.fromisoformat(r["end"])])
    ax.axvspan(*span, color="tab:red", alpha=0.12, label=f"incident: {r['mode']}")
    if follow:
        span = _naive([dt.datetime.fromisoformat(follow["start"]), dt.datetime.fromisoformat(follow["end"])])
        ax.axvspan(*span, color="tab:red", alpha=0.35, label=f"then acute: {follow['mode']}")


def _mark_alerts(ax, alerts: pl.DataFrame) -> None:
    """Acute alerts: a line at the triggering reading; model alerts: a band on top over the scored
    window they stand for, and a dashed line at its start."""
    for a in alerts.iter_rows(named=True):
        color, style = SEVERITY_STYLE.get(a["severity"], ("gray", ":"))
        start, until = _naive([a["event_time"], a.get("until") or a["event_time"]])
        if a["severity"] == "CRITICAL" or until <= start:
            ax.axvline(start, color=color, ls=style, lw=1.3, label=f"{a['severity']} {a['rule']}")
        else:
            ax.axvline(start, color=color, ls=style, lw=1.0)
            ax.axvspan(start, until, ymin=0.9, ymax=1.0, color=color, alpha=0.7,
                       label=f"{a['severity']} {a['rule']} (scored window)")


def _dedup_legend(ax) -> None:
    handles, labels = ax.get_legend_handles_labels()
    seen = dict(zip(labels, handles))
    if seen:
        ax.legend(seen.values(), seen.keys(), fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))


def fig_alert_timeline(alerts: pl.DataFrame):
    if not alerts.height:
        return None
    plt = _plt()
    rules = sorted(set(alerts.get_column("rule").to_list()), key=lambda r: (r.startswith("MODEL_"), r))
    fig, ax = plt.subplots(figsize=(11, 0.55 * len(rules) + 1.8))
    for severity, (color, _) in SEVERITY_STYLE.items():
        part = alerts.filter(pl.col("severity") == severity)
        if part.height:
            y = [rules.index(r) + {"CRITICAL": 0, "HIGH": 0.15, "WARNING": -0.15}[severity]
                 for r in part.get_column("rule").to_list()]
            ax.scatter(_naive(part.get_column("event_time").to_list()), y, color=color, s=22, alpha=0.8,
                       label=f"{severity} ({part.height})", edgecolors="none")
    ax.set_yticks(range(len(rules)), rules)
    ax.set_ylim(-0.6, len(rules) - 0.4)
    ax.set_xlabel("alert event time (UTC)")
    ax.set_title("alerts by rule and severity (model alerts: start of the scored window)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.autofmt_xdate()
    return fig


def fig_scores(scores: pa.Table | None, window_size: str | None):
    if scores is None or not scores.num_rows:
        return None
    plt = _plt()
    df = pl.from_arrow(scores.select(["model", "model_version", "score", "threshold", "is_anomaly"]))
    models = [m for m in list(ev.MODELS) + [ev.ENSEMBLE] if m in set(df.get_column("model").to_list())]
    cols = 2
    rows = (len(models) + 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(11, 3.2 * rows), squeeze=False)
    for ax, model in zip(axes.ravel(), models):
        _score_hist(ax, df.filter(pl.col("model") == model), model)
    for ax in axes.ravel()[len(models):]:
        ax.axis("off")
    fig.suptitle(f"anomaly score distributions, {window_size} windows (newest score per window)", fontsize=11)
    fig.tight_layout()
    return fig


def _score_hist(ax, part: pl.DataFrame, model: str) -> None:
    score = part.get_column("score").to_numpy()
    flag = part.get_column("is_anomaly").to_numpy()
    thresholds = sorted(set(part.get_column("threshold").to_list()))
    lo, hi = float(score.min()), float(max(score.max(), max(thresholds)))
    log_x = lo > 0 and hi / lo > 30
    bins = np.geomspace(lo, hi * 1.01, 60) if log_x else np.linspace(lo, hi * 1.01 if hi > 0 else hi + 1, 60)
    ax.hist([score[~flag], score[flag]], bins=bins, stacked=True, color=["tab:blue", "tab:red"],
            label=[f"normal ({int((~flag).sum())})", f"anomalous ({int(flag.sum())})"])
    for th in thresholds:
        ax.axvline(th, color="black", ls="--", lw=1.2, label=f"threshold {th:.3g}")
    ax.axvspan(min(thresholds), bins[-1], color="tab:red", alpha=0.07)
    ax.set_yscale("log")
    if log_x:
        ax.set_xscale("log")
    ax.set_xlabel("score" + (" (log)" if log_x else ""))
    ax.set_ylabel("windows (log)")
    version = part.get_column("model_version")[0]
    ax.set_title(model + (f" {version}" if len(version) <= 12 else ""), fontsize=9)
    ax.legend(fontsize=7)


def fig_latency(lat: Latency | None):
    if lat is None or not lat.joined:
        return None
    plt = _plt()
    values = lat.per_alert.get_column("latency_s").drop_nulls().to_numpy()
    from matplotlib.ticker import MaxNLocator
    fig, ax = plt.subplots(figsize=(11, 3.4))
    x_max = max(float(values.max()), lat.budget_s) * 1.05
    ax.hist(values, bins=np.linspace(0, x_max, 61), color="tab:blue", alpha=0.8,
            label=f"acute alerts ({len(values)})")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    for v, name, color in ((lat.p50_s, "p50", "tab:green"), (lat.p99_s, "p99", "tab:orange"),
                           (lat.budget_s, "requirement", "tab:red")):
        ax.axvline(v, color=color, ls="--", label=f"{name} {v:.1f} s")
    ax.set_xlabel("seconds from arrival (timestamp_ingested) to alert (detected_at)")
    ax.set_ylabel("alerts")
    ax.set_title("latency from arrival to acute alert")
    ax.set_xlim(0, x_max)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return fig


def png(fig) -> bytes:
    plt = _plt()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def figures(data: ReportData) -> dict[str, bytes]:
    """name -> PNG; missing figures (no data) are left out."""
    out = {}
    for n, t in enumerate(data.traces, 1):
        out[f"trace_{n:02d}_{t.incident['mode']}_{t.incident['device_id']}"] = png(fig_trace(t))
    for name, fig in (("alert_timeline", fig_alert_timeline(data.alerts)),
                      ("score_distributions", fig_scores(data.scores, data.window_size)),
                      ("latency", fig_latency(data.latency))):
        if fig is not None:
            out[name] = png(fig)
    return out


# --- rendering ----------------------------------------------------------------------------------

CSS = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1180px;color:#222}
table{border-collapse:collapse;margin:.6em 0;font-size:13px}
td,th{border:1px solid #ccc;padding:3px 8px;text-align:left;vertical-align:top}
th{background:#f2f2f2} td.num{text-align:right;font-variant-numeric:tabular-nums}
.OK{background:#d8f5d8;font-weight:bold}.FAIL{background:#f8c8c8;font-weight:bold}
.INFO{background:#e4ecf8}.SKIP{background:#eee}
img{max-width:100%;border:1px solid #ddd;margin:.4em 0} .muted{color:#777;font-size:12px}
"""


def _e(v) -> str:
    return html.escape(str(v))


def _num(v) -> str:
    return f"{v:,}" if isinstance(v, int) else _e(v)


def _table(header: list[str], rows: list[list], classes: list[list[str]] | None = None) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = []
    for i, row in enumerate(rows):
        cls = classes[i] if classes else [""] * len(row)
        body.append("<tr>" + "".join(f'<td class="{c}">{v}</td>' for v, c in zip(row, cls)) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def _img(pngs: dict[str, bytes], name: str) -> str:
    if name not in pngs:
        return '<p class="muted">no data for this figure</p>'
    return f'<img alt="{_e(name)}" src="data:image/png;base64,{base64.b64encode(pngs[name]).decode()}">'


def html_header(d: ReportData) -> str:
    f = d.facts
    facts = [["lake", _e(f["lake"])], ["generated", _e(f["generated_at"])],
             ["devices", f"{f['devices']:,} ({f['active_devices']:,} active)"],
             ["history (backfill)", f"{f['history_days']:.2f} days, {f['history_rows']:,} landed rows"],
             ["stream", f"{f['stream_minutes']:.1f} minutes of arrivals, {f['stream_rows']:,} landed rows"]]
    if "wall_time_s" in f:
        facts.append(["wall time", f"{f['wall_time_s']:.0f} s since {_e(f['started_at'])}"])
    tables = [[_e(n), _num(v), _num(r)] for n, (v, r) in f["tables"].items()]
    status = "FAIL" if failed(d.checks) else "OK"
    upkeep = [[_e(n), _num(b), _num(a), _num(v)] for n, b, a, v in upkeep_rows(d.upkeep)]
    return (f"<h1>{_e(d.title)}</h1><p>reconciliation: <span class='{status}'>&nbsp;{status}&nbsp;</span></p>"
            + _table(["run", ""], facts) + _table(["table", "version", "rows"], tables,
                                                  [["", "num", "num"]] * len(tables))
            + (_table(["lake upkeep (pipelines.maintain)", "files before", "files after", "files vacuumed"], upkeep,
                      [["", "num", "num", "num"]] * len(upkeep)) if upkeep else ""))


def html_reconciliation(d: ReportData) -> str:
    rows = [[c.status, _e(c.section), _e(c.name), _num(c.expected), _num(c.actual), _e(c.detail)] for c in d.checks]
    cls = [[c.status, "", "", "num", "num", ""] for c in d.checks]
    return ("<h2 id='reconciliation'>1. Reconciliation</h2>"
            "<p class='muted'>each number is computed from the tables and the simulator's ground truth, not from "
            "the pipelines' own counters.</p>" + _table(["", "part", "check", "expected", "actual", "detail"], rows, cls))


def html_traces(d: ReportData, pngs: dict[str, bytes]) -> str:
    out = ["<h2 id='traces'>2. Sensor traces of failing devices</h2>",
           "<p class='muted'>one device per failure mode, most interesting first (missed, gradual, streamed); clean "
           "table values in canonical units; shaded: the incident span; vertical lines: alerts.</p>"]
    if not d.traces:
        out.append("<p class='muted'>no failures in the ground truth</p>")
    for n, t in enumerate(d.traces, 1):
        r = t.incident
        alerts = "; ".join(f"{a['severity']} {a['rule']} at {a['event_time']:%Y-%m-%d %H:%M:%S}"
                           for a in t.alerts.iter_rows(named=True)) or "none"
        then = f", then {t.follow_up['mode']} from {t.follow_up['start']}" if t.follow_up else ""
        out.append(f"<h3>{_e(r['mode'])} on {_e(r['device_id'])} ({_e(r['source'])})</h3><p class='muted'>"
                   f"{_e(r['start'])} .. {_e(r['end'])}{_e(then)}; alerts in the plotted span: {_e(alerts)}</p>")
        out.append(_img(pngs, f"trace_{n:02d}_{r['mode']}_{r['device_id']}"))
    return "".join(out)


def alert_counts(alerts: pl.DataFrame) -> list[tuple[str, str, int]]:
    if not alerts.height:
        return []
    counts = alerts.group_by(["rule", "severity"]).agg(pl.len().alias("n")).sort(["rule", "severity"])
    return [tuple(r) for r in counts.iter_rows()]


def html_alerts(d: ReportData, pngs: dict[str, bytes]) -> str:
    rows = [[_e(r), _e(s), _num(n)] for r, s, n in alert_counts(d.alerts)]
    return ("<h2 id='alerts'>3. Alert timeline by rule</h2>" + _img(pngs, "alert_timeline")
            + _table(["rule", "severity", "alerts"], rows, [["", "", "num"]] * len(rows)))


def html_scores(d: ReportData, pngs: dict[str, bytes]) -> str:
    return ("<h2 id='scores'>4. Anomaly score distributions</h2><p class='muted'>histogram of each model's newest "
            "score per window (log counts), stacked normal/anomalous; dashed: threshold, shaded: anomalous side.</p>"
            + _img(pngs, "score_distributions"))


def html_detection(d: ReportData) -> str:
    out = [f"<h2 id='detection'>5. Detection quality against the ground truth ({_e(d.window_size or '-')} windows)</h2>"]
    if d.detection is None:
        return out[0] + f"<p class='muted'>{_e(d.detection_error)}</p>"
    models = list(d.detection["models"])
    rows = []
    for mode in ev.MODE_ORDER:
        first = d.detection["models"][models[0]]["modes"][mode]
        cells = [_e(mode), _e(first["category"]), _num(first["incidents"])]
        for m in models:
            r = d.detection["models"][m]["modes"][mode]
            cells.append(f"{r['detected']}/{r['incidents']} detected · precision {ev._fmt(r['precision'])} · "
                         f"median delay {ev._fmt(r['median_delay_h'], '{:.1f} h')}")
        rows.append(cells)
    out.append(_table(["mode", "category", "incidents"] + models, rows))
    summary = [[_e(m), _e(v["version"]), _num(v["normal_windows"]), _num(v["false_positive_windows"]),
                ev._fmt(v["fpr"], "{:.4f}"), ev._fmt(v["precision"]), _e(d.detection["gradual_flagged_before_acute"][m])]
               for m, v in d.detection["models"].items()]
    out.append(_table(["model", "version", "normal windows", "false positives", "FPR", "window precision",
                       "gradual flagged before acute"], summary))
    out.append(f"<p class='muted'>scored span {_e(' .. '.join(d.detection['span']))}; computed by "
               f"pipelines.evaluate. Not judged (failures starting outside the scored span): "
               f"{_e(', '.join(d.detection['skipped_incidents']) or 'none')}</p>")
    return "".join(out)


def html_latency(d: ReportData, pngs: dict[str, bytes]) -> str:
    lat, inc = d.latency, d.incidents
    out = ["<h2 id='latency'>6. Latency from arrival to acute alert</h2>"]
    if lat and lat.alerts:
        out.append(f"<p>{lat.alerts} acute alerts, {lat.joined} joined to their triggering reading's landing row; "
                   f"p50 {_s(lat.p50_s)}, p99 {_s(lat.p99_s)}, max {_s(lat.max_s)}; {lat.over_budget} over the "
                   f"{lat.budget_s:.0f} s requirement.</p>")
    out.append(_img(pngs, "latency"))
    if inc is not None:
        out.append(f"<p>stream acute incidents that got their expected rule's alert: {inc.alerted}/{inc.incidents.height}; "
                   f"acute alerts matching no incident: {inc.unmatched_alerts.height}</p>")
        rows = [[_e(r["device_id"]), _e(r["mode"]), _e(r["rule"]), _e(r["start"]), "yes" if r["alerted"] else "NO",
                 _s(r["delay_s"])] for r in inc.incidents.iter_rows(named=True)]
        out.append(_table(["device", "mode", "expected rule", "start", "alerted", "event time - start"], rows))
        rows = [[_e(r["device_id"]), _e(r["rule"]), _e(r["event_time"])] for r in inc.unmatched_alerts.iter_rows(named=True)]
        if rows:
            out.append(_table(["device", "rule (no matching incident)", "event time"], rows))
    return "".join(out)


def _s(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f} s"


def render_html(d: ReportData, pngs: dict[str, bytes]) -> str:
    body = [html_header(d), html_reconciliation(d), html_traces(d, pngs), html_alerts(d, pngs), html_scores(d, pngs),
            html_detection(d), html_latency(d, pngs)]
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{_e(d.title)}</title><style>{CSS}</style>"
            f"</head><body>{''.join(body)}</body></html>")


def console_summary(d: ReportData, out_path: str) -> str:
    f = d.facts
    lines = [f"{d.title}: {f['devices']} devices, {f['history_days']:.1f} days of history, "
             f"{f['stream_minutes']:.0f} minutes of streamed arrivals"]
    dead = [c for c in d.checks if c.name.startswith("dead-letter rows")]
    for c in d.checks:
        if c not in dead:
            lines.append(f"  [{c.status:<4}] {c.section}: {c.name}: expected {_num(c.expected)}, got {_num(c.actual)}")
    if dead:
        bad = [c for c in dead if c.status == FAIL]
        lines.append(f"  [{'FAIL' if bad else dead[0].status:<4}] stream: dead-letter rows by reason: "
                     + ", ".join(f"{c.name.split(': ', 1)[-1]} {_num(c.actual)}/{_num(c.expected)}" for c in dead))
    lines.append("  alerts: " + (", ".join(f"{r}/{s} {n}" for r, s, n in alert_counts(d.alerts)) or "none"))
    lines.append("  detection: " + _detection_headline(d))
    if d.latency and d.incidents is not None:
        lines.append(f"  acute: {d.incidents.alerted}/{d.incidents.incidents.height} stream incidents alerted, "
                     f"{d.incidents.unmatched_alerts.height} alerts without incident; latency p50 {_s(d.latency.p50_s)}, "
                     f"p99 {_s(d.latency.p99_s)}, {d.latency.over_budget} over {d.latency.budget_s:.0f} s")
    if d.upkeep:
        lines.append("  lake upkeep: " + ", ".join(f"{n} {b:,} -> {a:,} files" for n, b, a, _ in upkeep_rows(d.upkeep)))
    skipped = sum(c.status == SKIP for c in d.checks)
    lines.append(f"  reconciliation {'FAILED' if failed(d.checks) else 'OK'}"
                 f"{f' ({skipped} skipped)' if skipped else ''}; report: {out_path}")
    return "\n".join(lines)


def _detection_headline(d: ReportData) -> str:
    if d.detection is None:
        return d.detection_error or "-"
    name = ev.ENSEMBLE if ev.ENSEMBLE in d.detection["models"] else next(iter(d.detection["models"]))
    m = d.detection["models"][name]
    detected = sum(r["detected"] for r in m["modes"].values())
    total = sum(r["incidents"] for r in m["modes"].values())
    return (f"{name} ({d.window_size}) {detected}/{total} failures detected, window precision "
            f"{ev._fmt(m['precision'])}, FPR {ev._fmt(m['fpr'], '{:.4f}')}")


# --- entry point --------------------------------------------------------------------------------

def _started_at(text: str) -> dt.datetime:
    try:
        return dt.datetime.fromtimestamp(float(text), dt.timezone.utc)
    except ValueError:
        return cli.utc_datetime(text)


def arg_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m pipelines.report", description=__doc__, formatter_class=cli.HelpFormatter)
    declare(p, LakeOptions)
    p.add_argument("--ground_truth_dir", default=None,
                   help="the simulator's ground truth (backfill.jsonl, stream.jsonl, stream.produced.parquet); "
                        "None: <lake>/../ground_truth")
    p.add_argument("--out", default="./data/report.html", help="HTML file to write")
    p.add_argument("--title", default="Compressor fleet: run report", help="report title")
    p.add_argument("--started_at", type=_started_at, default=None,
                   help="when the run started (ISO-8601, naive = UTC, or epoch seconds): the header shows the wall time")
    p.add_argument("--window_size", default=None, help="score window size for sections 4-5 (None: 1h if scored, else the first scored size)")
    p.add_argument("--maintenance_json", default=None,
                   help="summary JSON of pipelines.maintain (--json): the header shows file counts before and after")
    p.add_argument("--max_traces", type=int, default=7, help="failing devices to plot (one per failure mode)")
    p.add_argument("--png_dir", default=None,
                   help="also write every figure as a PNG file into this folder (replaces its trace_*.png)")
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return arg_parser().parse_args(argv)


def write(d: ReportData, out: str, png_dir: str | None) -> None:
    pngs = figures(d)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(render_html(d, pngs), encoding="utf-8")
    if png_dir:
        Path(png_dir).mkdir(parents=True, exist_ok=True)
        for stale in Path(png_dir).glob("trace_*.png"):     # traces of an earlier report
            stale.unlink()
        for name, data in pngs.items():
            (Path(png_dir) / f"{name}.png").write_bytes(data)


def main(argv: list[str] | None = None) -> int:
    cli.setup_logging()
    opts = parse_args(argv)
    started = time.monotonic()
    data = gather(opts)
    write(data, opts.out, opts.png_dir)
    print(console_summary(data, opts.out))
    log.info("report written in %.1f s", time.monotonic() - started)
    for c in failed(data.checks):
        log.error("reconciliation FAIL: %s: %s (expected %s, got %s) %s", c.section, c.name, c.expected, c.actual,
                  c.detail)
    return 1 if failed(data.checks) else 0


if __name__ == "__main__":
    sys.exit(main())
