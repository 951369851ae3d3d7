"""Open microscopy images lazily and write OME-TIFF: channels, z-planes, pixel size, pyramids.

Reading
    :func:`open_image` returns an :class:`Image` (a context manager).  TIFF, OME-TIFF and ImageJ
    hyperstacks are read through ``tifffile``: the pixels stay on disk and
    :meth:`Image.read` decodes only the strips/tiles a region touches (tifffile's Zarr 3 store,
    ``series.aszarr(level=...)``, opened with ``zarr``; uncompressed contiguous data is
    memory-mapped instead).  PNG and JPEG go through Pillow and are decoded whole on first read
    (they are small; Pillow cannot decode a region).

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

Writing
    :func:`write_tiff` writes a tiled OME-TIFF atomically (temporary file beside the target,
    then ``os.replace``), optionally with 2x sub-resolution levels (SubIFDs).  Data may be an
    array (in memory, ``np.memmap`` or zarr), a callable ``region(y0, x0, y1, x1)`` or an iterator
    of tiles, so a 20000 x 20000 section can be written without holding it in memory.

    Compression: ``zlib`` (Adobe deflate) level 1 with the TIFF horizontal predictor by default.
    It is lossless and read by every TIFF reader (Fiji/Bio-Formats, QuPath, libtiff), and on real
    fluorescence and brightfield data here it shrinks files ~2.2-2.4x while encoding at
    ~100-300 MB/s and decoding at ~300 MB/s per core; higher zlib levels gain < 5 % size for
    10x slower writes, and zstd is not read by older Bio-Formats.  ``compression=None`` writes
    raw tiles (fastest, largest).

All errors a user can act on (missing or corrupt file, unsupported axes, missing channel, wrong
data type, region outside the image) are :class:`ImageError` whose message names the file.
"""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import numpy as np

from app.core.atomic import atomic_path
from app.core.errors import ImageError, UserError

PathLike = Union[str, "os.PathLike[str]"]
Region = tuple[int, int, int, int]
ChannelKey = Union[int, str]

IMAGE_SUFFIXES = (".tif", ".tiff", ".ome.tif", ".ome.tiff", ".png", ".jpg", ".jpeg")
SCREEN_DPI = (72.0, 96.0)  # editors' default resolutions: not a microscope calibration
# pixel sizes a microscope image can have (1 nm for super-resolution ... 100 µm for a slide overview);
# outside it a value is a default or a unit mix-up (1 pixel per inch = 25 400 µm), not a calibration
PIXEL_SIZE_RANGE_UM = (1e-3, 100.0)
RGB_NAMES = ("R", "G", "B")

# micrometres per unit, for OME units, ImageJ 'unit' strings and TIFF resolution units
_UM_PER_UNIT = {
    "um": 1.0, "µm": 1.0, "μm": 1.0, "micron": 1.0, "microns": 1.0, "micrometer": 1.0,
    "micrometre": 1.0, "micrometers": 1.0, "micrometres": 1.0,
    "nm": 1e-3, "nanometer": 1e-3, "nanometre": 1e-3, "å": 1e-4, "angstrom": 1e-4, "pm": 1e-6,
    "mm": 1e3, "millimeter": 1e3, "millimetre": 1e3, "cm": 1e4, "centimeter": 1e4,
    "centimetre": 1e4, "m": 1e6, "meter": 1e6, "metre": 1e6, "in": 25400.0, "inch": 25400.0,
    "inches": 25400.0,
}


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
        }


@dataclass(frozen=True)
class _Layout:
    """How the file's native axes map onto the normalised ones."""

    roles: tuple[str, ...]  # per native axis: "C", "Z", "Y", "X" or "" (length 1, index 0)
    channel_indices: tuple[int, ...]  # native indices kept along the C axis (alpha dropped)
    axes: str  # normalised axes
    shape: tuple[int, ...]  # normalised shape (level 0)


# ---------------------------------------------------------------------------------------- image


