"""Batch scoring: new feature windows -> scores (Delta) and model alerts (WARNING/HIGH) into alerts.

Each run scores the feature windows of one ``--window_size`` committed to the features table since
the last run (the consumed version range is recorded in the scores and alerts commits), with one
verified version of each model (default: its champion, promoted by ``pipelines.train --promote``, else
the latest in ``--models``):

  * Isolation Forest and the robust z-score model through Beam's ``SklearnModelHandlerNumpy``;
  * the autoencoder through a small Keras handler (models/handlers.py);
  * the ensemble: median of score/threshold over the three models (2-of-3 vote); >= 1 WARNING,
    >= ``--high_factor`` HIGH (models/ensemble.py).

Elements are blocks of windows (numpy matrices), not single rows. Output, one Delta commit per table
per run, idempotent by commit id: ``scores`` (one row per window x model and the ensemble, with the
model version, score, threshold, is_anomaly and the top contributing features of anomalous windows)
and ``alerts`` (rule MODEL_ENSEMBLE, one incident per run of anomalous windows of a device: an OPEN
row (WARNING) when it starts, one ESCALATED row (HIGH) when it reaches HIGH or lasts ``--escalate_after``
windows, a CLOSED row when the device is normal again; status, incident id and top contributing
sensors in ``context``; an open incident continues across runs; an alert already in the table, e.g. of a window rescored after late data, is
not written again: its id is deterministic, so only the model alerts of the scored windows' days
are read, as a bounded side input). Rerunning with nothing new is a no-op; after a crash between the two
commits the rerun completes the lagging table with the same inputs and model versions.

``--rescore`` scores the windows the regular runs already scored again, with other versions
(``--model_version NAME=VERSION ...``; unnamed models: their champion, else the latest), into scores rows of their own:
rows are keyed by (device, window, model, model_version), so a row of a version already scored is
not written again and nothing is overwritten; no alerts. Each set of versions keeps its own progress
(app ``score.<window>.rescore.<digest>``), so the regular runs' "nothing to do" is unaffected.

examples:
  python -m pipelines.score                                      # 1h windows, latest models
  python -m pipelines.score --rescore --model_version autoencoder=v0002   # challenger, side by side
  python -m pipelines.score --window_size 15m --models ./data/models
  python -m pipelines.score --model_versions isolation_forest=v0001,autoencoder=v0001,statistical=v0001
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import sys
import time
from dataclasses import dataclass, field

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
from apache_beam.metrics import Metrics
from apache_beam.options.pipeline_options import PipelineOptions

from models import base as catalog
from models import ensemble, registry
from pipelines import cli
from pipelines.options import JoinVersions, LakeOptions, ModelsOptions, WindowSizeOptions, parse_model_versions
from transforms import delta
from core import lake
from core.windows import parse_window_size
from transforms.arrow import ReadParquetChunks, SideTable
from transforms.scoring import (APP, MODEL_ALERT_RULE, IncidentPolicy, ModelRef, ScoreWindows, ensemble_version,
                                incident_rows)

DEFAULT_POLICY = IncidentPolicy()

log = logging.getLogger("score")


def window_seconds(window_size: str) -> float:
    return float(parse_window_size(window_size).seconds)


@dataclass
class ScorePlan:
    lake: str
    window_size: str
    after: int | None
    upto: int
    models: list[ModelRef]
    tables: list[str]
    files: list[delta.DeltaFile] = field(default_factory=list)
    rescore: bool = False

    @property
    def app(self) -> str:
        return rescore_app(self.window_size, self.models) if self.rescore else f"{APP}.{self.window_size}"

    def inputs(self) -> dict:
        return {"features": [self.after, self.upto], "window_size": self.window_size,
                "models": {m.name: m.version for m in sorted(self.models, key=lambda m: m.name)}}

    def commit_id(self, table: str) -> str:
        return f"{self.app}-{table}-{self.after}-{self.upto}-{_models_digest(self.models)}"


def _models_digest(models: list[ModelRef]) -> str:
    versions = {m.name: m.version for m in models}
    return hashlib.sha1(json.dumps(versions, sort_keys=True).encode()).hexdigest()[:10]


def rescore_app(window_size: str, models: list[ModelRef]) -> str:
    """The app of ``--rescore`` runs with one set of model versions: each set keeps its own progress."""
    return f"{APP}.{window_size}.rescore.{_models_digest(models)}"


def resolve_models(models_root: str, requested: dict[str, str] | None) -> list[ModelRef]:
    refs = []
    for name in catalog.trained(models_root) or ensemble.MODELS:     # every registered model trained there
        mv = registry.load(models_root, name, (requested or {}).get(name))     # verifies every sha256
        refs.append(ModelRef.of(mv))
    return refs


def plan_run(lake_root: str, models_root: str, window_size: str, requested: dict[str, str] | None = None,
             upto_version: int | None = None) -> ScorePlan | None:
    features = lake.open_table(lake_root, "features")
    if features is None:
        return None
    app = f"{APP}.{window_size}"
    done = {t: lake.last_inputs(lake_root, t, app) for t in ("scores", "alerts")}
    upto_of = {t: (d["features"][1] if d else None) for t, d in done.items()}
    if upto_of["scores"] != upto_of["alerts"]:
        # a crash fell between the two commits: redo the same range, same models, for the lagging table
        ahead = max(upto_of, key=lambda t: -1 if upto_of[t] is None else upto_of[t])
        lagging = [t for t in upto_of if t != ahead]
        after = upto_of[lagging[0]]
        upto = upto_of[ahead]
        models = resolve_models(models_root, done[ahead]["models"])
        if done[ahead]["features"][0] != after:
            raise RuntimeError(f"scores and alerts disagree beyond one run: {done}")
        plan = ScorePlan(lake_root, window_size, after, upto, models, lagging)
    else:
        after = upto_of["scores"]
        upto = upto_version if upto_version is not None else features.version()
        if after is not None and upto <= after:
            return ScorePlan(lake_root, window_size, after, after, [], [])
        plan = ScorePlan(lake_root, window_size, after, upto, resolve_models(models_root, requested),
                         ["scores", "alerts"])
    plan.files = _feature_files(lake_root, window_size, plan.after, plan.upto)
    return plan


def _feature_files(lake_root: str, window_size: str, after: int | None, upto: int) -> list[delta.DeltaFile]:
    return [f for f in delta.added_files(lake_root, "features", after, upto)
            if str(dict(f.partition_values).get("window_size")) == window_size]


def plan_rescore(lake_root: str, models_root: str, window_size: str, requested: dict[str, str] | None = None,
                 upto_version: int | None = None) -> ScorePlan | None:
    """``--rescore``: the windows the regular runs already scored (features up to the version they
    consumed, or ``upto_version``), scored again with the requested versions into scores rows of their
    own (no alerts: another version must not page anyone). Incremental per set of versions: a rerun
    scores only windows that set has not scored yet."""
    scored = lake.last_inputs(lake_root, "scores", f"{APP}.{window_size}")
    if scored is None:
        return None
    models = resolve_models(models_root, requested)
    done = lake.last_inputs(lake_root, "scores", rescore_app(window_size, models))
    after = done["features"][1] if done else None
    upto = scored["features"][1] if upto_version is None else upto_version
    if after is not None and upto <= after:
        return ScorePlan(lake_root, window_size, after, after, [], [], rescore=True)
    plan = ScorePlan(lake_root, window_size, after, upto, models, ["scores"], rescore=True)
    plan.files = _feature_files(lake_root, window_size, after, upto)
    return plan


def prior_state(lake_root: str, window_size: str, files: list[delta.DeltaFile], version: int | None = None,
                policy: IncidentPolicy = IncidentPolicy(), prefer_version: str | None = None, *,
                max_lookback_days: int = 64) -> dict:
    """Each device's incident still open before the new windows (device -> Incident), replayed by
    :func:`transforms.scoring.incident_rows` from the ensemble rows of the scores table at ``version``
    (default: the latest). The days read start 2 days before the new windows and double while an
    incident reaches back to the first day read (up to ``max_lookback_days``)."""
    if version is not None and version < 0:
        return {}
    scores = lake.open_table(lake_root, "scores", version)
    dates = [str(dict(f.partition_values).get("date")) for f in files]
    if scores is None or not dates:
        return {}
    first = dt.date.fromisoformat(min(dates))
    window_s = window_seconds(window_size)
    ds = scores.to_pyarrow_dataset()
    lookback = 2
    while True:
        since = first - dt.timedelta(days=lookback)
        expr = ((pads.field("date") >= pa.scalar(since, pa.date32())) & (pads.field("model") == ensemble.ENSEMBLE)
                & (pads.field("window_size") == window_size))
        rows = ds.to_table(filter=expr, columns=["device_id", "window_start", "window_end", "score", "is_anomaly",
                                                 "model_version", "top_features"])
        if rows.num_rows == 0:
            return {}
        # a window rescored by other versions: the row of the versions in use wins
        preferred = pc.equal(rows["model_version"], prefer_version) if prefer_version else \
            pa.array(np.zeros(rows.num_rows, dtype=bool))
        rows = rows.append_column("preferred", preferred).sort_by(
            [("device_id", "ascending"), ("window_start", "ascending"), ("preferred", "descending")])
        by_device: dict[str, list[dict]] = {}
        for r in rows.to_pylist():
            ws = by_device.setdefault(r["device_id"], [])
            if ws and ws[-1]["window_start"] == r["window_start"]:
                continue
            ws.append({"window_start": r["window_start"], "window_end": r["window_end"], "score": r["score"],
                       "anomalous": r["is_anomaly"], "top_features": r["top_features"] or []})
        out = {}
        for device, windows in by_device.items():
            _, inc = incident_rows(device, windows, None, window_s=window_s, policy=policy,
                                   detected_at=dt.datetime.now(dt.timezone.utc))
            if inc is not None:
                out[device] = inc
        since_dt = dt.datetime.combine(since, dt.time(tzinfo=dt.timezone.utc))
        if lookback >= max_lookback_days or not any(
                inc.first_start <= since_dt + dt.timedelta(seconds=window_s) for inc in out.values()):
            return out
        lookback *= 2


# incident alert ids are deterministic from (device, rule, first window, status) and a row's event time
# is the start of a window of this run: only a model alert whose event time lies in the scored windows'
# days can collide; the margin absorbs stats rounding
KNOWN_ALERT_MARGIN = dt.timedelta(days=1)


def scored_span(files: list[delta.DeltaFile], margin: dt.timedelta = KNOWN_ALERT_MARGIN
                ) -> tuple[dt.datetime, dt.datetime] | None:
    """[lo, hi) of event times the model alerts of these feature files can have: their ``date``
    partitions (the UTC date of window_start), widened by ``margin``."""
    dates = [dict(f.partition_values).get("date") for f in files]
    if not dates:
        return None
    dates = [d if isinstance(d, dt.date) else dt.date.fromisoformat(str(d)) for d in dates]
    midnight = dt.time(tzinfo=dt.timezone.utc)
    return (dt.datetime.combine(min(dates), midnight) - margin,
            dt.datetime.combine(max(dates) + dt.timedelta(days=1), midnight) + margin)


def _overlaps(lo, hi, low, high) -> bool:
    """Could a file whose column stats are [low, high] hold a value in [lo, hi]? (no stats: yes)"""
    return (low is None or low <= hi) and (high is None or high >= lo)


def alert_files_in_span(lake_root: str, span: tuple[dt.datetime, dt.datetime] | None) -> list[str]:
    """The alerts table's data files that can hold a model alert with event time in ``span``, by the
    per-file min/max statistics of the Delta log (the table is not partitioned): older alerts and
    files of acute alerts only are never opened."""
    alerts = lake.open_table(lake_root, "alerts")
    if alerts is None or span is None:
        return []
    adds = alerts.get_add_actions(flatten=True).to_pydict()
    n = len(adds["path"])

    def col(name: str) -> list:
        return adds.get(name) or [None] * n          # a file written without stats

    root = lake.table_uri(lake_root, "alerts")
    lo, hi = span
    return sorted(f"{root}/{path}" for path, t_lo, t_hi, r_lo, r_hi in zip(
        adds["path"], col("min.event_time"), col("max.event_time"), col("min.rule"), col("max.rule"))
        if _overlaps(lo, hi, t_lo, t_hi) and _overlaps(MODEL_ALERT_RULE, MODEL_ALERT_RULE, r_lo, r_hi))


class _ModelAlertIdsInSpan(beam.DoFn):
    """A chunk of alert rows -> the ids (column ``key``) of its model alerts with event time in [lo, hi)."""

    def __init__(self, span: tuple[dt.datetime, dt.datetime]):
        self._lo, self._hi = span
        self._read = Metrics.counter(APP, "alert_rows_read")
        self._known = Metrics.counter(APP, "known_alerts_read")

    def process(self, rows: pa.Table):
        self._read.inc(rows.num_rows)
        ts = rows["event_time"]
        keep = pc.and_(pc.equal(rows["rule"], MODEL_ALERT_RULE),
                       pc.and_(pc.greater_equal(ts, pa.scalar(self._lo, ts.type)), pc.less(ts, pa.scalar(self._hi, ts.type))))
        ids = rows.filter(keep)
        self._known.inc(ids.num_rows)
        if ids.num_rows:
            yield pa.table({"key": alert_key(ids)})


def alert_key(alerts: pa.Table) -> pa.ChunkedArray:
    return alerts["alert_id"]


class KnownModelAlerts(beam.PTransform):
    """Ids of the model alerts already written with event time in ``span``, as bounded Arrow chunks
    (a side input for :class:`_DropWritten`): read from the alerts files that can hold them."""

    def __init__(self, lake_root: str, span: tuple[dt.datetime, dt.datetime] | None):
        super().__init__()
        self._uris = alert_files_in_span(lake_root, span)
        self._span = span

    def expand(self, pbegin):
        uris = pbegin | "AlertFiles" >> beam.Create(self._uris)
        if not self._uris:
            return uris
        return (uris
                | "ReadAlerts" >> ReadParquetChunks(columns=["alert_id", "rule", "event_time"], site="known_alerts")
                | "InSpan" >> beam.ParDo(_ModelAlertIdsInSpan(self._span)))


SCORE_KEY = ["device_id", "window_start", "model", "model_version"]


def score_key(scores: pa.Table) -> pa.ChunkedArray:
    """What identifies a scores row: device, window, model and model version."""
    start = pc.cast(pc.cast(scores["window_start"], pa.int64()), pa.string())
    return pc.binary_join_element_wise(scores["device_id"], start, scores["model"], scores["model_version"], "|")


class _ScoredKeysOf(beam.DoFn):
    def __init__(self, versions: set[str]):
        self._versions = sorted(versions)
        self._read = Metrics.counter(APP, "score_rows_read")

    def process(self, rows: pa.Table):
        self._read.inc(rows.num_rows)
        rows = rows.filter(pc.is_in(rows["model_version"], value_set=pa.array(self._versions, pa.string())))
        if rows.num_rows:
            yield pa.table({"key": score_key(rows)})


class ScoredKeys(beam.PTransform):
    """Keys of the scores rows already written by ``models`` (or their ensemble) for the days of
    ``span``, as bounded Arrow chunks (a side input for :class:`_DropWritten`)."""

    def __init__(self, lake_root: str, span: tuple[dt.datetime, dt.datetime] | None, models: list[ModelRef]):
        super().__init__()
        lo, hi = (span[0].date(), span[1].date()) if span else (dt.date.max, dt.date.min)
        self._uris = [f.uri for f in delta.snapshot_files(lake_root, "scores")
                      if lo.isoformat() <= str(dict(f.partition_values).get("date")) <= hi.isoformat()]
        self._versions = {m.version for m in models} | {ensemble_version(models)}

    def expand(self, pbegin):
        uris = pbegin | "ScoreFiles" >> beam.Create(self._uris)
        if not self._uris:
            return uris
        return (uris
                | "ReadScores" >> ReadParquetChunks(columns=SCORE_KEY, site="scored_keys")
                | "Keys" >> beam.ParDo(_ScoredKeysOf(self._versions)))


class _DropWritten(beam.DoFn):
    """Drops the rows whose ``key_of`` is among the side input's keys (rows already in the table)."""

    def __init__(self, key_of, counter: str):
        self._key_of = key_of
        self._keys = SideTable(lambda tables: pa.concat_tables(tables)["key"].combine_chunks().unique()
                               if tables else pa.array([], pa.string()))
        self._dropped = Metrics.counter(APP, counter)

    def process(self, rows: pa.Table, written):
        is_written = pc.is_in(self._key_of(rows), value_set=self._keys.get(written))
        dropped = pc.sum(is_written).as_py() or 0
        self._dropped.inc(dropped)
        if dropped < rows.num_rows:
            yield rows.filter(pc.invert(is_written)) if dropped else rows


