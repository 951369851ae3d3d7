"""How the viewer turns raw channels into a colour picture, and its reader-thread tasks (no widgets).

A :class:`ChannelDisplay` holds a channel's colour, contrast levels and visibility; :func:`composite`
adds the channels up with packed lookup tables.  The ``*_task`` functions run on the viewer's
background thread: open a pyramid and read its overview, read a detail region, recolour a picture.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from PySide6.QtCore import QRectF

from app.core.pyramid import Pyramid, open_pyramid
from app.gui.theme import CHANNEL_NAMED_COLOURS, CHANNEL_PALETTE, CHANNEL_SINGLE_COLOUR


def zoom_text(image_px_per_screen_px: float) -> str:
    """Zoom as a plain percentage of the image's pixels ("25%", "400%", "0.5%"); "" when undefined."""
    if not (image_px_per_screen_px > 0 and math.isfinite(image_px_per_screen_px)):
        return ""
    percent = 100.0 / image_px_per_screen_px
    return f"{percent:.0f}%" if percent >= 10 else f"{percent:.2g}%"


@dataclass
class ChannelDisplay:
    """How one channel is drawn: colour, contrast levels, visibility; histogram for the panel."""

    name: str
    colour: str = CHANNEL_SINGLE_COLOUR
    levels: tuple[float, float] = (0.0, 1.0)
    visible: bool = True
    auto_levels: tuple[float, float] = (0.0, 1.0)
    histogram: tuple[np.ndarray, np.ndarray] | None = field(default=None, repr=False)


def default_colours(names: list[str]) -> list[str]:
    """White for a single channel; DAPI blue and then a bright palette for several."""
    if len(names) == 1:
        return [CHANNEL_SINGLE_COLOUR]
    colours, palette = [], [c for c in CHANNEL_PALETTE]
    for name in names:
        named = CHANNEL_NAMED_COLOURS.get(name.lower().strip())
        if named is not None:
            colours.append(named)
            if named in palette:
                palette.remove(named)
        else:
            colours.append("")
    it = iter(palette * 4)
    return [c or next(it) for c in colours]


def _sample(plane: np.ndarray, limit: int = 512) -> np.ndarray:
    """A strided subsample of a plane with at most about ``limit`` x ``limit`` pixels."""
    step = max(1, int(np.ceil(max(plane.shape) / limit)))
    return plane[::step, ::step]


def channel_stats(data: np.ndarray) -> list[tuple[tuple[float, float], tuple[np.ndarray, np.ndarray]]]:
    """Per channel of (C, h, w): auto levels (0.5 and 99.9 percentiles) and a 128-bin histogram."""
    stats = []
    for plane in data:
        sample = _sample(plane)
        if sample.size == 0:
            stats.append(((0.0, 1.0), (np.zeros(1), np.array([0.0, 1.0]))))
            continue
        if sample.dtype in (np.uint8, np.uint16):  # exact percentiles from value counts: fast
            counts = np.bincount(sample.ravel())
            cumulative = np.cumsum(counts) / sample.size
            lo, hi = (float(np.searchsorted(cumulative, q)) for q in (0.005, 0.999))
            low, top = float(np.flatnonzero(counts)[0]), float(len(counts) - 1)
        else:
            values = sample.astype(np.float32)
            lo, hi = (float(v) for v in np.percentile(values, [0.5, 99.9]))
            low, top = float(values.min()), float(values.max())
        if hi <= lo:
            hi = lo + 1.0
        top = top if top > low else low + 1.0
        counts, edges = np.histogram(sample, bins=128, range=(low, top))
        stats.append(((lo, hi), (counts, edges)))
    return stats


def hex_rgb(colour: str) -> tuple[int, int, int]:
    """``#rrggbb`` as (r, g, b) without Qt (composites are made on the reader thread)."""
    text = colour.lstrip("#")
    return int(text[0:2], 16), int(text[2:4], 16), int(text[4:6], 16)