class Image:
    """An open image: :attr:`info` plus lazy :meth:`read`; close it (or use ``with``) when done.

    Reads from several threads are serialised by tifffile's file lock; use one Image per
    thread for parallel decoding.
    """

    def __init__(self, info: ImageInfo, layout: _Layout, levels: Sequence[Any],
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
            _check_finite(self.info.path, data, None if whole else (cy0, cx0, cy1, cx1))
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


# ---------------------------------------------------------------------------------------- open


def list_images(path: Path) -> list[Path]:
    """The image files of a folder (sorted), or the file itself; a missing path is a user error."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not files:
            raise UserError(f"{path}: no image files ({', '.join(IMAGE_SUFFIXES)}) in this folder")
        return files
    if not path.exists():
        raise UserError(f"{path}: no such file or folder")
    return [path]


def open_image(path: PathLike, axes: str | None = None) -> Image:
    """Open a TIFF / OME-TIFF / ImageJ TIFF / PNG / JPEG lazily; ImageError if it cannot be used.

    ``axes`` overrides the axes guessed for the file's non-singleton dimensions in file order,
    e.g. ``"ZYX"`` for a plain multi-page TIFF that is a z-stack rather than channels.
    """
    path = Path(path)
    if not path.exists():
        raise ImageError(f"{path}: no such file")
    if path.is_dir():
        raise ImageError(f"{path}: is a folder, not an image file")
    try:
        with open(path, "rb") as handle:
            magic = handle.read(8)
    except OSError as error:
        raise ImageError(f"{path}: cannot read the file ({error.strerror or error})") from error
    if magic[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return _open_tiff(path, axes)
    if magic.startswith(b"\x89PNG\r\n\x1a\n"):
        return _open_pillow(path, "png", axes)
    if magic.startswith(b"\xff\xd8\xff"):
        return _open_pillow(path, "jpeg", axes)
    if not magic:
        raise ImageError(f"{path}: the file is empty")
    raise ImageError(f"{path}: not a TIFF, PNG or JPEG image")


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


def label_ids(labels: np.ndarray, path: PathLike) -> np.ndarray:
    """A label image as int64 ids; ImageError naming the file for negative or fractional ids (or NaN).

    Ids are object numbers (0 = background): a negative or fractional one is a conversion gone
    wrong, and counting or training on it would fail deep inside numpy or score nonsense.
    """
    data = np.asarray(labels)
    if data.dtype.kind == "b":
        return data.astype(np.int64)
    if data.dtype.kind == "f":
        if not np.isfinite(data).all():
            raise ImageError(f"{path}: a label image must hold whole-number object ids, this one holds NaN or "
                             "infinite values")
        fractional = data != np.round(data)
        if fractional.any():
            raise ImageError(f"{path}: a label image must hold whole-number object ids, this one holds fractions "
                             f"(e.g. {data[fractional].flat[0]:g} in {int(np.count_nonzero(fractional))} pixel(s))")
    elif data.dtype.kind not in "iu":
        raise ImageError(f"{path}: a label image must hold whole-number object ids, not {data.dtype}")
    if data.dtype.kind != "u" and data.size:
        negative = int(np.count_nonzero(data < 0))
        if negative:
            raise ImageError(f"{path}: a label image holds object ids 0 (background), 1, 2, ...; {negative} "
                             f"pixel(s) have negative ids (down to {data.min():g}); relabel it first")
    return data.astype(np.int64, copy=False)


def list_channel_names(names: Sequence[str | None] | None, n: int, rgb: bool = False) -> tuple[str, ...]:
    """``n`` channel names: the given ones where present, R/G/B for RGB, else C0, C1, ..."""
    defaults = RGB_NAMES if rgb and n == 3 else tuple(f"C{i}" for i in range(n))
    given = list(names or [])
    if len(given) != n:
        given = [None] * n
    return tuple(str(g).strip() if g is not None and str(g).strip() else d for g, d in zip(given, defaults))


# -- TIFF


def _open_tiff(path: Path, axes_override: str | None) -> Image:
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
        _check_dtype(path, series.dtype)
        photometric = int(page.photometric)
        rgb = photometric in (2, 6)  # RGB, YCbCr (decoded to RGB)
        alpha = bool(page.extrasamples) and int(page.extrasamples[0]) in (1, 2)
        layout = _map_axes(path, native_axes, native_shape, axes_override, rgb, alpha)
        meta = _tiff_metadata(tif, series, page)
        from_samples = "C" in layout.roles and native_axes[layout.roles.index("C")] == "S"
        names = list_channel_names(meta.get("channel_names"), _n(layout, "C"), rgb=rgb and from_samples)
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


def _tiff_metadata(tif: Any, series: Any, page: Any) -> dict[str, Any]:
    """Channel names, pixel size and z spacing from OME-XML, ImageJ metadata or resolution tags."""
    meta: dict[str, Any] = {}
    kind = getattr(series, "kind", "")
    if kind == "ome" and tif.ome_metadata:
        meta.update(_ome_metadata(tif.ome_metadata))
    elif kind == "imagej" and tif.imagej_metadata:
        meta.update(_imagej_metadata(tif.imagej_metadata, page))
    if meta.get("pixel_size_um") is None:
        meta["pixel_size_um"] = _tag_pixel_size(page)
    meta["pixel_size_um"] = plausible_pixel_size(meta.get("pixel_size_um"))
    return meta


def _ome_metadata(xml: str) -> dict[str, Any]:
    """Channel names and physical sizes (µm) of the first OME Image."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return {}
    pixels = next((e for e in root.iter() if e.tag.rsplit("}", 1)[-1] == "Pixels"), None)
    if pixels is None:
        return {}
    channels = [e for e in pixels if e.tag.rsplit("}", 1)[-1] == "Channel"]
    out: dict[str, Any] = {"channel_names": [c.get("Name") for c in channels]}
    for axis, key in (("X", "pixel_size_um"), ("Z", "z_spacing_um")):
        out[key] = _to_um(pixels.get(f"PhysicalSize{axis}"), pixels.get(f"PhysicalSize{axis}Unit", "µm"))
    return out


def _imagej_metadata(meta: dict[str, Any], page: Any) -> dict[str, Any]:
    """Channel names from Labels, pixel size from 'unit' + XResolution, z step from 'spacing'."""
    out: dict[str, Any] = {}
    n_channels = int(meta.get("channels", 1) or 1)
    labels = meta.get("Labels")
    if isinstance(labels, (list, tuple)) and len(labels) >= n_channels > 1:
        out["channel_names"] = list(labels[:n_channels])  # ImageJ planes: channel varies fastest
    unit = meta.get("unit")
    xres = _resolution(page)
    if unit is not None and xres:
        out["pixel_size_um"] = _to_um(1.0 / xres, unit)
    spacing = meta.get("spacing")
    if unit is not None and spacing:
        out["z_spacing_um"] = _to_um(spacing, unit)
    return out


def _resolution(page: Any) -> float | None:
    """XResolution (pixels per unit) of a page, or None."""
    try:
        xres = float(page.resolution[0])
    except Exception:
        return None
    return xres if xres > 0 and math.isfinite(xres) else None


def plausible_pixel_size(size_um: float | None) -> float | None:
    """``size_um`` when it lies in :data:`PIXEL_SIZE_RANGE_UM`, else None (unknown)."""
    if size_um is None or not math.isfinite(size_um):
        return None
    low, high = PIXEL_SIZE_RANGE_UM
    return float(size_um) if low <= size_um <= high else None


def _tag_pixel_size(page: Any) -> float | None:
    """Pixel size from XResolution when ResolutionUnit is inch, cm, mm or µm (not 'none').

    Both tags must be in the file: tifffile reports 1 pixel per inch for a TIFF without them
    (what Pillow writes), which is the absence of a calibration, not a 25 400 µm pixel.
    """
    tags = getattr(page, "tags", None)
    if tags is None or "XResolution" not in tags or "ResolutionUnit" not in tags:
        return None
    xres = _resolution(page)
    unit = int(getattr(page, "resolutionunit", 1) or 1)
    per_unit = {2: 25400.0, 3: 1e4, 4: 1e3, 5: 1.0}.get(unit)
    if xres is None or per_unit is None:
        return None
    if unit == 2 and any(abs(xres - dpi) < 0.01 for dpi in SCREEN_DPI):
        return None
    return per_unit / xres


def _to_um(value: Any, unit: Any) -> float | None:
    """A length in µm, or None when the value or unit is missing or not a length."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    key = str(unit).replace("\\u00B5", "µ").replace("\\u00b5", "µ").strip().casefold()
    factor = _UM_PER_UNIT.get(key)
    if factor is None or not math.isfinite(number) or number <= 0:
        return None
    return number * factor


# -- Pillow (PNG, JPEG)


def _open_pillow(path: Path, fmt: str, axes_override: str | None) -> Image:
    """Open a PNG/JPEG header now; the pixels are decoded on the first read."""
    from PIL import Image as PILImage

    try:
        with PILImage.open(path) as im:
            mode, size, info = im.mode, im.size, dict(im.info)
    except Exception as error:
        raise ImageError(f"{path}: not a readable {fmt.upper()} ({type(error).__name__}: {error})") from error
    target = _pillow_target_mode(mode)
    width, height = size
    samples = {"RGB": 3}.get(target, 1)
    native_axes = "YXS" if samples > 1 else "YX"
    native_shape = (height, width, samples) if samples > 1 else (height, width)
    layout = _map_axes(path, native_axes, native_shape, axes_override, rgb=samples == 3, alpha=False)
    dtype = {"L": np.uint8, "RGB": np.uint8, "I;16": np.uint16, "I": np.int32, "F": np.float32}[target]
    dpi = info.get("dpi")
    pixel_size = None
    if isinstance(dpi, (tuple, list)) and dpi and float(dpi[0]) > 0:
        if not any(abs(float(dpi[0]) - d) < 0.05 for d in SCREEN_DPI):
            pixel_size = plausible_pixel_size(25400.0 / float(dpi[0]))
    names = list_channel_names(None, _n(layout, "C"), rgb=samples == 3)
    image_info = ImageInfo(path=str(path), format=fmt, shape=layout.shape, dtype=np.dtype(dtype),
                           axes=layout.axes, channel_names=names, pixel_size_um=pixel_size,
                           levels=((height, width),))

    def load() -> np.ndarray:
        try:
            with PILImage.open(path) as im:
                if im.mode != target and not (target == "I;16" and im.mode.startswith("I;16")):
                    im = im.convert(target)
                data = np.asarray(im)
        except PILImage.DecompressionBombError as error:
            raise ImageError(f"{path}: too large for {fmt.upper()} ({width} x {height}); "
                             "save it as a tiled TIFF") from error
        except Exception as error:
            raise ImageError(f"{path}: cannot decode the {fmt.upper()} ({type(error).__name__}: "
                             f"{error}); the file may be truncated or corrupt") from error
        return data.astype(dtype, copy=False).reshape(native_shape)

    return Image(image_info, layout, [], loader=load)


def _pillow_target_mode(mode: str) -> str:
    """The Pillow mode we decode to: gray, 16-bit gray, 32-bit int/float, or RGB (alpha dropped)."""
    if mode in ("L", "LA", "1", "La"):
        return "L"
    if mode.startswith("I;16"):
        return "I;16"
    if mode in ("I", "F"):
        return mode
    return "RGB"


# -- axes


def _map_axes(path: Path, axes: str, shape: tuple[int, ...], override: str | None,
              rgb: bool, alpha: bool) -> _Layout:
    """Map native axes to roles C/Z/Y/X; ImageError for time series and other unsupported axes."""
    if len(axes) != len(shape) or "Y" not in axes or "X" not in axes:
        raise ImageError(f"{path}: unsupported image layout: axes {axes!r} with shape {shape}")
    roles: list[str] = []
    guesses: list[int] = []
    for i, (axis, size) in enumerate(zip(axes, shape)):
        if axis in "YX":
            roles.append(axis)
        elif size == 1:
            roles.append("")
        elif axis in "CZ":
            roles.append(axis)
        elif axis == "S":
            roles.append("C")
        elif axis in "QI" or override is not None:
            roles.append("?")
            guesses.append(i)
        elif axis == "T":
            raise ImageError(f"{path}: a time series ({size} time points) is not supported; "
                             "export one time point")
        else:
            raise ImageError(f"{path}: unsupported axis {axis!r} of length {size} (axes {axes!r}, "
                             f"shape {shape}); export an image with only channels, z-planes, Y and X")
    if override is not None:
        roles = _apply_override(path, axes, shape, roles, override)
    else:
        for i in guesses:
            free = [r for r in "CZ" if r not in roles]
            if not free:
                raise ImageError(f"{path}: cannot tell what axes {axes!r} {shape} are; "
                                 "give the axes explicitly (e.g. 'CZYX')")
            roles[i] = free[0]
    for axis in "CZ":
        if roles.count(axis) > 1:
            raise ImageError(f"{path}: two axes would be {'channels' if axis == 'C' else 'z-planes'} "
                             f"(axes {axes!r}, shape {shape}); this layout is not supported")
    if roles.index("Y") > roles.index("X"):
        raise ImageError(f"{path}: transposed images (X before Y) are not supported")
    channel_indices: tuple[int, ...] = (0,)
    if "C" in roles:
        n = shape[roles.index("C")]
        if axes[roles.index("C")] == "S" and alpha and n in (2, 4):
            n -= 1  # drop the alpha sample
        channel_indices = tuple(range(n))
    norm_axes = "".join(a for a in "CZYX" if a in roles)
    norm_shape = tuple(len(channel_indices) if a == "C" else shape[roles.index(a)] for a in norm_axes)
    return _Layout(roles=tuple(roles), channel_indices=channel_indices, axes=norm_axes, shape=norm_shape)


def _apply_override(path: Path, axes: str, shape: tuple[int, ...], roles: list[str], override: str) -> list[str]:
    """Assign the caller's axes string to the non-singleton axes (in file order)."""
    override = override.upper()
    wanted = [a for a in override if a not in "YX"]
    open_slots = [i for i, r in enumerate(roles) if r not in ("", "Y", "X")]
    if set(override) - set("CZYX") or len(set(override)) != len(override) or len(wanted) != len(open_slots):
        raise ImageError(f"{path}: axes {override!r} do not fit the file's axes {axes!r} with shape "
                         f"{shape}; name each non-singleton axis once, from C, Z, Y, X")
    for slot, role in zip(open_slots, wanted):
        roles[slot] = role
    return roles


def _n(layout: _Layout, axis: str) -> int:
    """Length of a normalised axis (1 when absent)."""
    return layout.shape[layout.axes.index(axis)] if axis in layout.axes else 1


def _check_dtype(path: Path, dtype: Any) -> None:
    """Refuse pixel types no microscopy step can use (complex, structured)."""
    dtype = np.dtype(dtype)
    if dtype.kind not in "biuf":
        raise ImageError(f"{path}: pixels of type {dtype} are not supported; "
                         "use integer or floating-point images")


# -- reading helpers


# Where the free memory cannot be asked (no psutil and no sysconf), a whole read larger than
# this is refused: 8 GiB, what most lab workstations can still spare.
DEFAULT_MEMORY_LIMIT = 8 << 30
SMALL_READ_BYTES = 32 << 20  # reads below this are not checked against free memory


def available_memory() -> int:
    """Bytes of memory free for a new array now (psutil, else sysconf, else :data:`DEFAULT_MEMORY_LIMIT`)."""
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except Exception:  # psutil missing or unable to ask the OS
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, ValueError, OSError):
        return DEFAULT_MEMORY_LIMIT


