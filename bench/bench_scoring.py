"""Scoring throughput: feature windows per second for each model and the whole Beam scoring graph.

Trains the three models on a simulated fleet's first days (simulation.synthetic), then scores
--windows feature windows:
  * per model, in process: device normalisation + the RunInference handler's run_inference on
    blocks of --block_rows windows (what one worker does per element);
  * ``pipelines.score`` end to end on a scratch lake (DirectRunner): read the features Delta table,
    blocks -> normalise -> RunInference x 3 -> join -> ensemble -> scores rows and alerts, TFDV
    contract check, one Delta commit per table.
Prints a table and a JSON line (BENCH_SCORING {...}).

    .venv/bin/python -m bench.bench_scoring --devices 200 --days 21
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.compute as pc  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--devices", type=int, default=200)
    p.add_argument("--days", type=float, default=21.0, help="simulated days (windows = devices x days x 24)")
    p.add_argument("--train_days", type=float, default=4.0)
    p.add_argument("--block_rows", type=int, default=4096)
    p.add_argument("--repeat", type=int, default=3, help="timed repetitions of the in-process runs (best kept)")
    p.add_argument("--skip_pipeline", action="store_true", help="only the in-process per-model figures")
    args = p.parse_args(argv)

    from models import registry
    from simulation import synthetic
    from models.features import DeviceBaseline, matrix
    from models.handlers import BASELINE_FILE, handler_for
    from pipelines.train import TrainParams, train
    from transforms.scoring import ModelRef, ScoreWindows

    start = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    t0 = time.monotonic()
    features, _ = synthetic.fleet_features(args.devices, start, args.days, healthy_days=args.train_days)
    gen_s = time.monotonic() - t0
    split = pa.scalar(start + dt.timedelta(days=args.train_days), features["window_start"].type)
    training = features.filter(pc.less(features["window_start"], split))
    root = tempfile.mkdtemp(prefix="bench-models-")
    t0 = time.monotonic()
    versions = train(training, {"dataset_id": "bench"}, root, TrainParams())
    train_s = time.monotonic() - t0
    windows = features.num_rows
    results = {"windows": windows, "devices": args.devices, "block_rows": args.block_rows,
               "generate_s": round(gen_s, 2), "train_s": round(train_s, 2), "models": {}}

    devices = np.asarray(features["device_id"].to_pylist(), dtype=object)
    x = matrix(features)
    for name, v in versions.items():
        baseline = DeviceBaseline.from_bytes(registry.read_verified(v.path, BASELINE_FILE))
        handler = handler_for(v.metadata["kind"], v.path)
        model = handler.load_model()
        best_norm, best_inf = np.inf, np.inf
        for _ in range(args.repeat):
            t0 = time.monotonic()
            blocks = [baseline.transform(devices[i:i + args.block_rows], x[i:i + args.block_rows])
                      for i in range(0, windows, args.block_rows)]
            t1 = time.monotonic()
            for i in range(0, len(blocks), 8):
                list(handler.run_inference(blocks[i:i + 8], model))
            t2 = time.monotonic()
            best_norm, best_inf = min(best_norm, t1 - t0), min(best_inf, t2 - t1)
        results["models"][name] = {"normalise_rows_per_s": round(windows / best_norm),
                                   "inference_rows_per_s": round(windows / best_inf),
                                   "rows_per_s": round(windows / (best_norm + best_inf))}

    if not args.skip_pipeline:
        # the real entry point on a scratch lake: read the features Delta table, blocks, normalise,
        # RunInference x 3, ensemble, TFDV contract check and one Delta commit per table
        from pipelines import score
        from core import lake as lake_io
        scratch = tempfile.mkdtemp(prefix="bench-lake-")
        lake_io.append(scratch, "features", features)
        t0 = time.monotonic()
        summary = score.run(["--lake", scratch, "--models", root, "--block_rows", str(args.block_rows)])
        pipe_s = time.monotonic() - t0
        results["pipeline"] = {"seconds": round(pipe_s, 2), "windows_per_s": round(windows / pipe_s),
                               "score_rows_per_s": round(summary["score_rows"] / pipe_s),
                               "alerts": summary.get("alerts", 0)}

    print(f"\nscoring throughput, {windows:,} feature windows ({args.devices} devices), blocks of {args.block_rows}")
    print(f"| {'model':<18} | normalise rows/s | inference rows/s | total rows/s |")
    print("|---|---|---|---|")
    for name, r in results["models"].items():
        print(f"| {name:<18} | {r['normalise_rows_per_s']:>16,} | {r['inference_rows_per_s']:>16,} | {r['rows_per_s']:>12,} |")
    if "pipeline" in results:
        r = results["pipeline"]
        print(f"| pipelines.score end to end (DirectRunner, 3 models + ensemble, TFDV, 2 commits) | | | "
              f"{r['windows_per_s']:>12,} windows/s ({r['seconds']} s) |")
    print("BENCH_SCORING " + json.dumps(results, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
