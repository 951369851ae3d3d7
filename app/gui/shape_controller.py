"""Shape corrections in the viewer: draw a missed tubule's outline, drag an outline's points or a cell box's corners.

Drawing: in draw mode (D, or the Properties button) each click adds a point, a double-click or
Enter closes the outline, Backspace takes back a point and Esc drops it; the outline becomes an
``add_tubule`` edit of the stage chosen in Properties.  Editing: the selected tubule or cell shows
handles (:mod:`app.gui.shape_tools`); a drag becomes a ``reshape_tubule`` or ``resize_cell`` edit.
Every edit goes through the run's curation session (edits.json, undo), like the other corrections,
so corrected predictions used as training data include the new shapes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from PySide6.QtCore import Qt

from app.core.edit_geometry import PolygonDraft, as_points
from app.core.edits import next_object_id
from app.gui.shape_tools import DraftItem, HandlesItem

if TYPE_CHECKING:
    from app.gui.window_api import WindowApi

HANDLE_TOLERANCE_PX = 6  # screen pixels around a handle that still grab it


class ShapeController:
    """Draw mode, the outline being drawn, and the handles of the selected object."""

    def __init__(self, window: WindowApi) -> None:
        self.w = window
        self.drawing = False
        self.draft = PolygonDraft()
        self._cursor: tuple[float, float] | None = None
        view = window.viewer.view
        self.handles = HandlesItem(lambda: window.viewer.screen_tolerance(HANDLE_TOLERANCE_PX))
        self.draft_item = DraftItem()
        view.addItem(self.handles, ignoreBounds=True)
        view.addItem(self.draft_item, ignoreBounds=True)
        self.handles.edited.connect(self.shape_edited)
        window.viewer.overlays.selection_changed.connect(self.selection_changed)
        window.viewer.double_clicked.connect(lambda _x, _y: self.finish_outline())
        window.viewer.mouse_moved.connect(self._mouse_moved)

    # ------------------------------------------------------------------ handles

    def selection_changed(self, selection: tuple[str, dict[str, Any]] | None) -> None:
        """Put handles on the newly selected object (none while drawing)."""
        if selection is None or self.drawing or self.w.results.current_session() is None:
            self.handles.set_target(None, None)
        else:
            self.handles.set_target(*selection)

    def shape_edited(self, layer: str, obj: dict[str, Any], shape: Any) -> None:
        """A handle was dragged: save the new outline or box as an edit."""
        if layer == "tubules":
            self.w.curation.push_edit("reshape_tubule", obj["id"], None, polygon=as_points(shape))
        elif layer == "cells":
            x0, y0, x1, y1 = (float(v) for v in shape)
            self.w.curation.push_edit("resize_cell", obj["id"], None, box=[x0, y0, x1, y1],
                                      centroid=[(y0 + y1) / 2, (x0 + x1) / 2])

    # ------------------------------------------------------------------ drawing

    def set_draw_mode(self, on: bool) -> None:
        """Turn "draw a tubule outline" on or off (menu action, D, and the Properties button agree)."""
        w = self.w
        on = bool(on) and w.results.current_session() is not None
        if on and w.curation.add_mode:
            w.curation.set_add_mode(False)
        self.drawing = on
        self.draft = PolygonDraft()
        self._show_draft()
        for widget in (w.actions["draw_outline"], w.properties.draw_button):
            widget.blockSignals(True)
            widget.setChecked(on)
            widget.blockSignals(False)
        for key in ("finish_outline", "remove_point"):
            w.actions[key].setEnabled(on)
        w.viewer.graphics.setCursor(Qt.CursorShape.CrossCursor if on else Qt.CursorShape.ArrowCursor)
        if on:
            w.viewer.overlays.select(None)
            w.properties.show_object(None, None)
            w.statusBar().showMessage("Click the outline's points; double-click or Enter closes it, "
                                      "Backspace takes back a point, Esc stops", 8000)

    def add_point(self, x: float, y: float) -> None:
        """A click while drawing: one more point of the outline."""
        self.draft.add(x, y)
        self._show_draft()

    def remove_point(self) -> None:
        """Take back the last point (Backspace)."""
        if self.drawing:
            self.draft.remove_last()
            self._show_draft()

    def finish_outline(self, stage: str | None = None) -> bool:
        """Close the outline being drawn into a new tubule; False when it has too few points to enclose anything."""
        w = self.w
        if not self.drawing:
            return False
        polygon = self.draft.close()
        self._show_draft()
        session = w.results.current_session()
        if polygon is None or session is None:
            w.statusBar().showMessage("An outline needs at least three points around an area; start again", 5000)
            return False
        stage = stage or w.properties.draw_stage.currentText()
        tubules = (w.results.doc or {}).get("layers", {}).get("tubules", [])
        object_id = next_object_id(tubules, session.edits)
        return w.curation.push_edit("add_tubule", object_id, stage, polygon=polygon)

    def cancel(self) -> None:
        """Drop the outline being drawn and leave draw mode."""
        if self.drawing:
            self.set_draw_mode(False)

    def _mouse_moved(self, x: float, y: float) -> None:
        if self.drawing and self.draft.points:
            self._cursor = (x, y)
            self._show_draft()

    def _show_draft(self) -> None:
        self.draft_item.show_points(self.draft.preview(self._cursor if self.drawing else None))
