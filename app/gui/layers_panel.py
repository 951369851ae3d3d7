"""The Layers dock: legend and controls of the overlay layers (toggles per layer and class, opacity per layer)."""

from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtGui import QColor, QIcon, QPen, QPixmap
from PySide6.QtWidgets import QHeaderView, QSlider, QTreeWidget, QTreeWidgetItem, QVBoxLayout, QWidget

from app.gui.overlay_data import EXCLUDED
from app.gui.overlays import OverlayManager, layer_names
from app.gui.theme import ICON_SIZE, LEGEND_MIN_WIDTH, OPACITY_WIDTH


def colour_icon(colour: QColor, dashed: bool = False, size: int = ICON_SIZE) -> QIcon:
    """A small square swatch of a class colour for the legend."""
    pixmap = QPixmap(size, size)
    pixmap.fill(Qt.GlobalColor.transparent if dashed else colour)
    if dashed:
        from PySide6.QtGui import QPainter

        painter = QPainter(pixmap)
        pen = QPen(colour, 2, Qt.PenStyle.DashLine)
        painter.setPen(pen)
        painter.drawRect(1, 1, size - 3, size - 3)
        painter.end()
    return QIcon(pixmap)


class LayersPanel(QWidget):
    """Legend and controls of the overlay layers: toggles per layer and class, opacity per layer."""

    def __init__(self, overlays: OverlayManager, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.overlays = overlays
        self.tree = QTreeWidget()
        self.tree.setHeaderLabels(["Layer / class", "Count", "Opacity"])
        header = self.tree.header()
        header.setStretchLastSection(False)
        # names are never elided: the name column fits its longest entry and the panel asks for that width
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(1, QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(2, QHeaderView.ResizeMode.Fixed)
        self.tree.setColumnWidth(2, OPACITY_WIDTH)
        self.tree.setTextElideMode(Qt.TextElideMode.ElideNone)
        self.tree.itemChanged.connect(self._item_changed)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(2, 2, 2, 2)
        layout.addWidget(self.tree)
        self._updating = False
        overlays.layers_changed.connect(self.refresh)
        self.refresh()

    def refresh(self) -> None:
        """Rebuild the legend from the current layers."""
        self._updating = True
        self.tree.clear()
        for name in layer_names(self.overlays.layers):
            layer = self.overlays.layers[name]
            counts = layer.data.counts()
            top = QTreeWidgetItem([name, str(len(layer.data.objects)), ""])
            top.setFlags(top.flags() | Qt.ItemFlag.ItemIsUserCheckable)
            top.setCheckState(0, Qt.CheckState.Checked if layer.visible else Qt.CheckState.Unchecked)
            top.setData(0, Qt.ItemDataRole.UserRole, (name, None))
            self.tree.addTopLevelItem(top)
            for cls in layer.data.class_names:
                child = QTreeWidgetItem([cls, str(counts.get(cls, 0)), ""])
                child.setIcon(0, colour_icon(layer.colour(cls), dashed=cls == EXCLUDED))
                child.setFlags(child.flags() | Qt.ItemFlag.ItemIsUserCheckable)
                visible = cls not in layer.hidden_classes
                child.setCheckState(0, Qt.CheckState.Checked if visible else Qt.CheckState.Unchecked)
                child.setData(0, Qt.ItemDataRole.UserRole, (name, cls))
                top.addChild(child)
            slider = QSlider(Qt.Orientation.Horizontal)
            slider.setRange(0, 100)
            slider.setValue(int(layer.opacity * 100))
            slider.setToolTip(f"Opacity of the {name} layer")
            slider.valueChanged.connect(lambda value, n=name: self._set_opacity(n, value))
            self.tree.setItemWidget(top, 2, slider)
            top.setExpanded(True)
        for name, image_item in self.overlays.image_layers.items():
            top = QTreeWidgetItem([name, "image", ""])
            top.setFlags(top.flags() | Qt.ItemFlag.ItemIsUserCheckable)
            top.setCheckState(0, Qt.CheckState.Checked if image_item.isVisible() else Qt.CheckState.Unchecked)
            top.setData(0, Qt.ItemDataRole.UserRole, (name, "__image__"))
            self.tree.addTopLevelItem(top)
            slider = QSlider(Qt.Orientation.Horizontal)
            slider.setRange(0, 100)
            slider.setValue(int(image_item.opacity() * 100))
            slider.valueChanged.connect(lambda value, n=name: self._set_opacity(n, value))
            self.tree.setItemWidget(top, 2, slider)
        self._updating = False
        self._fit_width()

    def _fit_width(self) -> None:
        """Ask for the width that shows every layer and class name whole (the dock grows to it)."""
        header = self.tree.header()
        columns = sum(max(self.tree.sizeHintForColumn(i), header.sectionSizeHint(i)) for i in range(2))
        needed = (columns + OPACITY_WIDTH + 2 * self.tree.frameWidth()
                  + self.tree.verticalScrollBar().sizeHint().width() + 4)
        self.tree.setMinimumWidth(max(needed, LEGEND_MIN_WIDTH))

    def _set_opacity(self, name: str, value: int) -> None:
        if name in self.overlays.layers:
            self.overlays.layers[name].set_opacity(value / 100)
        elif name in self.overlays.image_layers:
            self.overlays.image_layers[name].setOpacity(value / 100)

    def _item_changed(self, item: QTreeWidgetItem, column: int) -> None:
        if self._updating or column != 0:
            return
        name, cls = item.data(0, Qt.ItemDataRole.UserRole)
        if cls == "__image__" and name in self.overlays.image_layers:
            self.overlays.image_layers[name].setVisible(item.checkState(0) == Qt.CheckState.Checked)
            return
        layer = self.overlays.layers.get(name)
        if layer is None:
            return
        checked = item.checkState(0) == Qt.CheckState.Checked
        if cls is None:
            layer.set_visible(checked)
        else:
            layer.set_class_visible(cls, checked)

    def set_layer_visible(self, name: str, visible: bool) -> None:
        """Toggle a layer from a menu action (keeps the check box in step)."""
        for i in range(self.tree.topLevelItemCount()):
            item = self.tree.topLevelItem(i)
            if item.data(0, Qt.ItemDataRole.UserRole)[0] == name:
                item.setCheckState(0, Qt.CheckState.Checked if visible else Qt.CheckState.Unchecked)
