"""Batch scoring with RunInference: scores and model alerts in one commit each, idempotent reruns,
incremental over new feature versions, crash between the two commits, tampered models refused."""
from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from models import ensemble, registry
from simulation import synthetic
from models.handlers import SKLEARN_FILE
from pipelines import score as score_pipeline
from pipelines.train import TrainParams, train
from core import lake as lake_io
from core.windows import MODEL_WINDOW

UTC = dt.timezone.utc
START = dt.datetime(2026, 10, 1, tzinfo=UTC)
SPLIT = START + dt.timedelta(days=2)
MIDDLE = START + dt.timedelta(days=4)


def _between(t: pa.Table, lo: dt.datetime, hi: dt.datetime) -> pa.Table:
    ts = t["window_start"]
    return t.filter(pc.and_(pc.greater_equal(ts, pa.scalar(lo, ts.type)), pc.less(ts, pa.scalar(hi, ts.type))))


@pytest.fixture(scope="module")
def fleet():
    return synthetic.fleet_features(24, START, 6, seed=5, healthy_days=2, gradual_fraction=0.08,
                                    acute_fraction=0.08)


@pytest.fixture(scope="module")
def models_root(fleet, tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    train(_between(fleet[0], START, SPLIT), {"dataset_id": "fixture"}, str(root),
          TrainParams(ae_epochs=15, if_trees=50))
    return str(root)


@pytest.fixture
def scoring_lake(lake, fleet):
    features = fleet[0]
    lake_io.append(lake, "features", _between(features, SPLIT, MIDDLE))
    return lake


def _score(lake: str, models_root: str, *extra: str) -> dict:
    return score_pipeline.run(["--lake", lake, "--models", models_root, "--block_rows", "256", *extra])


def test_scores_alerts_and_idempotent_rerun(scoring_lake, models_root, fleet):
    lake = scoring_lake
    summary = _score(lake, models_root)
    windows = _between(fleet[0], SPLIT, MIDDLE).num_rows
    scores = lake_io.read(lake, "scores")
    assert scores.num_rows == 4 * windows == summary["score_rows"]
    assert sorted(set(scores["model"].to_pylist())) == sorted(list(ensemble.MODELS) + ["ensemble"])
    versions = dict(zip(scores["model"].to_pylist(), scores["model_version"].to_pylist()))
    assert versions["isolation_forest"] == "v0001"
    assert versions["ensemble"] == "autoencoder=v0001,isolation_forest=v0001,statistical=v0001"
    # top features: given for anomalous windows only, names of model features
    anomalous = scores.filter(scores["is_anomaly"])
    assert anomalous.num_rows > 0
    assert all(1 <= len(t) <= 3 for t in anomalous["top_features"].to_pylist())
    assert all(len(t) == 0 for t in scores.filter(pc.invert(scores["is_anomaly"]))["top_features"].to_pylist())
    # the ensemble is the 2-of-3 vote of the models
    by = {(m, d, w): a for m, d, w, a in zip(*[scores[c].to_pylist() for c in
                                                ("model", "device_id", "window_start", "is_anomaly")])}
    for (m, d, w), a in by.items():
        if m == "ensemble":
            assert a == (sum(by[(n, d, w)] for n in ensemble.MODELS) >= 2)
    # alerts: WARNING/HIGH on the failing devices, context JSON with versions and top features
    alerts = lake_io.read(lake, "alerts")
    assert alerts.num_rows == summary["alerts"] > 0
    assert set(alerts["severity"].to_pylist()) <= {"WARNING", "HIGH"}
    assert set(alerts["rule"].to_pylist()) == {"MODEL_ENSEMBLE"}
    failing = {i["device_id"] for i in fleet[1]}
    assert set(alerts["device_id"].to_pylist()) <= failing
    context = json.loads(alerts["context"][0].as_py())
    assert context["model_versions"]["autoencoder"] == "v0001" and context["top_features"]
    assert len(set(alerts["alert_id"].to_pylist())) == alerts.num_rows
    # one commit per table, with the consumed features range
    assert lake_io.last_inputs(lake, "scores", f"score.{MODEL_WINDOW}")["features"] == [None, 0]
    versions_before = {t: lake_io.open_table(lake, t).version() for t in ("scores", "alerts")}
    # rerun: nothing new, tables unchanged
    assert _score(lake, models_root).get("nothing_to_do")
    assert {t: lake_io.open_table(lake, t).version() for t in ("scores", "alerts")} == versions_before
    assert lake_io.read(lake, "scores").sort_by([("device_id", "ascending"), ("window_start", "ascending"),
                                                 ("model", "ascending")]).equals(
        scores.sort_by([("device_id", "ascending"), ("window_start", "ascending"), ("model", "ascending")]))

    # new feature windows: only they are scored; an episode running on is not alerted twice
    lake_io.append(lake, "features", _between(fleet[0], MIDDLE, START + dt.timedelta(days=6)))
    second = _score(lake, models_root)
    assert second["features_versions"] == [0, 1]
    assert lake_io.read(lake, "scores").num_rows == 4 * (windows + _between(fleet[0], MIDDLE, START + dt.timedelta(days=6)).num_rows)
    all_alerts = lake_io.read(lake, "alerts")
    scores = lake_io.read(lake, "scores")
    ens = scores.filter(pc.equal(scores["model"], "ensemble"))
    flagged = {(d, w) for d, w, a in zip(ens["device_id"].to_pylist(), ens["window_start"].to_pylist(),
                                         ens["is_anomaly"].to_pylist()) if a}
    running = {d for d, w in flagged if w == MIDDLE and (d, MIDDLE - dt.timedelta(hours=1)) in flagged}
    assert running, "some episode runs across the two scoring runs"
    restarted = {d for d, s_, t in zip(*[all_alerts[c].to_pylist() for c in ("device_id", "severity", "event_time")])
                 if s_ == "WARNING" and t == MIDDLE}
    assert not (running & restarted), "an episode continuing from the previous run is not alerted again"
    assert len(set(all_alerts["alert_id"].to_pylist())) == all_alerts.num_rows


def test_crash_between_commits_completes_the_lagging_table(scoring_lake, models_root, monkeypatch):
    lake = scoring_lake
    real = lake_io.commit_files

    def failing(lake_root, table, files, **kw):
        if table == "alerts":
            raise RuntimeError("simulated crash before the alerts commit")
        return real(lake_root, table, files, **kw)

    monkeypatch.setattr(lake_io, "commit_files", failing)
    with pytest.raises(Exception, match="simulated crash"):
        _score(lake, models_root)
    monkeypatch.setattr(lake_io, "commit_files", real)
    scores_version = lake_io.open_table(lake, "scores").version()
    assert lake_io.open_table(lake, "alerts") is None
    summary = _score(lake, models_root)
    assert summary["tables"] == ["alerts"]
    assert lake_io.open_table(lake, "scores").version() == scores_version
    assert lake_io.read(lake, "alerts").num_rows > 0
    assert lake_io.last_inputs(lake, "alerts", f"score.{MODEL_WINDOW}") == lake_io.last_inputs(lake, "scores", f"score.{MODEL_WINDOW}")
    assert _score(lake, models_root).get("nothing_to_do")


def test_tampered_model_is_refused(scoring_lake, models_root, tmp_path):
    import shutil
    root = tmp_path / "models"
    shutil.copytree(models_root, root)
    path = root / "isolation_forest" / "v0001" / SKLEARN_FILE
    path.write_bytes(path.read_bytes() + b"\0")
    with pytest.raises(registry.TamperedModelError):
        _score(scoring_lake, str(root))
    assert lake_io.open_table(scoring_lake, "scores") is None


def test_evaluate_counts_recall_precision_and_delay():
    from pipelines.evaluate import evaluate
    t0 = dt.datetime(2026, 10, 1, tzinfo=UTC)
    hours = [t0 + dt.timedelta(hours=h) for h in range(48)]
    rows = []
    flagged = {("dev-a", 10), ("dev-a", 11), ("dev-a", 12),      # gradual from 9.5 h, acute at 30 h: delay 1.5 h
               ("dev-b", 20),                                    # acute 20.2 h .. 20.4 h
               ("dev-c", 5)}                                     # healthy: a false positive
    for d in ("dev-a", "dev-b", "dev-c"):
        for h, ws in enumerate(hours):
            rows.append({"device_id": d, "window_start": ws, "window_end": ws + dt.timedelta(hours=1),
                         "model": "ensemble", "model_version": "x", "score": 1.0, "threshold": 1.0,
                         "is_anomaly": (d, h) in flagged, "scored_at": t0})
    scores = pa.Table.from_pylist(rows)
    iso = lambda h: (t0 + dt.timedelta(hours=h)).isoformat()  # noqa: E731
    truth = [{"kind": "failure", "mode": "bearing_wear", "category": "gradual", "device_id": "dev-a",
              "start": iso(9.5), "end": iso(30)},
             {"kind": "failure", "mode": "vibration_surge", "category": "acute_after_gradual", "device_id": "dev-a",
              "start": iso(30), "end": iso(30.1)},
             {"kind": "failure", "mode": "current_spike", "category": "acute", "device_id": "dev-b",
              "start": iso(20.2), "end": iso(20.4)},
             {"kind": "failure", "mode": "cooling_loss", "category": "acute", "device_id": "dev-b",
              "start": iso(40.2), "end": iso(40.4)}]
    for r in truth:
        r["start_s"] = dt.datetime.fromisoformat(r["start"]).timestamp()
        r["end_s"] = dt.datetime.fromisoformat(r["end"]).timestamp()
    report = evaluate(scores, truth)["models"]["ensemble"]
    bw, cs, cl = (report["modes"][m] for m in ("bearing_wear", "current_spike", "cooling_loss"))
    assert (bw["incidents"], bw["detected"], bw["median_delay_h"]) == (1, 1, 1.5)
    assert bw["precision"] == 3 / 4 and cs["precision"] == 1 / 2          # one FP window charged to each mode
    assert (cs["detected"], cs["median_delay_h"]) == (1, pytest.approx(0.8))
    assert (cl["incidents"], cl["detected"], cl["recall"]) == (1, 0, 0.0)
    assert report["false_positive_windows"] == 1 and report["precision"] == 4 / 5


def test_model_alert_dedup_reads_only_the_scored_span(scoring_lake, models_root, fleet):
    """Known model alerts come from the scored windows' days only (an old alert's file is never
    opened), and rescoring the same windows (features rewritten after late data) raises no alert twice."""
    from schemas import contracts
    lake = scoring_lake
    first = _score(lake, models_root)
    written = lake_io.read(lake, "alerts")
    assert written.num_rows == first["alerts"] > 0
    old = dict(written.to_pylist()[0], alert_id="old-alert", event_time=START - dt.timedelta(days=60))
    lake_io.append(lake, "alerts", pa.Table.from_pylist([old], schema=contracts.ALERTS))
    assert len(score_pipeline.alert_files_in_span(lake, score_pipeline.scored_span(
        score_pipeline.plan_run(lake, models_root, MODEL_WINDOW).files))) == 0       # nothing new to score yet
    # the same windows again as a new features version: scored again, alerts deduplicated
    lake_io.append(lake, "features", _between(fleet[0], SPLIT, MIDDLE))
    second = _score(lake, models_root)
    assert second["features_versions"] == [0, 1]
    assert second["alert_rows_read"] == second["known_alerts_read"] == written.num_rows   # not the old one
    assert second["alerts"] == 0 and 0 < second["alerts_already_written"] <= written.num_rows
    after = lake_io.read(lake, "alerts")
    assert after.num_rows == written.num_rows + 1
    assert len(set(after["alert_id"].to_pylist())) == after.num_rows


def _keyed(t: pa.Table) -> list[tuple]:
    cols = ["device_id", "window_start", "model", "model_version", "score", "threshold", "is_anomaly", "top_features"]
    return sorted(zip(*[t[c].to_pylist() for c in cols]), key=lambda r: r[:4])


def test_rescore_with_a_second_version_adds_rows_and_changes_none(scoring_lake, models_root, fleet, tmp_path):
    import shutil
    lake = scoring_lake
    root = tmp_path / "models"
    shutil.copytree(models_root, root)
    assert _score(lake, str(root), "--rescore").get("nothing_to_do"), "nothing scored yet: nothing to rescore"
    first = _score(lake, str(root))
    before, alerts_before = lake_io.read(lake, "scores"), lake_io.read(lake, "alerts")
    windows = _between(fleet[0], SPLIT, MIDDLE).num_rows
    train(_between(fleet[0], START, SPLIT), {"dataset_id": "fixture"}, str(root),
          TrainParams(threshold_quantile=0.99), ("statistical",))
    challenger = "autoencoder=v0001,isolation_forest=v0001,statistical=v0002"

    summary = _score(lake, str(root), "--rescore", "--model_version", "statistical=v0002")
    assert summary["rescore"] and summary["tables"] == ["scores"]
    assert summary["features_versions"] == first["features_versions"]
    after = lake_io.read(lake, "scores")
    # the models whose version the regular run used already have their rows: only the new ones are added
    assert summary["scores_already_written"] == 2 * windows and summary["score_rows"] == 2 * windows
    assert after.num_rows == before.num_rows + 2 * windows
    added = after.filter(pc.invert(pc.is_in(after["model_version"], value_set=pa.array(
        sorted(set(before["model_version"].to_pylist()))))))
    assert sorted(set(zip(added["model"].to_pylist(), added["model_version"].to_pylist()))) == [
        ("ensemble", challenger), ("statistical", "v0002")]
    # no existing row changed, every (device, window, model, version) once, no alert raised
    kept = after.filter(pc.is_in(after["model_version"], value_set=pa.array(sorted(set(before["model_version"].to_pylist())))))
    assert _keyed(kept) == _keyed(before)
    keys = score_pipeline.score_key(after).to_pylist()
    assert len(set(keys)) == len(keys)
    assert lake_io.read(lake, "alerts").num_rows == alerts_before.num_rows
    assert lake_io.last_inputs(lake, "scores", f"score.{MODEL_WINDOW}")["features"] == first["features_versions"]
    # reruns: nothing new for the challenger nor for the regular runs
    assert _score(lake, str(root), "--rescore", "--model_version", "statistical=v0002").get("nothing_to_do")
    assert _score(lake, str(root), "--model_versions", "statistical=v0001").get("nothing_to_do")
    with pytest.raises(SystemExit, match="unknown model"):
        _score(lake, str(root), "--rescore", "--model_version", "forest=v0001")
    with pytest.raises(SystemExit, match="NAME=VERSION"):
        _score(lake, str(root), "--rescore", "--model_version", "statistical")
