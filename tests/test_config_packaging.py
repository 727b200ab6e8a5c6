"""The acute rule thresholds ship inside a package and are parsed on the driver: the workers get the
parsed config as a value, never a path to open."""
from __future__ import annotations

import ast
import pickle
from importlib import resources
from pathlib import Path

from core import acute_rules
from core.acute_rules import RuleConfig
from transforms.acute import AcuteRules, _RulesFn

ROOT = Path(__file__).resolve().parent.parent


def test_the_default_thresholds_are_package_data_of_core():
    assert acute_rules.DEFAULT_CONFIG == resources.files("core") / "config" / "acute_rules.yaml"
    assert acute_rules.DEFAULT_CONFIG.is_file()
    assert RuleConfig.load().raw == RuleConfig.load(str(acute_rules.DEFAULT_CONFIG)).raw


def test_setup_ships_no_file_outside_a_package():
    call = next(n for n in ast.walk(ast.parse((ROOT / "setup.py").read_text())) if isinstance(n, ast.Call)
                and getattr(n.func, "attr", "") == "setup")
    package_data = ast.literal_eval(next(k.value for k in call.keywords if k.arg == "package_data"))
    assert package_data["core"] == ["config/*.yaml"]
    assert not [p for globs in package_data.values() for p in globs if ".." in p]
    assert not (ROOT / "config" / "acute_rules.yaml").exists()


def test_the_rule_config_travels_to_the_workers_as_a_value():
    config = RuleConfig.load()
    again = pickle.loads(pickle.dumps(config))
    assert again.raw == config.raw and again.for_model(None) == config.for_model(None)
    rules = AcuteRules("/nonexistent/lake", shards=2, config=config)
    assert rules._config is config
    fn = pickle.loads(pickle.dumps(_RulesFn("/nonexistent/lake", config, warm_start=False)))
    assert fn._config.raw == config.raw                 # set before setup(): no file is opened on the worker
