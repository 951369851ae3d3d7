"""COCO JSON files: read into and write from :class:`~app.core.annotations.model.ImageAnnotations`."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from app.core.atomic import atomic_write_json
from app.core.errors import AnnotationError
from app.core.annotations.geometry import as_ring
from app.core.annotations.model import AnnotatedObject, ImageAnnotations, check_categories, load_json
from app.core.annotations.rle import counts_to_crop, crop_to_counts, rle_counts_from_string, rle_counts_to_string


_COCO_KEYS = {"id", "image_id", "category_id", "segmentation", "bbox", "area", "iscrowd", "score"}


def _flat_ring(values: Any) -> np.ndarray | None:
    """A COCO flat polygon [x0, y0, x1, y1, ...] as a ring; None for a degenerate one (< 3 vertices)."""
    flat = np.asarray(values, dtype=np.float64).ravel()
    if flat.size % 2:
        raise ValueError(f"a polygon has an odd number of coordinates ({flat.size})")
    return as_ring(flat) if flat.size >= 6 else None


def _coco_object(ann: Mapping[str, Any], categories: Mapping[int, str], height: int, width: int) -> AnnotatedObject:
    """One COCO annotation as an AnnotatedObject (ValueError/KeyError/TypeError for malformed input)."""
    if ann["category_id"] not in categories:
        raise ValueError(f"unknown category_id {ann['category_id']}")
    polygons: list[np.ndarray] = []
    mask, offset = None, (0, 0)
    seg = ann.get("segmentation")
    if isinstance(seg, list):
        polygons = [r for r in (_flat_ring(p) for p in seg) if r is not None]
    elif isinstance(seg, Mapping):
        h, w = (int(v) for v in seg["size"])
        if (h, w) != (height, width):
            raise ValueError(f"RLE size {h} x {w} differs from the image's {height} x {width}")
        counts = seg["counts"]
        counts = rle_counts_from_string(counts) if isinstance(counts, (str, bytes)) else counts
        decoded = counts_to_crop(counts, h, w)
        if decoded is not None:
            mask, offset = decoded
    elif seg is not None:
        raise ValueError(f"segmentation must be a list of polygons or an RLE dict, not {type(seg).__name__}")
    box = None
    if ann.get("bbox") is not None:
        x, y, w, h = (float(v) for v in ann["bbox"])
        if not all(math.isfinite(v) for v in (x, y, w, h)) or w < 0 or h < 0:
            raise ValueError(f"bbox {ann['bbox']} is not [x, y, width, height] with a width and height of 0 or more")
        box = (x, y, x + w, y + h)
    attributes = {k: v for k, v in ann.items() if k not in _COCO_KEYS}
    if ann.get("iscrowd"):
        attributes["iscrowd"] = 1
    return AnnotatedObject(id=int(ann["id"]), category=categories[ann["category_id"]], box=box,
                           polygons=polygons, mask=mask, mask_offset=offset, score=ann.get("score"),
                           attributes=attributes)


def from_coco_dict(data: Any, source: str = "<COCO data>") -> list[ImageAnnotations]:
    """Images with their objects from a parsed COCO dict (images, annotations, categories)."""
    if not isinstance(data, Mapping):
        raise AnnotationError(f"{source}: a COCO file must hold a JSON object, not a {type(data).__name__}")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise AnnotationError(f"{source}: COCO key '{key}' is missing or not a list")
    try:
        categories = {c["id"]: str(c["name"]) for c in data["categories"]}
        images = {im["id"]: ImageAnnotations(str(im["file_name"]), int(im["height"]), int(im["width"]),
                                             image_id=im["id"], source=source) for im in data["images"]}
    except (KeyError, TypeError, ValueError) as error:
        raise AnnotationError(f"{source}: malformed COCO image or category entry ({error!r})") from error
    for ann in data["annotations"]:
        ann_id = ann.get("id", "?") if isinstance(ann, Mapping) else "?"
        try:
            image = images[ann["image_id"]]
        except (KeyError, TypeError) as error:
            raise AnnotationError(f"{source}: annotation {ann_id} names no known image_id") from error
        try:
            image.objects.append(_coco_object(ann, categories, image.height, image.width))  # type: ignore[arg-type]
        except (KeyError, TypeError, ValueError) as error:
            raise AnnotationError(f"{source}: annotation {ann_id}: {error}") from error
    return list(images.values())


def read_coco(path: str | os.PathLike[str]) -> list[ImageAnnotations]:
    """Read a COCO instances JSON: polygons, RLE (list or compressed string), bbox, iscrowd, score."""
    return from_coco_dict(load_json(path), source=str(path))


def coco_category_names(path: str | os.PathLike[str]) -> list[str]:
    """Category names of a COCO file in category-id order."""
    data = load_json(path)
    try:
        return [str(c["name"]) for c in sorted(data["categories"], key=lambda c: c["id"])]
    except (KeyError, TypeError) as error:
        raise AnnotationError(f"{path}: malformed COCO categories ({error!r})") from error


def _coco_segmentation(obj: AnnotatedObject, height: int, width: int) -> Any:
    """COCO segmentation of an object: polygons when they say it all, else RLE (uncompressed for crowds)."""
    crowd = bool(obj.attributes.get("iscrowd"))
    if obj.polygons and not obj.holes and obj.mask is None and not crowd:
        return [ring.ravel().tolist() for ring in obj.polygons]
    crop, offset = obj.crop_mask()
    counts = crop_to_counts(crop, offset, height, width)
    return {"size": [height, width], "counts": counts if crowd else rle_counts_to_string(counts)}


def to_coco_dict(images: Sequence[ImageAnnotations], categories: Sequence[str] | None = None) -> dict[str, Any]:
    """A COCO dict of the images and objects; category ids are 1.. in ``categories`` order
    (default: sorted names used).  Box-only objects get no segmentation."""
    names = list(categories) if categories is not None else sorted({o.category for im in images for o in im.objects})
    cat_ids = {name: i + 1 for i, name in enumerate(names)}
    check_categories(images, names)
    image_ids = [im.image_id for im in images]
    if any(i is None for i in image_ids) or len(set(image_ids)) != len(image_ids):
        image_ids = list(range(1, len(images) + 1))
    out_images, out_anns, next_id = [], [], 1
    for im, image_id in zip(images, image_ids):
        height, width = im.shape
        out_images.append({"id": image_id, "file_name": im.file_name, "height": height, "width": width})
        for obj in im.objects:
            x0, y0, x1, y1 = obj.box  # type: ignore[misc]
            ann = {k: v for k, v in obj.attributes.items() if k not in _COCO_KEYS}
            ann.update(id=next_id, image_id=image_id, category_id=cat_ids[obj.category],
                       bbox=[x0, y0, x1 - x0, y1 - y0], area=obj.area,
                       iscrowd=int(bool(obj.attributes.get("iscrowd"))))
            if obj.has_shape:
                ann["segmentation"] = _coco_segmentation(obj, height, width)
            if obj.score is not None:
                ann["score"] = obj.score
            out_anns.append(ann)
            next_id += 1
    return {"images": out_images, "annotations": out_anns,
            "categories": [{"id": i, "name": n, "supercategory": ""} for n, i in cat_ids.items()]}


def write_coco(path: str | os.PathLike[str], images: Sequence[ImageAnnotations],
               categories: Sequence[str] | None = None) -> Path:
    """Write images and objects as a COCO JSON file, atomically.  Annotation ids are renumbered 1.."""
    return atomic_write_json(path, to_coco_dict(images, categories), indent=None)