def check_fits_memory(path: PathLike, height: int, width: int, dtype: Any, layers: int = 1,
                      work_bytes_per_pixel: int = 0) -> None:
    """ImageError (with the size) when ``layers`` planes of ``height`` x ``width`` pixels of ``dtype``, plus the
    caller's working memory per pixel, exceed the memory free now.

    Asked before decoding, so a file that declares a huge image (e.g. 100000 x 100000 in a few
    hundred kB) is refused by its size instead of failing midway or being blamed on corruption.
    """
    pixels = float(height) * float(width) * float(layers)
    needed = pixels * (np.dtype(dtype).itemsize + max(0, int(work_bytes_per_pixel)))
    if needed <= SMALL_READ_BYTES:  # tiles and small images: not worth asking the OS on every read
        return
    free = available_memory()
    if needed <= free:
        return
    planes = f" x {layers} channels/planes" if layers > 1 else ""
    raise ImageError(f"{path}: reading {width} x {height} pixels{planes} at once needs {_gib(needed)} of memory, "
                     f"but {_gib(free)} is free on this computer; crop or downsample the image, or use a step "
                     "that reads it tile by tile")


def _gib(n_bytes: float) -> str:
    """'12.3 GiB' (or MiB below 1 GiB) for messages."""
    return f"{n_bytes / 2**30:.1f} GiB" if n_bytes >= 2**30 else f"{n_bytes / 2**20:.1f} MiB"


