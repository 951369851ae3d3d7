"""Smooth background subtraction before Kaizen normalises an image.

Kaizen lowers the L1 distance between its internal picture and the input; a raised or sloping
background is residual like a nucleus, so on an image with a background gradient it is redrawn as
hundreds of objects.  The background here is a grey opening (lower envelope) much wider than the
nuclei, computed on a downsampled copy (cheap for any image size), smoothed and brought back to
full size; subtracting it leaves nuclei and noise on a flat zero background.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi
from skimage import transform

# side (px) of the opening on the downsampled grid: the image is shrunk so the window is this wide
SMALL_WINDOW = 16


def smooth_background(gray: np.ndarray, window: float) -> np.ndarray:
    """The smooth background of ``gray``: a grey opening with a ``window`` px square, smoothed (input grid).

    Bright structures narrower than ``window`` are not part of it; the image is downsampled by
    about ``window / SMALL_WINDOW`` first (anti-aliased, which also averages the noise down).
    """
    image = np.asarray(gray, np.float32)
    factor = max(1.0, float(window) / SMALL_WINDOW)
    side = max(3, int(round(window / factor)))
    if factor > 1.0:
        shape = tuple(max(1, int(round(s / factor))) for s in image.shape)
        small = transform.resize(image, shape, order=1, preserve_range=True, anti_aliasing=True)
    else:
        small = image
    opened = ndi.grey_opening(small, size=(side, side), mode="reflect")
    smooth = ndi.uniform_filter(opened, side, mode="reflect")
    if smooth.shape != image.shape:
        smooth = transform.resize(smooth, image.shape, order=1, preserve_range=True, anti_aliasing=False)
    return smooth.astype(np.float32)


def subtract_background(gray: np.ndarray, window: float) -> np.ndarray:
    """``gray`` minus its smooth background (:func:`smooth_background`); negative values are kept."""
    image = np.asarray(gray, np.float32)
    return image - smooth_background(image, window)


__all__ = ["smooth_background", "subtract_background", "SMALL_WINDOW"]
