"""Resolution pyramids for big sections: the file's own levels plus downsampled levels cached in the project.

A viewer needs a small picture of the whole section at once and full resolution only where it
looks.  :class:`Pyramid` offers every resolution of one image: level 0 and any sub-resolutions the
file carries (OME-TIFF pyramids, read through :mod:`app.core.images`), followed by levels this
module builds once with :func:`build_pyramid` and keeps in the project
(``<project>/cache/pyramids/<image>/``), each level halving the previous one until the longest
side fits ``min_side``.  Building streams strips of the finest needed level, so memory stays
bounded for any section size; when the file already has sub-resolutions the cache starts below
its coarsest one.  Cached levels are plain ``.npy`` files read through memory maps, so showing the
overview of a 20000 x 20000 section costs a few milliseconds.  A cache whose source file changed
(size or modification time) is ignored and rebuilt.  No Qt here.

The app builds in a worker thread; with its start-up heap frozen (``gc.freeze``) that stalls its
event loop 10-20 ms, less than a child process did (bench/gui.py --stall-only).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from app.core.jobs import Job, Progress

CACHE_SUBDIR = Path("cache") / "pyramids"
META_FILE = "pyramid.json"
PYRAMID_SCHEMA_VERSION = 1
OVERVIEW_SIDE = 2048  # an overview must fit this many pixels on its longest side
MIN_SIDE = 512  # cached levels stop when the longest side fits this
STRIP_BYTES = 64 << 20  # input read per step while building (small steps: short GIL holds)


@dataclass(frozen=True)
class Level:
    """One resolution: ``factor`` level-0 pixels per level pixel, from the file or from the cache."""

    factor: float
    height: int
    width: int
    source: str  # "image" or "cache"
    index: int  # level index in the file, or position in the cache
    path: Path | None = None


def pyramid_cache_dir(project_folder: str | os.PathLike[str], image_name: str) -> Path:
    """Where the cached levels of a project's image live."""
    return Path(project_folder) / CACHE_SUBDIR / image_name


def _level_shapes(info: Any) -> list[tuple[int, int]]:
    """(height, width) of each level the image file has, level 0 first."""
    shapes = []
    for level in getattr(info, "levels", None) or []:
        if isinstance(level, dict):
            shapes.append((int(level["height"]), int(level["width"])))
            continue
        dims = [int(d) for d in level]
        if "C" in str(getattr(info, "axes", "")) and str(info.axes)[-1] == "C" and len(dims) >= 3:
            dims = dims[:-1]  # (..., H, W, C) RGB-like storage
        shapes.append((dims[-2], dims[-1]))
    return shapes or [(int(info.height), int(info.width))]


def _source_stamp(path: Path) -> dict[str, int]:
    """What identifies a version of the source file (a scene's file, an OME-Zarr folder): size and modification time."""
    from app.core.formats import split_scene

    stat = split_scene(path)[0].stat()
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def as_chw(array: np.ndarray) -> np.ndarray:
    """An image read as (H, W) or (C, H, W) returned as (C, H, W)."""
    return array[None] if array.ndim == 2 else array


def downsample2(array: np.ndarray) -> np.ndarray:
    """Halve a (C, H, W) array by 2 x 2 block means (odd edges repeat their last row/column)."""
    c, h, w = array.shape
    if h % 2:
        array = np.concatenate([array, array[:, -1:]], axis=1)
    if w % 2:
        array = np.concatenate([array, array[:, :, -1:]], axis=2)
    h2, w2 = array.shape[1] // 2, array.shape[2] // 2
    mean = array.reshape(c, h2, 2, w2, 2).mean(axis=(2, 4), dtype=np.float32)
    if array.dtype.kind in "ui":
        mean = np.rint(mean)
    return mean.astype(array.dtype, copy=False)


