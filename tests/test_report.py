"""The run report: reconciliation that passes on a consistent lake and fails when a landed row or a
produced id goes missing, latency on a hand-made case, and a self-contained HTML file.

The lake is small and built cheaply: the real simulator (backfill, and a stream through a fake Kafka
producer), the real decoder for what the streaming job would land and dead-letter (with Kafka
coordinates), the cleanse's own pure functions for clean and quarantine (committed with the
cleanse's commit metadata), and hand-made alerts and scores."""
from __future__ import annotations

import datetime as dt
import html
import json
import re
import shutil
import zlib
from html.parser import HTMLParser
from pathlib import Path
from unittest import mock

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from deltalake import DeltaTable

from pipelines import evaluate as ev
from pipelines import report
from pipelines.reporting import checks as rc
from pipelines.reporting import inputs, render
from simulation import stream as sim_stream
from schemas import contracts
from tests.helpers import run_simulator
from transforms import cleansing as cl
from core import lake as lake_io
from transforms.decode import KafkaMessage, decode_messages

UTC = dt.timezone.utc
T0 = dt.datetime(2026, 11, 20, tzinfo=UTC)


class FakeProducer:
    """Stands in for confluent_kafka.Producer: records what the simulator produces."""
    sent: list = []

    def __init__(self, config):
        pass

    def produce(self, topic, body, key=None, timestamp=None, on_delivery=None):
        FakeProducer.sent.append((topic, body, key, timestamp))
        if on_delivery:
            on_delivery(None, None)

    def poll(self, timeout):
        return 0

    def flush(self, timeout=None):
        return 0

    def __len__(self):
        return 0


def _kafka_messages(sent) -> list[KafkaMessage]:
    offsets, out = [0] * 4, []
    for topic, body, key, ts in sent:
        key = key.encode() if isinstance(key, str) else key
        p = zlib.crc32(key) % 4
        out.append(KafkaMessage(topic, p, offsets[p], ts + 500, key, body))
        offsets[p] += 1
    return out


def _mini_cleanse(lake: str) -> None:
    """The cleanse's logic (transforms.cleansing) on the whole landing table, committed like the cleanse."""
    version = lake_io.open_table(lake, "raw_sensor_readings").version()
    registry = lake_io.read(lake, "devices")
    candidates, quarantine = cl.prepare(lake_io.read(lake, "raw_sensor_readings"), version,
                                        cl.registry_frame(registry), cl.CleanseConfig(), dt.datetime.now(UTC))
    clean, _ = cl.cleanse_shard(candidates, None, cl.CleanseConfig())
    for table, data in ((cl.CLEAN, clean), (cl.QUARANTINE, quarantine.to_arrow())):
        lake_io.append(lake, table, data, custom_metadata={
            lake_io.COMMIT_ID: f"cleanse/{table}/-1-{version}", lake_io.COMMIT_APP: cl.APP,
            lake_io.COMMIT_INPUTS: json.dumps({cl.LANDING: [-1, version], cl.DEVICES: 0})})


def _alerts(lake: str) -> None:
    stream = lake_io.read(lake, "raw_sensor_readings").filter(
        pa.compute.is_valid(lake_io.read(lake, "raw_sensor_readings")["kafka_topic"]))
    truth = ev.truth_records(Path(lake).parent / "ground_truth")
    failure = next(r for r in truth if r["kind"] == "failure")
    row = stream.slice(100, 1).to_pylist()[0]
    start = dt.datetime.fromisoformat(failure["start"]).replace(minute=0, second=0)
    rows = [
        {"alert_id": "acute-1", "device_id": row["device_id"], "rule": "CURRENT_SPIKE", "severity": "CRITICAL",
         "event_time": row["timestamp_ingested"] - dt.timedelta(seconds=0.5),
         "detected_at": row["timestamp_ingested"] + dt.timedelta(seconds=3), "value": 40.0, "threshold": 30.0,
         "context": "{}", "event_id": row["event_id"]},
        {"alert_id": "model-1", "device_id": failure["device_id"], "rule": "MODEL_ENSEMBLE", "severity": "WARNING",
         "event_time": start, "detected_at": T0, "value": 1.5, "threshold": 1.0, "event_id": None,
         "context": json.dumps({"window_start": start.isoformat(),
                                "window_end": (start + dt.timedelta(hours=1)).isoformat()})},
    ]
    lake_io.append(lake, "alerts", pa.Table.from_pylist(rows, schema=contracts.ALERTS))


