"""Batch scoring: new feature windows -> scores (Delta) and model alerts (WARNING/HIGH) into alerts.

Each run scores the feature windows of one ``--window_size`` committed to the features table since
the last run (the consumed version range is recorded in the scores and alerts commits), with one
verified version of each model (default: the latest in ``--models``):

  * Isolation Forest and the robust z-score model through Beam's ``SklearnModelHandlerNumpy``;
  * the autoencoder through a small Keras handler (models/handlers.py);
  * the ensemble: median of score/threshold over the three models (2-of-3 vote); >= 1 WARNING,
    >= ``--high_factor`` HIGH (models/ensemble.py).

Elements are blocks of windows (numpy matrices), not single rows. Output, one Delta commit per table
per run, idempotent by commit id: ``scores`` (one row per window x model and the ensemble, with the
model version, score, threshold, is_anomaly and the top contributing features of anomalous windows)
and ``alerts`` (rule MODEL_ENSEMBLE: WARNING when an anomalous episode of a device starts, HIGH when
it first reaches HIGH). Rerunning with nothing new is a no-op; after a crash between the two
commits the rerun completes the lagging table with the same inputs and model versions.

examples:
  python -m pipelines.score                                      # 1h windows, latest models
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
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
from apache_beam.options.pipeline_options import PipelineOptions

from models import base as catalog
from models import ensemble, registry
from pipelines import cli
from transforms import delta, lake
from transforms.scoring import APP, ModelRef, ScoreWindows

log = logging.getLogger("score")
DEFAULT_MODELS = "./data/models"
WINDOW_SECONDS = {"30s": 30, "1m": 60, "5m": 300, "15m": 900, "30m": 1800, "1h": 3600, "6h": 21600, "1d": 86400}


def window_seconds(window_size: str) -> float:
    if window_size in WINDOW_SECONDS:
        return WINDOW_SECONDS[window_size]
    unit = {"s": 1, "m": 60, "h": 3600, "d": 86400}[window_size[-1]]
    return float(window_size[:-1]) * unit


@dataclass
class ScorePlan:
    lake: str
    window_size: str
    after: int | None
    upto: int
    models: list[ModelRef]
    tables: list[str]
    files: list[delta.DeltaFile] = field(default_factory=list)

    @property
    def app(self) -> str:
        return f"{APP}.{self.window_size}"

    def inputs(self) -> dict:
        return {"features": [self.after, self.upto], "window_size": self.window_size,
                "models": {m.name: m.version for m in sorted(self.models, key=lambda m: m.name)}}

    def commit_id(self, table: str) -> str:
        digest = hashlib.sha1(json.dumps(self.inputs()["models"], sort_keys=True).encode()).hexdigest()[:10]
        return f"{self.app}-{table}-{self.after}-{self.upto}-{digest}"


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
    plan.files = [f for f in delta.added_files(lake_root, "features", plan.after, plan.upto)
                  if str(dict(f.partition_values).get("window_size")) == window_size]
    return plan


def prior_state(lake_root: str, window_size: str, files: list[delta.DeltaFile], version: int | None = None,
                high_factor: float = ensemble.DEFAULT_HIGH_FACTOR) -> dict:
    """Each device's last scored ensemble window (end, severity) from the days before the new windows,
    in the scores table at ``version`` (default: the latest)."""
    if version is not None and version < 0:
        return {}
    scores = lake.open_table(lake_root, "scores", version)
    dates = [str(dict(f.partition_values).get("date")) for f in files]
    if scores is None or not dates:
        return {}
    since = dt.date.fromisoformat(min(dates)) - dt.timedelta(days=2)
    ds = scores.to_pyarrow_dataset()
    expr = ((pads.field("date") >= pa.scalar(since, pa.date32())) & (pads.field("model") == ensemble.ENSEMBLE)
            & (pads.field("window_size") == window_size))
    rows = ds.to_table(filter=expr, columns=["device_id", "window_start", "window_end", "score", "is_anomaly"])
    if rows.num_rows == 0:
        return {}
    rows = rows.sort_by([("device_id", "ascending"), ("window_start", "ascending")])
    out = {}
    for d, end, score, anomalous in zip(rows["device_id"].to_pylist(), rows["window_end"].to_pylist(),
                                        rows["score"].to_pylist(), rows["is_anomaly"].to_pylist()):
        out[d] = {"window_end": end, "severity": "" if not anomalous else
                  ("HIGH" if score >= high_factor else "WARNING")}
    return {d: v for d, v in out.items() if v["severity"]}


def known_model_alerts(lake_root: str) -> frozenset:
    """Ids of the model alerts already in the alerts table (a rescored window does not alert twice)."""
    alerts = lake.open_table(lake_root, "alerts")
    if alerts is None:
        return frozenset()
    ids = alerts.to_pyarrow_dataset().to_table(filter=pads.field("rule") == "MODEL_ENSEMBLE", columns=["alert_id"])
    return frozenset(ids["alert_id"].to_pylist())


class _ReadFeatureFile(beam.DoFn):
    """A features file -> (its uri, its rows in the contract schema); the uri makes block ids unique."""

    def process(self, element):
        import pyarrow.parquet as pq
        uri, partition_values = element
        yield uri, delta.with_partition_columns("features", pq.read_table(uri.removeprefix("file://")),
                                                partition_values)


class ScoreOptions(PipelineOptions):
    @classmethod
    def _add_argparse_args(cls, parser):
        g = parser.add_argument_group("score")
        g.add_argument("--lake", default=lake.DEFAULT_LAKE, help="lake root (local path or s3://, gs://, abfss://)")
        g.add_argument("--models", default=DEFAULT_MODELS, help="models root (<models>/<name>/<version>/)")
        g.add_argument("--window_size", default="1h", help="feature window size to score (the models' window size)")
        g.add_argument("--model_versions", default="",
                       help="pin versions, e.g. isolation_forest=v0002,autoencoder=v0002 (default: the latest of each)")
        g.add_argument("--upto_features_version", type=int, default=None,
                       help="newest features version to consume (default: the latest)")
        g.add_argument("--block_rows", type=int, default=4096, help="feature windows per RunInference element")
        g.add_argument("--high_factor", type=float, default=ensemble.DEFAULT_HIGH_FACTOR,
                       help="ensemble score (median of score/threshold) from which an alert is HIGH")
        g.add_argument("--top_k", type=int, default=3, help="top contributing features kept per anomalous window")
        g.add_argument("--episode_gap", type=int, default=2,
                       help="anomalous windows at most this many windows apart belong to one episode (one alert)")


def run(argv: list[str] | None = None) -> dict:
    options = cli.parse_pipeline_args(ScoreOptions, argv, "python -m pipelines.score", __doc__)
    opts = options.view_as(ScoreOptions)
    requested = dict(kv.split("=", 1) for kv in opts.model_versions.split(",") if "=" in kv) or None
    plan = plan_run(opts.lake, opts.models, opts.window_size, requested, opts.upto_features_version)
    if plan is None or not plan.tables:
        summary = {"nothing_to_do": True, "features_version": None if plan is None else plan.upto}
        print("score: nothing to do " + json.dumps(summary))
        return summary
    started = time.monotonic()
    pipeline = beam.Pipeline(options=options)
    # the alerts of a lagging rerun continue from the scores as they were before this range's commit
    prior_version = None
    if "scores" not in plan.tables:
        prior_version = lake.find_commit(opts.lake, "scores", plan.commit_id("scores")) - 1
    tables = (pipeline
              | "FeatureFiles" >> beam.Create([(f.uri, f.partition_values) for f in plan.files])
              | "ReadFeatures" >> beam.ParDo(_ReadFeatureFile()))
    out = tables | "Score" >> ScoreWindows(plan.models, plan.window_size, window_seconds(plan.window_size),
                                           block_rows=opts.block_rows, high_factor=opts.high_factor,
                                           top_k=opts.top_k, episode_gap=opts.episode_gap,
                                           prior=prior_state(opts.lake, plan.window_size, plan.files, prior_version,
                                                             opts.high_factor),
                                           known_alerts=known_model_alerts(opts.lake))
    for table in plan.tables:
        out[table] | f"Write_{table}" >> delta.WriteDelta(opts.lake, table, app=plan.app,
                                                          commit_id=plan.commit_id(table), inputs=plan.inputs())
    result = pipeline.run()
    if cli.is_dry_run(options):
        return {"dry_run": True}
    result.wait_until_finish()
    summary = {"features_versions": [plan.after, plan.upto], "window_size": plan.window_size,
               "models": plan.inputs()["models"], "tables": plan.tables, **cli.metric_counters(result, APP),
               "commits": {t: lake.find_commit(opts.lake, t, plan.commit_id(t)) for t in plan.tables},
               "elapsed_s": round(time.monotonic() - started, 2)}
    print("SCORE_SUMMARY " + json.dumps(summary, sort_keys=True))
    return summary


def main(argv: list[str] | None = None) -> int:
    cli.setup_logging()
    run(argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
