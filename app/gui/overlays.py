"""Result overlays on the tile viewer: one drawing item per class, however many objects a layer has.

An objects document (:mod:`app.core.results`) has layers (tubules, cells, nuclei, objects).  Each
class of a layer is drawn as a few path items holding every outline of that class (polygons, or
boxes when an object has no polygon; built with a ``connect`` array that breaks the line between
objects): zoomed out, one item per class; zoomed in, one per spatial chunk of 2048 px, so that
only the chunks in view are painted.  50 000 cells cost nine items (or a few hundred small ones),
never 50 000.  Tubules are coloured by stage,
cells by type; excluded tubules are drawn dashed grey.  :func:`prepare_layer` does the numpy work
(with :mod:`app.gui.overlay_data`) and may run on a background thread; items are made on the GUI
thread.  :class:`app.gui.layers_panel.LayersPanel` is the legend.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import pyqtgraph as pg
from PySide6.QtCore import QObject, QRectF, Qt, Signal
from PySide6.QtGui import QColor, QPen
from PySide6.QtWidgets import QGraphicsItem

from app.core.edits import point_in_polygon
from app.gui.overlay_data import (
    CHUNK, EXCLUDED, ClassDrawing, LayerData, Primitives, chunk_keys, draw_class, line_primitives, object_box,
    outline_arrays, point_primitives,
)
from app.gui.theme import DEFAULT_LAYER_WIDTH, GENERIC_COLOURS, LAYER_WIDTH, SELECTION_WIDTH
from app.pipelines.stagetool.classes import (  # one palette for stages and cell types: Stagetool's vocabulary
    CELL_TYPE_COLOURS, CELL_TYPES, CLASS_COLOURS, EXCLUDED_COLOUR, SELECTION_COLOUR, STAGES,
)
from app.pipelines.stagetool.classes import STAGE_COLOURS as STAGE_COLOUR_MAP

LAYER_ORDER = ("tubules", "objects", "nuclei", "cells")  # drawing order, bottom to top
LAYER_Z = {name: 10 + i for i, name in enumerate(LAYER_ORDER)}
SELECTION_Z = 30
FINE_VIEW_WIDTH = 4 * CHUNK  # views narrower than this draw chunk items (only those in view are painted)
STAGE_COLOURS = tuple(STAGE_COLOUR_MAP[s] for s in STAGES)
CELL_COLOURS = tuple(CELL_TYPE_COLOURS[t] for t in CELL_TYPES)


def class_colour(layer: str, name: str, index: int) -> QColor:
    """The colour of a class: fixed for stages and cell types, cycling for other classes."""
    if name == EXCLUDED:
        return QColor(EXCLUDED_COLOUR)
    if name in CLASS_COLOURS:
        return QColor(CLASS_COLOURS[name])
    return QColor(GENERIC_COLOURS[index % len(GENERIC_COLOURS)])


def prepare_layer(name: str, objects: list[dict[str, Any]], chunk: float = CHUNK) -> LayerData:
    """Arrays for one layer: boxes, draw classes and per-class outlines split into spatial chunks."""
    boxes = np.array([object_box(o) for o in objects], dtype=float).reshape(-1, 4)
    classes = [draw_class(o) for o in objects]
    known = STAGES if name == "tubules" else CELL_TYPES if name == "cells" else ()
    present = set(classes)
    ordered = [c for c in known if c in present] + sorted(present - set(known) - {EXCLUDED})
    if EXCLUDED in present:
        ordered.append(EXCLUDED)
    class_array = np.asarray(classes, dtype=object)
    keys = chunk_keys(boxes, chunk)
    outlines: dict[str, list[tuple[np.ndarray, np.ndarray, np.ndarray]]] = {}
    drawings: dict[str, ClassDrawing] = {}
    for cls in ordered:
        index = np.flatnonzero(class_array == cls)
        parts = []
        for key in np.unique(keys[index]):
            sub = index[keys[index] == key]
            parts.append(outline_arrays([objects[i] for i in sub], boxes[sub]))
        outlines[cls] = parts
        whole = None
        if len(parts) > 1:
            whole = line_primitives(*(np.concatenate([part[i] for part in parts]) for i in range(3)))
        drawings[cls] = ClassDrawing([line_primitives(*part) for part in parts], whole, point_primitives(boxes[index]))
    return LayerData(name, objects, classes, ordered, boxes, outlines, drawings)


def prepare_document(doc: dict[str, Any]) -> dict[str, LayerData]:
    """Arrays for every layer of an objects document."""
    return {name: prepare_layer(name, list(objects or [])) for name, objects in (doc.get("layers") or {}).items()}



class PrimitivesItem(QGraphicsItem):
    """Many line segments (``drawLines``) or points (``drawPoints``) in one paint call.

    Far faster than stroking a QPainterPath, and a plain QGraphicsItem, so pyqtgraph's per-item
    callbacks stay out of every pan.
    """

    def __init__(self, primitives: Primitives, pen: QPen, points: bool = False) -> None:
        super().__init__()
        self.primitives = primitives
        self._pen = QPen(pen)
        self._points = points
        if points:  # one-pixel dots: Qt's fastest point path (a third quicker than 2 px dots)
            self._pen.setWidthF(1.0)
            self._pen.setStyle(Qt.PenStyle.SolidLine)
        self._rect = QRectF(*primitives.rect)
        self.setAcceptedMouseButtons(Qt.MouseButton.NoButton)

    def segment_count(self) -> int:
        return self.primitives.count

    def boundingRect(self) -> QRectF:  # noqa: N802 - Qt's name
        return self._rect.adjusted(-1, -1, 1, 1)

    def paint(self, painter: Any, _option: Any, _widget: Any = None) -> None:
        if not self.primitives.count:
            return
        painter.setRenderHint(painter.RenderHint.Antialiasing, False)
        painter.setPen(self._pen)
        if self._points:
            painter.drawPoints(*self.primitives.array.drawargs())
        else:
            painter.drawLines(*self.primitives.array.drawargs())


class OverlayLayer:
    """The drawing items of one layer in a view box: per class, one path item per spatial chunk.

    A class's outlines are split into chunks of :data:`CHUNK` image pixels so that, zoomed in,
    Qt paints only the chunks in view; plain QGraphicsItems drawing with ``drawLines`` keep
    pyqtgraph's per-item callbacks out of every pan and avoid Qt's slow path stroker.
    """

    def __init__(self, data: LayerData, view_box: pg.ViewBox) -> None:
        self.data = data
        self.view_box = view_box
        self.visible = True
        self.opacity = 1.0
        self.hidden_classes: set[str] = set()
        self.items: dict[str, list[PrimitivesItem]] = {}  # per class: one item per chunk (zoomed in)
        self.whole_items: dict[str, PrimitivesItem] = {}  # per class: one item for all (zoomed out)
        self.point_items: dict[str, PrimitivesItem] = {}  # per class: a dot per object (under ~3 screen px)
        self.mode = "whole"  # "points", "whole" or "fine"
        sizes = np.maximum(data.boxes[:, 2] - data.boxes[:, 0], data.boxes[:, 3] - data.boxes[:, 1])
        self.typical_size = float(np.median(sizes)) if len(sizes) else 0.0
        self._build()

    @property
    def name(self) -> str:
        return self.data.name

    def colour(self, cls: str) -> QColor:
        return class_colour(self.name, cls, self.data.class_names.index(cls) if cls in self.data.class_names else 0)

    def _pen(self, cls: str) -> QPen:
        pen = pg.mkPen(self.colour(cls), width=LAYER_WIDTH.get(self.name, DEFAULT_LAYER_WIDTH))
        pen.setCosmetic(True)
        if cls == EXCLUDED:
            pen.setStyle(Qt.PenStyle.DashLine)
        return pen

    def _build(self) -> None:
        z = LAYER_Z.get(self.name, 10 + len(LAYER_ORDER))
        for cls in self.data.class_names:
            pen = self._pen(cls)
            drawing = self.data.drawings[cls]
            self.items[cls] = [self._add(PrimitivesItem(chunk, pen), z) for chunk in drawing.chunks]
            if drawing.whole is not None:
                self.whole_items[cls] = self._add(PrimitivesItem(drawing.whole, pen), z)
            self.point_items[cls] = self._add(PrimitivesItem(drawing.points, pen, points=True), z)
        self._apply_visibility()

    def _add(self, item: PrimitivesItem, z: float) -> PrimitivesItem:
        item.setZValue(z)
        self.view_box.addItem(item, ignoreBounds=True)
        return item

    def _all_items(self) -> list[QGraphicsItem]:
        return ([item for items in self.items.values() for item in items] + list(self.whole_items.values())
                + list(self.point_items.values()))

    def remove(self) -> None:
        for item in self._all_items():
            self.view_box.removeItem(item)
        self.items.clear()
        self.whole_items.clear()
        self.point_items.clear()

    def item_count(self) -> int:
        """Drawing items shown at the current level of detail."""
        if self.mode != "fine":
            return len(self.items)
        return sum(len(items) for items in self.items.values())

    def set_view(self, view_width: float, image_px_per_screen_px: float) -> None:
        """Level of detail: dots when objects are under 3 screen pixels, one item per class when zoomed
        out, chunk items (only those in view get painted) when zoomed in."""
        if image_px_per_screen_px > 0 and self.typical_size / image_px_per_screen_px < 3:
            mode = "points"
        else:
            mode = "fine" if view_width < FINE_VIEW_WIDTH else "whole"
        if mode != self.mode:
            self.mode = mode
            self._apply_visibility()

    def set_visible(self, visible: bool) -> None:
        self.visible = visible
        self._apply_visibility()

    def set_class_visible(self, cls: str, visible: bool) -> None:
        (self.hidden_classes.discard if visible else self.hidden_classes.add)(cls)
        self._apply_visibility()

    def set_opacity(self, opacity: float) -> None:
        self.opacity = float(opacity)
        for item in self._all_items():
            item.setOpacity(self.opacity)

    def is_class_shown(self, cls: str) -> bool:
        return self.visible and cls not in self.hidden_classes

    def _apply_visibility(self) -> None:
        for cls, items in self.items.items():
            shown = self.is_class_shown(cls)
            whole = self.whole_items.get(cls)
            outlines = self.mode != "points"
            for item in items:
                item.setVisible(shown and outlines and (self.mode == "fine" or whole is None))
                item.setOpacity(self.opacity)
            if whole is not None:
                whole.setVisible(shown and self.mode == "whole")
                whole.setOpacity(self.opacity)
            points = self.point_items.get(cls)
            if points is not None:
                points.setVisible(shown and self.mode == "points")
                points.setOpacity(self.opacity)

    def hit(self, x: float, y: float, tolerance: float = 0.0) -> dict[str, Any] | None:
        """The smallest visible object under (x, y), or None."""
        if not self.visible or not len(self.data.objects):
            return None
        b = self.data.boxes
        inside = ((b[:, 0] - tolerance <= x) & (x < b[:, 2] + tolerance)
                  & (b[:, 1] - tolerance <= y) & (y < b[:, 3] + tolerance))
        candidates = np.flatnonzero(inside)
        if self.hidden_classes:
            candidates = [i for i in candidates if self.data.classes[i] not in self.hidden_classes]
        best, best_area = None, np.inf
        for i in candidates:
            obj = self.data.objects[i]
            polygon = obj.get("polygon")
            if polygon and len(polygon) >= 3 and not point_in_polygon(x, y, np.asarray(polygon, dtype=float)):
                continue
            area = (b[i, 2] - b[i, 0]) * (b[i, 3] - b[i, 1])
            if area < best_area:
                best, best_area = obj, area
        return best


class OverlayManager(QObject):
    """The overlay layers shown on a view box, the selection highlight, and hit tests."""

    layers_changed = Signal()
    selection_changed = Signal(object)  # (layer, object) or None, after every select()

    def __init__(self, view_box: pg.ViewBox, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.view_box = view_box
        self.layers: dict[str, OverlayLayer] = {}
        self.document: dict[str, Any] | None = None
        self.selected: tuple[str, dict[str, Any]] | None = None
        pen = pg.mkPen(SELECTION_COLOUR, width=SELECTION_WIDTH)
        pen.setCosmetic(True)
        self._highlight = pg.PlotCurveItem(pen=pen, antialias=True)
        self._highlight.setZValue(SELECTION_Z)
        view_box.addItem(self._highlight, ignoreBounds=True)
        self._settings: dict[str, tuple[bool, float, set[str]]] = {}  # kept across reloads
        self.image_layers: dict[str, pg.ImageItem] = {}  # e.g. Kaizen's generated objects
        self._view = (float("inf"), 0.0)  # view width and image pixels per screen pixel

    def clear(self) -> None:
        """Remove every layer and the selection."""
        for layer in self.layers.values():
            layer.remove()
        self.layers.clear()
        self.clear_image_layers()
        self.document = None
        self.select(None)
        self.layers_changed.emit()

    def set_document(self, doc: dict[str, Any] | None, prepared: dict[str, LayerData] | None = None) -> None:
        """Show an objects document (edits already applied); toggles and opacity carry over."""
        self._remember()
        for layer in self.layers.values():
            layer.remove()
        self.layers.clear()
        self.document = doc
        if doc is not None:
            prepared = prepared if prepared is not None else prepare_document(doc)
            for name in sorted(prepared, key=lambda n: LAYER_ORDER.index(n) if n in LAYER_ORDER else 99):
                self._add(prepared[name])
        self._reselect()
        self.layers_changed.emit()

    def update_layer(self, name: str, objects: list[dict[str, Any]], prepared: LayerData | None = None) -> None:
        """Redraw one layer after its objects changed (an edit); ``prepared`` may come from a reader thread."""
        self._remember()
        if name in self.layers:
            self.layers.pop(name).remove()
        if self.document is not None:
            self.document.setdefault("layers", {})[name] = objects
        self._add(prepared if prepared is not None else prepare_layer(name, objects))
        self._reselect()
        self.layers_changed.emit()

    def update_detail(self, view_width: float, image_px_per_screen_px: float = 0.0) -> None:
        """Choose each layer's level of detail for a view ``view_width`` image pixels wide."""
        self._view = (view_width, image_px_per_screen_px)
        for layer in self.layers.values():
            layer.set_view(*self._view)

    def _add(self, data: LayerData) -> None:
        layer = OverlayLayer(data, self.view_box)
        layer.set_view(*self._view)
        visible, opacity, hidden = self._settings.get(data.name, (True, 1.0, set()))
        layer.hidden_classes = set(hidden)
        layer.opacity = opacity
        layer.set_visible(visible)
        self.layers[data.name] = layer

    def _remember(self) -> None:
        for name, layer in self.layers.items():
            self._settings[name] = (layer.visible, layer.opacity, set(layer.hidden_classes))

    def set_image_layer(self, name: str, rgba: np.ndarray, rect: tuple[float, float, float, float]) -> pg.ImageItem:
        """Show an RGBA picture (e.g. generated object images) under the outlines, at ``rect`` (x, y, w, h)."""
        item = self.image_layers.get(name)
        if item is None:
            item = pg.ImageItem()
            item.setZValue(LAYER_Z["tubules"] - 1)
            self.view_box.addItem(item, ignoreBounds=True)
            self.image_layers[name] = item
            visible, opacity, _hidden = self._settings.get(name, (True, 0.8, set()))
            item.setVisible(visible)
            item.setOpacity(opacity)
        item.setImage(rgba, autoLevels=False, levels=None)
        item.setRect(QRectF(*rect))
        self.layers_changed.emit()
        return item

    def clear_image_layers(self) -> None:
        for name, item in self.image_layers.items():
            self._settings[name] = (item.isVisible(), item.opacity(), set())
            self.view_box.removeItem(item)
        self.image_layers.clear()

    def item_count(self) -> int:
        """How many drawing items the overlays use (one per class and layer)."""
        return sum(layer.item_count() for layer in self.layers.values())

    def object_count(self) -> int:
        return sum(len(layer.data.objects) for layer in self.layers.values())

    def hit_test(self, x: float, y: float, tolerance: float = 0.0) -> tuple[str, dict[str, Any]] | None:
        """(layer name, object) under (x, y): top layers first (cells before tubules)."""
        for name in sorted(self.layers, key=lambda n: -LAYER_Z.get(n, 99)):
            obj = self.layers[name].hit(x, y, tolerance)
            if obj is not None:
                return name, obj
        return None

    def find(self, layer: str, object_id: Any) -> dict[str, Any] | None:
        data = self.layers.get(layer)
        if data is None:
            return None
        return next((o for o in data.data.objects if o.get("id") == object_id), None)

    def select(self, selection: tuple[str, dict[str, Any]] | None) -> None:
        """Highlight one object (or none)."""
        self.selected = selection
        if selection is None:
            self._highlight.setData(x=np.zeros(0), y=np.zeros(0))
        else:
            obj = selection[1]
            x, y, connect = outline_arrays([obj], np.array([object_box(obj)], dtype=float))
            self._highlight.setData(x=x, y=y, connect=connect)
        self.selection_changed.emit(selection)

    def _reselect(self) -> None:
        if self.selected is None:
            return
        layer, obj = self.selected
        self.select((layer, found) if (found := self.find(layer, obj.get("id"))) is not None else None)


def layer_names(layers: Iterable[str]) -> list[str]:
    """Layer names in drawing order."""
    return sorted(layers, key=lambda n: LAYER_ORDER.index(n) if n in LAYER_ORDER else 99)
