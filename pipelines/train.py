"""Training: fits the anomaly models on a features dataset and saves a new version of each.

Input: a features dataset written by ``pipelines.extract_training --kind features`` (``--dataset``),
or ``--start/--end`` (+ ``--as_of_version``/``--as_of_timestamp``), in which case the extraction
runs first. Every file of the dataset is checked against its manifest's sha256.

Models (all on device-relative features, see models/features.py), from the catalog of
models/base.py (``--model_names``; a new model registers there):
  * isolation_forest: scikit-learn IsolationForest (seeded);
  * autoencoder: a dense Keras autoencoder (seeded, deterministic ops, one thread);
  * statistical: robust z-score against each device's own baseline (largest |z| of a window);
  * pca (not trained by default): Hotelling T^2 and Q (SPE) of a PCA per device (models/pca.py).

Threshold calibration, per model, on the training windows' scores: median + ``--threshold_margin``
x (``--threshold_quantile`` quantile - median). Training data are not labelled and may hold
failing devices (a few percent of windows); the quantile is taken over the windows that the
statistical prefilter (largest |z| <= ``--clean_z``) considers normal, so early failures inside the
training span do not inflate the thresholds. The training-window flag rate is recorded as a metric.

Output: ``<models>/<name>/<version>/`` with the artifact (model.pkl or model.keras), the device
baseline (baseline.parquet) and metadata.json: the training data manifest, parameters, threshold,
metrics, library versions and the sha256 of every file.

Guards: each model's flag rate on its own training windows is printed and recorded beside its
target (1 - ``--threshold_quantile``). It is judged on the windows the prefilter considers normal (a
training span may hold failing devices, whose windows any good model flags): when one model flags more
than ``--max_flag_ratio`` x its target of them (and at least 10), or the prefilter itself sets aside
more than 20% of the windows (a collapsed feature scale), nothing is registered and train exits 2 with
the reason (``--force`` registers anyway). Devices with fewer than
``--min_windows`` training windows are listed one by one (they are scored against their own median
with the fleet's typical within-device scale, or, with very few windows, against the fleet baseline)
and counted in the summary.

Champion / challenger (models/registry.py): ``--promote`` makes the versions this run saves the
champions that ``pipelines.score`` uses by default; without it they are challengers (score them side
by side with ``score --rescore --model_version NAME=VERSION`` and compare with ``evaluate --by_version``).
``--promote_version NAME=VERSION ...`` promotes existing versions without training.

examples:
  python -m pipelines.train --promote_version autoencoder=v0003
  python -m pipelines.train --dataset ./data/lake/training/features-2026-10-18-2026-10-22-v3-...
  python -m pipelines.train --start 2026-10-18 --end 2026-10-22 --window_size 1h --models ./data/models
"""
from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import asdict, dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from apache_beam.options.pipeline_options import PipelineOptions

from models import base as catalog
from models import registry
from models.features import BASELINE_FILE, MIN_CENTER_WINDOWS, MODEL_FEATURES, DeviceBaseline, matrix
from pipelines import cli
from pipelines.options import (MODEL_WINDOW, JoinVersions, LakeOptions, ModelsOptions, SpanOptions, WindowSizeOptions,
                               parse_model_versions)

log = logging.getLogger("train")


@dataclass(frozen=True)
class TrainParams:
    seed: int = 42
    window_size: str = MODEL_WINDOW
    min_windows: int = 24               # own scale from this many windows; fewer: the fleet's typical one
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
    max_flag_ratio: float = 3.0         # refuse a model flagging more than this x its target of its training data
    max_prefiltered: float = 0.2        # refuse a span whose prefilter sets aside more than this share of windows


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


class ModelRefused(RuntimeError):
    """A model flags far more of its own training windows than its threshold was calibrated for."""


def target_flag_rate(params: TrainParams) -> float:
    """The share of training windows a threshold is calibrated to flag at most: 1 - the quantile."""
    return 1.0 - params.threshold_quantile


# fewer flagged training windows than this are never refused: on a small training set one or two
# windows are already "far above" a 0.1 % target
MIN_REFUSED_WINDOWS = 10


def check_flag_rates(metrics: dict[str, dict], params: TrainParams) -> list[str]:
    """A readable reason for every model whose flag rate on the calibration windows (those the
    prefilter considers normal: training spans may hold failing devices, whose windows any good model
    flags) is above max_flag_ratio x target, and that flags at least MIN_REFUSED_WINDOWS of them."""
    target = target_flag_rate(params)
    limit = params.max_flag_ratio * target
    return [f"{name} flags {m['clean_flag_rate']:.2%} of its own {m['clean_windows']} training windows "
            f"that the prefilter considers normal, {m['clean_flag_rate'] / target:.0f}x its calibrated target of "
            f"{target:.2%} (the limit is {params.max_flag_ratio:g}x = {limit:.2%}); median score "
            f"{m['score_p50']:.4g}, threshold {m['threshold']:.4g}"
            for name, m in metrics.items()
            if m["clean_flag_rate"] > limit and m["clean_flag_rate"] * m["clean_windows"] >= MIN_REFUSED_WINDOWS]


