"""Image groups, objects per true nucleus and pictures of the worst images, for bench/kaizen.py.

Groups are defined from the truth labels so that every method is scored on the same images:
size by the median true nucleus area (small < 250 px, medium 250-1000, large >= 1000), dense when
true nuclei cover >= 25% of the image, tissue-like when > 25% of the above-Otsu pixels lie
outside every true nucleus (diffuse, dim or out-of-focus signal that is not a nucleus).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

SMALL_AREA = 250
LARGE_AREA = 1000
LARGE_MAX = 8000
DENSE_COVER = 0.25
TISSUE_OUTSIDE = 0.25
GROUPS = ("small", "medium", "large", "dense", "sparse", "tissue-like")


def image_groups(gray: np.ndarray, truth: np.ndarray) -> tuple[str, ...]:
    """The groups one validation image belongs to (one size group, dense or sparse, maybe tissue-like)."""
    from skimage import filters

    areas = np.bincount(truth.ravel().astype(np.int64))[1:]
    areas = areas[areas > 0]
    median = float(np.median(areas)) if areas.size else 0.0
    groups = ["small" if median < SMALL_AREA else "large" if median >= LARGE_AREA else "medium"]
    groups.append("dense" if (truth > 0).mean() >= DENSE_COVER else "sparse")
    smooth = gray.astype(np.float32)
    above = smooth > filters.threshold_otsu(smooth) if np.ptp(smooth) > 0 else np.zeros(gray.shape, bool)
    if above.any() and (above & (truth == 0)).sum() / above.sum() > TISSUE_OUTSIDE:
        groups.append("tissue-like")
    return tuple(groups)


def owners(truth: np.ndarray, masks: list[tuple[tuple[int, int], np.ndarray]]) -> np.ndarray:
    """For each predicted object (offset, mask): the true label holding most of its pixels (0 = background)."""
    result = np.zeros(len(masks), np.int64)
    for i, ((y, x), mask) in enumerate(masks):
        under = truth[y:y + mask.shape[0], x:x + mask.shape[1]][mask[: truth.shape[0] - y, : truth.shape[1] - x]]
        if under.size:
            result[i] = np.bincount(under.ravel().astype(np.int64)).argmax()
    return result


def masks_of_labels(labels: np.ndarray) -> list[tuple[tuple[int, int], np.ndarray]]:
    """(offset, mask crop) per label of a label image (for methods that give a partition)."""
    from scipy import ndimage as ndi

    out = []
    for i, box in enumerate(ndi.find_objects(labels), 1):
        if box is not None:
            out.append(((box[0].start, box[1].start), labels[box] == i))
    return out


def per_nucleus_counts(truth: np.ndarray, masks: list[tuple[tuple[int, int], np.ndarray]]) -> dict[str, np.ndarray]:
    """Objects per true nucleus (objects whose majority lies in it), with the nucleus areas, and background objects."""
    who = owners(truth, masks)
    n = int(truth.max())
    counts = np.bincount(who, minlength=n + 1)
    areas = np.bincount(truth.ravel().astype(np.int64), minlength=n + 1)
    present = np.nonzero(areas[1:])[0] + 1
    return {"counts": counts[present], "areas": areas[present], "background": np.array([counts[0]])}


def large_nuclei_summary(records: list[dict[str, np.ndarray]]) -> tuple[float, float, int]:
    """(median, mean) objects per true nucleus over nuclei of LARGE_AREA..LARGE_MAX px, and their number."""
    counts = np.concatenate([r["counts"][(r["areas"] >= LARGE_AREA) & (r["areas"] <= LARGE_MAX)] for r in records]
                            or [np.zeros(0)])
    if counts.size == 0:
        return float("nan"), float("nan"), 0
    return float(np.median(counts)), float(np.mean(counts)), int(counts.size)


def draw_worst(folder: Path, items: list[tuple[str, float, np.ndarray, np.ndarray, np.ndarray]]) -> list[Path]:
    """One PNG per (name, score, gray, truth, predicted labels): the image beside it with truth outlines
    (green) and the prediction's outlines (magenta); the file name carries the score."""
    from PIL import Image
    from skimage import segmentation

    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, score, gray, truth, pred in items:
        lo, hi = np.percentile(gray, (1, 99.8))
        base = np.clip((gray - lo) / max(hi - lo, 1e-6), 0, 1)
        rgb = np.dstack([base] * 3)
        over = rgb.copy()
        over[segmentation.find_boundaries(truth, mode="inner")] = (0.1, 1.0, 0.1)
        over[segmentation.find_boundaries(pred, mode="inner")] = (1.0, 0.1, 1.0)
        gap = np.ones((rgb.shape[0], 8, 3))
        picture = (255 * np.concatenate([rgb, gap, over], axis=1)).astype(np.uint8)
        path = folder / f"{name}_ap50-{score:.2f}_true{len(np.unique(truth)) - 1}_pred{len(np.unique(pred)) - 1}.png"
        Image.fromarray(picture).save(path)
        written.append(path)
    return written
