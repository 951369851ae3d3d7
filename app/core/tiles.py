"""Tiles of a big section: a grid with overlap, reads with context, ownership, stitching, rotations.

Geometry (all boxes are (y0, x0, y1, x1), y1/x1 exclusive, in section pixels)
    ``TileGrid(height, width, tile_size=1024, overlap=128)`` cuts the section into *windows* of
    exactly ``tile_size`` pixels (what a model sees); neighbouring windows share ``overlap``
    pixels, so the grid steps by ``stride = tile_size - overlap``.  Each window's *core* is the
    stride x stride block at its centre (``overlap // 2`` pixels in from the window's top/left):
    the cores partition the image exactly (every pixel in one core; the last row/column of
    cores is clipped to the image), and each core has at least ``overlap // 2`` pixels of
    context on every side.  Windows at the image border reach beyond it; reads pad there.

Padding beyond the border: ``"reflect"`` by default (mirror without repeating the edge pixel,
    like ``np.pad(mode="reflect")``), because a CNN sees plausible texture instead of a hard
    black edge (for brightfield the background is bright, so zeros would be a strong false
    edge); ``"zero"`` is available for fluorescence where outside-the-tissue is dark anyway.

Ownership ("responsible core")
    An object belongs to the tile whose core holds its centre: ``Tile.owns(y, x)`` and
    ``TileGrid.owner(y, x)``; an object on a seam is therefore kept exactly once.  Centres are
    continuous (a pixel index y belongs to the core with y0 <= y < y1); centres outside the
    image belong to the nearest border tile, so every point in the plane has one owner.

Stitching
    :class:`Stitcher` blends window-sized probability maps into an output array the caller
    provides (ndarray, ``np.memmap`` or zarr array), so a big map need not be in RAM.  Each
    window is weighted by a separable ramp over the overlap (cosine by default:
    sin^2 rising over the ``overlap`` pixels, 1 elsewhere, no ramp on the image-border sides).
    The ramps of neighbouring windows sum to exactly 1 at every pixel (sin^2 + cos^2 = 1), so
    the weight sum is 1 everywhere and the blend is already normalised: no second array of
    weight sums is needed.  ``blend="none"`` keeps each window's core only.

Rotations by 90-degree steps follow ``np.rot90(array, k)`` on the last two axes
(counter-clockwise for positive ``k``); boxes, points and polygon vertices are transformed to
match, and ``unrotate_*`` take the same ``k`` and the *original* shape to undo them.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

Box = tuple[int, int, int, int]  # (y0, x0, y1, x1)
PAD_MODES = ("reflect", "zero")
BLENDS = ("cosine", "linear", "none")


# ---------------------------------------------------------------------------------------- tiles


@dataclass(frozen=True)
class Tile:
    """One window of a :class:`TileGrid`: its ``core`` (the pixels it is responsible for) and
    its ``window`` (core plus context, possibly beyond the image), both (y0, x0, y1, x1)."""

    index: int
    row: int
    col: int
    core: Box
    window: Box
    image_shape: tuple[int, int] | None = None  # set by the grid; enables the border rule of owns()

    @property
    def offset(self) -> tuple[int, int]:
        """(y, x) of the window's top-left corner in section pixels (may be negative)."""
        return self.window[0], self.window[1]

    @property
    def shape(self) -> tuple[int, int]:
        """(height, width) of the window."""
        return self.window[2] - self.window[0], self.window[3] - self.window[1]

    @property
    def core_in_window(self) -> Box:
        """The core as (y0, x0, y1, x1) relative to the window, for cropping window outputs."""
        oy, ox = self.offset
        y0, x0, y1, x1 = self.core
        return y0 - oy, x0 - ox, y1 - oy, x1 - ox

    def crop_core(self, window_array: np.ndarray) -> np.ndarray:
        """The core part of a window-shaped array (last two axes)."""
        y0, x0, y1, x1 = self.core_in_window
        return window_array[..., y0:y1, x0:x1]

    def owns(self, y: Any, x: Any) -> Any:
        """Whether this tile is responsible for centre(s) (y, x) in section pixels.

        Cores on the image border extend to infinity outwards, so exactly one tile of the grid
        owns any point.  Works on scalars (bool) and arrays (bool array).
        """
        y0, x0, y1, x1 = self.core
        border = self.image_shape is not None
        height, width = self.image_shape if border else (0, 0)
        y, x = np.asarray(y, dtype=float), np.asarray(x, dtype=float)
        inside_y = ((y >= y0) | (border and y0 == 0)) & ((y < y1) | (border and y1 >= height))
        inside_x = ((x >= x0) | (border and x0 == 0)) & ((x < x1) | (border and x1 >= width))
        result = inside_y & inside_x
        return bool(result) if result.ndim == 0 else result

    # -- coordinates: tile (window) <-> section

    def points_to_section(self, points_yx: Any) -> np.ndarray:
        """(N, 2) points (y, x) in window pixels -> section pixels."""
        return np.asarray(points_yx, dtype=float).reshape(-1, 2) + np.array(self.offset, dtype=float)

    def points_to_tile(self, points_yx: Any) -> np.ndarray:
        """(N, 2) points (y, x) in section pixels -> window pixels."""
        return np.asarray(points_yx, dtype=float).reshape(-1, 2) - np.array(self.offset, dtype=float)

    def xy_to_section(self, xy: Any) -> np.ndarray:
        """(N, 2) vertices (x, y) (polygons) in window pixels -> section pixels."""
        return np.asarray(xy, dtype=float).reshape(-1, 2) + np.array(self.offset[::-1], dtype=float)

    def xy_to_tile(self, xy: Any) -> np.ndarray:
        """(N, 2) vertices (x, y) in section pixels -> window pixels."""
        return np.asarray(xy, dtype=float).reshape(-1, 2) - np.array(self.offset[::-1], dtype=float)

    def boxes_to_section(self, boxes: Any) -> np.ndarray:
        """(N, 4) boxes (x0, y0, x1, y1) in window pixels -> section pixels."""
        oy, ox = self.offset
        return np.asarray(boxes, dtype=float).reshape(-1, 4) + np.array([ox, oy, ox, oy], dtype=float)

    def boxes_to_tile(self, boxes: Any) -> np.ndarray:
        """(N, 4) boxes (x0, y0, x1, y1) in section pixels -> window pixels."""
        oy, ox = self.offset
        return np.asarray(boxes, dtype=float).reshape(-1, 4) - np.array([ox, oy, ox, oy], dtype=float)


