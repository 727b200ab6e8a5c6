"""Every entry point's --help, one flag convention, help text on every option, each option declared once."""
from __future__ import annotations

import argparse
import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest
from apache_beam.options import pipeline_options as po

from pipelines import cli
from tests.conftest import PROJECT_ROOT

PIPELINES = Path(__file__).resolve().parent.parent / "pipelines"
ENTRY_POINTS = sorted(p.stem for p in PIPELINES.glob("*.py") if 'if __name__ == "__main__":' in p.read_text())
LONG_OPTION = re.compile(r"^--[a-z0-9]+(_[a-z0-9]+)*$")      # Beam's convention: underscores, no dashes


def own_actions(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions if not isinstance(a, argparse._HelpAction)]


def test_the_entry_points_are_found():
    assert {"cleanse", "features", "score", "train", "simulate", "streaming", "run_local"} <= set(ENTRY_POINTS)


@pytest.mark.parametrize("name", ENTRY_POINTS)
def test_help_explains_every_option_in_one_convention(name, capsys):
    module = importlib.import_module(f"pipelines.{name}")
    actions = own_actions(module.arg_parser())
    assert actions, f"{name}: no options"
    for action in actions:
        for flag in action.option_strings:
            assert LONG_OPTION.match(flag), f"{name}: {flag} is not a long option with underscores"
        assert action.help and action.help != argparse.SUPPRESS and action.help.strip(), \
            f"{name}: {action.option_strings} has no help text"

    with pytest.raises(SystemExit) as exited:
        module.main(["--help"])
    assert exited.value.code in (0, None)
    shown = capsys.readouterr().out
    assert shown.startswith(f"usage: python -m pipelines.{name}")
    missing = [f for a in actions for f in a.option_strings if f not in shown]
    assert not missing, f"{name} --help does not show {missing}"


def test_each_option_is_declared_once_with_beams_own_parser():
    for name in ENTRY_POINTS:          # every entry point's options classes loaded in one process
        importlib.import_module(f"pipelines.{name}")
    assert not hasattr(po._BeamArgumentParser, "_fleet_tolerant"), "Beam's parser is monkeypatched"
    # Beam builds one parser from every PipelineOptions subclass: a repeated option fails here,
    # as would a project option that collides with one of Beam's own
    everything = po.PipelineOptions(["--lake", "/x"]).get_all_options()
    assert everything["lake"] == "/x"
    project = [c for c in po.PipelineOptions.__subclasses__() if c.__module__.startswith("pipelines.")]
    assert len(project) >= 9
    for cls in project:
        assert "_add_argparse_args" in vars(cls), f"{cls.__name__} would declare its bases' options again"


def test_a_jobs_defaults_are_its_configs():
    from pipelines import cleanse, features, simulate, streaming, train
    from simulation.incidents import PlanConfig
    from transforms import cleansing, features as ft
    from transforms.acute import DEFAULT_SHARDS

    def view(module, cls, argv=()):
        return cli.pipeline_options(module.arg_parser(), list(argv)).view_as(cls)

    assert cleanse.config_of(view(cleanse, cleanse.CleanseOptions)) == cleansing.CleanseConfig()
    assert features.config_of(view(features, features.FeaturesOptions)) == ft.FeaturesConfig()
    assert view(streaming, streaming.StreamingOptions).shards == DEFAULT_SHARDS
    assert view(cleanse, cleanse.CleanseOptions, ["--shards", "3"]).shards == 3

    opts = view(train, train.TrainOptions)
    defaults = train.TrainParams()
    for field in ("seed", "window_size", "min_windows", "if_trees", "ae_epochs", "threshold_quantile",
                  "threshold_margin", "clean_z"):
        assert getattr(opts, field) == getattr(defaults, field), field

    args = simulate.parse_args(["--backfill_days", "1"])
    plan = PlanConfig()
    for field in ("acute_fraction", "gradual_fraction", "fault_fraction", "unknown_devices"):
        assert getattr(args, field) == getattr(plan, field), field
    assert tuple(args.data_faults.split(",")) == plan.data_faults


def test_dashed_spellings_are_refused():
    from pipelines import simulate
    with pytest.raises(SystemExit):
        simulate.parse_args(["--backfill-days", "1"])


def _exit_process(body: str) -> subprocess.CompletedProcess:
    script = ("import atexit, sys\nfrom pipelines import cli\n"
              "atexit.register(lambda: print('exit handler ran', flush=True))\n" + body)
    return subprocess.run([sys.executable, "-c", script], cwd=PROJECT_ROOT, capture_output=True, text=True,
                          timeout=120)


@pytest.mark.parametrize("body, code, stdout, stderr", [
    ("print('done', end=''); cli.exit_process(lambda: 3)", 3, "doneexit handler ran\n", ""),
    ("cli.exit_process(lambda: None)", 0, "exit handler ran\n", ""),
    ("cli.exit_process(lambda: sys.exit('bad option'))", 1, "exit handler ran\n", "bad option\n"),
    ("def main():\n    raise ValueError('boom')\ncli.exit_process(main)", 1, "exit handler ran\n", "ValueError: boom"),
])
def test_exit_process_keeps_the_exit_code_output_and_exit_handlers(body, code, stdout, stderr):
    proc = _exit_process(body)
    assert proc.returncode == code, proc.stderr
    assert proc.stdout == stdout
    assert stderr in proc.stderr
