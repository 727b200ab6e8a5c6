"""The report's figures (matplotlib, Agg backend, imported on first use): sensor traces of failing
devices, the alert timeline, score distributions and acute latency, each rendered to PNG bytes."""
from __future__ import annotations

import datetime as dt
import io

import numpy as np
import polars as pl
import pyarrow as pa

from pipelines import evaluate as ev
from pipelines.reporting.checks import Latency
from pipelines.reporting.inputs import ReportData
from pipelines.reporting.traces import Trace, figure_name
from schemas.sensors import SENSORS


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _naive(values) -> np.ndarray:
    """UTC datetimes (Python or polars) as naive numpy datetime64 for matplotlib."""
    return np.array([v.replace(tzinfo=None) for v in values], dtype="datetime64[us]")


SEVERITY_STYLE = {"CRITICAL": ("tab:red", "-"), "HIGH": ("tab:purple", "--"), "WARNING": ("tab:orange", "--")}


def fig_trace(t: Trace):
    plt = _plt()
    r = t.incident
    sensors = list(t.series)
    fig, axes = plt.subplots(len(sensors), 1, figsize=(12, 2.6 * len(sensors) + 0.6), sharex=True, squeeze=False)
    for ax, sensor in zip(axes[:, 0], sensors):
        s = t.series[sensor]
        if s.height:
            x = _naive(s.get_column("timestamp_utc").to_list())
            ax.plot(x, s.get_column("value").to_numpy(), lw=0.8, marker="." if s.height < 500 else None, ms=2,
                    color="tab:blue", label=sensor)
            bad = (s.get_column("quality") != "GOOD").to_numpy()
            if bad.any():
                ax.plot(x[bad], s.get_column("value").to_numpy()[bad], "x", color="black", ms=4,
                        label="SUSPECT/BAD quality")
        else:
            ax.text(0.5, 0.5, "no clean readings in this span", transform=ax.transAxes, ha="center", color="gray")
        _shade_incident(ax, r, t.follow_up)
        _mark_alerts(ax, t.alerts)
        ax.set_ylabel(f"{sensor}\n({SENSORS[sensor].canonical_unit})")
        ax.set_xlim(*_naive(_plotted_span(t)))
        ax.grid(alpha=0.3)
        _dedup_legend(ax)
    axes[-1, 0].set_xlabel("time (UTC)")
    fig.suptitle(f"{r['device_id']}: {r['mode']} ({r['category']}, {r['source']} data)", fontsize=11)
    fig.autofmt_xdate()
    return fig


def _plotted_span(t: Trace) -> tuple[dt.datetime, dt.datetime]:
    """The trace window, cut short where the data end (a stream that stopped) after the incident."""
    lo, hi = t.window
    ends = [s.get_column("timestamp_utc").max() for s in t.series.values() if s.height]
    incident_end = dt.datetime.fromisoformat((t.follow_up or t.incident)["end"])
    if ends:
        hi = min(hi, max(max(ends), incident_end) + (hi - lo) * 0.03)
    return lo, hi


def _shade_incident(ax, r: dict, follow: dict | None) -> None:
    span = _naive([dt.datetime.fromisoformat(r["start"]), dt.datetime.fromisoformat(r["end"])])
    ax.axvspan(*span, color="tab:red", alpha=0.12, label=f"incident: {r['mode']}")
    if follow:
        span = _naive([dt.datetime.fromisoformat(follow["start"]), dt.datetime.fromisoformat(follow["end"])])
        ax.axvspan(*span, color="tab:red", alpha=0.35, label=f"then acute: {follow['mode']}")


def _mark_alerts(ax, alerts: pl.DataFrame) -> None:
    """Acute alerts: a line at the triggering reading; model alerts: a band on top over the scored
    window they stand for, and a dashed line at its start."""
    for a in alerts.iter_rows(named=True):
        color, style = SEVERITY_STYLE.get(a["severity"], ("gray", ":"))
        start, until = _naive([a["event_time"], a.get("until") or a["event_time"]])
        if a["severity"] == "CRITICAL" or until <= start:
            ax.axvline(start, color=color, ls=style, lw=1.3, label=f"{a['severity']} {a['rule']}")
        else:
            ax.axvline(start, color=color, ls=style, lw=1.0)
            ax.axvspan(start, until, ymin=0.9, ymax=1.0, color=color, alpha=0.7,
                       label=f"{a['severity']} {a['rule']} (scored window)")


def _dedup_legend(ax) -> None:
    handles, labels = ax.get_legend_handles_labels()
    seen = dict(zip(labels, handles))
    if seen:
        ax.legend(seen.values(), seen.keys(), fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))


