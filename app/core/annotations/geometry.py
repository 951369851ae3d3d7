"""Shapes of annotated objects: rings, boxes, polygons to masks and back (pixel-edge coordinates,
see :mod:`app.core.annotations`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from skimage import draw, measure

Box = tuple[float, float, float, float]


def as_ring(points: Any) -> np.ndarray:
    """An (x, y) ring as a (K, 2) float array (K >= 3), without a repeated closing vertex."""
    ring = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    if len(ring) > 3 and np.array_equal(ring[0], ring[-1]):
        ring = ring[:-1]
    if len(ring) < 3:
        raise ValueError(f"a polygon ring needs at least 3 vertices, got {len(ring)}")
    return ring


def ring_area(ring: np.ndarray) -> float:
    """Unsigned area of a ring (shoelace)."""
    x, y = ring[:, 0], ring[:, 1]
    return abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))) / 2.0


def polygons_to_box(polygons: Sequence[np.ndarray]) -> Box:
    """Bounding box (x0, y0, x1, y1) of a set of rings."""
    points = np.concatenate([np.asarray(p, dtype=np.float64).reshape(-1, 2) for p in polygons])
    x0, y0 = points.min(axis=0)
    x1, y1 = points.max(axis=0)
    return (float(x0), float(y0), float(x1), float(y1))


def mask_to_box(mask: np.ndarray, offset: tuple[int, int] = (0, 0)) -> Box | None:
    """Tight box (x0, y0, x1, y1), end exclusive, of a bool mask placed at offset (y0, x0); None if empty."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return None
    y0, x0 = offset
    return (float(x0 + cols[0]), float(y0 + rows[0]), float(x0 + cols[-1] + 1), float(y0 + rows[-1] + 1))


def paste_slices(crop_shape: tuple[int, int], offset: tuple[int, int],
                 shape: tuple[int, int]) -> tuple[tuple[slice, slice], tuple[slice, slice]]:
    """Slices placing a crop at offset (y0, x0) into an image of ``shape``, clipped to both."""
    dst, src = [], []
    for size, off, full in zip(crop_shape, offset, shape):
        a, b = max(off, 0), min(off + size, full)
        b = max(a, b)
        dst.append(slice(a, b))
        src.append(slice(a - off, b - off))
    return (dst[0], dst[1]), (src[0], src[1])


def polygon_to_mask(polygons: Sequence[np.ndarray], shape: tuple[int, int],
                    holes: Sequence[np.ndarray] = ()) -> np.ndarray:
    """Rasterise rings into a bool mask: a pixel is inside when its centre is (union of polygons minus holes)."""
    mask = np.zeros(shape, bool)
    for rings, value in ((polygons, True), (holes, False)):
        for ring in rings:
            ring = np.asarray(ring, dtype=np.float64).reshape(-1, 2)
            rr, cc = draw.polygon(ring[:, 1] - 0.5, ring[:, 0] - 0.5, shape=shape)
            mask[rr, cc] = value
    return mask


def mask_to_rings(mask: np.ndarray, tolerance: float = 0.25,
                  offset: tuple[int, int] = (0, 0)) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Outline a bool mask: (exterior rings, hole rings) in (x, y) image coordinates.

    Contours run through the midpoints between inside and outside pixels
    (skimage.measure.find_contours at 0.5, diagonal neighbours joined) and are simplified with
    Douglas-Peucker at ``tolerance`` pixels (0 = no simplification).  ``offset`` (y0, x0) places a
    cropped mask in the image.
    """
    padded = np.pad(np.asarray(mask, dtype=bool), 1).astype(np.float32)
    exteriors, holes = [], []
    shift = np.array([offset[1] - 0.5, offset[0] - 0.5])  # -1 for the padding, +0.5 for pixel centres
    for contour in measure.find_contours(padded, 0.5, fully_connected="high"):
        if tolerance > 0:
            contour = measure.approximate_polygon(contour, tolerance)
        ring = contour[:-1, ::-1] + shift  # (row, col) -> (x, y), drop the closing vertex
        if len(ring) < 3:
            continue
        x, y = ring[:, 0], ring[:, 1]
        signed = float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))
        (exteriors if signed > 0 else holes).append(ring)  # skimage orients holes the other way
    return exteriors, holes


def mask_to_polygons(mask: np.ndarray, tolerance: float = 0.25, offset: tuple[int, int] = (0, 0)) -> list[np.ndarray]:
    """Exterior rings (x, y) of a bool mask (holes dropped, like COCO polygons); see :func:`mask_to_rings`."""
    return mask_to_rings(mask, tolerance, offset)[0]