class Pyramid:
    """All resolutions of one image for viewing; open with :func:`open_pyramid`, close when done.

    Reads are not thread-safe: use one Pyramid per thread.
    """

    def __init__(self, image: Any, path: Path, cache_dir: Path | None) -> None:
        self.image = image
        self.path = Path(path)
        self.cache_dir = cache_dir
        info = image.info
        self.info = info
        self.height, self.width = int(info.height), int(info.width)
        self.n_channels = int(getattr(info, "n_channels", 1) or 1)
        self.n_planes = int(getattr(info, "n_planes", 1) or 1)
        names = getattr(info, "channel_names", None)
        self.channel_names = list(names or [f"channel {i}" for i in range(self.n_channels)])
        self.pixel_size_um = getattr(info, "pixel_size_um", None)
        self.dtype = np.dtype(info.dtype)
        self.levels: list[Level] = [
            Level(factor=self.height / h if h else 1.0, height=h, width=w, source="image", index=i)
            for i, (h, w) in enumerate(_level_shapes(info))
        ]
        self._arrays: dict[int, np.ndarray] = {}
        self.levels += self._cached_levels()

    def _cached_levels(self) -> list[Level]:
        """The valid cached levels below the file's coarsest, or none when the cache is stale."""
        if self.cache_dir is None or not cache_ready(self.path, self.cache_dir):
            return []
        meta = read_cache_meta(self.cache_dir)
        if meta is None or not cache_is_valid(meta, self.path, self.height, self.width):
            return []
        coarsest = self.levels[-1].factor
        return [
            Level(factor=float(entry["factor"]), height=int(entry["height"]), width=int(entry["width"]),
                  source="cache", index=i, path=self.cache_dir / entry["file"])
            for i, entry in enumerate(meta["levels"]) if float(entry["factor"]) > coarsest
        ]

    # -- choosing levels

    def overview_level(self, max_side: int | None = None) -> int | None:
        """Index of the finest level whose longest side fits ``max_side``, or None (a cache is needed)."""
        max_side = OVERVIEW_SIDE if max_side is None else max_side
        for index, level in enumerate(self.levels):
            if max(level.height, level.width) <= max_side:
                return index
        return None

    def needs_cache(self, max_side: int | None = None) -> bool:
        """Whether showing the whole image at once needs levels the file does not have."""
        return self.overview_level(max_side) is None

    def level_for(self, image_px_per_screen_px: float) -> int:
        """The coarsest level still at least as fine as the screen (factor <= image px per screen px)."""
        best = 0
        for index, level in enumerate(self.levels):
            if level.factor <= max(image_px_per_screen_px, 1.0) * 1.0001:
                best = index
        return best

    # -- reading

    def read(self, level: int, region: tuple[int, int, int, int] | None = None, z: int | None = None) -> np.ndarray:
        """Pixels of ``level`` in ``region`` = (y0, x0, y1, x1) in that level's pixels, as (C, h, w).

        The region is clipped to the level; cached levels ignore ``z`` (they hold the first plane).
        """
        entry = self.levels[level]
        if region is None:
            region = (0, 0, entry.height, entry.width)
        y0, x0, y1, x1 = (int(v) for v in region)
        y0, x0 = max(0, y0), max(0, x0)
        y1, x1 = min(entry.height, y1), min(entry.width, x1)
        if y1 <= y0 or x1 <= x0:
            return np.zeros((self.n_channels, 0, 0), dtype=self.dtype)
        if entry.source == "cache":
            return np.array(self._cache_array(level)[:, y0:y1, x0:x1])
        kwargs: dict[str, Any] = {"region": (y0, x0, y1, x1)}
        if entry.index:
            kwargs["level"] = entry.index
        if self.n_planes > 1:
            kwargs["z"] = z or 0
        return as_chw(np.asarray(self.image.read(**kwargs)))

    def _cache_array(self, level: int) -> np.ndarray:
        if level not in self._arrays:
            self._arrays[level] = np.load(self.levels[level].path, mmap_mode="r")
        return self._arrays[level]

    def close(self) -> None:
        """Release the file and the memory maps."""
        self._arrays.clear()
        close = getattr(self.image, "close", None)
        if close is not None:
            close()

    def __enter__(self) -> Pyramid:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def open_pyramid(image_path: str | os.PathLike[str], cache_dir: str | os.PathLike[str] | None = None) -> Pyramid:
    """Open an image with its file levels and, when ``cache_dir`` holds a valid cache, the cached ones."""
    from app.core.images import open_image

    path = Path(image_path)
    image = open_image(path)
    try:
        return Pyramid(image, path, Path(cache_dir) if cache_dir is not None else None)
    except BaseException:
        close = getattr(image, "close", None)
        if close is not None:
            close()
        raise


def read_cache_meta(cache_dir: str | os.PathLike[str] | None) -> dict[str, Any] | None:
    """The cache's pyramid.json, or None when there is none or it cannot be read."""
    if cache_dir is None:
        return None
    try:
        meta = json.loads((Path(cache_dir) / META_FILE).read_text())
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) and meta.get("schema_version") == PYRAMID_SCHEMA_VERSION else None