def check_prefilter(clean: np.ndarray, params: TrainParams) -> list[str]:
    """The prefilter itself degenerates when a feature's scale collapses: most windows then hit the z
    clip. A training span is refused when more than max_prefiltered of its windows are set aside."""
    share = 1.0 - float(clean.mean()) if len(clean) else 0.0
    if share <= params.max_prefiltered:
        return []
    return [f"the prefilter (largest |z| <= {params.clean_z:g}) sets aside {share:.1%} of the {len(clean)} "
            f"training windows (the limit is {params.max_prefiltered:.0%}): a feature's scale collapsed or the "
            f"span is not mostly normal"]


def _fleet_fallback(devices: np.ndarray, min_windows: int) -> dict[str, int]:
    """Devices with fewer than min_windows training windows, logged one by one: their scale is the
    fleet's typical within-device one, and below MIN_CENTER_WINDOWS their level the fleet's too
    (models/features.py)."""
    ids, counts = np.unique(devices.astype(str), return_counts=True)
    few = {str(d): int(n) for d, n in zip(ids, counts) if n < min_windows}
    for d, n in few.items():
        log.warning("device %s: %d training windows (< --min_windows %d): scored %s", d, n, min_windows,
                    "against its own median with the fleet's typical within-device scale" if n >= MIN_CENTER_WINDOWS
                    else f"against the fleet baseline (< {MIN_CENTER_WINDOWS} windows)")
    return few


def train(features: pa.Table, manifest: dict, models_root: str, params: TrainParams = TrainParams(),
          names: tuple[str, ...] | None = None, force: bool = False,
          promote: bool = False) -> dict[str, registry.ModelVersion]:
    """Fits the models (default: the catalog's default ones) on feature windows and saves one new
    version of each (``promote``: as the champions); returns them. Nothing is saved when a model flags more than
    ``params.max_flag_ratio`` x its target of its own training windows (ModelRefused), unless ``force``."""
    names = catalog.default_names() if names is None else names
    for name in names:
        catalog.get(name)                 # an unknown name fails before any training
    features = features.filter(np.asarray(features["window_size"].to_pylist()) == params.window_size) \
        if features.num_rows else features
    if features.num_rows < 10:
        raise ValueError(f"only {features.num_rows} training windows of size {params.window_size}")
    devices = np.asarray(features["device_id"].to_pylist(), dtype=object)
    x = matrix(features)
    window_s = float(np.median(pc.subtract(features["window_end"], features["window_start"])
                               .cast(pa.int64()).to_numpy()) / 1e6)
    baseline = DeviceBaseline.fit(devices, x, min_windows=params.min_windows, clip=params.clip, window_s=window_s)
    z = baseline.transform(devices, x)
    clean = np.abs(z).max(axis=1) <= params.clean_z
    baseline_bytes = baseline.to_bytes()
    fallback = _fleet_fallback(devices, params.min_windows)
    common = {
        "model_features": list(MODEL_FEATURES), "window_size": params.window_size, "params": asdict(params),
        "training_data": manifest, "libraries": _versions(),
        "baseline": {"devices": int(len(baseline.devices)), "devices_on_fleet_baseline": len(fallback),
                     "fleet_baseline_devices": sorted(fallback)},
        "training_windows": int(features.num_rows), "training_devices": int(len(set(devices))),
        "clean_windows": int(clean.sum()),
    }
    fitted = {}
    for name in names:
        cls = catalog.get(name)
        started = time.monotonic()
        model = cls.from_params(params).fit(z, devices, params.seed)
        scores = model.calibration_scores(z, devices)
        threshold = calibrate(scores, clean, params.threshold_quantile, params.threshold_margin)
        calibration = scores[clean] if clean.sum() >= 50 else scores
        metrics = dict(_metrics(scores, threshold), target_flag_rate=target_flag_rate(params),
                       clean_windows=int(len(calibration)), clean_flag_rate=float(np.mean(calibration >= threshold)),
                       fit_seconds=round(time.monotonic() - started, 2), **model.fit_metrics())
        fitted[name] = (cls, model, threshold, metrics)
    prefilter = check_prefilter(clean, params)
    refused = prefilter + check_flag_rates({n: f[3] for n, f in fitted.items()}, params)
    if refused and not force:
        raise ModelRefused("train: refusing to register the models, nothing was saved:\n  "
                           + "\n  ".join(refused) + "\nA model that flags that much of its training data is "
                           "degenerate (e.g. a feature whose scale collapsed) or the data are not normal; "
                           "check the training span, or pass --force to register anyway.")
    for reason in refused:
        log.warning("--force: registering although %s", reason)
    out: dict[str, registry.ModelVersion] = {}
    for name, (cls, model, threshold, metrics) in fitted.items():
        files = dict(model.save(), **{BASELINE_FILE: baseline_bytes})
        meta = dict(common, kind=cls.kind, model_module=cls.__module__, threshold=threshold, metrics=metrics,
                    forced=bool(force and (prefilter or any(r.startswith(name + " ") for r in refused))))
        version = registry.save(models_root, name, files, meta)
        log.info("saved %s %s: threshold %.4f, training flag rate %.4f (target %.4f, %d windows)", name,
                 version.version, threshold, metrics["train_flag_rate"], metrics["target_flag_rate"],
                 metrics["windows"])
        out[name] = version
    if promote:
        for name, version in out.items():
            promote_version(models_root, name, version.version)
    return out


