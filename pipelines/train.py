"""Training: fits the anomaly models on a features dataset and saves a new version of each.

Input: a features dataset written by ``pipelines.extract_training --kind features`` (``--dataset``),
or ``--start/--end`` (+ ``--as_of_version``/``--as_of_timestamp``), in which case the extraction
runs first. Every file of the dataset is checked against its manifest's sha256.

Models (all on device-relative features, see models/features.py):
  * isolation_forest: scikit-learn IsolationForest (seeded);
  * autoencoder: a dense Keras autoencoder (seeded, deterministic ops, one thread);
  * statistical: robust z-score against each device's own baseline (largest |z| of a window).

Threshold calibration, per model, on the training windows' scores: median + ``--threshold_margin``
x (``--threshold_quantile`` quantile - median). Training data are not labelled and may hold
failing devices (a few percent of windows); the quantile is taken over the windows that the
statistical prefilter (largest |z| <= ``--clean_z``) considers normal, so early failures inside the
training span do not inflate the thresholds. The training-window flag rate is recorded as a metric.

Output: ``<models>/<name>/<version>/`` with the artifact (model.pkl or model.keras), the device
baseline (baseline.parquet) and metadata.json: the training data manifest, parameters, threshold,
metrics, library versions and the sha256 of every file.

examples:
  python -m pipelines.train --dataset ./data/lake/training/features-2026-10-18-2026-10-22-v3-...
  python -m pipelines.train --start 2026-10-18 --end 2026-10-22 --window_size 1h --models ./data/models
"""
from __future__ import annotations

import io
import json
import logging
import pickle
import sys
import time
from dataclasses import asdict, dataclass

import numpy as np
import pyarrow as pa
from apache_beam.options.pipeline_options import PipelineOptions

from models import autoencoder, isolation_forest, registry
from models.ensemble import MODELS
from models.features import MODEL_FEATURES, DeviceBaseline, matrix
from models.handlers import BASELINE_FILE, KERAS_FILE, SKLEARN_FILE
from models.statistical import RobustZScore
from pipelines import cli
from pipelines.options import MODEL_WINDOW, LakeOptions, ModelsOptions, SpanOptions, WindowSizeOptions

log = logging.getLogger("train")


@dataclass(frozen=True)
class TrainParams:
    seed: int = 42
    window_size: str = MODEL_WINDOW
    min_windows: int = 24               # device baseline: fewer training windows -> fleet baseline
    clip: float = 20.0
    if_trees: int = 200
    if_max_samples: int = 512
    ae_epochs: int = 30
    ae_hidden: tuple[int, ...] = (16, 6)
    ae_batch_size: int = 256
    stat_top_k: int = 1
    threshold_quantile: float = 0.999
    threshold_margin: float = 1.2
    clean_z: float = 8.0


def calibrate(scores: np.ndarray, clean: np.ndarray, q: float, margin: float) -> float:
    """median + margin x (q-quantile - median) of the prefiltered training scores: the margin scales the
    distance from typical to the tail, so it means the same for scores on any scale (the Isolation
    Forest's live in (0, 1), the autoencoder's and the z-score's are unbounded)."""
    base = scores[clean] if clean.sum() >= 50 else scores
    median = float(np.median(base))
    return median + margin * (float(np.quantile(base, q)) - median)


def _metrics(scores: np.ndarray, threshold: float) -> dict:
    qs = np.quantile(scores, [0.5, 0.9, 0.99, 0.999]) if len(scores) else [np.nan] * 4
    return {"windows": int(len(scores)), "threshold": threshold,
            "train_flag_rate": float(np.mean(scores >= threshold)) if len(scores) else None,
            "score_p50": float(qs[0]), "score_p90": float(qs[1]), "score_p99": float(qs[2]),
            "score_p999": float(qs[3])}


def _versions() -> dict:
    import sklearn
    import tensorflow as tf
    return {"scikit-learn": sklearn.__version__, "tensorflow": tf.__version__, "numpy": np.__version__,
            "pyarrow": pa.__version__}


