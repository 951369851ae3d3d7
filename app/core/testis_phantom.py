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
with box, type, tubule and, per marker, the level drawn: 0 = negative).  :func:`write_testis`
writes what ``stagescope phantom testis`` should write: DAPI as channel 0 and the antibody channels
after it, named in the OME metadata.

Sections of any size (20000 x 20000 px and more): the layout is geometry only (no section-sized
array), and :func:`render_testis` / :func:`tubule_labels` draw any window ``region=(y0, x0, y1,
x1)`` on its own, with exactly the pixels of the same crop of the whole section (see "pixels"
below for how the randomness is keyed to cells, tubules and noise blocks, not to drawing order).
:func:`write_testis` streams the section tile by tile into the OME-TIFF, so its memory stays a
few tiles (plus the layout: ~0.3 kB per cell) whatever the size.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

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


@dataclass(slots=True)  # slots: a 20000 px section holds ~400 000 of them
class Cell:
    """One nucleus: centre (y, x), semi-axes (a along ``angle``, b across), type, brightness, texture seed.

    ``seed`` (unique per layout) drives the cell's chromatin texture and marker draws, so the cell
    looks the same in whichever window it is rendered.
    """

    cy: float
    cx: float
    a: float
    b: float
    angle: float
    kind: str
    brightness: float
    tubule: int
    stage: str | None = None
    seed: int = 0

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
    index: Any = field(default=None, init=False, repr=False, compare=False)  # window-query cache (pixels)


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
    """The geometry of a section: outline, tubules with stages, cells; no pixels (no section-sized array)."""
    height, width = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    if min(height, width) < 512:
        raise UserError(f"a testis phantom needs at least 512 x 512 pixels (a tubule is ~400 px), not {height} x {width}")
    rng = np.random.default_rng(seed)
    outline = (height / 2, width / 2, height * rng.uniform(0.44, 0.48), width * rng.uniform(0.44, 0.48))
    layout = TestisLayout((height, width), seed, outline)
    layout.tubules = _place_tubules(rng, (height, width), outline, damaged, longitudinal)
    for tubule in layout.tubules:
        layout.cells.extend(_cells_of(tubule, rng))
    tubules_only = _Index(TestisLayout((height, width), seed, outline, layout.tubules))
    layout.distractors = _distractors(rng, layout, lambda y, x: _in_a_tubule(tubules_only, (height, width), y, x))
    for number, cell in enumerate(layout.cells + layout.distractors):
        cell.seed = number
    return layout


# ------------------------------------------------------------------------------------ pixels
#
# Every pixel is a function of the layout and its global position, so any window renders alone and
# equals the same crop of the whole section, bit for bit: cell textures and marker draws come from
# per-cell seeds, damaged-tubule holes from the tubule id, camera noise from fixed NOISE_BLOCK x
# NOISE_BLOCK blocks of the section grid seeded by (seed, channel, block row, block column), the
# lighting is analytic, and the blur reads a margin around the window (reflecting only at the
# section's own border, as a whole-image blur does).

BLUR_SIGMA = 0.9
BLUR_MARGIN = int(4.0 * BLUR_SIGMA + 0.5)  # scipy's gaussian_filter radius at its default truncate=4
NOISE_BLOCK = 256
RENDER_BLOCK = 1024  # a large window is drawn in blocks of this size, so float work stays a few MB
TIFF_TILE = 512  # write_testis streams tiles of this size, each channel drawn only when its turn comes
_CELL_STREAM, _TUBULE_STREAM, _MARKER_STREAM, _NOISE_STREAM, _LIGHT_STREAM = 1, 2, 3, 4, 5

Window = tuple[int, int, int, int]  # (y0, x0, y1, x1), end exclusive


