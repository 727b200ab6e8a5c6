"""Detection quality on a simulated labelled test bench (SKAB-like), through the project's own entry points.

Input: a test-bench-only lake from ``pipelines.simulate`` (``--devices 0 --no_incidents``: no fleet
device, no data fault; ``--test_bench N`` short devices TB-0000.., each with a warm-up of
``--warmup_minutes`` healthy readings, then exactly one failure, then 20 min of tail), at 1 s sampling
with ``--sensor_profile realistic`` (quantised values, pump pulsation, accelerometer-RMS vibration).
Stages, each a subprocess of the entry point (DirectRunner), as ``pipelines/run_local.py`` runs them:

  1. simulate           registry + backfill + ground truth
  2. cleanse            landing -> clean
  3. features           --window_sizes <window_size> --sampling_interval_seconds 1
  4. extract_training   --kind features --spans FILE: each bench device's first --train_minutes
                        (built from the ground truth: run start = failure start - warm-up)
  5. train              on that dataset (--promote)
  6. score              the same window size
  7. evaluate           point-wise F1 / false-alarm / missed-alarm per model (all judged windows)

``evaluate --eval_from`` is one time for all devices, but the bench runs lie at different times, so
the entry point's figures include the training windows (normal, and mostly unflagged: they lower
the false-alarm rate). The bench therefore also judges the non-training part only, with the same
``pipelines.evaluate.evaluate`` on the scores minus each device's training windows (the primary figures).

Machine: whatever runs it (2 shared cores when measured); DirectRunner. Prints the stage timings,
evaluate's tables, a figures table and one JSON line (BENCH_TESTBED {...}).

  python -m bench.bench_testbed --workdir /tmp/bench_testbed --test_bench 12 --train_minutes 10
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
# the simulator's default --end (simulation.DEFAULT_END); fixed, so the same seed gives the same data
MARKER = ".bench_testbed"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.bench_testbed", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", default="/tmp/bench_testbed",
                   help="scratch folder: lake, ground truth, spans file, models, evaluation (cleared at start)")
    p.add_argument("--test_bench", type=int, default=12,
                   help="bench devices (one failure each; modes cycle 3 gradual then 4 acute)")
    p.add_argument("--train_minutes", type=float, default=10,
                   help="each bench device's first N minutes are its training span (must be <= --warmup_minutes)")
    p.add_argument("--warmup_minutes", type=float, default=15,
                   help="healthy minutes before each bench device's failure (the simulator's --warmup_minutes)")
    p.add_argument("--window_size", default="30s", help="feature window the models train on, score and are judged at")
    p.add_argument("--seed", type=int, default=7, help="simulator seed")
    p.add_argument("--backfill_days", type=float, default=None,
                   help="span the bench runs are placed in (default: the shortest the simulator accepts + 10 min)")
    p.add_argument("--train_args", default="",
                   help="extra arguments for pipelines.train, space separated (e.g. '--force --min_windows 10')")
    p.add_argument("--json", default=None, help="also write the result JSON to this file")
    args = p.parse_args(argv)
    if args.train_minutes <= 0 or args.train_minutes > args.warmup_minutes:
        p.error("--train_minutes must be > 0 and <= --warmup_minutes (training must end before the failure)")
    return args


def bench_runs(truth: list[dict], warmup_minutes: float) -> dict[str, tuple[dt.datetime, dt.datetime]]:
    """Per bench device: (run start, failure start), from the ground truth (run start = failure start -
    warm-up, as simulation.testbench.plan_bench places them)."""
    out = {}
    for r in truth:
        if r.get("kind") == "failure" and (r.get("detail") or {}).get("test_bench"):
            s = dt.datetime.fromisoformat(r["start"])
            if r["device_id"] in out:
                raise ValueError(f"bench device {r['device_id']} has more than one failure in the ground truth")
            out[r["device_id"]] = (s - dt.timedelta(minutes=warmup_minutes), s)
    return out


def spans_csv(truth: list[dict], warmup_minutes: float, train_minutes: float) -> str:
    """The ``extract_training --spans`` CSV: each bench device's first ``train_minutes`` (ending before
    its failure)."""
    if train_minutes > warmup_minutes:
        raise ValueError("the training span would reach into the failure")
    runs = bench_runs(truth, warmup_minutes)
    if not runs:
        raise ValueError("the ground truth holds no test-bench failure")
    lines = ["device_id,start,end"]
    for d, (start, _) in sorted(runs.items()):
        lines.append(f"{d},{start.isoformat()},{(start + dt.timedelta(minutes=train_minutes)).isoformat()}")
    return "\n".join(lines) + "\n"


class Stages:
    def __init__(self, total: int):
        self.total, self.n, self.t0, self.seconds = total, 0, time.monotonic(), {}

    def run(self, name: str, module: str, *args: str, ok_codes=(0,)) -> int:
        self.n += 1
        print(f"\n==> [{self.n}/{self.total}] {name}: python -m {module} {' '.join(args)}"
              f"   (+{time.monotonic() - self.t0:.0f} s)", flush=True)
        started = time.monotonic()
        code = subprocess.call([sys.executable, "-m", module, *args], cwd=PROJECT_ROOT)
        self.seconds[name] = round(time.monotonic() - started, 1)
        print(f"    {name}: exit {code} in {self.seconds[name]:.0f} s", flush=True)
        if code not in ok_codes:
            print("BENCH_TESTBED " + json.dumps({"failed_stage": name, "exit": code, "stage_s": self.seconds}))
            raise SystemExit(f"stage '{name}' failed (exit {code})")
        return code


def non_training_report(lake: str, window_size: str, truth_path: Path,
                        spans: dict[str, tuple[dt.datetime, dt.datetime]], eval_from: dt.datetime) -> dict:
    """``pipelines.evaluate.evaluate`` on the scores minus each device's training windows."""
    import numpy as np
    import pyarrow as pa
    from pipelines.evaluate import evaluate, load_scores, load_truth
    truth = load_truth(truth_path)
    scores = load_scores(lake, window_size)
    dev = scores["device_id"].to_pylist()
    ws = scores["window_start"].to_pylist()
    # every window starting before the end of its device's training span: the span's windows, and the
    # partial window a run starts in (its window_start lies before the run's first reading)
    keep = np.array([not (d in spans and w < spans[d][1]) for d, w in zip(dev, ws)])
    return evaluate(scores.filter(pa.array(keep)), truth, eval_from)


