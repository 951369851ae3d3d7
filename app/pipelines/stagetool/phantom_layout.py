"""The geometry of a synthetic testis section: tubules, cells and distractors, and a spatial index over them.

:func:`testis_layout` places everything (science.md section 2) without drawing a pixel, so a layout
of a 20000 px section costs ~0.3 kB per cell; :mod:`.phantom` draws it.  The index (:class:`_Index`)
answers "which cells and tubules touch this window" for the window-by-window drawing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from app.core.errors import UserError
from app.pipelines.stagetool.classes import MARKERS, STAGES
from app.pipelines.stagetool.phantom_style import (
    DEFAULT_PIXEL_SIZE_UM, Band, PhantomStyle, defocus_centres, get_style, random_bands,
)

PIXEL_SIZE_UM = DEFAULT_PIXEL_SIZE_UM
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
        """Whether experts would stage it: normal and obliquely cut tubules (damaged and longitudinal ones not)."""
        return self.kind in ("normal", "oblique")


@dataclass
class TestisLayout:
    """Where everything is: section shape, outline, tubules, cells of the 9 types and distractor nuclei."""

    shape: tuple[int, int]
    seed: int
    outline: tuple[float, float, float, float]  # cy, cx, ry, rx
    tubules: list[Tubule] = field(default_factory=list)
    cells: list[Cell] = field(default_factory=list)
    distractors: list[Cell] = field(default_factory=list)
    style: PhantomStyle = field(default_factory=lambda: get_style(None))
    folds: list[Band] = field(default_factory=list)  # tissue lying double (style)
    tears: list[Band] = field(default_factory=list)  # no tissue (style); cells under them were left out
    defocus: np.ndarray = field(default_factory=lambda: np.zeros((0, 3)))  # out-of-focus patches: y, x, radius
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


def _distractors(rng: np.random.Generator, layout: TestisLayout, tubule_mask_at, interstitial: float = 1.0
                 ) -> list[Cell]:
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
    n_leydig = int(len(layout.tubules) * rng.uniform(5, 9) * interstitial)
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
                  longitudinal: float = 0.05, style: PhantomStyle | str | None = None) -> TestisLayout:
    """The geometry of a section: outline, tubules with stages, cells; no pixels (no section-sized array).

    ``style`` (:mod:`.phantom_style`; default: the training phantoms) changes the pixel size (the
    layout is made at the default scale and scaled), oblique cuts, interstitial cells, debris, folds,
    tears and out-of-focus patches; the default style's layout is the same as without one.
    """
    style = get_style(style)
    height, width = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    if min(height, width) < 512:
        raise UserError(f"a testis phantom needs at least 512 x 512 pixels (a tubule is ~400 px), not {height} x {width}")
    scale = style.scale
    made = (height, width) if scale == 1.0 else (math.ceil(height / scale), math.ceil(width / scale))
    rng = np.random.default_rng(seed)
    style_rng = np.random.default_rng((seed, _STYLE_STREAM))  # style draws never shift the default's
    outline = (made[0] / 2, made[1] / 2, made[0] * rng.uniform(0.44, 0.48), made[1] * rng.uniform(0.44, 0.48))
    layout = TestisLayout(made, seed, outline, style=style)
    layout.tubules = _place_tubules(rng, made, outline, damaged, longitudinal)
    if style.oblique:
        _cut_obliquely(layout.tubules, style.oblique, style_rng)
    for tubule in layout.tubules:
        layout.cells.extend(_cells_of(tubule, rng))
    tubules_only = _Index(TestisLayout(made, seed, outline, layout.tubules))
    layout.distractors = _distractors(rng, layout, lambda y, x: _in_a_tubule(tubules_only, made, y, x),
                                      style.interstitial)
    if scale != 1.0:
        _scale(layout, scale, (height, width))
    if not style.is_default:
        _add_style_geometry(layout, style, style_rng)
    for number, cell in enumerate(layout.cells + layout.distractors):
        cell.seed = number
    return layout


def _cut_obliquely(tubules: list[Tubule], share: float, rng: np.random.Generator) -> None:
    """Turn ``share`` of the normal tubules into oblique cuts: elongated (1.2-1.45:1), a little smaller, still usable."""
    for tubule in tubules:
        if tubule.kind != "normal" or rng.random() >= share:
            continue
        radius, elongation = 0.9 * math.sqrt(tubule.ry * tubule.rx), math.sqrt(rng.uniform(1.2, 1.45))
        tubule.kind, tubule.ry, tubule.rx = "oblique", radius / elongation, radius * elongation


def _scale(layout: TestisLayout, scale: float, shape: tuple[int, int]) -> None:
    """Scale every position and size by ``scale`` (another pixel size) and set the section's ``shape``."""
    layout.shape = shape
    cy, cx, ry, rx = layout.outline
    layout.outline = (cy * scale, cx * scale, ry * scale, rx * scale)
    for t in layout.tubules:
        t.cy, t.cx, t.ry, t.rx = t.cy * scale, t.cx * scale, t.ry * scale, t.rx * scale
    for c in layout.cells + layout.distractors:
        c.cy, c.cx, c.a, c.b = c.cy * scale, c.cx * scale, c.a * scale, c.b * scale


