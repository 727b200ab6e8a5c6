"""What the report reads: the lake's tables and the simulator's ground truth, turned into the
inputs of the checks (pipelines.reporting.checks) and of the trace and detection sections, and
gathered into one ReportData that the figures and the renderings take."""
from __future__ import annotations

import argparse
import datetime as dt
import json
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.dataset as pads

from pipelines import evaluate as ev
from pipelines.reporting.checks import (KEY, Check, IncidentMatch, LakeVersions, Latency, acute_latency,
                                        latency_checks, match_incidents, reconcile_lake, reconcile_stream)
from pipelines.reporting.traces import (Trace, alert_spans, alerts_near, follow_up, pick_trace_incidents,
                                        trace_sensors, trace_window)
from schemas import contracts
from core import lake
from core.windows import MODEL_WINDOW

LANDING, CLEAN, QUARANTINE = "raw_sensor_readings", "clean_sensor_readings", "quarantine"


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
    inputs = lake.last_inputs(lake_root, table, lake.CLEANSE_APP) or {}
    span = inputs.get(LANDING)
    return int(span[1]) if span else None


def read_trace(lake_root: str, r: dict, truth: list[dict], alerts: pl.DataFrame) -> Trace:
    lo, hi = trace_window(r, truth)
    sensors = trace_sensors(r)
    table = lake.open_table(lake_root, CLEAN)
    data = pl.DataFrame()
    if table is not None:
        def ts(d):
            return pa.scalar(d, contracts.UTC_TS)

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
    truth = ev.truth_records(truth_dir)
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
    add_detection(data, truth, opts.window_size, opts.eval_from)
    return data


def load_upkeep(path: str | None) -> dict | None:
    if not path or not Path(path).exists():
        return None
    return json.loads(Path(path).read_text())


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


def add_detection(data: ReportData, truth: list[dict], window_size: str | None,
                  eval_from: dt.datetime | None = None) -> None:
    """Detection quality as pipelines.evaluate judges it: same windows, same span (``eval_from``)."""
    if lake.open_table(data.lake, "scores") is None:
        data.detection_error = "no scores table"
        return
    sizes = sorted(set(read_frame(data.lake, "scores", ["window_size"]).get_column("window_size").to_list()))
    data.window_size = window_size or (MODEL_WINDOW if MODEL_WINDOW in sizes else (sizes[0] if sizes else None))
    if data.window_size not in sizes:
        data.detection_error = f"no scores of window size {data.window_size} (have: {', '.join(sizes) or '-'})"
        return
    data.scores = ev.load_scores(data.lake, data.window_size)
    if not truth:
        data.detection_error = f"no ground truth under {data.truth_dir}"
        return
    data.detection = ev.evaluate(data.scores, truth, eval_from)