def _packed_lut(display: ChannelDisplay, dtype: np.dtype) -> np.ndarray:
    """Value -> colour packed as 10-bit R, G, B fields of a uint32 (sums of 4 channels cannot overflow)."""
    values = np.arange(256 if dtype == np.uint8 else 65536, dtype=np.float32)
    lo, hi = display.levels
    ramp = np.clip((values - lo) / max(hi - lo, 1e-12), 0, 1)
    r, g, b = (np.rint(ramp * c).astype(np.uint32) for c in hex_rgb(display.colour))
    return r | (g << 10) | (b << 20)


def composite(data: np.ndarray, displays: list[ChannelDisplay]) -> np.ndarray:
    """Additive colour composite of a (C, h, w) array as (h, w, 3) uint8, each channel through its levels.

    Integer images go through per-channel lookup tables of packed colours (one gather and one add
    per channel and pixel); other types are scaled arithmetically.
    """
    c, h, w = data.shape
    packed = np.zeros((h, w), dtype=np.uint32)
    for index in range(min(c, len(displays))):
        display = displays[index]
        if not display.visible:
            continue
        plane = data[index]
        if plane.dtype in (np.uint8, np.uint16):
            packed += _packed_lut(display, plane.dtype)[plane]
        else:
            lo, hi = display.levels
            ramp = np.clip((plane.astype(np.float32) - lo) / max(hi - lo, 1e-12), 0, 1)
            r, g, b = (np.rint(ramp * col).astype(np.uint32) for col in hex_rgb(display.colour))
            packed += r | (g << 10) | (b << 20)
    out = np.empty((h, w, 3), dtype=np.uint8)
    for channel, shift in enumerate((0, 10, 20)):
        field = (packed >> shift) & 1023 if shift else packed & 1023
        np.minimum(field, 255, out=field)
        out[..., channel] = field
    return out


@dataclass
class Picture:
    """Raw pixels and their composite placed at ``rect`` (level-0 coordinates) from ``level``."""

    level: int
    rect: QRectF
    raw: np.ndarray
    rgb: np.ndarray | None = None
    region: tuple[int, int, int, int] = (0, 0, 0, 0)  # in level pixels


def open_task(path: Path, cache_dir: Path | None, z: int, overview_side: int, token: int) -> dict[str, Any]:
    """Open the pyramid and read its overview (reader thread)."""
    pyramid = open_pyramid(path, cache_dir)
    try:
        level = pyramid.overview_level(overview_side)
        if level is None:
            return {"pyramid": pyramid, "overview": None, "displays": None}
        raw = pyramid.read(level, None, z)
        entry = pyramid.levels[level]
        rect = QRectF(0, 0, entry.width * entry.factor, entry.height * entry.factor)
        names = list(pyramid.channel_names)[: pyramid.n_channels]
        names += [f"channel {i}" for i in range(len(names), pyramid.n_channels)]
        displays = [ChannelDisplay(name, colour, levels, True, levels, histogram)
                    for name, colour, (levels, histogram) in zip(names, default_colours(names), channel_stats(raw))]
        picture = Picture(level, rect, raw, composite(raw, displays), (0, 0, entry.height, entry.width))
        return {"pyramid": pyramid, "overview": picture, "displays": displays}
    except BaseException:
        pyramid.close()
        raise


def read_task(pyramid: Pyramid, level: int, region: tuple[int, int, int, int] | None, z: int,
               displays: list[ChannelDisplay]) -> Picture:
    """Read one region of a level and composite it (reader thread)."""
    entry = pyramid.levels[level]
    if region is None:
        region = (0, 0, entry.height, entry.width)
    raw = pyramid.read(level, region, z)
    y0, x0, y1, x1 = region
    f = entry.factor
    rect = QRectF(x0 * f, y0 * f, raw.shape[2] * f, raw.shape[1] * f)
    return Picture(level, rect, raw, composite(raw, displays), region)


def composite_task(picture: Picture, displays: list[ChannelDisplay]) -> Picture:
    """Recolour a picture after a display change (reader thread)."""
    return replace(picture, rgb=composite(picture.raw, displays))