def promote_version(models_root: str, name: str, version: str) -> dict:
    record = registry.promote(models_root, name, version, promoted_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    log.info("promoted %s %s to champion (was %s)", name, version, record["previous"])
    return record


class TrainOptions(LakeOptions, ModelsOptions, WindowSizeOptions, SpanOptions, PipelineOptions):
    @classmethod
    def _add_argparse_args(cls, parser):
        g = parser.add_argument_group("train")
        g.add_argument("--dataset", default=None,
                       help="a features dataset directory from extract_training (default: extract one from "
                            "--start/--end, --as_of_version/--as_of_timestamp first)")
        g.add_argument("--model_names", default=None,
                       help="models to train (comma list; default: " + ",".join(catalog.default_names())
                            + "; registered: " + ",".join(catalog.names()) + ")")
        g.add_argument("--seed", type=int, default=TrainParams.seed,
                       help="random seed of the Isolation Forest and the autoencoder")
        g.add_argument("--min_windows", type=int, default=TrainParams.min_windows,
                       help="training windows a device needs for a scale of its own (fewer: its own median "
                            f"with the fleet's typical within-device scale; fewer than {MIN_CENTER_WINDOWS}: the fleet baseline)")
        g.add_argument("--if_trees", type=int, default=TrainParams.if_trees, help="Isolation Forest: number of trees")
        g.add_argument("--ae_epochs", type=int, default=TrainParams.ae_epochs, help="autoencoder: training epochs")
        g.add_argument("--threshold_quantile", type=float, default=TrainParams.threshold_quantile,
                       help="threshold = median + margin x (this quantile - median) of the (prefiltered) training scores")
        g.add_argument("--threshold_margin", type=float, default=TrainParams.threshold_margin,
                       help="see --threshold_quantile")
        g.add_argument("--clean_z", type=float, default=TrainParams.clean_z,
                       help="training windows with a largest |z| above this are left out of threshold calibration")
        g.add_argument("--max_flag_ratio", type=float, default=3.0,
                       help="refuse to register the models when one flags more than this x its target "
                            "(1 - --threshold_quantile) of its own training windows")
        g.add_argument("--promote", action="store_true", default=False,
                       help="make the versions this run saves the champions scoring uses by default")
        g.add_argument("--promote_version", action=JoinVersions, nargs="+", default="", metavar="NAME=VERSION",
                       help="promote these existing versions to champion (no training)")
        g.add_argument("--force", action="store_true", default=False,
                       help="register the models even when one is above --max_flag_ratio (recorded in its metadata)")


def arg_parser():
    return cli.pipeline_parser(TrainOptions, "python -m pipelines.train", __doc__)


def run(argv: list[str] | None = None) -> dict[str, registry.ModelVersion]:
    from transforms import extraction as et
    options = cli.pipeline_options(arg_parser(), argv)
    opts = options.view_as(TrainOptions)
    if opts.promote_version:
        pinned = parse_model_versions([opts.promote_version], "train", catalog.names())
        records = {n: promote_version(opts.models, n, v) for n, v in pinned.items()}
        print("TRAIN_SUMMARY " + json.dumps({"promoted": {n: {"version": r["version"], "previous": r["previous"]}
                                                          for n, r in records.items()}}, sort_keys=True))
        return {n: registry.load(opts.models, n, v) for n, v in pinned.items()}
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
                         clean_z=opts.clean_z, max_flag_ratio=opts.max_flag_ratio)
    started = time.monotonic()
    names = tuple(n.strip() for n in opts.model_names.split(",") if n.strip()) if opts.model_names else None
    out = train(features, manifest, opts.models, params, names, force=opts.force, promote=opts.promote)
    summary = {n: {"version": v.version, "threshold": v.metadata["threshold"], "champion": registry.champion(opts.models, n),
                   "train_flag_rate": v.metadata["metrics"]["train_flag_rate"],
                   "target_flag_rate": v.metadata["metrics"]["target_flag_rate"], "path": str(v.path)}
               for n, v in out.items()}
    if out:
        summary["devices_on_fleet_baseline"] = next(iter(out.values())).metadata["baseline"]["devices_on_fleet_baseline"]
    summary["elapsed_s"] = round(time.monotonic() - started, 2)
    print("TRAIN_SUMMARY " + json.dumps(summary, sort_keys=True))
    return out


def main(argv: list[str] | None = None) -> int:
    cli.setup_logging()
    try:
        run(argv)
    except ModelRefused as exc:
        print(exc, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    cli.exit_process(main)