def fig_alert_timeline(alerts: pl.DataFrame):
    if not alerts.height:
        return None
    plt = _plt()
    rules = sorted(set(alerts.get_column("rule").to_list()), key=lambda r: (r.startswith("MODEL_"), r))
    fig, ax = plt.subplots(figsize=(11, 0.55 * len(rules) + 1.8))
    for severity, (color, _) in SEVERITY_STYLE.items():
        part = alerts.filter(pl.col("severity") == severity)
        if part.height:
            y = [rules.index(r) + {"CRITICAL": 0, "HIGH": 0.15, "WARNING": -0.15}[severity]
                 for r in part.get_column("rule").to_list()]
            ax.scatter(_naive(part.get_column("event_time").to_list()), y, color=color, s=22, alpha=0.8,
                       label=f"{severity} ({part.height})", edgecolors="none")
    ax.set_yticks(range(len(rules)), rules)
    ax.set_ylim(-0.6, len(rules) - 0.4)
    ax.set_xlabel("alert event time (UTC)")
    ax.set_title("alerts by rule and severity (model alerts: start of the scored window)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.autofmt_xdate()
    return fig


def fig_scores(scores: pa.Table | None, window_size: str | None):
    if scores is None or not scores.num_rows:
        return None
    plt = _plt()
    df = pl.from_arrow(scores.select(["model", "model_version", "score", "threshold", "is_anomaly"]))
    models = [m for m in list(ev.MODELS) + [ev.ENSEMBLE] if m in set(df.get_column("model").to_list())]
    cols = 2
    rows = (len(models) + 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(11, 3.2 * rows), squeeze=False)
    for ax, model in zip(axes.ravel(), models):
        _score_hist(ax, df.filter(pl.col("model") == model), model)
    for ax in axes.ravel()[len(models):]:
        ax.axis("off")
    fig.suptitle(f"anomaly score distributions, {window_size} windows (newest score per window)", fontsize=11)
    fig.tight_layout()
    return fig


def _score_hist(ax, part: pl.DataFrame, model: str) -> None:
    score = part.get_column("score").to_numpy()
    flag = part.get_column("is_anomaly").to_numpy()
    thresholds = sorted(set(part.get_column("threshold").to_list()))
    lo, hi = float(score.min()), float(max(score.max(), max(thresholds)))
    log_x = lo > 0 and hi / lo > 30
    bins = np.geomspace(lo, hi * 1.01, 60) if log_x else np.linspace(lo, hi * 1.01 if hi > 0 else hi + 1, 60)
    ax.hist([score[~flag], score[flag]], bins=bins, stacked=True, color=["tab:blue", "tab:red"],
            label=[f"normal ({int((~flag).sum())})", f"anomalous ({int(flag.sum())})"])
    for th in thresholds:
        ax.axvline(th, color="black", ls="--", lw=1.2, label=f"threshold {th:.3g}")
    ax.axvspan(min(thresholds), bins[-1], color="tab:red", alpha=0.07)
    ax.set_yscale("log")
    if log_x:
        ax.set_xscale("log")
    ax.set_xlabel("score" + (" (log)" if log_x else ""))
    ax.set_ylabel("windows (log)")
    version = part.get_column("model_version")[0]
    ax.set_title(model + (f" {version}" if len(version) <= 12 else ""), fontsize=9)
    ax.legend(fontsize=7)


def fig_latency(lat: Latency | None):
    if lat is None or not lat.joined:
        return None
    plt = _plt()
    values = lat.per_alert.get_column("latency_s").drop_nulls().to_numpy()
    from matplotlib.ticker import MaxNLocator
    fig, ax = plt.subplots(figsize=(11, 3.4))
    x_max = max(float(values.max()), lat.budget_s) * 1.05
    ax.hist(values, bins=np.linspace(0, x_max, 61), color="tab:blue", alpha=0.8,
            label=f"acute alerts ({len(values)})")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    for v, name, color in ((lat.p50_s, "p50", "tab:green"), (lat.p99_s, "p99", "tab:orange"),
                           (lat.budget_s, "requirement", "tab:red")):
        ax.axvline(v, color=color, ls="--", label=f"{name} {v:.1f} s")
    ax.set_xlabel("seconds from arrival (timestamp_ingested) to alert (detected_at)")
    ax.set_ylabel("alerts")
    ax.set_title("latency from arrival to acute alert")
    ax.set_xlim(0, x_max)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return fig


def png(fig) -> bytes:
    plt = _plt()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def figures(data: ReportData) -> dict[str, bytes]:
    """name -> PNG; missing figures (no data) are left out."""
    out = {}
    for n, t in enumerate(data.traces, 1):
        out[figure_name(n, t)] = png(fig_trace(t))
    for name, fig in (("alert_timeline", fig_alert_timeline(data.alerts)),
                      ("score_distributions", fig_scores(data.scores, data.window_size)),
                      ("latency", fig_latency(data.latency))):
        if fig is not None:
            out[name] = png(fig)
    return out