class _ReadFeatureFile(beam.DoFn):
    """A features file -> (its uri, its rows in the contract schema); the uri makes block ids unique."""

    def process(self, element):
        import pyarrow.parquet as pq
        uri, partition_values = element
        yield uri, delta.with_partition_columns("features", pq.read_table(uri.removeprefix("file://")),
                                                partition_values)


class ScoreOptions(LakeOptions, ModelsOptions, WindowSizeOptions, PipelineOptions):
    @classmethod
    def _add_argparse_args(cls, parser):
        g = parser.add_argument_group("score")
        g.add_argument("--model_versions", default="",
                       help="pin versions, e.g. isolation_forest=v0002,autoencoder=v0002 (default: the latest of each)")
        g.add_argument("--model_version", action=JoinVersions, nargs="+", default="", metavar="NAME=VERSION",
                       help="pin model versions (repeatable; the same as items of --model_versions)")
        g.add_argument("--rescore", action="store_true",
                       help="score the windows already scored again with the given versions, into scores rows of "
                            "their own (keyed by model version; nothing is overwritten, no alerts)")
        g.add_argument("--upto_features_version", type=int, default=None,
                       help="newest features version to consume (default: the latest)")
        g.add_argument("--block_rows", type=int, default=4096, help="feature windows per RunInference element")
        g.add_argument("--high_factor", type=float, default=DEFAULT_POLICY.high_factor,
                       help="ensemble score (median of score/threshold) from which an alert is HIGH")
        g.add_argument("--top_k", type=int, default=DEFAULT_POLICY.top_k, help="top contributing features kept per anomalous window")
        g.add_argument("--episode_gap", type=int, default=DEFAULT_POLICY.gap,
                       help="anomalous windows at most this many windows apart belong to one incident; it closes "
                            "once the device's windows are this many windows past its last anomalous one")
        g.add_argument("--open_after", type=int, default=DEFAULT_POLICY.open_after,
                       help="an incident that is not HIGH is raised (OPEN, WARNING) once it lasts this many "
                            "anomalous windows (1: every anomalous window opens one)")
        g.add_argument("--escalate_after", type=int, default=DEFAULT_POLICY.escalate_after,
                       help="an incident escalates WARNING -> HIGH once it reaches HIGH or lasts this many "
                            "anomalous windows")


