"""The whole-section tile viewer: a coarse picture of the whole image, full resolution only where you look.

An image opens as a :class:`app.core.pyramid.Pyramid`.  The viewer shows an *overview* (the finest
level that fits 2048 px) at once and, when zoomed in past it, a *detail* picture of the visible
region (plus a margin) read from the coarsest level that is still as fine as the screen.  All reads
and the colour compositing run on one background thread (newest request wins); the GUI thread only
places finished RGB pictures, so panning never waits for the disk.  Channels are composited
additively, each with its colour, contrast levels and visibility (:class:`app.gui.channel_panel.ChannelPanel` edits them
with a histogram).  A scale bar appears when the pixel size is known; overlays come from
:mod:`app.gui.overlays`.  Coordinates in the view are level-0 image pixels (x right, y down).
"""

from __future__ import annotations

import math
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pyqtgraph as pg
from PySide6.QtCore import QPointF, QRectF, Qt, QTimer, Signal
from PySide6.QtWidgets import (
    QHBoxLayout, QLabel, QPushButton, QSlider, QVBoxLayout, QWidget,
)

from app.core.pyramid import OVERVIEW_SIDE, Pyramid
from app.gui.channel_display import (
    ChannelDisplay, Picture, composite_task, open_task, read_task, zoom_text,
)
from app.gui.overlays import OverlayManager
from app.gui.theme import PLOT_BACKGROUND, SCALE_BAR_COLOUR, TITLE_STYLE, Z_SLIDER_WIDTH
from app.gui.workers import BackgroundRunner

DEBOUNCE_MS = 60  # wait for the view to settle this long before reading its detail
DETAIL_MARGIN = 0.15  # share of the view added on each side of a detail read


class ScaleBar(pg.ScaleBar):
    """A scale bar that picks a round length (1, 2 or 5 x 10^k um) of about 120 screen pixels."""

    def __init__(self, pixel_size_um: float) -> None:
        super().__init__(size=10, width=5, brush=SCALE_BAR_COLOUR, pen=None, suffix="m", offset=(-20, -20))
        self.pixel_size_um = pixel_size_um

    def updateBar(self) -> None:  # noqa: N802 - pyqtgraph's name
        view = self.parentItem()
        if view is None:
            return
        try:
            px_per_screen = view.viewPixelSize()[0]
        except Exception:  # noqa: BLE001 - view not laid out yet
            return
        target_um = 120 * px_per_screen * self.pixel_size_um
        if not math.isfinite(target_um) or target_um <= 0:
            return
        exponent = math.floor(math.log10(target_um))
        nice = min((1, 2, 5, 10), key=lambda m: abs(m * 10 ** exponent - target_um)) * 10 ** exponent
        self.size = nice / self.pixel_size_um
        self.text.setText(f"{nice / 1000:g} mm" if nice >= 1000 else f"{nice:g} µm")
        super().updateBar()


