"""File-menu tools for the current image: export the view as a figure, set pixel size and channel names, relink.

:func:`export_view` renders what the viewer shows (image, overlays, scale bar) into a PNG or TIFF
at the screen's resolution or a multiple of it; overlays and the scale bar are drawn again at that
size, so they stay sharp.  :class:`ImageMetadataDialog` edits the pixel size and channel names a
plain TIFF lacks (stored in project.json by :mod:`app.core.project_edit`).  :func:`locate_missing`
asks for one moved file and relinks every other missing image found by the same relative layout.
:class:`ImageTools` puts these in the window's File menu; the science stays in the core.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from PySide6.QtCore import QObject, QRectF, Qt
from PySide6.QtGui import QAction, QImage, QKeySequence, QPainter
from PySide6.QtWidgets import (
    QDialog, QDialogButtonBox, QDoubleSpinBox, QFileDialog, QFormLayout, QInputDialog, QLabel, QLineEdit,
    QMessageBox, QWidget,
)

from app.core.errors import UserError
from app.gui.theme import error_style

SCALES = (1, 2, 4)  # export resolution: screen pixels times this


def render_view(viewer: Any, scale: float = 1.0) -> QImage:
    """The viewer's picture with overlays and scale bar, ``scale`` times the on-screen size."""
    view = viewer.graphics
    source = view.viewport().rect()
    width, height = max(1, round(source.width() * scale)), max(1, round(source.height() * scale))
    image = QImage(width, height, QImage.Format.Format_RGB32)
    image.fill(Qt.GlobalColor.black)
    painter = QPainter(image)
    painter.setRenderHint(QPainter.RenderHint.Antialiasing)
    painter.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform)
    view.render(painter, QRectF(0, 0, width, height), source)
    painter.end()
    return image


def export_view(viewer: Any, path: str | Path, scale: float = 1.0) -> Path:
    """Write the current view (with overlays and scale bar) to ``path`` (.png, or .tif/.tiff); returns it."""
    path = Path(path)
    image = render_view(viewer, scale)
    suffix = path.suffix.lower()
    if suffix in (".tif", ".tiff"):
        import tifffile

        rgb = image.convertToFormat(QImage.Format.Format_RGB888)
        data = np.frombuffer(rgb.constBits(), np.uint8).reshape(rgb.height(), rgb.bytesPerLine())
        data = data[:, : rgb.width() * 3].reshape(rgb.height(), rgb.width(), 3).copy()
        tifffile.imwrite(path, data, photometric="rgb", compression="zlib")
    elif suffix == ".png":
        if not image.save(str(path), "PNG"):
            raise UserError(f"cannot write {path}: is the folder writable?")
    else:
        raise UserError(f"{path.name}: export as .png or .tif")
    return path


class ImageMetadataDialog(QDialog):
    """Pixel size (µm) and channel names of one project image, for files that lack them."""

    def __init__(self, project: Any, name: str, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.project, self.name = project, name
        entry = project.image(name)
        self.setWindowTitle(f"Pixel size and channels of {name}")
        self.pixel_size = QDoubleSpinBox()
        self.pixel_size.setDecimals(4)
        self.pixel_size.setRange(0.0, 1000.0)
        self.pixel_size.setSingleStep(0.05)
        self.pixel_size.setSuffix(" µm")
        self.pixel_size.setSpecialValueText("unknown")
        self.pixel_size.setValue(float(entry.pixel_size_um or 0.0))
        self.channels = QLineEdit(", ".join(entry.channels))
        self.channels.setPlaceholderText("e.g. DAPI, SOX9 (in the file's order)")
        self.error = QLabel("")
        self.error.setStyleSheet(error_style())
        self.error.setWordWrap(True)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok | QDialogButtonBox.StandardButton.Cancel)
        buttons.accepted.connect(self.accept)
        buttons.rejected.connect(self.reject)
        form = QFormLayout(self)
        form.addRow(QLabel("Stored in the project (the raw file is not changed); used by analyses, reports "
                           "and the scale bar."))
        form.addRow("Pixel size", self.pixel_size)
        form.addRow("Channel names", self.channels)
        form.addRow(self.error)
        form.addRow(buttons)

    def accept(self) -> None:
        """Save the values, or say in the dialog what is wrong with them."""
        from app.core.project_edit import set_image_metadata

        size = self.pixel_size.value() or None
        channels = self.channels.text().strip() or None
        try:
            set_image_metadata(self.project, self.name, pixel_size_um=size, channels=channels)
        except UserError as error:
            self.error.setText(str(error))
            return
        super().accept()