def _add_style_geometry(layout: TestisLayout, style: PhantomStyle, rng: np.random.Generator) -> None:
    """Debris, folds, tears (removing the cells under them) and out-of-focus patches of a style."""
    height, width = layout.shape
    cy0, cx0, ry0, rx0 = layout.outline
    for _ in range(int(round(style.debris * len(layout.tubules)))):  # autofluorescent specks, anywhere in tissue
        rho, phi = math.sqrt(rng.uniform(0, 0.85)), rng.uniform(0, 2 * math.pi)
        size = rng.uniform(1.5, 6.0) * style.scale
        layout.distractors.append(Cell(cy0 + rho * ry0 * math.sin(phi), cx0 + rho * rx0 * math.cos(phi), size,
                                       size * rng.uniform(0.5, 1.0), rng.uniform(0, math.pi), "debris",
                                       rng.uniform(1.6, 2.8), 0))
    layout.folds = random_bands(rng, layout.shape, style.folds, (30 * style.scale, 70 * style.scale))
    layout.tears = random_bands(rng, layout.shape, style.tears, (8 * style.scale, 25 * style.scale))
    if layout.tears:
        def under_tear(cell: Cell) -> bool:
            return any(bool(t.covers(cell.cy - 0.5, cell.cx - 0.5, max(cell.a, cell.b) + 1)) for t in layout.tears)

        layout.cells = [c for c in layout.cells if not under_tear(c)]
        layout.distractors = [c for c in layout.distractors if not under_tear(c)]
    if style.defocus_sigma and style.defocus_patches:
        layout.defocus = defocus_centres(rng, (height, width), style.defocus_patches)


def torn(layout: TestisLayout, window: Window) -> np.ndarray | None:
    """Pixels of ``window`` inside a tear (no tissue), or None when the layout has no tears."""
    if not layout.tears:
        return None
    yy, xx = np.ogrid[window[0]:window[2], window[1]:window[3]]
    out = np.zeros((window[2] - window[0], window[3] - window[1]), bool)
    for band in layout.tears:
        out |= band.covers(yy, xx)
    return out


def folded(layout: TestisLayout, window: Window) -> np.ndarray | None:
    """Layers of tissue (1 or 2) per pixel of ``window``, or None when the layout has no folds."""
    if not layout.folds:
        return None
    yy, xx = np.ogrid[window[0]:window[2], window[1]:window[3]]
    out = np.ones((window[2] - window[0], window[3] - window[1]), np.float32)
    for band in layout.folds:
        out[band.covers(yy, xx)] = 2.0
    return out


# ------------------------------------------------------------------------------------ spatial index

_CELL_STREAM, _TUBULE_STREAM, _MARKER_STREAM, _NOISE_STREAM, _LIGHT_STREAM, _STYLE_STREAM = 1, 2, 3, 4, 5, 6

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


