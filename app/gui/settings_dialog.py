"""The settings dialog: device, theme, default models per pipeline, remembered folders and projects.

It edits the :class:`app.core.settings.Settings` object in place when accepted; the main window
saves it (atomically, under platformdirs) and applies the theme.
"""

from __future__ import annotations

from PySide6.QtWidgets import (
    QComboBox, QDialog, QDialogButtonBox, QFormLayout, QGroupBox, QLabel, QPushButton, QVBoxLayout, QWidget,
)

from app.core.paths import settings_path
from app.core.settings import DEVICES, THEMES, Settings

NO_DEFAULT = "(first available)"


class SettingsDialog(QDialog):
    """Edit the user's settings; changes apply on OK."""

    def __init__(self, settings: Settings, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Settings")
        self.settings = settings
        self.device = QComboBox()
        self.device.setEditable(True)
        self.device.addItems(DEVICES)
        self.device.setCurrentText(settings.device)
        self.device.setToolTip("auto: a GPU when there is one, else the CPU; cuda:1 picks the second GPU")
        self.theme = QComboBox()
        self.theme.addItems(THEMES)
        self.theme.setCurrentText(settings.theme)
        general = QGroupBox("General")
        form = QFormLayout(general)
        form.addRow("Device", self.device)
        form.addRow("Theme", self.theme)

        models = QGroupBox("Default models")
        models_form = QFormLayout(models)
        self.model_combos: dict[str, QComboBox] = {}
        try:
            from app.core.modelcard import PIPELINES, find_models
        except ImportError:
            PIPELINES, find_models = (), None
        for pipeline in PIPELINES:
            combo = QComboBox()
            combo.addItem(NO_DEFAULT, "")
            for card in find_models(pipeline):
                combo.addItem(card.name, str(card.folder))
            index = combo.findData(settings.default_models.get(pipeline, ""))
            combo.setCurrentIndex(max(0, index))
            models_form.addRow(pipeline, combo)
            self.model_combos[pipeline] = combo

        memory = QGroupBox("Remembered")
        memory_layout = QVBoxLayout(memory)
        folders = "\n".join(f"{k}: {v}" for k, v in settings.last_folders.items()) or "no folders yet"
        self.folders_label = QLabel(folders)
        self.folders_label.setWordWrap(True)
        self.recent_label = QLabel(f"{len(settings.recent_projects)} recent project(s)")
        self.forget_button = QPushButton("Forget folders and recent projects")
        self.forget_button.clicked.connect(self._forget)
        self._forget_requested = False
        memory_layout.addWidget(self.folders_label)
        memory_layout.addWidget(self.recent_label)
        memory_layout.addWidget(self.forget_button)

        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel)
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addWidget(general)
        layout.addWidget(models)
        layout.addWidget(memory)
        layout.addWidget(QLabel(f"Stored in {settings_path()}"))
        layout.addWidget(buttons)

    def _forget(self) -> None:
        self._forget_requested = True
        self.folders_label.setText("(forgotten on OK)")
        self.recent_label.setText("")

    def apply(self) -> None:
        """Copy the dialog's values into the settings object."""
        self.settings.device = self.device.currentText().strip() or "auto"
        self.settings.theme = self.theme.currentText()
        for pipeline, combo in self.model_combos.items():
            folder = combo.currentData()
            if folder:
                self.settings.default_models[pipeline] = folder
            else:
                self.settings.default_models.pop(pipeline, None)
        if self._forget_requested:
            self.settings.last_folders.clear()
            self.settings.recent_projects.clear()

    def accept(self) -> None:  # noqa: D102 - Qt's name
        self.apply()
        super().accept()