def _scores(lake: str) -> None:
    devices = lake_io.read(lake, "devices")["device_id"].to_pylist()
    rng = np.random.default_rng(3)
    rows = []
    for h in range(6):
        ws = T0 - dt.timedelta(hours=6 - h)
        for d in devices:
            for model, th in (("isolation_forest", 0.5), ("autoencoder", 0.3), ("statistical", 8.0), ("ensemble", 1.0)):
                score = float(th * rng.lognormal(-0.6, 0.5))
                rows.append({"device_id": d, "window_size": "1h", "window_start": ws,
                             "window_end": ws + dt.timedelta(hours=1), "model": model, "model_version": "v0001",
                             "score": score, "threshold": th, "is_anomaly": score > th, "top_features": [],
                             "scored_at": T0, "date": ws.date()})
    lake_io.append(lake, "scores", pa.Table.from_pylist(rows, schema=contracts.SCORES))


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("report")
    lake = str(root / "lake")
    run_simulator(lake, "--devices", "6", "--backfill_days", "0.25", "--interval", "300",
                  "--backfill_end", T0.isoformat())
    FakeProducer.sent = []
    with mock.patch.object(sim_stream, "Producer", FakeProducer):
        run_simulator(lake, "--devices", "6", "--stream", "--stream_start", T0.isoformat(), "--stream_minutes", "15",
                      "--interval", "10", "--acceleration", "0")
    decoded = decode_messages(_kafka_messages(FakeProducer.sent))
    half = decoded.readings.num_rows // 2          # two streaming commits
    lake_io.append(lake, "raw_sensor_readings", decoded.readings.slice(0, half))
    lake_io.append(lake, "raw_sensor_readings", decoded.readings.slice(half))
    lake_io.append(lake, "deadletter", decoded.deadletters)
    _mini_cleanse(lake)
    _alerts(lake)
    _scores(lake)
    return root


@pytest.fixture
def copy(built, tmp_path) -> Path:
    shutil.copytree(built, tmp_path / "run")
    return tmp_path / "run"


def _run(root: Path, *extra: str, traces: int = 0) -> int:
    return report.main(["--lake", str(root / "lake"), "--out", str(root / "report.html"), "--max_traces", str(traces),
                        *extra])


def _checks(root: Path) -> dict[str, rc.Check]:
    landing = inputs.read_frame(str(root / "lake"), "raw_sensor_readings",
                                rc.KEY + ["kafka_topic", "timestamp_ingested"])
    truth = ev.truth_records(root / "ground_truth")
    latest = lake_io.open_table(str(root / "lake"), "raw_sensor_readings").version()
    checks = (inputs.stream_checks(str(root / "lake"), root / "ground_truth", landing, truth)
              + inputs.lake_checks(str(root / "lake"), latest, landing))
    return {c.name: c for c in checks}


# --- (a) reconciliation -------------------------------------------------------------------------

def test_consistent_lake_reconciles_and_the_html_has_every_section(copy, capsys):
    assert _run(copy, "--png_dir", str(copy / "png"), "--started_at", "2026-11-20T00:00:00", traces=2) == 0
    out = capsys.readouterr().out
    assert "reconciliation OK" in out and "FAIL" not in out
    checks = _checks(copy)
    assert {c.status for c in checks.values()} == {"OK", "INFO"}
    # the whole-message rejects are one dead-letter row for many produced ids
    assert checks["dead-letter rows: oversized_batch"].actual == 1
    assert checks["produced ids = landed ids + rejected ids"].expected > checks["landed ids and rejected ids are disjoint"].expected
    page = (copy / "report.html").read_text()
    for section in ("1. Reconciliation", "2. Sensor traces", "3. Alert timeline", "4. Anomaly score",
                    "5. Detection quality", "6. Latency"):
        assert section in page
    pngs = sorted(p.name for p in (copy / "png").glob("*.png"))
    assert {"alert_timeline.png", "score_distributions.png", "latency.png"} <= set(pngs)
    assert sum(p.startswith("trace_") for p in pngs) == 2
    assert page.count('<img alt="') == len(pngs)
    assert page.count('src="data:image/png;base64,') == len(pngs)
    assert "http://" not in page and "https://" not in page     # self-contained
    assert "wall time" in page


