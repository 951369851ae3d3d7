"""Reading a section for the models: overview (block means read in strips), intensity range, tissue mask, tiles.

Everything here reads pixels or computes windows; nothing runs a network.  Split from
:mod:`.predict`, which drives the tubule and cell passes over these tiles.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from app.core.errors import ImageError
from app.core.tiles import TileGrid
from app.pipelines.stagetool.models import ModelConfig, normalise


def reduce_block(array: np.ndarray, factor: int) -> np.ndarray:
    """Block means of an (H, W) array by an integer factor (edges padded by replication)."""
    array = np.asarray(array, np.float32)
    if factor == 1:
        return array
    h, w = array.shape
    hh, ww = -(-h // factor), -(-w // factor)
    if (hh * factor, ww * factor) != (h, w):
        array = np.pad(array, ((0, hh * factor - h), (0, ww * factor - w)), mode="edge")
    return array.reshape(hh, factor, ww, factor).mean(axis=(1, 3))


def is_whole(step: float) -> bool:
    """True when a section step is a whole number of pixels (block means need no interpolation)."""
    return abs(step - round(step)) < 1e-6 and round(step) >= 1


def matched_step(downsample: float, model_pixel_um: float | None, section_pixel_um: float | None) -> float:
    """Section pixels per model pixel that show a section at the model's pixel size.

    Without both pixel sizes, or when they agree within 5%, the model's own downsample is kept.
    """
    if not model_pixel_um or not section_pixel_um:
        return downsample
    ratio = float(model_pixel_um) / float(section_pixel_um)
    return downsample if abs(ratio - 1.0) < 0.05 else downsample * ratio


def to_model_pixels(array: np.ndarray, step: float, shape: tuple[int, int] | None = None) -> np.ndarray:
    """A section region in model pixels: block means for a whole step, else linear resampling.

    A fractional step (the section's pixel size differs from the model's) is resampled with
    scikit-image, anti-aliased when shrinking; pixel i of the result covers section pixels
    [i * step, (i + 1) * step).
    """
    if is_whole(step):
        return reduce_block(array, int(round(step)))
    from skimage.transform import resize

    array = np.asarray(array, np.float32)
    shape = shape or (max(1, int(round(array.shape[0] / step))), max(1, int(round(array.shape[1] / step))))
    return resize(array, shape, order=1, anti_aliasing=step > 1, preserve_range=True).astype(np.float32)


def read_region(image: Any, channel: int, region: tuple[int, int, int, int], where: str) -> np.ndarray:
    """A region (zero padded outside the section) of one channel; an unreadable region names the tile."""
    try:
        return np.asarray(image.read(channel=channel, region=region))
    except Exception as error:  # codec errors, truncated strips, I/O errors (ImageError included)
        raise ImageError(f"{where}: cannot read the tile at y {region[0]}-{region[2]}, x {region[1]}-{region[3]} "
                         f"of channel {channel}: {error}") from error


def section_overview(image: Any, channel: int, factor: int, where: str, strip_pixels: int = 16 << 20) -> np.ndarray:
    """The channel reduced by ``factor`` with block means, read in strips of about ``strip_pixels`` pixels."""
    height, width = image.info.height, image.info.width
    strip = max(factor, (strip_pixels // max(width, 1) // factor) * factor)
    parts = []
    for y0 in range(0, height, strip):
        y1 = min(y0 + strip, height)
        block = read_region(image, channel, (y0, 0, y1, width), where)
        parts.append(reduce_block(block, factor))
    return np.concatenate(parts, axis=0)


def intensity_range(overview: np.ndarray) -> tuple[float, float]:
    """Normalisation range of a section: 1st and 99.9th percentile of its overview."""
    low, high = np.percentile(overview, [1.0, 99.9])
    if high <= low:
        high = low + 1.0
    return float(low), float(high)


def tissue_mask(overview: np.ndarray) -> np.ndarray:
    """Tissue on the overview: smoothed intensity above Otsu's threshold, small gaps closed."""
    from scipy import ndimage
    from skimage.filters import threshold_otsu

    smooth = ndimage.gaussian_filter(overview.astype(np.float32), 2.0)
    if np.ptp(smooth) == 0:
        return np.zeros(overview.shape, bool)
    mask = smooth > threshold_otsu(smooth)
    return ndimage.binary_closing(mask, iterations=3) | mask


def tissue_fraction(mask: np.ndarray, window: tuple[int, int, int, int], factor: int) -> float:
    """Share of a window (section pixels) that the overview marks as tissue."""
    y0, x0, y1, x1 = (max(0, v // factor) for v in window)
    part = mask[y0:max(y0 + 1, -(-window[2] // factor)), x0:max(x0 + 1, -(-window[3] // factor))]
    return float(part.mean()) if part.size else 0.0


def model_tile(image: Any, channel: int, window: tuple[int, int, int, int], config: ModelConfig,
               stats: tuple[float, float], where: str) -> np.ndarray:
    """The normalised model input for a window: read, reduced by the model's downsample, tile-sized."""
    raw = read_region(image, channel, window, where)
    small = to_model_pixels(raw, config.downsample)
    out = np.zeros((config.tile_size, config.tile_size), np.float32)
    h, w = min(small.shape[0], config.tile_size), min(small.shape[1], config.tile_size)
    out[:h, :w] = normalise(small[:h, :w], *stats).numpy()
    return out


def window_side(config: ModelConfig) -> int:
    """Section pixels a model tile covers (its tile size times the section step)."""
    return int(round(config.tile_size * config.downsample))


def tile_windows(height: int, width: int, config: ModelConfig, overlap: int) -> list[Any]:
    """Tiles of the section for a model: cores on a grid, windows of the model's tile size (section px)."""
    side = window_side(config)
    overlap = min(overlap, side // 2)
    return list(TileGrid(height, width, tile_size=side, overlap=overlap))


def window_of(tile: Any, config: ModelConfig) -> tuple[int, int, int, int]:
    """The section region a model tile covers: the model's tile size, kept inside the section.

    The grid's window is moved back inside the section wherever it reaches past an edge (it still
    holds its core), so the networks, trained on crops inside sections, never see a band of
    padding: on padded edge tiles the tubule model drew masks across the interstitium that
    joined neighbouring tubules.  A section smaller than a tile is padded on its bottom/right.
    """
    side = window_side(config)
    height, width = tile.image_shape
    y0 = max(0, min(int(tile.window[0]), height - side))
    x0 = max(0, min(int(tile.window[1]), width - side))
    return (y0, x0, y0 + side, x0 + side)