class _Index:
    """Cells and tubules sorted for window queries, built once per layout (cached on it)."""

    def __init__(self, layout: TestisLayout) -> None:
        self.key = _index_key(layout)
        self.seed = layout.seed
        self.cells = layout.distractors + layout.cells  # drawing order: distractors first
        cy = np.array([c.cy for c in self.cells], float)
        self.cx = np.array([c.cx for c in self.cells], float)
        self.reach = max((max(c.a, c.b) for c in self.cells), default=0.0) + 4.0  # stamp half-size + 1
        self.order = np.argsort(cy, kind="stable")
        self.cy_sorted = cy[self.order]
        self.tubules = list(layout.tubules)
        self.tubule_yx = np.array([(t.cy, t.cx) for t in self.tubules], float).reshape(-1, 2)
        self.tubule_reach = np.array([max(t.ry, t.rx) * (1 + t.wobble[0]) + 4 for t in self.tubules], float)
        self.n_seeds = max((c.seed for c in self.cells), default=0) + 1
        self._marker_draws: dict[str, np.ndarray] = {}

    def cells_in(self, window: Window, grow: float = 0.0) -> list[Cell]:
        """The cells whose stamp (grown by ``grow``) may touch ``window``, in drawing order."""
        y0, x0, y1, x1 = window
        reach = self.reach + grow
        lo, hi = np.searchsorted(self.cy_sorted, [y0 - reach, y1 + reach])
        found = self.order[lo:hi]
        found = np.sort(found[(self.cx[found] > x0 - reach) & (self.cx[found] < x1 + reach)])
        return [self.cells[i] for i in found]

    def tubules_in(self, window: Window, scale: float = 1.0) -> list[Tubule]:
        """The tubules (grown by ``scale``) whose box may touch ``window``, in id order."""
        y0, x0, y1, x1 = window
        reach = self.tubule_reach * scale
        cy, cx = self.tubule_yx[:, 0], self.tubule_yx[:, 1]
        near = (cy + reach > y0) & (cy - reach < y1) & (cx + reach > x0) & (cx - reach < x1)
        return [self.tubules[i] for i in np.flatnonzero(near)]

    def marker_draws(self, marker: str) -> np.ndarray:
        """(2, n_seeds) uniform draws per cell seed: positivity, then level jitter."""
        if marker not in self._marker_draws:
            rng = np.random.default_rng((self.seed, _MARKER_STREAM, MARKERS.index(marker)))
            self._marker_draws[marker] = rng.random((2, self.n_seeds))
        return self._marker_draws[marker]


def _index_key(layout: TestisLayout) -> tuple[int, ...]:
    """Identity and length of the layout's lists: a changed list rebuilds the index."""
    return (layout.seed, id(layout.cells), len(layout.cells), id(layout.distractors), len(layout.distractors),
            id(layout.tubules), len(layout.tubules))


def _index(layout: TestisLayout) -> _Index:
    """The layout's cached :class:`_Index`."""
    if layout.index is None or layout.index.key != _index_key(layout):
        layout.index = _Index(layout)
    return layout.index


def _check_region(shape: tuple[int, int], region: Sequence[int] | None) -> Window:
    """``region`` as ints inside the section (the whole section when None)."""
    if region is None:
        return 0, 0, shape[0], shape[1]
    y0, x0, y1, x1 = (int(v) for v in region)
    if not (0 <= y0 < y1 <= shape[0] and 0 <= x0 < x1 <= shape[1]):
        raise ValueError(f"region {tuple(region)} is not a non-empty window of a {shape[0]} x {shape[1]} section")
    return y0, x0, y1, x1


