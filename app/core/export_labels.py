"""Results objects as files napari opens: an instance label TIFF per layer and a CSV of points with properties.

Whole sections are 20000 px and more, so the label image is never built in memory: the tiled
OME-TIFF writer (:func:`app.core.images.write_tiff`) asks for one tile at a time and each tile is
rasterised from the outlines of the objects that touch it.  Pixel value = object id (the same
id as the GeoJSON feature's name and the CSV's ``label``), uint16, or uint32 above 65535.  A pixel
belongs to an object when its centre is inside the outline, and a box-only object (a Stagetool
cell) fills the pixels its box touches: the rules of :meth:`AnnotatedObject.crop_mask`, so the
labels equal :func:`app.core.annotations.objects_to_labels`; where objects overlap, the smaller
one is drawn on top.

The CSV follows napari's own points format (``axis-0`` = row y, ``axis-1`` = column x, in pixel
index coordinates, where napari puts pixel centres); the other columns become the points'
properties, so File > Open of the CSV gives the objects' centroids with their class and area.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from app.core.annotations import AnnotatedObject
from app.core.atomic import atomic_path

TILE = 512


def label_dtype(objects: Sequence[AnnotatedObject]) -> np.dtype:
    """uint16 when every id fits, else uint32 (napari and Fiji read both)."""
    top = max((o.id for o in objects), default=0)
    return np.dtype(np.uint16 if top <= np.iinfo(np.uint16).max else np.uint32)


class TileRasteriser:
    """Draws the objects touching a window (y0, x0, y1, x1) into a label tile; one instance per image."""

    def __init__(self, objects: Sequence[AnnotatedObject], dtype: np.dtype) -> None:
        self.objects = sorted(objects, key=lambda o: -o.area)  # big first, so small ones stay visible
        self.boxes = np.array([o.box for o in self.objects], np.float64).reshape(-1, 4)
        self.dtype = dtype

    def __call__(self, y0: int, x0: int, y1: int, x1: int) -> np.ndarray:
        tile = np.zeros((y1 - y0, x1 - x0), self.dtype)
        b = self.boxes
        touching = np.flatnonzero((b[:, 0] < x1) & (b[:, 2] > x0) & (b[:, 1] < y1) & (b[:, 3] > y0))
        for k in touching:
            obj = self.objects[k]
            bx0, by0, bx1, by1 = obj.box  # type: ignore[misc]
            # the pixels of this tile whose centres can lie inside the object's box
            ix0, iy0 = max(int(np.floor(bx0)), x0), max(int(np.floor(by0)), y0)
            ix1, iy1 = min(int(np.ceil(bx1)), x1), min(int(np.ceil(by1)), y1)
            if ix1 <= ix0 or iy1 <= iy0:
                continue
            inside = _window_mask(obj, iy0, ix0, iy1, ix1)
            tile[iy0 - y0:iy1 - y0, ix0 - x0:ix1 - x0][inside] = obj.id
        return tile


def scanline_mask(polygons: Sequence[np.ndarray], shape: tuple[int, int],
                  holes: Sequence[np.ndarray] = ()) -> np.ndarray:
    """The same pixels as :func:`app.core.annotations.polygon_to_mask` (centre inside or on the outline),
    found row by row from where the edges cross each row instead of testing every pixel against
    every edge: a 500 px tubule outline fills a 512 px tile in milliseconds, not a third of a second."""
    mask = np.zeros(shape, bool)
    for rings, value in ((polygons, True), (holes, False)):
        for ring in rings:
            ring = np.asarray(ring, dtype=np.float64).reshape(-1, 2) - 0.5  # pixel centres on integers
            mask[_ring_pixels(ring[:, 0], ring[:, 1], shape)] = value
    return mask


def _ring_pixels(x: np.ndarray, y: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Bool array of ``shape``: integer points (row, col) inside the ring or on its edges (skimage's rule)."""
    height, width = shape
    out = np.zeros(shape, bool)
    r0, r1 = max(int(np.ceil(y.min())), 0), min(int(np.floor(y.max())), height - 1)
    if r1 < r0 or x.max() < 0 or x.min() > width - 1:
        return out
    rows = np.arange(r0, r1 + 1, dtype=np.float64)[:, None]
    xi, yi, xj, yj = x, y, np.roll(x, 1), np.roll(y, 1)
    slanted = yi != yj
    with np.errstate(divide="ignore", invalid="ignore"):
        at_row = xi + (rows - yi) * (xj - xi) / (yj - yi)  # where each edge's line meets each row
    # inside: the even-odd rule with half-open edges, as skimage counts crossings (x < crossing)
    crossing = slanted & (((yi <= rows) & (rows < yj)) | ((yj <= rows) & (rows < yi)))
    xs = np.sort(np.where(crossing, at_row, np.inf), axis=1)
    xs = xs[:, : xs.shape[1] - xs.shape[1] % 2]
    starts = np.clip(np.ceil(xs[:, 0::2]), 0, width)
    ends = np.clip(np.ceil(xs[:, 1::2]), 0, width)
    runs = np.zeros((len(rows), width + 1), np.int32)
    row_index = np.broadcast_to(np.arange(len(rows))[:, None], starts.shape)
    np.add.at(runs, (row_index, starts.astype(np.intp)), 1)
    np.add.at(runs, (row_index, ends.astype(np.intp)), -1)
    out[r0:r1 + 1] = np.cumsum(runs[:, :width], axis=1) > 0
    # on the outline: points exactly on a slanted edge, on a horizontal edge, and the vertices
    on_edge = slanted & (np.minimum(yi, yj) <= rows) & (rows <= np.maximum(yi, yj)) & (at_row == np.round(at_row))
    hit_rows, hit_edges = np.nonzero(on_edge)
    cols = at_row[hit_rows, hit_edges].astype(np.intp)
    keep = (cols >= 0) & (cols < width)
    out[hit_rows[keep] + r0, cols[keep]] = True
    for k in np.flatnonzero(~slanted & (y == np.round(y)) & (y >= 0) & (y < height)):
        c0, c1 = max(int(np.ceil(min(xi[k], xj[k]))), 0), min(int(np.floor(max(xi[k], xj[k]))), width - 1)
        out[int(y[k]), c0:c1 + 1] = True
    return out


