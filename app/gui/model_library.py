"""The model library: shipped and user models with their cards; import, export, default, fit check.

Models are folders with ``card.json`` + ``weights.pt`` (app/core/modelcard.py).  Importing checks
the card and the weights' sha256 before copying the folder into the user's models folder, so a
broken or tampered model never enters the library.  "Check fit" says whether a model can serve the
image on screen, and why not.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QDialog, QDialogButtonBox, QFileDialog, QHBoxLayout, QHeaderView, QLabel, QMessageBox, QPushButton,
    QSplitter, QTextBrowser, QTreeWidget, QTreeWidgetItem, QVBoxLayout, QWidget,
)

from app.core.errors import ModelError, UserError
from app.core.paths import bundled_models_dir, user_models_dir
from app.core.settings import Settings


def verify_model_folder(folder: Path) -> Any:
    """The card of a model folder whose weights match the card's sha256 (ModelError otherwise)."""
    from app.core.modelcard import WEIGHTS_FILE, load_model_card, sha256_file

    card = load_model_card(folder)
    weights = Path(folder) / WEIGHTS_FILE
    if not weights.is_file():
        raise ModelError(f"{folder}: no {WEIGHTS_FILE} beside the card")
    if card.weights_sha256 and sha256_file(weights) != card.weights_sha256:
        raise ModelError(f"{weights}: the weights do not match the card's sha256 (changed or truncated file)")
    return card


def import_model(folder: str | Path, target_root: Path | None = None) -> Path:
    """Copy a verified model folder into the user's models folder (a new name if taken); returns the copy."""
    folder = Path(folder)
    card = verify_model_folder(folder)
    root = target_root or user_models_dir()
    root.mkdir(parents=True, exist_ok=True)
    base = "".join(c if c.isalnum() or c in "-_." else "_" for c in card.name) or "model"
    target, n = root / base, 1
    while target.exists():
        n += 1
        target = root / f"{base}_{n}"
    tmp = root / f".tmp-import-{target.name}"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(folder, tmp, ignore=shutil.ignore_patterns("checkpoint*", ".tmp-*"))
    tmp.rename(target)
    return target


def export_model(folder: str | Path, destination: str | Path) -> Path:
    """Copy a model folder (card + weights) into ``destination``; returns the new folder."""
    folder, destination = Path(folder), Path(destination)
    target = destination / folder.name
    if target.exists():
        raise UserError(f"{target} already exists; choose another folder")
    shutil.copytree(folder, target, ignore=shutil.ignore_patterns("checkpoint*", ".tmp-*"))
    return target


def fit_problem(card: Any, image_info: dict[str, Any] | None) -> str | None:
    """Why a model cannot serve an image (None when it can, or when there is no image to check)."""
    if not image_info:
        return None
    channels = image_info.get("n_channels") or 1
    planes = image_info.get("n_planes") or 1
    try:
        if card.pipeline == "brightfield":
            card.check_fits(n_channels=planes if planes > 1 else channels)
        elif card.input_channels > channels:
            raise ModelError(f"model {card.name!r} needs {card.input_channels} channels, the image has {channels}")
    except ModelError as error:
        return str(error)
    return None


def card_html(card: Any) -> str:
    """A readable summary of a model card."""
    def esc(text: Any) -> str:
        return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")

    rows = [("Pipeline", card.pipeline), ("Architecture", card.architecture), ("Backbone", card.backbone or "-"),
            ("Classes", ", ".join(card.classes) or "-"), ("Input channels", card.input_channels),
            ("Channel meaning", ", ".join(map(str, card.channel_meaning)) or "-"),
            ("Pixel size (µm)", card.pixel_size_um or "-"), ("Created", card.created),
            ("App version", card.app_version),
            ("Weights", f"{card.weights_dtype}, sha256 {card.weights_sha256[:16]}..."),
            ("Folder", card.folder)]
    html = [f"<h3>{esc(card.name)}</h3><table>"]
    html += [f"<tr><td><b>{esc(k)}</b></td><td>{esc(v)}</td></tr>" for k, v in rows]
    html.append("</table>")
    if card.training:
        html.append("<h4>Training</h4><pre>" + esc(json.dumps(card.training, indent=1, default=str)[:3000]) + "</pre>")
    if card.metrics:
        html.append("<h4>Metrics (with the data they were measured on)</h4><table border='1' cellspacing='0'>")
        for split, values in card.metrics.items():
            text = ", ".join(f"{k}: {v:.4g}" if isinstance(v, float) else f"{k}: {v}"
                             for k, v in (values.items() if isinstance(values, dict) else [("value", values)]))
            html.append(f"<tr><td><b>{esc(split)}</b></td><td>{esc(text)}</td></tr>")
        html.append("</table>")
    return "".join(html)


