"""What a decomposition gives and how it is written: objects (overlaps kept), a label image, JSON.

Per image ``<stem>``, :func:`write_outputs` writes into the output folder:

* ``<stem>.tif`` - uint16 label image (uint32 above 65535 objects); where objects overlap, a pixel
  goes to the object that is brighter there, so any tool can read it;
* ``<stem>.objects.npz`` - the object stack that keeps overlaps: ``images`` (N, h, w) float32, one
  generated object image per object, cropped and zero padded to a common size, in the input's
  intensity units above background; ``masks`` (N, h, w) bool; ``offsets`` (N, 2) (y, x) of each
  crop's top-left pixel in the image; ``shapes`` (N, 2) crop sizes; ``codes`` (N, G, G) codebook
  indices; ``ids`` (N,);
* ``<stem>.objects.json`` - per object: id, box (x0, y0, x1, y1), centroid (y, x), area,
  mean intensity (of the input inside the mask), gain, codes; plus image size, diameter, scale and
  the parameters used.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from app.core.atomic import atomic_path, atomic_write_json


@dataclass
class KaizenObject:
    """One object of a decomposition, on the original pixel grid."""

    id: int
    offset: tuple[int, int]  # (y, x) of the crop's top-left pixel in the image
    image: np.ndarray  # float32 generated object image (crop), intensity units above background
    mask: np.ndarray  # bool crop, same shape as image
    codes: np.ndarray  # (G, G) codebook indices
    gain: float  # how much the object lowered the L1 loss, as a share of its own intensity
    mean_intensity: float = 0.0
    head_agreement: float = 1.0  # IoU of the mask with the mask head's (p > 0.5); used by the stop rule

    @property
    def area(self) -> int:
        return int(self.mask.sum())

    def box(self) -> tuple[float, float, float, float]:
        """(x0, y0, x1, y1) of the mask in image pixels, x1/y1 exclusive."""
        ys, xs = np.nonzero(self.mask)
        if ys.size == 0:
            return (float(self.offset[1]), float(self.offset[0]), float(self.offset[1]), float(self.offset[0]))
        return (float(self.offset[1] + xs.min()), float(self.offset[0] + ys.min()),
                float(self.offset[1] + xs.max() + 1), float(self.offset[0] + ys.max() + 1))

    def centroid(self) -> tuple[float, float]:
        """(y, x) centre of the mask in image pixels."""
        ys, xs = np.nonzero(self.mask)
        if ys.size == 0:
            return (float(self.offset[0]), float(self.offset[1]))
        return (float(self.offset[0] + ys.mean()), float(self.offset[1] + xs.mean()))

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "class": "object", "box": [round(v, 2) for v in self.box()],
                "centroid": [round(v, 2) for v in self.centroid()], "area": self.area,
                "mean_intensity": round(float(self.mean_intensity), 4), "gain": round(float(self.gain), 4),
                "codes": self.codes.tolist()}


@dataclass
class Decomposition:
    """All objects of one image plus how they were found."""

    shape: tuple[int, int]
    objects: list[KaizenObject] = field(default_factory=list)
    diameter: float | None = None  # object diameter used (input pixels); None when the image was empty
    scale: float = 1.0  # model grid / input grid
    rounds: int = 0  # rounds of the core algorithm run (all passes)
    candidates: int = 0  # candidates sent through the network
    params: dict[str, Any] = field(default_factory=dict)
    model: dict[str, Any] = field(default_factory=dict)

    def labels(self) -> np.ndarray:
        """Label image; overlapping pixels go to the object that is brighter there (ids 1..N)."""
        dtype = np.uint16 if len(self.objects) <= 65535 else np.uint32
        labels = np.zeros(self.shape, dtype)
        best = np.zeros(self.shape, np.float32)
        for obj in self.objects:
            y, x = obj.offset
            h, w = obj.mask.shape
            region = (slice(y, y + h), slice(x, x + w))
            win = obj.mask & (obj.image > best[region])
            labels[region][win] = obj.id
            best[region][win] = obj.image[win]
        return labels

    def internal_image(self) -> np.ndarray:
        """Sum of all generated object images: Kaizen's internal picture of the input."""
        total = np.zeros(self.shape, np.float32)
        for obj in self.objects:
            y, x = obj.offset
            h, w = obj.image.shape
            total[y:y + h, x:x + w] += obj.image
        return total

    def to_dict(self) -> dict[str, Any]:
        return {"height": self.shape[0], "width": self.shape[1], "n_objects": len(self.objects),
                "diameter": self.diameter, "scale": self.scale, "rounds": self.rounds,
                "candidates": self.candidates, "params": self.params, "model": self.model,
                "objects": [o.to_dict() for o in self.objects]}


