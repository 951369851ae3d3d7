"""The properties dock: what is selected (image or object) and the curation controls for it.

Clicking a tubule shows its stage, score, area (µm² when the pixel size is known) and cell counts
with a stage box and an "Excluded" toggle; clicking a cell shows its type, score, position, tubule
and whether it is positive for each antibody, with a type box and a Delete button.  Positions are
always written x first, then y, with units; the pipeline's internal fields (stage weights, mask
counts, votes) stay out of the table.  The panel only emits what the user asked for; the main
window turns it into edits.
"""

from __future__ import annotations

from typing import Any

from PySide6.QtCore import Signal
from PySide6.QtWidgets import (
    QCheckBox, QComboBox, QFormLayout, QGroupBox, QHBoxLayout, QLabel, QPushButton, QTreeWidget,
    QTreeWidgetItem, QVBoxLayout, QWidget,
)

from app.gui.overlays import CELL_TYPES, STAGES

HIDDEN_KEYS = {"polygon", "mask", "rle"}
# fields the pipelines keep for themselves (how a stage was voted, how many masks or votes agreed)
INTERNAL_KEYS = {"stage_weights", "stage_from_cells", "n_masks", "votes", "antigen", "area_px", "centroid", "box",
                 "class", "score", "id", "tubule_id", "excluded", "stage_source"}
STAGE_SOURCES = {"cells": "from its cell types", "masks": "from the tubule masks"}


def format_value(value: Any) -> str:
    """A readable one-line form of a property value."""
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)) and len(value) <= 6 and all(isinstance(v, (int, float)) for v in value):
        return "(" + ", ".join(f"{v:.1f}" if isinstance(v, float) else str(v) for v in value) + ")"
    if isinstance(value, dict):
        return ", ".join(f"{k}: {format_value(v)}" for k, v in list(value.items())[:8])
    text = str(value)
    return text if len(text) < 120 else text[:117] + "..."


def _number(value: float, digits: int = 0) -> str:
    return f"{value:,.{digits}f}".replace(",", "\u2009")  # thin space groups thousands


def format_area(area_px: float, pixel_size_um: float | None) -> str:
    """An area in µm² when the pixel size is known, else in px²."""
    if pixel_size_um:
        return f"{_number(area_px * pixel_size_um ** 2)} µm²"
    return f"{_number(area_px)} px² (pixel size unknown)"


def format_point(x: float, y: float) -> str:
    """A position in image pixels, x first."""
    return f"x {x:.0f}, y {y:.0f} px"


def antibody_states(obj: dict[str, Any], antibodies: list[dict[str, Any]]) -> dict[str, str]:
    """Per antibody of the run: "positive" / "negative" (with the cell's mean and the threshold T)."""
    from app.pipelines.stagetool.tables import cell_positive

    states = {}
    for antibody in antibodies:
        name, threshold = antibody.get("name"), antibody.get("threshold")
        values = (obj.get("antigen") or {}).get(name) or {}
        positive = cell_positive(obj, name, threshold)
        if positive is None:
            states[name] = "not measured" if not values else "no threshold"
        else:
            states[name] = (f"{'positive' if positive else 'negative'} (mean {values.get('mean', 0):.0f}, "
                            f"T {threshold:.0f})")
    return states