class ModelLibrary(QDialog):
    """Lists the models; import, export, remove user models, set defaults, check fit."""

    models_changed = Signal()

    COLUMNS = ("Name", "Pipeline", "Backbone", "Classes", "Created", "Where")

    def __init__(self, settings: Settings, parent: QWidget | None = None,
                 image_info: dict[str, Any] | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle("Model library")
        self.settings = settings
        self.image_info = image_info
        self.cards: list[Any] = []
        self.tree = QTreeWidget()
        self.tree.setHeaderLabels(self.COLUMNS)
        self.tree.setRootIsDecorated(False)
        self.tree.header().setSectionResizeMode(0, QHeaderView.ResizeMode.ResizeToContents)
        self.tree.currentItemChanged.connect(self._show_card)
        self.details = QTextBrowser()
        self.fit_label = QLabel("")
        self.fit_label.setWordWrap(True)
        splitter = QSplitter(Qt.Orientation.Vertical)
        splitter.addWidget(self.tree)
        splitter.addWidget(self.details)
        self.import_button = QPushButton("Import...")
        self.import_button.clicked.connect(self.import_dialog)
        self.export_button = QPushButton("Export...")
        self.export_button.clicked.connect(self.export_dialog)
        self.remove_button = QPushButton("Remove")
        self.remove_button.clicked.connect(self.remove_selected)
        self.default_button = QPushButton("Use by default")
        self.default_button.clicked.connect(self.set_default)
        buttons = QHBoxLayout()
        for button in (self.import_button, self.export_button, self.remove_button, self.default_button):
            buttons.addWidget(button)
        buttons.addStretch(1)
        close = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        close.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addWidget(QLabel(f"Your models: {user_models_dir()}\nShipped models: {bundled_models_dir()}"))
        layout.addWidget(splitter, 1)
        layout.addWidget(self.fit_label)
        layout.addLayout(buttons)
        layout.addWidget(close)
        self.resize(820, 600)
        self.refresh()

    def refresh(self) -> None:
        """Re-read the model folders."""
        from app.core.modelcard import find_models

        self.cards = find_models()
        self.tree.clear()
        user_root = user_models_dir().resolve()
        defaults = set(self.settings.default_models.values())
        for index, card in enumerate(self.cards):
            folder = Path(card.folder).resolve()
            where = "yours" if user_root in folder.parents else "shipped"
            name = card.name + ("  (default)" if str(card.folder) in defaults else "")
            item = QTreeWidgetItem([name, card.pipeline, card.backbone or "", str(len(card.classes) or ""),
                                    card.created[:10], where])
            item.setData(0, Qt.ItemDataRole.UserRole, index)
            problem = fit_problem(card, self.image_info)
            if problem:
                item.setForeground(0, Qt.GlobalColor.gray)
                item.setToolTip(0, problem)
            self.tree.addTopLevelItem(item)
        if self.cards:
            self.tree.setCurrentItem(self.tree.topLevelItem(0))
        else:
            self.details.setHtml("<p>No models yet. Import a model folder, or train one (Models > Train).</p>")

    def selected_card(self) -> Any:
        item = self.tree.currentItem()
        return self.cards[item.data(0, Qt.ItemDataRole.UserRole)] if item is not None else None

    def _show_card(self, *_: Any) -> None:
        card = self.selected_card()
        if card is None:
            return
        self.details.setHtml(card_html(card))
        problem = fit_problem(card, self.image_info)
        if self.image_info is None:
            self.fit_label.setText("")
        elif problem:
            self.fit_label.setText(f"Does not fit image {self.image_info.get('name')}: {problem}")
        else:
            self.fit_label.setText(f"Fits image {self.image_info.get('name')}.")
        user_root = user_models_dir().resolve()
        self.remove_button.setEnabled(user_root in Path(card.folder).resolve().parents)

    def _error(self, title: str, message: str) -> None:
        parent = self.parent()
        if parent is not None and hasattr(parent, "show_error"):
            parent.show_error(title, message)
        else:
            QMessageBox.critical(self, title, message)

    def import_dialog(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, "Import a model folder (card.json + weights.pt)",
                                                  self.settings.last_folder("models"))
        if folder:
            self.settings.remember_folder("models", folder)
            self.import_folder(Path(folder))

    def import_folder(self, folder: Path) -> Path | None:
        """Import a model folder into the user's library (errors shown in the window)."""
        try:
            target = import_model(folder)
        except (UserError, OSError) as error:
            self._error("Cannot import the model", str(error))
            return None
        self.refresh()
        self.models_changed.emit()
        return target

    def export_dialog(self) -> None:
        card = self.selected_card()
        if card is None:
            return
        folder = QFileDialog.getExistingDirectory(self, "Export the model into folder",
                                                  self.settings.last_folder("models"))
        if folder:
            try:
                target = export_model(card.folder, folder)
            except (UserError, OSError) as error:
                self._error("Cannot export the model", str(error))
                return
            self.fit_label.setText(f"Exported to {target}")

    def remove_selected(self) -> None:
        card = self.selected_card()
        if card is None or user_models_dir().resolve() not in Path(card.folder).resolve().parents:
            return
        answer = QMessageBox.question(self, "Remove model", f"Delete the model folder {card.folder}?")
        if answer == QMessageBox.StandardButton.Yes:
            shutil.rmtree(card.folder, ignore_errors=True)
            self.refresh()
            self.models_changed.emit()

    def set_default(self) -> None:
        """Make the selected model the default for its pipeline (the run panel preselects it)."""
        card = self.selected_card()
        if card is not None:
            self.settings.default_models[card.pipeline] = str(card.folder)
            self.refresh()
            self.models_changed.emit()
