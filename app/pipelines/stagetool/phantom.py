"""Synthetic DAPI testis cross-sections with exact ground truth (tubule stages, cell types, antibody channels).

Stagetool's phantom (``stagescope phantom testis``): the geometry is in :mod:`.phantom_layout`, the
truth file format and its readers in :mod:`.truth`; this module draws pixels and writes the files.

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
  cell types at the levels of :mod:`app.pipelines.stagetool.classes` (AR weaker at IX-XII, USF1 in a
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
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
from scipy import ndimage as ndi

from app.core.atomic import atomic_path, atomic_write_text
from app.core.errors import UserError
from app.core.images import write_tiff
from app.core.phantoms import refuse_overwrite
from app.pipelines.stagetool.classes import CELL_TYPES, MARKERS, STAGES, marker_level, positive_fraction
from app.pipelines.stagetool.phantom_layout import (
    _CELL_STREAM, _LIGHT_STREAM, _NOISE_STREAM, _TUBULE_STREAM, DEFAULT_MARKERS, PIXEL_SIZE_UM, Cell, TestisLayout,
    Tubule, Window, _blocks, _check_region, _Index, _index, _tubule_box, _tubule_region, folded, testis_layout, torn,
)
from app.pipelines.stagetool.phantom_style import STYLES, PhantomStyle, defocus_weight, get_style
from app.pipelines.stagetool.truth import TRUTH_SUFFIX, TUBULES_SUFFIX

# ------------------------------------------------------------------------------------ pixels
#
# Every pixel is a function of the layout and its global position, so any window renders alone and
# equals the same crop of the whole section, bit for bit: cell textures and marker draws come from
# per-cell seeds, damaged-tubule holes from the tubule id, camera noise from fixed NOISE_BLOCK x
# NOISE_BLOCK blocks of the section grid seeded by (seed, channel, block row, block column), the
# lighting is analytic, and the blur reads a margin around the window (reflecting only at the
# section's own border, as a whole-image blur does).

BLUR_SIGMA = STYLES["default"].blur_sigma
BLUR_MARGIN = int(4.0 * BLUR_SIGMA + 0.5)  # scipy's gaussian_filter radius at its default truncate=4
NOISE_BLOCK = 256
RENDER_BLOCK = 1024  # a large window is drawn in blocks of this size, so float work stays a few MB
TIFF_TILE = 512  # write_testis streams tiles of this size, each channel drawn only when its turn comes


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
    gaps = torn(layout, window)
    if gaps is not None:  # a tear holds no tissue: no tubule there either
        labels[gaps] = 0
    return labels


def _stamp(image: np.ndarray, window: Window, cell: Cell, seed: int, value: float | None = None,
           grow: float = 0.0, texture_gain: float = 1.0) -> None:
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
    if texture_gain != 1.0:  # another stain: chromatin texture stronger or flatter around the same mean
        texture = 1.0 + texture_gain * (texture - 1.0)
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
    if kind == "debris":  # autofluorescent specks: bright, grainy
        return 1.0 + 0.3 * noise
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
    level = layout.style.background
    dapi = np.zeros(section.shape, np.float32)
    dapi[section] = 0.07 * level
    for tubule in index.tubules_in(window, 1.03):
        found = _tubule_region(tubule, layout.shape, 1.03, window)
        if found is None:
            continue
        slices, inside, rho, (y0, x0, y1, x1) = found
        body = np.where(rho < 1 / 1.03, 0.14 * level, 0.22 * level)  # epithelium; the basement membrane brighter
        if tubule.kind != "damaged":
            body = np.where(rho < 0.38 / 1.03, 0.05 * level, body)  # lumen
        else:
            by0, bx0, _, _ = _tubule_box(tubule, layout.shape, 1.03)
            body = np.where(_holes(layout, tubule)[y0 - by0:y1 - by0, x0 - bx0:x1 - bx0], 0.06 * level, body)
        dapi[slices][inside] = body[inside]
    for cell in index.cells_in(window):
        _stamp(dapi, window, cell, layout.seed, texture_gain=layout.style.texture)
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
    """A smooth lighting gradient over the section (0.8-1.2 in the default style), evaluated on ``window``."""
    height, width = layout.shape
    gradient, vignette = layout.style.gradient, layout.style.vignette
    gy, gx = np.random.default_rng((layout.seed, _LIGHT_STREAM)).uniform(-gradient, gradient, 2)
    yy = (np.arange(window[0], window[2]) * (2.0 / max(height - 1, 1)) - 1.0).astype(np.float32)[:, None]
    xx = (np.arange(window[1], window[3]) * (2.0 / max(width - 1, 1)) - 1.0).astype(np.float32)[None, :]
    return (1.0 + gy * yy + gx * xx - vignette * (yy * yy + xx * xx)).astype(np.float32)


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
    """One channel ("DAPI" or a marker) of one window, uint16: drawn with a blur margin, blurred, lit, noisy.

    The layout's style sets the blur (and out-of-focus patches), DAPI gamma, folds and tears, lighting and noise.
    """
    style = layout.style
    height, width = layout.shape
    y0, x0, y1, x1 = window
    margin = style.blur_margin
    padded = (max(0, y0 - margin), max(0, x0 - margin), min(height, y1 + margin), min(width, x1 + margin))
    index = _index(layout)
    section = _section_mask(layout, padded)
    gaps = torn(layout, padded)
    if gaps is not None:
        section &= ~gaps
    if channel == "DAPI":
        key, scale, drawn = 0, 3000.0, _dapi(layout, padded, index, section)
        if style.gamma != 1.0:
            drawn = np.power(np.maximum(drawn, 0.0), style.gamma, dtype=np.float32)
    else:
        key, scale, drawn = 1 + MARKERS.index(channel), 2000.0, _marker_signal(layout, channel, padded, index, section)
    if gaps is not None:
        drawn[gaps] = 0.0
    layers = folded(layout, padded)
    if layers is not None:  # tissue lying double: twice the stain
        drawn *= layers
    crop = (slice(y0 - padded[0], y1 - padded[0]), slice(x0 - padded[1], x1 - padded[1]))
    blurred = ndi.gaussian_filter(drawn, style.blur_sigma)[crop]
    if len(layout.defocus):
        weight = defocus_weight(layout.defocus, window)
        blurred = (1.0 - weight) * blurred + weight * ndi.gaussian_filter(drawn, style.defocus_sigma)[crop]
    value = blurred * _illumination(layout, window) * scale + 100.0
    value += _camera_noise(layout.seed, key, window) * (noise * style.noise * np.sqrt(value) * 1.5)
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
    return {"schema_version": 1, "synthetic": True, "shape": list(layout.shape),
            "pixel_size_um": layout.style.pixel_size_um, "style": layout.style.name,
            "seed": layout.seed, "stages": list(STAGES), "cell_types": list(CELL_TYPES), "markers": list(markers),
            "tubules": tubules}


def render_testis_truth(layout: TestisLayout, markers: tuple[str, ...] = DEFAULT_MARKERS) -> dict[str, Any]:
    """Ground truth as JSON-able data: tubules (id, stage, kind, usable, box) and cells (box, type, tubule, markers)."""
    _check_markers(markers)
    return {**_truth_header(layout, markers), "cells": list(_cell_truth(layout, markers))}


# ------------------------------------------------------------------------------------ files



def write_testis(out_dir: str | Path, seed: int = 0, count: int = 1, size: int = 2048,
                 markers: tuple[str, ...] = DEFAULT_MARKERS, style: PhantomStyle | str | None = None) -> list[Path]:
    """Write ``count`` sections ``testis_NNN.ome.tif`` (DAPI + markers) with tubule labels, truth JSON, README.

    ``style`` (a name of :data:`~app.pipelines.stagetool.phantom_style.STYLES`): as another lab would image them.
    """
    _check_markers(markers)
    style = get_style(style)
    pixel_size = style.pixel_size_um
    out = Path(out_dir)
    names = [f"testis_{i:03d}{suffix}" for i in range(count) for suffix in (".ome.tif", TUBULES_SUFFIX, TRUTH_SUFFIX)]
    refuse_overwrite(out, names + ["README.txt"])
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for i in range(count):
        layout = testis_layout(seed + i, size, style=style)
        name = f"testis_{i:03d}"
        height, width = layout.shape
        write_tiff(out / f"{name}.ome.tif", _section_tiles(layout, markers, TIFF_TILE), axes="CYX",
                   channel_names=["DAPI", *markers], pixel_size_um=pixel_size, pyramid=max(layout.shape) > 4096,
                   tile=(TIFF_TILE, TIFF_TILE), shape=(1 + len(markers), height, width), dtype=np.uint16)
        write_tiff(out / f"{name}{TUBULES_SUFFIX}", lambda *window: tubule_labels(layout, window),
                   axes="YX", pixel_size_um=pixel_size, shape=(height, width), dtype=np.uint16)
        _write_truth(out / f"{name}{TRUTH_SUFFIX}", layout, markers, image=f"{name}.ome.tif")
        written += [out / f"{name}.ome.tif", out / f"{name}{TUBULES_SUFFIX}", out / f"{name}{TRUTH_SUFFIX}"]
    atomic_write_text(out / "README.txt", (
        "Synthetic testis phantoms (Stagescope, app/pipelines/stagetool/phantom.py): SYNTHETIC DATA with exact "
        "ground truth, for trying and testing the software, not biology.\n"
        f"testis_NNN.ome.tif: channel 0 DAPI, then {', '.join(markers) or 'no'} antibody channel(s); "
        f"{pixel_size} um per pixel; style {style.name}: {style.description}.\n"
        "testis_NNN_tubules.tif: tubule ids (none inside tears); testis_NNN_truth.json: tubules (stage, kind, "
        "usable; oblique cuts are usable) and cells "
        "(box x0 y0 x1 y1, type, tubule id, level drawn per antibody: 0 = negative).\n"
        f"Seed {seed}, {count} section(s) of {size} x {size} px.\n"))
    return written + [out / "README.txt"]


def _write_truth(path: Path, layout: TestisLayout, markers: Sequence[str], image: str) -> None:
    """Write the truth JSON atomically, one cell at a time (a 20000 px section has ~400 000 cells)."""
    head = json.dumps({**_truth_header(layout, markers), "image": image}, ensure_ascii=False)
    with atomic_path(path) as tmp, tmp.open("w", encoding="utf-8") as stream:
        stream.write(head[:-1] + ', "cells": [')
        for number, cell in enumerate(_cell_truth(layout, markers)):
            stream.write((", " if number else "") + json.dumps(cell, ensure_ascii=False))
        stream.write("]}\n")


