"""TIFF, OME-TIFF and ImageJ hyperstacks through tifffile: pixels stay on disk, read region by region."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from app.core.errors import ImageError
from app.core.image_axes import axis_length, map_axes
from app.core.image_metadata import list_channel_names, tiff_metadata
from app.core.lazy_image import Image, ImageInfo
from app.core.pixel_checks import check_dtype


def open_tiff(path: Path, axes_override: str | None) -> Image:
    """Open a TIFF through tifffile, map its axes, and wrap each level as a lazy array."""
    import tifffile

    try:
        tif = tifffile.TiffFile(path)
    except Exception as error:
        raise ImageError(f"{path}: not a readable TIFF ({type(error).__name__}: {error}); "
                         "the file may be truncated or corrupt") from error
    closers: list[Callable[[], None]] = [tif.close]
    try:
        try:
            series = tif.series[0]
            page = series.keyframe
            native_axes, native_shape = series.axes, tuple(series.shape)
            series_levels = list(series.levels)
        except Exception as error:
            raise ImageError(f"{path}: cannot parse the TIFF structure ({type(error).__name__}: "
                             f"{error}); the file may be truncated or corrupt") from error
        check_dtype(path, series.dtype)
        photometric = int(page.photometric)
        rgb = photometric in (2, 6)  # RGB, YCbCr (decoded to RGB)
        alpha = bool(page.extrasamples) and int(page.extrasamples[0]) in (1, 2)
        layout = map_axes(path, native_axes, native_shape, axes_override, rgb, alpha)
        meta = tiff_metadata(tif, series, page)
        from_samples = "C" in layout.roles and native_axes[layout.roles.index("C")] == "S"
        names = list_channel_names(meta.get("channel_names"), axis_length(layout, "C"), rgb=rgb and from_samples)
        level_shapes = []
        arrays = []
        for number, level in enumerate(series_levels):
            shape = tuple(level.shape)
            if len(shape) != len(native_shape) or any(
                    s != n for s, n, r in zip(shape, native_shape, layout.roles) if r not in "YX"):
                break  # a level that does not match the full resolution: ignore it and below
            _check_complete(path, tif, level)
            arrays.append(_level_array(tif, series, level, number, closers))
            level_shapes.append((shape[layout.roles.index("Y")], shape[layout.roles.index("X")]))
        kind = getattr(series, "kind", "")
        fmt = "ome-tiff" if kind == "ome" else "imagej-tiff" if kind == "imagej" else "tiff"
        info = ImageInfo(path=str(path), format=fmt, shape=layout.shape, dtype=np.dtype(series.dtype).newbyteorder("="),
                         axes=layout.axes, channel_names=names, pixel_size_um=meta.get("pixel_size_um"),
                         levels=tuple(level_shapes), z_spacing_um=meta.get("z_spacing_um"))
        return Image(info, layout, arrays, closers)
    except BaseException:
        for closer in reversed(closers):
            try:
                closer()
            except Exception:
                pass
        raise


def _level_array(tif: Any, series: Any, level: Any, number: int, closers: list[Callable[[], None]]) -> Any:
    """A lazy array for one level: a memory map for raw contiguous data, else a zarr array.

    tifffile sets ``dataoffset`` only for uncompressed data stored contiguously, which a memory
    map reads at no cost; everything else goes through tifffile's Zarr store, whose chunks are
    the file's own strips or tiles, so a region read decodes only the chunks it touches.
    """
    import zarr

    offset = getattr(level, "dataoffset", None)
    if offset is not None and np.dtype(level.dtype).kind != "b":
        dtype = np.dtype(level.dtype).newbyteorder(tif.byteorder)
        return np.memmap(tif.filehandle.path, dtype=dtype, mode="r", offset=offset, shape=tuple(level.shape))
    store = series.aszarr(level=number, squeeze=True)
    closers.append(store.close)
    array = zarr.open_array(store, mode="r")
    if tuple(array.shape) != tuple(level.shape):
        raise ImageError(f"{tif.filehandle.path}: level {number} reads as {array.shape}, expected {level.shape}")
    return array


def _check_complete(path: Path, tif: Any, level: Any) -> None:
    """ImageError when a level's strips/tiles point past the end of the file (a truncated copy)."""
    size = tif.filehandle.size
    end = 0
    offset = getattr(level, "dataoffset", None)
    if offset is not None:
        end = offset + int(np.prod(level.shape)) * np.dtype(level.dtype).itemsize
    else:
        for page in level.pages:
            if page is None:
                continue
            for o, n in zip(page.dataoffsets, page.databytecounts):
                if n:
                    end = max(end, o + n)
    if end > size:
        raise ImageError(f"{path}: the file is truncated ({size} bytes, its pixel data runs to "
                         f"{end}); copy it again")