def _blocks(window: Window, block: int):
    """Sub-windows of ``window`` on the section grid of ``block`` x ``block`` blocks: (row, col, sub-window)."""
    y0, x0, y1, x1 = window
    for row in range(y0 // block, (y1 - 1) // block + 1):
        for col in range(x0 // block, (x1 - 1) // block + 1):
            yield row, col, (max(y0, row * block), max(x0, col * block),
                             min(y1, (row + 1) * block), min(x1, (col + 1) * block))


def _tubule_geometry(tubule: Tubule, yy: Any, xx: Any, scale: float = 1.0) -> tuple[Any, Any]:
    """(inside, normalised radius) of the tubule's wobbly ellipse, grown by ``scale``, at pixel indices."""
    dy, dx = yy + 0.5 - tubule.cy, xx + 0.5 - tubule.cx
    ca, sa = math.cos(tubule.angle), math.sin(tubule.angle)
    u = (dx * ca + dy * sa) / tubule.rx
    v = (-dx * sa + dy * ca) / tubule.ry
    rho = np.hypot(u, v)
    amplitude, phase, lobes = tubule.wobble
    limit = scale * (1 + amplitude * np.sin(lobes * np.arctan2(v, u) + phase))
    return rho <= limit, rho / limit


def _tubule_box(tubule: Tubule, shape: tuple[int, int], scale: float = 1.0) -> Window:
    """The pixel box holding the tubule (grown by ``scale``), clipped to the section."""
    extent = max(tubule.ry, tubule.rx) * scale * (1 + tubule.wobble[0]) + 3
    return (max(0, int(tubule.cy - extent)), max(0, int(tubule.cx - extent)),
            min(shape[0], int(tubule.cy + extent) + 1), min(shape[1], int(tubule.cx + extent) + 1))


def _tubule_region(tubule: Tubule, shape: tuple[int, int], scale: float = 1.0, window: Window | None = None):
    """(slices into ``window``, inside mask, normalised radius, box) where the tubule meets the window."""
    wy0, wx0, wy1, wx1 = window or (0, 0, shape[0], shape[1])
    ty0, tx0, ty1, tx1 = _tubule_box(tubule, shape, scale)
    y0, x0, y1, x1 = max(ty0, wy0), max(tx0, wx0), min(ty1, wy1), min(tx1, wx1)
    if y1 <= y0 or x1 <= x0:
        return None
    yy, xx = np.ogrid[y0:y1, x0:x1]
    inside, rho = _tubule_geometry(tubule, yy, xx, scale)
    return (slice(y0 - wy0, y1 - wy0), slice(x0 - wx0, x1 - wx0)), inside, rho, (y0, x0, y1, x1)


def _in_a_tubule(index: _Index, shape: tuple[int, int], y: float, x: float) -> bool:
    """Whether pixel (int(y), int(x)) is inside the section and a tubule: the tubule label image, without one."""
    iy, ix = int(y), int(x)
    if not (0 <= iy < shape[0] and 0 <= ix < shape[1]) or not len(index.tubules):
        return False
    near = np.hypot(index.tubule_yx[:, 0] - iy, index.tubule_yx[:, 1] - ix) <= index.tubule_reach
    return any(bool(_tubule_geometry(index.tubules[i], iy, ix)[0]) for i in np.flatnonzero(near))


def tubule_labels(layout: TestisLayout, region: Sequence[int] | None = None) -> np.ndarray:
    """The tubule id image (uint16, 0 = interstitium or outside), or its ``region`` window (y0, x0, y1, x1)."""
    window = _check_region(layout.shape, region)
    labels = np.zeros((window[2] - window[0], window[3] - window[1]), np.uint16)
    for tubule in _index(layout).tubules_in(window):
        found = _tubule_region(tubule, layout.shape, window=window)
        if found is None:
            continue
        slices, inside, _, _ = found
        labels[slices][inside & (labels[slices] == 0)] = tubule.id
    return labels


def _stamp(image: np.ndarray, window: Window, cell: Cell, seed: int, value: float | None = None,
           grow: float = 0.0) -> None:
    """Draw one nucleus (or, with ``value``, a flat signal over its slightly grown shape) into ``image``.

    The texture is drawn over the cell's whole stamp from its own seed, then cropped to ``window``.
    """
    a, b = cell.a + grow, cell.b + grow
    extent = int(math.ceil(max(a, b))) + 2
    sy0, sx0 = int(math.floor(cell.cy)) - extent, int(math.floor(cell.cx)) - extent
    size = 2 * extent + 1
    wy0, wx0, wy1, wx1 = window
    y0, x0, y1, x1 = max(sy0, wy0), max(sx0, wx0), min(sy0 + size, wy1), min(sx0 + size, wx1)
    if y1 <= y0 or x1 <= x0:
        return
    yy, xx = np.arange(sy0, sy0 + size)[:, None], np.arange(sx0, sx0 + size)[None, :]  # (ogrid is slower)
    dy, dx = yy + 0.5 - cell.cy, xx + 0.5 - cell.cx
    ca, sa = math.cos(cell.angle), math.sin(cell.angle)
    u = (dx * ca + dy * sa) / a
    v = (-dx * sa + dy * ca) / b
    r2 = u * u + v * v
    crop = (slice(y0 - sy0, y1 - sy0), slice(x0 - sx0, x1 - sx0))
    inside = r2[crop] <= 1.0
    if not inside.any():
        return
    target = image[y0 - wy0:y1 - wy0, x0 - wx0:x1 - wx0]
    if value is not None:
        target[inside] = np.maximum(target[inside], value)
        return
    texture = _texture(cell, u, v, r2, np.random.default_rng((seed, _CELL_STREAM, cell.seed)))
    target[inside] = (cell.brightness * texture)[crop][inside]


def _texture(cell: Cell, u: np.ndarray, v: np.ndarray, r2: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Chromatin texture by type: nucleolus, chromocenter, threads, heterochromatin rim, granules, dense."""
    kind = cell.kind
    noise = rng.normal(0, 1, r2.shape)
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


def _section_mask(layout: TestisLayout, window: Window) -> np.ndarray:
    """Pixels of ``window`` inside the section outline (an ellipse)."""
    cy0, cx0, ry0, rx0 = layout.outline
    yy, xx = np.ogrid[window[0]:window[2], window[1]:window[3]]
    return ((yy - cy0) / ry0) ** 2 + ((xx - cx0) / rx0) ** 2 <= 1.0


def _holes(layout: TestisLayout, tubule: Tubule) -> np.ndarray:
    """Where a damaged tubule's epithelium is torn, over its whole (grown) box, from its id."""
    y0, x0, y1, x1 = _tubule_box(tubule, layout.shape, 1.03)
    rng = np.random.default_rng((layout.seed, _TUBULE_STREAM, tubule.id))
    return ndi.gaussian_filter(rng.normal(0, 1, (y1 - y0, x1 - x0)), 6) > 0.12


def _dapi(layout: TestisLayout, window: Window, index: _Index, section: np.ndarray) -> np.ndarray:
    """Unblurred DAPI of ``window``: interstitium, tubule epithelium, basement membrane, lumen, nuclei."""
    dapi = np.zeros(section.shape, np.float32)
    dapi[section] = 0.07
    for tubule in index.tubules_in(window, 1.03):
        found = _tubule_region(tubule, layout.shape, 1.03, window)
        if found is None:
            continue
        slices, inside, rho, (y0, x0, y1, x1) = found
        body = np.where(rho < 1 / 1.03, 0.14, 0.22)  # epithelium; the basement membrane a little brighter
        if tubule.kind != "damaged":
            body = np.where(rho < 0.38 / 1.03, 0.05, body)  # lumen
        else:
            by0, bx0, _, _ = _tubule_box(tubule, layout.shape, 1.03)
            body = np.where(_holes(layout, tubule)[y0 - by0:y1 - by0, x0 - bx0:x1 - bx0], 0.06, body)
        dapi[slices][inside] = body[inside]
    for cell in index.cells_in(window):
        _stamp(dapi, window, cell, layout.seed)
    return dapi


def marker_level_of(layout: TestisLayout, cell: Cell, marker: str) -> float:
    """The level at which ``marker`` is drawn over ``cell`` (0 = negative): type and stage level, drawn per cell."""
    if cell.stage is None:
        return 0.0
    level = marker_level(marker, cell.kind, cell.stage)
    if level <= 0:
        return 0.0
    draws = _index(layout).marker_draws(marker)
    if draws[0, cell.seed] >= positive_fraction(marker, cell.kind):
        return 0.0
    return level * (0.8 + 0.4 * float(draws[1, cell.seed]))


def _marker_signal(layout: TestisLayout, marker: str, window: Window, index: _Index,
                   section: np.ndarray) -> np.ndarray:
    """Unblurred antibody channel of ``window``: dim tissue, each positive cell at its level."""
    signal = np.zeros(section.shape, np.float32)
    signal[section] = 0.05
    for cell in index.cells_in(window, grow=1.5):
        level = marker_level_of(layout, cell, marker)
        if level > 0:
            _stamp(signal, window, cell, layout.seed, value=level, grow=1.5)
    return signal


def _illumination(layout: TestisLayout, window: Window) -> np.ndarray:
    """A smooth 0.8-1.2 lighting gradient over the section, evaluated on ``window``."""
    height, width = layout.shape
    gy, gx = np.random.default_rng((layout.seed, _LIGHT_STREAM)).uniform(-0.15, 0.15, 2)
    yy = (np.arange(window[0], window[2]) * (2.0 / max(height - 1, 1)) - 1.0).astype(np.float32)[:, None]
    xx = (np.arange(window[1], window[3]) * (2.0 / max(width - 1, 1)) - 1.0).astype(np.float32)[None, :]
    return (1.0 + gy * yy + gx * xx - 0.05 * (yy * yy + xx * xx)).astype(np.float32)


def _camera_noise(seed: int, channel: int, window: Window) -> np.ndarray:
    """Unit Gaussian noise of ``window``, drawn per NOISE_BLOCK block of the section from the block's position."""
    y0, x0, y1, x1 = window
    out = np.empty((y1 - y0, x1 - x0), np.float32)
    for row, col, (by0, bx0, by1, bx1) in _blocks(window, NOISE_BLOCK):
        rng = np.random.default_rng((seed, _NOISE_STREAM, channel, row, col))
        block = rng.standard_normal((NOISE_BLOCK, NOISE_BLOCK), dtype=np.float32)
        oy, ox = row * NOISE_BLOCK, col * NOISE_BLOCK
        out[by0 - y0:by1 - y0, bx0 - x0:bx1 - x0] = block[by0 - oy:by1 - oy, bx0 - ox:bx1 - ox]
    return out


def _check_markers(markers: Sequence[str]) -> None:
    """Refuse a marker name that is not one of MARKERS."""
    for marker in markers:
        if marker not in MARKERS:
            raise UserError(f"unknown marker {marker!r}; known: {', '.join(MARKERS)}")


def render_testis(layout: TestisLayout, markers: tuple[str, ...] = DEFAULT_MARKERS, noise: float = 1.0,
                  region: Sequence[int] | None = None) -> np.ndarray:
    """Pixels (C, H, W) uint16: DAPI then one channel per marker, blurred, unevenly lit and noisy.

    ``region`` = (y0, x0, y1, x1) renders only that window; its pixels equal the same crop of the
    whole render exactly (noise included).  Large windows are drawn block by block, so the float
    working memory stays a few MB whatever the window.
    """
    _check_markers(markers)
    window = _check_region(layout.shape, region)
    out = np.empty((1 + len(markers), window[2] - window[0], window[3] - window[1]), np.uint16)
    for _, _, block in _blocks(window, RENDER_BLOCK):
        inside = (slice(block[0] - window[0], block[2] - window[0]), slice(block[1] - window[1], block[3] - window[1]))
        for number, channel in enumerate(("DAPI", *markers)):
            out[(number, *inside)] = _render_window(layout, channel, noise, block)
    return out


def _render_window(layout: TestisLayout, channel: str, noise: float, window: Window) -> np.ndarray:
    """One channel ("DAPI" or a marker) of one window, uint16: drawn with a blur margin, blurred, lit, noisy."""
    height, width = layout.shape
    y0, x0, y1, x1 = window
    padded = (max(0, y0 - BLUR_MARGIN), max(0, x0 - BLUR_MARGIN),
              min(height, y1 + BLUR_MARGIN), min(width, x1 + BLUR_MARGIN))
    index = _index(layout)
    section = _section_mask(layout, padded)
    if channel == "DAPI":
        key, scale, drawn = 0, 3000.0, _dapi(layout, padded, index, section)
    else:
        key, scale, drawn = 1 + MARKERS.index(channel), 2000.0, _marker_signal(layout, channel, padded, index, section)
    crop = (slice(y0 - padded[0], y1 - padded[0]), slice(x0 - padded[1], x1 - padded[1]))
    value = ndi.gaussian_filter(drawn, BLUR_SIGMA)[crop] * _illumination(layout, window) * scale + 100.0
    value += _camera_noise(layout.seed, key, window) * (noise * np.sqrt(value) * 1.5)
    return np.clip(value, 0, 65535).astype(np.uint16)


def _section_tiles(layout: TestisLayout, markers: Sequence[str], tile: int) -> Iterator[np.ndarray]:
    """The section's tiles in TIFF order (channel by channel, then row by row), each drawn when asked for."""
    whole = (0, 0, layout.shape[0], layout.shape[1])
    for channel in ("DAPI", *markers):
        for _, _, window in _blocks(whole, tile):
            yield _render_window(layout, channel, 1.0, window)


def _cell_truth(layout: TestisLayout, markers: Sequence[str]) -> Iterator[dict[str, Any]]:
    """Truth per cell inside the section: box, type, tubule, centroid and drawn marker levels (0 = negative)."""
    height, width = layout.shape
    for c in layout.cells:
        x0, y0, x1, y1 = c.box
        if x1 <= 0 or y1 <= 0 or x0 >= width or y0 >= height:
            continue
        yield {"type": c.kind, "box": [max(0, x0), max(0, y0), min(width, x1), min(height, y1)],
               "tubule": c.tubule, "centroid": [round(c.cy, 2), round(c.cx, 2)],
               "markers": {m: round(marker_level_of(layout, c, m), 3) for m in markers}}


def _truth_header(layout: TestisLayout, markers: Sequence[str]) -> dict[str, Any]:
    """Everything in the truth but the cells: section, classes, markers, tubules (id, stage, kind, usable, box)."""
    tubules = []
    for t in layout.tubules:
        extent = max(t.ry, t.rx)
        tubules.append({"id": t.id, "stage": t.stage, "kind": t.kind, "usable": t.usable,
                        "centre": [round(t.cy, 2), round(t.cx, 2)], "radii": [round(t.ry, 2), round(t.rx, 2)],
                        "box": [max(0.0, t.cx - extent), max(0.0, t.cy - extent),
                                min(float(layout.shape[1]), t.cx + extent),
                                min(float(layout.shape[0]), t.cy + extent)]})
    return {"schema_version": 1, "synthetic": True, "shape": list(layout.shape), "pixel_size_um": PIXEL_SIZE_UM,
            "seed": layout.seed, "stages": list(STAGES), "cell_types": list(CELL_TYPES), "markers": list(markers),
            "tubules": tubules}


def render_testis_truth(layout: TestisLayout, markers: tuple[str, ...] = DEFAULT_MARKERS) -> dict[str, Any]:
    """Ground truth as JSON-able data: tubules (id, stage, kind, usable, box) and cells (box, type, tubule, markers)."""
    _check_markers(markers)
    return {**_truth_header(layout, markers), "cells": list(_cell_truth(layout, markers))}


# ------------------------------------------------------------------------------------ files


def refuse_overwrite(folder: Path, names: list[str]) -> None:
    """Phantoms never replace files: a folder that already holds one of ``names`` is a user error."""
    taken = [n for n in names if (folder / n).exists()]
    if taken:
        raise UserError(f"{folder} already holds {taken[0]}"
                        + (f" and {len(taken) - 1} other file(s)" if len(taken) > 1 else "")
                        + ": choose an empty folder (phantoms never overwrite files)")


def write_testis(out_dir: str | Path, seed: int = 0, count: int = 1, size: int = 2048,
                 markers: tuple[str, ...] = DEFAULT_MARKERS) -> list[Path]:
    """Write ``count`` sections ``testis_NNN.ome.tif`` (DAPI + markers) with tubule labels, truth JSON, README."""
    from app.core.atomic import atomic_write_text
    from app.core.images import write_tiff

    _check_markers(markers)
    out = Path(out_dir)
    names = [f"testis_{i:03d}{suffix}" for i in range(count) for suffix in (".ome.tif", TUBULES_SUFFIX, TRUTH_SUFFIX)]
    refuse_overwrite(out, names + ["README.txt"])
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for i in range(count):
        layout = testis_layout(seed + i, size)
        name = f"testis_{i:03d}"
        height, width = layout.shape
        write_tiff(out / f"{name}.ome.tif", _section_tiles(layout, markers, TIFF_TILE), axes="CYX",
                   channel_names=["DAPI", *markers], pixel_size_um=PIXEL_SIZE_UM, pyramid=max(layout.shape) > 4096,
                   tile=(TIFF_TILE, TIFF_TILE), shape=(1 + len(markers), height, width), dtype=np.uint16)
        write_tiff(out / f"{name}{TUBULES_SUFFIX}", lambda *window: tubule_labels(layout, window),
                   axes="YX", pixel_size_um=PIXEL_SIZE_UM, shape=(height, width), dtype=np.uint16)
        _write_truth(out / f"{name}{TRUTH_SUFFIX}", layout, markers, image=f"{name}.ome.tif")
        written += [out / f"{name}.ome.tif", out / f"{name}{TUBULES_SUFFIX}", out / f"{name}{TRUTH_SUFFIX}"]
    atomic_write_text(out / "README.txt", (
        "Synthetic testis phantoms (Stagescope, app/core/testis_phantom.py): SYNTHETIC DATA with exact "
        "ground truth, for trying and testing the software, not biology.\n"
        f"testis_NNN.ome.tif: channel 0 DAPI, then {', '.join(markers) or 'no'} antibody channel(s); "
        f"{PIXEL_SIZE_UM} um per pixel.\n"
        "testis_NNN_tubules.tif: tubule ids; testis_NNN_truth.json: tubules (stage, kind, usable) and cells "
        "(box x0 y0 x1 y1, type, tubule id, level drawn per antibody: 0 = negative).\n"
        f"Seed {seed}, {count} section(s) of {size} x {size} px.\n"))
    return written + [out / "README.txt"]


def _write_truth(path: Path, layout: TestisLayout, markers: Sequence[str], image: str) -> None:
    """Write the truth JSON atomically, one cell at a time (a 20000 px section has ~400 000 cells)."""
    from app.core.atomic import atomic_path

    head = json.dumps({**_truth_header(layout, markers), "image": image}, ensure_ascii=False)
    with atomic_path(path) as tmp, tmp.open("w", encoding="utf-8") as stream:
        stream.write(head[:-1] + ', "cells": [')
        for number, cell in enumerate(_cell_truth(layout, markers)):
            stream.write((", " if number else "") + json.dumps(cell, ensure_ascii=False))
        stream.write("]}\n")


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
