"""The drawing data of an overlay layer, made with numpy off the GUI thread (no widgets, no items).

:func:`app.gui.overlays.prepare_layer` groups a layer's objects by drawn class into ready-to-paint
line or point arrays (pyqtgraph's ``PrimitiveArray``), whole and per spatial chunk, with boxes for
hit tests.  These are the parts it is built from.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pyqtgraph.Qt.internals import PrimitiveArray
from pyqtgraph.graphicsItems.PlotCurveItem import arrayToLineSegments
from PySide6.QtCore import QPointF

EXCLUDED = "excluded"
CHUNK = 2048.0  # side (image pixels) of the spatial chunks a class's outlines are split into


@dataclass
class Primitives:
    """Ready-to-paint QLineF or QPointF memory (pyqtgraph's PrimitiveArray) with its bounding box."""

    array: Any
    rect: tuple[float, float, float, float]  # x, y, w, h
    count: int


@dataclass
class ClassDrawing:
    """One class of a layer, prepared off the GUI thread: chunked outlines, all outlines, centre dots."""

    chunks: list[Primitives]
    whole: Primitives | None
    points: Primitives


def _bounds(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float, float]:
    if not len(x):
        return (0.0, 0.0, 0.0, 0.0)
    return (float(x.min()), float(y.min()), float(np.ptp(x)), float(np.ptp(y)))


def line_primitives(x: np.ndarray, y: np.ndarray, connect: np.ndarray) -> Primitives:
    """Line segments of outlines (no Qt objects are made: safe on a reader thread)."""
    array = arrayToLineSegments(x, y, connect=connect, finiteCheck=False)
    return Primitives(array, _bounds(x, y), len(array))


def point_primitives(boxes: np.ndarray) -> Primitives:
    """Box centres as points (no Qt objects are made: safe on a reader thread)."""
    array = PrimitiveArray(QPointF, 2)
    array.resize(len(boxes))
    if not len(boxes):
        return Primitives(array, (0.0, 0.0, 0.0, 0.0), 0)
    memory = array.ndarray()
    memory[:, 0] = (boxes[:, 0] + boxes[:, 2]) / 2
    memory[:, 1] = (boxes[:, 1] + boxes[:, 3]) / 2
    return Primitives(array, _bounds(memory[:, 0], memory[:, 1]), len(boxes))


@dataclass
class LayerData:
    """A layer's objects as arrays for drawing and hit testing (no Qt: may be built off the GUI thread)."""

    name: str
    objects: list[dict[str, Any]]
    classes: list[str]  # draw class per object (stage/type, or "excluded")
    class_names: list[str]  # ordered, each once
    boxes: np.ndarray  # (N, 4) x0, y0, x1, y1
    outlines: dict[str, list[tuple[np.ndarray, np.ndarray, np.ndarray]]]  # class -> per chunk: x, y, connect
    drawings: dict[str, ClassDrawing] = field(default_factory=dict)  # class -> ready-to-paint arrays

    def counts(self) -> dict[str, int]:
        values, counts = np.unique(np.asarray(self.classes, dtype=object), return_counts=True) if self.classes \
            else ([], [])
        return {str(v): int(c) for v, c in zip(values, counts)}


def object_box(obj: dict[str, Any]) -> tuple[float, float, float, float]:
    """An object's box; from its polygon or centroid when it has none."""
    box = obj.get("box")
    if box is not None and len(box) == 4:
        return tuple(float(v) for v in box)  # type: ignore[return-value]
    polygon = obj.get("polygon")
    if polygon:
        points = np.asarray(polygon, dtype=float)
        return (points[:, 0].min(), points[:, 1].min(), points[:, 0].max(), points[:, 1].max())
    y, x = obj.get("centroid", (0.0, 0.0))
    return (x - 2, y - 2, x + 2, y + 2)


def draw_class(obj: dict[str, Any]) -> str:
    """The class an object is drawn as (excluded objects are drawn apart)."""
    return EXCLUDED if obj.get("excluded") else str(obj.get("class", "object"))


def outline_arrays(objects: Sequence[dict[str, Any]], boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """x, y and connect arrays drawing the closed outline of each object (polygon, else box)."""
    if not len(objects):
        empty = np.zeros(0)
        return empty, empty, np.zeros(0, dtype=bool)
    with_polygon = np.array([bool(o.get("polygon")) and len(o["polygon"]) >= 3 for o in objects])
    parts_x, parts_y, parts_c = [], [], []
    if (~with_polygon).any():
        b = boxes[~with_polygon]
        xs = np.stack([b[:, 0], b[:, 2], b[:, 2], b[:, 0], b[:, 0]], axis=1)
        ys = np.stack([b[:, 1], b[:, 1], b[:, 3], b[:, 3], b[:, 1]], axis=1)
        connect = np.ones(xs.shape, dtype=bool)
        connect[:, -1] = False
        parts_x.append(xs.ravel())
        parts_y.append(ys.ravel())
        parts_c.append(connect.ravel())
    if with_polygon.any():
        polygons = [np.asarray(o["polygon"], dtype=float) for o, p in zip(objects, with_polygon) if p]
        closed = [np.vstack([p, p[:1]]) for p in polygons]
        points = np.concatenate(closed)
        connect = np.ones(len(points), dtype=bool)
        connect[np.cumsum([len(p) for p in closed]) - 1] = False
        parts_x.append(points[:, 0])
        parts_y.append(points[:, 1])
        parts_c.append(connect)
    return np.concatenate(parts_x), np.concatenate(parts_y), np.concatenate(parts_c)


def chunk_keys(boxes: np.ndarray, chunk: float = CHUNK) -> np.ndarray:
    """The spatial chunk of each object (by its box centre), as one integer per object."""
    if not len(boxes):
        return np.zeros(0, dtype=np.int64)
    cx = ((boxes[:, 0] + boxes[:, 2]) / 2 // chunk).astype(np.int64)
    cy = ((boxes[:, 1] + boxes[:, 3]) / 2 // chunk).astype(np.int64)
    return cy * 1_000_003 + cx
