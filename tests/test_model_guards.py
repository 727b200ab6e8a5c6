"""Models that cannot silently degenerate (issue 14): the scale floor comes from the sensors'
resolution (a quantised feature trains without collapsing), train refuses a model that flags far
more of its own training data than calibrated, and the fleet-baseline fallback is reported."""
from __future__ import annotations

import datetime as dt
import json
import logging

import numpy as np
import pyarrow as pa
import pytest

from models import registry
from simulation import synthetic
from models.base import AnomalyModel, register
from models.features import MODEL_FEATURES, QUANTISATION_SIGMA, DeviceBaseline, matrix, resolution_floors
from pipelines import train
from schemas.sensors import SENSORS
from core import lake as lake_io

UTC = dt.timezone.utc
START = dt.datetime(2026, 10, 1, tzinfo=UTC)
PARAMS = train.TrainParams(ae_epochs=10, if_trees=50)
# fleet-wide quantised features: 2-5 distinct values, most windows on one of them (MAD 0 per
# device and across the fleet), steps of 1-5 resolution steps of their sensor
QUANTISED = {"suction_pressure_min": (300.0, 10.0, 2), "suction_pressure_max": (320.0, 10.0, 3),
             "discharge_pressure_std": (2.0, 1.0, 5), "temperature_min": (4.0, 0.5, 4)}


@register
class SaturatedModel(AnomalyModel):
    """A degenerate detector: its score saturates at the median, so half the training windows tie with
    the top of the distribution and reach the threshold."""
    name = "saturated"
    default = False

    def __init__(self, cap: float = 1.0):
        self.cap = cap

    def fit(self, z, devices, seed):
        self.cap = float(np.median(np.abs(z[:, 0])))
        return self

    def score(self, z, devices=None):
        return np.minimum(np.abs(z[:, 0]), self.cap).astype(np.float64)

    def contributions(self, z, devices=None):
        return np.abs(z)

    def save(self):
        return {"cap.json": json.dumps({"cap": self.cap}).encode()}

    @classmethod
    def load(cls, read):
        return cls(**json.loads(read("cap.json")))


def quantised_fleet(seed: int = 4) -> pa.Table:
    features, incidents = synthetic.fleet_features(30, START, 4, seed=seed, healthy_days=4)
    assert not incidents
    rng = np.random.default_rng(seed)
    for col, (base, step, values) in QUANTISED.items():
        k = rng.choice(values, size=features.num_rows, p=[0.7] + [0.3 / (values - 1)] * (values - 1))
        i = features.schema.get_field_index(col)
        features = features.set_column(i, features.schema.field(i), pa.array(base + step * k))
    return features


def test_quantised_features_train_without_the_floor_collapsing(tmp_path):
    features = quantised_fleet()
    for col in QUANTISED:
        assert 2 <= len(set(features[col].to_pylist())) <= 5
    devices = np.asarray(features["device_id"].to_pylist(), dtype=object)
    x = matrix(features)
    baseline = DeviceBaseline.fit(devices, x)
    floors = resolution_floors(MODEL_FEATURES, baseline.fleet_median, 3600)
    for col, (_, step, _) in QUANTISED.items():
        j = MODEL_FEATURES.index(col)
        # MAD is 0 on every device and across the fleet: the scale is the quantisation of the data
        assert np.all(baseline.scale[:, j] >= QUANTISATION_SIGMA * step - 1e-9), col
        assert baseline.fleet_scale[j] >= QUANTISATION_SIGMA * max(step, floors[j]) - 1e-9, col
    assert np.all(baseline.scale >= QUANTISATION_SIGMA * floors - 1e-12)
    assert np.abs(baseline.transform(devices, x)).max() < 20, "no window hits the z clip"

    versions = train.train(features, {}, str(tmp_path), PARAMS)
    target = train.target_flag_rate(PARAMS)
    for name, v in versions.items():
        m = v.metadata["metrics"]
        assert m["target_flag_rate"] == pytest.approx(target)
        assert m["train_flag_rate"] <= 2 * target, (name, m)


def test_a_model_flagging_half_its_training_data_is_refused(lake, tmp_path, capsys, caplog):
    features, _ = synthetic.fleet_features(8, START, 3, seed=2, healthy_days=3)
    few = features.slice(0, 5).set_column(0, features.schema.field(0), pa.array(["dev-new"] * 5))
    lake_io.append(lake, "features", pa.concat_tables([features, few]))
    models = str(tmp_path / "models")
    args = ["--lake", lake, "--models", models, "--start", START.isoformat(),
            "--end", (START + dt.timedelta(days=3)).isoformat(), "--model_names", "statistical,saturated"]
    with caplog.at_level(logging.WARNING, logger="train"):
        assert train.main(args) == 2
    err = capsys.readouterr().err
    assert "refusing to register the models, nothing was saved" in err
    assert "saturated flags 5" in err and "--force" in err and "statistical flags" not in err
    assert registry.latest_version(models, "statistical") is None and registry.latest_version(models, "saturated") is None
    # the device with 5 windows (< --min_windows 24) is named, and counted in the summary
    assert any("device dev-new: 5 training windows (< --min_windows 24)" in r.getMessage() for r in caplog.records)

    assert train.main(args + ["--force"]) == 0
    out = capsys.readouterr().out
    summary = json.loads(out.split("TRAIN_SUMMARY ", 1)[1].splitlines()[0])
    assert summary["devices_on_fleet_baseline"] == 1
    assert summary["saturated"]["train_flag_rate"] >= 0.5
    meta = registry.load(models, "saturated").metadata
    assert meta["forced"] is True and meta["baseline"]["fleet_baseline_devices"] == ["dev-new"]
    assert registry.load(models, "statistical").metadata["forced"] is False
