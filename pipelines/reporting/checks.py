"""The report's checks: reconciliation of the stream and the lake, acute latency and incident
matching, and the small tallies both renderings show. Pure logic on polars frames and the ground
truth's dicts: no Beam, no lake IO, no matplotlib; pipelines.reporting.inputs reads what they take.

The reconciliation rules themselves are described in pipelines/report.py's docstring (the entry
point's --help)."""
from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np
import polars as pl

KEY = ["device_id", "event_id"]
LATENCY_BUDGET_S = 120.0                 # DESIGN section 5: under 2 minutes from arrival to alert
OK, FAIL, INFO, SKIP = "OK", "FAIL", "INFO", "SKIP"


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
               f"p50 {seconds(lat.p50_s)}, p99 {seconds(lat.p99_s)}, max {seconds(lat.max_s)}"),
    ]


def failed(checks: list[Check]) -> list[Check]:
    return [c for c in checks if c.status == FAIL]


# --- latency and incident matching ---------------------------------------------------------------

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


# --- tallies ------------------------------------------------------------------------------------

def upkeep_rows(upkeep: dict | None) -> list[tuple[str, int, int, int]]:
    """(table, files before, files after, files vacuumed) of a maintain run."""
    return [(name, t["files_before"], t["files_after"], t["vacuumed_files"])
            for name, t in sorted((upkeep or {}).get("tables", {}).items())]


def alert_counts(alerts: pl.DataFrame) -> list[tuple[str, str, int]]:
    if not alerts.height:
        return []
    counts = alerts.group_by(["rule", "severity"]).agg(pl.len().alias("n")).sort(["rule", "severity"])
    return [tuple(r) for r in counts.iter_rows()]


def count(v) -> str:
    """A check's expected/actual value as shown: integers with thousands separators."""
    return f"{v:,}" if isinstance(v, int) else str(v)


def seconds(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f} s"
