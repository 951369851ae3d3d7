"""Viewer items for correcting shapes: handles on the selected outline or box, and the outline being drawn.

:class:`HandlesItem` shows a square on each vertex of the selected tubule (or each corner of the
selected cell's box); dragging one moves the outline live and, on release, emits ``edited`` with the
new polygon or box.  A press away from every handle is left to the view (it pans as before).
:class:`DraftItem` draws the outline being clicked.  What a hit or a valid shape is comes from the
Qt-free :mod:`app.core.edit_geometry`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QRectF, Qt, Signal

from app.core.edit_geometry import box_corners, corner_at, move_vertex, nearest_vertex, resize_box
from app.gui.theme import SELECTION_WIDTH

HANDLE_COLOUR = "#ffd54a"
DRAFT_COLOUR = "#4dd0ff"
HANDLE_SIZE = 9  # screen pixels
HANDLE_Z = 40


class HandlesItem(pg.GraphicsObject):
    """Draggable vertex / corner handles of one object; see the module docstring."""

    edited = Signal(str, object, object)  # layer, object, new polygon (tubules) or box (cells)

    def __init__(self, tolerance: Any) -> None:
        super().__init__()
        self.tolerance = tolerance  # callable: image pixels a few screen pixels span at the current zoom
        self.layer: str | None = None
        self.obj: dict[str, Any] | None = None
        self.points: list[list[float]] = []  # polygon vertices, or the box's four corners
        self.box: list[float] | None = None
        self.dragging: int | None = None
        self.setZValue(HANDLE_Z)
        pen = pg.mkPen(HANDLE_COLOUR, width=SELECTION_WIDTH - 1)
        pen.setCosmetic(True)
        self.outline = pg.PlotCurveItem(pen=pen)
        self.outline.setParentItem(self)
        self.handles = pg.ScatterPlotItem(size=HANDLE_SIZE, symbol="s", pen=pg.mkPen("k"),
                                          brush=pg.mkBrush(HANDLE_COLOUR), pxMode=True)
        self.handles.setParentItem(self)
        self.setVisible(False)

    # ------------------------------------------------------------------ target

    def set_target(self, layer: str | None, obj: dict[str, Any] | None) -> None:
        """Show handles on a tubule's outline or a cell's box (None hides them)."""
        self.prepareGeometryChange()
        self.layer, self.obj, self.dragging = layer, obj, None
        self.points, self.box = [], None
        if obj is not None and layer == "tubules" and len(obj.get("polygon") or []) >= 3:
            self.points = [[float(x), float(y)] for x, y in obj["polygon"]]
        elif obj is not None and layer == "cells" and obj.get("box") is not None:
            self.box = [float(v) for v in obj["box"]]
            self.points = [list(c) for c in box_corners(self.box)]
        self.setVisible(bool(self.points))
        self._redraw()

    def _redraw(self) -> None:
        if not self.points:
            self.outline.setData(x=np.zeros(0), y=np.zeros(0))
            self.handles.setData(x=[], y=[])
            return
        p = np.asarray(self.points + [self.points[0]], dtype=float)
        self.outline.setData(x=p[:, 0], y=p[:, 1])
        self.handles.setData(x=p[:-1, 0], y=p[:-1, 1])

    def boundingRect(self) -> QRectF:  # noqa: N802 - Qt's name
        if not self.points:
            return QRectF()
        p = np.asarray(self.points, dtype=float)
        pad = float(self.tolerance())
        return QRectF(p[:, 0].min() - pad, p[:, 1].min() - pad, np.ptp(p[:, 0]) + 2 * pad, np.ptp(p[:, 1]) + 2 * pad)

    def paint(self, *_: Any) -> None:
        """Nothing of its own: the outline and handles are child items."""

    # ------------------------------------------------------------------ dragging (mouse or tests)

    def handle_at(self, x: float, y: float) -> int | None:
        """The handle under (x, y) within a few screen pixels, or None."""
        if not self.points:
            return None
        tolerance = float(self.tolerance())
        if self.box is not None:
            return corner_at(self.box, x, y, tolerance)
        return nearest_vertex(self.points, x, y, tolerance)

    def begin_drag(self, x: float, y: float) -> bool:
        """Start dragging the handle under (x, y); False when there is none there."""
        self.dragging = self.handle_at(x, y)
        return self.dragging is not None

    def drag_to(self, x: float, y: float) -> None:
        """Move the dragged handle to (x, y) (the shape follows on screen; nothing is saved yet)."""
        if self.dragging is None:
            return
        if self.box is not None:
            box = resize_box(self.box, self.dragging, x, y)
            self.points = [list(c) for c in box_corners(box)]
        else:
            self.points = move_vertex(self.points, self.dragging, x, y)
        self.prepareGeometryChange()
        self._redraw()

    def end_drag(self) -> None:
        """Finish the drag: emit ``edited`` with the new shape (when it changed)."""
        if self.dragging is None or self.obj is None or self.layer is None:
            return
        corner, self.dragging = self.dragging, None
        if self.box is not None:
            x, y = self.points[corner]
            shape: Any = resize_box(self.box, corner, x, y)
            changed = shape != self.box
        else:
            shape = [list(p) for p in self.points]
            changed = shape != [[float(x), float(y)] for x, y in self.obj.get("polygon") or []]
        if changed:
            self.edited.emit(self.layer, self.obj, shape)

    def hoverEvent(self, event: Any) -> None:  # noqa: N802 - pyqtgraph's name
        """Over a handle: claim the drag and show a move cursor, so the user sees it can be grabbed."""
        over = not event.isExit() and self.handle_at(event.pos().x(), event.pos().y()) is not None
        if over and event.acceptDrags(Qt.MouseButton.LeftButton):
            self.setCursor(Qt.CursorShape.SizeAllCursor)
        else:
            self.unsetCursor()

    def mouseDragEvent(self, event: Any) -> None:  # noqa: N802 - pyqtgraph's name
        if event.button() != Qt.MouseButton.LeftButton:
            event.ignore()
            return
        if event.isStart():
            start = event.buttonDownPos()
            if not self.begin_drag(start.x(), start.y()):
                event.ignore()  # not on a handle: the view pans
                return
        elif self.dragging is None:
            event.ignore()
            return
        event.accept()
        self.drag_to(event.pos().x(), event.pos().y())
        if event.isFinish():
            self.end_drag()


class DraftItem(pg.PlotCurveItem):
    """The outline being drawn: the clicked points, then the mouse, back to the first point."""

    def __init__(self) -> None:
        pen = pg.mkPen(DRAFT_COLOUR, width=SELECTION_WIDTH - 1, style=Qt.PenStyle.DashLine)
        pen.setCosmetic(True)
        super().__init__(pen=pen, symbol=None)
        self.setZValue(HANDLE_Z)

    def show_points(self, points: list[list[float]]) -> None:
        """Draw these points as an open line (empty hides it)."""
        p = np.asarray(points, dtype=float).reshape(-1, 2)
        self.setData(x=p[:, 0], y=p[:, 1])
