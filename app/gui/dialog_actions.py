"""The window's dialogs and desktop actions: report export, model library, training, settings, shortcuts, about."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from PySide6.QtCore import QUrl
from PySide6.QtGui import QAction, QDesktopServices
from PySide6.QtWidgets import QApplication, QMessageBox

from app import __version__

if TYPE_CHECKING:
    from app.gui.main_window import MainWindow


class DialogActions:
    """Opens the window's dialogs (non-modal; the last of each kind is kept for tests) and desktop links."""

    def __init__(self, window: MainWindow) -> None:
        self.w = window
        self.report_dialog: Any = None
        self.model_dialog: Any = None
        self.wizard: Any = None
        self.settings_dialog: Any = None

    def export_report(self) -> None:
        """Open the report exporter on the project."""
        w = self.w
        if not w.projects.need_project():
            return
        from app.gui.report_exporter import ReportExporter

        dialog = ReportExporter(w.project, w.settings, w)
        dialog.report_written.connect(lambda _path: w.browser.refresh())
        dialog.open()
        self.report_dialog = dialog

    def model_library(self) -> None:
        """Open the model library (the image on screen tells which models fit it)."""
        from app.gui.model_library import ModelLibrary

        dialog = ModelLibrary(self.w.settings, self.w, image_info=self.current_image_info())
        dialog.models_changed.connect(self.w.run_panel.refresh_models)
        dialog.open()
        self.model_dialog = dialog

    def training_wizard(self) -> None:
        """Open the training wizard on the project."""
        from app.gui.training_wizard import TrainingWizard

        w = self.w
        wizard = TrainingWizard(w.project, w.settings, w.queue, w)
        wizard.model_saved.connect(lambda _folder: w.run_panel.refresh_models())
        wizard.open()
        self.wizard = wizard

    def settings(self) -> None:
        """Open the settings; accepting them applies the theme, models and device."""
        from app.gui.settings_dialog import SettingsDialog

        dialog = SettingsDialog(self.w.settings, self.w)
        dialog.accepted.connect(self._settings_changed)
        dialog.open()
        self.settings_dialog = dialog

    def _settings_changed(self) -> None:
        from app.gui.palette import apply_theme

        apply_theme(QApplication.instance(), self.w.settings.theme)
        self.w.save_settings()
        self.w.run_panel.refresh_models()
        self.w.hooks.detect_device()

    def current_image_info(self) -> dict[str, Any] | None:
        """Name, channels and planes of the image on screen, for the model library's fit check."""
        w = self.w
        if w.project is None or w.current_image is None:
            return None
        entry = w.project.image(w.current_image)
        n = w.viewer.pyramid.n_channels if w.viewer.pyramid is not None else len(entry.channels) or None
        planes = w.viewer.pyramid.n_planes if w.viewer.pyramid is not None else None
        return {"name": entry.name, "n_channels": n, "n_planes": planes, "channels": entry.channels}

    def open_path(self, path: Path) -> None:
        """Open a file or folder with the desktop's application."""
        if not QDesktopServices.openUrl(QUrl.fromLocalFile(str(path))):
            self.w.statusBar().showMessage(f"Cannot open {path}", 5000)

    def show_project_folder(self) -> None:
        """Open the project folder in the file manager."""
        if self.w.projects.need_project():
            self.open_path(self.w.project.folder)

    def show_shortcuts(self) -> Any:
        """List every action with its shortcut."""
        from app.gui.shortcuts_dialog import ShortcutsDialog

        dialog = ShortcutsDialog(self.w.findChildren(QAction), self.w)
        dialog.open()
        return dialog

    def show_about(self) -> None:
        """The About box."""
        QMessageBox.about(self.w, "About Stagescope",
                          f"Stagescope {__version__}\nBrightfield nuclei, testis staging (Stagetool) and Kaizen "
                          "decomposition for microscopy labs.")
