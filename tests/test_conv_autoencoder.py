"""The 1-D convolutional sequence autoencoder: a window that does not follow from its predecessors
(each value normal, the order not) is detected; sequences never mix devices; save/load is exact,
training deterministic; a catalog model served by the registered handler."""
from __future__ import annotations

import datetime as dt

import numpy as np
import pyarrow.compute as pc
import pytest

from models import base as catalog
from models import registry
from simulation import synthetic
from models.conv_autoencoder import ConvAutoencoderModel, sequences
from models.handlers import RegisteredModelHandler, handler_for
from pipelines.train import TrainParams, train

PERIOD = 12          # windows per cycle of the synthetic devices
FEATURES = 6


def cycling(devices: int, n: int, rng: np.random.Generator, offset: int = 0):
    """Device-relative features of devices whose sensors follow one slow cycle (each sensor its own
    phase) plus noise; rows sorted by device then time, as train and score give them."""
    t = np.arange(offset, offset + n)
    z, dev = [], []
    for d in range(devices):
        phase = 2 * np.pi * t[:, None] / PERIOD + rng.uniform(0, 2 * np.pi) + 2 * np.pi * np.arange(FEATURES) / FEATURES
        z.append(1.5 * np.sin(phase) + 0.1 * rng.normal(size=(n, FEATURES)))
        dev += [f"dev-{d}"] * n
    return np.concatenate(z), np.array(dev, dtype=object)


@pytest.fixture(scope="module")
def fitted():
    rng = np.random.default_rng(0)
    z, dev = cycling(3, 200, rng)
    return ConvAutoencoderModel(epochs=6, batch_size=32).fit(z, dev, seed=7), z, dev


def test_sequences_are_each_windows_past_of_its_own_device_even_interleaved():
    z = np.arange(7, dtype=float)[:, None]
    dev = np.array(["a", "b", "a", "a", "b", "a", "b"], dtype=object)
    seq = sequences(z, dev, 3)[:, :, 0]
    # a: rows 0, 2, 3, 5; b: rows 1, 4, 6; the first rows repeat the device's first window
    np.testing.assert_array_equal(seq, [[0, 0, 0], [1, 1, 1], [0, 0, 2], [0, 2, 3], [1, 1, 4], [2, 3, 5], [1, 4, 6]])
    np.testing.assert_array_equal(sequences(z, None, 3)[3, :, 0], [1, 2, 3])
    assert sequences(z[:0], dev[:0], 3).shape == (0, 3, 1)


def test_a_window_that_breaks_the_temporal_pattern_is_detected(fitted):
    model, z, dev = fitted
    assert model.network.input_shape[1:] == (ConvAutoencoderModel.SEQUENCE_LENGTH, FEATURES)
    assert model.fit_metrics()["loss_last"] < model.fit_metrics()["loss_first"]
    limit = np.quantile(model.score(z, dev), 0.99)
    rng = np.random.default_rng(1)
    normal, ndev = cycling(3, 200, rng, offset=200)
    assert (model.score(normal, ndev) > limit).mean() < 0.05
    # every 10th window is replaced by the same device's window half a cycle later: each value (the whole
    # row) is a normal window of that device, so a row-by-row model scores it like any normal window
    broken = normal.copy()
    rows = np.array([r for r in range(10, len(normal) - PERIOD, 10) if (r % 200) + PERIOD < 200])
    broken[rows] = normal[rows + PERIOD // 2]
    assert all((normal == b).all(axis=1).any() for b in broken[rows])
    caught = model.score(broken, ndev)[rows] > limit
    assert caught.mean() >= 0.9, caught.mean()
    # contributions are shares of the window's own step
    shares = model.contributions(broken, ndev)
    assert shares.shape == broken.shape and (shares >= 0).all()
    np.testing.assert_allclose(shares.sum(axis=1), 1.0)
    # the same rows in a random order: most windows no longer follow from their predecessors
    shuffled = rng.permutation(len(normal))
    assert (model.score(normal[shuffled], ndev[shuffled]) > limit).mean() > 0.5


def test_interleaved_devices_score_as_each_device_alone(fitted):
    model, _, _ = fitted
    rng = np.random.default_rng(2)
    z, dev = cycling(2, 40, rng)
    inter = np.arange(80).reshape(2, 40).T.reshape(-1)        # dev-0, dev-1, dev-0, ...: each in time order
    assert list(dev[inter[:4]]) == ["dev-0", "dev-1", "dev-0", "dev-1"]
    together = model.score(z[inter], dev[inter])
    alone = np.r_[model.score(z[:40], dev[:40]), model.score(z[40:], dev[40:])]
    np.testing.assert_allclose(together, alone[inter], rtol=1e-6)
    # scored as one device, the interleaved rows would jump between the two cycles
    assert not np.allclose(model.score(z[inter], None), together)


def test_save_load_gives_identical_scores_and_training_is_deterministic(fitted):
    model, z, dev = fitted
    files = model.save()
    again = ConvAutoencoderModel.load(files.__getitem__)
    assert again.length == model.length
    np.testing.assert_array_equal(again.score(z[:200], dev[:200]), model.score(z[:200], dev[:200]))
    np.testing.assert_array_equal(again.contributions(z[:50], dev[:50]), model.contributions(z[:50], dev[:50]))
    twin = ConvAutoencoderModel(epochs=6, batch_size=32).fit(z, dev, seed=7)
    for a, b in zip(model.network.get_weights(), twin.network.get_weights()):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="sequence length 3"):
        ConvAutoencoderModel(length=3)


