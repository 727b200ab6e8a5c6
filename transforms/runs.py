"""Running one job's pipeline and reading its results: the dry-run check, the metric counters, the
summary line a job ends with. Shared by the entry points (through pipelines.cli) and the job
functions other jobs call (transforms.archive.move, transforms.extraction.extract)."""
from __future__ import annotations

import json


def print_summary(job: str, summary: dict) -> None:
    """The JSON line a job ends with, ``<JOB>_SUMMARY {...}`` (run_local and the tests parse it)."""
    print(f"{job.upper()}_SUMMARY " + json.dumps(summary, sort_keys=True, default=str))


def metric_counters(result, namespace: str) -> dict[str, int]:
    """A finished pipeline's counters of one namespace, by name, summed over the steps that report
    them (committed values where the runner has them, attempted otherwise)."""
    from apache_beam.metrics.metric import MetricsFilter
    out: dict[str, int] = {}
    for c in result.metrics().query(MetricsFilter().with_namespace(namespace))["counters"]:
        value = c.committed if c.committed is not None else c.attempted
        out[c.key.metric.name] = out.get(c.key.metric.name, 0) + int(value or 0)
    return out


def is_dry_run(options) -> bool:
    """``--dry_run`` (DataflowRunner): ``run()`` built and returned the job graph without running it, so
    there are no results, metrics or commits to read afterwards."""
    from apache_beam.options.pipeline_options import TestOptions
    return bool(options.view_as(TestOptions).dry_run)
