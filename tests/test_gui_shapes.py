"""Shape corrections in the main window: draw a missed tubule by clicks, drag an outline point and a box corner.

A real Stagetool run (the oracle networks of tests/test_stagetool_section.py) is shown; the test
clicks on the viewer like a user, drags handles, undoes, and checks that the run's edits file and
the training data made from the corrected run carry the new shapes.
"""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

pytest.importorskip("pytestqt")
pytest.importorskip("torch")

from PySide6.QtCore import QPointF, Qt  # noqa: E402
from gui_testing import main_window  # noqa: E402

try:
    from test_gui_stagetool import analyse_in_window, stagetool_project  # noqa: F401 - the fixture
except ImportError as error:  # pragma: no cover
    pytest.skip(f"the Stagetool GUI fixture is not available ({error})", allow_module_level=True)

OUTLINE = [(495, 230), (550, 230), (550, 300), (495, 300)]  # an empty corner of the drawn section


def _screen(window, x, y):
    """The viewport position of image pixel (x, y)."""
    viewer = window.viewer
    scene = viewer.view.mapViewToScene(QPointF(x, y))
    return viewer.graphics.mapFromScene(scene)


@pytest.fixture
def analysed(qtbot, stagetool_project):
    project, _truth = stagetool_project
    window = main_window(qtbot)
    analyse_in_window(window, project)
    yield window, project
    window.confirm = lambda *args: True
    window.queue.shutdown()
    window.close()


def _double_click(qtbot, widget, pos):
    """Press, release, double-click, release: what a mouse sends (QTest's mouseDClick sends no last release)."""
    from PySide6.QtCore import QEvent
    from PySide6.QtGui import QMouseEvent
    from PySide6.QtWidgets import QApplication

    left = Qt.MouseButton.LeftButton
    qtbot.mousePress(widget, left, pos=pos)
    qtbot.mouseRelease(widget, left, pos=pos)
    event = QMouseEvent(QEvent.Type.MouseButtonDblClick, QPointF(pos), QPointF(widget.mapToGlobal(pos)), left, left,
                        Qt.KeyboardModifier.NoModifier)
    QApplication.sendEvent(widget, event)
    qtbot.mouseRelease(widget, left, pos=pos)


def _mouse_drag(widget, start, end, steps=6):
    """Press at ``start``, move in steps with the button held, release at ``end`` (what a hand does)."""
    from PySide6.QtCore import QEvent
    from PySide6.QtGui import QMouseEvent
    from PySide6.QtWidgets import QApplication

    left, none = Qt.MouseButton.LeftButton, Qt.MouseButton.NoButton

    def send(kind, pos, button, buttons):
        local = QPointF(pos)
        event = QMouseEvent(kind, local, QPointF(widget.mapToGlobal(pos)), button, buttons, Qt.KeyboardModifier.NoModifier)
        QApplication.sendEvent(widget, event)

    for i in range(3):  # the hand arrives over the start first (hover)
        time.sleep(0.03)
        send(QEvent.Type.MouseMove, start + QPointF(3 - i, 0).toPoint(), none, none)
        QApplication.processEvents()
    send(QEvent.Type.MouseButtonPress, start, left, left)
    for i in range(1, steps + 1):
        time.sleep(0.03)  # pyqtgraph drops moves closer than its rate limit (100 per second)
        pos = start + (end - start) * (i / steps)
        send(QEvent.Type.MouseMove, pos, none, left)
        QApplication.processEvents()
    send(QEvent.Type.MouseButtonRelease, end, left, none)
    QApplication.processEvents()


def _edits(project):
    [run] = project.runs()
    return json.loads((run.folder / "edits.json").read_text())["edits"]