def test_a_catalog_model_trained_served_by_the_registered_handler_and_scored_with_each_devices_history(
        lake, tmp_path):
    """Trained through the catalog, served by RegisteredModelHandler; in the score pipeline the blocks
    (z, device ids) give it each device's windows in time order, so its scores are the model's own on
    the sorted table (a window whose 4 predecessors lie in another source file may be padded instead)."""
    from models.features import BASELINE_FILE, DeviceBaseline, matrix
    from pipelines import score
    from core import lake as lake_io

    start = dt.datetime(2026, 10, 1, tzinfo=dt.timezone.utc)
    features, _ = synthetic.fleet_features(5, start, 2, seed=4, healthy_days=2)
    assert catalog.get("conv_autoencoder") is ConvAutoencoderModel
    assert "conv_autoencoder" not in catalog.default_names()
    models = str(tmp_path / "models")
    versions = train(features, {}, models, TrainParams(ae_epochs=2), names=("statistical", "conv_autoencoder"))
    v = registry.load(models, "conv_autoencoder")
    assert v.metadata["kind"] == "numpy" and v.metadata["model_module"] == "models.conv_autoencoder"
    assert v.metadata["metrics"]["sequence_length"] == 5
    handler = handler_for("numpy", versions["conv_autoencoder"].path)
    assert isinstance(handler, RegisteredModelHandler)
    model = handler.load_model()       # through load_version: hashes checked
    rng = np.random.default_rng(2)
    z = rng.normal(size=(50, len(v.metadata["model_features"])))
    dev = np.asarray(sorted(features["device_id"].to_pylist())[:50], dtype=object)
    results = list(handler.run_inference([(z[:20], dev[:20]), (z[20:], dev[20:])], model))
    np.testing.assert_allclose(np.concatenate([r.inference[0] for r in results]), model.score(z, dev))
    assert results[1].inference[1].shape == (30, z.shape[1])

    lake_io.append(lake, "features", features)
    summary = score.run(["--lake", lake, "--models", models])
    assert summary["models"] == {"statistical": "v0001", "conv_autoencoder": "v0001"}
    scores = lake_io.read(lake, "scores")
    mine = scores.filter(pc.equal(scores["model"], "conv_autoencoder"))
    assert mine.num_rows == features.num_rows
    got = {(d, w): s for d, w, s in zip(*[mine[c].to_pylist() for c in ("device_id", "window_start", "score")])}
    table = features.sort_by([("device_id", "ascending"), ("window_start", "ascending")])
    dev = np.asarray(table["device_id"].to_pylist(), dtype=object)
    z = DeviceBaseline.from_bytes(registry.read_verified(v.path, BASELINE_FILE)).transform(dev, matrix(table))
    expected = model.score(z, dev)
    starts = table["window_start"].to_pylist()
    history = [i >= 4 and dev[i - 4] == dev[i] and starts[i - 4].date() == starts[i].date() for i in range(len(dev))]
    assert sum(history) > 0.5 * len(dev)
    for i in np.flatnonzero(history):
        assert got[(dev[i], starts[i])] == pytest.approx(expected[i], rel=1e-5), i