def cache_is_valid(meta: dict[str, Any], source: Path, height: int, width: int) -> bool:
    """Whether a cache was built from this very version of ``source`` and its files are all there."""
    try:
        stamp = _source_stamp(source)
    except OSError:
        return False
    return meta.get("source_stamp") == stamp and meta.get("height") == height and meta.get("width") == width


def cache_ready(image_path: str | os.PathLike[str], cache_dir: str | os.PathLike[str]) -> bool:
    """Whether ``cache_dir`` holds a complete cache for the current version of the image."""
    meta = read_cache_meta(cache_dir)
    if meta is None:
        return False
    files_ok = all((Path(cache_dir) / entry["file"]).is_file() for entry in meta.get("levels", []))
    return files_ok and cache_is_valid(meta, Path(image_path), meta.get("height"), meta.get("width"))


def build_pyramid(
    image_path: str | os.PathLike[str],
    cache_dir: str | os.PathLike[str],
    min_side: int = MIN_SIDE,
    strip_bytes: int = STRIP_BYTES,
) -> Job[Path]:
    """Job: build the cached levels of an image into ``cache_dir`` (replacing an old cache); returns it.

    Starts from the file's coarsest level and halves until the longest side fits ``min_side``;
    each level is computed from the previous one in strips, written to a memory-mapped ``.npy``.
    The cache appears complete or not at all (built in a temporary folder, then renamed).
    """
    from app.core.images import open_image

    source, cache_dir = Path(image_path), Path(cache_dir)
    cache_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache_dir.with_name(f".tmp-{os.getpid()}-{time.monotonic_ns()}-{cache_dir.name}")
    tmp.mkdir()
    try:
        with open_image(source) as image:
            pyramid = Pyramid(image, source, None)
            base_index = len(pyramid.levels) - 1
            base = pyramid.levels[base_index]
            shapes = _halvings(base.height, base.width, min_side)
            total = sum(h for h, _ in [(base.height, base.width)] + shapes[:-1])
            done = 0
            levels_meta: list[dict[str, Any]] = []
            previous: Any = None  # reader of the level being halved
            yield Progress("pyramid", 0, total, f"building overview levels of {source.name}")
            for number, (height, width) in enumerate(shapes, start=1):
                factor = base.factor * 2 ** number
                name = f"level{number}.npy"
                out = np.lib.format.open_memmap(tmp / name, mode="w+", dtype=pyramid.dtype,
                                                shape=(pyramid.n_channels, height, width))
                in_h, in_w = (base.height, base.width) if previous is None else previous.shape[1:]
                for y0, y1 in _strips(in_h, in_w * pyramid.n_channels * pyramid.dtype.itemsize, strip_bytes):
                    block = pyramid.read(base_index, (y0, 0, y1, in_w)) if previous is None \
                        else np.asarray(previous[:, y0:y1])
                    half = downsample2(block)
                    out[:, y0 // 2: y0 // 2 + half.shape[1]] = half
                    done += y1 - y0
                    yield Progress("pyramid", done, total, f"zoom level 1:{int(factor)}")
                # no flush(): msync of a big mapping holds the GIL for 100+ ms (a GUI stall); the OS
                # writes the pages back, and a cache hurt by a power cut is rebuilt from the menu
                del out
                previous = np.load(tmp / name, mmap_mode="r")
                levels_meta.append({"factor": factor, "height": height, "width": width, "file": name})
            del previous
            meta = {
                "schema_version": PYRAMID_SCHEMA_VERSION, "source": str(source.absolute()),
                "source_stamp": _source_stamp(source), "height": pyramid.height, "width": pyramid.width,
                "n_channels": pyramid.n_channels, "dtype": pyramid.dtype.str, "levels": levels_meta,
            }
            (tmp / META_FILE).write_text(json.dumps(meta, indent=1))
        if cache_dir.exists():
            shutil.rmtree(cache_dir)
        os.replace(tmp, cache_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return cache_dir


def _halvings(height: int, width: int, min_side: int) -> list[tuple[int, int]]:
    """Shapes of successive halvings of (height, width) until the longest side fits ``min_side``."""
    shapes = []
    while max(height, width) > min_side:
        height, width = (height + 1) // 2, (width + 1) // 2
        shapes.append((height, width))
    return shapes


def _strips(height: int, row_bytes: int, strip_bytes: int) -> Iterator[tuple[int, int]]:
    """Even-sized row ranges covering ``height`` rows, each about ``strip_bytes`` of input."""
    rows = max(2, strip_bytes // max(row_bytes, 1))
    rows = rows - rows % 512 if rows >= 1024 else rows - rows % 2
    for y0 in range(0, height, rows):
        yield y0, min(height, y0 + rows)
