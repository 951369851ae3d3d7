"""Refuse a read that would not fit the memory free now, before decoding it (a size guard, with the size)."""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from app.core.errors import ImageError

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


def check_fits_memory(path: str | os.PathLike[str], height: int, width: int, dtype: Any, layers: int = 1,
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
