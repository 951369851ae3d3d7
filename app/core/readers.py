"""Microscope and slide-scanner formats read through their makers' or the community's libraries.

:func:`app.core.images.open_image` sends every file that is not TIFF, PNG or JPEG here, by suffix
(:mod:`app.core.formats`).  Each reader returns a :class:`LibraryImage` (lazy level arrays and
metadata) that ``open_image`` makes into the same lazy Image as the TIFF reader: pixels stay on
disk and a region read decodes only what it touches.

* CZI (Zeiss): ``pylibCZIrw`` (Zeiss' own libCZI).  A region is one ``read(roi=...)`` per
  plane; scenes come from the subblocks' scene index (also when the metadata lists none).
* OME-Zarr, ND2 (Nikon), LIF (Leica), VSI (Olympus/Evident, no Java): ``bioio`` with its
  plugins ``bioio-ome-zarr``, ``bioio-nd2``, ``bioio-lif``, ``bioio-vsi``; pixels are the
  plugin's dask array (one chunk per Zarr chunk, per ND2/LIF plane), pyramid levels are the
  file's own resolution levels.
* SVS, NDPI, SCN (whole-slide scanners): ``tiffslide``; its levels are the slide's pyramid and
  the pixel size its ``mpp``.

A multi-scene file opens its first scene unless a scene is named (``file.czi#scene-2``);
:func:`scene_names` lists them.  Any failure of a library on a damaged or foreign file ends as
one :class:`~app.core.errors.ImageError` naming the file.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from app.core.errors import ImageError
from app.core.formats import image_format, scene_ref

LIBRARIES: dict[str, str] = {
    "czi": "pylibCZIrw", "ome-zarr": "bioio-ome-zarr", "nd2": "bioio-nd2", "lif": "bioio-lif", "vsi": "bioio-vsi",
    "whole-slide": "tiffslide",
}
"""Format -> the library that reads it (also shown in errors when the library is missing)."""
NAMES = {"czi": "CZI", "ome-zarr": "OME-Zarr", "nd2": "ND2", "lif": "LIF", "vsi": "VSI", "whole-slide": "whole-slide (SVS/NDPI/SCN)"}


_MODULES: dict[str, tuple[str, ...]] = {
    "czi": ("pylibCZIrw.czi",), "ome-zarr": ("bioio", "bioio_ome_zarr"), "nd2": ("bioio", "bioio_nd2"),
    "lif": ("bioio", "bioio_lif"), "vsi": ("bioio", "bioio_vsi"), "whole-slide": ("tiffslide",),
}
"""Format -> the modules its reader imports (bioio-ome-zarr's take seconds: ome-types' models, dask.array)."""


def preload(paths: Iterable[str | os.PathLike[str]]) -> list[str]:
    """Import the reading libraries the given images need, so that the first one opened is not slowed by them.

    Meant for a background thread when a project is opened; returns the modules it imported.  A library
    that fails to import is skipped: opening the file reports it in one line.
    """
    import importlib
    import sys

    wanted = dict.fromkeys(m for p in paths for m in _MODULES.get(image_format(p) or "", ()))
    done = []
    for module in wanted:
        if module in sys.modules:
            continue
        try:
            importlib.import_module(module)
        except Exception:  # noqa: BLE001 - reported when the file is opened
            continue
        done.append(module)
    return done


def open_library_image(path: Path, scene: int | None) -> LibraryImage:
    """Open ``path`` (scene ``scene``, 0-based) with the library for its format; ImageError if it cannot."""
    fmt = image_format(path) or ""
    opener = _OPENERS.get(fmt)
    if opener is None:
        raise ImageError(f"{path}: no reader for this kind of file")
    return _one_line_errors(path, fmt, lambda: opener(path, scene or 0))


def scene_names(path: Path) -> list[str]:
    """Names of the scenes of a file (one entry for single-scene files and plain formats)."""
    fmt = image_format(path) or ""

    def names() -> list[str]:
        if fmt == "czi":
            with _czi(path) as czi:
                return _czi_scene_names(czi, len(_czi_scenes(czi)))
        if fmt in _BIOIO:
            return [str(s) for s in _bioimage(path, fmt).scenes]
        return [Path(path).name]

    return _one_line_errors(path, fmt, names)


def _one_line_errors(path: Path, fmt: str, call: Callable[[], Any]) -> Any:
    """``call()``, with a library's error on a damaged or foreign file turned into one ImageError."""
    try:
        return call()
    except ImageError:
        raise
    except ModuleNotFoundError as error:
        raise ImageError(f"{path}: reading {NAMES[fmt]} files needs the {LIBRARIES[fmt]} package, which is "
                         f"not installed ({error.name})") from error
    except Exception as error:
        message = str(error).strip().splitlines()[0][:200] if str(error).strip() else ""
        raise ImageError(f"{path}: not a readable {NAMES[fmt]} file ({type(error).__name__}"
                         f"{': ' + message if message else ''}); the file may be truncated or corrupt") from error


