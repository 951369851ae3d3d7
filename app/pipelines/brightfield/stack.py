"""Brightfield z-stacks: find the plane files of a field, read them in z order, select and normalise planes.

A field is either a folder (plane files carry their focus position in the name, ``...-Z1351.60.tif``;
a fluorescence image such as ``fl.tif`` or ``*dapi*`` may sit beside them), a list of plane files,
or one multi-page TIFF (Z, H, W).  Planes are sorted by z when every name carries one; the model
card stores the planes it was trained on by index in that order and by z offset from the stack's
median focus, so a stack from the same microscope maps onto the model's input channels.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from app.core.errors import ImageError, ModelError
from app.core.formats import PLANE_SUFFIXES, image_stem  # one file per field plane

Z_PATTERN = re.compile(r"(?:^|[^A-Za-z])[Zz][=_]?(-?\d+(?:\.\d+)?)(?![\d])")
FLUO_PATTERN = re.compile(r"^(fl|fluo\w*|dapi\w*|hoechst\w*|dna\w*)$|dapi|hoechst|fluo", re.IGNORECASE)
LABEL_PATTERN = re.compile(r"label|mask", re.IGNORECASE)


@dataclass
class PlaneStack:
    """The brightfield planes of one field, in z order: ``data`` is (Z, H, W) as read (not normalised)."""

    data: np.ndarray
    z: list[float] | None = None  # focus positions (µm) when the file names carry them
    names: list[str] = field(default_factory=list)
    source: str = ""

    @property
    def n_planes(self) -> int:
        """Number of planes."""
        return int(self.data.shape[0])

    @property
    def shape(self) -> tuple[int, int]:
        """(H, W) of each plane."""
        return int(self.data.shape[1]), int(self.data.shape[2])

    def z_offsets(self) -> list[float] | None:
        """Focus positions relative to the median of the stack (µm), or None when unknown."""
        if self.z is None:
            return None
        centre = float(np.median(self.z))
        return [round(z - centre, 3) for z in self.z]

    def select(self, indices: Sequence[int] | None) -> PlaneStack:
        """The stack restricted to ``indices`` (positions in z order); None keeps all."""
        if indices is None:
            return self
        bad = [i for i in indices if not 0 <= i < self.n_planes]
        if bad:
            raise ImageError(f"{self.source}: plane index {bad[0]} does not exist; the stack has planes 0..{self.n_planes - 1}")
        idx = list(indices)
        return PlaneStack(
            self.data[idx],
            None if self.z is None else [self.z[i] for i in idx],
            [self.names[i] for i in idx] if self.names else [],
            self.source,
        )


def z_from_name(name: str) -> float | None:
    """The focus position in a file name (``...-Z1351.60.tif`` -> 1351.6), or None."""
    matches = Z_PATTERN.findall(image_stem(Path(name).name))
    return float(matches[-1]) if matches else None


def is_fluorescence_name(path: Path) -> bool:
    """Whether a file name looks like a fluorescence (DNA stain) image: fl.tif, *dapi*, *hoechst*, *fluo*."""
    stem = path.name.split(".")[0]
    return bool(FLUO_PATTERN.search(stem))


def field_files(folder: Path) -> tuple[list[Path], Path | None]:
    """Plane files and the fluorescence file (or None) of a field folder.

    Planes are the images whose names carry a z position; if none do, every image that is not a
    fluorescence or label image.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ImageError(f"{folder}: not a folder")
    images = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in PLANE_SUFFIXES)
    fluo = [p for p in images if is_fluorescence_name(p) and z_from_name(p.name) is None]
    with_z = [p for p in images if z_from_name(p.name) is not None and p not in fluo]
    planes = with_z or [p for p in images if p not in fluo and not LABEL_PATTERN.search(p.name)]
    if not planes:
        raise ImageError(f"{folder}: no brightfield plane images (.tif, .png) in this folder")
    if len(fluo) > 1:
        raise ImageError(f"{folder}: several fluorescence images ({', '.join(p.name for p in fluo)}); give one with --fluo")
    return planes, (fluo[0] if fluo else None)


