"""Object size: estimate the typical object diameter, normalise intensities, rescale to the model's size.

Real images differ in nucleus size by 10x (nuclei-dsb2018: 7 to 52 px median diameter), while a
Kaizen model redraws objects of one size (``target_diameter``).  Images are therefore rescaled by
``target / diameter`` before decomposition and results are mapped back to the original grid.
The diameter comes from labels when training and from the image when predicting.  The image
estimate is the median equivalent diameter of Otsu components, cross-checked against a
distance-transform estimate; when the two disagree by more than 1.5x a Laplacian-of-Gaussian blob
estimate breaks the tie (median of three), and the result is clipped to a sane range.  On the
training split this was within 1.5x of the label diameter on 97% of images.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi
from skimage import feature, filters, transform

from app.core.errors import ImageError

MIN_DIAMETER = 4.0
MAX_DIAMETER = 250.0
NORM_PERCENTILES = (1.0, 99.9)
# ratio of the distance-transform estimate to the label diameter, and of LoG's, on the training split
DT_CALIBRATION = 0.852
LOG_CALIBRATION = 0.924
MIN_CONTRAST_TO_NOISE = 8.0
MAX_NORMALISED = 3.0


def as_gray(image: np.ndarray, name: str = "image") -> np.ndarray:
    """A 2-D float32 gray image: 2-D passes, RGB(A) (H, W, 3|4) becomes the mean of R, G, B; else an error.

    Multi-channel or z-stack images are refused (the message names the shape) because silently
    picking or mixing channels would decompose the wrong thing.
    """
    array = np.asarray(image)
    if array.ndim == 3 and array.shape[-1] in (3, 4) and array.shape[0] > 4:
        array = array[..., :3].astype(np.float32).mean(axis=-1)
    elif array.ndim == 3 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 2:
        raise ImageError(f"{name}: Kaizen needs a 2-D gray image (or RGB, converted to gray); "
                         f"this one has shape {array.shape}: pick one channel / z-plane first")
    if array.dtype.kind not in "uif":
        raise ImageError(f"{name}: unsupported pixel type {array.dtype}")
    return array.astype(np.float32, copy=False)


def _percentiles(image: np.ndarray) -> tuple[float, float]:
    """1st and 99.9th percentiles of the 3x3-median-filtered image, so a few hot pixels do not set the range."""
    step = max(1, int(np.ceil(np.sqrt(image.size / 2_000_000))))  # big images: every step-th row and column
    sample = ndi.median_filter(image[::step, ::step] if step > 1 else image, size=3)
    low, high = np.percentile(sample, NORM_PERCENTILES)
    return float(low), float(high)


def normalise(image: np.ndarray) -> tuple[np.ndarray, float, float]:
    """Map the 1st..99.9th percentile to 0..1, clipped to 0..3 (hot pixels); returns (image, low, high)."""
    low, high = _percentiles(image)
    scale = max(high - low, 1e-6)
    return np.clip((image - low) / scale, 0.0, MAX_NORMALISED).astype(np.float32), low, low + scale


def has_signal(image: np.ndarray, low: float | None = None, high: float | None = None) -> bool:
    """False for a constant image or one whose contrast is within a few noise levels (nothing to find).

    ``low``/``high``: the image's normalisation range if already known (from :func:`normalise`).
    """
    if low is None or high is None:
        low, high = _percentiles(image)
    if high - low <= 1e-6 * max(1.0, abs(float(high))):
        return False
    # noise from differences of neighbouring pixels (robust MAD), insensitive to smooth objects
    diff = np.diff(image[:: max(1, image.shape[0] // 256), :].astype(np.float32), axis=1)
    sigma = 1.4826 * np.median(np.abs(diff - np.median(diff))) / np.sqrt(2)
    return bool(high - low > MIN_CONTRAST_TO_NOISE * sigma)


def diameter_from_labels(labels: np.ndarray) -> float | None:
    """Median equivalent-circle diameter of the labelled objects, or None without objects."""
    counts = np.bincount(labels.ravel().astype(np.int64))[1:]
    counts = counts[counts > 0]
    if counts.size == 0:
        return None
    return float(np.median(2.0 * np.sqrt(counts / np.pi)))


def _foreground(image: np.ndarray) -> np.ndarray:
    smooth = ndi.gaussian_filter(image, 1.0)
    return smooth > filters.threshold_otsu(smooth)


def _components_diameter(fg: np.ndarray) -> float | None:
    labels, n = ndi.label(fg)
    if n == 0:
        return None
    areas = np.bincount(labels.ravel())[1:]
    areas = areas[areas >= 9]
    return float(2.0 * np.sqrt(np.median(areas) / np.pi)) if areas.size else None


def _distance_diameter(fg: np.ndarray) -> float | None:
    dist = ndi.distance_transform_edt(ndi.binary_opening(fg))
    peaks = feature.peak_local_max(dist, min_distance=3, threshold_abs=1.5, exclude_border=False)
    if len(peaks) == 0:
        return None
    return float(2.0 * np.median(dist[tuple(peaks.T)]) / DT_CALIBRATION)


def _log_diameter(image: np.ndarray) -> float | None:
    factor = min(1.0, 256.0 / max(image.shape))
    small = transform.rescale(image, factor, anti_aliasing=True) if factor < 1 else image
    blobs = feature.blob_log(small, min_sigma=1.5, max_sigma=30, num_sigma=20, log_scale=True,
                             threshold=0.05, exclude_border=False)
    if len(blobs) == 0:
        return None
    return float(2.0 * np.sqrt(2.0) * np.median(blobs[:, 2]) / factor / LOG_CALIBRATION)


def estimate_diameter(image: np.ndarray) -> float | None:
    """Typical object diameter (px) of a normalised image, or None when nothing stands out."""
    if not has_signal(image):
        return None
    fg = _foreground(image)
    if fg.all() or not fg.any():
        return None
    cc, dt = _components_diameter(fg), _distance_diameter(fg)
    values = [v for v in (cc, dt) if v]
    if not values:
        return None
    if len(values) == 2 and max(values) / min(values) > 1.5:
        log = _log_diameter(image)
        if log:
            values.append(log)
    estimate = float(np.median(values))
    return float(np.clip(estimate, MIN_DIAMETER, MAX_DIAMETER))


def rescale(image: np.ndarray, factor: float, order: int = 1) -> np.ndarray:
    """Resize by ``factor`` (anti-aliased when shrinking); ``order=0`` for label images."""
    if abs(factor - 1.0) < 1e-3:
        return image
    shape = tuple(max(1, int(round(s * factor))) for s in image.shape)
    if order == 0:
        return transform.resize(image, shape, order=0, preserve_range=True, anti_aliasing=False).astype(image.dtype)
    return transform.resize(image, shape, order=order, preserve_range=True,
                            anti_aliasing=factor < 1).astype(np.float32)
