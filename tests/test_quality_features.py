"""Issue 14, item 6: no reading vanishes from the model inputs. An overload above a sensor's valid range
is BAD (left out of the GOOD statistics), but the window's quality columns carry it to the models:
its features and its score change. Windows here are computed by the features pipeline's own code
(transforms.features.window_features) from simulator readings, for training and for the test window."""
from __future__ import annotations

import datetime as dt

import numpy as np
import polars as pl
import pyarrow as pa
import pytest

from models import base as catalog
from models import ensemble, registry
from models.features import (COUNT_FEATURES, COUNT_FLOOR, MODEL_FEATURES, RANGE_EXCESS_FLOOR, DeviceBaseline,
                             input_floors, matrix, resolution_floors)
from simulation import fleet as fleet_mod
from simulation import generator
from pipelines.train import TrainParams, train
from schemas import contracts
from schemas.sensors import SENSOR_TYPES, SENSORS
from core.windows import WindowSize
from transforms.features import window_features, with_window
from transforms.scoring import ModelRef

UTC = dt.timezone.utc
START = dt.datetime(2026, 10, 1, tzinfo=UTC)
HOUR = WindowSize(3600)
PARAMS = TrainParams(ae_epochs=10, if_trees=60)
OVERLOAD = 75.0          # mm/s, above vibration's valid range (0 .. 50)


def readings(n_devices: int, start: dt.datetime, hours: int, seed: int = 5) -> pl.DataFrame:
    """Clean readings (all GOOD) of a healthy simulated fleet, every 60 s."""
    devices = fleet_mod.make_fleet(n_devices, seed)
    grid = generator.sampling_grid(devices, start, start + dt.timedelta(hours=hours), 60.0)
    values = generator.normal_values(devices, grid, seed)
    ids = np.array([d.device_id for d in devices], dtype=object)[grid.device]
    ts = (grid.t * 1e6).astype(np.int64)
    parts = [pl.DataFrame({"device_id": ids.tolist(), "sensor_type": [s] * len(ts), "value": values[s],
                           "timestamp_utc": ts, "quality": ["GOOD"] * len(ts)}) for s in SENSOR_TYPES]
    return pl.concat(parts).with_columns(
        pl.from_epoch(pl.col("timestamp_utc"), time_unit="us").dt.replace_time_zone("UTC"))


def features_of(rows: pl.DataFrame) -> pa.Table:
    return window_features(with_window(rows, HOUR), HOUR, 60.0, START).to_arrow().cast(contracts.FEATURES)


def with_overload(rows: pl.DataFrame, device: str, at: dt.datetime) -> pl.DataFrame:
    """Three BAD vibration readings of OVERLOAD (out of range) between the device's own readings."""
    extra = pl.DataFrame({"device_id": [device] * 3, "sensor_type": ["vibration"] * 3, "value": [OVERLOAD] * 3,
                          "timestamp_utc": [int((at + dt.timedelta(seconds=25 + 60 * i)).timestamp() * 1e6)
                                            for i in range(3)], "quality": ["BAD"] * 3})
    extra = extra.with_columns(pl.from_epoch(pl.col("timestamp_utc"), time_unit="us").dt.replace_time_zone("UTC"))
    return pl.concat([rows, extra])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    train_rows = readings(12, START, 72)
    versions = train(features_of(train_rows), {"dataset_id": "quality-fixture"}, str(root), PARAMS)
    return root, versions


