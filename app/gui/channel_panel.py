"""The Display dock: the viewer's channel list (toggle, colour) and a histogram with draggable levels."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import Qt
from PySide6.QtGui import QColor
from PySide6.QtWidgets import (
    QColorDialog, QHBoxLayout, QLabel, QListWidget, QListWidgetItem, QPushButton, QVBoxLayout, QWidget,
)

from app.gui.layers_panel import colour_icon

if TYPE_CHECKING:
    from app.gui.tile_viewer import TileViewer


class ChannelPanel(QWidget):
    """Channel list (toggle, colour) and a histogram with draggable contrast levels for the selected one."""

    def __init__(self, viewer: TileViewer, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = viewer
        self.list = QListWidget()
        self.list.setMaximumHeight(120)
        self.list.itemChanged.connect(self._item_changed)
        self.list.currentRowChanged.connect(self._show_histogram)
        self.plot = pg.PlotWidget()
        self.plot.setMaximumHeight(140)
        self.plot.setMouseEnabled(x=False, y=False)
        self.plot.hideButtons()
        self.plot.getPlotItem().hideAxis("left")
        self.curve = pg.PlotCurveItem(x=np.array([0.0, 1.0]), y=np.array([0.0]), stepMode="center", fillLevel=0,
                                      brush=(200, 200, 200, 80), pen="w")
        self.plot.addItem(self.curve)
        self.region = pg.LinearRegionItem()
        self.region.sigRegionChangeFinished.connect(self._levels_dragged)
        self.plot.addItem(self.region)
        self.colour_button = QPushButton("Colour...")
        self.colour_button.clicked.connect(self._pick_colour)
        self.auto_button = QPushButton("Auto contrast")
        self.auto_button.clicked.connect(self.auto_contrast)
        self.levels_label = QLabel("")
        buttons = QHBoxLayout()
        buttons.addWidget(self.colour_button)
        buttons.addWidget(self.auto_button)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(2, 2, 2, 2)
        layout.addWidget(self.list)
        layout.addWidget(self.plot)
        layout.addWidget(self.levels_label)
        layout.addLayout(buttons)
        self._updating = False
        viewer.channels_changed.connect(self.refresh)

    def refresh(self) -> None:
        """Show the viewer's channels (keeps the selected row)."""
        row = max(0, self.list.currentRow())
        self._updating = True
        self.list.clear()
        for display in self.viewer.channels:
            item = QListWidgetItem(colour_icon(QColor(display.colour)), display.name)
            item.setFlags(item.flags() | Qt.ItemFlag.ItemIsUserCheckable)
            item.setCheckState(Qt.CheckState.Checked if display.visible else Qt.CheckState.Unchecked)
            self.list.addItem(item)
        self._updating = False
        if self.viewer.channels:
            self.list.setCurrentRow(min(row, len(self.viewer.channels) - 1))
            self._show_histogram(self.list.currentRow())

    def _item_changed(self, item: QListWidgetItem) -> None:
        if self._updating:
            return
        row = self.list.row(item)
        self.viewer.set_channel(row, visible=item.checkState() == Qt.CheckState.Checked)

    def _show_histogram(self, row: int) -> None:
        if row < 0 or row >= len(self.viewer.channels):
            return
        display = self.viewer.channels[row]
        if display.histogram is not None:
            counts, edges = display.histogram
            self.curve.setData(edges, np.log1p(counts.astype(float)))
        self._updating = True
        self.region.setRegion(display.levels)
        self._updating = False
        self.levels_label.setText(f"{display.name}: {display.levels[0]:.4g} - {display.levels[1]:.4g}")

    def _levels_dragged(self) -> None:
        row = self.list.currentRow()
        if self._updating or row < 0 or row >= len(self.viewer.channels):
            return
        lo, hi = self.region.getRegion()
        if hi <= lo:
            hi = lo + 1e-6
        self.viewer.set_channel(row, levels=(float(lo), float(hi)))

    def set_levels(self, row: int, lo: float, hi: float) -> None:
        """Set a channel's contrast levels (also used by tests)."""
        self.viewer.set_channel(row, levels=(float(lo), float(hi)))

    def auto_contrast(self) -> None:
        """Back to the automatic levels of the selected channel."""
        row = self.list.currentRow()
        if 0 <= row < len(self.viewer.channels):
            self.viewer.set_channel(row, levels=self.viewer.channels[row].auto_levels)

    def _pick_colour(self) -> None:
        row = self.list.currentRow()
        if not 0 <= row < len(self.viewer.channels):
            return
        colour = QColorDialog.getColor(QColor(self.viewer.channels[row].colour), self, "Channel colour")
        if colour.isValid():
            self.viewer.set_channel(row, colour=colour.name())
