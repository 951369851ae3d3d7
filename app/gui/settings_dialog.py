"""The settings dialog: device, theme, run queue, default models per pipeline, remembered folders and projects.

It edits the :class:`app.core.settings.Settings` object in place when accepted; the main window
saves it (atomically, under platformdirs) and applies the theme.
"""

from __future__ import annotations

import os

from PySide6.QtWidgets import (
    QButtonGroup, QComboBox, QDialog, QDialogButtonBox, QFormLayout, QGridLayout, QGroupBox, QLabel, QLineEdit,
    QPushButton, QRadioButton, QSpinBox, QVBoxLayout, QWidget,
)

from app.core.paths import settings_path
from app.core.settings import DEVICES, THEMES, Settings, check_batch_cluster
from app.gui.theme import error_style

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
        self.threads = QSpinBox()
        self.threads.setRange(0, max(1, os.cpu_count() or 1))
        self.threads.setValue(int(settings.threads))
        self.threads.setSpecialValueText("all cores")
        self.threads.setToolTip("CPU threads a job may use; 1 is fastest when the machine is small or busy, "
                                "more help on a large idle machine")
        form.addRow("CPU threads per job", self.threads)

        self.run_queue = RunQueueChoice(settings.batch_cluster)

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
        layout.addWidget(self.run_queue)
        layout.addWidget(models)
        layout.addWidget(memory)
        layout.addWidget(QLabel(f"Stored in {settings_path()}"))
        layout.addWidget(buttons)

    def _forget(self) -> None:
        self._forget_requested = True
        self.folders_label.setText("(forgotten on OK)")
        self.recent_label.setText("")

    def apply(self) -> None:
        """Copy the dialog's values into the settings object (the run queue only when its value is valid)."""
        self.settings.device = self.device.currentText().strip() or "auto"
        self.settings.batch_cluster = self.run_queue.value()
        self.settings.theme = self.theme.currentText()
        self.settings.threads = int(self.threads.value())
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
        problem = self.run_queue.problem()
        if problem:
            self.run_queue.error.setText(problem)
            self.run_queue.address.setFocus()
            return
        self.apply()
        super().accept()


class RunQueueChoice(QGroupBox):
    """Where queued batches run: this computer, a Dask scheduler (address) or a local cluster of N workers.

    The value is the ``batch_cluster`` setting: "", "tcp://host:8786" or "local:N".
    """

    def __init__(self, value: str, parent: QWidget | None = None) -> None:
        super().__init__("Run queue", parent)
        self.here = QRadioButton("This computer")
        self.scheduler = QRadioButton("Dask scheduler at")
        self.local = QRadioButton("Local cluster with")
        self.group = QButtonGroup(self)
        for button in (self.here, self.scheduler, self.local):
            self.group.addButton(button)
        self.address = QLineEdit()
        self.address.setPlaceholderText("tcp://host:8786")
        self.workers = QSpinBox()
        self.workers.setRange(1, 256)
        self.workers.setValue(2)
        self.workers.setSuffix(" workers")
        self.error = QLabel("")
        self.error.setStyleSheet(error_style())
        self.error.setWordWrap(True)
        note = QLabel("Batches of sections run there (stagescope batch analyze --scheduler / --cluster); "
                      "a single run from the run panel stays on this computer.")
        note.setWordWrap(True)
        grid = QGridLayout(self)
        grid.addWidget(self.here, 0, 0, 1, 2)
        grid.addWidget(self.scheduler, 1, 0)
        grid.addWidget(self.address, 1, 1)
        grid.addWidget(self.local, 2, 0)
        grid.addWidget(self.workers, 2, 1)
        grid.addWidget(note, 3, 0, 1, 2)
        grid.addWidget(self.error, 4, 0, 1, 2)
        self.address.textEdited.connect(lambda _text: self.scheduler.setChecked(True))
        self.workers.valueChanged.connect(lambda _n: self.local.setChecked(True))
        self.group.buttonToggled.connect(lambda *_: self._sync())
        self.set_value(value)

    def set_value(self, value: str) -> None:
        """Show a stored ``batch_cluster`` value (an invalid one shows as this computer)."""
        try:
            value = check_batch_cluster(value)
        except ValueError:
            value = ""
        if value.startswith("local:"):
            self.workers.setValue(int(value.split(":", 1)[1]))
            self.local.setChecked(True)
        elif value:
            self.address.setText(value)
            self.scheduler.setChecked(True)
        else:
            self.here.setChecked(True)
        self._sync()

    def _sync(self) -> None:
        self.address.setEnabled(not self.local.isChecked())
        self.workers.setEnabled(not self.scheduler.isChecked())
        self.error.setText("")

    def problem(self) -> str:
        """Why the chosen value cannot be stored, or "" when it can."""
        try:
            self.value()
        except ValueError as error:
            return str(error)
        return ""

    def value(self) -> str:
        """The chosen value in its stored form; ValueError for a scheduler address that is not one."""
        if self.local.isChecked():
            return f"local:{self.workers.value()}"
        if self.scheduler.isChecked():
            if not self.address.text().strip():
                raise ValueError("type the Dask scheduler's address, as in tcp://host:8786")
            return check_batch_cluster(self.address.text())
        return ""
