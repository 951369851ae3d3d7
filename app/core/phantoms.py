"""Synthetic images with exact ground truth, seeded and reproducible, for tests and demos.

Fluorescence nuclei (isolated, touching and overlapping in known proportions, varied
size/brightness/texture, uneven illumination, blur, noise; overlapping signals add and the
labels give a shared pixel to the brighter nucleus); brightfield z-stacks of the same cells,
whose nucleus contrast is lowest in focus and flips sign across focus, with the paired
DNA-stain image (optionally shifted: a registration error).  Pipelines draw their own phantoms
(Stagetool's testis sections: :mod:`app.pipelines.stagetool.phantom`); :mod:`app.pipelines.phantoms`
writes every kind.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from app.core.errors import UserError


@dataclass
class NucleiPhantom:
    """A fluorescence image, its instance labels (uint16, 0 = background) and what was drawn.

    ``objects``: one dict per nucleus with ``id``, ``centroid`` (y, x of its whole drawn shape),
    ``radius``, ``axes`` (semi-axes a, b), ``angle``, ``brightness`` (relative DNA signal), ``area``
    (labelled pixels), ``mask_area`` (pixels of its whole shape, overlaps included), ``placed``
    (``isolated``, ``touching`` or ``overlapping``: how it was put next to ``partner``), and
    ``overlaps`` / ``touches``: ids of the nuclei it shares pixels with / borders without sharing.
    ``masks``: id -> (y0, x0, boolean crop) of each nucleus' whole shape (see :meth:`mask`).
    """

    image: np.ndarray
    labels: np.ndarray
    objects: list[dict] = field(default_factory=list)
    masks: dict[int, tuple[int, int, np.ndarray]] = field(default_factory=dict, repr=False)

    def mask(self, object_id: int) -> np.ndarray:
        """The whole drawn shape of one nucleus, overlapped parts included, as a full-frame boolean image."""
        y0, x0, crop = self.masks[object_id]
        out = np.zeros(self.labels.shape, bool)
        out[y0 : y0 + crop.shape[0], x0 : x0 + crop.shape[1]] = crop
        return out


@dataclass
class BrightfieldPhantom:
    """Brightfield planes (Z, H, W) float32 around 1.0, their z offsets, the DNA stain and nuclei labels.

    ``labels`` are aligned with the planes; ``fluorescence`` is moved by ``shift`` (a registration
    error to find); ``nuclei`` is the drawn layout (objects with overlaps, as :class:`NucleiPhantom`).
    """

    planes: np.ndarray
    z_offsets_um: list[float]
    fluorescence: np.ndarray
    labels: np.ndarray
    shift: tuple[int, int] = (0, 0)
    objects: list[dict] = field(default_factory=list)

    @property
    def z_um(self) -> list[float]:
        return self.z_offsets_um


def _shape(size: int | tuple[int, int]) -> tuple[int, int]:
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


# ------------------------------------------------------------------ nuclei layout (shared by both phantoms)

OVERLAP_RANGE = (0.1, 0.3)  # an overlapping pair shares this fraction of the smaller nucleus' area
GAP = 2  # px of background kept between an isolated nucleus and any other


@dataclass
class _Nucleus:
    """One drawn nucleus: a wobbly ellipse, its brightness and how it was placed."""

    cy: float
    cx: float
    a: float
    b: float
    theta: float
    phase: float
    r: float
    brightness: float
    placed: str = "isolated"
    partner: int | None = None
    y0: int = 0
    x0: int = 0
    crop: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), bool))

    def rasterise(self) -> None:
        """Draw the shape into a boolean crop at (y0, x0)."""
        reach = int(np.ceil(self.a * 1.1)) + 1
        self.y0, self.x0 = int(np.floor(self.cy)) - reach, int(np.floor(self.cx)) - reach
        yy, xx = np.mgrid[self.y0 : self.y0 + 2 * reach + 2, self.x0 : self.x0 + 2 * reach + 2]
        dy, dx = yy - self.cy, xx - self.cx
        u = (dx * np.cos(self.theta) + dy * np.sin(self.theta)) / self.a
        v = (-dx * np.sin(self.theta) + dy * np.cos(self.theta)) / self.b
        wobble = 1 + 0.08 * np.sin(3 * np.arctan2(v, u) + self.phase)
        self.crop = (u * u + v * v) <= wobble**2

    def inside(self, shape: tuple[int, int]) -> bool:
        """Whether the whole shape lies in the image."""
        ys, xs = np.nonzero(self.crop)
        return bool(ys.size) and self.y0 + ys.min() >= 0 and self.x0 + xs.min() >= 0 and \
            self.y0 + ys.max() < shape[0] and self.x0 + xs.max() < shape[1]

    def region(self, shape: tuple[int, int], margin: int = 0) -> tuple[tuple[slice, slice], tuple[slice, slice]]:
        """(image slices, crop slices) of the crop grown by ``margin``, clipped to the image."""
        h, w = self.crop.shape
        y0, x0, y1, x1 = self.y0 - margin, self.x0 - margin, self.y0 + h + margin, self.x0 + w + margin
        cy0, cx0 = max(0, -y0), max(0, -x0)
        iy0, ix0, iy1, ix1 = max(0, y0), max(0, x0), min(shape[0], y1), min(shape[1], x1)
        return (slice(iy0, iy1), slice(ix0, ix1)), (slice(cy0, cy0 + iy1 - iy0), slice(cx0, cx0 + ix1 - ix0))

    def grown(self, margin: int) -> np.ndarray:
        """The crop padded by ``margin`` and dilated by it (for contact tests)."""
        padded = np.pad(self.crop, margin)
        return ndi.binary_dilation(padded, np.ones((3, 3), bool), iterations=margin) if margin else padded


def _random_nucleus(rng: np.random.Generator, radius: tuple[float, float], cy: float, cx: float) -> _Nucleus:
    """A nucleus of random size (semi-axes 1-1.3 and 0.75-1 x r), orientation, outline wobble and brightness."""
    r = rng.uniform(*radius)
    return _Nucleus(cy, cx, r * rng.uniform(1.0, 1.3), r * rng.uniform(0.75, 1.0), rng.uniform(0, np.pi),
                    rng.uniform(0, 2 * np.pi), r, rng.uniform(0.4, 1.0))


class _Layout:
    """Places nuclei one by one: isolated (a gap to all others), touching or overlapping one partner."""

    def __init__(self, shape: tuple[int, int]) -> None:
        self.shape = shape
        self.cover = np.zeros(shape, np.int16)  # how many nuclei cover each pixel
        self.nuclei: list[_Nucleus] = []

    def _others(self, n: _Nucleus, margin: int, partner: _Nucleus | None) -> np.ndarray:
        """Coverage by already placed nuclei (minus the partner) in ``n``'s region grown by ``margin``."""
        (iy, ix), (cy, cx) = n.region(self.shape, margin)
        cover = np.zeros((n.crop.shape[0] + 2 * margin, n.crop.shape[1] + 2 * margin), np.int16)
        cover[cy, cx] = self.cover[iy, ix]
        if partner is not None:
            cover -= self._on(partner, n, margin)
        return cover > 0

    @staticmethod
    def _on(other: _Nucleus, n: _Nucleus, margin: int) -> np.ndarray:
        """``other``'s shape on the grid of ``n``'s crop grown by ``margin``."""
        h, w = n.crop.shape[0] + 2 * margin, n.crop.shape[1] + 2 * margin
        out = np.zeros((h, w), np.int16)
        oy, ox = other.y0 - (n.y0 - margin), other.x0 - (n.x0 - margin)
        ys = slice(max(0, oy), min(h, oy + other.crop.shape[0]))
        xs = slice(max(0, ox), min(w, ox + other.crop.shape[1]))
        if ys.stop <= ys.start or xs.stop <= xs.start:
            return out
        out[ys, xs] = other.crop[ys.start - oy : ys.stop - oy, xs.start - ox : xs.stop - ox]
        return out

    def add(self, n: _Nucleus) -> None:
        (iy, ix), (cy, cx) = n.region(self.shape)
        self.cover[iy, ix] += n.crop[cy, cx]
        self.nuclei.append(n)

    def try_isolated(self, rng: np.random.Generator, radius: tuple[float, float]) -> _Nucleus | None:
        """A nucleus at a random place at least ``GAP`` px from all others, or None where it does not fit."""
        h, w = self.shape
        r = radius[1] * 1.3
        n = _random_nucleus(rng, radius, rng.uniform(r, max(r + 1, h - r)), rng.uniform(r, max(r + 1, w - r)))
        n.rasterise()
        if not n.inside(self.shape) or (self._others(n, GAP, None) & n.grown(GAP)).any():
            return None
        return n

    def partners(self, kind: str) -> list[int]:
        """Indices of the nuclei a new one may touch (any) or overlap (one not yet in an overlapping pair,
        so that every nucleus keeps at least 70% of its pixels in the labels)."""
        if kind == "touching":
            return list(range(len(self.nuclei)))
        overlapped = {q.partner for q in self.nuclei if q.placed == "overlapping"}
        return [i for i, p in enumerate(self.nuclei) if p.placed != "overlapping" and i + 1 not in overlapped]

    def try_partner(self, rng: np.random.Generator, radius: tuple[float, float], kind: str) -> _Nucleus | None:
        """A nucleus touching (or overlapping) a random earlier one, and no other."""
        choices = self.partners(kind)
        if not choices:
            return None
        partner = self.nuclei[choices[rng.integers(len(choices))]]
        angle = rng.uniform(0, 2 * np.pi)
        n = _random_nucleus(rng, radius, 0.0, 0.0)
        target = rng.uniform(*OVERLAP_RANGE)
        reach = partner.a + n.a
        # from far to near in 0.5 px steps; the first steps (beyond 1.1 x reach + 2 px, wobble <= 8%) cannot touch
        start = reach * 1.3 - 0.5 * max(0.0, np.floor((reach * 0.2 - 2) / 0.5))
        for d in np.arange(start, reach * 0.3, -0.5):
            n.cy, n.cx = partner.cy + d * np.sin(angle), partner.cx + d * np.cos(angle)
            n.rasterise()
            shared = int((self._on(partner, n, 0) & n.crop).sum())
            near = bool((self._on(partner, n, 1) & n.grown(1)).any())
            if kind == "touching" and near:
                if shared:
                    return None
                break
            if kind == "overlapping" and shared >= target * min(n.crop.sum(), partner.crop.sum()):
                break
        else:
            return None
        if not n.inside(self.shape) or (self._others(n, GAP, partner) & n.grown(GAP)).any():
            return None
        n.placed, n.partner = kind, self.nuclei.index(partner) + 1
        return n


