"""Runs from the GUI as a technician meets them: the selection that is run, failures and cancels shown,
the pipeline offered first, runs refused before they start, threads, antibody channels (issue 14)."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("pytestqt")

from PySide6.QtCore import Qt  # noqa: E402

from app.gui.main import configure_pyqtgraph  # noqa: E402

from gui_fakes import FAKE_NAME, make_project, register_fake  # noqa: E402


@pytest.fixture
def window(qtbot):
    from app.core.settings import Settings
    from app.gui.main_window import MainWindow

    configure_pyqtgraph()
    register_fake()
    win = MainWindow(Settings(), save_settings_on_close=False, detect_device=False)
    qtbot.addWidget(win)
    win.resize(1200, 800)
    win.show()
    yield win
    win.confirm = lambda *args: True
    win.queue.shutdown()
    win.close()


def _click_image(win, qtbot, name, modifier=Qt.KeyboardModifier.NoModifier):
    tree = win.browser.tree
    item = win.browser._image_items[name]
    tree.scrollToItem(item)
    qtbot.mouseClick(tree.viewport(), Qt.MouseButton.LeftButton, modifier, tree.visualItemRect(item).center())
    assert win.wait_until_ready(20)


def _run_fake(win, all_images=False, **params):
    win.run_panel.select_pipeline(FAKE_NAME)
    for name, value in params.items():
        win.run_panel.form.editors[name].set_value(value)
    win.run_pipeline(all_images)
    assert win.queue.wait(30)
    assert win.wait_until_ready(20)


@pytest.mark.parametrize("with_run", [False, True])
def test_ctrl_click_adds_to_the_selection_and_the_run_uses_exactly_it(window, qtbot, tmp_path, with_run):
    project = make_project(tmp_path, n_images=3, with_run=with_run)
    assert window.open_project(project.folder)
    assert window.wait_until_ready(20)
    _click_image(window, qtbot, "section1")
    _click_image(window, qtbot, "section3", Qt.KeyboardModifier.ControlModifier)
    assert window.current_image == "section3"  # opened ...
    assert window.browser.selected_images() == ["section1", "section3"]  # ... and added to the selection
    before = {run.id for run in project.runs()}
    _run_fake(window)
    new = [run for run in project.runs() if run.id not in before]
    assert len(new) == 1 and set(new[0].results) == {"section1", "section3"}
