"""The report's two renderings of one ReportData: the HTML page (the Jinja2 template
templates/report.html, autoescaped, figures embedded as base64 PNG, so the file is self-contained)
and the console summary. Formatting only: what is shown is decided in checks, traces and inputs."""
from __future__ import annotations

import base64
from functools import cache

import jinja2
from jinja2.ext import Extension

from pipelines import evaluate as ev
from pipelines.reporting.checks import FAIL, OK, SKIP, alert_counts, count, failed, seconds, upkeep_rows
from pipelines.reporting.inputs import ReportData
from pipelines.reporting.traces import figure_name


class JoinLines(Extension):
    """The line breaks and indentation of an .html template are layout for its reader, not output:
    each line is stripped and joined to the next, so the page stays one line (as when it was built
    by hand in Python). A line break therefore never stands for a space: break lines between tags
    (or in an expression after a comma), never inside text; a needed space is written {{ " " }}."""

    def preprocess(self, source: str, name: str | None, filename: str | None = None) -> str:
        if not (name or "").endswith(".html"):
            return source
        return "".join(line.strip() for line in source.splitlines())


@cache
def environment() -> jinja2.Environment:
    """Templates ship inside the package (setup.py package_data). StrictUndefined: a misspelt name in
    the template fails the report instead of rendering as an empty string."""
    env = jinja2.Environment(loader=jinja2.PackageLoader("pipelines.reporting", "templates"), autoescape=True,
                             undefined=jinja2.StrictUndefined, keep_trailing_newline=True, extensions=[JoinLines])
    env.filters.update(count=count, seconds=seconds, fmt=ev._fmt)
    return env


def render_html(d: ReportData, pngs: dict[str, bytes]) -> str:
    """The page; ``pngs``: figure name -> PNG (figures.figures), a figure left out shows as "no data"."""
    inc = d.incidents
    return environment().get_template("report.html").render(
        d=d, f=d.facts, status=FAIL if failed(d.checks) else OK,
        tables=[(name, version, rows) for name, (version, rows) in d.facts["tables"].items()],
        upkeep=upkeep_rows(d.upkeep), alert_counts=alert_counts(d.alerts),
        traces=[(figure_name(n, t), t, t.alerts.to_dicts()) for n, t in enumerate(d.traces, 1)],
        mode_order=ev.MODE_ORDER, lat=d.latency, inc=inc,
        incident_rows=inc.incidents.to_dicts() if inc is not None else [],
        unmatched_rows=inc.unmatched_alerts.to_dicts() if inc is not None else [],
        images={name: base64.b64encode(data).decode() for name, data in pngs.items()})


def console_summary(d: ReportData, out_path: str) -> str:
    f = d.facts
    lines = [f"{d.title}: {f['devices']} devices, {f['history_days']:.1f} days of history, "
             f"{f['stream_minutes']:.0f} minutes of streamed arrivals"]
    dead = [c for c in d.checks if c.name.startswith("dead-letter rows")]
    for c in d.checks:
        if c not in dead:
            lines.append(f"  [{c.status:<4}] {c.section}: {c.name}: expected {count(c.expected)}, got {count(c.actual)}")
    if dead:
        bad = [c for c in dead if c.status == FAIL]
        lines.append(f"  [{'FAIL' if bad else dead[0].status:<4}] stream: dead-letter rows by reason: "
                     + ", ".join(f"{c.name.split(': ', 1)[-1]} {count(c.actual)}/{count(c.expected)}" for c in dead))
    lines.append("  alerts: " + (", ".join(f"{r}/{s} {n}" for r, s, n in alert_counts(d.alerts)) or "none"))
    lines.append("  detection: " + _detection_headline(d))
    if d.latency and d.incidents is not None:
        lines.append(f"  acute: {d.incidents.alerted}/{d.incidents.incidents.height} stream incidents alerted, "
                     f"{d.incidents.unmatched_alerts.height} alerts without incident; latency p50 {seconds(d.latency.p50_s)}, "
                     f"p99 {seconds(d.latency.p99_s)}, {d.latency.over_budget} over {d.latency.budget_s:.0f} s")
    if d.upkeep:
        lines.append("  lake upkeep: " + ", ".join(f"{n} {b:,} -> {a:,} files" for n, b, a, _ in upkeep_rows(d.upkeep)))
    skipped = sum(c.status == SKIP for c in d.checks)
    lines.append(f"  reconciliation {'FAILED' if failed(d.checks) else 'OK'}"
                 f"{f' ({skipped} skipped)' if skipped else ''}; report: {out_path}")
    return "\n".join(lines)


def _detection_headline(d: ReportData) -> str:
    if d.detection is None:
        return d.detection_error or "-"
    name = ev.ENSEMBLE if ev.ENSEMBLE in d.detection["models"] else next(iter(d.detection["models"]))
    m = d.detection["models"][name]
    detected = sum(r["detected"] for r in m["modes"].values())
    total = sum(r["incidents"] for r in m["modes"].values())
    return (f"{name} ({d.window_size}) {detected}/{total} failures detected, window precision "
            f"{ev._fmt(m['precision'])}, FPR {ev._fmt(m['fpr'], '{:.4f}')}; point-wise F1 "
            f"{ev._fmt(m['pointwise']['f1'], '{:.3f}')}, false alarms {ev._fmt(m['pointwise']['false_alarm_rate'], '{:.2%}')}, "
            f"missed {ev._fmt(m['pointwise']['missed_alarm_rate'], '{:.2%}')}")
