"""Hand-made shapes shared by the pipeline tests (exact geometry, so expectations can be computed by hand)."""

from __future__ import annotations

import numpy as np


def disc(shape: tuple[int, int], centre: tuple[float, float], radius: float) -> np.ndarray:
    """Boolean disc of ``radius`` px around ``centre`` (y, x)."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius**2


def ellipse(shape: tuple[int, int], centre: tuple[float, float], a: float, b: float) -> np.ndarray:
    """Boolean axis-aligned ellipse: semi-axis ``a`` along x, ``b`` along y."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return ((yy - centre[0]) / b) ** 2 + ((xx - centre[1]) / a) ** 2 <= 1


def disks(shape=(96, 96), centres=((30, 30), (60, 70)), radius=7.0, value=200.0, noise=0.0, seed=0):
    """Image with bright discs on a background of 10 (and optional noise) plus their label image."""
    image = np.full(shape, 10.0)
    labels = np.zeros(shape, np.uint16)
    for i, centre in enumerate(centres, 1):
        inside = disc(shape, centre, radius)
        image[inside] = value
        labels[inside] = i
    image += np.random.default_rng(seed).normal(0, noise, shape) if noise else 0
    return image.astype(np.float32), labels
