"""Detection quality of batch scoring against the simulator's ground truth.

Reads the scores table (one window size; the newest score of each device x window x model) and
the simulator's ground truth (the history's and the live stream's JSON Lines), and reports per
failure mode and per model (and the ensemble):

  * incidents: failures of that mode that start inside the scored span (failures that started
    earlier, e.g. inside the training span, cannot be judged and are listed as skipped);
  * recall: share of those incidents detected in time: a flagged window of the device that
    overlaps the failure and, for the gradual modes, ends no later than the moment the failure
    turns acute (the point of batch scoring is to catch them before that); acute ones: any
    flagged window overlapping the failure;
  * precision (window level): TP / (TP + FP), TP = flagged windows inside that mode's failures
    (gradual damage persists after its span, so all later windows of that device count), FP =
    flagged windows of devices and times with no failure and no data fault. FP is not
    attributable to a mode, so every mode is charged all of them (conservative);
  * median delay: from failure start to the end of the first flagged window (when batch scoring
    can first see it), hours;
  * per model: false-positive rate on normal windows and overall window precision;
  * point-wise (every judged window a point, labelled anomalous when it overlaps a failure):
    F1, false-alarm rate FP / (FP + TN) and missed-alarm rate FN / (FN + TP), the measures of
    labelled benchmarks such as SKAB.

Model alerts (the alerts table, rule MODEL_ENSEMBLE): incidents (one OPEN row each) per 1,000
device-days scored, and the false ones separately: an incident is true when it overlaps a failure of
its device (gradual damage persists), a data fault one when it overlaps only a data fault, false
otherwise (``incident_alerts``).

Windows that overlap a data fault (stuck value, dropout, duplicates, replay, out-of-range) are
neither TP nor FP. Acute failures that follow a gradual one ("acute_after_gradual") are on devices
already flagged by their gradual phase and are not scored separately.

examples:
  python -m pipelines.evaluate --lake ./data/lake
  python -m pipelines.evaluate --by_version          # champion and challengers side by side
  python -m pipelines.evaluate --window_size 1h --ground_truth ./data/ground_truth --json report.json
"""
from __future__ import annotations

import datetime as dt
import json
import logging
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
from apache_beam.options.pipeline_options import PipelineOptions

from models import base as catalog
from models.ensemble import ENSEMBLE, MODELS  # noqa: F401  (MODELS: the default models, for the report)
from pipelines import cli
from pipelines.options import LakeOptions, ModelsOptions, WindowSizeOptions
from simulation.incidents import ACUTE_MODES, GRADUAL_MODES
from core import lake
from transforms.scoring import MODEL_ALERT_RULE

log = logging.getLogger("evaluate")
ROW_FAULTS = ("stuck_value", "dropout", "duplicates", "replay", "out_of_range")
MODE_ORDER = list(GRADUAL_MODES) + list(ACUTE_MODES)


TRUTH_SOURCES = ("backfill", "stream")      # the simulator's ground-truth files (<source>.jsonl)


def truth_records(folder: str | Path) -> list[dict]:
    """The records of a ground-truth folder: the history's (backfill.jsonl) and the live stream's
    (stream.jsonl), whichever exist, each tagged with its ``source``; [] when there are none."""
    rows = []
    for source in TRUTH_SOURCES:
        path = Path(folder) / f"{source}.jsonl"
        if path.is_file():
            rows += [dict(r, source=source) for r in _read_truth(path)]
    return rows


def load_truth(path: str | Path) -> list[dict]:
    """Ground truth from one JSON Lines file, or from a ground-truth folder (:func:`truth_records`)."""
    rows = truth_records(path) if Path(path).is_dir() else _read_truth(path) if Path(path).is_file() else []
    if not rows:
        raise SystemExit(f"evaluate: no ground truth at {path}; give --ground_truth (the simulator's "
                         f"ground_truth folder, or one of its {', '.join(TRUTH_SOURCES)} .jsonl files)")
    return rows


def _read_truth(path: Path) -> list[dict]:
    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    for r in rows:
        r["start_s"] = dt.datetime.fromisoformat(r["start"]).timestamp()
        r["end_s"] = dt.datetime.fromisoformat(r["end"]).timestamp()
    return rows


