"""Geometry of curation edits: drawing a polygon, dragging a vertex, resizing a box by a corner.

The viewer's outline and box tools (app/gui/shape_tools.py) only turn mouse positions into calls
here; what counts as a hit, a closed outline or a valid box is decided in this Qt-free module so it
is tested without a screen.  Points are (x, y) image pixels; boxes are (x0, y0, x1, y1).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

MIN_BOX_SIDE = 2.0  # image pixels: a box dragged smaller than this keeps this size
MIN_AREA = 4.0  # square image pixels: a closed outline must enclose at least this


def polygon_area(points: Sequence[Sequence[float]]) -> float:
    """Unsigned area of a polygon of (x, y) points (shoelace formula)."""
    p = np.asarray(points, dtype=float).reshape(-1, 2)
    if len(p) < 3:
        return 0.0
    x, y = p[:, 0], p[:, 1]
    return float(abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) / 2)


def polygon_box(points: Sequence[Sequence[float]]) -> list[float]:
    """The bounding box (x0, y0, x1, y1) of a polygon."""
    p = np.asarray(points, dtype=float).reshape(-1, 2)
    return [float(p[:, 0].min()), float(p[:, 1].min()), float(p[:, 0].max()), float(p[:, 1].max())]


def clean_polygon(points: Sequence[Sequence[float]], tolerance: float = 0.5) -> list[list[float]] | None:
    """The outline the clicked points make (repeats dropped), or None when it encloses (almost) nothing.

    A double-click that closes an outline also lands as one or two plain clicks on the same spot,
    and a user may click the first point again to close: such repeats are not vertices.
    """
    out: list[list[float]] = []
    for x, y in (tuple(map(float, p)) for p in points):
        if out and abs(out[-1][0] - x) <= tolerance and abs(out[-1][1] - y) <= tolerance:
            continue
        out.append([x, y])
    while len(out) > 1 and abs(out[0][0] - out[-1][0]) <= tolerance and abs(out[0][1] - out[-1][1]) <= tolerance:
        out.pop()
    if len(out) < 3 or polygon_area(out) < MIN_AREA:
        return None
    return out


def nearest_vertex(points: Sequence[Sequence[float]], x: float, y: float, tolerance: float) -> int | None:
    """Index of the vertex nearest (x, y) within ``tolerance`` image pixels, or None."""
    p = np.asarray(points, dtype=float).reshape(-1, 2)
    if not len(p):
        return None
    distance = np.hypot(p[:, 0] - x, p[:, 1] - y)
    index = int(np.argmin(distance))
    return index if distance[index] <= tolerance else None


def move_vertex(points: Sequence[Sequence[float]], index: int, x: float, y: float) -> list[list[float]]:
    """A copy of the polygon with vertex ``index`` at (x, y)."""
    out = [[float(px), float(py)] for px, py in points]
    out[index] = [float(x), float(y)]
    return out


def box_corners(box: Sequence[float]) -> list[tuple[float, float]]:
    """The four corners of a box: top-left, top-right, bottom-right, bottom-left."""
    x0, y0, x1, y1 = (float(v) for v in box)
    return [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]


def corner_at(box: Sequence[float], x: float, y: float, tolerance: float) -> int | None:
    """Which corner of the box (0-3, as :func:`box_corners`) lies within ``tolerance`` of (x, y)."""
    return nearest_vertex(box_corners(box), x, y, tolerance)


def resize_box(box: Sequence[float], corner: int, x: float, y: float,
               min_side: float = MIN_BOX_SIDE) -> list[float]:
    """The box with ``corner`` dragged to (x, y); the opposite corner stays, sides at least ``min_side``.

    Dragging a corner past the opposite one flips the box rather than making it negative.
    """
    fixed_x, fixed_y = box_corners(box)[(corner + 2) % 4]
    x0, x1 = sorted((fixed_x, float(x)))
    y0, y1 = sorted((fixed_y, float(y)))
    if x1 - x0 < min_side:
        x0, x1 = (fixed_x - min_side, fixed_x) if x < fixed_x else (fixed_x, fixed_x + min_side)
    if y1 - y0 < min_side:
        y0, y1 = (fixed_y - min_side, fixed_y) if y < fixed_y else (fixed_y, fixed_y + min_side)
    return [x0, y0, x1, y1]


def box_centroid(box: Sequence[float]) -> list[float]:
    """The centre of a box as (y, x), the order results use for centroids."""
    x0, y0, x1, y1 = (float(v) for v in box)
    return [(y0 + y1) / 2, (x0 + x1) / 2]


class PolygonDraft:
    """The outline being drawn: clicks add points; :meth:`close` returns it, cleaned, or None."""

    def __init__(self) -> None:
        self.points: list[list[float]] = []

    def add(self, x: float, y: float) -> None:
        """Add a point where the user clicked."""
        self.points.append([float(x), float(y)])

    def remove_last(self) -> None:
        """Take back the last point (Backspace)."""
        if self.points:
            self.points.pop()

    def close(self) -> list[list[float]] | None:
        """The finished outline (see :func:`clean_polygon`); the draft is emptied either way."""
        polygon = clean_polygon(self.points)
        self.points = []
        return polygon

    def preview(self, cursor: tuple[float, float] | None = None) -> list[list[float]]:
        """The points to draw now: the clicked ones, then the cursor, back to the first."""
        points = list(self.points) + ([list(cursor)] if cursor is not None and self.points else [])
        return points + [points[0]] if len(points) > 2 else points


def as_points(value: Any) -> list[list[float]]:
    """A polygon given as a list of (x, y) pairs or an (N, 2) array, as a plain list."""
    return [[float(x), float(y)] for x, y in np.asarray(value, dtype=float).reshape(-1, 2)]
