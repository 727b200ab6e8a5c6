"""Command-line plumbing shared by the entry points."""
from __future__ import annotations

import argparse
import atexit
import json
import logging
import os
import sys
import time
import traceback
import warnings
from pathlib import Path
from typing import Callable, Iterable, NoReturn

from core.timestamps import utc_datetime  # noqa: F401  (the argparse type of the entry points' dates)
from transforms.runs import is_dry_run, metric_counters, print_summary  # noqa: F401  (every entry point's)


def setup_logging(level: str = "INFO") -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    warnings.filterwarnings("ignore", category=FutureWarning)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for noisy in ("apache_beam.runners.worker", "apache_beam.typehints", "kafka", "absl"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def entry_point(run, ok=lambda summary: True):
    """``main(argv) -> exit code`` of a job whose ``run(argv)`` returns its summary; 1 when not ``ok``."""
    def main(argv: list[str] | None = None) -> int:
        setup_logging()
        return 0 if ok(run(argv)) else 1
    return main


def exit_process(main: Callable[[], int | None]) -> NoReturn:
    """Runs an entry point's ``main`` and ends the process with its exit code, skipping only the
    interpreter's native teardown.

    pyarrow's (and TensorFlow's) C++ thread pools are sometimes destroyed while a worker is still
    joinable during CPython finalization, and the process aborts with "terminate called without an
    active exception" (exit -6) after its work is done (apache/arrow#34314). Exit handlers still
    run (logging, Beam's subprocess cleanup); only the static destructors are skipped."""
    try:
        code = main()
    except SystemExit as stop:  # argparse's --help and usage errors
        code = stop.code
    except KeyboardInterrupt:
        code = 130
    except BaseException:  # noqa: BLE001  (reported as the interpreter would, with its exit code)
        traceback.print_exc()
        code = 1
    if isinstance(code, str):
        print(code, file=sys.stderr)
        code = 1
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(code or 0)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows defaults (unless there is none, or the help says it) and keeps the description's line breaks."""

    def _get_help_string(self, action):
        if action.default is None or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


BEAM_OPTIONS_EPILOG = """\
standard Beam options are accepted too, e.g.:
  --runner DirectRunner|FlinkRunner|PortableRunner|DataflowRunner   --streaming
  --flink_master 127.0.0.1:8081  --flink_job_server_jar .cache/jvm/beam/beam-runners-flink-1.20-job-server-2.72.0.jar
  --environment_type LOOPBACK|PROCESS|EXTERNAL  --environment_config ...  --parallelism N
  --setup_file ./setup.py  --requirements_file requirements.lock
  --project ... --region ... --temp_location gs://... --dry_run   (Dataflow)
see the README's "Running on Flink and Dataflow" for complete examples."""


def pipeline_parser(options_cls, prog: str, description: str) -> argparse.ArgumentParser:
    """The ``--help`` parser of a pipeline: its options class's own and shared options (pipelines/options.py),
    with their defaults, pointing to the Beam ones instead of listing Beam's several hundred."""
    from pipelines.options import declare
    # no abbreviations: the rest goes to Beam, and e.g. Beam's --dry_run must not be taken for archive's
    # --dry_run_plan
    parser = argparse.ArgumentParser(prog=prog, description=description, epilog=BEAM_OPTIONS_EPILOG,
                                     formatter_class=HelpFormatter, allow_abbrev=False)
    declare(parser, options_cls)
    return parser


def pipeline_options(parser: argparse.ArgumentParser, argv: list[str] | None):
    """Parses the pipeline's own options with ``parser`` and passes the rest to Beam. Every own value is
    passed on explicitly, so a job's defaults of shared options (``option_defaults``) reach its view.
    Returns the PipelineOptions (own + Beam) object."""
    from apache_beam.options.pipeline_options import PipelineOptions
    own, beam_args = parser.parse_known_args(argv)
    own_args = [f"--{k}={v}" for k, v in vars(own).items() if v is not None and not isinstance(v, bool)]
    own_args += [f"--{k}" for k, v in vars(own).items() if v is True]
    return PipelineOptions(beam_args + own_args)


def parse_pipeline_args(options_cls, argv: list[str] | None, prog: str, description: str):
    """``pipeline_options(pipeline_parser(...), argv)``: a pipeline's options, own + Beam."""
    return pipeline_options(pipeline_parser(options_cls, prog, description), argv)


def run_incremental(job: str, options, build: Callable, summarize: Callable[..., dict], render: Callable[[dict], str],
                    *, baseline_dir: str | None, summary_json: str | None,
                    committed: Callable[[dict], Iterable[tuple[str, str, int]]], dry_run: dict) -> dict:
    """The run of an incremental batch job once it has a plan: ``build(pipeline)`` adds its transforms,
    the pipeline runs (``dry_run`` is returned when it only was submitted), ``summarize(result, elapsed_s)``
    gives the summary, the TFDV baseline of each ``(lake, table, version)`` in ``committed(summary)`` is
    ensured, and the summary is printed (``render`` and the ``<JOB>_SUMMARY`` line) and written to
    ``summary_json`` when given."""
    import apache_beam as beam
    import transforms.validation  # noqa: F401  (TensorFlow's import takes seconds: keep it out of the timing)
    from transforms.baselines import baseline_path, ensure_baseline
    started = time.monotonic()
    pipeline = beam.Pipeline(options=options)
    build(pipeline)
    result = pipeline.run()
    if is_dry_run(options):
        return dry_run
    result.wait_until_finish()
    summary = summarize(result, time.monotonic() - started)
    for lake_path, table, version in committed(summary):
        ensure_baseline(lake_path, table, version, baseline_path(lake_path, baseline_dir, table))
    print(render(summary))
    print_summary(job, summary)
    if summary_json:
        Path(summary_json).write_text(json.dumps(summary, indent=2, sort_keys=True))
    return summary
