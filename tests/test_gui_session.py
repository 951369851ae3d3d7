"""The window's shape: a Qt-free session the widgets observe, Qt-free helper modules, small GUI files."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from app.core.session import Session
from gui_testing import main_window

APP = Path(__file__).resolve().parents[1] / "app"
QT_FREE = ("app.core.session", "app.gui.theme", "app.gui.run_files", "app.gui.report_sections",
           "app.gui.training_sources", "app.pipelines.kaizen.drawing")


def test_observers_hear_each_change_once_and_can_stop():
    session, heard = Session(), []
    stop = session.observe(lambda name, value: heard.append((name, value)))
    project, run, hit = object(), object(), ("cells", {"id": 1})
    session.project = project
    session.project = project  # the same project again: nothing to tell
    session.image = "s1"
    session.image = "".join(["s", "1"])  # an equal name is the same image
    session.run = run
    session.selection = hit
    session.selection = None
    assert heard == [("project", project), ("image", "s1"), ("run", run), ("selection", hit), ("selection", None)]
    assert (session.project, session.image, session.run, session.selection) == (project, "s1", run, None)
    stop()
    session.image = "s2"
    assert heard[-1] == ("selection", None) and session.image == "s2"


def test_the_window_helpers_named_qt_free_import_no_qt():
    code = (f"import sys\nfor m in {QT_FREE!r}: __import__(m)\n"
            "print(sorted({m.split('.')[0] for m in sys.modules if m.split('.')[0] in ('PySide6', 'pyqtgraph')}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=APP.parent).stdout
    assert out.strip() == "[]"


def test_every_gui_file_stays_under_500_lines():
    sizes = {p.name: len(p.read_text(encoding="utf-8").splitlines()) for p in (APP / "gui").glob("*.py")}
    assert {name: n for name, n in sizes.items() if n >= 500} == {}


def test_the_window_title_and_selection_follow_the_session(qtbot, tmp_path):
    pytest.importorskip("pytestqt")

    from gui_fakes import make_project

    window = main_window(qtbot, size=None)
    try:
        project = make_project(tmp_path, n_images=1, with_run=True)
        assert window.open_project(project.folder) and window.wait_until_ready(20)
        assert window.session.project is window.project and window.windowTitle() == f"Stagescope - {project.name}"
        assert window.session.image == window.current_image == "section1"
        assert window.session.run is window.current_run is not None
        assert window.select_object("tubules", 1)
        assert window.session.selection[0] == "tubules" and window.session.selection[1]["id"] == 1
        window.curation.clear_selection()
        assert window.session.selection is None
        from app.gui.window_api import missing_members

        assert missing_members(window) == []  # the controllers' WindowApi names only what the window has
    finally:
        window.confirm = lambda *args: True
        window.queue.shutdown()
        window.close()


def test_a_first_window_fits_a_smaller_screen_and_keeps_its_size_on_a_large_one():
    pytest.importorskip("PySide6")
    from PySide6.QtCore import QSize

    from app.gui.window_layout import DEFAULT_SIZE, default_size

    small = default_size(QSize(1440, 870))  # a 1440 x 900 laptop screen less its top panel
    assert small.width() <= 1440 * 0.95 and small.height() <= 870 * 0.95
    assert default_size(QSize(2560, 1440)) == DEFAULT_SIZE
    assert default_size(QSize(1920, 900)) == QSize(DEFAULT_SIZE.width(), int(900 * 0.95))
    assert default_size(None) == DEFAULT_SIZE


def test_the_gui_modules_import_each_other_without_a_loop_when_run():
    """No executed import loops back among the GUI modules (test_import_structure.py checks type-only imports too)
    (the Settings dialog once reached the start-up module for the theme, which imports the window)."""
    grimp = pytest.importorskip("grimp")
    nx = pytest.importorskip("networkx")

    graph = grimp.build_graph("app", exclude_type_checking_imports=True, cache_dir=None)  # no stale cache
    edges = nx.DiGraph()
    for module in graph.modules:
        if module.startswith("app.gui"):
            edges.add_node(module)
            edges.add_edges_from((module, i) for i in graph.find_modules_directly_imported_by(module)
                                 if i.startswith("app.gui"))
    assert len(edges) > 30
    assert [sorted(c) for c in nx.strongly_connected_components(edges) if len(c) > 1] == []


def test_accepting_the_settings_dialog_applies_the_dark_theme(qtbot):
    pytest.importorskip("pytestqt")
    from PySide6.QtGui import QPalette
    from PySide6.QtWidgets import QApplication

    from app.gui.theme import DARK_PALETTE

    app = QApplication.instance()
    palette, style = QPalette(app.palette()), app.style().name()
    window = main_window(qtbot, size=None, show=False)
    window.save_settings = lambda: None  # the test's settings stay off the user's disk
    try:
        window.dialogs.settings()
        dialog = window.dialogs.settings_dialog
        dialog.theme.setCurrentText("dark")
        dialog.accept()
        assert window.settings.theme == "dark"
        assert app.palette().color(QPalette.ColorRole.Window).name() == DARK_PALETTE["Window"]
    finally:
        app.setStyle(style)
        app.setPalette(palette)
        window.queue.shutdown()
        window.close()


def test_the_training_wizard_has_what_its_pages_use(qtbot):
    """The pages type the wizard as ``WizardApi`` (no import of the wizard): a real wizard has each member."""
    from app.core.settings import Settings
    from app.gui.job_queue import JobQueue
    from app.gui.training_pages import WizardApi
    from app.gui.training_wizard import TrainingWizard
    from app.gui.window_api import protocol_members

    wizard = TrainingWizard(None, Settings(), JobQueue(), trainers={})
    qtbot.addWidget(wizard)
    names = protocol_members(WizardApi)
    assert {"trainers", "settings", "start", "save_model"} <= set(names)
    assert [name for name in names if not hasattr(wizard, name)] == []
