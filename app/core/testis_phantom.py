"""Synthetic DAPI testis cross-sections with exact ground truth (tubule stages, cell types, antibody channels).

The testis part of :mod:`app.core.phantoms` (which re-exports ``testis_layout``, ``render_testis``,
``render_testis_truth`` and ``write_testis``); a module of its own because it is the largest phantom.

What is drawn (science.md section 2; 0.5 µm per pixel, so a tubule is ~400 px across):

* a section outline (an irregular ellipse) with dim interstitial tissue holding distractor nuclei
  (Leydig cells, flat endothelial and peritubular myoid nuclei) that are *not* among the 9 types;
* round seminiferous tubules packed inside it, each at one of the 5 stage groups, some damaged
  (irregular, cells scattered, no lumen) or cut longitudinally (elongated); both are marked
  ``usable: false`` in the truth, as experts would leave them out of staging;
* cells in the layered arrangement: Sertoli and spermatogonia at the basal wall, spermatocytes in
  the middle, round and elongating spermatids towards the lumen; m2m (metaphase plates) and
  secondary spermatocytes only at XII; late elongating spermatids in deep bundles at I-V and at
  the lumen at VI-VIII, none from IX; early elongating spermatids from IX, more elongated with
  each later stage; preleptotene/leptotene/zygotene (prePach) from VI-VIII on;
* types differ by size, shape, orientation, chromatin texture (nucleolus, chromocenter, threads,
  heterochromatin rims) and position, with overlapping intensity ranges, so no type has a unique
  brightness;
* blur, uneven illumination and noise; optional antibody channels where each marker lights its
  cell types at the levels of :mod:`app.core.testis_classes` (AR weaker at IX-XII, USF1 in a
  subset of spermatogonia).

Truth per section: a tubule id image and a JSON file (tubules with stage / kind / usable; cells
with box, type, tubule and marker positivity).  :func:`write_testis` writes what
``stagescope phantom testis`` should write: DAPI as channel 0 and the antibody channels after it,
named in the OME metadata.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from app.core.errors import UserError
from app.core.testis_classes import CELL_TYPES, MARKERS, STAGES, marker_level, positive_fraction

PIXEL_SIZE_UM = 0.5
TRUTH_SUFFIX = "_truth.json"
TUBULES_SUFFIX = "_tubules.tif"
DEFAULT_MARKERS = ("SOX9",)

# cells per tubule of radius 200 px, per stage (I-V, VI-VIII, IX, X-XI, XII)
COMPOSITION = {
    "Sertoli": (20, 20, 20, 20, 20),
    "Spg": (16, 12, 12, 12, 12),
    "Spc prePach": (0, 24, 30, 30, 28),
    "Spc Pach": (34, 34, 34, 34, 10),
    "m2m": (0, 0, 0, 0, 16),
    "Spc sec": (0, 0, 0, 0, 12),
    "round spermatid": (110, 110, 0, 0, 0),
    "early elongating spermatid": (0, 0, 95, 95, 90),
    "late elongating spermatid": (80, 80, 0, 0, 0),
}
# radial band (fraction of the tubule radius; 1 = basal wall) per type
BANDS = {
    "Sertoli": (0.86, 0.95), "Spg": (0.91, 0.97), "Spc prePach": (0.80, 0.90), "Spc Pach": (0.62, 0.84),
    "m2m": (0.55, 0.80), "Spc sec": (0.52, 0.74), "round spermatid": (0.42, 0.62),
    "early elongating spermatid": (0.42, 0.60), "late elongating spermatid": (0.40, 0.50),
}


@dataclass
class Cell:
    """One nucleus: centre (y, x), semi-axes (a along ``angle``, b across), type, texture seed, brightness."""

    cy: float
    cx: float
    a: float
    b: float
    angle: float
    kind: str
    brightness: float
    tubule: int
    stage: str | None = None

    @property
    def box(self) -> tuple[float, float, float, float]:
        """Tight box (x0, y0, x1, y1) of the ellipse (pixel grid, end exclusive)."""
        ex = math.sqrt((self.a * math.cos(self.angle)) ** 2 + (self.b * math.sin(self.angle)) ** 2)
        ey = math.sqrt((self.a * math.sin(self.angle)) ** 2 + (self.b * math.cos(self.angle)) ** 2)
        return (math.floor(self.cx - ex + 0.5), math.floor(self.cy - ey + 0.5),
                math.floor(self.cx + ex + 0.5) + 1, math.floor(self.cy + ey + 0.5) + 1)


@dataclass
class Tubule:
    """A tubule: id, centre, radii (ry, rx), orientation, stage, kind (normal, damaged, longitudinal)."""

    id: int
    cy: float
    cx: float
    ry: float
    rx: float
    angle: float
    stage: str
    kind: str = "normal"
    wobble: tuple[float, float, float] = (0.0, 0.0, 0.0)

    @property
    def usable(self) -> bool:
        return self.kind == "normal"


@dataclass
class TestisLayout:
    """Where everything is: section shape, outline, tubules, cells of the 9 types and distractor nuclei."""

    shape: tuple[int, int]
    seed: int
    outline: tuple[float, float, float, float]  # cy, cx, ry, rx
    tubules: list[Tubule] = field(default_factory=list)
    cells: list[Cell] = field(default_factory=list)
    distractors: list[Cell] = field(default_factory=list)


# ------------------------------------------------------------------------------------ layout


def _place_tubules(rng: np.random.Generator, shape: tuple[int, int], outline: tuple[float, float, float, float],
                   damaged: float, longitudinal: float) -> list[Tubule]:
    """Tubules packed inside the outline on a jittered hexagonal lattice, separated by thin interstitium."""
    cy0, cx0, ry0, rx0 = outline
    spacing = 440.0
    rows = np.arange(cy0 - ry0, cy0 + ry0 + spacing, spacing * math.sqrt(3) / 2)
    centres = []
    for r, y in enumerate(rows):
        for x in np.arange(cx0 - rx0 + (spacing / 2 if r % 2 else 0), cx0 + rx0 + spacing, spacing):
            centres.append((y + rng.normal(0, 18), x + rng.normal(0, 18)))
    centres = np.array(centres).reshape(-1, 2)
    inside = ((centres[:, 0] - cy0) / ry0) ** 2 + ((centres[:, 1] - cx0) / rx0) ** 2 <= 0.8
    centres = centres[inside]
    if not len(centres):
        return []
    distance = np.hypot(*(centres[:, None, :] - centres[None, :, :]).transpose(2, 0, 1))
    np.fill_diagonal(distance, np.inf)
    nearest = distance.min(1) if len(centres) > 1 else np.full(len(centres), 2 * spacing)
    tubules: list[Tubule] = []
    for (cy, cx), room in zip(centres, nearest):
        radius = min(rng.uniform(180, 215), room / 2 - rng.uniform(6, 14))
        draw = rng.random()
        kind = "longitudinal" if draw < longitudinal else ("damaged" if draw < longitudinal + damaged else "normal")
        if kind == "longitudinal":
            ry, rx = radius * 0.75, radius * 1.3  # an oblique cut: longer than wide, but it must fit its cell
        else:
            ry, rx = radius * rng.uniform(0.93, 1.0), radius * rng.uniform(0.96, 1.03)
        wobble = (rng.uniform(0.0, 0.03 if kind != "damaged" else 0.12), rng.uniform(0, 2 * math.pi),
                  float(rng.integers(3, 7)))
        stage = STAGES[int(rng.integers(len(STAGES)))]
        tubules.append(Tubule(len(tubules) + 1, float(cy), float(cx), ry, rx, rng.uniform(0, math.pi), stage, kind,
                              wobble))
    return tubules


def _shape_of(kind: str, stage_index: int, rng: np.random.Generator) -> tuple[float, float, float, float]:
    """(a, b, brightness, angle offset) of a nucleus: size and shape by type (and stage for spermatids)."""
    if kind == "Sertoli":
        return rng.uniform(8.5, 10.5), rng.uniform(5.0, 6.5), rng.uniform(0.45, 0.75), 0.0
    if kind == "Spg":
        return rng.uniform(6.5, 8.0), rng.uniform(3.8, 4.8), rng.uniform(0.55, 0.9), math.pi / 2
    if kind == "Spc prePach":
        r = rng.uniform(5.0, 6.0)
        return r * rng.uniform(1.0, 1.12), r, rng.uniform(0.55, 0.85), rng.uniform(0, math.pi)
    if kind == "Spc Pach":
        r = rng.uniform(8.5, 10.0) + (0.8 if stage_index in (3, 4) else 0.0)
        return r * rng.uniform(1.0, 1.08), r, rng.uniform(0.45, 0.7), rng.uniform(0, math.pi)
    if kind == "m2m":
        return rng.uniform(8.0, 10.0), rng.uniform(2.6, 3.4), rng.uniform(0.85, 1.15), math.pi / 2 + rng.normal(0, 0.4)
    if kind == "Spc sec":
        r = rng.uniform(6.0, 7.0)
        return r * rng.uniform(1.0, 1.1), r, rng.uniform(0.6, 0.85), rng.uniform(0, math.pi)
    if kind == "round spermatid":
        r = rng.uniform(4.3, 5.2)
        return r, r * rng.uniform(0.92, 1.0), rng.uniform(0.45, 0.7), rng.uniform(0, math.pi)
    if kind == "early elongating spermatid":
        aspect = {2: 1.35, 3: 2.0, 4: 2.5}.get(stage_index, 2.0) * rng.uniform(0.9, 1.1)
        b = rng.uniform(2.8, 3.6) if stage_index == 2 else rng.uniform(2.4, 3.0)
        return b * aspect, b, rng.uniform(0.7, 1.0), rng.normal(0, 0.25)
    # late elongating spermatid: thin, dense, radial
    return rng.uniform(4.8, 6.0), rng.uniform(1.4, 1.9), rng.uniform(0.95, 1.3), rng.normal(0, 0.2)


def _cells_of(tubule: Tubule, rng: np.random.Generator) -> list[Cell]:
    """The germ and Sertoli cells of one tubule, layered by type (scattered when damaged), not overlapping."""
    stage_index = STAGES.index(tubule.stage)
    scale = 1.5 * (tubule.ry * tubule.rx) / 200.0 ** 2
    placed: list[Cell] = []
    xy = np.zeros((0, 2))
    radii = np.zeros(0)
    order = ["m2m", "Spc Pach", "Sertoli", "Spg", "Spc prePach", "Spc sec", "early elongating spermatid",
             "round spermatid", "late elongating spermatid"]
    for kind in order:
        n = int(round(COMPOSITION[kind][stage_index] * scale * rng.uniform(0.85, 1.15)))
        if kind == "m2m" and stage_index == 0 and rng.random() < 0.15:
            n = int(rng.integers(1, 3))  # occasionally seen in I-V (paper, figure 17)
        band = BANDS[kind]
        if kind == "late elongating spermatid" and stage_index == 0:
            band = (0.55, 0.75)  # deep bundles at I-V
        bundle_centre = None
        for i in range(n):
            for _ in range(30):
                if tubule.kind == "damaged":
                    rho = rng.uniform(0.2, 0.95)
                elif kind == "late elongating spermatid" and stage_index == 0:
                    if bundle_centre is None or i % 6 == 0:
                        bundle_centre = (rng.uniform(*band), rng.uniform(0, 2 * math.pi))
                    rho = bundle_centre[0] + rng.normal(0, 0.025)
                else:
                    rho = rng.uniform(*band)
                phi = (bundle_centre[1] + rng.normal(0, 0.03)) if (kind == "late elongating spermatid"
                                                                    and stage_index == 0 and tubule.kind != "damaged"
                                                                    and bundle_centre is not None) else rng.uniform(0, 2 * math.pi)
                ux, uy = math.cos(phi), math.sin(phi)
                ca, sa = math.cos(tubule.angle), math.sin(tubule.angle)
                px, py = rho * tubule.rx * ux, rho * tubule.ry * uy
                cx = tubule.cx + px * ca - py * sa
                cy = tubule.cy + px * sa + py * ca
                a, b, bright, offset = _shape_of(kind, stage_index, rng)
                radial = math.atan2(cy - tubule.cy, cx - tubule.cx)
                if kind in ("Sertoli", "early elongating spermatid", "late elongating spermatid", "Spg", "m2m"):
                    angle = radial + offset
                else:
                    angle = offset
                if tubule.kind == "damaged":
                    angle = rng.uniform(0, math.pi)
                r_cell = a * 0.85 if kind != "late elongating spermatid" else 2.2
                if len(xy) and (np.hypot(xy[:, 0] - cy, xy[:, 1] - cx) < (radii + r_cell) * 0.95).any():
                    continue
                placed.append(Cell(cy, cx, a, b, angle, kind, bright, tubule.id, tubule.stage))
                xy = np.vstack([xy, [cy, cx]])
                radii = np.append(radii, r_cell)
                break
    return placed


def _distractors(rng: np.random.Generator, layout: TestisLayout, tubule_mask_at) -> list[Cell]:
    """Interstitial nuclei that are none of the 9 types: Leydig clusters, endothelium, peritubular myoid cells."""
    out: list[Cell] = []
    cy0, cx0, ry0, rx0 = layout.outline
    for tubule in layout.tubules:  # peritubular myoid cells hugging the wall
        for _ in range(int(rng.integers(4, 9))):
            phi = rng.uniform(0, 2 * math.pi)
            rho = 1.04
            ca, sa = math.cos(tubule.angle), math.sin(tubule.angle)
            px, py = rho * tubule.rx * math.cos(phi), rho * tubule.ry * math.sin(phi)
            cx, cy = tubule.cx + px * ca - py * sa, tubule.cy + px * sa + py * ca
            angle = math.atan2(cy - tubule.cy, cx - tubule.cx) + math.pi / 2
            out.append(Cell(cy, cx, rng.uniform(8, 11), rng.uniform(1.8, 2.6), angle, "myoid", rng.uniform(0.5, 0.8), 0))
    n_leydig = int(len(layout.tubules) * rng.uniform(5, 9))
    tries = 0
    while n_leydig > 0 and tries < 40 * len(layout.tubules) + 100:
        tries += 1
        cy, cx = rng.uniform(cy0 - ry0, cy0 + ry0), rng.uniform(cx0 - rx0, cx0 + rx0)
        if ((cy - cy0) / ry0) ** 2 + ((cx - cx0) / rx0) ** 2 > 0.9 or tubule_mask_at(cy, cx):
            continue
        for _ in range(int(rng.integers(2, 6))):  # a small cluster
            y, x = cy + rng.normal(0, 9), cx + rng.normal(0, 9)
            if tubule_mask_at(y, x):
                continue
            r = rng.uniform(5.0, 6.5)
            kind = "leydig" if rng.random() < 0.75 else "endothelial"
            a, b = (r, r * 0.95) if kind == "leydig" else (rng.uniform(7, 9), rng.uniform(2, 2.6))
            out.append(Cell(y, x, a, b, rng.uniform(0, math.pi), kind, rng.uniform(0.45, 0.8), 0))
            n_leydig -= 1
    return out


def testis_layout(seed: int = 0, size: int | tuple[int, int] = 2048, damaged: float = 0.05,
                  longitudinal: float = 0.05) -> TestisLayout:
    """The geometry of a section: outline, tubules with stages, cells; no pixels yet (cheap)."""
    height, width = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    if min(height, width) < 512:
        raise UserError(f"a testis phantom needs at least 512 x 512 pixels (a tubule is ~400 px), not {height} x {width}")
    rng = np.random.default_rng(seed)
    outline = (height / 2, width / 2, height * rng.uniform(0.44, 0.48), width * rng.uniform(0.44, 0.48))
    layout = TestisLayout((height, width), seed, outline)
    layout.tubules = _place_tubules(rng, (height, width), outline, damaged, longitudinal)
    for tubule in layout.tubules:
        layout.cells.extend(_cells_of(tubule, rng))
    labels = tubule_labels(layout)
    layout.distractors = _distractors(rng, layout, lambda y, x: 0 <= int(y) < height and 0 <= int(x) < width
                                      and labels[int(y), int(x)] > 0)
    return layout


# ------------------------------------------------------------------------------------ pixels


def _tubule_region(tubule: Tubule, shape: tuple[int, int], scale: float = 1.0):
    """(slices, inside mask, normalised radius) of a tubule's (wobbly) ellipse, optionally grown by ``scale``."""
    extent = max(tubule.ry, tubule.rx) * scale * (1 + tubule.wobble[0]) + 3
    y0, y1 = max(0, int(tubule.cy - extent)), min(shape[0], int(tubule.cy + extent) + 1)
    x0, x1 = max(0, int(tubule.cx - extent)), min(shape[1], int(tubule.cx + extent) + 1)
    if y1 <= y0 or x1 <= x0:
        return None
    yy, xx = np.mgrid[y0:y1, x0:x1]
    dy, dx = yy + 0.5 - tubule.cy, xx + 0.5 - tubule.cx
    ca, sa = math.cos(tubule.angle), math.sin(tubule.angle)
    u = (dx * ca + dy * sa) / tubule.rx
    v = (-dx * sa + dy * ca) / tubule.ry
    rho = np.hypot(u, v)
    amplitude, phase, lobes = tubule.wobble
    limit = scale * (1 + amplitude * np.sin(lobes * np.arctan2(v, u) + phase))
    return (slice(y0, y1), slice(x0, x1)), rho <= limit, rho / limit


