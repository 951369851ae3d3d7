"""The keyboard shortcuts dialog: every action of the window with its keys, listed at once (not behind
a "Show Details" button), sortable and filterable by typing."""

from __future__ import annotations

from collections.abc import Iterable

from PySide6.QtCore import Qt
from PySide6.QtGui import QAction, QKeySequence
from PySide6.QtWidgets import (
    QAbstractItemView, QDialog, QDialogButtonBox, QHeaderView, QLineEdit, QTableWidget, QTableWidgetItem, QVBoxLayout,
    QWidget,
)


def shortcut_rows(actions: Iterable[QAction]) -> list[tuple[str, str]]:
    """(action text without the mnemonic &, its keys as the platform writes them), sorted, each once."""
    rows = set()
    for action in actions:
        keys = ", ".join(s.toString(QKeySequence.SequenceFormat.NativeText) for s in action.shortcuts())
        if keys and action.text():
            rows.add((action.text().replace("&", "").rstrip("."), keys))
    return sorted(rows, key=lambda row: row[0].lower())


class ShortcutsDialog(QDialog):
    """A table of actions and keys with a filter box."""

    def __init__(self, actions: Iterable[QAction], parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Keyboard shortcuts")
        rows = shortcut_rows(actions)
        self.filter = QLineEdit()
        self.filter.setPlaceholderText("Type to filter actions...")
        self.filter.setClearButtonEnabled(True)
        self.filter.textChanged.connect(self._filter)
        self.table = QTableWidget(len(rows), 2)
        self.table.setHorizontalHeaderLabels(["Action", "Keys"])
        self.table.verticalHeader().setVisible(False)
        self.table.verticalHeader().setDefaultSectionSize(self.fontMetrics().height() + 6)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        for i, (text, keys) in enumerate(rows):
            self.table.setItem(i, 0, QTableWidgetItem(text))
            self.table.setItem(i, 1, QTableWidgetItem(keys))
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        header.setSectionResizeMode(1, QHeaderView.ResizeMode.ResizeToContents)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addWidget(self.filter)
        layout.addWidget(self.table, 1)
        layout.addWidget(buttons)
        self.resize(520, min(720, 120 + 26 * max(len(rows), 4)))
        self.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)

    def _filter(self, text: str) -> None:
        needle = text.strip().lower()
        for i in range(self.table.rowCount()):
            shown = not needle or any(needle in self.table.item(i, c).text().lower() for c in range(2))
            self.table.setRowHidden(i, not shown)