def locate_missing(parent: QWidget, project: Any, name: str,
                   choose: Callable[[str, str], str] | None = None) -> bool:
    """Ask where image ``name``'s file went; relink it and every other missing image found by the same layout.

    ``choose(title, start_folder)`` returns the chosen file ('' to cancel); a file dialog by default.
    Returns whether ``name`` can now be opened.
    """
    from app.core.project_edit import missing_images, relink

    old = project.image_path(name)
    if choose is None:
        def choose(title: str, start: str) -> str:
            return QFileDialog.getOpenFileName(parent, title, start)[0]
    start = next((str(p) for p in old.parents if p.is_dir()), str(Path.home()))
    chosen = choose(f"Locate {old.name} (image {name})", start)
    if not chosen:
        return False
    try:
        result = relink(project, chosen, image=name)
    except UserError as error:
        QMessageBox.warning(parent, "Cannot relink", str(error))
        return False
    still = missing_images(project)
    message = f"Relinked {len(result.relinked)} image(s)"
    message += f"; still missing: {', '.join(still)}" if still else "; no image is missing now."
    status = getattr(parent, "statusBar", None)
    if callable(status):
        status().showMessage(message, 8000)
    return name in result.relinked


class ImageTools(QObject):
    """Adds Export view, Pixel size and channels, and Locate missing files to ``menu`` of the main window."""

    def __init__(self, window: Any, menu: Any) -> None:
        super().__init__(window)
        self.window = window
        for key, text, shortcut, slot, tip in (
            ("export_view", "Export &view as image...", "Ctrl+Shift+E", self.export_dialog,
             "Save the current view with its overlays and scale bar as PNG or TIFF"),
            ("image_metadata", "Pixel size and c&hannels...", "Ctrl+Shift+M", self.metadata_dialog,
             "Set the pixel size and channel names of the current image (for files that lack them)"),
            ("locate_images", "&Locate missing image files...", "Ctrl+Shift+L", self.locate_dialog,
             "Find images whose raw files were moved"),
        ):
            action = QAction(text, window)
            action.setShortcut(QKeySequence(shortcut))
            action.setStatusTip(tip)
            action.setToolTip(tip)
            action.triggered.connect(slot)
            window.addAction(action)
            window.actions[key] = action
            menu.addAction(action)
        window.viewer.image_opened.connect(self._use_project_pixel_size)

    def offer_locate(self, box: QMessageBox, name: str) -> None:
        """Give the "image file missing" message a Locate file... button."""
        button = box.addButton("Locate file...", QMessageBox.ButtonRole.ActionRole)
        button.clicked.connect(lambda: self.locate(name))

    def locate(self, name: str, choose: Callable[[str, str], str] | None = None) -> bool:
        """Relink ``name`` (and the other missing images) from a located file, then show it."""
        project = self.window.project
        if project is None or not locate_missing(self.window, project, name, choose):
            return False
        self.window.browser.refresh()
        self.window.open_image(name)
        return True

    def _use_project_pixel_size(self, name: str) -> None:
        """The scale bar and channel names follow the project (set by the user or read from the file)."""
        project, viewer = self.window.project, self.window.viewer
        if project is None:
            return
        try:
            entry = project.image(name)
        except UserError:
            return
        if entry.pixel_size_um:
            viewer.set_pixel_size(float(entry.pixel_size_um))
        names = list(entry.channels)
        if names and len(names) == len(viewer.channels) and names != [c.name for c in viewer.channels]:
            for display, channel in zip(viewer.channels, names):
                display.name = channel
            viewer.channels_changed.emit()

    def export_dialog(self) -> Path | None:
        """Ask for a file and a resolution, then export the view."""
        viewer = self.window.viewer
        if viewer.image_size() is None:
            self.window.statusBar().showMessage("Open an image first", 4000)
            return None
        start = Path(self.window.settings.last_folder("reports")) / f"{viewer.name or 'view'}.png"
        path, _ = QFileDialog.getSaveFileName(self.window, "Export view", str(start), "PNG (*.png);;TIFF (*.tif)")
        if not path:
            return None
        size = viewer.graphics.viewport().size()
        labels = [f"{'Screen' if s == 1 else f'{s} x screen'} ({size.width() * s} x {size.height() * s} px)"
                  for s in SCALES]
        label, ok = QInputDialog.getItem(self.window, "Export view", "Resolution", labels, 0, False)
        if not ok:
            return None
        try:
            written = export_view(viewer, path, SCALES[labels.index(label)])
        except UserError as error:
            self.window.show_error("Cannot export the view", str(error))
            return None
        self.window.statusBar().showMessage(f"Saved {written}", 5000)
        return written

    def metadata_dialog(self) -> None:
        """Edit the current image's pixel size and channel names; reopen it to use them."""
        name = self.window.current_image
        if self.window.project is None or not name:
            self.window.statusBar().showMessage("Open an image first", 4000)
            return
        dialog = ImageMetadataDialog(self.window.project, name, self.window)
        dialog.accepted.connect(lambda: self.window.open_image(name))
        dialog.open()
        self.dialog = dialog

    def locate_dialog(self) -> None:
        """Relink missing images from one located file."""
        from app.core.project_edit import missing_images

        project = self.window.project
        missing = missing_images(project) if project is not None else []
        if not missing:
            self.window.statusBar().showMessage("No image file is missing", 4000)
            return
        self.locate(missing[0])
