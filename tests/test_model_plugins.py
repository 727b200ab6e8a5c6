"""The model plug-in point (models/base.py) and the ensemble's explicit vote (models/ensemble.py):
a model registered in one file outside models/ goes through train, score and evaluate; the
k-of-n vote is the median for 2 of 3 and stays "k flag" for any number of models."""
from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from models import base as catalog
from models import ensemble, registry
from simulation import synthetic
from pipelines import evaluate, score, train
from tests import toy_model
from core import lake as lake_io

UTC = dt.timezone.utc
START = dt.datetime(2026, 10, 1, tzinfo=UTC)
SPLIT = START + dt.timedelta(days=2)


def test_k_of_n_vote_is_the_median_for_two_of_three_and_counts_votes_for_any_n():
    rng = np.random.default_rng(3)
    r = rng.uniform(0, 3, size=(500, 3))
    np.testing.assert_array_equal(ensemble.KOfN(2).aggregate(r), np.median(r, axis=1))
    for n in (2, 3, 4, 5):
        for k in range(1, n + 1):
            r = rng.uniform(0, 3, size=(400, n))
            agg = ensemble.KOfN(k).aggregate(r)
            np.testing.assert_array_equal(agg >= 1.0, (r >= 1.0).sum(axis=1) >= k)
            np.testing.assert_array_equal(agg >= 2.0, (r >= 2.0).sum(axis=1) >= k)
    with pytest.raises(ValueError, match="at least 3 models"):
        ensemble.KOfN(3).aggregate(np.ones((2, 2)))
    with pytest.raises(ValueError):
        ensemble.KOfN(0)


def test_catalog_names_and_unknown_models():
    assert catalog.default_names() == tuple(ensemble.MODELS) == ("isolation_forest", "autoencoder", "statistical")
    assert "toy" in catalog.names() and "toy" not in catalog.default_names()
    assert catalog.get("toy") is toy_model.ToyModel
    with pytest.raises(KeyError, match="unknown model 'nope'"):
        catalog.get("nope")
    with pytest.raises(ValueError, match="taken"):
        catalog.register(type("Other", (toy_model.ToyModel,), {}))


def test_a_toy_model_in_one_file_is_trained_scored_and_evaluated(lake, tmp_path):
    features, incidents = synthetic.fleet_features(10, START, 4, seed=9, healthy_days=2, gradual_fraction=0.1,
                                                   acute_fraction=0.1)
    lake_io.append(lake, "features", features)
    models = str(tmp_path / "models")
    assert train.main(["--lake", lake, "--models", models, "--start", START.isoformat(), "--end", SPLIT.isoformat(),
                       "--model_names", "statistical,toy"]) == 0
    version = registry.load(models, "toy")
    assert version.metadata["model_module"] == "tests.toy_model" and set(version.metadata["files"]) == \
        {"toy.json", "baseline.parquet"}

    summary = score.run(["--lake", lake, "--models", models])
    assert summary["models"] == {"statistical": "v0001", "toy": "v0001"}
    scores = lake_io.read(lake, "scores")
    toy = scores.filter(pc.equal(scores["model"], "toy"))
    assert toy.num_rows == features.num_rows and pc.min(toy["score"]).as_py() >= 0
    ens = scores.filter(pc.equal(scores["model"], "ensemble"))
    assert set(ens["model_version"].to_pylist()) == {"statistical=v0001,toy=v0001"}
    flagged = toy.filter(toy["is_anomaly"])
    assert flagged.num_rows > 0 and all(1 <= len(t) <= 3 for t in flagged["top_features"].to_pylist())

    truth = tmp_path / "truth.jsonl"
    truth.write_text("".join(json.dumps(i) + "\n" for i in incidents))
    report = evaluate.run(["--lake", lake, "--ground_truth", str(truth), "--eval_from", SPLIT.isoformat()])
    assert list(report["models"]) == ["statistical", "toy", "ensemble"]
    assert report["models"]["toy"]["version"] == "v0001" and report["models"]["toy"]["normal_windows"] > 0