def load_scores(lake_root: str, window_size: str, since: dt.datetime | None = None,
                by_version: bool = False) -> pa.Table:
    table = lake.open_table(lake_root, "scores")
    if table is None:
        raise SystemExit("evaluate: no scores table")
    expr = pads.field("window_size") == window_size
    if since is not None:
        expr = expr & (pads.field("date") >= pa.scalar(since.date(), pa.date32()))
    data = table.to_pyarrow_dataset().to_table(
        filter=expr, columns=["device_id", "window_start", "window_end", "model", "model_version", "score",
                              "threshold", "is_anomaly", "scored_at"])
    # newest score per device x window x model (x model version with ``by_version``; a window rescored
    # after a late reading)
    cols = ["model", "model_version", "device_id", "window_start"] if by_version else \
        ["model", "device_id", "window_start"]
    data = data.sort_by([(c, "ascending") for c in cols] + [("scored_at", "descending")])
    key = list(zip(*[data[c].to_pylist() for c in cols]))
    keep = np.ones(data.num_rows, bool)
    for i in range(1, data.num_rows):
        keep[i] = key[i] != key[i - 1]
    return data.filter(pa.array(keep))


def compare_versions(scores: pa.Table, truth: list[dict], eval_from: dt.datetime | None = None,
                     champions: dict[str, str] | None = None) -> list[dict]:
    """Champion / challenger: one row per model x model version of the scores (keyed by version, see
    ``load_scores(by_version=True)``), each judged by :func:`evaluate` on that version's rows over the
    same span, in the catalog's model order and version order."""
    span_from = eval_from or min(scores["window_start"].to_pylist())
    pairs = sorted(set(zip(scores["model"].to_pylist(), scores["model_version"].to_pylist())))
    order = {m: i for i, m in enumerate(list(catalog.names()) + [ENSEMBLE])}
    out = []
    for model, version in sorted(pairs, key=lambda p: (order.get(p[0], len(order)), p[0], p[1])):
        part = scores.filter(pc.and_(pc.equal(scores["model"], model), pc.equal(scores["model_version"], version)))
        r = evaluate(part, truth, span_from)
        m = r["models"][model]
        detected = sum(v["detected"] for v in m["modes"].values())
        incidents = sum(v["incidents"] for v in m["modes"].values())
        out.append({"model": model, "version": version,
                    "champion": bool(champions and champions.get(model) == version),
                    "windows": part.num_rows, "normal_windows": m["normal_windows"],
                    "false_positive_windows": m["false_positive_windows"], "fpr": m["fpr"],
                    "precision": m["precision"], "detected": detected, "incidents": incidents,
                    "gradual_flagged_before_acute": r["gradual_flagged_before_acute"][model]})
    return out


def render_versions(rows: list[dict]) -> str:
    lines = ["model versions side by side", "",
             "| model | version | champion | windows | normal windows | false positives | FPR | window precision "
             "| failures detected | gradual flagged before acute |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['version']} | {'yes' if r['champion'] else ''} | {r['windows']} | "
                     f"{r['normal_windows']} | {r['false_positive_windows']} | {_fmt(r['fpr'], '{:.4f}')} | "
                     f"{_fmt(r['precision'])} | {r['detected']}/{r['incidents']} | {r['gradual_flagged_before_acute']} |")
    return "\n".join(lines)