def _place(layout: _Layout, rng: np.random.Generator, radius: tuple[float, float], role: str,
           fallback: bool) -> bool | None:
    """Place one nucleus in its role (300 tries); with ``fallback``, isolated if the role fails.

    True when placed; False when a partner role has no possible partner yet (try again later);
    None when there was no room (the image is probably full).
    """
    if role != "isolated" and layout.nuclei and not layout.partners(role):
        return _place(layout, rng, radius, "isolated", fallback=False) if fallback else False
    for _ in range(300):
        n = layout.try_isolated(rng, radius) if role == "isolated" or not layout.nuclei else \
            layout.try_partner(rng, radius, role)
        if n is not None:
            layout.add(n)
            return True
    if role != "isolated" and fallback:
        return _place(layout, rng, radius, "isolated", fallback=False)
    return None


def _layout(rng: np.random.Generator, shape: tuple[int, int], count: int, radius: tuple[float, float],
            overlap: float, touch: float) -> list[_Nucleus]:
    """``count`` nuclei: round(overlap x count) placed overlapping an earlier one, round(touch x count)
    touching one, the rest isolated (a nucleus that cannot be placed as asked after 300 tries is
    placed isolated, its ``placed`` says so; a crowded image ends with fewer nuclei: placing stops
    once three nuclei in a row found no room)."""
    n_overlap, n_touch = int(round(overlap * count)), int(round(touch * count))
    roles = ["overlapping"] * n_overlap + ["touching"] * n_touch
    roles += ["isolated"] * max(0, count - len(roles))
    roles = [str(r) for r in rng.permutation(roles[:count])]
    if roles and "isolated" in roles:
        first = roles.index("isolated")
        roles[0], roles[first] = roles[first], roles[0]
    layout = _Layout(shape)
    deferred, misses = [], 0
    for role in roles:
        placed = _place(layout, rng, radius, role, fallback=False)
        if placed is False:
            deferred.append(role)  # e.g. the second nucleus asked to overlap one already overlapped
        misses = misses + 1 if placed is None else 0
        if misses == 3:  # three nuclei in a row found no room: the field is full
            return layout.nuclei
    for role in deferred:
        if _place(layout, rng, radius, role, fallback=True) is None:
            break
    return layout.nuclei