def read_gray(path: Path) -> np.ndarray:
    """One image as a 2-D plane or a (Z, H, W) stack; an RGB PNG/JPEG of a gray picture becomes 2-D.

    A stack may be stored as z-planes or as channels (a plain multi-page TIFF, or a 3-plane TIFF
    written as RGB): all are planes here.
    """
    from app.core.images import open_image

    with open_image(path) as image:
        info = image.info
        # the U-Net pass holds float copies, a probability map and labels per pixel: refuse what cannot fit
        data = np.asarray(image.read(work_bytes_per_pixel=16))
    if info.n_channels > 1 and info.n_planes > 1:
        raise ImageError(f"{path}: has {info.n_channels} channels and {info.n_planes} z-planes; "
                         "give the brightfield planes as a single-channel z-stack or as one file per plane")
    if info.format in ("png", "jpeg") and tuple(info.channel_names[:3]) == ("R", "G", "B") and data.ndim == 3:
        data = data[:3].astype(np.float32).mean(axis=0)
    return data


def load_stack(paths: Sequence[Path] | Path) -> PlaneStack:
    """Read a field's planes: a folder, a list of plane files, or one multi-page (Z, H, W) file."""
    if isinstance(paths, (str, Path)):
        paths = [Path(paths)]
    paths = [Path(p) for p in paths]
    if len(paths) == 1 and paths[0].is_dir():
        paths = field_files(paths[0])[0]
    for path in paths:
        if not path.exists():
            raise ImageError(f"{path}: no such file")
    if len(paths) == 1:
        data = read_gray(paths[0])
        if data.ndim == 2:
            data = data[None]
        if data.ndim != 3:
            raise ImageError(f"{paths[0]}: expected planes (Z, H, W) or one plane (H, W), found shape {data.shape}")
        names = [f"{paths[0].name}[{i}]" for i in range(data.shape[0])]
        return PlaneStack(data, None, names, str(paths[0]))
    arrays = []
    for path in paths:
        plane = read_gray(path)
        if plane.ndim != 2:
            raise ImageError(f"{path}: a plane file must hold one 2-D plane, found shape {plane.shape}")
        if arrays and plane.shape != arrays[0].shape:
            raise ImageError(
                f"{path}: plane is {plane.shape[1]} x {plane.shape[0]} px but {paths[0].name} is "
                f"{arrays[0].shape[1]} x {arrays[0].shape[0]} px; all planes of a field must have the same size"
            )
        arrays.append(plane)
    zs = [z_from_name(p.name) for p in paths]
    order = list(range(len(paths)))
    z: list[float] | None = None
    if all(v is not None for v in zs):
        order = sorted(order, key=lambda i: zs[i])  # type: ignore[arg-type, return-value]
        z = [float(zs[i]) for i in order]  # type: ignore[arg-type]
    data = np.stack([arrays[i] for i in order])
    return PlaneStack(data, z, [paths[i].name for i in order], str(paths[0].parent))


def normalise(planes: np.ndarray, low: float = 1.0, high: float = 99.0) -> np.ndarray:
    """Per-plane percentile normalisation to float32: the ``low`` percentile -> 0, ``high`` -> 1."""
    planes = np.asarray(planes, dtype=np.float32)
    out = np.empty_like(planes)
    for i, plane in enumerate(planes):
        sample = plane[:: max(1, plane.shape[0] // 512), :: max(1, plane.shape[1] // 512)]
        lo, hi = np.percentile(sample, [low, high])
        out[i] = (plane - lo) / max(float(hi - lo), 1e-6)
    return out


def plane_spec(stack: PlaneStack, indices: Sequence[int] | None) -> dict:
    """What a model stores about its input planes: indices in the z-sorted stack, stack size, z offsets."""
    idx = list(range(stack.n_planes)) if indices is None else list(indices)
    offsets = stack.z_offsets()
    return {
        "indices": idx,
        "n_stack": stack.n_planes,
        "z_offsets_um": None if offsets is None else [offsets[i] for i in idx],
        "names": [stack.names[i] for i in idx] if stack.names else [],
    }


def planes_for_model(stack: PlaneStack, spec: dict, model_name: str = "model") -> PlaneStack:
    """The planes a model needs from ``stack``: its indices from a full stack, or the stack itself if it has exactly that many."""
    indices = list(spec["indices"])
    if stack.n_planes == spec["n_stack"]:
        return stack.select(indices)
    if stack.n_planes == len(indices):
        return stack
    offsets = spec.get("z_offsets_um")
    where = f" at z offsets {offsets} µm" if offsets else ""
    raise ModelError(
        f"{stack.source}: model {model_name!r} expects {len(indices)} plane(s){where} "
        f"(planes {indices} of a {spec['n_stack']}-plane stack), but this field has {stack.n_planes} plane(s); "
        f"give the {spec['n_stack']}-plane stack or exactly the {len(indices)} plane(s) the model was trained on"
    )
