"""The layers of ARCHITECTURE.md, checked on the import statements (module-level and inside functions):
no entry point imports another, schemas/ and core/ import neither Beam nor TensorFlow, and each
layer imports only the layers below it."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PROJECT = ("schemas", "core", "transforms", "models", "simulation", "pipelines")
HEAVY = ("apache_beam", "tensorflow", "tensorflow_data_validation", "tfx_bsl")
# which project packages each layer may import (besides itself)
ALLOWED = {
    "schemas": set(),
    "core": {"schemas"},
    "simulation": {"schemas", "core"},
    "models": {"schemas", "core"},
    "transforms": {"schemas", "core", "models"},
    "pipelines": set(PROJECT),
}
# the one upward import: the alerts contract's rule domain is the rule engine's registry (it imports no schema)
EXCEPTIONS = {("schemas/contracts.py", "core.acute_rules"), ("schemas/contracts.py", "core.acute_rules.RULE_NAMES")}


def _imports(path: Path) -> set[str]:
    """Every module an import statement in ``path`` names (``from a import b`` gives a and a.b)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
    return out


def _modules(package: str) -> list[Path]:
    return sorted(p for p in (ROOT / package).rglob("*.py") if "__pycache__" not in p.parts)


def _is_entry_point(path: Path) -> bool:
    return 'if __name__ == "__main__":' in path.read_text()


ENTRY_POINTS = {f"pipelines.{p.stem}": p for p in (ROOT / "pipelines").glob("*.py") if _is_entry_point(p)}


def test_the_entry_points_are_found():
    assert {"pipelines.cleanse", "pipelines.features", "pipelines.archive", "pipelines.extract_training",
            "pipelines.maintain", "pipelines.train", "pipelines.score", "pipelines.streaming"} <= set(ENTRY_POINTS)


@pytest.mark.parametrize("name", sorted(ENTRY_POINTS))
def test_no_entry_point_imports_another(name):
    others = set(ENTRY_POINTS) - {name}
    assert sorted(_imports(ENTRY_POINTS[name]) & others) == []


@pytest.mark.parametrize("package", ["schemas", "core"])
def test_schemas_and_core_import_neither_beam_nor_tensorflow(package):
    found = {f"{p.relative_to(ROOT)}: {m}" for p in _modules(package) for m in _imports(p)
             if m.split(".")[0] in HEAVY}
    assert sorted(found) == []


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_each_layer_imports_only_the_layers_below_it(package):
    found = {f"{p.relative_to(ROOT)}: {m}" for p in _modules(package) for m in _imports(p)
             if m.split(".")[0] in PROJECT and m.split(".")[0] not in ALLOWED[package] | {package}
             and (str(p.relative_to(ROOT)), m) not in EXCEPTIONS}
    assert sorted(found) == []