def _check_finite(path: str, data: np.ndarray, region: Region | None) -> None:
    """ImageError counting NaN and infinite pixels in floating-point ``data`` (``region`` None = whole image)."""
    finite = np.isfinite(data)
    n_bad = int(finite.size - np.count_nonzero(finite))
    del finite
    if not n_bad:
        return
    n_nan = int(np.count_nonzero(np.isnan(data)))
    what = " and ".join(part for part in (f"{n_nan} NaN" if n_nan else "",
                                          f"{n_bad - n_nan} infinite" if n_bad - n_nan else "") if part)
    where = "" if region is None else (f" in rows {region[0]}-{region[2]}, columns {region[1]}-{region[3]} "
                                       "(the part read so far)")
    raise ImageError(f"{path}: {what} pixels{where}; no analysis can use them: replace them "
                     "(e.g. with 0) or crop them away first")


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


# ---------------------------------------------------------------------------------------- write


TileSource = Union[np.ndarray, Any, Callable[[int, int, int, int], np.ndarray], Iterable[np.ndarray]]


def write_tiff(
    path: PathLike,
    data: TileSource,
    axes: str,
    channel_names: Sequence[str] | None = None,
    pixel_size_um: float | None = None,
    pyramid: bool = False,
    tile: tuple[int, int] = (512, 512),
    *,
    shape: Sequence[int] | None = None,
    dtype: Any = None,
    compression: str | None = "zlib",
    z_spacing_um: float | None = None,
    downsample: str = "mean",
) -> Path:
    """Write a tiled OME-TIFF atomically and return its path.

    ``axes`` names ``data``'s axes, a subset of C, Z, Y, X ending in ``YX`` (e.g. "CYX", "ZYX").
    ``data`` is one of:

    * an array-like with ``shape``/``dtype`` and slicing (ndarray, ``np.memmap``, zarr array);
      arrays on disk are read tile by tile;
    * a callable ``region(y0, x0, y1, x1) -> ndarray`` of shape ``(*leading, y1 - y0, x1 - x0)``
      (all channels/planes of that window), called once per tile in row-major order; with more
      than one plane the other planes are spooled to a temporary file beside ``path``;
    * an iterator of tiles in TIFF order: for each leading index (C order), the tiles row by row,
      each ``tile``-shaped (edge tiles may be cropped to the image).

    Callables and iterators need ``shape`` and ``dtype``.  ``pyramid=True`` adds 2x
    sub-resolution levels (``downsample="mean"`` for intensities, ``"nearest"`` for labels) until
    the image fits one tile; they are built from the stream through temporary memory maps, so
    memory stays at a few tiles whatever the image size.
    """
    path = Path(path)
    axes = axes.upper()
    shape, dtype = _source_shape(data, shape, dtype)
    _check_write_args(path, axes, shape, dtype, tile, channel_names, downsample)
    height, width = shape[-2], shape[-1]
    lead = tuple(shape[:-2])
    n_sub = _n_sublevels(height, width, tile) if pyramid else 0
    options = _write_options(dtype, compression, tile)
    total = int(np.prod(shape)) * dtype.itemsize * (1.34 if n_sub else 1.0)
    metadata = _ome_write_metadata(axes, shape, channel_names, pixel_size_um, z_spacing_um)
    import tifffile

    path.parent.mkdir(parents=True, exist_ok=True)
    needs_spool = n_sub > 0 or (callable(data) and not _is_array(data) and int(np.prod(lead)) > 1)
    with atomic_path(path) as tmp, contextlib.ExitStack() as stack:
        spool = Path(stack.enter_context(tempfile.TemporaryDirectory(
            dir=path.parent, prefix=".spool-", ignore_cleanup_errors=True))) if needs_spool else path.parent
        tiles = _level0_tiles(data, lead, height, width, dtype, tile, spool)
        with tifffile.TiffWriter(tmp, bigtiff=total > 2**32 - 2**25, ome=True) as writer:
            _write_levels(writer, tiles, lead, (height, width), dtype, tile, n_sub, spool, downsample,
                          options, metadata, pixel_size_um)
        del tiles
    return path