def test_removed_landed_row_fails(copy):
    lake = str(copy / "lake")
    victim = pq.read_table(copy / "ground_truth" / "stream.produced.parquet").filter(
        pa.compute.is_null(pq.read_table(copy / "ground_truth" / "stream.produced.parquet")["expected_reason"]))
    event_id = victim["event_id"][0].as_py()
    DeltaTable(lake_io.table_uri(lake, "raw_sensor_readings")).delete(f"event_id = '{event_id}'")
    assert _run(copy) == 1
    checks = _checks(copy)
    assert checks["produced ids = landed ids + rejected ids"].status == "FAIL"
    assert event_id in checks["produced ids = landed ids + rejected ids"].detail
    # the cleanse consumed the version before the delete: compared against it, and the loss is flagged
    consumed = checks["landing version consumed by the cleanse"]
    assert consumed.status == "INFO" and consumed.actual < consumed.expected
    assert checks["landed rows = clean + quarantined + duplicates removed"].status == "OK"
    assert checks[f"landing append-only since v{consumed.actual}"].status == "FAIL"


def test_produced_id_that_never_arrived_fails(copy):
    path = copy / "ground_truth" / "stream.produced.parquet"
    produced = pq.read_table(path)
    ghost = pa.table({"event_id": ["ghost-1"], "kind": ["reading"], "expected_reason": pa.nulls(1, pa.string())})
    pq.write_table(pa.concat_tables([produced, ghost]), path)
    assert _run(copy) == 1
    checks = _checks(copy)
    assert checks["produced ids = landed ids + rejected ids"].status == "FAIL"
    assert "ghost-1" in checks["produced ids = landed ids + rejected ids"].detail
    assert checks["landed rows = produced good readings (copies included)"].status == "FAIL"
    assert all(c.status in ("OK", "INFO") for c in checks.values() if c.section == "lake")


def test_lost_clean_row_and_dead_letter_fail(copy):
    lake = str(copy / "lake")
    event_id = lake_io.read(lake, "clean_sensor_readings")["event_id"][0].as_py()
    DeltaTable(lake_io.table_uri(lake, "clean_sensor_readings")).delete(f"event_id = '{event_id}'")
    DeltaTable(lake_io.table_uri(lake, "deadletter")).delete("reason = 'invalid_json'")
    checks = _checks(copy)
    failed = {n for n, c in checks.items() if c.status == "FAIL"}
    assert failed == {"landed rows = clean + quarantined + duplicates removed",
                      "clean rows = distinct landed readings not quarantined", "dead-letter rows: invalid_json"}
    assert checks["dead-letter rows: invalid_json"].expected == 1 and checks["dead-letter rows: invalid_json"].actual == 0


def test_new_landing_version_not_yet_cleansed_is_compared_at_the_consumed_version(copy):
    lake = str(copy / "lake")
    backfill = lake_io.read(lake, "raw_sensor_readings").filter(
        pa.compute.is_null(lake_io.read(lake, "raw_sensor_readings")["kafka_topic"]))
    lake_io.append(lake, "raw_sensor_readings", backfill.slice(0, 10))      # a replay, landed after the cleanse
    checks = _checks(copy)
    consumed = checks["landing version consumed by the cleanse"]
    assert consumed.actual == consumed.expected - 1
    assert "has not consumed" in consumed.detail
    assert not rc.failed(list(checks.values()))


def test_reconcile_stream_counts_whole_message_rejects_once():
    produced = pl.DataFrame({"event_id": ["a", "b", "b", "bad0", "bad1", "bad2", "x"],
                             "kind": ["reading"] * 3 + ["wire_fault"] * 4,
                             "expected_reason": [None, None, None, "oversized_batch", "oversized_batch",
                                                 "oversized_batch", "missing_field"]})
    landed = pl.DataFrame({"event_id": ["a", "b", "b"]})
    dead = pl.DataFrame({"reason": ["oversized_batch", "missing_field"], "event_id": [None, "x"],
                         "source": ["streaming", "streaming"]})
    wire = [{"detail": {"expected_reason": "oversized_batch"}}, {"detail": {"expected_reason": "missing_field"}}]
    assert not rc.failed(rc.reconcile_stream(produced, landed, dead, wire))
    landed_bad = pl.DataFrame({"event_id": ["a", "bad1"]})        # a rejected id landed, b lost
    failed = {c.name for c in rc.failed(rc.reconcile_stream(produced, landed_bad, dead, wire))}
    assert failed == {"landed ids and rejected ids are disjoint", "landed rows = produced good readings (copies included)",
                      "produced ids = landed ids + rejected ids"}


