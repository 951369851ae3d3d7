"""Phantom styles: testis sections as another lab would image them, with the same exact truth.

The demo models are trained on the ``default`` style.  A lab's sections differ from it in ways a
model trained on one lab fails on: another objective (pixel size), another stain and camera (DAPI
contrast, chromatin texture, background, noise), focus (overall blur and out-of-focus patches),
lighting (strong gradients and vignetting), cutting (oblique cuts give elongated tubules; folds
where the tissue lies double, tears where it is missing) and tissue (autofluorescent debris, more
interstitial cells).  A :class:`PhantomStyle` sets each of these; ``stagescope phantom testis
--style NAME`` picks one of :data:`STYLES`.  Everything here is geometry or analytic fields keyed
to the section grid, so a window still renders exactly as the same crop of the whole section.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from app.core.errors import UserError

DEFAULT_PIXEL_SIZE_UM = 0.5


@dataclass(frozen=True)
class PhantomStyle:
    """How a section is cut, stained and imaged (``default``: the training phantoms)."""

    name: str = "default"
    description: str = "the phantoms the demo models were trained on"
    pixel_size_um: float = DEFAULT_PIXEL_SIZE_UM  # objects shrink or grow by 0.5 / pixel_size_um
    blur_sigma: float = 0.9
    defocus_sigma: float = 0.0  # blur inside out-of-focus patches (0 = none)
    defocus_patches: int = 0
    gradient: float = 0.15  # lighting slope range (+-), across the section
    vignette: float = 0.05  # lighting drop at the corners
    background: float = 1.0  # tissue (interstitium, epithelium, lumen) DAPI level, times the default's
    texture: float = 1.0  # chromatin texture contrast, times the default's
    gamma: float = 1.0  # DAPI drawn as value ** gamma (stain / camera response)
    noise: float = 1.0
    oblique: float = 0.0  # share of usable tubules cut obliquely (elongated, still stageable)
    interstitial: float = 1.0  # Leydig / endothelial clusters, times the default's
    debris: float = 0.0  # autofluorescent specks per tubule
    folds: int = 0  # bands where the tissue lies double (brighter, cells unchanged)
    tears: int = 0  # cracks with no tissue (cells under them are not drawn and not in the truth)

    @property
    def scale(self) -> float:
        """Section pixels of this style per pixel of the default (objects' size factor)."""
        return DEFAULT_PIXEL_SIZE_UM / self.pixel_size_um

    @property
    def is_default(self) -> bool:
        return self == STYLES["default"]

    @property
    def blur_margin(self) -> int:
        """Pixels read around a window so its blur equals the whole section's (scipy's truncate=4)."""
        return int(4.0 * max(self.blur_sigma, self.defocus_sigma) + 0.5)


STYLES: dict[str, PhantomStyle] = {
    "default": PhantomStyle(),
    "widefield": PhantomStyle(
        name="widefield", description="a widefield lab: 0.65 um pixels, soft focus with out-of-focus patches, "
                                      "strong vignetting, dim flat stain, more camera noise, debris",
        pixel_size_um=0.65, blur_sigma=1.5, defocus_sigma=3.5, defocus_patches=4, gradient=0.3, vignette=0.3,
        background=1.6, texture=0.6, gamma=0.8, noise=2.0, oblique=0.15, interstitial=1.5, debris=6.0),
    "cryosection": PhantomStyle(
        name="cryosection", description="a cryosection lab: 0.4 um pixels, oblique cuts (elongated tubules), folds "
                                        "and tears, crisp high-contrast chromatin, many interstitial cells, debris",
        pixel_size_um=0.4, blur_sigma=0.7, gradient=0.2, vignette=0.1, background=0.7, texture=1.6, gamma=1.3,
        noise=1.3, oblique=0.45, interstitial=2.5, debris=10.0, folds=2, tears=2),
}


def get_style(style: PhantomStyle | str | None) -> PhantomStyle:
    """A style by name (None = default); an unknown name is a one-line UserError listing the known ones."""
    if style is None:
        return STYLES["default"]
    if isinstance(style, PhantomStyle):
        return style
    if style not in STYLES:
        raise UserError(f"unknown phantom style {style!r}; known: {', '.join(STYLES)}")
    return STYLES[style]


# ------------------------------------------------------------------------------------ geometry


@dataclass(frozen=True)
class Band:
    """A straight band across the section (a fold or a tear): centre line from (y0, x0) to (y1, x1), half-width."""

    y0: float
    x0: float
    y1: float
    x1: float
    half_width: float

    def distance(self, yy: Any, xx: Any) -> Any:
        """Distance of pixel centres (index arrays) from the band's centre segment."""
        py, px = yy + 0.5 - self.y0, xx + 0.5 - self.x0
        dy, dx = self.y1 - self.y0, self.x1 - self.x0
        t = np.clip((py * dy + px * dx) / max(dy * dy + dx * dx, 1e-9), 0.0, 1.0)
        return np.hypot(py - t * dy, px - t * dx)

    def covers(self, yy: Any, xx: Any, grow: float = 0.0) -> Any:
        return self.distance(yy, xx) <= self.half_width + grow


def random_bands(rng: np.random.Generator, shape: tuple[int, int], count: int, width: tuple[float, float]) -> list[Band]:
    """``count`` bands crossing the middle part of the section at random angles."""
    height, width_px = shape
    out = []
    for _ in range(count):
        cy, cx = rng.uniform(0.25, 0.75) * height, rng.uniform(0.25, 0.75) * width_px
        angle, half = rng.uniform(0, math.pi), rng.uniform(0.25, 0.45) * min(shape)
        dy, dx = math.sin(angle) * half, math.cos(angle) * half
        out.append(Band(cy - dy, cx - dx, cy + dy, cx + dx, rng.uniform(*width) / 2))
    return out


def defocus_centres(rng: np.random.Generator, shape: tuple[int, int], count: int) -> np.ndarray:
    """(count, 3) out-of-focus patches: centre y, x and radius (section pixels)."""
    height, width = shape
    return np.array([(rng.uniform(0.1, 0.9) * height, rng.uniform(0.1, 0.9) * width,
                      rng.uniform(0.12, 0.25) * min(shape)) for _ in range(count)], float).reshape(-1, 3)


def defocus_weight(patches: np.ndarray, window: tuple[int, int, int, int]) -> np.ndarray:
    """0..1 share of the out-of-focus image per pixel of ``window`` (smooth Gaussian patches)."""
    yy = np.arange(window[0], window[2], dtype=np.float32)[:, None] + 0.5
    xx = np.arange(window[1], window[3], dtype=np.float32)[None, :] + 0.5
    weight = np.zeros((window[2] - window[0], window[3] - window[1]), np.float32)
    for cy, cx, radius in patches:
        weight = np.maximum(weight, np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * radius ** 2)))
    return weight