def object_stack(decomposition: Decomposition) -> dict[str, np.ndarray]:
    """The arrays of ``<stem>.objects.npz`` (crops zero padded to the largest crop)."""
    objs = decomposition.objects
    h = max((o.image.shape[0] for o in objs), default=0)
    w = max((o.image.shape[1] for o in objs), default=0)
    grid = objs[0].codes.shape if objs else (0, 0)
    images = np.zeros((len(objs), h, w), np.float32)
    masks = np.zeros((len(objs), h, w), bool)
    for i, o in enumerate(objs):
        images[i, : o.image.shape[0], : o.image.shape[1]] = o.image
        masks[i, : o.mask.shape[0], : o.mask.shape[1]] = o.mask
    return {"ids": np.array([o.id for o in objs], np.int32), "images": images, "masks": masks,
            "offsets": np.array([o.offset for o in objs], np.int32).reshape(-1, 2),
            "shapes": np.array([o.image.shape for o in objs], np.int32).reshape(-1, 2),
            "codes": np.array([o.codes for o in objs], np.int16).reshape(len(objs), *grid)}


def output_paths(out_dir: Path, stem: str) -> dict[str, Path]:
    """Where :func:`write_outputs` puts one image's labels, object stack and objects JSON."""
    out_dir = Path(out_dir)
    return {"labels": out_dir / f"{stem}.tif", "stack": out_dir / f"{stem}.objects.npz",
            "json": out_dir / f"{stem}.objects.json"}


def write_outputs(out_dir: Path, stem: str, decomposition: Decomposition, source: str | None = None,
                  extra: dict[str, Any] | None = None) -> dict[str, Path]:
    """Write the label TIFF, object stack and objects JSON for one image, all or none (see ``output_set``).

    ``extra`` maps further file names to JSON documents written in the same set (the CLI's run.json),
    so a full disk never leaves labels without their objects file or run record.
    """
    import tifffile

    from app.core.results import output_set

    out_dir = Path(out_dir)
    names = {key: path.name for key, path in output_paths(out_dir, stem).items()}
    with output_set(out_dir) as staging:
        with atomic_path(staging / names["labels"]) as tmp:
            tifffile.imwrite(tmp, decomposition.labels(), compression="zlib", metadata={"axes": "YX"})
        with atomic_path(staging / names["stack"]) as tmp:
            write_npz(tmp, object_stack(decomposition))
        document = {"schema_version": 1, "pipeline": "kaizen", "image": source or stem, **decomposition.to_dict()}
        atomic_write_json(staging / names["json"], document, indent=1)
        for name, extra_document in (extra or {}).items():
            atomic_write_json(staging / name, extra_document)
    return {key: out_dir / name for key, name in names.items()}


def write_npz(path: str | Path, arrays: dict[str, np.ndarray]) -> None:
    """``np.savez_compressed`` without the clock: fixed zip entry times, so the same objects give the same
    bytes (a GUI run, the CLI and a batch write identical folders)."""
    import io
    import zipfile

    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, allowZip64=True) as archive:
        for name, array in arrays.items():
            buffer = io.BytesIO()
            np.lib.format.write_array(buffer, np.asanyarray(array), allow_pickle=False)
            entry = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            entry.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(entry, buffer.getvalue())