def test_reconcile_lake_keeps_quarantined_copies():
    landing = pl.DataFrame({"device_id": ["d1", "d1", "d1", "u1", "u1"], "event_id": ["e1", "e1", "e2", "e3", "e3"]})
    clean = pl.DataFrame({"device_id": ["d1", "d1"], "event_id": ["e1", "e2"]})
    quarantine = pl.DataFrame({"device_id": ["u1", "u1"], "event_id": ["e3", "e3"]})
    checks = {c.name: c for c in rc.reconcile_lake(landing, clean, quarantine, rc.LakeVersions(4, 4, 4))}
    assert not rc.failed(list(checks.values()))
    assert "duplicates removed 1" in checks["landed rows = clean + quarantined + duplicates removed"].detail
    checks = rc.reconcile_lake(landing, clean, quarantine.head(1), rc.LakeVersions(4, 4, 3))
    assert {c.name for c in rc.failed(checks)} == {
        "clean and quarantine consumed the same landing version",
        "landed rows = clean + quarantined + duplicates removed",
        "quarantined rows = landed copies of quarantined readings"}
    # a landing version after the consumed one that lost a copy (the cleanse consumed v3 of v5)
    checks = rc.reconcile_lake(landing, clean, quarantine, rc.LakeVersions(5, 3, 3), landing.tail(4))
    assert {c.name for c in rc.failed(checks)} == {"landing append-only since v3"}


# --- (b) latency --------------------------------------------------------------------------------

def _t(seconds: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=seconds)


def test_latency_from_first_arrival_to_alert():
    alerts = pl.DataFrame({
        "alert_id": ["a1", "a2", "a3", "a4", "m1"],
        "device_id": ["d1", "d2", "d3", "d4", "d1"],
        "rule": ["CURRENT_SPIKE", "PRESSURE_DROP", "COOLING_LOSS", "VIBRATION_SURGE", "MODEL_ENSEMBLE"],
        "severity": ["CRITICAL"] * 4 + ["WARNING"],
        "event_time": [_t(0), _t(10), _t(20), _t(30), _t(0)],
        "detected_at": [_t(5), _t(20), _t(200), _t(40), _t(9999)],
        "event_id": ["e1", "e2", "e3", "missing", None],
    })
    landing = pl.DataFrame({
        "device_id": ["d1", "d1", "d2", "d3", "d9"],
        "event_id": ["e1", "e1", "e2", "e3", "e2"],      # e1 replayed later; e2 of another device
        "timestamp_ingested": [_t(1), _t(100), _t(12), _t(21), _t(0)],
    })
    lat = rc.acute_latency(alerts, landing)
    assert (lat.alerts, lat.joined) == (4, 3)
    by_id = dict(zip(lat.per_alert["alert_id"].to_list(), lat.per_alert["latency_s"].to_list()))
    assert by_id == {"a1": 4.0, "a2": 8.0, "a3": 179.0, "a4": None}
    assert lat.p50_s == 8.0 and lat.max_s == 179.0
    assert lat.p99_s == pytest.approx(np.percentile([4.0, 8.0, 179.0], 99))
    assert lat.over_budget == 1


def test_incidents_matched_to_their_expected_rule():
    def inc(device, rule, start_s, source="stream"):
        return {"kind": "failure", "device_id": device, "mode": rule.lower(), "expected_rule": rule, "category": "acute",
                "start": _t(start_s).isoformat(), "end": _t(start_s + 60).isoformat(),
                "start_s": _t(start_s).timestamp(), "end_s": _t(start_s + 60).timestamp(), "source": source}
    truth = [inc("d1", "CURRENT_SPIKE", 0), inc("d2", "PRESSURE_DROP", 0), inc("d3", "COOLING_LOSS", 0, "backfill")]
    alerts = pl.DataFrame({
        "alert_id": ["hit", "wrong_rule", "unrelated"], "device_id": ["d1", "d2", "d7"],
        "rule": ["CURRENT_SPIKE", "CURRENT_SPIKE", "COOLING_LOSS"], "severity": ["CRITICAL"] * 3,
        "event_time": [_t(30), _t(30), _t(30)]})
    m = rc.match_incidents(alerts, truth)
    assert m.incidents.height == 2 and m.alerted == 1
    assert m.incidents.filter(pl.col("device_id") == "d1")["delay_s"].to_list() == [30.0]
    assert sorted(m.unmatched_alerts["alert_id"].to_list()) == ["unrelated", "wrong_rule"]