def train(features: pa.Table, manifest: dict, models_root: str, params: TrainParams = TrainParams(),
          names: tuple[str, ...] = MODELS) -> dict[str, registry.ModelVersion]:
    """Fits the models on feature windows and saves one new version of each; returns them."""
    features = features.filter(np.asarray(features["window_size"].to_pylist()) == params.window_size) \
        if features.num_rows else features
    if features.num_rows < 10:
        raise ValueError(f"only {features.num_rows} training windows of size {params.window_size}")
    devices = np.asarray(features["device_id"].to_pylist(), dtype=object)
    x = matrix(features)
    baseline = DeviceBaseline.fit(devices, x, min_windows=params.min_windows, clip=params.clip)
    z = baseline.transform(devices, x)
    stat = RobustZScore(top_k=params.stat_top_k).fit(z)
    clean = np.abs(z).max(axis=1) <= params.clean_z
    baseline_bytes = baseline.to_bytes()
    common = {
        "model_features": list(MODEL_FEATURES), "window_size": params.window_size, "params": asdict(params),
        "training_data": manifest, "libraries": _versions(),
        "baseline": {"devices": int(len(baseline.devices)),
                     "devices_on_fleet_baseline": int((np.unique(devices.astype(str), return_counts=True)[1]
                                                       < params.min_windows).sum())},
        "training_windows": int(features.num_rows), "training_devices": int(len(set(devices))),
        "clean_windows": int(clean.sum()),
    }
    out: dict[str, registry.ModelVersion] = {}
    for name in names:
        started = time.monotonic()
        if name == "isolation_forest":
            model = isolation_forest.fit(z, params.seed, params.if_trees, params.if_max_samples)
            scores = isolation_forest.anomaly_score(model, z)
            files = {SKLEARN_FILE: pickle.dumps(model, protocol=4)}
            kind, extra = "sklearn", {}
        elif name == "autoencoder":
            model, losses = autoencoder.fit(z, params.seed, params.ae_epochs, params.ae_batch_size, params.ae_hidden)
            scores = autoencoder.anomaly_score(model, z)
            files = {KERAS_FILE: autoencoder.to_bytes(model)}
            kind, extra = "keras", {"loss_first": losses[0], "loss_last": losses[-1]}
        elif name == "statistical":
            scores = stat.anomaly_score(z)
            files = {SKLEARN_FILE: pickle.dumps(stat, protocol=4)}
            kind, extra = "sklearn", {}
        else:
            raise ValueError(f"unknown model {name!r}")
        threshold = calibrate(scores, clean, params.threshold_quantile, params.threshold_margin)
        files[BASELINE_FILE] = baseline_bytes
        metrics = dict(_metrics(scores, threshold), fit_seconds=round(time.monotonic() - started, 2), **extra)
        meta = dict(common, kind=kind, threshold=threshold, metrics=metrics)
        version = registry.save(models_root, name, files, meta)
        log.info("saved %s %s: threshold %.4f, training flag rate %.4f (%d windows)", name, version.version,
                 threshold, metrics["train_flag_rate"], metrics["windows"])
        out[name] = version
    return out


class TrainOptions(LakeOptions, ModelsOptions, WindowSizeOptions, SpanOptions, PipelineOptions):
    @classmethod
    def _add_argparse_args(cls, parser):
        g = parser.add_argument_group("train")
        g.add_argument("--dataset", default=None,
                       help="a features dataset directory from extract_training (default: extract one from "
                            "--start/--end, --as_of_version/--as_of_timestamp first)")
        g.add_argument("--model_names", default=",".join(MODELS), help="models to train (comma list)")
        g.add_argument("--seed", type=int, default=TrainParams.seed,
                       help="random seed of the Isolation Forest and the autoencoder")
        g.add_argument("--min_windows", type=int, default=TrainParams.min_windows,
                       help="training windows a device needs for its own baseline (else: the fleet's)")
        g.add_argument("--if_trees", type=int, default=TrainParams.if_trees, help="Isolation Forest: number of trees")
        g.add_argument("--ae_epochs", type=int, default=TrainParams.ae_epochs, help="autoencoder: training epochs")
        g.add_argument("--threshold_quantile", type=float, default=TrainParams.threshold_quantile,
                       help="threshold = median + margin x (this quantile - median) of the (prefiltered) training scores")
        g.add_argument("--threshold_margin", type=float, default=TrainParams.threshold_margin,
                       help="see --threshold_quantile")
        g.add_argument("--clean_z", type=float, default=TrainParams.clean_z,
                       help="training windows with a largest |z| above this are left out of threshold calibration")


def arg_parser():
    return cli.pipeline_parser(TrainOptions, "python -m pipelines.train", __doc__)


def run(argv: list[str] | None = None) -> dict[str, registry.ModelVersion]:
    from pipelines import extract_training as et
    options = cli.pipeline_options(arg_parser(), argv)
    opts = options.view_as(TrainOptions)
    dataset = opts.dataset
    if not dataset:
        if not opts.start:
            raise SystemExit("train: give --dataset, or --start/--end to extract one")
        spec = et.make_spec(opts.lake, "features", opts.start, opts.end, as_of_version=opts.as_of_version,
                            as_of_timestamp=opts.as_of_timestamp, window_size=opts.window_size)
        dataset, manifest = et.extract(opts.lake, spec, options=options)
        if not manifest:     # --dry_run: the extraction's job graph was built, there is no dataset
            return {}
    features, manifest = et.read_dataset(dataset)
    manifest = dict(manifest, path=str(dataset))
    params = TrainParams(seed=opts.seed, window_size=opts.window_size, min_windows=opts.min_windows,
                         if_trees=opts.if_trees, ae_epochs=opts.ae_epochs,
                         threshold_quantile=opts.threshold_quantile, threshold_margin=opts.threshold_margin,
                         clean_z=opts.clean_z)
    started = time.monotonic()
    names = tuple(n.strip() for n in opts.model_names.split(",") if n.strip())
    out = train(features, manifest, opts.models, params, names)
    summary = {n: {"version": v.version, "threshold": v.metadata["threshold"],
                   "train_flag_rate": v.metadata["metrics"]["train_flag_rate"], "path": str(v.path)}
               for n, v in out.items()}
    summary["elapsed_s"] = round(time.monotonic() - started, 2)
    print("TRAIN_SUMMARY " + json.dumps(summary, sort_keys=True))
    return out


def main(argv: list[str] | None = None) -> int:
    cli.setup_logging()
    run(argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
