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


def compare(methods: dict[str, object], data, worst_dir: Path | None = None, worst_of: str | None = None,
            keys: tuple[str, ...] = ("AP50", "AP60", "AP70", "AP80", "AP90")) -> None:
    """Print each method's AP per image group and pooled, objects per true nucleus and s/image; draw the worst 10.

    ``methods``: name -> callable(image) returning (labels, [(offset, mask), ...]) or, for a peer read
    from files, (labels, masks, its own seconds).  ``worst_of`` names
    the method whose 10 lowest-AP50 images are drawn into ``worst_dir``.
    """
    import time

    from app.core.metrics.instances import instance_scores
    from app.pipelines.kaizen.sizing import as_gray

    groups = {name: image_groups(as_gray(image), truth) for name, image, truth in data}
    counts = {g: sum(g in v for v in groups.values()) for g in GROUPS}
    print("groups (images): " + ", ".join(f"{g} {counts[g]}" for g in GROUPS))
    rows = []
    for method, fn in methods.items():
        pairs, records, seconds, per_image = {}, [], [], []
        for name, image, truth in data:
            started = time.perf_counter()
            labels, masks, *own = fn(image)  # a peer read from files reports its own inference seconds
            seconds.append(own[0] if own else time.perf_counter() - started)
            pairs[name] = (truth, labels)
            records.append((name, per_nucleus_counts(truth, masks)))
            per_image.append((instance_scores([(truth, labels)])["AP50"], name, labels))
        for group in ("all", *GROUPS):
            names = [n for n in pairs if group == "all" or group in groups[n]]
            if not names:
                continue
            s = instance_scores([pairs[n] for n in names])
            recs = [r for n, r in records if n in names]
            per = np.concatenate([r["counts"] for r in recs])
            bg = int(sum(int(r["background"][0]) for r in recs))
            rows.append((method, group, len(names), s, float(np.mean(per)), bg))
        med, mean, n = large_nuclei_summary([r for _, r in records])
        print(f"{method}: {np.mean(seconds):.3f} s/image; true nuclei of {LARGE_AREA}-{LARGE_MAX} px ({n}): "
              f"objects per nucleus median {med:.2f}, mean {mean:.2f}")
        if worst_dir is not None and method == worst_of:
            per_image.sort(key=lambda t: t[0])
            items = []
            for score, name, labels in per_image[:10]:
                image, truth = next((im, t) for n, im, t in data if n == name)
                items.append((name, score, as_gray(image), truth, labels))
            for path in draw_worst(worst_dir, items):
                print(f"  worst: {path}")
    print("\n| group | images | method | " + " | ".join(keys) + " | objects per true nucleus (mean) | "
          "objects on background |")
    print("|---|---|---|" + "---|" * (len(keys) + 2))
    for group in ("all", *GROUPS):
        for method, g, n, s, per, bg in rows:
            if g == group:
                print(f"| {g} | {n} | {method} | " + " | ".join(f"{s[k]:.3f}" for k in keys) + f" | {per:.2f} | {bg} |")


def peer_method(folder: Path, data):
    """A method for :func:`compare` that reads a peer's saved labels (``folder/pred/NAME.tif``) in data order.

    Its time is the peer's own measured seconds per image (``folder/peer.json``), not the file read.
    """
    import json

    import tifffile

    info = json.loads((folder / "peer.json").read_text())
    missing = [name for name, _, _ in data if not (folder / "pred" / f"{name}.tif").exists()]
    if missing:
        raise SystemExit(f"{folder}: no prediction for {len(missing)} validation images (e.g. {missing[0]})")
    names = iter([name for name, _, _ in data])

    def fn(image):
        name = next(names)
        labels = tifffile.imread(folder / "pred" / f"{name}.tif")
        return labels, masks_of_labels(labels), float(info["seconds_per_image"][name])

    print(f"peer {folder}: {info['method']}; trained {info['steps']} steps in {info['train_s']} s "
          f"(budget {info['budget_s']} s)")
    return fn
