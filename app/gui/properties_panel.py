"""The properties dock: what is selected (image or object) and the curation controls for it.

Clicking a tubule shows its stage, score, area and cell counts with a stage box and an
"Excluded" toggle; clicking a cell shows its type, score, box and tubule with a type box and a
Delete button.  The panel only emits what the user asked for; the main window turns it into edits.
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


class PropertiesPanel(QWidget):
    """Properties of the selection and the controls to curate it."""

    restage_requested = Signal(str)
    exclude_requested = Signal(bool)
    retype_requested = Signal(str)
    delete_requested = Signal()
    add_mode_toggled = Signal(bool)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.tree = QTreeWidget()
        self.tree.setHeaderLabels(["Property", "Value"])
        self.tree.setRootIsDecorated(False)
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

        self.add_box = QGroupBox("Add missed cells")
        self.add_type = QComboBox()
        self.add_type.addItems(CELL_TYPES)
        self.add_button = QPushButton("Add cells by clicking")
        self.add_button.setCheckable(True)
        self.add_button.setToolTip("While on, a click on the image adds a cell of this type (A)")
        self.add_button.toggled.connect(self.add_mode_toggled)
        row = QHBoxLayout(self.add_box)
        row.addWidget(self.add_type, 1)
        row.addWidget(self.add_button)

        self.hint = QLabel("Click an object in the viewer to see it here.")
        self.hint.setWordWrap(True)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(2, 2, 2, 2)
        layout.addWidget(self.hint)
        layout.addWidget(self.tree, 1)
        layout.addWidget(self.tubule_box)
        layout.addWidget(self.cell_box)
        layout.addWidget(self.add_box)
        self.layer: str | None = None
        self.obj: dict[str, Any] | None = None
        self.set_curation_enabled(False)
        self.show_object(None, None)

    def set_curation_enabled(self, enabled: bool, reason: str = "") -> None:
        """Adding cells needs results with a cells layer on screen; otherwise the controls are hidden."""
        self.add_box.setEnabled(enabled)
        self.add_box.setVisible(enabled)
        self.add_box.setToolTip("" if enabled else reason)
        if not enabled and self.add_button.isChecked():
            self.add_button.setChecked(False)

    def show_info(self, title: str, rows: dict[str, Any]) -> None:
        """Show image (or run) information when no object is selected."""
        self.layer, self.obj = None, None
        self.tree.clear()
        self.hint.setText(title)
        for key, value in rows.items():
            self.tree.addTopLevelItem(QTreeWidgetItem([key, format_value(value)]))
        self.tubule_box.setVisible(False)
        self.cell_box.setVisible(False)

    def show_object(self, layer: str | None, obj: dict[str, Any] | None, extra: dict[str, Any] | None = None) -> None:
        """Show an object's properties and the controls that fit its layer."""
        self.layer, self.obj = layer, obj
        self.tree.clear()
        self.tubule_box.setVisible(layer == "tubules" and obj is not None)
        self.cell_box.setVisible(layer == "cells" and obj is not None)
        if obj is None:
            self.hint.setText("Click an object in the viewer to see it here.")
            return
        self.hint.setText(f"{layer[:-1] if layer and layer.endswith('s') else layer} {obj.get('id')}")
        rows = {"layer": layer, **{k: v for k, v in obj.items() if k not in HIDDEN_KEYS}, **(extra or {})}
        for key, value in rows.items():
            item = QTreeWidgetItem([str(key), format_value(value)])
            item.setToolTip(1, str(value)[:2000])
            self.tree.addTopLevelItem(item)
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
