"""Synthetic images with exact ground truth, seeded and reproducible, for tests and demos.

Fluorescence nuclei (touching, varied size/brightness/texture, uneven illumination, blur,
noise); brightfield z-stacks of the same cells, whose nucleus contrast is lowest in focus and
flips sign across focus, with the paired DNA-stain image; and DAPI testis sections with tubule
stages, 9 cell types and antibody channels (drawn in :mod:`app.core.testis_phantom`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from app.core.errors import UserError
from app.core.testis_phantom import (  # noqa: F401  (re-exported: the testis phantom API)
    DEFAULT_MARKERS, TestisLayout, render_testis, render_testis_truth, testis_layout, write_testis)


@dataclass
class NucleiPhantom:
    """A fluorescence image and its instance labels (uint16, 0 = background)."""

    image: np.ndarray
    labels: np.ndarray
    objects: list[dict] = field(default_factory=list)


@dataclass
class BrightfieldPhantom:
    """Brightfield planes (Z, H, W) float32 around 1.0, their z offsets, the DNA stain and nuclei labels."""

    planes: np.ndarray
    z_offsets_um: list[float]
    fluorescence: np.ndarray
    labels: np.ndarray

    @property
    def z_um(self) -> list[float]:
        return self.z_offsets_um


def _shape(size: int | tuple[int, int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def _draw_nuclei(rng: np.random.Generator, shape: tuple[int, int], count: int, radius: tuple[float, float]):
    """Random ellipses, allowed to touch (centres at least 0.8 x the radius sum apart)."""
    h, w = shape
    labels = np.zeros(shape, np.uint16)
    texture = np.zeros(shape, np.float32)
    objects: list[dict] = []
    yy, xx = np.mgrid[0:h, 0:w]
    tries = 0
    while len(objects) < count and tries < count * 50:
        tries += 1
        r = rng.uniform(*radius)
        cy, cx = rng.uniform(r, h - r), rng.uniform(r, w - r)
        if any(np.hypot(cy - o["centroid"][0], cx - o["centroid"][1]) < 0.8 * (r + o["radius"]) for o in objects):
            continue
        a, b, theta = r * rng.uniform(1.0, 1.3), r * rng.uniform(0.75, 1.0), rng.uniform(0, np.pi)
        dy, dx = yy - cy, xx - cx
        u = (dx * np.cos(theta) + dy * np.sin(theta)) / a
        v = (-dx * np.sin(theta) + dy * np.cos(theta)) / b
        wobble = 1 + 0.08 * np.sin(3 * np.arctan2(v, u) + rng.uniform(0, 2 * np.pi))
        inside = (u * u + v * v) <= wobble**2
        inside &= labels == 0  # an overlap pixel stays with the first nucleus
        if inside.sum() < 10:
            continue
        label = len(objects) + 1
        labels[inside] = label
        texture[inside] = rng.uniform(0.4, 1.0)  # brightness overlaps between sizes
        objects.append({"id": label, "centroid": (float(cy), float(cx)), "radius": float(r), "area": int(inside.sum())})
    return labels, texture, objects


def nuclei(seed: int = 0, size: int | tuple[int, int] = 256, count: int = 30,
           radius: tuple[float, float] = (6.0, 12.0)) -> NucleiPhantom:
    """Fluorescence nuclei with chromatin texture, blur, a background gradient and noise."""
    rng = np.random.default_rng(seed)
    shape = _shape(size)
    labels, brightness, objects = _draw_nuclei(rng, shape, count, radius)
    grain = ndi.gaussian_filter(rng.normal(0, 1, shape), 1.5).astype(np.float32)
    signal = brightness * (1 + 0.25 * grain) * (labels > 0)
    signal = ndi.gaussian_filter(signal, 1.2)
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]] / max(shape)
    background = 0.05 + 0.08 * (0.6 * yy + 0.4 * xx)
    image = (signal + background) * 3000
    image = rng.poisson(np.clip(image, 0, None)).astype(np.float32) + rng.normal(0, 20, shape)
    return NucleiPhantom(np.clip(image, 0, 65535).astype(np.uint16), labels, objects)


def brightfield_stack(seed: int = 0, size: int | tuple[int, int] = 256, count: int = 30, n_planes: int = 9,
                      z_step_um: float = 1.0, shift: tuple[int, int] = (0, 0)) -> BrightfieldPhantom:
    """Cells as weak phase objects: image ~ 1 + dz * laplacian(phase), blurred by |dz| (low contrast in focus)."""
    rng = np.random.default_rng(seed)
    shape = _shape(size)
    labels, brightness, _ = _draw_nuclei(rng, shape, count, (6.0, 11.0))
    cells = ndi.grey_dilation(labels, size=9)  # cytoplasm around each nucleus: a distractor edge
    phase = 0.6 * ndi.gaussian_filter((labels > 0).astype(np.float32), 1.5) + 0.3 * ndi.gaussian_filter(
        (cells > 0).astype(np.float32), 2.0)
    laplace = ndi.laplace(ndi.gaussian_filter(phase, 1.0))
    offsets = [(k - (n_planes - 1) / 2) * z_step_um for k in range(n_planes)]
    planes = []
    for dz in offsets:
        plane = 1.0 + 1.5 * dz * laplace + 0.02 * phase
        plane = ndi.gaussian_filter(plane, 0.5 + 0.4 * abs(dz))
        planes.append(plane + rng.normal(0, 0.01, shape))
    fluo = ndi.gaussian_filter(brightness * (labels > 0), 1.0) * 200 + rng.normal(10, 3, shape)
    fluo = np.roll(fluo, shift, axis=(0, 1))
    return BrightfieldPhantom(np.stack(planes).astype(np.float32), offsets,
                              np.clip(fluo, 0, 255).astype(np.uint8), labels)


def write_phantom(kind: str, out_dir: Path, seed: int = 0, count: int | None = None, size: int | None = None,
                  markers: tuple[str, ...] | None = None) -> list[Path]:
    """Write phantom images, their ground truth and a README.txt describing what was drawn."""
    import tifffile

    from app.core.atomic import atomic_path

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []

    def save(name: str, data: np.ndarray, **kwargs) -> None:
        path = out / name
        with atomic_path(path) as tmp:
            tifffile.imwrite(tmp, data, **kwargs)
        written.append(path)

    count = count or 3
    if kind == "nuclei":
        for i in range(count):
            p = nuclei(seed=seed + i, size=size or 256)
            save(f"nuclei_{i:03d}.tif", p.image)
            save(f"nuclei_{i:03d}_labels.tif", p.labels)
        text = "Fluorescence nuclei phantoms: nuclei_NNN.tif (uint16) with instance labels nuclei_NNN_labels.tif."
    elif kind == "brightfield":
        for i in range(count):
            p = brightfield_stack(seed=seed + i, size=size or 256)
            planes = np.clip(p.planes * 20000, 0, 65535).astype(np.uint16)
            save(f"field_{i:03d}_planes.tif", planes, metadata={"axes": "ZYX"})
            save(f"field_{i:03d}_fluo.tif", p.fluorescence)
            save(f"field_{i:03d}_labels.tif", p.labels)
            (out / f"field_{i:03d}_planes.json").write_text(json.dumps({"z_offsets_um": p.z_offsets_um}))
        text = ("Brightfield phantoms: field_NNN_planes.tif (Z, Y, X; z offsets in field_NNN_planes.json), "
                "paired DNA stain field_NNN_fluo.tif and nuclei labels field_NNN_labels.tif.")
    elif kind == "testis":
        return write_testis(out, seed=seed, count=count, size=size or 2048, markers=markers or DEFAULT_MARKERS)
    else:
        raise UserError(f"unknown phantom kind '{kind}' (nuclei, brightfield or testis)")
    (out / "README.txt").write_text(f"{text}\nSeed {seed}, {count} image(s). Synthetic data with exact ground truth.\n")
    written.append(out / "README.txt")
    return written