def _check_scene(path: Path, scene: int, count: int) -> None:
    if not 0 <= scene < count:
        raise ImageError(f"{path}: no scene {scene + 1}; the file has {count} scene(s), 1 to {count}")


@dataclass
class LibraryImage:
    """What a library found in one scene: its level arrays in the library's axis order and the metadata.

    :func:`app.core.images.open_image` turns it into an Image (axes mapped, dtype checked), so this
    module needs nothing from ``images`` (no import loop).
    """

    path: Path
    format: str
    axes: str  # native order of the level arrays, e.g. "TCZYX"
    levels: list[Any]
    channel_names: list[str | None]
    pixel_size_um: float | None
    z_spacing_um: float | None
    closers: list[Callable[[], None]]
    scene: int
    scenes: tuple[str, ...]
    rgb: bool

    @property
    def ref(self) -> str:
        """The image's name: ``file.czi#scene-N`` for a scene of a multi-scene file, else the file."""
        return scene_ref(self.path, self.scene) if len(self.scenes) > 1 else str(self.path)


def _build(path: Path, fmt: str, native_axes: str, levels: Sequence[Any], channel_names: Sequence[Any] | None,
           pixel_size_um: Any, z_spacing_um: Any, closers: Sequence[Callable[[], None]], scene: int,
           scenes: Sequence[str], rgb: bool) -> LibraryImage:
    """A LibraryImage from native-order level arrays and the metadata the library found."""
    return LibraryImage(path, fmt, native_axes, list(levels),
                        [str(n) if n is not None else None for n in (channel_names or [])],
                        _positive(pixel_size_um), _positive(z_spacing_um), list(closers), scene,
                        tuple(str(s) for s in scenes), rgb)


