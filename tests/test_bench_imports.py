"""The bench scripts import app names inside functions, where a rename breaks them silently: check every one exists.

bench/adaptation.py called ``stagetool.batch.analyze_paths`` for a whole session after the one
runner removed it; nothing ran the bench, so nothing noticed.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
SCRIPTS = sorted(BENCH.glob("*.py"))


def app_imports(path: Path) -> list[tuple[int, str, str]]:
    """(line, module, name) of every ``from app... import name`` in a script, at any depth."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "app" and not node.level:
            found += [(node.lineno, node.module, alias.name) for alias in node.names]
    return found


@pytest.mark.parametrize("script", SCRIPTS, ids=[p.name for p in SCRIPTS])
def test_every_app_name_a_bench_script_imports_exists(script):
    missing = []
    for line, module, name in app_imports(script):
        imported = importlib.import_module(module)
        if not hasattr(imported, name):
            try:
                importlib.import_module(f"{module}.{name}")
            except ImportError:
                missing.append(f"{script.name}:{line}: {module}.{name}")
    assert not missing, "bench imports names the app no longer has: " + ", ".join(missing)


def test_the_check_sees_function_level_imports():
    names = {(module, name) for _, module, name in app_imports(BENCH / "adaptation.py")}
    assert ("app.cli.pipelines", "analyze_folder") in names