def _scored(pipeline, plan: ScorePlan, opts) -> dict:
    """The scoring graph of a plan: {table: Arrow tables to write}, without rows already written."""
    tables = (pipeline
              | "FeatureFiles" >> beam.Create([(f.uri, f.partition_values) for f in plan.files])
              | "ReadFeatures" >> beam.ParDo(_ReadFeatureFile()))
    policy = IncidentPolicy(high_factor=opts.high_factor, open_after=opts.open_after,
                            escalate_after=opts.escalate_after, gap=opts.episode_gap, top_k=opts.top_k)
    prior = {}
    if not plan.rescore:
        # the alerts of a lagging rerun continue from the scores as they were before this range's commit
        prior_version = None
        if "scores" not in plan.tables:
            prior_version = lake.find_commit(opts.lake, "scores", plan.commit_id("scores")) - 1
        prior = prior_state(opts.lake, plan.window_size, plan.files, prior_version, policy,
                            prefer_version=ensemble_version(plan.models))
    out = tables | "Score" >> ScoreWindows(plan.models, plan.window_size, window_seconds(plan.window_size),
                                           block_rows=opts.block_rows, policy=policy, prior=prior)
    span = scored_span(plan.files)
    if plan.rescore:      # rows of these versions already written (e.g. a model the regular runs use) stay
        written = pipeline | "ScoredKeys" >> ScoredKeys(opts.lake, span, plan.models)
        return {"scores": out["scores"] | "DropScored" >> beam.ParDo(
            _DropWritten(score_key, "scores_already_written"), beam.pvalue.AsList(written))}
    known = pipeline | "KnownAlerts" >> KnownModelAlerts(opts.lake, span)
    return {"scores": out["scores"], "alerts": out["alerts"] | "DropKnownAlerts" >> beam.ParDo(
        _DropWritten(alert_key, "alerts_already_written"), beam.pvalue.AsList(known))}


