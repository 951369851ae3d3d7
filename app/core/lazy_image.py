"""The Image type: what an open image holds (:class:`ImageInfo`) and lazy region reads in C, Z, Y, X.

Readers (:mod:`app.core.tiff_reader`, :mod:`app.core.pillow_reader`, :mod:`app.core.readers`
through :func:`app.core.images.open_image`) build an :class:`Image` from native array-likes and a
:class:`~app.core.image_axes.Layout`; :meth:`Image.read` indexes them and reorders the axes.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Union

import numpy as np

from app.core.errors import ImageError
from app.core.image_axes import Layout
from app.core.memory_guard import check_fits_memory
from app.core.pixel_checks import check_finite

PathLike = Union[str, "os.PathLike[str]"]
Region = tuple[int, int, int, int]
ChannelKey = Union[int, str]


# ---------------------------------------------------------------------------------------- info


@dataclass(frozen=True)
class ImageInfo:
    """What an image holds, with axes normalised to a subset of C, Z, Y, X (in that order)."""

    path: str
    format: str  # "ome-tiff", "imagej-tiff", "tiff", "png" or "jpeg"
    shape: tuple[int, ...]
    dtype: np.dtype
    axes: str
    channel_names: tuple[str, ...]
    pixel_size_um: float | None
    levels: tuple[tuple[int, int], ...]  # (height, width) of each resolution, full first
    z_spacing_um: float | None = None
    scene: int = 0  # 0-based scene of a multi-scene file (CZI, LIF, ND2)
    scenes: tuple[str, ...] = ()  # names of all the file's scenes (empty: one image per file)

    @property
    def height(self) -> int:
        """Rows of the full-resolution image."""
        return self.shape[-2]

    @property
    def width(self) -> int:
        """Columns of the full-resolution image."""
        return self.shape[-1]

    @property
    def n_channels(self) -> int:
        """Number of channels (1 when there is no C axis)."""
        return self.shape[self.axes.index("C")] if "C" in self.axes else 1

    @property
    def n_planes(self) -> int:
        """Number of z-planes (1 when there is no Z axis)."""
        return self.shape[self.axes.index("Z")] if "Z" in self.axes else 1

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready values (for the CLI's ``info`` and the project file)."""
        return {
            "path": self.path, "format": self.format, "shape": list(self.shape),
            "dtype": str(self.dtype), "axes": self.axes, "height": self.height, "width": self.width,
            "n_channels": self.n_channels, "channel_names": list(self.channel_names),
            "n_planes": self.n_planes, "pixel_size_um": self.pixel_size_um,
            "z_spacing_um": self.z_spacing_um, "levels": [list(level) for level in self.levels],
            "scene": self.scene, "scenes": list(self.scenes),
        }



# ---------------------------------------------------------------------------------------- image