def test_draw_a_tubule_drag_its_points_and_resize_a_cell(analysed, qtbot):
    window, project = analysed
    overlays = window.viewer.overlays
    window.viewer.fit()
    qtbot.wait(50)
    before = len(overlays.layers["tubules"].data.objects)
    [run] = project.runs()  # the browser lists the run's sections with their doubt (correct the highest first)
    listed = window.browser._run_items[run.id].child(0)
    assert listed.text(0).startswith("sec  ·  doubt ")

    # draw: D, clicks on the image, a double-click closes the outline
    window.properties.draw_stage.setCurrentText("XII")
    window.actions["draw_outline"].trigger()
    assert window.shapes.drawing and window.properties.draw_button.isChecked()
    viewport = window.viewer.graphics.viewport()
    for x, y in OUTLINE:
        qtbot.mouseClick(viewport, Qt.MouseButton.LeftButton, pos=_screen(window, x, y))
        qtbot.wait(20)
    assert len(window.shapes.draft.points) == len(OUTLINE)
    _double_click(qtbot, viewport, _screen(window, *OUTLINE[-1]))
    qtbot.waitUntil(lambda: len(overlays.layers["tubules"].data.objects) == before + 1, timeout=5000)
    added = _edits(project)[-1]
    assert added["action"] == "add_tubule" and added["value"] == "XII"
    assert listed.toolTip(0).startswith("doubt ") and listed.text(0).startswith("sec  ·  doubt ")  # still listed after the edit
    assert np.allclose(added["polygon"], OUTLINE, atol=2.5)  # screen pixels back to image pixels
    drawn = overlays.find("tubules", added["id"])
    assert drawn["class"] == "XII" and drawn["added"]

    # edit: select a predicted tubule, drag its first point outwards
    window.actions["draw_outline"].trigger()  # draw mode off: clicks select again
    assert not window.shapes.drawing
    tubule = overlays.layers["tubules"].data.objects[0]
    assert window.select_object("tubules", tubule["id"])
    handles = window.shapes.handles
    assert handles.isVisible() and len(handles.points) == len(tubule["polygon"])
    x0, y0 = tubule["polygon"][0]
    assert handles.begin_drag(x0 + 1, y0 + 1) and handles.dragging == 0
    handles.drag_to(x0 - 6, y0 - 4)
    handles.end_drag()
    reshaped = _edits(project)[-1]
    assert reshaped["action"] == "reshape_tubule" and reshaped["id"] == tubule["id"]
    assert overlays.find("tubules", tubule["id"])["polygon"][0] == [x0 - 6, y0 - 4]
    assert not handles.begin_drag(-1000, -1000)  # away from every handle: the view pans instead

    # the same with the mouse: press on a handle, drag, release (pyqtgraph hands the drag to the handles)
    window.viewer.center_on(*tubule["polygon"][5], width=200)
    qtbot.wait(100)
    x5, y5 = tubule["polygon"][5]
    _mouse_drag(window.viewer.graphics.viewport(), _screen(window, x5, y5), _screen(window, x5 + 10, y5 + 8))
    assert handles.cursor().shape() == Qt.CursorShape.SizeAllCursor  # shown while over a handle
    moved = _edits(project)[-1]
    assert moved["action"] == "reshape_tubule"
    assert np.allclose(moved["polygon"][5], [x5 + 10, y5 + 8], atol=1.5)
    assert np.allclose(moved["polygon"][0], [x0 - 6, y0 - 4])  # the earlier edit is kept
    count, view_before = len(_edits(project)), window.viewer.view.viewRange()
    # inside the outline, on screen and away from its points: the view pans
    cx, cy = np.asarray([x5, y5]) + 0.3 * (np.mean(tubule["polygon"], axis=0) - [x5, y5])
    assert handles.handle_at(cx, cy) is None
    _mouse_drag(window.viewer.graphics.viewport(), _screen(window, cx, cy), _screen(window, cx + 30, cy))
    assert len(_edits(project)) == count and window.viewer.view.viewRange() != view_before
    window.viewer.fit()
    qtbot.wait(50)

    # resize: select a cell, drag its bottom-right corner
    cell = overlays.layers["cells"].data.objects[0]
    assert window.select_object("cells", cell["id"])
    bx0, by0, bx1, by1 = cell["box"]
    assert handles.begin_drag(bx1, by1) and handles.dragging == 2
    handles.drag_to(bx1 + 5, by1 + 3)
    handles.end_drag()
    assert _edits(project)[-1]["action"] == "resize_cell"
    assert overlays.find("cells", cell["id"])["box"] == [bx0, by0, bx1 + 5, by1 + 3]

    # undo puts the box back; redo again; every shape reaches the training data of the corrected run
    window.actions["undo"].trigger()
    assert overlays.find("cells", cell["id"])["box"] == [bx0, by0, bx1, by1]
    assert [e["action"] for e in _edits(project)][-1] == "reshape_tubule"
    window.actions["redo"].trigger()
    from app.gui.training_sources import project_sources
    from app.pipelines.registry import training_images

    [image] = training_images([s for s in project_sources(project) if s.kind == "corrected"])
    shapes = [(o.category, np.asarray(o.polygons[0]) if o.polygons else None, o.box) for o in image.objects]
    drawn_polygon = np.asarray(added["polygon"])
    assert any(cat == "XII" and poly is not None and poly.shape == drawn_polygon.shape
               and np.allclose(poly, drawn_polygon) for cat, poly, _ in shapes)
    assert any(poly is not None and np.allclose(poly[0], [x0 - 6, y0 - 4]) for _, poly, _ in shapes)
    assert any(box is not None and np.allclose(box, [bx0, by0, bx1 + 5, by1 + 3]) for _, _, box in shapes)


def test_an_outline_of_two_points_is_refused_and_esc_stops_drawing(analysed, qtbot):
    window, project = analysed
    window.shapes.set_draw_mode(True)
    window.shapes.add_point(10, 10)
    window.shapes.add_point(40, 10)
    assert window.shapes.finish_outline() is False
    assert "three points" in window.statusBar().currentMessage()
    assert not (project.runs()[0].folder / "edits.json").exists()
    for x, y in [(500, 240), (540, 240), (530, 260), (545, 290)]:
        window.shapes.add_point(x, y)
    window.viewer.graphics.setFocus()
    qtbot.keyClick(window.viewer.graphics, Qt.Key.Key_Backspace)  # takes back (545, 290)
    qtbot.keyClick(window.viewer.graphics, Qt.Key.Key_Return)  # Enter closes the outline
    assert _edits(project)[-1]["polygon"] == [[500, 240], [540, 240], [530, 260]]
    assert window.shapes.drawing  # still drawing: the next outline can follow
    window.shapes.add_point(10, 10)
    window.actions["deselect"].trigger()
    assert not window.shapes.drawing and window.shapes.draft.points == []