def _late_alert_and_missed_incident() -> tuple[pl.DataFrame, pl.DataFrame, list[dict]]:
    """Alerts, landing rows and stream incidents: d1 alerted in 4 s, d2 in 121 s, d3 never."""
    alerts = pl.DataFrame({
        "alert_id": ["a1", "a2"], "device_id": ["d1", "d2"], "rule": ["CURRENT_SPIKE", "PRESSURE_DROP"],
        "severity": ["CRITICAL"] * 2, "event_time": [_t(0), _t(10)], "detected_at": [_t(5), _t(10 + 121)],
        "event_id": ["e1", "e2"]})
    landing = pl.DataFrame({"device_id": ["d1", "d2"], "event_id": ["e1", "e2"], "timestamp_ingested": [_t(1), _t(10)]})
    truth = [{"kind": "failure", "device_id": d, "mode": r.lower(), "expected_rule": r, "category": "acute",
              "start": _t(0).isoformat(), "end": _t(60).isoformat(), "start_s": _t(0).timestamp(),
              "end_s": _t(60).timestamp(), "source": "stream"}
             for d, r in (("d1", "CURRENT_SPIKE"), ("d2", "PRESSURE_DROP"), ("d3", "COOLING_LOSS"))]
    return alerts, landing, truth


def test_late_alert_or_missed_incident_fails_the_run():
    alerts, landing, truth = _late_alert_and_missed_incident()
    checks = {c.name: c for c in rc.latency_checks(rc.acute_latency(alerts, landing),
                                                   rc.match_incidents(alerts, truth))}
    assert checks["acute alerts later than 120 s after arrival"].status == "FAIL"
    assert checks["acute alerts later than 120 s after arrival"].actual == 1
    assert checks["stream acute incidents with their rule's alert"].status == "FAIL"
    assert (checks["stream acute incidents with their rule's alert"].expected,
            checks["stream acute incidents with their rule's alert"].actual) == (3, 2)
    assert checks["acute alerts joined to the landing row of their triggering reading"].status == "OK"
    assert rc.failed(list(checks.values()))


# --- (c) rendering ------------------------------------------------------------------------------

class _Tables(HTMLParser):
    """The page's tables as rows of cell texts (character references decoded)."""

    def __init__(self, page: str):
        super().__init__()
        self.tables: list[list[list[str]]] = []
        self._cell: list[str] | None = None
        self.feed(page)

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th"):
            self.tables[-1][-1].append("".join(self._cell))
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)

    def rows(self, *header: str) -> list[list[str]]:
        """The body rows of the one table whose header starts with ``header``."""
        found = [t for t in self.tables if t and t[0][:len(header)] == list(header)]
        assert len(found) == 1, f"{len(found)} tables with header {header}"
        return found[0][1:]