def _paint(nuclei: list[_Nucleus], shape: tuple[int, int], values: list[np.ndarray | float]) -> np.ndarray:
    """Sum of each nucleus' shape times its value (a number or a full-frame image): overlaps add up."""
    out = np.zeros(shape, np.float32)
    for n, value in zip(nuclei, values):
        (iy, ix), (cy, cx) = n.region(shape)
        out[iy, ix] += n.crop[cy, cx] * (value[iy, ix] if isinstance(value, np.ndarray) else value)
    return out


def _labels_and_objects(nuclei: list[_Nucleus], shape: tuple[int, int]):
    """Labels by the overlap rule (a shared pixel belongs to the brighter nucleus, ties to the lower id;
    like Kaizen's label output) and the objects list with the measured overlaps and contacts."""
    labels = np.zeros(shape, np.uint16)
    order = sorted(range(len(nuclei)), key=lambda i: (nuclei[i].brightness, -i))
    for i in order:  # dimmest first: brighter nuclei paint over them
        n = nuclei[i]
        (iy, ix), (cy, cx) = n.region(shape)
        labels[iy, ix][n.crop[cy, cx]] = i + 1
    objects, masks = [], {}
    for i, n in enumerate(nuclei):
        ys, xs = np.nonzero(n.crop)
        overlaps, touches = [], []
        for j, m in enumerate(nuclei):
            if j == i or abs(m.cy - n.cy) > m.a + n.a + 3 or abs(m.cx - n.cx) > m.a + n.a + 3:
                continue
            if (_Layout._on(m, n, 0) & n.crop).any():
                overlaps.append(j + 1)
            elif (_Layout._on(m, n, 1) & n.grown(1)).any():
                touches.append(j + 1)
        objects.append({"id": i + 1, "centroid": (float(n.y0 + ys.mean()), float(n.x0 + xs.mean())),
                        "radius": float(n.r), "axes": (float(n.a), float(n.b)), "angle": float(n.theta),
                        "brightness": float(n.brightness), "area": int(np.count_nonzero(labels == i + 1)),
                        "mask_area": int(n.crop.sum()), "placed": n.placed, "partner": n.partner,
                        "overlaps": overlaps, "touches": touches})
        (iy, ix), (cy, cx) = n.region(shape)
        masks[i + 1] = (iy.start, ix.start, n.crop[cy, cx].copy())
    return labels, objects, masks