def main(argv=None) -> int:
    args = parse_args(argv)
    work = Path(args.workdir)
    if work.exists() and any(work.iterdir()):
        if not (work / MARKER).exists():
            raise SystemExit(f"{work} exists and was not made by this bench; choose another --workdir")
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    (work / MARKER).write_text(json.dumps(vars(args)))
    lake, models, truth_path = str(work / "lake"), str(work / "models"), work / "ground_truth" / "backfill.jsonl"
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    from simulation import DEFAULT_END
    from simulation.testbench import BENCH_MODES, TAIL, failure_length
    need = max(failure_length(m) for m in BENCH_MODES[:args.test_bench]) + TAIL \
        + dt.timedelta(minutes=args.warmup_minutes)
    days = args.backfill_days or (need + dt.timedelta(minutes=10)) / dt.timedelta(days=1)
    start = DEFAULT_END - dt.timedelta(days=days)
    windows = args.window_size

    st = Stages(total=7)
    st.run("simulate", "pipelines.simulate", "--lake", lake, "--devices", "0", "--no_incidents",
           "--unknown_devices", "0", "--test_bench", str(args.test_bench), "--backfill_days", f"{days:.6f}",
           "--end", DEFAULT_END.isoformat(), "--interval", "1", "--sensor_profile", "realistic",
           "--warmup_minutes", f"{args.warmup_minutes:g}", "--seed", str(args.seed))
    truth = [json.loads(line) for line in truth_path.read_text().splitlines() if line.strip()]
    spans_file = work / "spans.csv"
    spans_file.write_text(spans_csv(truth, args.warmup_minutes, args.train_minutes))
    runs = bench_runs(truth, args.warmup_minutes)
    train_spans = {d: (s, s + dt.timedelta(minutes=args.train_minutes)) for d, (s, _) in runs.items()}
    st.run("cleanse", "pipelines.cleanse", "--lake", lake)
    st.run("features", "pipelines.features", "--lake", lake, "--window_sizes", windows,
           "--sampling_interval_seconds", "1")
    st.run("extract_training", "pipelines.extract_training", "--lake", lake, "--kind", "features",
           "--window_size", windows, "--spans", str(spans_file), "--output", str(work / "training"),
           "--dataset_id", "bench")
    st.run("train", "pipelines.train", "--lake", lake, "--models", models, "--window_size", windows,
           "--dataset", str(work / "training" / "bench"), "--seed", str(args.seed), "--promote",
           *args.train_args.split())
    st.run("score", "pipelines.score", "--lake", lake, "--models", models, "--window_size", windows)
    st.run("evaluate", "pipelines.evaluate", "--lake", lake, "--models", models, "--window_size", windows,
           "--ground_truth", str(truth_path), "--eval_from", start.isoformat(), "--json", str(work / "evaluation.json"))

    entry = json.loads((work / "evaluation.json").read_text())
    own = non_training_report(lake, windows, truth_path, train_spans, start)
    skipped = own["skipped_incidents"]

    def figures(report: dict) -> dict:
        return {m: {k: v["pointwise"][k] for k in ("f1", "false_alarm_rate", "missed_alarm_rate", "tp", "fp", "fn", "tn")}
                for m, v in report["models"].items()}

    result = {"test_bench": args.test_bench, "train_minutes": args.train_minutes,
              "warmup_minutes": args.warmup_minutes, "window_size": windows, "seed": args.seed,
              "non_training": figures(own), "all_windows": figures(entry),
              "recall": {m: {mode: v["modes"][mode]["recall"] for mode in v["modes"] if v["modes"][mode]["incidents"]}
                         for m, v in own["models"].items()},
              "skipped_incidents": skipped, "stage_s": st.seconds,
              "total_s": round(time.monotonic() - st.t0, 1)}

    def f(v):
        return "-" if v is None else f"{v:.3f}"
    print(f"\ntest bench: {args.test_bench} devices at 1 s (realistic), {windows} windows, first "
          f"{args.train_minutes:g} min of each run trained on; judged on the rest of each run")
    print("| model | point F1 | false-alarm rate | missed-alarm rate | TP | FP | FN | TN | F1 (all windows) | FAR (all) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for m, r in result["non_training"].items():
        a = result["all_windows"].get(m, {})
        print(f"| {m} | {f(r['f1'])} | {f(r['false_alarm_rate'])} | {f(r['missed_alarm_rate'])} | {r['tp']} | "
              f"{r['fp']} | {r['fn']} | {r['tn']} | {f(a.get('f1'))} | {f(a.get('false_alarm_rate'))} |")
    print("| stage | seconds |\n|---|---|")
    for name, s in st.seconds.items():
        print(f"| {name} | {s:.0f} |")
    if skipped:
        print(f"skipped incidents: {skipped}")
    line = json.dumps(result, sort_keys=True)
    if args.json:
        Path(args.json).write_text(line + "\n")
    print("BENCH_TESTBED " + line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
