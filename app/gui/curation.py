"""Curation with undo/redo: each edit is a QUndoCommand over the run's edits file (app/core/edits.py).

A :class:`CurationSession` holds the edits list of one run folder.  Pushing an edit appends it and
writes ``edits.json`` at once (atomically); undo removes it and writes again, so the file always
matches what the user sees and nothing is kept only in memory.  One undo stack per run lives in a
QUndoGroup owned by the main window, so switching runs keeps each run's history.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PySide6.QtCore import QObject, Signal
from PySide6.QtGui import QUndoCommand, QUndoStack

from app.core.edits import ACTION_LAYERS, check_edit, read_edits, write_edits

ACTION_TEXT = {
    "exclude_tubule": "exclude tubule {id}",
    "restage_tubule": "restage tubule {id} to {value}",
    "retype_cell": "retype cell {id} to {value}",
    "delete_cell": "delete cell {id}",
    "add_cell": "add {value} cell",
    "resize_cell": "resize cell {id}",
    "add_tubule": "draw {value} tubule",
    "reshape_tubule": "edit outline of tubule {id}",
}


def describe(edit: dict[str, Any]) -> str:
    """A short text for the Edit menu ("Undo restage tubule 4 to IX")."""
    if edit["action"] == "exclude_tubule" and edit.get("value") is False:
        return f"include tubule {edit['id']}"
    return ACTION_TEXT[edit["action"]].format(**{"id": edit.get("id"), "value": edit.get("value")})


class CurationSession(QObject):
    """The edits of one run folder, with an undo stack; ``changed(image, layer)`` after every change."""

    changed = Signal(str, str)  # image name, layer name

    def __init__(self, run_folder: str | Path, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.run_folder = Path(run_folder)
        self.edits: list[dict[str, Any]] = read_edits(self.run_folder)
        self.stack = QUndoStack(self)

    def seed(self, edits: list[dict[str, Any]]) -> None:
        """Start from edits applied at analysis time (only while nothing was edited here)."""
        if not self.edits and not self.stack.count():
            self.edits = [dict(e) for e in edits]

    def push(self, edit: dict[str, Any]) -> None:
        """Apply an edit through the undo stack (it is written to disk at once)."""
        check_edit(edit)
        self.stack.push(EditCommand(self, edit))

    def _append(self, edit: dict[str, Any]) -> None:
        self.edits.append(edit)
        self._save(edit)

    def _remove(self, edit: dict[str, Any]) -> None:
        for index in range(len(self.edits) - 1, -1, -1):
            if self.edits[index] is edit:
                del self.edits[index]
                break
        self._save(edit)

    def _save(self, edit: dict[str, Any]) -> None:
        write_edits(self.run_folder, self.edits)
        self.changed.emit(edit.get("image") or "", edit.get("layer") or ACTION_LAYERS[edit["action"]])


class EditCommand(QUndoCommand):
    """One edit: redo appends it to the session, undo removes it."""

    def __init__(self, session: CurationSession, edit: dict[str, Any]) -> None:
        super().__init__(describe(edit))
        self.session = session
        self.edit = edit

    def redo(self) -> None:  # noqa: D102 - Qt's name
        self.session._append(self.edit)

    def undo(self) -> None:  # noqa: D102
        self.session._remove(self.edit)