def object_rows(layer: str | None, obj: dict[str, Any], meta: dict[str, Any] | None = None) -> dict[str, str]:
    """The rows the panel shows for an object: readable labels, x before y, units; no internal fields."""
    meta = meta or {}
    pixel = meta.get("pixel_size_um")
    rows: dict[str, str] = {}
    kind = "stage" if layer == "tubules" else "type" if layer == "cells" else "class"
    if obj.get("class") is not None:
        rows[kind] = str(obj["class"])
    if layer == "tubules" and obj.get("stage_source") in STAGE_SOURCES:
        rows["staged"] = STAGE_SOURCES[obj["stage_source"]]
    if obj.get("score") is not None:
        rows["score"] = f"{float(obj['score']):.2f}"
    if layer == "tubules":
        rows["excluded"] = "yes" if obj.get("excluded") else "no"
    if obj.get("area_px") is not None:
        rows["area"] = format_area(float(obj["area_px"]), pixel)
    box = obj.get("box")
    if obj.get("centroid") is not None and len(obj["centroid"]) == 2:
        y, x = obj["centroid"]  # stored (row, column) like the masks they come from
        rows["centre"] = format_point(x, y)
    elif box is not None and len(box) == 4:
        rows["centre"] = format_point((box[0] + box[2]) / 2, (box[1] + box[3]) / 2)
    if box is not None and len(box) == 4:
        width, height = box[2] - box[0], box[3] - box[1]
        rows["box"] = f"x {box[0]:.0f}-{box[2]:.0f}, y {box[1]:.0f}-{box[3]:.0f} px"
        rows["size"] = (f"{width * pixel:.1f} × {height * pixel:.1f} µm" if pixel
                        else f"{width:.0f} × {height:.0f} px")
    if layer == "cells":
        rows["tubule"] = str(obj["tubule_id"]) if obj.get("tubule_id") is not None else "none (outside tubules)"
        for name, state in antibody_states(obj, list(meta.get("antibodies") or [])).items():
            rows[name] = state
    for key, value in obj.items():
        if key not in HIDDEN_KEYS and key not in INTERNAL_KEYS and key not in rows:
            rows[key.replace("_", " ")] = format_value(value)
    return rows