def test_quality_features_have_a_scale_floor_of_their_own():
    """Counts and range excesses are 0 in every training window of a healthy fleet: their scale is a
    floor of their own (COUNT_FLOOR: one doubling of log2(1 + count); 1 % of the valid range's span),
    not a collapsed quantisation floor."""
    feats = features_of(readings(6, START, 30))
    x = matrix(feats)
    devices = np.asarray(feats["device_id"].to_pylist(), dtype=object)
    baseline = DeviceBaseline.fit(devices, x)
    expected = {**{c: COUNT_FLOOR for c in COUNT_FEATURES},
                **{f"{s}_{stat}": RANGE_EXCESS_FLOOR * (SENSORS[s].valid_max - SENSORS[s].valid_min)
                   for s in SENSOR_TYPES for stat in ("all_min", "all_max")}}
    assert len(expected) == 20
    for c, floor in expected.items():
        j = MODEL_FEATURES.index(c)
        assert np.all(x[:, j] == 0.0), c
        assert np.all(baseline.scale[:, j] == floor) and baseline.fleet_scale[j] == floor, c
        assert input_floors([c])[0] == floor
    assert resolution_floors(["vibration_all_max", "vibration_bad_count"], np.zeros(2), 3600).tolist() == \
        [SENSORS["vibration"].resolution, 1.0]
    # 0, 1, 3 BAD readings -> log2(1 + count) = 0, 1, 2; extremes -> their excess beyond the valid range
    t = pa.table({"vibration_bad_count": pa.array([0, 1, 3], pa.int64()),
                  "vibration_all_max": pa.array([12.0, None, 75.0]), "temperature_all_min": [-70.0, 3.0, None]})
    np.testing.assert_array_equal(matrix(t, ("vibration_bad_count", "vibration_all_max", "temperature_all_min")),
                                  [[0.0, 0.0, 10.0], [1.0, np.nan, 0.0], [2.0, 25.0, np.nan]])


def test_an_overload_above_the_valid_range_changes_the_features_and_raises_every_score(trained):
    root, versions = trained
    assert set(versions) == set(catalog.default_names())
    test_start = START + dt.timedelta(hours=80)
    rows = readings(12, test_start, 1)
    device = sorted(set(rows["device_id"].to_list()))[3]
    normal = features_of(rows)
    overload = features_of(with_overload(rows, device, test_start))
    pick = lambda t: t.filter(pa.compute.equal(t["device_id"], device))  # noqa: E731
    a, b = pick(normal).to_pylist()[0], pick(overload).to_pylist()[0]
    changed = {c for c in a if a[c] != b[c]} - {"computed_at"}
    assert changed == {"vibration_all_max", "vibration_bad_count"}
    assert (b["vibration_all_max"], b["vibration_bad_count"]) == (OVERLOAD, 3)
    assert b["vibration_max"] == a["vibration_max"] <= SENSORS["vibration"].valid_max
    x_a, x_b = matrix(pick(normal)), matrix(pick(overload))
    changed_inputs = {MODEL_FEATURES[j] for j in np.flatnonzero(x_a[0] != x_b[0])}
    assert changed_inputs == {"vibration_all_max", "vibration_bad_count"}
    devices = np.array([device], dtype=object)
    scores, thresholds = {}, {}
    for name, version in versions.items():
        model = catalog.load_version(version.path)
        baseline = DeviceBaseline.from_bytes(registry.read_verified(version.path, "baseline.parquet"))
        scores[name] = np.array([model.score(baseline.transform(devices, x), devices)[0] for x in (x_a, x_b)])
        thresholds[name] = version.metadata["threshold"]
        assert scores[name][1] > scores[name][0], (name, scores[name])
    # the per-feature models flag the overload hour on their own, and the normal hour is not flagged
    for name in ("statistical", "autoencoder"):
        assert scores[name][1] >= thresholds[name] > scores[name][0], (name, scores[name], thresholds[name])
    assert thresholds["isolation_forest"] > scores["isolation_forest"][0]
    # so the ensemble's 2-of-3 vote turns the hour anomalous
    ens = ensemble.combine(scores, thresholds)
    assert ens[0] < 1.0 <= ens[1], ens


def test_a_version_trained_on_the_older_feature_set_still_scores(trained, tmp_path):
    """A version whose metadata lists the feature set before the quality columns (28 features) is
    served on those columns; one listing a feature this code does not compute fails with a clear message."""
    _, versions = trained
    v = versions["statistical"]
    ref = ModelRef.of(v)
    assert ref.features == MODEL_FEATURES
    old = registry.ModelVersion(v.name, v.version, v.path, dict(v.metadata, model_features=list(MODEL_FEATURES[:28])))
    ref_old = ModelRef.of(old)
    assert ref_old.features == MODEL_FEATURES[:28]
    np.testing.assert_array_equal(ref_old.columns(), np.arange(28))
    bad = registry.ModelVersion(v.name, v.version, v.path, dict(v.metadata, model_features=["vibration_kurtosis"]))
    with pytest.raises(ValueError, match=r"trained on features this code does not compute: \['vibration_kurtosis'\]"):
        ModelRef.of(bad)