def test_html_page_shows_each_check_and_every_table_row(copy, capsys):
    (copy / "maintenance.json").write_text(json.dumps({"tables": {
        "raw_sensor_readings": {"files_before": 1234, "files_after": 12, "vacuumed_files": 1222},
        "alerts": {"files_before": 5, "files_after": 1, "vacuumed_files": 0}}}))
    title = "fleet <night> & co"
    args = ["--maintenance_json", str(copy / "maintenance.json"), "--title", title]
    assert _run(copy, *args, traces=1) == 0
    out = capsys.readouterr().out
    page = (copy / "report.html").read_text()
    tables = _Tables(page)
    data = inputs.gather(report.parse_args(["--lake", str(copy / "lake"), "--max_traces", "1", *args]))
    assert tables.rows("", "part", "check") == [
        [c.status, c.section, c.name, rc.count(c.expected), rc.count(c.actual), c.detail] for c in data.checks]
    assert len(data.checks) == 22 and page.count('<td class="OK">OK</td>') == 21
    assert page.count('<td class="INFO">INFO</td>') == 1
    for c in data.checks:
        if not c.name.startswith("dead-letter rows"):
            line = f"  [{c.status:<4}] {c.section}: {c.name}: expected {rc.count(c.expected)}, got {rc.count(c.actual)}"
            assert line in out
    assert [r[0] for r in tables.rows("run", "")] == ["lake", "generated", "devices", "history (backfill)", "stream"]
    assert tables.rows("run", "")[2] == ["devices", "6 (6 active)"]
    landing = lake_io.open_table(str(copy / "lake"), "raw_sensor_readings")
    assert ["raw_sensor_readings", f"{landing.version()}", f"{landing.to_pyarrow_table().num_rows:,}"] in \
        tables.rows("table", "version", "rows")
    assert tables.rows("lake upkeep (pipelines.maintain)") == [["alerts", "5", "1", "0"],
                                                              ["raw_sensor_readings", "1,234", "12", "1,222"]]
    assert tables.rows("rule", "severity", "alerts") == [["CURRENT_SPIKE", "CRITICAL", "1"],
                                                          ["MODEL_ENSEMBLE", "WARNING", "1"]]
    models = ["isolation_forest", "autoencoder", "statistical", "ensemble"]
    detection = tables.rows("mode", "category", "incidents", *models)
    assert [r[0] for r in detection] == ev.MODE_ORDER
    assert all(re.fullmatch(r"\d+/\d+ detected · precision \S+ · median delay \S+( h)?", cell)
               for r in detection for cell in r[3:])
    assert [r[0] for r in tables.rows("model", "version", "normal windows")] == models
    acute = next(a for a in data.alerts.to_dicts() if a["alert_id"] == "acute-1")
    assert tables.rows("device", "rule (no matching incident)", "event time") == [
        [acute["device_id"], "CURRENT_SPIKE", str(acute["event_time"])]]
    assert f"<h1>{html.escape(title, quote=False)}</h1>" in page and "<night>" not in page     # autoescaped
    assert page.count("<h3>") == 1 and "no data for this figure" not in page


def test_html_page_of_incidents_and_missing_data(tmp_path):
    """Hand-made report inputs: rows of the incident table, a failing check, and the sections
    without data say so."""
    alerts, landing, truth = _late_alert_and_missed_incident()
    latency, incidents = rc.acute_latency(alerts, landing), rc.match_incidents(alerts, truth)
    facts = {"lake": "/lake", "generated_at": "now", "devices": 1200, "active_devices": 1100, "tables": {},
             "history_days": 1.5, "history_rows": 12345, "stream_minutes": 2.0, "stream_rows": 0}
    data = inputs.ReportData("/lake", "t", tmp_path, facts, rc.latency_checks(latency, incidents), alerts,
                             detection_error="no scores table", latency=latency, incidents=incidents)
    page = render.render_html(data, {})
    tables = _Tables(page)
    assert tables.rows("device", "mode", "expected rule") == [
        ["d1", "current_spike", "CURRENT_SPIKE", _t(0).isoformat(), "yes", "0.0 s"],
        ["d2", "pressure_drop", "PRESSURE_DROP", _t(0).isoformat(), "yes", "10.0 s"],
        ["d3", "cooling_loss", "COOLING_LOSS", _t(0).isoformat(), "NO", "-"]]
    assert tables.rows("run", "")[2:4] == [["devices", "1,200 (1,100 active)"],
                                           ["history (backfill)", "1.50 days, 12,345 landed rows"]]
    assert tables.rows("", "part", "check")[1:] == [
        ["OK", "latency", "acute alerts joined to the landing row of their triggering reading", "2", "2", ""],
        ["FAIL", "latency", "acute alerts later than 120 s after arrival", "0", "1",
         "p50 62.5 s, p99 119.8 s, max 121.0 s"]]
    assert "<span class='FAIL'>&nbsp;FAIL&nbsp;</span>" in page and page.count('<td class="FAIL">FAIL</td>') == 2
    assert ("<p>2 acute alerts, 2 joined to their triggering reading's landing row; p50 62.5 s, p99 119.8 s, "
            "max 121.0 s; 1 over the 120 s requirement.</p>") in page
    assert ("stream acute incidents that got their expected rule's alert: 2/3; "
            "acute alerts matching no incident: 0") in page
    assert page.count("no data for this figure") == 3 and "no failures in the ground truth" in page
    assert "(- windows)</h2><p class='muted'>no scores table</p>" in page
    summary = render.console_summary(data, "out.html")
    assert "  [FAIL] latency: acute alerts later than 120 s after arrival: expected 0, got 1" in summary
    assert summary.endswith("reconciliation FAILED; report: out.html")