def _window_mask(obj: AnnotatedObject, y0: int, x0: int, y1: int, x1: int) -> np.ndarray:
    """The object's pixels within the window, as a bool array of the window's shape."""
    shape = (y1 - y0, x1 - x0)
    if obj.mask is not None:
        out = np.zeros(shape, bool)
        oy, ox = obj.mask_offset
        h, w = obj.mask.shape
        a0, a1 = max(y0, oy), min(y1, oy + h)
        b0, b1 = max(x0, ox), min(x1, ox + w)
        if a1 > a0 and b1 > b0:
            out[a0 - y0:a1 - y0, b0 - x0:b1 - x0] = obj.mask[a0 - oy:a1 - oy, b0 - ox:b1 - ox]
        return out
    if obj.polygons:
        shift = np.array([x0, y0], np.float64)
        return scanline_mask([p - shift for p in obj.polygons], shape, [h - shift for h in obj.holes])
    return np.ones(shape, bool)  # a box-only object fills every pixel its box touches, as crop_mask does


def write_label_tiff(path: str | os.PathLike[str], objects: Sequence[AnnotatedObject], shape: tuple[int, int],
                     pixel_size_um: float | None = None, tile: int = TILE) -> Path:
    """Write the objects as a tiled instance-label OME-TIFF of ``shape`` (height, width), tile by tile."""
    from app.core.images import write_tiff

    dtype = label_dtype(objects)
    rasterise = TileRasteriser(objects, dtype)
    return write_tiff(path, rasterise, "YX", pixel_size_um=pixel_size_um, tile=(tile, tile),
                      shape=tuple(int(s) for s in shape), dtype=dtype, downsample="nearest")


def napari_centroid(obj: AnnotatedObject) -> tuple[float, float]:
    """Centroid (y, x) in napari's pixel-index coordinates (pixel centres on integers)."""
    if obj.mask is not None and obj.mask.any():
        rows, cols = np.nonzero(obj.mask)
        return float(rows.mean() + obj.mask_offset[0]), float(cols.mean() + obj.mask_offset[1])
    if obj.polygons:
        total, cy, cx = 0.0, 0.0, 0.0
        for ring, sign in [(p, 1.0) for p in obj.polygons] + [(h, -1.0) for h in obj.holes]:
            x, y = ring[:, 0], ring[:, 1]
            xn, yn = np.roll(x, -1), np.roll(y, -1)
            cross = x * yn - xn * y
            area = cross.sum() / 2.0
            if area == 0:
                continue
            w = sign * abs(area)
            total += w
            cx += w * ((x + xn) * cross).sum() / (6.0 * area)
            cy += w * ((y + yn) * cross).sum() / (6.0 * area)
        if total > 0:
            return cy / total - 0.5, cx / total - 0.5
    x0, y0, x1, y1 = obj.box  # type: ignore[misc]
    return (y0 + y1) / 2.0 - 0.5, (x0 + x1) / 2.0 - 0.5


def napari_rows(objects: Iterable[AnnotatedObject], extra: Mapping[int, Mapping[str, Any]] | None = None,
                ) -> list[dict[str, Any]]:
    """One row per object: label, axis-0 (centroid y), axis-1 (centroid x), class, area_px, then ``extra[id]``."""
    rows = []
    for obj in objects:
        y, x = napari_centroid(obj)
        row: dict[str, Any] = {"label": obj.id, "axis-0": round(y, 3), "axis-1": round(x, 3),
                               "class": obj.category, "area_px": round(obj.area, 3)}
        row.update((extra or {}).get(obj.id, {}))
        rows.append(row)
    return rows


def write_napari_csv(path: str | os.PathLike[str], rows: Sequence[Mapping[str, Any]]) -> Path:
    """Write rows as CSV (header = the union of the keys, first-seen order; missing values empty), atomically."""
    columns: dict[str, None] = {}
    for row in rows:
        columns.update(dict.fromkeys(row))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns) or ["label"], lineterminator="\n")
        writer.writeheader()
        writer.writerows({k: ("" if v is None else v) for k, v in row.items()} for row in rows)
    return path