def _illumination(rng: np.random.Generator, shape: tuple[int, int], strength: float = 0.35) -> np.ndarray:
    """Uneven illumination: 1 at an off-centre point, falling to 1 - strength at the far corner."""
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]].astype(np.float32)
    cy, cx = rng.uniform(0.2, 0.8) * shape[0], rng.uniform(0.2, 0.8) * shape[1]
    d2 = (yy - cy) ** 2 + (xx - cx) ** 2
    return (1 - strength * d2 / d2.max()).astype(np.float32)


def _fluorescence(rng: np.random.Generator, nuclei: list[_Nucleus], shape: tuple[int, int]) -> np.ndarray:
    """DNA stain in arbitrary units (~0..2): textured nuclei whose signals add where they overlap, optical blur,
    uneven illumination and a background gradient (no noise yet)."""
    grain = ndi.gaussian_filter(rng.normal(0, 1, shape), 1.5).astype(np.float32)
    signal = _paint(nuclei, shape, [n.brightness * (1 + 0.25 * grain) for n in nuclei])
    signal = ndi.gaussian_filter(signal, 1.2)
    yy, xx = np.mgrid[0 : shape[0], 0 : shape[1]] / max(shape)
    background = 0.05 + 0.08 * (0.6 * yy + 0.4 * xx)
    return (signal * _illumination(rng, shape) + background).astype(np.float32)


