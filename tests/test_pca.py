"""PCA with Hotelling T² and Q: a broken correlation between sensors (each still inside its own
range) is detected and its pair named; per-device PCAs; served through the catalog's handler."""
from __future__ import annotations

import datetime as dt

import numpy as np

from models import base as catalog
from models import registry
from simulation import synthetic
from models.features import top_features
from models.handlers import RegisteredModelHandler, handler_for
from models.pca import PCAModel
from pipelines.train import TrainParams, train

COLUMNS = ("suction_pressure", "discharge_pressure", "compressor_current", "temperature", "vibration", "superheat")


def correlated(n: int, rng: np.random.Generator, devices: int = 4):
    """Device-relative sensors: suction and discharge pressure follow one load factor, current and
    temperature another, vibration and superheat are independent; unit spread each."""
    load, heat = rng.normal(size=n), rng.normal(size=n)
    z = np.column_stack([load, load, heat, heat, rng.normal(size=n), rng.normal(size=n)])
    z[:, :4] = 0.95 * z[:, :4] + 0.3 * rng.normal(size=(n, 4))
    return z, np.array([f"dev-{i % devices}" for i in range(n)], dtype=object)


def test_a_broken_correlation_is_detected_and_the_pair_named():
    rng = np.random.default_rng(0)
    z, dev = correlated(4000, rng)
    model = PCAModel(min_device_windows=200).fit(z, dev, seed=0)
    assert len(model.arrays["devices"]) == 4           # every device has its own PCA
    normal, ndev = correlated(2000, rng)
    broken = normal[:200].copy()
    # suction pressure up, discharge pressure down by 1.5 sigma: each sensor well inside its own range
    broken[:, 0], broken[:, 1] = broken[:, 0] + 1.5, broken[:, 1] - 1.5
    assert np.abs(broken).max() < np.abs(normal).max()
    limit = np.quantile(model.score(normal, ndev), 0.995)
    caught = model.score(broken, ndev[:200]) > limit
    assert caught.mean() >= 0.9, caught.mean()
    t2, q = model.statistics(broken, ndev[:200])
    assert np.median(q) > 3 * np.median(t2)          # it is Q (the residual) that sees it
    tops = top_features(model.contributions(broken[caught], ndev[:200][caught]), COLUMNS, 2)
    named = np.mean([set(t) == {"suction_pressure", "discharge_pressure"} for t in tops])
    assert named >= 0.9, named
    # a per-sensor view misses most: few broken windows have a sensor beyond the normal 99.5 % of |z|
    assert (np.abs(broken).max(axis=1) > np.quantile(np.abs(normal).max(axis=1), 0.995)).mean() < 0.2


def test_devices_without_enough_windows_use_the_fleet_pca_and_save_load_is_exact():
    rng = np.random.default_rng(1)
    z, dev = correlated(1000, rng, devices=2)
    z2, _ = correlated(30, rng)
    dev2 = np.array(["dev-small"] * 30, dtype=object)
    model = PCAModel(min_device_windows=100).fit(np.r_[z, z2], np.r_[dev, dev2], seed=0)
    assert list(model.arrays["devices"]) == ["dev-0", "dev-1"]
    probe = np.r_[z[:5], z2[:5]]
    ids = np.array(["dev-0"] * 5 + ["dev-small"] * 5, dtype=object)
    assert (model._index(ids, 10) == [0] * 5 + [2] * 5).all()
    files = model.save()
    assert files == PCAModel.load(files.__getitem__).save()
    again = PCAModel.load(files.__getitem__)
    np.testing.assert_array_equal(again.score(probe, ids), model.score(probe, ids))
    np.testing.assert_array_equal(again.contributions(probe, ids), model.contributions(probe, ids))


def test_pca_is_a_catalog_model_served_by_the_registered_handler(tmp_path):
    start = dt.datetime(2026, 10, 1, tzinfo=dt.timezone.utc)
    features, _ = synthetic.fleet_features(12, start, 3, seed=3, healthy_days=3)
    assert catalog.get("pca") is PCAModel and "pca" not in catalog.default_names()
    versions = train(features, {}, str(tmp_path), TrainParams(), names=("pca",))
    v = registry.load(tmp_path, "pca")
    assert v.metadata["kind"] == "numpy" and v.metadata["metrics"]["devices_with_own_pca"] == v.metadata["training_devices"]
    assert v.metadata["metrics"]["train_flag_rate"] <= 2 * v.metadata["metrics"]["target_flag_rate"]
    handler = handler_for("numpy", versions["pca"].path)
    assert isinstance(handler, RegisteredModelHandler)
    model = handler.load_model()
    rng = np.random.default_rng(2)
    z = rng.normal(size=(50, len(v.metadata["model_features"])))
    dev = np.asarray(features["device_id"].to_pylist()[:50], dtype=object)
    results = list(handler.run_inference([(z[:20], dev[:20]), (z[20:], dev[20:])], model))
    np.testing.assert_allclose(np.concatenate([r.inference[0] for r in results]), model.score(z, dev))
    assert results[1].inference[1].shape == (30, z.shape[1])