def arg_parser():
    return cli.pipeline_parser(ScoreOptions, "python -m pipelines.score", __doc__)


def run(argv: list[str] | None = None) -> dict:
    options = cli.pipeline_options(arg_parser(), argv)
    opts = options.view_as(ScoreOptions)
    requested = parse_model_versions([opts.model_versions, opts.model_version])
    planner = plan_rescore if opts.rescore else plan_run
    plan = planner(opts.lake, opts.models, opts.window_size, requested, opts.upto_features_version)
    if plan is None or not plan.tables:
        summary = {"nothing_to_do": True, "features_version": None if plan is None else plan.upto}
        print("score: nothing to do " + json.dumps(summary))
        return summary
    started = time.monotonic()
    pipeline = beam.Pipeline(options=options)
    out = _scored(pipeline, plan, opts)
    for table in plan.tables:
        out[table] | f"Write_{table}" >> delta.WriteDelta(opts.lake, table, app=plan.app,
                                                          commit_id=plan.commit_id(table), inputs=plan.inputs())
    result = pipeline.run()
    if cli.is_dry_run(options):
        return {"dry_run": True}
    result.wait_until_finish()
    counters = cli.metric_counters(result, APP)
    # the scoring steps count what they made; rows already in the table were not written again
    for made, dropped in (("alerts", "alerts_already_written"), ("score_rows", "scores_already_written")):
        counters[made] = counters.get(made, 0) - counters.get(dropped, 0)
    if plan.rescore:
        counters.pop("alerts", None)
    summary = {"features_versions": [plan.after, plan.upto], "window_size": plan.window_size,
               "models": plan.inputs()["models"], "tables": plan.tables, "rescore": plan.rescore, **counters,
               "commits": {t: lake.find_commit(opts.lake, t, plan.commit_id(t)) for t in plan.tables},
               "elapsed_s": round(time.monotonic() - started, 2)}
    cli.print_summary("score", summary)
    return summary


main = cli.entry_point(run)


if __name__ == "__main__":
    cli.exit_process(main)