def evaluate(scores: pa.Table, truth: list[dict], eval_from: dt.datetime | None = None) -> dict:
    present = set(scores["model"].to_pylist())
    # the catalog's models in its order, then any other model the scores hold, the ensemble last
    models = [m for m in catalog.names() if m in present]
    models += sorted(present - set(models) - {ENSEMBLE}) + ([ENSEMBLE] if ENSEMBLE in present else [])
    report: dict = {"models": {}, "skipped_incidents": []}
    ws_all = np.array([t.timestamp() for t in scores["window_start"].to_pylist()])
    span_lo = eval_from.timestamp() if eval_from else ws_all.min()
    span_hi = np.array([t.timestamp() for t in scores["window_end"].to_pylist()]).max()
    failures = [r for r in truth if r["kind"] == "failure" and r.get("category") in ("acute", "gradual")]
    evaluable = [r for r in failures if span_lo <= r["start_s"] < span_hi]
    report["skipped_incidents"] = [f"{r['mode']}@{r['device_id']} (starts {r['start']})" for r in failures
                                   if r not in evaluable]
    faults = defaultdict(list)
    for r in truth:
        if r["kind"] == "data_fault" and r["mode"] in ROW_FAULTS:
            faults[r["device_id"]].append((r["start_s"], r["end_s"]))
    failure_spans = defaultdict(list)
    for r in truth:
        if r["kind"] == "failure":
            end = np.inf if r["category"] == "gradual" else r["end_s"]
            failure_spans[r["device_id"]].append((r["start_s"], end, r["mode"], r["category"]))
    report["span"] = [dt.datetime.fromtimestamp(span_lo, dt.timezone.utc).isoformat(),
                      dt.datetime.fromtimestamp(span_hi, dt.timezone.utc).isoformat()]
    for model in models:
        part = scores.filter(pc.equal(scores["model"], model))
        dev = np.asarray(part["device_id"].to_pylist(), dtype=object)
        ws = np.array([t.timestamp() for t in part["window_start"].to_pylist()])
        we = np.array([t.timestamp() for t in part["window_end"].to_pylist()])
        flag = np.asarray(part["is_anomaly"].to_pylist(), bool)
        in_span = ws >= span_lo
        # window labels: mode of the overlapping failure (gradual ones persist), data fault, or normal
        label = np.full(len(dev), "", dtype=object)
        fault = np.zeros(len(dev), bool)
        by_device = defaultdict(list)
        for i, d in enumerate(dev):
            by_device[d].append(i)
        for d, rows in by_device.items():
            rows = np.asarray(rows)
            for s, e, mode, category in failure_spans.get(d, []):
                hit = rows[(we[rows] > s) & (ws[rows] < e)]
                name = mode if category != "acute_after_gradual" else ""
                label[hit] = np.where(label[hit] == "", name or "acute_after_gradual", label[hit])
            for s, e in faults.get(d, []):
                fault[rows[(we[rows] > s) & (ws[rows] < e)]] = True
        normal = in_span & (label == "") & ~fault
        fp = int((flag & normal).sum())
        tp_all = int((flag & in_span & (label != "")).sum())
        rows_out = {}
        for mode in MODE_ORDER:
            incs = [r for r in evaluable if r["mode"] == mode]
            detected, delays = 0, []
            for r in incs:
                rows = np.asarray(by_device.get(r["device_id"], []), dtype=int)
                if not len(rows):
                    continue
                if r["category"] == "gradual":
                    ok = (we[rows] > r["start_s"]) & (we[rows] <= r["end_s"] + 1e-6)
                else:
                    ok = (we[rows] > r["start_s"]) & (ws[rows] < r["end_s"])
                hits = rows[ok & flag[rows]]
                if len(hits):
                    detected += 1
                    delays.append((we[hits].min() - r["start_s"]) / 3600.0)
            tp = int((flag & in_span & (label == mode)).sum())
            labelled = int((in_span & (label == mode)).sum())
            rows_out[mode] = {
                "category": "gradual" if mode in GRADUAL_MODES else "acute",
                "incidents": len(incs), "detected": detected,
                "recall": detected / len(incs) if incs else None,
                "precision": tp / (tp + fp) if tp + fp else None,
                "median_delay_h": float(np.median(delays)) if delays else None,
                "window_recall": tp / labelled if labelled else None,
            }
        report["models"][model] = {
            "modes": rows_out, "pointwise": pointwise(flag[in_span & ~fault], label[in_span & ~fault] != ""),
            "normal_windows": int(normal.sum()), "false_positive_windows": fp,
            "fpr": fp / normal.sum() if normal.sum() else None,
            "precision": tp_all / (tp_all + fp) if tp_all + fp else None,
            "version": part["model_version"][0].as_py() if part.num_rows else None,
        }
    gradual = [r for r in evaluable if r["category"] == "gradual"]
    report["gradual_flagged_before_acute"] = {
        m: f"{sum(v['modes'][g]['detected'] for g in GRADUAL_MODES)}/{len(gradual)}"
        for m, v in report["models"].items()}
    return report


def pointwise(flagged: np.ndarray, anomalous: np.ndarray) -> dict:
    """Point-wise detection measures of flags against labels (one point per window)."""
    tp, fp = int((flagged & anomalous).sum()), int((flagged & ~anomalous).sum())
    fn, tn = int((~flagged & anomalous).sum()), int((~flagged & ~anomalous).sum())
    return {"tp": tp, "fp": fp, "fn": fn, "tn": tn,
            "f1": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else None,
            "false_alarm_rate": fp / (fp + tn) if fp + tn else None,
            "missed_alarm_rate": fn / (fn + tp) if fn + tp else None}


