"""Champion / challenger (issue 14 item 5): train can promote a version that scoring then uses by default,
and evaluate compares the model versions of the scores side by side."""
from __future__ import annotations

import datetime as dt
import json

import pyarrow as pa
import pytest

from models import registry
from simulation import synthetic
from pipelines import score as score_pipeline
from pipelines import train
from pipelines.evaluate import compare_versions, load_scores, render_versions
from core import lake as lake_io

UTC = dt.timezone.utc
START = dt.datetime(2026, 10, 1, tzinfo=UTC)
PARAMS = train.TrainParams(if_trees=20)


@pytest.fixture(scope="module")
def features():
    return synthetic.fleet_features(6, START, 2, seed=3, healthy_days=2)[0]


def test_promote_makes_the_champion_the_default_version(features, tmp_path, capsys):
    root = str(tmp_path / "models")
    names = ("statistical", "isolation_forest")
    first = train.train(features, {}, root, PARAMS, names, promote=True)
    assert {n: v.version for n, v in first.items()} == {"statistical": "v0001", "isolation_forest": "v0001"}
    second = train.train(features, {}, root, PARAMS, names)          # challengers
    assert {n: v.version for n, v in second.items()} == {"statistical": "v0002", "isolation_forest": "v0002"}
    assert registry.champion(root, "statistical") == "v0001" and registry.latest_version(root, "statistical") == "v0002"
    assert registry.load(root, "statistical").version == "v0001"
    assert {m.name: m.version for m in score_pipeline.resolve_models(root, None)} == \
        {"isolation_forest": "v0001", "statistical": "v0001"}
    assert {m.name: m.version for m in score_pipeline.resolve_models(root, {"statistical": "v0002"})} == \
        {"isolation_forest": "v0001", "statistical": "v0002"}
    # promoting an existing version through the entry point, without training
    out = train.run(["--models", root, "--promote_version", "statistical=v0002"])
    assert {n: v.version for n, v in out.items()} == {"statistical": "v0002"}
    summary = json.loads(capsys.readouterr().out.split("TRAIN_SUMMARY ", 1)[1])
    assert summary == {"promoted": {"statistical": {"version": "v0002", "previous": "v0001"}}}
    assert json.loads((tmp_path / "models" / "statistical" / "champion.json").read_text())["previous"] == "v0001"
    assert {m.name: m.version for m in score_pipeline.resolve_models(root, None)} == \
        {"isolation_forest": "v0001", "statistical": "v0002"}
    with pytest.raises(FileNotFoundError, match="no version v0009 of model 'statistical'"):
        train.run(["--models", root, "--promote_version", "statistical=v0009"])
    with pytest.raises(SystemExit, match="train: unknown model 'nope'"):
        train.run(["--models", root, "--promote_version", "nope=v0001"])
    # a registry without champions (before promotion) defaults to the latest
    assert registry.load(root, "isolation_forest").version == "v0001"
    (tmp_path / "models" / "isolation_forest" / "champion.json").unlink()
    assert registry.load(root, "isolation_forest").version == "v0002"


def test_evaluate_compares_versions_side_by_side(tmp_path):
    t0 = dt.datetime(2026, 10, 1, tzinfo=UTC)
    rows = []
    # dev-a: gradual failure from 10 h; v1 flags 11 h and a normal window of dev-b; v2 flags 12 h only
    flags = {"v1": {("dev-a", 11), ("dev-b", 3)}, "v2": {("dev-a", 12)}}
    for version, flagged in flags.items():
        for d in ("dev-a", "dev-b"):
            for h in range(24):
                ws = t0 + dt.timedelta(hours=h)
                rows.append({"device_id": d, "window_size": "1h", "window_start": ws,
                             "window_end": ws + dt.timedelta(hours=1), "model": "statistical",
                             "model_version": version, "score": 1.0, "threshold": 1.0,
                             "is_anomaly": (d, h) in flagged, "top_features": [],
                             "scored_at": t0 + dt.timedelta(days=2 if version == "v2" else 1),
                             "date": ws.date()})
    from schemas import contracts
    lake = str(tmp_path / "lake")
    lake_io.append(lake, "scores", pa.Table.from_pylist(rows).cast(contracts.SCORES))
    iso = lambda h: (t0 + dt.timedelta(hours=h)).isoformat()  # noqa: E731
    truth = [{"kind": "failure", "mode": "bearing_wear", "category": "gradual", "device_id": "dev-a",
              "start": iso(10), "end": iso(20)}]
    for r in truth:
        r["start_s"], r["end_s"] = (dt.datetime.fromisoformat(r[k]).timestamp() for k in ("start", "end"))
    # keyed by version: both versions' rows stay (the plain report keeps the newest score per window)
    assert load_scores(lake, "1h", by_version=True).num_rows == 96
    assert load_scores(lake, "1h").num_rows == 48
    table = compare_versions(load_scores(lake, "1h", by_version=True), truth, champions={"statistical": "v2"})
    assert [(r["model"], r["version"], r["champion"], r["windows"], r["false_positive_windows"], r["precision"],
             r["detected"], r["gradual_flagged_before_acute"]) for r in table] == [
        ("statistical", "v1", False, 48, 1, 0.5, 1, "1/1"),
        ("statistical", "v2", True, 48, 0, 1.0, 1, "1/1")]
    assert table[0]["normal_windows"] == table[1]["normal_windows"] == 34     # dev-a 0-9 h, dev-b 24 h
    text = render_versions(table)
    assert "| statistical | v2 | yes | 48 | 34 | 0 | 0.0000 | 1.00 | 1/1 | 1/1 |" in text