class Image:
    """An open image: :attr:`info` plus lazy :meth:`read`; close it (or use ``with``) when done.

    Reads from several threads are serialised by tifffile's file lock; use one Image per
    thread for parallel decoding.
    """

    def __init__(self, info: ImageInfo, layout: Layout, levels: Sequence[Any],
                 closers: Sequence[Callable[[], None]] = (), loader: Callable[[], Any] | None = None) -> None:
        self.info = info
        self._layout = layout
        self._levels = list(levels)  # array-likes in native axis order, one per level
        self._closers = list(closers)
        self._loader = loader  # decodes the whole image on first read (Pillow images)
        self.closed = False

    # -- context manager

    def __enter__(self) -> Image:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        """Release the file (idempotent)."""
        if self.closed:
            return
        self.closed = True
        self._levels = []
        for closer in reversed(self._closers):
            try:
                closer()
            except Exception:  # closing must not mask the caller's error
                pass

    def __repr__(self) -> str:
        i = self.info
        return f"Image({i.path!r}, axes={i.axes!r}, shape={i.shape}, dtype={i.dtype})"

    # -- selections

    def channel_index(self, channel: ChannelKey) -> int:
        """Index of a channel given by name or index; ImageError listing the channels if absent."""
        names = self.info.channel_names
        if isinstance(channel, (int, np.integer)) and not isinstance(channel, bool):
            if 0 <= int(channel) < len(names):
                return int(channel)
        elif isinstance(channel, str):
            hits = [i for i, name in enumerate(names) if name == channel]
            if len(hits) == 1:
                return hits[0]
            if len(hits) > 1:
                raise ImageError(f"{self.info.path}: channel name {channel!r} is used by channels "
                                 f"{hits}; give an index instead")
            folded = [i for i, name in enumerate(names) if name.casefold() == channel.casefold()]
            if len(folded) == 1:
                return folded[0]
        raise ImageError(f"{self.info.path}: no channel {channel!r}; the image has {len(names)} "
                         f"channel(s): {_listing(names)}")

    def _plane_index(self, z: int) -> int:
        n = self.info.n_planes
        if isinstance(z, (int, np.integer)) and not isinstance(z, bool) and 0 <= int(z) < n:
            return int(z)
        raise ImageError(f"{self.info.path}: no z-plane {z!r}; the image has {n} plane(s), 0 to {n - 1}")

    def _selection(self, key: Any, resolve: Callable[[Any], int]) -> tuple[list[int] | None, bool]:
        """(indices or None for all, whether the axis is dropped) for a channel/plane argument."""
        if key is None:
            return None, False
        if isinstance(key, (str, int, np.integer)):
            return [resolve(key)], True
        return [resolve(k) for k in key], False

    # -- reading

    def read(self, channel: ChannelKey | Sequence[ChannelKey] | None = None,
             z: int | Sequence[int] | None = None, region: Region | None = None,
             level: int = 0, *, finite: bool = True, work_bytes_per_pixel: int = 0) -> np.ndarray:
        """Pixels as a numpy array with axes C, Z, Y, X minus those selected away.

        ``channel``: name or index (axis dropped), a list of them (axis kept) or None (all).
        ``z``: plane index, list, or None.  ``region`` = (y0, x0, y1, x1) in the pixels of
        ``level``; it may extend beyond the image (zero padded) but must overlap it.
        Only the tiles/strips the region touches are decoded.

        Before decoding, a read that would not fit the memory free on this computer (the
        decoded array plus ``work_bytes_per_pixel`` per pixel the caller needs to work on it)
        is refused with an ImageError giving the size.  With ``finite`` (the default) floating-point
        pixels that are NaN or infinite are refused with an ImageError counting them, so no
        pipeline silently finds nothing in them; tiled readers get that check tile by tile.
        """
        if self.closed:
            raise ImageError(f"{self.info.path}: the image was closed")
        levels = self.info.levels
        if not isinstance(level, (int, np.integer)) or not 0 <= level < len(levels):
            raise ImageError(f"{self.info.path}: no resolution level {level!r}; the image has "
                             f"{len(levels)} level(s)")
        height, width = levels[level]
        channels, drop_c = self._selection(channel, self.channel_index)
        planes, drop_z = self._selection(z, self._plane_index)
        y0, x0, y1, x1 = _check_region(self.info.path, region, height, width)
        cy0, cx0, cy1, cx1 = max(y0, 0), max(x0, 0), min(y1, height), min(x1, width)
        n_c = self.info.n_channels if channels is None else len(channels)
        n_z = self.info.n_planes if planes is None else len(planes)
        check_fits_memory(self.info.path, y1 - y0, x1 - x0, self.info.dtype, n_c * n_z, work_bytes_per_pixel)
        try:
            data = self._read_native(level, channels, drop_c, planes, drop_z, (cy0, cx0, cy1, cx1))
        except ImageError:
            raise
        except Exception as error:  # tifffile/zarr/codec errors on a damaged file
            raise ImageError(f"{self.info.path}: cannot decode the pixels ({type(error).__name__}: "
                             f"{error}); the file may be truncated or corrupt") from error
        if finite and data.dtype.kind == "f":
            whole = (cy0, cx0, cy1, cx1) == (0, 0, height, width)
            check_finite(self.info.path, data, None if whole else (cy0, cx0, cy1, cx1))
        if channels is not None and not drop_c and "C" not in self.info.axes:
            data = data[np.newaxis]  # a list of channels asked of a one-channel image
        if planes is not None and not drop_z and "Z" not in self.info.axes:
            data = np.expand_dims(data, data.ndim - 2)
        if (cy0, cx0, cy1, cx1) != (y0, x0, y1, x1):
            pad = [(0, 0)] * (data.ndim - 2) + [(cy0 - y0, y1 - cy1), (cx0 - x0, x1 - cx1)]
            data = np.pad(data, pad)
        return data

    def _read_native(self, level: int, channels: list[int] | None, drop_c: bool,
                     planes: list[int] | None, drop_z: bool, region: Region) -> np.ndarray:
        """Index the native array of ``level`` and reorder its axes to C, Z, Y, X."""
        if self._loader is not None and not self._levels:  # Pillow decodes the whole picture, whatever the region
            check_fits_memory(self.info.path, self.info.height, self.info.width, self.info.dtype,
                              self.info.n_channels * self.info.n_planes)
            self._levels = [self._loader()]
        array = self._levels[level]
        layout = self._layout
        y0, x0, y1, x1 = region
        index: list[Any] = []
        kept: list[str] = []
        for role in layout.roles:
            if role == "Y":
                index.append(slice(y0, y1))
            elif role == "X":
                index.append(slice(x0, x1))
            elif role == "C":
                native = [layout.channel_indices[i] for i in channels] if channels is not None \
                    else list(layout.channel_indices)
                index.append(native[0] if drop_c else _as_slice(native))
            elif role == "Z":
                index.append(planes[0] if drop_z else _as_slice(planes) if planes is not None else slice(None))
            else:
                index.append(0)
            if not (role == "" or (role == "C" and drop_c) or (role == "Z" and drop_z)):
                kept.append(role)
        data = _orthogonal_index(array, tuple(index))
        order = [kept.index(a) for a in "CZYX" if a in kept]
        data = np.asarray(data).transpose(order)
        if not data.dtype.isnative:
            data = data.astype(data.dtype.newbyteorder("="))
        if isinstance(array, np.ndarray):  # a memory map or a cached decode: hand out a copy
            return np.array(data, order="C")
        return np.ascontiguousarray(data)