class TileGrid:
    """Windows of ``tile_size`` pixels overlapping by ``overlap``, whose cores partition the image.

    Iterating gives the tiles row by row; ``len(grid)`` is their number.  ``tile_size`` and
    ``overlap`` may be an int or a (y, x) pair; ``overlap`` must be at most half the tile so
    that no pixel lies in more than two windows along an axis.
    """

    def __init__(self, height: int, width: int, tile_size: int | tuple[int, int] = 1024,
                 overlap: int | tuple[int, int] = 128, pad: str = "reflect") -> None:
        self.height, self.width = int(height), int(width)
        self.tile_size = _pair(tile_size, "tile_size")
        self.overlap = _pair(overlap, "overlap")
        if self.height < 1 or self.width < 1:
            raise ValueError(f"image shape must be positive, got {(height, width)}")
        for size, over in zip(self.tile_size, self.overlap):
            if size < 1 or over < 0 or 2 * over > size:
                raise ValueError(f"need tile_size >= 1 and 0 <= overlap <= tile_size / 2, "
                                 f"got tile_size={tile_size}, overlap={overlap}")
        if pad not in PAD_MODES:
            raise ValueError(f"pad must be one of {PAD_MODES}, got {pad!r}")
        self.pad = pad
        self.stride = (self.tile_size[0] - self.overlap[0], self.tile_size[1] - self.overlap[1])
        self.margin = (self.overlap[0] // 2, self.overlap[1] // 2)  # context before each core
        self.n_rows = math.ceil(self.height / self.stride[0])
        self.n_cols = math.ceil(self.width / self.stride[1])

    @classmethod
    def from_image(cls, image: Any, tile_size: int | tuple[int, int] = 1024,
                   overlap: int | tuple[int, int] = 128, pad: str = "reflect") -> TileGrid:
        """A grid over an :class:`~app.core.images.Image` (its info) or an array's last two axes."""
        info = getattr(image, "info", None)
        height, width = (info.height, info.width) if info is not None else np.shape(image)[-2:]
        return cls(height, width, tile_size, overlap, pad)

    def __repr__(self) -> str:
        return (f"TileGrid({self.height}, {self.width}, tile_size={self.tile_size}, "
                f"overlap={self.overlap}, pad={self.pad!r}: {self.n_rows} x {self.n_cols} tiles)")

    def __len__(self) -> int:
        return self.n_rows * self.n_cols

    def __iter__(self) -> Iterator[Tile]:
        for index in range(len(self)):
            yield self[index]

    def __getitem__(self, index: int) -> Tile:
        if not -len(self) <= index < len(self):
            raise IndexError(f"tile {index} of {len(self)}")
        row, col = divmod(index % len(self), self.n_cols)
        return self.tile(row, col)

    def tile(self, row: int, col: int) -> Tile:
        """The tile at grid position (row, col)."""
        if not (0 <= row < self.n_rows and 0 <= col < self.n_cols):
            raise IndexError(f"tile ({row}, {col}) outside a {self.n_rows} x {self.n_cols} grid")
        (sy, sx), (my, mx), (ty, tx) = self.stride, self.margin, self.tile_size
        cy0, cx0 = row * sy, col * sx
        core = (cy0, cx0, min(cy0 + sy, self.height), min(cx0 + sx, self.width))
        window = (cy0 - my, cx0 - mx, cy0 - my + ty, cx0 - mx + tx)
        return Tile(row * self.n_cols + col, row, col, core, window, (self.height, self.width))

    # -- ownership

    def owner_indices(self, y: Any, x: Any) -> np.ndarray:
        """Index of the tile owning each centre (y, x); points outside go to the nearest border tile."""
        y, x = np.asarray(y, dtype=float), np.asarray(x, dtype=float)
        row = np.clip(np.floor(y / self.stride[0]), 0, self.n_rows - 1).astype(int)
        col = np.clip(np.floor(x / self.stride[1]), 0, self.n_cols - 1).astype(int)
        return row * self.n_cols + col

    def owner(self, y: float, x: float) -> Tile:
        """The tile responsible for an object centred at (y, x)."""
        return self[int(self.owner_indices(y, x))]

    # -- reading

    def read(self, source: Any, tile: Tile, channel: Any = None, z: Any = None,
             pad: str | None = None) -> np.ndarray:
        """The window of ``tile`` from an Image (lazy region read) or an array (..., H, W).

        Returns ``(..., tile_h, tile_w)``; the part beyond the image is padded with ``pad``
        (default: the grid's).  ``channel``/``z`` select as in ``Image.read`` (Images only).
        """
        pad = pad or self.pad
        if pad not in PAD_MODES:
            raise ValueError(f"pad must be one of {PAD_MODES}, got {pad!r}")
        is_image = hasattr(source, "info") and hasattr(source, "read")
        if not is_image and (channel is not None or z is not None):
            raise ValueError("channel= and z= apply to Images; slice arrays before tiling them")
        shape = (source.info.height, source.info.width) if is_image else tuple(np.shape(source)[-2:])
        if shape != (self.height, self.width):
            raise ValueError(f"source is {shape[0]} x {shape[1]} but the grid is {self.height} x {self.width}")
        wy0, wx0, wy1, wx1 = tile.window
        inside = wy0 >= 0 and wx0 >= 0 and wy1 <= self.height and wx1 <= self.width
        if inside or pad == "zero":
            if is_image:
                return source.read(channel=channel, z=z, region=tile.window)
            return _zero_padded(source, tile.window)
        rows = reflect_indices(np.arange(wy0, wy1), self.height)
        cols = reflect_indices(np.arange(wx0, wx1), self.width)
        region = (int(rows.min()), int(cols.min()), int(rows.max()) + 1, int(cols.max()) + 1)
        if is_image:
            block = source.read(channel=channel, z=z, region=region)
        else:
            block = np.asarray(source[..., region[0]:region[2], region[1]:region[3]])
        return block[..., rows - region[0], :][..., cols - region[1]]

    def iter_read(self, source: Any, channel: Any = None, z: Any = None,
                  pad: str | None = None) -> Iterator[tuple[Tile, np.ndarray]]:
        """(tile, window pixels) for every tile, row by row; one window in memory at a time."""
        for tile in self:
            yield tile, self.read(source, tile, channel=channel, z=z, pad=pad)


def _pair(value: int | tuple[int, int], name: str) -> tuple[int, int]:
    """An int or a (y, x) pair as a pair of ints."""
    if isinstance(value, (int, np.integer)):
        return int(value), int(value)
    pair = tuple(int(v) for v in value)
    if len(pair) != 2:
        raise ValueError(f"{name} must be an int or a (y, x) pair, got {value!r}")
    return pair  # type: ignore[return-value]


def reflect_indices(indices: np.ndarray, n: int) -> np.ndarray:
    """Map any indices into 0..n-1 by mirroring at the borders without repeating the edge pixel."""
    indices = np.asarray(indices)
    if n == 1:
        return np.zeros_like(indices)
    period = 2 * (n - 1)
    folded = np.mod(indices, period)
    return np.where(folded >= n, period - folded, folded)


def _zero_padded(array: Any, window: Box) -> np.ndarray:
    """``array[..., window]`` with zeros where the window leaves the array."""
    height, width = np.shape(array)[-2:]
    y0, x0, y1, x1 = window
    cy0, cy1 = min(max(y0, 0), height), min(max(y1, 0), height)
    cx0, cx1 = min(max(x0, 0), width), min(max(x1, 0), width)
    block = np.asarray(array[..., cy0:cy1, cx0:cx1])
    pad = [(0, 0)] * (block.ndim - 2) + [(cy0 - y0, y1 - cy1), (cx0 - x0, x1 - cx1)]
    return np.pad(block, pad)


# ---------------------------------------------------------------------------------------- stitching


def ramp(length: int, blend: str = "cosine") -> np.ndarray:
    """Rising weights over an overlap of ``length`` pixels; ``ramp + ramp[::-1] == 1``."""
    t = (np.arange(length, dtype=np.float64) + 0.5) / max(length, 1)
    if blend == "cosine":
        return np.sin(0.5 * np.pi * t) ** 2
    if blend == "linear":
        return t
    raise ValueError(f"blend must be one of {BLENDS}, got {blend!r}")


def _axis_weights(size: int, overlap: int, index: int, count: int, core: tuple[int, int],
                  blend: str) -> np.ndarray:
    """1-D weights of one window along one axis (no ramp on the image-border sides)."""
    if blend == "none":
        weights = np.zeros(size)
        weights[core[0]:core[1]] = 1.0
        return weights
    weights = np.ones(size)
    if overlap:
        up = ramp(overlap, blend)
        if index > 0:
            weights[:overlap] = up
        if index < count - 1:
            weights[size - overlap:] = up[::-1]
    return weights


class Stitcher:
    """Blend window-sized probability maps into ``out`` (H, W) or (C, H, W), tile by tile.

    ``out`` may be any array supporting slice reads and writes (ndarray, ``np.memmap``, zarr);
    with ``clear=True`` it is zeroed first, in row bands.  Add every tile once with :meth:`add`;
    since the blending weights of overlapping windows sum to 1, ``out`` holds the normalised
    blend once all tiles are in.
    """

    def __init__(self, grid: TileGrid, out: Any, blend: str = "cosine", clear: bool = True) -> None:
        if blend not in BLENDS:
            raise ValueError(f"blend must be one of {BLENDS}, got {blend!r}")
        shape = tuple(out.shape)
        if len(shape) not in (2, 3) or shape[-2:] != (grid.height, grid.width):
            raise ValueError(f"out must be (H, W) or (C, H, W) with H, W = {grid.height}, {grid.width}; "
                             f"got {shape}")
        if np.dtype(out.dtype).kind != "f":
            raise ValueError(f"out must be a float array, got {out.dtype}")
        self.grid, self.out, self.blend = grid, out, blend
        self.added: set[int] = set()
        if clear:
            band = max(1, (64 << 20) // max(1, int(np.prod(shape[:-2])) * grid.width * 4))
            for y0 in range(0, grid.height, band):
                out[..., y0:y0 + band, :] = 0

    def weights(self, tile: Tile) -> np.ndarray:
        """The (tile_h, tile_w) float32 blending weights of one window."""
        g = self.grid
        cy0, cx0, cy1, cx1 = tile.core_in_window
        wy = _axis_weights(g.tile_size[0], g.overlap[0], tile.row, g.n_rows, (cy0, cy1), self.blend)
        wx = _axis_weights(g.tile_size[1], g.overlap[1], tile.col, g.n_cols, (cx0, cx1), self.blend)
        return np.outer(wy, wx).astype(np.float32)

    def add(self, tile: Tile, prob: np.ndarray) -> None:
        """Add one window's map, (tile_h, tile_w) or (C, tile_h, tile_w), weighted, into ``out``."""
        prob = np.asarray(prob, dtype=np.float32)
        expected = tuple(self.out.shape[:-2]) + tile.shape
        if prob.shape != expected:
            raise ValueError(f"tile {tile.index}: map of shape {prob.shape}, expected {expected}")
        if tile.index in self.added:
            raise ValueError(f"tile {tile.index} was already added")
        wy0, wx0, wy1, wx1 = tile.window
        y0, x0 = max(wy0, 0), max(wx0, 0)
        y1, x1 = min(wy1, self.grid.height), min(wx1, self.grid.width)
        weighted = (prob * self.weights(tile))[..., y0 - wy0:y1 - wy0, x0 - wx0:x1 - wx0]
        self.out[..., y0:y1, x0:x1] = np.asarray(self.out[..., y0:y1, x0:x1]) + weighted
        self.added.add(tile.index)

    @property
    def complete(self) -> bool:
        """Whether every tile of the grid has been added."""
        return len(self.added) == len(self.grid)

    def finish(self) -> Any:
        """Return ``out``; ValueError if some tiles were never added (their pixels would be 0)."""
        missing = len(self.grid) - len(self.added)
        if missing:
            raise ValueError(f"{missing} of {len(self.grid)} tiles were not added")
        flush = getattr(self.out, "flush", None)
        if flush is not None:
            flush()
        return self.out


def stitch(grid: TileGrid, maps: Iterable[tuple[Tile, np.ndarray]], out: Any, blend: str = "cosine") -> Any:
    """Blend (tile, map) pairs for every tile of ``grid`` into ``out``; returns ``out``."""
    stitcher = Stitcher(grid, out, blend=blend)
    for tile, prob in maps:
        stitcher.add(tile, prob)
    return stitcher.finish()


# ---------------------------------------------------------------------------------------- rotations


def rotate90(array: np.ndarray, k: int) -> np.ndarray:
    """``np.rot90`` on the last two axes (so (C, H, W) stacks rotate per channel)."""
    return np.rot90(array, k, axes=(-2, -1))


def unrotate90(array: np.ndarray, k: int) -> np.ndarray:
    """Undo :func:`rotate90` with the same ``k``."""
    return np.rot90(array, -k, axes=(-2, -1))


def rotated_shape(shape: tuple[int, int], k: int) -> tuple[int, int]:
    """(H, W) after rotating by ``k`` quarter turns."""
    height, width = shape[-2:]
    return (width, height) if k % 2 else (height, width)


def rotate_xy(xy: Any, k: int, shape: tuple[int, int]) -> np.ndarray:
    """(N, 2) continuous (x, y) coordinates (box corners, polygon vertices, pixel i spans
    [i, i+1)) in an image of ``shape`` -> the same points in ``rotate90(image, k)``."""
    out = np.array(xy, dtype=float).reshape(-1, 2)
    height, width = shape[-2:]
    for _ in range(k % 4):  # one counter-clockwise quarter turn: (x, y) -> (y, W - x)
        out = np.stack([out[:, 1], width - out[:, 0]], axis=1)
        height, width = width, height
    return out


def unrotate_xy(xy: Any, k: int, shape: tuple[int, int]) -> np.ndarray:
    """Undo :func:`rotate_xy`; ``shape`` is the original (unrotated) image's."""
    return rotate_xy(xy, -k, rotated_shape(shape, k))


def rotate_points(points_yx: Any, k: int, shape: tuple[int, int]) -> np.ndarray:
    """(N, 2) array-index points (y, x) in an image of ``shape`` -> indices in ``rotate90(image, k)``."""
    out = np.array(points_yx, dtype=float).reshape(-1, 2)
    height, width = shape[-2:]
    for _ in range(k % 4):  # rot90: out[i, j] = in[j, W - 1 - i], so (y, x) -> (W - 1 - x, y)
        out = np.stack([width - 1 - out[:, 1], out[:, 0]], axis=1)
        height, width = width, height
    return out


def unrotate_points(points_yx: Any, k: int, shape: tuple[int, int]) -> np.ndarray:
    """Undo :func:`rotate_points`; ``shape`` is the original (unrotated) image's."""
    return rotate_points(points_yx, -k, rotated_shape(shape, k))


def rotate_boxes(boxes: Any, k: int, shape: tuple[int, int]) -> np.ndarray:
    """(N, 4) boxes (x0, y0, x1, y1) in an image of ``shape`` -> boxes in ``rotate90(image, k)``."""
    boxes = np.asarray(boxes, dtype=float).reshape(-1, 4)
    first = rotate_xy(boxes[:, :2], k, shape)
    second = rotate_xy(boxes[:, 2:], k, shape)
    return np.concatenate([np.minimum(first, second), np.maximum(first, second)], axis=1)


def unrotate_boxes(boxes: Any, k: int, shape: tuple[int, int]) -> np.ndarray:
    """Undo :func:`rotate_boxes`: boxes found in ``rotate90(image, k)`` back in the image of ``shape``."""
    return rotate_boxes(boxes, -k, rotated_shape(shape, k))
