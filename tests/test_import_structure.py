"""Import structure: no import loop among app modules (bench/import_cycles.py, on grimp's graph).

The layers and independence contracts themselves are checked by running lint-imports
(tests/test_cli.py::test_core_imports_no_qt runs every contract in pyproject.toml).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _cycles_tool():
    """bench/import_cycles.py as a module (bench/ is not a package)."""
    spec = importlib.util.spec_from_file_location("import_cycles", REPO / "bench" / "import_cycles.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# Loops among app modules that are known and being removed; nothing else may loop (none left: the
# batch adapters that looped with batch.tasks are gone with the one runner).
ALLOWED_APP_LOOPS: list[list[str]] = []


@pytest.mark.parametrize("package", ["app.pipelines.stagetool", "app.pipelines", "app.core", "app.gui"])
def test_no_import_loop(package):
    """Function-level imports count too: a loop hidden in a lazy import is still a loop."""
    assert _cycles_tool().import_cycles(package) == []


def test_no_import_loop_among_app_modules_but_the_allowed_one():
    """Every app module, with type-only imports (under ``TYPE_CHECKING``) counted as grimp sees them: a
    controller that imports ``MainWindow`` for a hint loops back to the window that imports it."""
    loops = _cycles_tool().import_cycles("app")
    assert [loop for loop in loops if loop not in ALLOWED_APP_LOOPS] == []


def test_the_loop_finder_counts_an_import_made_for_type_hints_only(tmp_path, monkeypatch):
    """The back edge of this loop is an ``if TYPE_CHECKING:`` import, as the GUI controllers' once were."""
    package = tmp_path / "hinted"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "window.py").write_text("from hinted import controller\n")
    (package / "controller.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                                           "    from hinted.window import Window\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert _cycles_tool().import_cycles("hinted", root="hinted") == [["hinted.controller", "hinted.window"]]


def test_the_loop_finder_sees_a_loop_hidden_in_a_function(tmp_path, monkeypatch):
    """A two-module loop whose back edge is a function-level import is found (the check is not vacuous)."""
    package = tmp_path / "looped"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from looped import b\n")
    (package / "b.py").write_text("def f():\n    from looped import a\n    return a\n")
    (package / "c.py").write_text("from looped import a\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert _cycles_tool().import_cycles("looped", root="looped") == [["looped.a", "looped.b"]]