def tubule_labels(layout: TestisLayout) -> np.ndarray:
    """The tubule id image (uint16, 0 = interstitium or outside)."""
    labels = np.zeros(layout.shape, np.uint16)
    for tubule in layout.tubules:
        region = _tubule_region(tubule, layout.shape)
        if region is None:
            continue
        slices, inside, _ = region
        labels[slices][inside & (labels[slices] == 0)] = tubule.id
    return labels


def _stamp(image: np.ndarray, cell: Cell, rng: np.random.Generator, value: float | None = None,
           grow: float = 0.0) -> None:
    """Draw one nucleus (or, with ``value``, a flat signal over its slightly grown shape) into ``image``."""
    a, b = cell.a + grow, cell.b + grow
    extent = int(math.ceil(max(a, b))) + 2
    y0, x0 = int(math.floor(cell.cy)) - extent, int(math.floor(cell.cx)) - extent
    y1, x1 = y0 + 2 * extent + 1, x0 + 2 * extent + 1
    cy0, cx0, cy1, cx1 = max(y0, 0), max(x0, 0), min(y1, image.shape[0]), min(x1, image.shape[1])
    if cy1 <= cy0 or cx1 <= cx0:
        return
    yy, xx = np.mgrid[cy0:cy1, cx0:cx1]
    dy, dx = yy + 0.5 - cell.cy, xx + 0.5 - cell.cx
    ca, sa = math.cos(cell.angle), math.sin(cell.angle)
    u = (dx * ca + dy * sa) / a
    v = (-dx * sa + dy * ca) / b
    r2 = u * u + v * v
    inside = r2 <= 1.0
    if not inside.any():
        return
    if value is not None:
        image[cy0:cy1, cx0:cx1][inside] = np.maximum(image[cy0:cy1, cx0:cx1][inside], value)
        return
    texture = _texture(cell, u, v, r2, rng)
    image[cy0:cy1, cx0:cx1][inside] = (cell.brightness * texture)[inside]