class TileViewer(QWidget):
    """Pans and zooms one image at any size; see the module docstring."""

    image_opened = Signal(str)  # image name, after the overview is on screen
    view_loaded = Signal()  # the detail for the current view is on screen (or none is needed)
    needs_pyramid = Signal(str)  # image name: its overview levels must be built first
    load_failed = Signal(str, str)  # message, details
    mouse_moved = Signal(float, float)  # x, y in image pixels
    clicked = Signal(float, float, object)  # x, y, keyboard modifiers
    double_clicked = Signal(float, float)  # x, y (closes an outline being drawn)
    channels_changed = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.graphics = pg.GraphicsLayoutWidget()
        self.graphics.setBackground(PLOT_BACKGROUND)
        self.view: pg.ViewBox = self.graphics.addViewBox(lockAspect=True, invertY=True, enableMenu=False)
        self.view.setDefaultPadding(0.02)
        self.overview_item = pg.ImageItem()
        self.detail_item = pg.ImageItem()
        self.overview_item.setZValue(0)
        self.detail_item.setZValue(1)
        self.view.addItem(self.overview_item)
        self.view.addItem(self.detail_item, ignoreBounds=True)
        self.overlays = OverlayManager(self.view, self)
        self.runner = BackgroundRunner(self, "stagescope-viewer")
        self.runner.done.connect(self._on_done, Qt.ConnectionType.QueuedConnection)
        self.runner.error.connect(self._on_error, Qt.ConnectionType.QueuedConnection)

        self.title = QLabel("No image")
        self.title.setStyleSheet(TITLE_STYLE)
        self.status = QLabel("")
        self.status.setContentsMargins(12, 0, 0, 0)
        self.z_label = QLabel("z")
        self.z_slider = QSlider(Qt.Orientation.Horizontal)
        self.z_slider.setMaximumWidth(Z_SLIDER_WIDTH)
        self.z_slider.setToolTip("Focal plane (PgUp/PgDown in the View menu)")
        self.z_slider.valueChanged.connect(self._z_changed)
        self.zoom_label = QLabel("")
        fit = QPushButton("Fit")
        fit.setToolTip("Show the whole image (F)")
        fit.clicked.connect(self.fit)
        bar = QHBoxLayout()
        bar.setContentsMargins(4, 2, 4, 2)
        bar.addWidget(self.title)
        bar.addWidget(self.status)
        bar.addStretch(1)
        bar.addWidget(self.z_label)
        bar.addWidget(self.z_slider)
        bar.addWidget(self.zoom_label)
        bar.addWidget(fit)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(0)
        layout.addLayout(bar)
        layout.addWidget(self.graphics, 1)
        self._set_z_visible(False)

        self.name: str | None = None
        self.path: Path | None = None
        self.cache_dir: Path | None = None
        self.pyramid: Pyramid | None = None
        self.channels: list[ChannelDisplay] = []
        self.z = 0
        self._token = 0
        self._overview: Picture | None = None
        self._detail: Picture | None = None
        self._detail_pending = False
        self._opening = False
        self._opened_at = 0.0
        self.first_picture_s: float | None = None
        self.overview_side = OVERVIEW_SIDE  # longest side of the whole-image picture
        self._scale_bar: ScaleBar | None = None
        self._debounce = QTimer(self)
        self._debounce.setSingleShot(True)
        self._debounce.setInterval(DEBOUNCE_MS)
        self._debounce.timeout.connect(self._request_detail)
        self.view.sigRangeChanged.connect(self._range_changed)
        self.graphics.scene().sigMouseMoved.connect(self._mouse_moved)
        self.graphics.scene().sigMouseClicked.connect(self._mouse_clicked)

    # ------------------------------------------------------------------ opening and closing

    def open_image(self, name: str, path: str | Path, cache_dir: str | Path | None = None, z: int = 0) -> None:
        """Start opening an image (in the background); ``image_opened`` follows when it is drawn."""
        self.close_image()
        self._token += 1
        self.name, self.path = name, Path(path)
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.z = z
        self._opening = True
        self._opened_at = time.perf_counter()
        self.first_picture_s = None
        self.title.setText(name)
        self.status.setText("opening...")
        self.runner.submit(("open", self._token), open_task, self.path, self.cache_dir, z,
                           self.overview_side, self._token)

    def set_pixel_size(self, pixel_size_um: float | None) -> None:
        """Use this pixel size (µm, e.g. set in the project for a plain TIFF) for the scale bar; None hides it."""
        if self._scale_bar is not None:
            self._scale_bar.setVisible(bool(pixel_size_um))
        if not pixel_size_um:
            return
        if self._scale_bar is None:
            self._scale_bar = ScaleBar(float(pixel_size_um))
            self._scale_bar.setParentItem(self.view)
            self._scale_bar.setZValue(100)
        self._scale_bar.pixel_size_um = float(pixel_size_um)
        self._scale_bar.updateBar()

    def reopen(self) -> None:
        """Open the current image again (e.g. after its overview levels were built)."""
        if self.name is not None and self.path is not None:
            self.open_image(self.name, self.path, self.cache_dir, self.z)

    def close_image(self) -> None:
        """Forget the current image (its file is closed on the reader thread)."""
        if self.pyramid is not None:
            self.runner.call_soon(self.pyramid.close)
        self.pyramid = None
        self._overview = self._detail = None
        self._detail_pending = False
        self._opening = False
        self.overview_item.clear()
        self.detail_item.clear()
        self.detail_item.setVisible(False)
        self.overlays.clear()
        if self._scale_bar is not None:
            try:
                self.view.sigRangeChanged.disconnect(self._scale_bar.updateBar)
            except (RuntimeError, TypeError):
                pass
            self.graphics.scene().removeItem(self._scale_bar)
            self._scale_bar = None
        self.name = None
        self.zoom_label.setText("")
        self.title.setText("No image")
        self.status.setText("")
        self._set_z_visible(False)

    def shutdown(self) -> None:
        """Stop the reader thread (window closing)."""
        self.close_image()
        self.runner.shutdown()

    # ------------------------------------------------------------------ state

    def is_idle(self) -> bool:
        """Whether everything asked for is on screen (no open, read or composite pending)."""
        return (not self._opening and not self._detail_pending and not self.runner.busy
                and not self._debounce.isActive())

    def image_size(self) -> tuple[int, int] | None:
        """(height, width) of the open image at level 0."""
        return (self.pyramid.height, self.pyramid.width) if self.pyramid is not None else None

    def detail_level(self) -> int | None:
        """The pyramid level of the detail on screen (None when the overview suffices)."""
        return self._detail.level if self._detail is not None and self.detail_item.isVisible() else None

    def pixel_values(self, x: float, y: float) -> list[float] | None:
        """Raw channel values at (x, y) from the finest picture on screen there."""
        for picture in (self._detail if self.detail_item.isVisible() else None, self._overview):
            if picture is None or not picture.rect.contains(QPointF(x, y)):
                continue
            h, w = picture.raw.shape[1:]
            col = int((x - picture.rect.x()) / picture.rect.width() * w)
            row = int((y - picture.rect.y()) / picture.rect.height() * h)
            if 0 <= row < h and 0 <= col < w:
                return [float(v) for v in picture.raw[:, row, col]]
        return None

    # ------------------------------------------------------------------ view control

    def fit(self) -> None:
        """Show the whole image."""
        if self.pyramid is not None:
            self.view.setRange(QRectF(0, 0, self.pyramid.width, self.pyramid.height), padding=0.02)

    def zoom(self, factor: float) -> None:
        """Zoom in (factor > 1) or out around the view centre."""
        self.view.scaleBy((1 / factor, 1 / factor))

    def center_on(self, x: float, y: float, width: float | None = None) -> None:
        """Centre the view on (x, y), optionally showing ``width`` image pixels across."""
        rect = self.view.viewRect()
        w = width or rect.width()
        h = w * rect.height() / max(rect.width(), 1e-9)
        self.view.setRange(QRectF(x - w / 2, y - h / 2, w, h), padding=0)

    def set_z(self, z: int) -> None:
        """Show focal plane ``z`` of a z-stack."""
        if self.pyramid is not None and 0 <= z < self.pyramid.n_planes:
            self.z_slider.setValue(z)

    def _z_changed(self, z: int) -> None:
        if self.pyramid is None or z == self.z:
            return
        self.z = z
        self.z_label.setText(f"z {z + 1}/{self.pyramid.n_planes}")
        level = self._overview.level if self._overview is not None else 0
        self._opening = True
        self.runner.submit(("overview", self._token), read_task, self.pyramid, level, None, z, self.channels)
        self._detail = None
        self._schedule_detail()

    def _set_z_visible(self, visible: bool) -> None:
        self.z_label.setVisible(visible)
        self.z_slider.setVisible(visible)

    # ------------------------------------------------------------------ channels

    def set_channel(self, index: int, **changes: Any) -> None:
        """Change how channel ``index`` is drawn (colour, levels, visible) and recomposite."""
        self.channels[index] = replace(self.channels[index], **changes)
        self._recomposite()
        self.channels_changed.emit()

    def _recomposite(self) -> None:
        displays = [replace(c) for c in self.channels]
        if self._overview is not None:
            self.runner.submit(("composite", "overview", self._token), composite_task, self._overview, displays)
        if self._detail is not None:
            self.runner.submit(("composite", "detail", self._token), composite_task, self._detail, displays)

    # ------------------------------------------------------------------ background results

    def _on_done(self, key: Any, result: Any) -> None:
        kind = key[0]
        token = key[-1]
        if token != self._token:  # a result for an image no longer shown
            if kind == "open" and result.get("pyramid") is not None:
                self.runner.call_soon(result["pyramid"].close)
            return
        if kind == "open":
            self._opened(result)
        elif kind == "overview":
            self._show_overview(result)
        elif kind == "detail":
            self._show_detail(result)
        elif kind == "composite":
            picture = result
            if key[1] == "overview" and self._overview is not None:
                self._overview = picture
                self._place(self.overview_item, picture)
            elif key[1] == "detail" and self._detail is not None and picture.rect == self._detail.rect:
                self._detail = picture
                self._place(self.detail_item, picture)

    def _on_error(self, key: Any, message: str, details: str) -> None:
        if key[-1] != self._token:
            return
        self._opening = False
        self._detail_pending = False
        self.status.setText("cannot read the image")
        self.load_failed.emit(f"{self.name}: {message}", details)

    def _opened(self, result: dict[str, Any]) -> None:
        pyramid: Pyramid = result["pyramid"]
        self.pyramid = pyramid
        if result["overview"] is None:
            self._opening = False
            self.status.setText("building the overview levels...")
            self.needs_pyramid.emit(self.name)
            return
        self.channels = result["displays"]
        self._set_z_visible(pyramid.n_planes > 1)
        if pyramid.n_planes > 1:
            self.z_slider.blockSignals(True)
            self.z_slider.setRange(0, pyramid.n_planes - 1)
            self.z_slider.setValue(self.z)
            self.z_slider.blockSignals(False)
            self.z_label.setText(f"z {self.z + 1}/{pyramid.n_planes}")
        if pyramid.pixel_size_um:
            self._scale_bar = ScaleBar(float(pyramid.pixel_size_um))
            self._scale_bar.setParentItem(self.view)
            self._scale_bar.setZValue(100)
        picture = result["overview"]
        self._overview = picture
        self._place(self.overview_item, picture)
        self.fit()
        self._opening = False
        self._update_zoom_label()
        size = f"{pyramid.width} x {pyramid.height} px, {pyramid.n_channels} channel(s)"
        self.status.setText(size)
        self.channels_changed.emit()
        self.graphics.viewport().repaint()
        self.first_picture_s = time.perf_counter() - self._opened_at
        self.image_opened.emit(self.name)
        self._schedule_detail()

    def _show_overview(self, picture: Picture) -> None:
        self._overview = picture
        self._place(self.overview_item, picture)
        self._opening = False

    def _show_detail(self, picture: Picture | None) -> None:
        self._detail_pending = False
        if picture is None:
            return
        self._detail = picture
        self._place(self.detail_item, picture)
        self.detail_item.setVisible(True)
        self.view_loaded.emit()

    @staticmethod
    def _place(item: pg.ImageItem, picture: Picture) -> None:
        item.setImage(picture.rgb, autoLevels=False, levels=None)  # uint8 RGB shown as is (no LUT pass)
        item.setRect(picture.rect)

    # ------------------------------------------------------------------ detail reads

    def _range_changed(self, *_: Any) -> None:
        try:
            px = max(self.view.viewPixelSize())
        except Exception:  # noqa: BLE001 - not laid out yet
            px = 0.0
        self.overlays.update_detail(self.view.viewRect().width(), px)
        self._schedule_detail()
        self._update_zoom_label()

    def _schedule_detail(self) -> None:
        if self.pyramid is not None:
            self._debounce.start()

    def _update_zoom_label(self) -> None:
        """Zoom of the shown image; empty while none is shown or it is still opening (the view is not fitted)."""
        if self.pyramid is None or self._opening:
            self.zoom_label.setText("")
            return
        try:
            px = self.view.viewPixelSize()[0]
        except Exception:  # noqa: BLE001 - not laid out yet
            return
        self.zoom_label.setText(zoom_text(px))

    def _request_detail(self) -> None:
        pyramid, overview = self.pyramid, self._overview
        if pyramid is None or overview is None:
            return
        rect = self.view.viewRect()
        try:
            px_per_screen = min(self.view.viewPixelSize())
        except Exception:  # noqa: BLE001
            return
        level = pyramid.level_for(px_per_screen)
        if pyramid.levels[level].factor >= pyramid.levels[overview.level].factor:
            self.detail_item.setVisible(False)
            self._detail_pending = False
            self.view_loaded.emit()
            return
        mx, my = rect.width() * DETAIL_MARGIN, rect.height() * DETAIL_MARGIN
        x0, y0 = max(0.0, rect.left() - mx), max(0.0, rect.top() - my)
        x1, y1 = min(float(pyramid.width), rect.right() + mx), min(float(pyramid.height), rect.bottom() + my)
        if x1 <= x0 or y1 <= y0:
            self.detail_item.setVisible(False)
            self.view_loaded.emit()
            return
        current = self._detail
        if current is not None and current.level == level and self.detail_item.isVisible() \
                and current.rect.contains(QRectF(max(0, rect.left()), max(0, rect.top()),
                                                 min(rect.right(), pyramid.width) - max(0, rect.left()),
                                                 min(rect.bottom(), pyramid.height) - max(0, rect.top()))):
            self.view_loaded.emit()
            return
        f = pyramid.levels[level].factor
        lh, lw = pyramid.levels[level].height, pyramid.levels[level].width
        region = (int(y0 / f), int(x0 / f), min(lh, math.ceil(y1 / f)), min(lw, math.ceil(x1 / f)))
        self._detail_pending = True
        self.runner.submit(("detail", self._token), read_task, pyramid, level, region, self.z,
                           [replace(c) for c in self.channels])

    # ------------------------------------------------------------------ mouse

    def _mouse_moved(self, scene_pos: QPointF) -> None:
        if self.pyramid is None or not self.view.sceneBoundingRect().contains(scene_pos):
            return
        point = self.view.mapSceneToView(scene_pos)
        self.mouse_moved.emit(point.x(), point.y())

    def _mouse_clicked(self, event: Any) -> None:
        if self.pyramid is None or event.button() != Qt.MouseButton.LeftButton:
            return
        point = self.view.mapSceneToView(event.scenePos())
        if event.double():
            self.double_clicked.emit(point.x(), point.y())
        else:
            self.clicked.emit(point.x(), point.y(), event.modifiers())

    def screen_tolerance(self, pixels: float = 3.0) -> float:
        """Image pixels that ``pixels`` screen pixels span at the current zoom (for clicking thin outlines)."""
        try:
            return pixels * max(self.view.viewPixelSize())
        except Exception:  # noqa: BLE001
            return pixels