def _skipped_by_mode(skipped: list[str]) -> str:
    counts: dict[str, int] = defaultdict(int)
    for item in skipped:
        counts[item.split("@", 1)[0]] += 1
    return ", ".join(f"{mode} {n}" for mode, n in sorted(counts.items()))


def load_alerts(lake_root: str) -> pa.Table | None:
    """The model alerts of the alerts table (None without a table)."""
    table = lake.open_table(lake_root, "alerts")
    if table is None:
        return None
    return table.to_pyarrow_dataset().to_table(filter=pads.field("rule") == MODEL_ALERT_RULE,
                                               columns=["device_id", "severity", "event_time", "context"])


def incident_alerts(alerts: pa.Table, scores: pa.Table, truth: list[dict], span: tuple[float, float]) -> dict:
    """Model incidents opened in ``span`` (epoch s) per 1,000 device-days scored there, false ones
    separately (module doc). Device-days: the ensemble's scored windows x their length."""
    lo, hi = span
    ens = scores.filter(pc.equal(scores["model"], ENSEMBLE)) if ENSEMBLE in set(scores["model"].to_pylist()) else scores
    ws = np.array([t.timestamp() for t in ens["window_start"].to_pylist()])
    we = np.array([t.timestamp() for t in ens["window_end"].to_pylist()])
    inside = ws >= lo
    device_days = float((we[inside] - ws[inside]).sum()) / 86400.0
    failures, faults = defaultdict(list), defaultdict(list)
    for r in truth:
        if r["kind"] == "failure":
            failures[r["device_id"]].append((r["start_s"], np.inf if r["category"] == "gradual" else r["end_s"]))
        elif r["kind"] == "data_fault" and r["mode"] in ROW_FAULTS:
            faults[r["device_id"]].append((r["start_s"], r["end_s"]))
    incidents: dict[tuple, dict] = {}
    for d, sev, t, ctx in zip(*[alerts[c].to_pylist() for c in ("device_id", "severity", "event_time", "context")]):
        c = json.loads(ctx or "{}")
        status = c.get("status") or ("OPEN" if sev == "WARNING" else "ESCALATED")     # rows before incidents
        first = dt.datetime.fromisoformat(c["first_window_start"]).timestamp() if "first_window_start" in c \
            else t.timestamp()
        inc = incidents.setdefault((d, first), {"device_id": d, "start": first, "end": hi, "high": False,
                                                "opened": False})
        inc["opened"] |= status == "OPEN"
        inc["high"] |= sev == "HIGH"
        if status == "CLOSED" and "last_window_end" in c:
            inc["end"] = dt.datetime.fromisoformat(c["last_window_end"]).timestamp()
    judged = [i for i in incidents.values() if i["opened"] and lo <= i["start"] < hi]
    on_failure = [_overlaps(failures.get(i["device_id"], []), i) for i in judged]
    true = sum(on_failure)
    fault = sum(not hit and _overlaps(faults.get(i["device_id"], []), i) for hit, i in zip(on_failure, judged))
    false = len(judged) - true - fault

    def per_1000(n: int) -> float | None:
        return 1000.0 * n / device_days if device_days else None

    return {"device_days": round(device_days, 3), "incidents": len(judged), "true": true, "data_fault": fault,
            "false": false, "high": sum(i["high"] for i in judged),
            "per_1000_device_days": per_1000(len(judged)), "false_per_1000_device_days": per_1000(false)}


def _overlaps(spans: list[tuple[float, float]], incident: dict) -> bool:
    return any(s < incident["end"] and e > incident["start"] for s, e in spans)


def _fmt(v, pattern="{:.2f}") -> str:
    return "-" if v is None else pattern.format(v)


