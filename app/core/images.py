"""Open microscopy images lazily: channels, z-planes, scenes, pixel size, pyramid levels.

Reading
    :func:`open_image` returns an :class:`Image` (a context manager).  TIFF, OME-TIFF and ImageJ
    hyperstacks are read through ``tifffile``: the pixels stay on disk and
    :meth:`Image.read` decodes only the strips/tiles a region touches (tifffile's Zarr 3 store,
    ``series.aszarr(level=...)``, opened with ``zarr``; uncompressed contiguous data is
    memory-mapped instead).  PNG and JPEG go through Pillow and are decoded whole on first read
    (they are small; Pillow cannot decode a region).  CZI, OME-Zarr, ND2, LIF and whole-slide
    scans (SVS, NDPI, SCN) are read by their own libraries through :mod:`app.core.readers`.

    Every image is presented with *normalised axes*, a subset of ``C, Z, Y, X`` in that order:
    singleton axes (T=1, ...) are dropped, RGB samples ``S`` become channels ``R, G, B`` (alpha
    is dropped), other sample axes become channels ``C0, C1, ...``.  A length > 1 axis that
    tifffile cannot name (``Q`` for unknown, ``I`` for a plain page sequence) is read as channels
    (or as z-planes when there already is a channel axis); ``open_image(path, axes="ZYX")``
    overrides that guess.  A time series (T > 1) and other axes (angles, phases, lifetimes ...)
    are refused with an :class:`~app.core.errors.ImageError`.

    Pixel size in micrometres comes from OME ``PhysicalSizeX`` (with its unit), ImageJ's
    ``unit`` plus the XResolution tag, or plain TIFF XResolution when ResolutionUnit is
    centimetre or inch (also PNG/JPEG dpi); otherwise it is None ("unknown": lengths stay in
    pixels).  Not a calibration, so also None: resolution tags that are absent (Pillow writes
    none, and tifffile then reports its 1 pixel per inch default), a missing ResolutionUnit,
    72 and 96 dpi (the defaults image editors write), and any size outside
    :data:`PIXEL_SIZE_RANGE_UM`.

Where each part lives (every public name is importable from here):
    :mod:`app.core.lazy_image` the :class:`Image` type and its region reads;
    :mod:`app.core.tiff_reader` and :mod:`app.core.pillow_reader` the TIFF and PNG/JPEG readers;
    :mod:`app.core.image_axes` the native -> C, Z, Y, X mapping; :mod:`app.core.image_metadata`
    calibration and channel names; :mod:`app.core.pixel_checks` dtype, NaN and label-id checks;
    :mod:`app.core.memory_guard` the size guard; :mod:`app.core.formats` suffixes and scene names.

Writing is :mod:`app.core.tiff_writer` (:func:`write_tiff`, re-exported here).

All errors a user can act on (missing or corrupt file, unsupported axes, missing channel, wrong
data type, region outside the image) are :class:`ImageError` whose message names the file.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from app.core.errors import ImageError, UserError
from app.core.formats import IMAGE_SUFFIXES, image_format, is_image_path, scene_ref, split_scene
from app.core.image_axes import axis_length, map_axes
from app.core.image_metadata import PIXEL_SIZE_RANGE_UM, RGB_NAMES, SCREEN_DPI, list_channel_names, plausible_pixel_size
from app.core.lazy_image import ChannelKey, Image, ImageInfo, PathLike, Region
from app.core.memory_guard import DEFAULT_MEMORY_LIMIT, SMALL_READ_BYTES, available_memory, check_fits_memory
from app.core.pillow_reader import open_pillow
from app.core.pixel_checks import check_dtype, label_ids
from app.core.readers import open_library_image, scene_names
from app.core.tiff_reader import open_tiff
from app.core.tiff_writer import TileSource, halve, write_tiff

__all__ = [  # the names callers import from here, wherever they live
    "ChannelKey", "DEFAULT_MEMORY_LIMIT", "IMAGE_SUFFIXES", "Image", "ImageError", "ImageInfo", "LIBRARY_FORMATS",
    "PIXEL_SIZE_RANGE_UM", "PathLike", "RGB_NAMES", "Region", "SCREEN_DPI", "SMALL_READ_BYTES", "TileSource",
    "UserError", "available_memory", "check_fits_memory", "halve", "image_format", "is_image_path", "label_ids",
    "list_channel_names", "list_images", "open_image", "plausible_pixel_size", "read_image", "require_dtype",
    "split_scene", "write_tiff",
]


def list_images(path: Path) -> list[Path]:
    """The images of a folder (sorted) or of one file: each scene of a multi-scene file apart
    (``file.czi#scene-2``); a missing path is a user error."""
    path = Path(path)
    if path.is_dir() and not is_image_path(path):
        files = sorted(p for p in path.iterdir() if is_image_path(p))
        if not files:
            raise UserError(f"{path}: no image files ({', '.join(IMAGE_SUFFIXES)}) in this folder")
        return [scene for f in files for scene in _scenes_of(f)]
    if not split_scene(path)[0].exists():
        raise UserError(f"{path}: no such file or folder")
    return _scenes_of(path)


def _scenes_of(path: Path) -> list[Path]:
    """``[path]``, or one ``path#scene-N`` per scene of a multi-scene file (library formats only)."""
    if split_scene(path)[1] is not None or image_format(path) not in LIBRARY_FORMATS:
        return [path]
    count = len(scene_names(path))
    return [path] if count < 2 else [Path(scene_ref(path, i)) for i in range(count)]


def open_image(path: PathLike, axes: str | None = None) -> Image:
    """Open an image lazily; ImageError if it cannot be used.

    TIFF/OME-TIFF/ImageJ TIFF, PNG and JPEG are read here; CZI, OME-Zarr, ND2, LIF, VSI
    and whole-slide scans through their libraries (:mod:`app.core.readers`).  ``file.czi#scene-2``
    opens the second scene of a multi-scene file.  ``axes`` overrides the axes guessed for the
    file's non-singleton dimensions in file order, e.g. ``"ZYX"`` for a plain multi-page TIFF
    that is a z-stack rather than channels.
    """
    path, scene = split_scene(path)
    if not path.exists():
        raise ImageError(f"{path}: no such file")
    fmt = image_format(path)
    if fmt in LIBRARY_FORMATS:
        return _from_library(open_library_image(path, scene), axes)
    if path.is_dir():
        raise ImageError(f"{path}: is a folder, not an image file")
    if scene:
        raise ImageError(f"{path}: has one scene only; open it without '#scene-{scene + 1}'")
    try:
        with open(path, "rb") as handle:
            magic = handle.read(8)
    except OSError as error:
        raise ImageError(f"{path}: cannot read the file ({error.strerror or error})") from error
    if magic[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return open_tiff(path, axes)
    if magic.startswith(b"\x89PNG\r\n\x1a\n"):
        return open_pillow(path, "png", axes)
    if magic.startswith(b"\xff\xd8\xff"):
        return open_pillow(path, "jpeg", axes)
    if not magic:
        raise ImageError(f"{path}: the file is empty")
    raise ImageError(f"{path}: not a TIFF, PNG or JPEG image")


LIBRARY_FORMATS = ("czi", "ome-zarr", "nd2", "lif", "vsi", "whole-slide")


def _from_library(found: Any, axes: str | None) -> Image:
    """An Image from what a reading library found (:class:`app.core.readers.LibraryImage`); closes it on failure."""
    try:
        levels = found.levels
        dtype = np.dtype(levels[0].dtype)
        check_dtype(found.path, dtype)
        layout = map_axes(found.path, found.axes, tuple(int(s) for s in levels[0].shape), axes, rgb=found.rgb,
                           alpha=False)
        y, x = found.axes.index("Y"), found.axes.index("X")
        info = ImageInfo(
            path=found.ref, format=found.format, shape=layout.shape, dtype=dtype.newbyteorder("="), axes=layout.axes,
            channel_names=list_channel_names(found.channel_names, axis_length(layout, "C"), rgb=found.rgb),
            pixel_size_um=found.pixel_size_um, z_spacing_um=found.z_spacing_um,
            levels=tuple((int(a.shape[y]), int(a.shape[x])) for a in levels), scene=found.scene, scenes=found.scenes)
    except BaseException:
        for close in found.closers:
            close()
        raise
    return Image(info, layout, list(levels), list(found.closers))


def read_image(path: PathLike, channel: ChannelKey | Sequence[ChannelKey] | None = None,
               z: int | Sequence[int] | None = None) -> np.ndarray:
    """Read a whole (small) image at once, see :meth:`Image.read`."""
    with open_image(path) as image:
        return image.read(channel=channel, z=z)


def require_dtype(image: Image | ImageInfo, allowed: Iterable[Any], purpose: str = "this step") -> np.dtype:
    """Return the image's dtype, or raise ImageError naming the file when it is not ``allowed``."""
    info = image.info if isinstance(image, Image) else image
    wanted = [np.dtype(d) for d in allowed]
    if info.dtype not in wanted:
        raise ImageError(f"{info.path}: pixels are {info.dtype}, but {purpose} needs "
                         f"{' or '.join(str(d) for d in wanted)}; convert the image first")
    return info.dtype
