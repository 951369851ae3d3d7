"""Antigen profiles: which predicted cells express an antibody, per cell type and tubule stage.

The paper's rule (science.md section 2): cells predicted on DAPI are overlaid on an antibody
channel; a cell is positive when its mean luminosity is above a threshold T *and* at least 65%
of its pixels are above T/2.  A cell's pixels are those of the ellipse inscribed in its box
(the Faster R-CNN box of a round nucleus; the corners are mostly neighbours or background).

Each cell is measured once, while its tile is in memory: its mean and ``q``, the intensity that
the brightest 65% of its pixels reach (the order statistic with
``count(pixels > t) >= 65% <=> q > t``).  Positivity for any T is then ``mean > T and q > T/2``,
so T can be changed afterwards (GUI preview, report) without reading the image again.

When the user gives no T, :func:`suggest_threshold` takes Otsu's threshold of the per-cell means
(expressing and non-expressing cells form two populations of mean intensity), after dropping
the brightest 0.5% of cells, moved to the middle of the gap between the two groups it splits
(when the populations are well apart, Otsu's criterion is equally good anywhere in the gap and
would otherwise return its lower end); that is the value to check in the preview.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from app.core.errors import UserError

POSITIVE_FRACTION = 0.65


@dataclass(frozen=True)
class Antibody:
    """An antibody channel: display name, channel (name or index) in the section, threshold or None."""

    name: str
    channel: str | int
    threshold: float | None = None

    def to_dict(self) -> dict:
        return {"name": self.name, "channel": self.channel, "threshold": self.threshold}


def parse_antibody(text: str) -> Antibody:
    """Parse the CLI form ``NAME=CHANNEL[:T]`` (channel by name or 0-based index), e.g. ``SOX9=2:1200``."""
    name, sep, rest = text.partition("=")
    name = name.strip()
    if not sep or not name or not rest.strip():
        raise UserError(f"--antibody {text!r}: expected NAME=CHANNEL[:T], e.g. SOX9=1 or SOX9=SOX9:1200")
    channel_text, colon, threshold_text = rest.rpartition(":") if ":" in rest else (rest, "", "")
    channel: str | int = channel_text.strip()
    threshold = None
    if colon:
        try:
            threshold = float(threshold_text)
        except ValueError as error:
            raise UserError(f"--antibody {text!r}: threshold {threshold_text!r} is not a number") from error
        if not math.isfinite(threshold) or threshold <= 0:
            raise UserError(f"--antibody {text!r}: the threshold must be a positive number")
    if isinstance(channel, str) and channel.isdigit():
        channel = int(channel)
    if channel == "":
        raise UserError(f"--antibody {text!r}: no channel given")
    return Antibody(name, channel, threshold)


def ellipse_mask(height: int, width: int) -> np.ndarray:
    """Boolean mask of the ellipse inscribed in a ``height`` x ``width`` box (at least the centre pixel)."""
    if height <= 0 or width <= 0:
        return np.zeros((max(height, 0), max(width, 0)), bool)
    yy = (np.arange(height) + 0.5 - height / 2) / (height / 2)
    xx = (np.arange(width) + 0.5 - width / 2) / (width / 2)
    mask = yy[:, None] ** 2 + xx[None, :] ** 2 <= 1.0
    if not mask.any():
        mask[height // 2, width // 2] = True
    return mask


def order_statistic(values: np.ndarray, fraction: float = POSITIVE_FRACTION) -> float:
    """``q`` such that ``count(values > t) >= ceil(fraction * n)`` exactly when ``q > t``."""
    values = np.sort(np.asarray(values, np.float64).ravel())
    n = len(values)
    if n == 0:
        return float("nan")
    need = max(1, math.ceil(fraction * n - 1e-9))
    return float(values[n - need])


def measure_cells(channel: np.ndarray, boxes: np.ndarray, origin: tuple[int, int] = (0, 0),
                  fraction: float = POSITIVE_FRACTION) -> tuple[np.ndarray, np.ndarray]:
    """Per cell: mean intensity and ``q`` (see module doc) of ``channel`` inside the box's ellipse.

    ``boxes`` are (x0, y0, x1, y1) in section pixels; ``channel`` is a region whose top-left pixel
    is ``origin`` (y, x).  Boxes are rounded outwards to whole pixels and clipped to the region.
    """
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    means = np.full(len(boxes), np.nan)
    quants = np.full(len(boxes), np.nan)
    oy, ox = origin
    h, w = channel.shape
    for i, (x0, y0, x1, y1) in enumerate(boxes):
        bx0, by0 = int(math.floor(x0)) - ox, int(math.floor(y0)) - oy
        bx1, by1 = int(math.ceil(x1)) - ox, int(math.ceil(y1)) - oy
        mask = ellipse_mask(by1 - by0, bx1 - bx0)
        cy0, cx0, cy1, cx1 = max(by0, 0), max(bx0, 0), min(by1, h), min(bx1, w)
        if cy1 <= cy0 or cx1 <= cx0:
            continue
        pixels = channel[cy0:cy1, cx0:cx1][mask[cy0 - by0:cy1 - by0, cx0 - bx0:cx1 - bx0]]
        if pixels.size == 0:
            continue
        means[i] = float(pixels.mean())
        quants[i] = order_statistic(pixels, fraction)
    return means, quants


def is_positive(means: np.ndarray, quants: np.ndarray, threshold: float) -> np.ndarray:
    """The paper's rule: mean > T and at least the required share of pixels > T/2 (NaN = not measured)."""
    means = np.asarray(means, np.float64)
    quants = np.asarray(quants, np.float64)
    with np.errstate(invalid="ignore"):
        return (means > threshold) & (quants > threshold / 2)


def suggest_threshold(means: np.ndarray) -> float:
    """Otsu's threshold of the per-cell mean intensities (brightest 0.5% dropped); NaN when too few cells."""
    from skimage.filters import threshold_otsu

    values = np.asarray(means, np.float64)
    values = values[np.isfinite(values)]
    if len(values) < 10 or np.ptp(values) == 0:
        return float("nan")
    values = values[values <= np.quantile(values, 0.995)]
    otsu = threshold_otsu(values, nbins=256)
    below, above = values[values <= otsu], values[values > otsu]
    if not len(below) or not len(above):
        return float(otsu)
    # with well separated populations every value in the gap splits equally well: take its middle
    return float((below.max() + above.min()) / 2)


def profile(cell_types: Sequence[int], stages: Sequence[int], positive: Sequence[bool], n_types: int,
            n_stages: int) -> dict[str, np.ndarray]:
    """% positive per stage (rows) and cell type (columns), with the counts behind it.

    ``stages`` holds a stage index per cell, or -1 for cells outside any usable tubule (left out).
    Cells with no cells of a (stage, type) give NaN percentages.
    """
    types = np.asarray(cell_types, np.int64)
    stage = np.asarray(stages, np.int64)
    pos = np.asarray(positive, bool)
    total = np.zeros((n_stages, n_types), np.int64)
    positive_counts = np.zeros((n_stages, n_types), np.int64)
    use = stage >= 0
    np.add.at(total, (stage[use], types[use]), 1)
    np.add.at(positive_counts, (stage[use & pos], types[use & pos]), 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        percent = np.where(total > 0, 100.0 * positive_counts / np.maximum(total, 1), np.nan)
    return {"percent": percent, "positive": positive_counts, "total": total}
