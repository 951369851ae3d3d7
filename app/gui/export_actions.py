"""File > Export results for QuPath / napari...: pick a run, a format and a folder; the export runs as a job.

The dialog only gathers choices; the work is :func:`app.exports.export_job` (the same job as
``stagescope export``), queued in the window's job queue so a whole section never blocks the window.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PySide6.QtCore import QObject
from PySide6.QtGui import QAction, QKeySequence
from PySide6.QtWidgets import (
    QComboBox, QDialog, QDialogButtonBox, QFileDialog, QFormLayout, QHBoxLayout, QLineEdit, QPushButton, QWidget,
)

FORMAT_CHOICES = (("qupath", "QuPath GeoJSON (File > Import objects)"),
                  ("labels", "napari: label TIFFs + CSV tables"))


class ExportDialog(QDialog):
    """Choose the run (newest first, the shown one preselected), the format and the output folder."""

    def __init__(self, runs: list[Any], project_folder: Path, current: Any = None,
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Export results for QuPath / napari")
        self.project_folder = Path(project_folder)
        self.run_box = QComboBox()
        for run in runs:
            self.run_box.addItem(f"{run.id} ({run.pipeline}, {len(run.results)} image(s))", run)
        ids = [run.id for run in runs]
        if current is not None and getattr(current, "id", None) in ids:
            self.run_box.setCurrentIndex(ids.index(current.id))
        self.format_box = QComboBox()
        for key, text in FORMAT_CHOICES:
            self.format_box.addItem(text, key)
        self.folder = QLineEdit()
        browse = QPushButton("Browse...")
        browse.clicked.connect(self._browse)
        row = QHBoxLayout()
        row.addWidget(self.folder, 1)
        row.addWidget(browse)
        form = QFormLayout(self)
        form.addRow("Run", self.run_box)
        form.addRow("Format", self.format_box)
        form.addRow("Folder", row)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel)
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        form.addRow(buttons)
        self.run_box.currentIndexChanged.connect(self._suggest_folder)
        self.format_box.currentIndexChanged.connect(self._suggest_folder)
        self._suggest_folder()

    def choice(self) -> tuple[Any, str, Path]:
        """(run, format key, output folder) as chosen."""
        return self.run_box.currentData(), self.format_box.currentData(), Path(self.folder.text())

    def _suggest_folder(self) -> None:
        run = self.run_box.currentData()
        if run is not None:
            self.folder.setText(str(self.project_folder / "exports" / f"{run.id}-{self.format_box.currentData()}"))

    def _browse(self) -> None:
        chosen = QFileDialog.getExistingDirectory(self, "Export into folder", self.folder.text())
        if chosen:
            self.folder.setText(chosen)


class ExportActions(QObject):
    """Adds File > Export results for QuPath / napari... to ``menu`` of the main window."""

    def __init__(self, window: Any, menu: Any) -> None:
        super().__init__(window)
        self.window = window
        action = QAction("Export results for &QuPath / napari...", window)
        action.setShortcut(QKeySequence("Ctrl+Shift+Q"))
        tip = "Write a run's objects as QuPath GeoJSON, or as label TIFFs and CSV tables for napari"
        action.setStatusTip(tip)
        action.setToolTip(tip)
        action.triggered.connect(self.export_dialog)
        window.addAction(action)
        window.actions["export_results"] = action
        menu.addAction(action)
        self.dialog: ExportDialog | None = None

    def export_dialog(self) -> None:
        """Ask what to export, then queue the export job."""
        project = self.window.project
        runs = [r for r in reversed(project.runs()) if r.results] if project is not None else []
        if not runs:
            self.window.show_error("Nothing to export", "Run a pipeline on an image first; its results are exported.")
            return
        self.dialog = ExportDialog(runs, project.folder, getattr(self.window, "current_run", None), self.window)
        self.dialog.accepted.connect(lambda: self.start(*self.dialog.choice()))
        self.dialog.open()

    def start(self, run: Any, fmt: str, folder: Path) -> Any:
        """Queue the export of ``run`` as ``fmt`` into ``folder``; the status bar says where it went."""
        from app.exports import export_job

        def done(written: list[Path]) -> None:
            self.window.statusBar().showMessage(f"Exported {len(written)} file(s) to {folder}", 10000)

        return self.window.queue.submit(f"Export {run.id} for {'QuPath' if fmt == 'qupath' else 'napari'}",
                                        lambda: export_job(run.folder, fmt, folder), kind="export", on_success=done)