def _texture(cell: Cell, u: np.ndarray, v: np.ndarray, r2: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Chromatin texture by type: nucleolus, chromocenter, threads, heterochromatin rim, granules, dense."""
    kind = cell.kind
    noise = rng.normal(0, 1, u.shape)
    if kind in ("Sertoli", "leydig"):  # pale, vesicular, one bright nucleolus
        centre = np.exp(-((u * cell.a) ** 2 + (v * cell.b) ** 2) / (2 * 1.3 ** 2))
        return 0.75 + 0.08 * noise + (1.1 if kind == "Sertoli" else 0.5) * centre
    if kind == "Spg":  # heterochromatin clumps along the rim
        return 0.8 + 0.45 * (r2 > 0.55) * (noise > 0.2) + 0.05 * noise
    if kind == "Spc prePach":  # fine granules
        return 0.85 + 0.25 * ndi.gaussian_filter(noise, 0.7)
    if kind == "Spc Pach":  # thick bright threads (synapsed chromosomes)
        threads = np.sin(u * rng.uniform(5, 7) + v * rng.uniform(-3, 3) + rng.uniform(0, 6)) \
            * np.sin(v * rng.uniform(5, 7) + rng.uniform(0, 6))
        return 0.55 + 0.7 * (threads > 0.25) + 0.05 * noise
    if kind == "round spermatid":  # one chromocenter
        centre = np.exp(-((u * cell.a) ** 2 + (v * cell.b) ** 2) / (2 * 1.2 ** 2))
        return 0.8 + 0.9 * centre + 0.05 * noise
    if kind == "Spc sec":  # smooth with a few spots
        return 0.9 + 0.3 * (ndi.gaussian_filter(noise, 1.0) > 0.35) + 0.04 * noise
    if kind == "m2m":  # ragged dense plate
        return 1.0 + 0.25 * noise
    if kind == "early elongating spermatid":
        return 1.0 + 0.05 * noise - 0.15 * r2
    if kind == "late elongating spermatid":
        return 1.05 + 0.04 * noise
    return 0.9 + 0.1 * noise  # endothelial, myoid


def render_testis(layout: TestisLayout, markers: tuple[str, ...] = DEFAULT_MARKERS, noise: float = 1.0) -> np.ndarray:
    """Pixels (C, H, W) uint16: DAPI then one channel per marker, blurred, unevenly lit and noisy."""
    for marker in markers:
        if marker not in MARKERS:
            raise UserError(f"unknown marker {marker!r}; known: {', '.join(MARKERS)}")
    rng = np.random.default_rng(layout.seed + 1)
    height, width = layout.shape
    dapi = np.zeros(layout.shape, np.float32)
    cy0, cx0, ry0, rx0 = layout.outline
    yy, xx = np.ogrid[:height, :width]
    section = ((yy - cy0) / ry0) ** 2 + ((xx - cx0) / rx0) ** 2 <= 1.0
    dapi[section] = 0.07
    for tubule in layout.tubules:
        region = _tubule_region(tubule, layout.shape, 1.03)
        if region is None:
            continue
        slices, inside, rho = region
        body = np.where(rho < 1 / 1.03, 0.14, 0.22)  # epithelium; the basement membrane a little brighter
        if tubule.kind != "damaged":
            body = np.where(rho < 0.38 / 1.03, 0.05, body)  # lumen
        else:
            holes = ndi.gaussian_filter(rng.normal(0, 1, inside.shape), 6) > 0.12
            body = np.where(holes, 0.06, body)
        dapi[slices][inside] = body[inside]
    for cell in layout.distractors + layout.cells:
        _stamp(dapi, cell, rng)
    channels = [dapi]
    for marker in markers:
        signal = np.zeros(layout.shape, np.float32)
        signal[section] = 0.05
        for cell in layout.cells:
            if cell.stage is None or rng.random() >= positive_fraction(marker, cell.kind):
                continue
            level = marker_level(marker, cell.kind, cell.stage)
            if level > 0:
                _stamp(signal, cell, rng, value=level * rng.uniform(0.8, 1.2), grow=1.5)
        channels.append(signal)
    out = np.empty((len(channels), height, width), np.uint16)
    light = _illumination(layout.shape, rng)
    for index, channel in enumerate(channels):
        blurred = ndi.gaussian_filter(channel, 0.9) * light
        scale = 3000.0 if index == 0 else 2000.0
        value = blurred * scale + 100.0
        value += rng.normal(0, 1, value.shape).astype(np.float32) * (noise * np.sqrt(value) * 1.5)
        out[index] = np.clip(value, 0, 65535).astype(np.uint16)
    return out


def _illumination(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A smooth 0.8-1.2 lighting gradient."""
    yy = np.linspace(-1, 1, shape[0], dtype=np.float32)[:, None]
    xx = np.linspace(-1, 1, shape[1], dtype=np.float32)[None, :]
    gy, gx = rng.uniform(-0.15, 0.15, 2)
    return (1.0 + gy * yy + gx * xx - 0.05 * (yy * yy + xx * xx)).astype(np.float32)


def render_testis_truth(layout: TestisLayout, markers: tuple[str, ...] = DEFAULT_MARKERS) -> dict[str, Any]:
    """Ground truth as JSON-able data: tubules (id, stage, kind, usable, box) and cells (box, type, tubule)."""
    tubules = []
    for t in layout.tubules:
        extent_y, extent_x = max(t.ry, t.rx), max(t.ry, t.rx)
        tubules.append({"id": t.id, "stage": t.stage, "kind": t.kind, "usable": t.usable,
                        "centre": [round(t.cy, 2), round(t.cx, 2)], "radii": [round(t.ry, 2), round(t.rx, 2)],
                        "box": [max(0.0, t.cx - extent_x), max(0.0, t.cy - extent_y),
                                min(float(layout.shape[1]), t.cx + extent_x), min(float(layout.shape[0]), t.cy + extent_y)]})
    cells = []
    height, width = layout.shape
    for c in layout.cells:
        x0, y0, x1, y1 = c.box
        if x1 <= 0 or y1 <= 0 or x0 >= width or y0 >= height:
            continue
        cells.append({"type": c.kind, "box": [max(0, x0), max(0, y0), min(width, x1), min(height, y1)],
                      "tubule": c.tubule, "centroid": [round(c.cy, 2), round(c.cx, 2)]})
    return {"schema_version": 1, "synthetic": True, "shape": list(layout.shape), "pixel_size_um": PIXEL_SIZE_UM,
            "seed": layout.seed, "stages": list(STAGES), "cell_types": list(CELL_TYPES), "markers": list(markers),
            "tubules": tubules, "cells": cells}


# ------------------------------------------------------------------------------------ files


def write_testis(out_dir: str | Path, seed: int = 0, count: int = 1, size: int = 2048,
                 markers: tuple[str, ...] = DEFAULT_MARKERS) -> list[Path]:
    """Write ``count`` sections ``testis_NNN.ome.tif`` (DAPI + markers) with tubule labels, truth JSON, README."""
    from app.core.atomic import atomic_write_json, atomic_write_text
    from app.core.images import write_tiff

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for i in range(count):
        layout = testis_layout(seed + i, size)
        name = f"testis_{i:03d}"
        pixels = render_testis(layout, markers)
        write_tiff(out / f"{name}.ome.tif", pixels, axes="CYX", channel_names=["DAPI", *markers],
                   pixel_size_um=PIXEL_SIZE_UM, pyramid=max(layout.shape) > 4096)
        del pixels
        write_tiff(out / f"{name}{TUBULES_SUFFIX}", tubule_labels(layout), axes="YX", pixel_size_um=PIXEL_SIZE_UM)
        truth = render_testis_truth(layout, markers)
        truth["image"] = f"{name}.ome.tif"
        atomic_write_json(out / f"{name}{TRUTH_SUFFIX}", truth, indent=None)
        written += [out / f"{name}.ome.tif", out / f"{name}{TUBULES_SUFFIX}", out / f"{name}{TRUTH_SUFFIX}"]
    atomic_write_text(out / "README.txt", (
        "Synthetic testis phantoms (Stagescope, app/core/testis_phantom.py): SYNTHETIC DATA with exact "
        "ground truth, for trying and testing the software, not biology.\n"
        f"testis_NNN.ome.tif: channel 0 DAPI, then {', '.join(markers) or 'no'} antibody channel(s); "
        f"{PIXEL_SIZE_UM} um per pixel.\n"
        "testis_NNN_tubules.tif: tubule ids; testis_NNN_truth.json: tubules (stage, kind, usable) and cells "
        "(box x0 y0 x1 y1, type, tubule id).\n"
        f"Seed {seed}, {count} section(s) of {size} x {size} px.\n"))
    return written + [out / "README.txt"]


def truth_files(folder: str | Path) -> list[Path]:
    """The truth JSON files of a phantom folder (or the file itself)."""
    folder = Path(folder)
    if folder.is_file():
        return [folder]
    return sorted(folder.glob(f"*{TRUTH_SUFFIX}"))


def read_testis_truth(folder: str | Path) -> list[dict[str, Any]]:
    """Per section of a phantom folder: name, image path, tubule objects and cell objects (core annotations)."""
    from app.core.annotations import AnnotatedObject
    from app.core.images import read_image

    sections = []
    for path in truth_files(folder):
        data = json.loads(path.read_text())
        name = path.name[: -len(TRUTH_SUFFIX)]
        labels = read_image(path.with_name(f"{name}{TUBULES_SUFFIX}"))
        found = ndi.find_objects(labels)
        tubules = []
        for t in data["tubules"]:
            if t["id"] > len(found) or found[t["id"] - 1] is None:
                continue
            slices = found[t["id"] - 1]
            tubules.append(AnnotatedObject(id=t["id"], category=t["stage"], mask=labels[slices] == t["id"],
                                           mask_offset=(slices[0].start, slices[1].start),
                                           attributes={"kind": t["kind"], "usable": t["usable"]}))
        cells = [AnnotatedObject(id=i + 1, category=c["type"], box=tuple(c["box"]), attributes={"tubule": c["tubule"]})
                 for i, c in enumerate(data["cells"])]
        sections.append({"name": name, "image": str(path.with_name(data.get("image", f"{name}.ome.tif"))),
                         "tubules": tubules, "cells": cells, "pixel_size_um": data.get("pixel_size_um")})
    return sections


def load_testis_truth(truth: str | Path, section: str) -> dict[str, Any]:
    """Evaluation truth of one section: tubule id image, stage per usable tubule, cell boxes and types."""
    from app.core.images import read_image

    truth = Path(truth)
    candidates = [p for p in truth_files(truth) if p.name[: -len(TRUTH_SUFFIX)] in (section, _base(section))]
    if truth.is_file():
        candidates = [truth]
    if not candidates:
        raise FileNotFoundError(section)
    path = candidates[0]
    data = json.loads(path.read_text())
    name = path.name[: -len(TRUTH_SUFFIX)]
    labels = read_image(path.with_name(f"{name}{TUBULES_SUFFIX}"))
    return {"tubule_labels": labels,
            "tubule_stages": {t["id"]: t["stage"] for t in data["tubules"]},
            "unusable": {t["id"] for t in data["tubules"] if not t["usable"]},
            "cell_boxes": np.array([c["box"] for c in data["cells"]], float).reshape(-1, 4),
            "cell_types": [c["type"] for c in data["cells"]]}


def _base(section: str) -> str:
    """A section name without an .ome suffix (testis_000.ome -> testis_000)."""
    return section[:-4] if section.endswith(".ome") else section