def _write_levels(writer: Any, tiles: Iterator[np.ndarray], lead: tuple[int, ...], size: tuple[int, int],
                  dtype: np.dtype, tile: tuple[int, int], n_sub: int, spool: Path, downsample: str,
                  options: dict[str, Any], metadata: dict[str, Any], pixel_size_um: float | None) -> None:
    """Write level 0 from ``tiles`` and each sub-level from the memory map the previous one filled."""
    level_shape = (int(np.prod(lead, dtype=np.int64)), size[0], size[1])
    for number in range(n_sub + 1):
        halves = None
        if number < n_sub:
            half_shape = (level_shape[0], (level_shape[1] + 1) // 2, (level_shape[2] + 1) // 2)
            halves = np.lib.format.open_memmap(spool / f"level{number + 1}.npy", mode="w+",
                                               dtype=dtype, shape=half_shape)
        kwargs: dict[str, Any] = dict(options)
        if pixel_size_um:  # also as TIFF tags, for readers that ignore OME-XML
            per_cm = 1e4 / (pixel_size_um * 2**number)
            kwargs.update(resolution=(per_cm, per_cm), resolutionunit="CENTIMETER")
        if number == 0:
            kwargs.update(metadata=metadata, subifds=n_sub)
        else:
            kwargs.update(subfiletype=1, metadata=None)
        stream = _tap_tiles(tiles, level_shape, tile, halves, downsample)
        writer.write(stream, shape=lead + level_shape[1:], dtype=dtype, **kwargs)
        if halves is not None:
            halves.flush()
            level_shape = half_shape
            tiles = _array_tiles(halves, (level_shape[0],), level_shape[1], level_shape[2], tile)
        del halves, stream


def _source_shape(data: Any, shape: Sequence[int] | None, dtype: Any) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype of the data to write (from the array, or the caller for streams)."""
    if _is_array(data):
        got = tuple(int(s) for s in data.shape)
        if shape is not None and tuple(shape) != got:
            raise ValueError(f"shape {tuple(shape)} does not match the array's {got}")
        if dtype is not None and np.dtype(dtype) != np.dtype(data.dtype):
            raise ValueError(f"dtype {dtype} does not match the array's {data.dtype}")
        return got, np.dtype(data.dtype)
    if shape is None or dtype is None:
        raise ValueError("writing from a callable or an iterator of tiles needs shape= and dtype=")
    return tuple(int(s) for s in shape), np.dtype(dtype)


def _is_array(data: Any) -> bool:
    return hasattr(data, "shape") and hasattr(data, "dtype") and hasattr(data, "__getitem__")


def _check_write_args(path: Path, axes: str, shape: tuple[int, ...], dtype: np.dtype,
                      tile: tuple[int, int], channel_names: Sequence[str] | None, downsample: str) -> None:
    """ValueError for arguments that cannot make a valid OME-TIFF."""
    if not axes.endswith("YX") or set(axes) - set("CZYX") or len(set(axes)) != len(axes):
        raise ValueError(f"axes must be a subset of C, Z, Y, X ending in 'YX', got {axes!r}")
    if len(axes) != len(shape):
        raise ValueError(f"axes {axes!r} do not match shape {shape}")
    if min(shape) < 1:
        raise ValueError(f"cannot write an empty image of shape {shape}")
    if dtype.kind not in "biuf":
        raise ValueError(f"cannot write pixels of type {dtype}")
    if len(tile) != 2 or any(t < 16 or t % 16 for t in tile):
        raise ValueError(f"tile sides must be multiples of 16, got {tile}")
    n_channels = shape[axes.index("C")] if "C" in axes else 1
    if channel_names is not None and len(channel_names) != n_channels:
        raise ValueError(f"{len(channel_names)} channel names for {n_channels} channel(s)")
    if downsample not in ("mean", "nearest"):
        raise ValueError(f"downsample must be 'mean' or 'nearest', got {downsample!r}")


def _n_sublevels(height: int, width: int, tile: tuple[int, int]) -> int:
    """How many 2x halvings until the image fits one tile."""
    n = 0
    while height > tile[0] or width > tile[1]:
        height, width, n = (height + 1) // 2, (width + 1) // 2, n + 1
    return n


def _write_options(dtype: np.dtype, compression: str | None, tile: tuple[int, int]) -> dict[str, Any]:
    """tifffile.write keywords: tiles, grey photometric, compression with a predictor."""
    options: dict[str, Any] = {"tile": tuple(tile), "photometric": "minisblack"}
    if compression == "zlib":
        options.update(compression="zlib", compressionargs={"level": 1})
        if dtype != np.bool_:
            options["predictor"] = True
    elif compression is not None:
        options["compression"] = compression
    return options


def _ome_write_metadata(axes: str, shape: tuple[int, ...], channel_names: Sequence[str] | None,
                        pixel_size_um: float | None, z_spacing_um: float | None) -> dict[str, Any]:
    """The OME metadata dict tifffile turns into OME-XML."""
    metadata: dict[str, Any] = {"axes": axes}
    if channel_names is not None:
        metadata["Channel"] = {"Name": [str(n) for n in channel_names]}
    if pixel_size_um:
        metadata.update(PhysicalSizeX=float(pixel_size_um), PhysicalSizeXUnit="µm",
                        PhysicalSizeY=float(pixel_size_um), PhysicalSizeYUnit="µm")
    if z_spacing_um and "Z" in axes:
        metadata.update(PhysicalSizeZ=float(z_spacing_um), PhysicalSizeZUnit="µm")
    return metadata


def _tile_positions(n_planes: int, height: int, width: int, tile: tuple[int, int]) -> Iterator[tuple[int, int, int]]:
    """(plane, y0, x0) of every tile in TIFF order."""
    for plane in range(n_planes):
        for y0 in range(0, height, tile[0]):
            for x0 in range(0, width, tile[1]):
                yield plane, y0, x0


def _array_tiles(array: Any, lead: tuple[int, ...], height: int, width: int,
                 tile: tuple[int, int]) -> Iterator[np.ndarray]:
    """Tiles of an array-like in TIFF order, sliced one at a time (lazy for memmap/zarr)."""
    th, tw = tile
    for index in np.ndindex(*lead):
        for y0 in range(0, height, th):
            for x0 in range(0, width, tw):
                yield np.asarray(array[index + (slice(y0, y0 + th), slice(x0, x0 + tw))])


def _callable_tiles(region: Callable[[int, int, int, int], np.ndarray], lead: tuple[int, ...],
                    height: int, width: int, dtype: np.dtype, tile: tuple[int, int],
                    spool: Path) -> Iterator[np.ndarray]:
    """Call ``region`` once per tile; plane 0 streams out, later planes wait in a memory map."""
    th, tw = tile
    n = int(np.prod(lead, dtype=np.int64))
    later = np.lib.format.open_memmap(spool / "planes.npy", mode="w+", dtype=dtype,
                                      shape=(n - 1, height, width)) if n > 1 else None
    for y0 in range(0, height, th):
        for x0 in range(0, width, tw):
            y1, x1 = min(y0 + th, height), min(x0 + tw, width)
            block = np.asarray(region(y0, x0, y1, x1))
            expected = lead + (y1 - y0, x1 - x0)
            if block.shape != expected:
                raise ValueError(f"region({y0}, {x0}, {y1}, {x1}) returned shape {block.shape}, "
                                 f"expected {expected}")
            block = block.reshape(n, y1 - y0, x1 - x0)
            if later is not None:
                later[:, y0:y1, x0:x1] = block[1:]
            yield block[0]
    if later is not None:
        yield from _array_tiles(later, (n - 1,), height, width, tile)


def _level0_tiles(data: Any, lead: tuple[int, ...], height: int, width: int, dtype: np.dtype,
                  tile: tuple[int, int], spool: Path) -> Iterator[np.ndarray]:
    """The full-resolution tiles in TIFF order, whatever form ``data`` came in."""
    if _is_array(data):
        return _array_tiles(data, lead, height, width, tile)
    if callable(data):
        return _callable_tiles(data, lead, height, width, dtype, tile, spool)
    return iter(data)


def _tap_tiles(tiles: Iterator[np.ndarray], level_shape: tuple[int, int, int], tile: tuple[int, int],
               halves: np.ndarray | None, downsample: str) -> Iterator[np.ndarray]:
    """Check each tile's shape and count, and (for pyramids) put its 2x-downsampled copy in ``halves``."""
    n_planes, height, width = level_shape
    th, tw = tile
    expected = n_planes * math.ceil(height / th) * math.ceil(width / tw)
    for count, (plane, y0, x0) in enumerate(_tile_positions(n_planes, height, width, tile)):
        block = next(tiles, None)
        if block is None:
            raise ValueError(f"the tile iterator stopped after {count} tiles, expected {expected}")
        block = np.asarray(block)
        h, w = min(th, height - y0), min(tw, width - x0)
        if block.shape not in ((th, tw), (h, w)):
            raise ValueError(f"tile {count} (plane {plane}, y={y0}, x={x0}) has shape {block.shape}, "
                             f"expected {(th, tw)} or {(h, w)}")
        block = block[:h, :w]
        if halves is not None:
            halves[plane, y0 // 2: y0 // 2 + (h + 1) // 2, x0 // 2: x0 // 2 + (w + 1) // 2] = \
                halve(block, downsample).astype(halves.dtype, copy=False)
        if count == expected - 1 and next(tiles, None) is not None:
            raise ValueError(f"the tile iterator gave more than the {expected} tiles expected")
        yield block


def halve(block: np.ndarray, method: str = "mean") -> np.ndarray:
    """Downsample the last two axes by 2: 2x2 block mean (rounded for integers) or nearest.

    Odd edges repeat their last row/column, so the result has ``ceil(n / 2)`` rows/columns.
    """
    if method == "nearest":
        return block[..., ::2, ::2]
    h, w = block.shape[-2:]
    if h % 2 or w % 2:
        pad = [(0, 0)] * (block.ndim - 2) + [(0, h % 2), (0, w % 2)]
        block = np.pad(block, pad, mode="edge")
    shape = block.shape[:-2] + (block.shape[-2] // 2, 2, block.shape[-1] // 2, 2)
    mean = block.reshape(shape).mean(axis=(-3, -1), dtype=np.float64 if block.dtype.itemsize > 2 else np.float32)
    if block.dtype.kind in "uib":
        mean = np.rint(mean)
    return mean.astype(block.dtype, copy=False)