class PropertiesPanel(QWidget):
    """Properties of the selection and the controls to curate it."""

    restage_requested = Signal(str)
    exclude_requested = Signal(bool)
    retype_requested = Signal(str)
    delete_requested = Signal()
    add_mode_toggled = Signal(bool)
    draw_mode_toggled = Signal(bool)
    train_requested = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.tree = QTreeWidget()
        self.tree.setHeaderLabels(["Property", "Value"])
        self.tree.setRootIsDecorated(False)
        self.tree.setIndentation(12)
        self.tree.setColumnWidth(0, 130)

        self.tubule_box = QGroupBox("Curate tubule")
        self.stage_combo = QComboBox()
        self.stage_combo.addItems(STAGES)
        self.stage_combo.activated.connect(lambda _i: self.restage_requested.emit(self.stage_combo.currentText()))
        self.exclude_check = QCheckBox("Excluded (damaged / longitudinal)")
        self.exclude_check.clicked.connect(self.exclude_requested)
        form = QFormLayout(self.tubule_box)
        form.addRow("Stage", self.stage_combo)
        form.addRow(self.exclude_check)

        self.cell_box = QGroupBox("Curate cell")
        self.type_combo = QComboBox()
        self.type_combo.addItems(CELL_TYPES)
        self.type_combo.activated.connect(lambda _i: self.retype_requested.emit(self.type_combo.currentText()))
        self.delete_button = QPushButton("Delete cell")
        self.delete_button.setToolTip("Remove this cell (Del)")
        self.delete_button.clicked.connect(self.delete_requested)
        form = QFormLayout(self.cell_box)
        form.addRow("Type", self.type_combo)
        form.addRow(self.delete_button)

        self.add_box = QGroupBox("Add missed objects")
        self.add_type = QComboBox()
        self.add_type.addItems(CELL_TYPES)
        self.add_button = QPushButton("Add cells by clicking")
        self.add_button.setCheckable(True)
        self.add_button.setToolTip("While on, a click on the image adds a cell of this type (A)")
        self.add_button.toggled.connect(self.add_mode_toggled)
        self.draw_stage = QComboBox()
        self.draw_stage.addItems(STAGES)
        self.draw_button = QPushButton("Draw tubule outline")
        self.draw_button.setCheckable(True)
        self.draw_button.setToolTip("Click the outline's points; double-click or Enter closes it (D). "
                                    "Drag a selected outline's points or a cell box's corners to correct them")
        self.draw_button.toggled.connect(self.draw_mode_toggled)
        rows = QFormLayout(self.add_box)
        for combo, button in ((self.add_type, self.add_button), (self.draw_stage, self.draw_button)):
            row = QHBoxLayout()
            row.addWidget(combo, 1)
            row.addWidget(button)
            rows.addRow(row)

        self.train_button = QPushButton("Train on my corrections...")
        self.train_button.setToolTip("Fine-tune the model that made these results on your corrections (Ctrl+Shift+T)")
        self.train_button.clicked.connect(self.train_requested)

        self.hint = QLabel("Click an object in the viewer to see it here.")
        self.hint.setWordWrap(True)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(2, 2, 2, 2)
        layout.addWidget(self.hint)
        layout.addWidget(self.tree, 1)
        layout.addWidget(self.tubule_box)
        layout.addWidget(self.cell_box)
        layout.addWidget(self.add_box)
        layout.addWidget(self.train_button)
        self.layer: str | None = None
        self.obj: dict[str, Any] | None = None
        self.set_curation_enabled(False)
        self.show_object(None, None)

    def set_curation_enabled(self, enabled: bool, reason: str = "") -> None:
        """Adding cells or tubules needs results on screen; otherwise the controls are hidden."""
        self.add_box.setEnabled(enabled)
        self.add_box.setVisible(enabled)
        self.train_button.setVisible(enabled)
        self.add_box.setToolTip("" if enabled else reason)
        for button in (self.add_button, self.draw_button):
            if not enabled and button.isChecked():
                button.setChecked(False)

    def show_info(self, title: str, rows: dict[str, Any]) -> None:
        """Show image (or run) information when no object is selected."""
        self.layer, self.obj = None, None
        self.tree.clear()
        self.hint.setText(title)
        for key, value in rows.items():
            self.tree.addTopLevelItem(QTreeWidgetItem([key, format_value(value)]))
        self.tubule_box.setVisible(False)
        self.cell_box.setVisible(False)

    def show_object(self, layer: str | None, obj: dict[str, Any] | None, extra: dict[str, Any] | None = None,
                    meta: dict[str, Any] | None = None) -> None:
        """Show an object's properties and the controls that fit its layer (``meta``: the results' meta,
        for the pixel size and the antibodies and their thresholds)."""
        self.layer, self.obj = layer, obj
        self.tree.clear()
        self.tubule_box.setVisible(layer == "tubules" and obj is not None)
        self.cell_box.setVisible(layer == "cells" and obj is not None)
        if obj is None:
            self.hint.setText("Click an object in the viewer to see it here.")
            return
        self.hint.setText(f"{layer[:-1] if layer and layer.endswith('s') else layer} {obj.get('id')}")
        for key, value in object_rows(layer, obj, meta).items():
            item = QTreeWidgetItem([str(key), value])
            item.setToolTip(1, value)
            self.tree.addTopLevelItem(item)
        for key, value in (extra or {}).items():  # e.g. a tubule's cells: one child row per cell type
            if isinstance(value, dict):
                item = QTreeWidgetItem([str(key), f"{sum(v for v in value.values() if isinstance(v, int))} in all"])
                order = {name: i for i, name in enumerate(CELL_TYPES)}
                for name in sorted(value, key=lambda n: (order.get(n, len(order)), n)):
                    item.addChild(QTreeWidgetItem([f"  {name}", format_value(value[name])]))
                self.tree.addTopLevelItem(item)
                item.setExpanded(True)
            else:
                self.tree.addTopLevelItem(QTreeWidgetItem([str(key), format_value(value)]))
        if layer == "tubules":
            self._set_combo(self.stage_combo, str(obj.get("class", "")))
            self.exclude_check.setChecked(bool(obj.get("excluded")))
        elif layer == "cells":
            self._set_combo(self.type_combo, str(obj.get("class", "")))

    @staticmethod
    def _set_combo(combo: QComboBox, text: str) -> None:
        if text and combo.findText(text) < 0:
            combo.addItem(text)
        combo.setCurrentText(text)
