"""Object size chosen by the method: decompose at a few diameters and keep, per region, the one that explains it best.

One estimated diameter per image fails on textured or noisy images (the estimate follows the
bright spots inside large nuclei, and each nucleus is redrawn as 5-30 fragments), and one image
may hold nuclei of two sizes.  Here the image is decomposed at the estimated diameter times each
of ``scales``; objects of all scales are mapped to the input grid; the union of their masks
(dilated a little) is cut into connected regions, and each region keeps the objects of the scale
whose internal image has the lowest L1 distance to the input there (Kaizen's own objective),
plus ``object_cost`` per object.  The estimated diameter keeps a region unless another scale
lowers the L1 there by ``switch_share`` (0.3 on validation): a larger scale always explains a
nucleus a little better with a blurrier outline, so switching freely cost AP80-AP90 (see the model
card), while textured large nuclei cut into fragments by a too-small estimate switch clearly.
A merge guard (``guard``) keeps the estimated diameter in a region where every object it found
there is whole (agrees with the mask head by IoU >= ``guard``): otherwise a larger scale merges a
found nucleus with a touching one (dim or missed at the estimated diameter) into one object.
On validation 0.9 helped (mean AP50-90 +0.003); 0.6-0.85 also kept textured large nuclei in
fragments, whose pieces agree with the head by 0.7-0.88 (see the model card).
An object belongs to the region holding its mask's first pixel.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from app.pipelines.kaizen.outputs import KaizenObject


@dataclass
class ScaleResult:
    """Objects found at one diameter, on the input grid (object images in input units)."""

    diameter: float
    objects: list[KaizenObject]


def parse_scales(text: str) -> tuple[float, ...]:
    """'0.7 1 1.4' -> (0.7, 1.0, 1.4): positive factors of the estimated diameter, sorted, duplicates dropped."""
    values = sorted({float(v) for v in text.replace(",", " ").split()})
    if not values or values[0] <= 0:
        raise ValueError(f"scales must be positive numbers, not {text!r}")
    return tuple(values)


def internal_image(shape: tuple[int, int], objects: list[KaizenObject]) -> np.ndarray:
    """Sum of the object images (input units): the internal picture of one scale."""
    total = np.zeros(shape, np.float32)
    for obj in objects:
        y, x = obj.offset
        h, w = obj.image.shape
        total[y:y + h, x:x + w] += obj.image[: shape[0] - y, : shape[1] - x]
    return total


def _paint(shape: tuple[int, int], objects: list[KaizenObject]) -> np.ndarray:
    canvas = np.zeros(shape, bool)
    for obj in objects:
        y, x = obj.offset
        h, w = obj.mask.shape
        canvas[y:y + h, x:x + w] |= obj.mask[: shape[0] - y, : shape[1] - x]
    return canvas


def _anchor(obj: KaizenObject) -> tuple[int, int]:
    ys, xs = np.nonzero(obj.mask)
    return int(obj.offset[0] + ys[0]), int(obj.offset[1] + xs[0])


def _whole_objects(objects: list[KaizenObject], regions: np.ndarray, n: int, guard: float) -> np.ndarray:
    """Per region (0..n): True where ``objects`` lie and each agrees with the mask head by >= ``guard``."""
    count = np.bincount(regions, minlength=n + 1)
    weak = np.bincount(regions, weights=np.array([o.head_agreement < guard for o in objects], float), minlength=n + 1)
    return (count >= 1) & (weak == 0)


def merge_scales(target: np.ndarray, results: list[ScaleResult], object_cost: float,
                 margin: int, base: float | None = None,
                 switch_share: float = 0.0, guard: float = 0.0) -> tuple[list[KaizenObject], list[float]]:
    """Per region, the objects of the scale with the lowest L1 + ``object_cost`` x objects; and each kept object's diameter.

    ``target``: the input in the object images' units (background at 0); ``object_cost`` in the
    same units times pixels; ``margin``: pixels the union of masks is grown by before regions are cut.
    ``guard`` > 0: a region does not switch from ``base`` to a larger diameter where every object the
    base scale found there (one at least) agrees with the mask head by at least ``guard`` (IoU).
    """
    shape = target.shape
    usable = [r for r in results if r.objects]
    if not usable:
        return [], []
    if len(usable) == 1:
        return list(usable[0].objects), [usable[0].diameter] * len(usable[0].objects)
    union = np.zeros(shape, bool)
    for r in usable:
        union |= _paint(shape, r.objects)
    if margin > 0:
        union = ndi.binary_dilation(union, iterations=margin)
    regions, n = ndi.label(union)
    index = np.arange(1, n + 1)
    costs = np.zeros((len(usable), n + 1))
    owned: list[np.ndarray] = []
    for k, r in enumerate(usable):
        error = np.abs(target - internal_image(shape, r.objects))
        costs[k, 1:] = ndi.sum(error, regions, index)
        where = np.array([regions[_anchor(o)] for o in r.objects], np.int64)
        costs[k] += object_cost * np.bincount(where, minlength=n + 1)
        owned.append(where)
    # ties (equal cost) go to the larger diameter: fewer, whole objects
    order = np.argsort([-r.diameter for r in usable], kind="stable")
    best = order[np.argmin(costs[order], axis=0)]
    if base is not None and switch_share > 0:
        # another scale replaces the estimated one only where it explains the region clearly better
        home = int(np.argmin([abs(r.diameter - base) for r in usable]))
        clearly = costs[best, np.arange(n + 1)] < (1.0 - switch_share) * costs[home]
        best = np.where(clearly, best, home)
        if guard > 0:
            larger = np.array([r.diameter > usable[home].diameter for r in usable])[best]
            best = np.where(larger & _whole_objects(usable[home].objects, owned[home], n, guard), home, best)
    kept: list[KaizenObject] = []
    diameters: list[float] = []
    for k, r in enumerate(usable):
        for obj, region in zip(r.objects, owned[k]):
            if best[region] == k:
                kept.append(obj)
                diameters.append(r.diameter)
    return kept, diameters


__all__ = ["ScaleResult", "parse_scales", "merge_scales", "internal_image"]