# -- reading helpers


def _check_region(path: str, region: Any, height: int, width: int) -> Region:
    """Validate (y0, x0, y1, x1): integers, non-empty and overlapping the image."""
    if region is None:
        return 0, 0, height, width
    try:
        values = [int(v) for v in region]
        exact = all(v == r for v, r in zip(values, region))
    except (TypeError, ValueError):
        values, exact = [], False
    if len(values) != 4 or not exact:
        raise ImageError(f"{path}: a region is four whole numbers (y0, x0, y1, x1), got {region!r}")
    y0, x0, y1, x1 = values
    if y1 <= y0 or x1 <= x0:
        raise ImageError(f"{path}: empty region {tuple(values)} (y1 must exceed y0 and x1 exceed x0)")
    if y1 <= 0 or x1 <= 0 or y0 >= height or x0 >= width:
        raise ImageError(f"{path}: region {tuple(values)} lies outside the image "
                         f"({height} x {width} pixels)")
    return y0, x0, y1, x1


def _as_slice(indices: list[int]) -> slice | list[int]:
    """A slice for consecutive indices (basic indexing is cheaper), else the list itself."""
    if indices and indices == list(range(indices[0], indices[-1] + 1)):
        return slice(indices[0], indices[-1] + 1)
    return indices


def _orthogonal_index(array: Any, index: tuple[Any, ...]) -> np.ndarray:
    """Index each axis independently (lists allowed on several axes) for zarr and numpy arrays."""
    if not any(isinstance(i, list) for i in index):
        return array[index]
    if hasattr(array, "oindex"):
        return array.oindex[index]
    basic = tuple(slice(None) if isinstance(i, list) else i for i in index)
    data = array[basic]
    axis = 0
    for i in index:
        if isinstance(i, list):
            data = np.take(data, i, axis=axis)
        if not isinstance(i, (int, np.integer)):
            axis += 1
    return data


def _listing(names: Sequence[str]) -> str:
    """'0: DAPI, 1: SOX9' for error messages."""
    return ", ".join(f"{i}: {name}" for i, name in enumerate(names))