def _positive(value: Any) -> float | None:
    """A finite positive float, else None (libraries report 0, None or NaN for "unknown")."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if np.isfinite(number) and number > 0 else None


# ------------------------------------------------------------------------------------------ CZI


@contextlib.contextmanager
def _czi(path: Path) -> Iterator[Any]:
    """A pylibCZIrw reader, closed on exit."""
    from pylibCZIrw import czi as pyczi

    reader = pyczi.CziReader(str(path))
    try:
        yield reader
    finally:
        reader.close()


def _czi_scenes(czi: Any) -> list[Any]:
    """Bounding rectangles of the scenes (one for a file without scenes), in scene order."""
    rects = czi.scenes_bounding_rectangle_no_pyramid
    if rects:
        return [rects[k] for k in sorted(rects)]
    return [czi.total_bounding_rectangle_no_pyramid]


def _czi_scene_names(czi: Any, count: int) -> list[str]:
    """Scene names from the metadata where present, else ``scene-1``, ``scene-2`` ..."""
    listed = _dig(czi.metadata, "ImageDocument", "Metadata", "Information", "Image", "Dimensions", "S",
                  "Scenes", "Scene")
    listed = listed if isinstance(listed, list) else [listed] if isinstance(listed, dict) else []
    names = [f"scene-{i + 1}" for i in range(count)]
    for i, entry in enumerate(listed[:count]):
        if isinstance(entry, dict) and entry.get("@Name"):
            names[i] = str(entry["@Name"])
    return names


def _dig(tree: Any, *keys: str) -> Any:
    for key in keys:
        if not isinstance(tree, dict):
            return None
        tree = tree.get(key)
    return tree


def _open_czi(path: Path, scene: int) -> LibraryImage:
    """One scene of a CZI as a lazy T, C, Z, Y, X (+ S for RGB) array read through pylibCZIrw."""
    from pylibCZIrw import czi as pyczi

    czi = pyczi.CziReader(str(path))
    closers = [czi.close]
    try:
        rects = _czi_scenes(czi)
        _check_scene(path, scene, len(rects))
        box = czi.total_bounding_box_no_pyramid
        types = set(czi.pixel_types.values())
        if len(types) != 1:
            raise ImageError(f"{path}: channels of different pixel types ({', '.join(sorted(types))}) "
                             "are not supported; export the channels to one type")
        rgb = next(iter(types)).startswith("Bgr")
        dtype = {"Gray8": np.uint8, "Gray16": np.uint16, "Gray32Float": np.float32, "Bgr24": np.uint8,
                 "Bgr48": np.uint16}.get(next(iter(types)))
        if dtype is None:
            raise ImageError(f"{path}: CZI pixel type {next(iter(types))} is not supported")
        has_scenes = bool(czi.scenes_bounding_rectangle_no_pyramid)
        array = _CziScene(czi, scene if has_scenes else None, rects[scene], box, np.dtype(dtype), rgb)
        meta = _dig(czi.metadata, "ImageDocument", "Metadata") or {}
        channels = _dig(meta, "Information", "Image", "Dimensions", "Channels", "Channel")
        channels = channels if isinstance(channels, list) else [channels] if channels else []
        sizes = {d.get("@Id"): d.get("Value") for d in _as_list(_dig(meta, "Scaling", "Items", "Distance"))
                 if isinstance(d, dict)}
        to_um = lambda v: _positive(v) and _positive(v) * 1e6  # noqa: E731  (CZI stores metres)
        return _build(path, "czi", array.axes, [array],
                      [c.get("@Name") if isinstance(c, dict) else None for c in channels],
                      to_um(sizes.get("X")), to_um(sizes.get("Z")), closers, scene,
                      _czi_scene_names(czi, len(rects)), rgb)
    except BaseException:
        closers[0]()
        raise


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value] if value is not None else []


class _CziScene:
    """A CZI scene as an array-like: slicing T, C, Z (ints or slices) and Y, X reads one ROI per plane."""

    def __init__(self, czi: Any, scene: int | None, rect: Any, box: dict[str, tuple[int, int]],
                 dtype: np.dtype, rgb: bool) -> None:
        self._czi, self._scene, self._rect, self._rgb = czi, scene, rect, rgb
        self._starts = {d: box.get(d, (0, 1))[0] for d in "TCZ"}
        self.axes = "TCZYX" + ("S" if rgb else "")
        self.shape = tuple(box.get(d, (0, 1))[1] for d in "TCZ") + (rect.h, rect.w) + ((3,) if rgb else ())
        self.dtype = dtype
        self.ndim = len(self.shape)
        self._lock = threading.Lock()

    def __getitem__(self, index: tuple[Any, ...]) -> np.ndarray:
        index = tuple(index) + (slice(None),) * (self.ndim - len(index))
        ranges, keep = [], []
        for dim, key, size in zip("TCZ", index[:3], self.shape[:3]):
            keep.append(not isinstance(key, (int, np.integer)))
            ranges.append(range(*key.indices(size)) if isinstance(key, slice) else [int(key)])
        (y0, y1, _), (x0, x1, _) = index[3].indices(self.shape[3]), index[4].indices(self.shape[4])
        roi = (self._rect.x + x0, self._rect.y + y0, max(x1 - x0, 0), max(y1 - y0, 0))
        out = np.zeros(tuple(len(r) for r in ranges) + (roi[3], roi[2]) + ((3,) if self._rgb else ()), self.dtype)
        with self._lock:
            for pos in np.ndindex(*out.shape[:3]):
                plane = {d: self._starts[d] + r[p] for d, r, p in zip("TCZ", ranges, pos)}
                raw = self._czi.read(roi=roi, plane=plane, scene=self._scene)
                out[pos] = raw[..., ::-1] if self._rgb else raw[..., 0]  # BGR -> RGB
        out = out.reshape(tuple(len(r) for r, k in zip(ranges, keep) if k) + out.shape[3:])
        return out[(Ellipsis,) + tuple(index[5:])] if self._rgb else out


# ------------------------------------------------------------------------- bioio (Zarr, ND2, LIF)


_BIOIO = ("ome-zarr", "nd2", "lif", "vsi")  # formats read through a bioio plugin


def _bioimage(path: Path, fmt: str) -> Any:
    """A BioImage with the plugin named explicitly (no guessing among installed plugins).

    The plugins are imported by name (not found through entry points) so that the installer's
    import analysis bundles them.
    """
    import logging

    from bioio import BioImage

    logging.getLogger("bioio").setLevel(logging.ERROR)  # its "reader attempt failed" warnings: we raise one line
    if fmt == "ome-zarr":
        from bioio_ome_zarr import Reader
    elif fmt == "nd2":
        from bioio_nd2 import Reader
    elif fmt == "vsi":
        from bioio_vsi import Reader
    else:
        from bioio_lif import Reader
    return BioImage(str(path), reader=Reader)


def _open_bioio(path: Path, scene: int) -> LibraryImage:
    """One scene through a bioio plugin; each of its resolution levels is the plugin's dask array."""
    fmt = image_format(path) or ""
    image = _bioimage(path, fmt)
    scenes = [str(s) for s in image.scenes]
    _check_scene(path, scene, len(scenes))
    image.set_scene(scene)
    levels = []
    for level in image.resolution_levels:
        image.set_resolution_level(level)
        levels.append(image.reader.dask_data)
    image.set_resolution_level(0)
    order = image.reader.dims.order
    planar = [i for i, d in enumerate(order) if d not in "YX"]
    levels = [a for a in levels if all(a.shape[i] == levels[0].shape[i] for i in planar)]  # not Z-shrunk ones
    sizes = image.physical_pixel_sizes
    rgb = "S" in order and levels[0].shape[order.index("S")] in (3, 4)
    return _build(path, fmt, order, levels, image.channel_names, sizes.X, sizes.Z,
                  [getattr(image, "close", lambda: None)], scene, scenes, rgb)


# ----------------------------------------------------------------------------------- whole slide


def _open_slide(path: Path, scene: int) -> LibraryImage:
    """A whole-slide scan through tiffslide: the slide's pyramid levels as its zarr arrays (Y, X, S)."""
    import tiffslide

    _check_scene(path, scene, 1)
    slide = tiffslide.TiffSlide(str(path))
    try:
        group = slide.zarr_group
        levels = [group[str(i)] for i in range(slide.level_count)]
        sample = levels[0]
        order = "YXS" if sample.ndim == 3 else "YX"
        rgb = order == "YXS" and sample.shape[2] in (3, 4)
        if rgb and sample.shape[2] == 4:
            raise ImageError(f"{path}: RGBA slides are not supported")
        return _build(path, "whole-slide", order, levels, None,
                      slide.properties.get("tiffslide.mpp-x"), None, [slide.close], scene,
                      [Path(path).name], rgb)
    except BaseException:
        slide.close()
        raise


_OPENERS: dict[str, Callable[[Path, int], LibraryImage]] = {
    "czi": _open_czi, "ome-zarr": _open_bioio, "nd2": _open_bioio, "lif": _open_bioio, "vsi": _open_bioio,
    "whole-slide": _open_slide,
}