def nuclei(seed: int = 0, size: int | tuple[int, int] = 256, count: int = 30,
           radius: tuple[float, float] = (6.0, 12.0), *, overlap: float = 0.15,
           touch: float = 0.2) -> NucleiPhantom:
    """Fluorescence nuclei: varied size and brightness, chromatin texture, blur, uneven illumination, noise.

    ``overlap`` / ``touch``: fractions of the nuclei placed overlapping (signals add; labels follow the
    brighter nucleus) or touching an earlier one; see :class:`NucleiPhantom` for the objects list.
    """
    rng = np.random.default_rng(seed)
    shape = _shape(size)
    drawn = _layout(rng, shape, count, radius, overlap, touch)
    labels, objects, masks = _labels_and_objects(drawn, shape)
    image = _fluorescence(rng, drawn, shape) * 3000
    image = rng.poisson(np.clip(image, 0, None)).astype(np.float32) + rng.normal(0, 20, shape)
    return NucleiPhantom(np.clip(image, 0, 65535).astype(np.uint16), labels, objects, masks)


def _phase(rng: np.random.Generator, drawn: list[_Nucleus], labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Optical thickness of the cells (nuclei with 1-3 dense nucleoli, thinner cytoplasm) and its Laplacian."""
    shape = labels.shape
    nucleus = _paint(drawn, shape, [rng.uniform(0.45, 0.75) for _ in drawn])
    nucleoli = np.zeros(shape, np.float32)
    for n in drawn:
        for _ in range(rng.integers(1, 4)):
            r, t = rng.uniform(0, 0.5) * n.b, rng.uniform(0, 2 * np.pi)
            y, x = int(round(n.cy + r * np.sin(t))), int(round(n.cx + r * np.cos(t)))
            if 0 <= y < shape[0] and 0 <= x < shape[1]:
                nucleoli[y, x] += 1.0
    nucleoli = ndi.gaussian_filter(nucleoli, 1.2) * 6
    cells = ndi.grey_dilation(labels, size=9) > 0
    phase = (ndi.gaussian_filter(nucleus, 1.5) + nucleoli * (labels > 0)
             + 0.3 * ndi.gaussian_filter(cells.astype(np.float32), 2.0))
    return ndi.laplace(ndi.gaussian_filter(phase, 1.0)), phase


def brightfield_stack(seed: int = 0, size: int | tuple[int, int] = 256, count: int = 30, n_planes: int = 9,
                      z_step_um: float = 1.0, shift: tuple[int, int] = (0, 0), *,
                      radius: tuple[float, float] = (6.0, 11.0), overlap: float = 0.1,
                      touch: float = 0.2) -> BrightfieldPhantom:
    """Brightfield z-stack of cells and the paired DNA stain of the same nuclei.

    Cells are weak phase objects (nucleus, a few dense nucleoli, a thinner cytoplasm around each
    nucleus); a plane at defocus dz shows ~ 1 + dz x laplacian(phase) (transport of intensity),
    blurred more the further from focus, times an uneven illumination, plus noise: nuclei have
    almost no contrast in focus and bright/dark rims that swap sign across focus.  ``shift`` (dy, dx)
    moves the fluorescence (only) by exactly that many pixels: a registration error to detect.
    """
    rng = np.random.default_rng(seed)
    shape = _shape(size)
    drawn = _layout(rng, shape, count, radius, overlap, touch)
    labels, objects, _ = _labels_and_objects(drawn, shape)
    laplace, phase = _phase(rng, drawn, labels)
    light = _illumination(rng, shape, 0.2)
    offsets = [(k - (n_planes - 1) / 2) * z_step_um for k in range(n_planes)]
    planes = []
    for dz in offsets:
        plane = (1.0 + 1.5 * dz * laplace + 0.02 * phase) * light  # defocus contrast + weak absorption
        plane = ndi.gaussian_filter(plane, 0.5 + 0.4 * abs(dz))
        planes.append(plane + rng.normal(0, 0.01, shape))
    fluo = _fluorescence(rng, drawn, shape) * 120 + rng.normal(10, 3, shape)
    fluo = np.roll(fluo, shift, axis=(0, 1))
    return BrightfieldPhantom(np.stack(planes).astype(np.float32), offsets, np.clip(fluo, 0, 255).astype(np.uint8),
                              labels, (int(shift[0]), int(shift[1])), objects)


def refuse_overwrite(folder: Path, names: list[str]) -> None:
    """Phantoms never replace files: a folder that already holds one of ``names`` is a user error."""
    taken = [n for n in names if (folder / n).exists()]
    if taken:
        raise UserError(f"{folder} already holds {taken[0]}"
                        + (f" and {len(taken) - 1} other file(s)" if len(taken) > 1 else "")
                        + ": choose an empty folder (phantoms never overwrite files)")


def write_phantom(kind: str, out_dir: Path, seed: int = 0, count: int | None = None, size: int | None = None,
                  markers: tuple[str, ...] | None = None) -> list[Path]:
    """Write nuclei or brightfield phantom images, their ground truth and a README.txt describing what was drawn.

    ``markers`` is ignored (those kinds have no antibody channels); it keeps the signature of
    :func:`app.pipelines.phantoms.write_phantom`, which also writes pipelines' own kinds.
    """
    import tifffile

    from app.core.atomic import atomic_path

    out = Path(out_dir)
    count = count or 3
    if kind in ("nuclei", "brightfield"):
        prefix = "nuclei" if kind == "nuclei" else "field"
        refuse_overwrite(out, ["README.txt"] + [p.name for i in range(count) for p in out.glob(f"{prefix}_{i:03d}*")])
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []

    def save(name: str, data: np.ndarray, **kwargs) -> None:
        path = out / name
        with atomic_path(path) as tmp:
            tifffile.imwrite(tmp, data, **kwargs)
        written.append(path)

    if kind == "nuclei":
        for i in range(count):
            p = nuclei(seed=seed + i, size=size or 256)
            save(f"nuclei_{i:03d}.tif", p.image)
            save(f"nuclei_{i:03d}_labels.tif", p.labels)
            (out / f"nuclei_{i:03d}_objects.json").write_text(json.dumps({"objects": p.objects}, indent=1))
            written.append(out / f"nuclei_{i:03d}_objects.json")
        text = ("Fluorescence nuclei phantoms: nuclei_NNN.tif (uint16) with instance labels nuclei_NNN_labels.tif and "
                "what was drawn in nuclei_NNN_objects.json (per nucleus: centroid, size, brightness, how it was "
                "placed, and the ids it overlaps or touches). Some nuclei touch and some overlap: their signals "
                "add, and a shared pixel is labelled with the brighter nucleus.")
    elif kind == "brightfield":
        for i in range(count):
            p = brightfield_stack(seed=seed + i, size=size or 256)
            planes = np.clip(p.planes * 20000, 0, 65535).astype(np.uint16)
            save(f"field_{i:03d}_planes.tif", planes, metadata={"axes": "ZYX"})
            save(f"field_{i:03d}_fluo.tif", p.fluorescence)
            save(f"field_{i:03d}_labels.tif", p.labels)
            (out / f"field_{i:03d}_planes.json").write_text(json.dumps({"z_offsets_um": p.z_offsets_um}))
        text = ("Brightfield phantoms: field_NNN_planes.tif (Z, Y, X; z offsets in field_NNN_planes.json), "
                "paired DNA stain field_NNN_fluo.tif and nuclei labels field_NNN_labels.tif. Nuclei are weak "
                "phase objects: almost no contrast in focus, rims that change sign across focus; some touch or "
                "overlap.")
    else:
        raise UserError(f"unknown phantom kind '{kind}' (nuclei or brightfield here; "
                        "app.pipelines.phantoms also writes testis)")
    (out / "README.txt").write_text(f"{text}\nSeed {seed}, {count} image(s). Synthetic data with exact ground truth.\n")
    written.append(out / "README.txt")
    return written
