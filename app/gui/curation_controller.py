"""Selection and curation in the viewer: click to select, restage / exclude tubules, retype / delete / add cells.

Every change is an edit pushed onto the run's curation session (written to edits.json at once, with
undo); the results controller redraws the edited layer.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from PySide6.QtCore import Qt

from app.core.edits import make_edit, next_object_id

if TYPE_CHECKING:
    from app.gui.window_api import WindowApi

DEFAULT_CELL_SIZE = 12.0


class CurationController:
    """Turns clicks, menu actions and Properties buttons into selections and edits."""

    def __init__(self, window: WindowApi) -> None:
        self.w = window
        self.add_mode = False

    def clicked(self, x: float, y: float, _modifiers: Any) -> None:
        """A click on the image: add a cell in add mode, else select what is under it."""
        w = self.w
        if w.shapes.drawing:
            w.shapes.add_point(x, y)
            return
        if self.add_mode:
            self.add_cell_at(x, y)
            return
        hit = w.viewer.overlays.hit_test(x, y, w.viewer.screen_tolerance(2))
        w.viewer.overlays.select(hit)
        if hit is None:
            w.properties.show_object(None, None)
        else:
            self.show_selected(*hit)

    def select_object(self, layer: str, object_id: Any) -> bool:
        """Select an object by layer and id (menus, tests); False when it is not shown."""
        obj = self.w.viewer.overlays.find(layer, object_id)
        if obj is None:
            return False
        self.w.viewer.overlays.select((layer, obj))
        self.show_selected(layer, obj)
        return True

    def show_selected(self, layer: str, obj: dict[str, Any]) -> None:
        """Show the selected object in Properties (a tubule with the counts of its cells)."""
        overlays = self.w.viewer.overlays
        extra = {}
        if layer == "tubules":
            cells = overlays.layers.get("cells")
            if cells is not None:
                counts: dict[str, int] = {}
                for cell in cells.data.objects:
                    if cell.get("tubule_id") == obj.get("id"):
                        counts[str(cell.get("class"))] = counts.get(str(cell.get("class")), 0) + 1
                extra["cells"] = counts or "none"
        self.w.properties.show_object(layer, obj, extra, (overlays.document or {}).get("meta"))

    def clear_selection(self) -> None:
        """Select nothing (and leave add mode and draw mode)."""
        self.w.viewer.overlays.select(None)
        self.w.properties.show_object(None, None)
        if self.add_mode:
            self.set_add_mode(False)
        self.w.shapes.cancel()

    def _selected(self, layer: str) -> dict[str, Any] | None:
        selected = self.w.viewer.overlays.selected
        if selected is None or selected[0] != layer:
            self.w.statusBar().showMessage(f"Select a {layer[:-1]} first (click it in the viewer)", 4000)
            return None
        return selected[1]

    def push_edit(self, action: str, object_id: Any, value: Any = None, **extra: Any) -> bool:
        """Save one edit of the shown image through the run's curation session (undo-able); False when refused."""
        session = self.w.results.current_session()
        if session is None:
            self.w.statusBar().showMessage("No results to curate on this image", 4000)
            return False
        edit = make_edit(action, self.w.current_image, object_id, value, **extra)
        return self.w.guard("Cannot save the edit", session.push, edit) is not False

    def toggle_exclude(self) -> None:
        """Exclude the selected tubule from counts, or include it again."""
        tubule = self._selected("tubules")
        if tubule is not None:
            self.set_excluded(not tubule.get("excluded", False))

    def set_excluded(self, excluded: bool) -> None:
        """Exclude (or include) the selected tubule."""
        tubule = self._selected("tubules")
        if tubule is not None and bool(tubule.get("excluded")) != bool(excluded):
            self.push_edit("exclude_tubule", tubule["id"], bool(excluded))

    def restage(self, stage: str) -> None:
        """Set the selected tubule's stage."""
        tubule = self._selected("tubules")
        if tubule is not None and tubule.get("class") != stage:
            self.push_edit("restage_tubule", tubule["id"], stage)

    def retype(self, cell_type: str) -> None:
        """Set the selected cell's type."""
        cell = self._selected("cells")
        if cell is not None and cell.get("class") != cell_type:
            self.push_edit("retype_cell", cell["id"], cell_type)

    def delete_cell(self) -> None:
        """Remove the selected cell."""
        cell = self._selected("cells")
        if cell is not None:
            self.w.viewer.overlays.select(None)
            self.push_edit("delete_cell", cell["id"])

    def set_add_mode(self, on: bool) -> None:
        """Turn "add cells by clicking" on or off (menu action, A, and the Properties button agree)."""
        w = self.w
        on = bool(on) and self.w.results.current_session() is not None \
            and "cells" in (w.results.doc or {}).get("layers", {})
        if on and w.shapes.drawing:
            w.shapes.set_draw_mode(False)
        self.add_mode = on
        for widget in (w.actions["add_mode"], w.properties.add_button):
            widget.blockSignals(True)
            widget.setChecked(on)
            widget.blockSignals(False)
        w.viewer.graphics.setCursor(Qt.CursorShape.CrossCursor if on else Qt.CursorShape.ArrowCursor)
        if on:
            w.statusBar().showMessage("Click on the image to add a cell; Esc to stop", 5000)

    def add_cell_at(self, x: float, y: float, cell_type: str | None = None) -> None:
        """Add a cell centred at (x, y) with the typical size of this image's cells."""
        w = self.w
        session = w.results.current_session()
        if session is None:
            return
        cell_type = cell_type or w.properties.add_type.currentText()
        layer = w.viewer.overlays.layers.get("cells")
        size = DEFAULT_CELL_SIZE
        if layer is not None and len(layer.data.boxes):
            import numpy as np

            b = layer.data.boxes
            size = float(np.median(np.maximum(b[:, 2] - b[:, 0], b[:, 3] - b[:, 1])))
        objects = layer.data.objects if layer is not None else []
        object_id = next_object_id(list(objects) + w.results.doc.get("layers", {}).get("cells", []), session.edits)
        half = size / 2
        self.push_edit("add_cell", object_id, cell_type, box=[x - half, y - half, x + half, y + half], centroid=[y, x])