def render(report: dict) -> str:
    lines = [f"detection quality, scored span {report['span'][0]} .. {report['span'][1]}", ""]
    header = f"| {'mode':<22} | {'model':<16} | incidents | detected | recall | precision | median delay h | window recall |"
    lines += [header, "|" + "|".join("-" * (len(c)) for c in header.split("|")[1:-1]) + "|"]
    for mode in MODE_ORDER:
        for model, m in report["models"].items():
            r = m["modes"][mode]
            lines.append(f"| {mode:<22} | {model:<16} | {r['incidents']:>9} | {r['detected']:>8} | "
                         f"{_fmt(r['recall']):>6} | {_fmt(r['precision']):>9} | {_fmt(r['median_delay_h'], '{:.1f}'):>14} | "
                         f"{_fmt(r['window_recall']):>13} |")
    lines += ["", f"| {'model':<16} | version | normal windows | false positives | FPR | window precision | gradual flagged before acute |",
              "|---|---|---|---|---|---|---|"]
    for model, m in report["models"].items():
        lines.append(f"| {model:<16} | {m['version']} | {m['normal_windows']} | {m['false_positive_windows']} | "
                     f"{_fmt(m['fpr'], '{:.4f}')} | {_fmt(m['precision'])} | {report['gradual_flagged_before_acute'][model]} |")
    lines += ["", "point-wise (one point per judged window)", "",
              f"| {'model':<16} | point F1 | false-alarm rate | missed-alarm rate | TP | FP | FN | TN |",
              "|---|---|---|---|---|---|---|---|"]
    for model, m in report["models"].items():
        pw = m["pointwise"]
        lines.append(f"| {model:<16} | {_fmt(pw['f1'], '{:.3f}')} | {_fmt(pw['false_alarm_rate'], '{:.2%}')} | "
                     f"{_fmt(pw['missed_alarm_rate'], '{:.2%}')} | {pw['tp']} | {pw['fp']} | {pw['fn']} | {pw['tn']} |")
    inc = report.get("model_alerts")
    if inc:
        lines += ["", "| model incident alerts | device-days | incidents | HIGH | true | data fault | false | per 1,000 "
                  "device-days | false per 1,000 device-days |", "|---|---|---|---|---|---|---|---|---|",
                  f"| ensemble | {inc['device_days']:.1f} | {inc['incidents']} | {inc['high']} | {inc['true']} | "
                  f"{inc['data_fault']} | {inc['false']} | {_fmt(inc['per_1000_device_days'])} | "
                  f"{_fmt(inc['false_per_1000_device_days'])} |"]
    if report["skipped_incidents"]:
        lines += ["", f"not judged (started before the scored span, listed in the JSON report): "
                      f"{len(report['skipped_incidents'])}: {_skipped_by_mode(report['skipped_incidents'])}"]
    return "\n".join(lines)


class EvaluateOptions(LakeOptions, ModelsOptions, WindowSizeOptions, PipelineOptions):
    @classmethod
    def _add_argparse_args(cls, parser):
        g = parser.add_argument_group("evaluate")
        g.add_argument("--ground_truth", default=None,
                       help="the simulator's ground truth: a folder (its backfill.jsonl and stream.jsonl: "
                            "failures of the history and of the live stream) or one JSON Lines file "
                            "(default: <lake>/../ground_truth)")
        g.add_argument("--eval_from", default=None,
                       help="judge windows and incidents from this UTC time on (default: the first scored window)")
        g.add_argument("--json", default=None, help="also write the report as JSON to this file")
        g.add_argument("--by_version", action="store_true", default=False,
                       help="compare the model versions of the scores side by side (champion / challenger: "
                            "versions scored with score --rescore), one row per model x version")


def arg_parser():
    return cli.pipeline_parser(EvaluateOptions, "python -m pipelines.evaluate", __doc__)


def run(argv: list[str] | None = None) -> dict:
    options = cli.pipeline_options(arg_parser(), argv)
    opts = options.view_as(EvaluateOptions)
    truth_path = opts.ground_truth or str(Path(opts.lake.removeprefix("file://")).parent / "ground_truth")
    since = cli.utc_datetime(opts.eval_from) if opts.eval_from else None
    truth = load_truth(truth_path)
    if opts.by_version:
        from models import registry
        scores = load_scores(opts.lake, opts.window_size, since, by_version=True)
        champions = {n: registry.champion(opts.models, n) for n in catalog.names()}
        rows = compare_versions(scores, truth, since, champions)
        print(render_versions(rows))
        if opts.json:
            Path(opts.json).write_text(json.dumps(rows, indent=2, sort_keys=True))
        return {"versions": rows}
    scores = load_scores(opts.lake, opts.window_size, since)
    report = evaluate(scores, truth, since)
    alerts = load_alerts(opts.lake)
    if alerts is not None:
        span = tuple(dt.datetime.fromisoformat(t).timestamp() for t in report["span"])
        report["model_alerts"] = incident_alerts(alerts, scores, truth, span)
    print(render(report))
    if opts.json:
        Path(opts.json).write_text(json.dumps(report, indent=2, sort_keys=True))
    return report


def main(argv: list[str] | None = None) -> int:
    cli.setup_logging()
    run(argv)
    return 0


if __name__ == "__main__":
    cli.exit_process(main)
