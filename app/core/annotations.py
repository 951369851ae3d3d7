"""Annotated objects in memory and their files: COCO JSON, QuPath GeoJSON, label images, RLE.

Coordinates
-----------
Polygons are (K, 2) float arrays of (x, y) vertices in pixel coordinates of the whole image or
section, where pixel (row r, column c) covers [c, c + 1) x [r, r + 1) (its centre is
(c + 0.5, r + 0.5)).  This is the convention of COCO, QuPath and our boxes (x0, y0, x1, y1 with
x1/y1 exclusive), so a polygon traced around a mask has the mask's exact bounding box.  Rings are
stored open (last vertex != first); GeoJSON's closing vertex is dropped on import and added on
export.

Shapes
------
An object's region is the union of its ``polygons`` (exterior rings) minus the union of its
``holes`` (interior rings).  A part lying inside another part's hole (an island in a lake) is lost
by that rule; such objects are rare in microscopy and keep their exact shape when a ``mask`` is set.
A ``mask`` (bool array cropped to the object, placed at ``mask_offset`` = (y0, x0)) takes precedence
over polygons when rendering.

RLE is COCO's (column-major run lengths, starting with a background run); it is implemented here in
numpy so the app runs without pycocotools, which the tests use as a cross-check.
"""

from __future__ import annotations

import json
import logging
import math
import os
import uuid
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage as ndi
from skimage import draw, measure

from app.core.atomic import atomic_write_json
from app.core.errors import AnnotationError

log = logging.getLogger(__name__)

Box = tuple[float, float, float, float]
UNCLASSIFIED = "Unclassified"  # category of QuPath objects without a classification
_QUPATH_OLD_TYPES = {"PathAnnotationObject": "annotation", "PathDetectionObject": "detection",
                     "PathCellObject": "cell", "PathTileObject": "tile"}
_COCO_KEYS = {"id", "image_id", "category_id", "segmentation", "bbox", "area", "iscrowd", "score"}


# --------------------------------------------------------------------------------------------
# in-memory objects
# --------------------------------------------------------------------------------------------


def _ring(points: Any) -> np.ndarray:
    """An (x, y) ring as a (K, 2) float array (K >= 3), without a repeated closing vertex."""
    ring = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    if len(ring) > 3 and np.array_equal(ring[0], ring[-1]):
        ring = ring[:-1]
    if len(ring) < 3:
        raise ValueError(f"a polygon ring needs at least 3 vertices, got {len(ring)}")
    return ring


def _ring_area(ring: np.ndarray) -> float:
    """Unsigned area of a ring (shoelace)."""
    x, y = ring[:, 0], ring[:, 1]
    return abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))) / 2.0


def polygons_to_box(polygons: Sequence[np.ndarray]) -> Box:
    """Bounding box (x0, y0, x1, y1) of a set of rings."""
    points = np.concatenate([np.asarray(p, dtype=np.float64).reshape(-1, 2) for p in polygons])
    x0, y0 = points.min(axis=0)
    x1, y1 = points.max(axis=0)
    return (float(x0), float(y0), float(x1), float(y1))


def mask_to_box(mask: np.ndarray, offset: tuple[int, int] = (0, 0)) -> Box | None:
    """Tight box (x0, y0, x1, y1), end exclusive, of a bool mask placed at offset (y0, x0); None if empty."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return None
    y0, x0 = offset
    return (float(x0 + cols[0]), float(y0 + rows[0]), float(x0 + cols[-1] + 1), float(y0 + rows[-1] + 1))


@dataclass(eq=False)
class AnnotatedObject:
    """One annotated or predicted object: class name, box, outline and/or mask, score, extra attributes.

    ``box`` is computed from the mask or polygons when not given; an object needs at least one of
    box, polygons or mask.  ``attributes`` carries what files hold beyond that (COCO ``iscrowd``,
    QuPath ``object_type``, ``measurements``, ``color``, ``qupath_id``, ...).
    """

    id: int
    category: str
    box: Box | None = None
    polygons: list[np.ndarray] = field(default_factory=list)
    holes: list[np.ndarray] = field(default_factory=list)
    mask: np.ndarray | None = None
    mask_offset: tuple[int, int] = (0, 0)
    score: float | None = None
    attributes: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.polygons = [_ring(p) for p in self.polygons]
        self.holes = [_ring(p) for p in self.holes]
        if self.mask is not None:
            self.mask = np.asarray(self.mask, dtype=bool)
            if self.mask.ndim != 2:
                raise ValueError(f"an object mask must be 2-D, got shape {self.mask.shape}")
            self.mask_offset = (int(self.mask_offset[0]), int(self.mask_offset[1]))
        if self.box is None:
            if self.mask is not None:
                self.box = mask_to_box(self.mask, self.mask_offset)
            elif self.polygons:
                self.box = polygons_to_box(self.polygons)
            if self.box is None:
                raise ValueError(f"object {self.id} has no box, polygon or non-empty mask")
        self.box = tuple(float(v) for v in self.box)  # type: ignore[assignment]
        if self.score is not None:
            self.score = float(self.score)

    @property
    def area(self) -> float:
        """Area in pixels: mask pixel count, else polygon area (exteriors minus holes), else box area."""
        if self.mask is not None:
            return float(self.mask.sum())
        if self.polygons:
            return sum(map(_ring_area, self.polygons)) - sum(map(_ring_area, self.holes))
        x0, y0, x1, y1 = self.box  # type: ignore[misc]
        return (x1 - x0) * (y1 - y0)

    @property
    def has_shape(self) -> bool:
        """True when the object has an outline or a mask, not only a box."""
        return self.mask is not None or bool(self.polygons)

    def crop_mask(self) -> tuple[np.ndarray, tuple[int, int]]:
        """The object's mask cropped to its box, with its offset (y0, x0); a box-only object fills its box."""
        if self.mask is not None:
            return self.mask, self.mask_offset
        x0, y0, x1, y1 = self.box  # type: ignore[misc]
        ox, oy = math.floor(x0), math.floor(y0)
        shape = (max(math.ceil(y1) - oy, 0), max(math.ceil(x1) - ox, 0))
        if not self.polygons:
            return np.ones(shape, bool), (oy, ox)
        shift = np.array([ox, oy], dtype=np.float64)
        return polygon_to_mask([p - shift for p in self.polygons], shape, [h - shift for h in self.holes]), (oy, ox)

    def to_mask(self, shape: tuple[int, int]) -> np.ndarray:
        """The object as a bool mask of a whole image of ``shape`` (parts outside are clipped)."""
        out = np.zeros(shape, bool)
        crop, offset = self.crop_mask()
        dst, src = _paste_slices(crop.shape, offset, shape)
        out[dst] = crop[src]
        return out


def _paste_slices(crop_shape: tuple[int, int], offset: tuple[int, int],
                  shape: tuple[int, int]) -> tuple[tuple[slice, slice], tuple[slice, slice]]:
    """Slices placing a crop at offset (y0, x0) into an image of ``shape``, clipped to both."""
    dst, src = [], []
    for size, off, full in zip(crop_shape, offset, shape):
        a, b = max(off, 0), min(off + size, full)
        b = max(a, b)
        dst.append(slice(a, b))
        src.append(slice(a - off, b - off))
    return (dst[0], dst[1]), (src[0], src[1])


@dataclass(eq=False)
class ImageAnnotations:
    """All objects annotated on one image; ``source`` is the file they came from (for messages).

    ``height``/``width`` may be None when the file does not say (GeoJSON).
    """

    file_name: str
    height: int | None
    width: int | None
    objects: list[AnnotatedObject] = field(default_factory=list)
    image_id: int | None = None
    source: str | None = None

    @property
    def shape(self) -> tuple[int, int]:
        """(height, width); an error when unknown."""
        if self.height is None or self.width is None:
            raise AnnotationError(f"{self.source or self.file_name}: image size unknown; give height and width")
        return (self.height, self.width)

    def categories(self) -> list[str]:
        """Sorted class names used by the objects."""
        return sorted({o.category for o in self.objects})


def check_categories(annotations: ImageAnnotations | Iterable[ImageAnnotations], allowed: Iterable[str]) -> None:
    """Raise AnnotationError naming the file(s) and every class not in ``allowed`` (with object counts)."""
    if isinstance(annotations, ImageAnnotations):
        annotations = [annotations]
    allowed = list(allowed)
    allowed_set = set(allowed)
    unknown: dict[str, Counter] = {}
    for image in annotations:
        where = image.source or image.file_name
        for obj in image.objects:
            if obj.category not in allowed_set:
                unknown.setdefault(where, Counter())[obj.category] += 1
    if unknown:
        parts = []
        for where, counts in unknown.items():
            names = ", ".join(f"'{name}' ({n} object{'s' * (n != 1)})" for name, n in sorted(counts.items()))
            parts.append(f"{where}: unknown classes {names}")
        raise AnnotationError("; ".join(parts) + f". Allowed: {', '.join(allowed)}")


# --------------------------------------------------------------------------------------------
# masks <-> polygons <-> labels
# --------------------------------------------------------------------------------------------


def polygon_to_mask(polygons: Sequence[np.ndarray], shape: tuple[int, int],
                    holes: Sequence[np.ndarray] = ()) -> np.ndarray:
    """Rasterise rings into a bool mask: a pixel is inside when its centre is (union of polygons minus holes)."""
    mask = np.zeros(shape, bool)
    for rings, value in ((polygons, True), (holes, False)):
        for ring in rings:
            ring = np.asarray(ring, dtype=np.float64).reshape(-1, 2)
            rr, cc = draw.polygon(ring[:, 1] - 0.5, ring[:, 0] - 0.5, shape=shape)
            mask[rr, cc] = value
    return mask


def mask_to_rings(mask: np.ndarray, tolerance: float = 0.25,
                  offset: tuple[int, int] = (0, 0)) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Outline a bool mask: (exterior rings, hole rings) in (x, y) image coordinates.

    Contours run through the midpoints between inside and outside pixels
    (skimage.measure.find_contours at 0.5, diagonal neighbours joined) and are simplified with
    Douglas-Peucker at ``tolerance`` pixels (0 = no simplification).  ``offset`` (y0, x0) places a
    cropped mask in the image.
    """
    padded = np.pad(np.asarray(mask, dtype=bool), 1).astype(np.float32)
    exteriors, holes = [], []
    shift = np.array([offset[1] - 0.5, offset[0] - 0.5])  # -1 for the padding, +0.5 for pixel centres
    for contour in measure.find_contours(padded, 0.5, fully_connected="high"):
        if tolerance > 0:
            contour = measure.approximate_polygon(contour, tolerance)
        ring = contour[:-1, ::-1] + shift  # (row, col) -> (x, y), drop the closing vertex
        if len(ring) < 3:
            continue
        x, y = ring[:, 0], ring[:, 1]
        signed = float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))
        (exteriors if signed > 0 else holes).append(ring)  # skimage orients holes the other way
    return exteriors, holes


def mask_to_polygons(mask: np.ndarray, tolerance: float = 0.25, offset: tuple[int, int] = (0, 0)) -> list[np.ndarray]:
    """Exterior rings (x, y) of a bool mask (holes dropped, like COCO polygons); see :func:`mask_to_rings`."""
    return mask_to_rings(mask, tolerance, offset)[0]


def labels_to_objects(labels: np.ndarray, category: str = "object", tolerance: float = 0.25,
                      keep_masks: bool = False) -> list[AnnotatedObject]:
    """One object per label of a label image (id = label value), with exact box and traced outline.

    With ``keep_masks`` each object also keeps its cropped mask (exact, larger in memory).
    """
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"labels_to_objects needs a 2-D label image, got shape {labels.shape}")
    objects = []
    for index, slices in enumerate(ndi.find_objects(labels)):
        if slices is None:
            continue
        label = index + 1
        crop = labels[slices] == label
        offset = (slices[0].start, slices[1].start)
        exteriors, holes = mask_to_rings(crop, tolerance, offset)
        box = (float(slices[1].start), float(slices[0].start), float(slices[1].stop), float(slices[0].stop))
        objects.append(AnnotatedObject(id=label, category=category, box=box, polygons=exteriors, holes=holes,
                                       mask=crop if keep_masks else None, mask_offset=offset))
    return objects


def objects_to_labels(objects: Sequence[AnnotatedObject], shape: tuple[int, int],
                      largest_first: bool = True) -> np.ndarray:
    """Paint objects into a label image whose values are the object ids (must be unique and > 0).

    Where objects overlap, the one painted later wins.  By default larger objects are painted first
    so that a small object inside a large one (a nucleus in a cell) stays visible; with
    ``largest_first=False`` the list order decides.  uint16, or uint32 above 65535.
    """
    ids = [int(o.id) for o in objects]
    if any(i <= 0 for i in ids) or len(set(ids)) != len(ids):
        raise ValueError("objects_to_labels needs unique positive object ids")
    dtype = np.uint16 if max(ids, default=0) <= np.iinfo(np.uint16).max else np.uint32
    out = np.zeros(shape, dtype)
    order = sorted(objects, key=lambda o: -o.area) if largest_first else objects
    for obj in order:
        crop, offset = obj.crop_mask()
        dst, src = _paste_slices(crop.shape, offset, shape)
        region = out[dst]
        region[crop[src]] = obj.id
    return out


# --------------------------------------------------------------------------------------------
# COCO run-length encoding
# --------------------------------------------------------------------------------------------


def _crop_to_counts(crop: np.ndarray, offset: tuple[int, int], height: int, width: int) -> list[int]:
    """COCO run lengths (column-major, background first) of a cropped mask in a (height, width) image."""
    ys, xs = np.nonzero(crop)
    ys, xs = ys + offset[0], xs + offset[1]
    inside = (ys >= 0) & (ys < height) & (xs >= 0) & (xs < width)
    lin = np.sort(xs[inside].astype(np.int64) * height + ys[inside])
    if lin.size == 0:
        return [height * width]
    breaks = np.flatnonzero(np.diff(lin) != 1) + 1
    starts = lin[np.r_[0, breaks]]
    ends = lin[np.r_[breaks - 1, lin.size - 1]] + 1
    counts = np.empty(2 * starts.size + 1, np.int64)
    counts[0] = starts[0]
    counts[1::2] = ends - starts
    counts[2:-1:2] = starts[1:] - ends[:-1]
    counts[-1] = height * width - ends[-1]
    return counts[:-1].tolist() if counts[-1] == 0 else counts.tolist()


def _counts_to_crop(counts: Sequence[int], height: int, width: int) -> tuple[np.ndarray, tuple[int, int]] | None:
    """Decode COCO run lengths into a tight cropped mask and its offset (y0, x0); None when empty."""
    counts = np.asarray(counts, dtype=np.int64)
    if (counts.size and counts.min() < 0) or int(counts.sum()) != height * width:
        raise ValueError(f"run lengths sum to {int(counts.sum())}, not {height} x {width} = {height * width}")
    starts = np.cumsum(counts) - counts
    run_starts, run_lengths = starts[1::2], counts[1::2]
    total = int(run_lengths.sum())
    if total == 0:
        return None
    before = np.cumsum(run_lengths) - run_lengths
    lin = np.repeat(run_starts - before, run_lengths) + np.arange(total)
    xs, ys = np.divmod(lin, height)
    y0, x0 = int(ys.min()), int(xs.min())
    crop = np.zeros((int(ys.max()) - y0 + 1, int(xs.max()) - x0 + 1), bool)
    crop[ys - y0, xs - x0] = True
    return crop, (y0, x0)


def rle_encode(mask: np.ndarray) -> dict[str, Any]:
    """Uncompressed COCO RLE ``{"size": [h, w], "counts": [...]}`` of a whole-image bool mask."""
    mask = np.asarray(mask, dtype=bool)
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": _crop_to_counts(mask, (0, 0), *mask.shape)}


def rle_decode(rle: Mapping[str, Any]) -> np.ndarray:
    """Whole-image bool mask from a COCO RLE dict (counts as a list or a compressed string)."""
    height, width = (int(v) for v in rle["size"])
    counts = rle["counts"]
    if isinstance(counts, (str, bytes)):
        counts = rle_counts_from_string(counts)
    out = np.zeros((height, width), bool)
    decoded = _counts_to_crop(counts, height, width)
    if decoded is not None:
        crop, (y0, x0) = decoded
        out[y0:y0 + crop.shape[0], x0:x0 + crop.shape[1]] = crop
    return out


def rle_counts_to_string(counts: Sequence[int]) -> str:
    """COCO's compressed RLE string (pycocotools rleToString: delta-coded, 5 bits per character)."""
    out = []
    counts = [int(c) for c in counts]
    for i, x in enumerate(counts):
        if i > 2:
            x -= counts[i - 2]
        more = True
        while more:
            c = x & 0x1F
            x >>= 5
            more = (x != -1) if (c & 0x10) else (x != 0)
            if more:
                c |= 0x20
            out.append(chr(c + 48))
    return "".join(out)


def rle_counts_from_string(text: str | bytes) -> list[int]:
    """Run lengths from COCO's compressed RLE string (pycocotools rleFrString)."""
    if isinstance(text, bytes):
        text = text.decode("ascii")
    counts: list[int] = []
    p = 0
    while p < len(text):
        x, k, more = 0, 0, True
        while more:
            if p >= len(text):
                raise ValueError("compressed RLE string ends in the middle of a number")
            c = ord(text[p]) - 48
            x |= (c & 0x1F) << (5 * k)
            more = bool(c & 0x20)
            p += 1
            k += 1
            if not more and c & 0x10:
                x |= -1 << (5 * k)
        if len(counts) > 2:
            x += counts[-2]
        counts.append(x)
    return counts


# --------------------------------------------------------------------------------------------
# JSON files
# --------------------------------------------------------------------------------------------


def _load_json(path: str | os.PathLike[str]) -> Any:
    """Parse a JSON file; unreadable or malformed files become an AnnotationError naming the file."""
    try:
        with open(path, "rb") as handle:
            return json.loads(handle.read().decode("utf-8-sig"))
    except FileNotFoundError as error:
        raise AnnotationError(f"{path}: annotation file not found") from error
    except OSError as error:
        raise AnnotationError(f"{path}: cannot read annotation file ({error.strerror or error})") from error
    except UnicodeDecodeError as error:
        raise AnnotationError(f"{path}: not a UTF-8 text file ({error.reason} at byte {error.start})") from error
    except json.JSONDecodeError as error:
        raise AnnotationError(f"{path}: not valid JSON ({error.msg} at line {error.lineno}, "
                              f"column {error.colno})") from error


def _flat_ring(values: Any) -> np.ndarray | None:
    """A COCO flat polygon [x0, y0, x1, y1, ...] as a ring; None for a degenerate one (< 3 vertices)."""
    flat = np.asarray(values, dtype=np.float64).ravel()
    if flat.size % 2:
        raise ValueError(f"a polygon has an odd number of coordinates ({flat.size})")
    return _ring(flat) if flat.size >= 6 else None


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
        decoded = _counts_to_crop(counts, h, w)
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
    return from_coco_dict(_load_json(path), source=str(path))


def coco_category_names(path: str | os.PathLike[str]) -> list[str]:
    """Category names of a COCO file in category-id order."""
    data = _load_json(path)
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
    counts = _crop_to_counts(crop, offset, height, width)
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


# --------------------------------------------------------------------------------------------
# QuPath GeoJSON
# --------------------------------------------------------------------------------------------


def _geojson_polygons(geometry: Mapping[str, Any]) -> list[list[Any]]:
    """Polygons (each [exterior, *holes] coordinate lists) of a GeoJSON geometry; [] for points and lines."""
    kind = geometry.get("type")
    if kind == "Polygon":
        return [geometry["coordinates"]]
    if kind == "MultiPolygon":
        return list(geometry["coordinates"])
    if kind == "GeometryCollection":
        return [p for g in geometry["geometries"] for p in _geojson_polygons(g)]
    if kind in ("Point", "MultiPoint", "LineString", "MultiLineString"):
        return []
    raise ValueError(f"unknown geometry type {kind!r}")


def _qupath_category(properties: Mapping[str, Any]) -> tuple[str, Any]:
    """(class name, colour or None) from QuPath properties (classification dict, or string in old files)."""
    cls = properties.get("classification")
    if cls is None:
        return UNCLASSIFIED, None
    if isinstance(cls, str):
        return cls, None
    if isinstance(cls, Mapping):
        name = cls.get("name") or ": ".join(cls.get("names") or []) or UNCLASSIFIED
        return str(name), cls.get("color", cls.get("colorRGB"))
    raise ValueError(f"classification must be an object or a string, not {type(cls).__name__}")


def _geojson_object(feature: Mapping[str, Any], object_id: int) -> AnnotatedObject | None:
    """One QuPath feature as an AnnotatedObject; None for features without an area (points, lines)."""
    if feature.get("type") != "Feature":
        raise ValueError(f"expected a Feature, got type {feature.get('type')!r}")
    geometry = feature.get("geometry")
    properties = feature.get("properties") or {}
    if geometry is None:
        return None
    exteriors, holes = [], []
    for polygon in _geojson_polygons(geometry):
        rings = [np.asarray(r, dtype=np.float64)[:, :2] for r in polygon]
        if not rings or len(_open(rings[0])) < 3:
            continue
        exteriors.append(rings[0])
        holes.extend(r for r in rings[1:] if len(_open(r)) >= 3)
    if not exteriors:
        log.warning("skipping a %s feature without an area", geometry.get("type"))
        return None
    category, color = _qupath_category(properties)
    attributes: dict[str, Any] = {}
    object_type = properties.get("objectType") or _QUPATH_OLD_TYPES.get(str(feature.get("id")))
    if object_type:
        attributes["object_type"] = object_type
    if feature.get("id") and str(feature["id"]) not in _QUPATH_OLD_TYPES:
        attributes["qupath_id"] = str(feature["id"])
    for key in ("name", "isLocked"):
        if key in properties:
            attributes[key] = properties[key]
    if color is not None:
        attributes["color"] = color
    measurements = properties.get("measurements")
    if isinstance(measurements, list):  # QuPath 0.2: [{"name": ..., "value": ...}]
        measurements = {m["name"]: m.get("value") for m in measurements}
    if measurements:
        attributes["measurements"] = dict(measurements)
    if "nucleusGeometry" in feature:
        attributes["nucleus_geometry"] = feature["nucleusGeometry"]
    score = None
    for key in ("score", "Detection probability"):
        if measurements and isinstance(measurements.get(key), (int, float)):
            score = measurements[key]
            break
    return AnnotatedObject(id=object_id, category=category, polygons=exteriors, holes=holes,
                           score=score, attributes=attributes)


def _open(ring: np.ndarray) -> np.ndarray:
    """A ring without its closing vertex."""
    return ring[:-1] if len(ring) > 1 and np.array_equal(ring[0], ring[-1]) else ring


def _features(data: Any) -> list[Any]:
    """The features of a FeatureCollection, a plain list of Features, or a single Feature."""
    if isinstance(data, list):
        return data
    if isinstance(data, Mapping):
        if data.get("type") == "FeatureCollection":
            if not isinstance(data.get("features"), list):
                raise ValueError("FeatureCollection without a 'features' list")
            return data["features"]
        if data.get("type") == "Feature":
            return [data]
        raise ValueError(f"expected a FeatureCollection or Feature, got type {data.get('type')!r}")
    raise ValueError(f"expected GeoJSON features, got a {type(data).__name__}")


def read_geojson(path: str | os.PathLike[str], image_file: str | None = None, height: int | None = None,
                 width: int | None = None) -> ImageAnnotations:
    """Read QuPath's "Export objects as GeoJSON" (annotations, detections, cells) for one image.

    Coordinates are full-resolution pixels.  Polygons and MultiPolygons keep their holes; points
    and lines are skipped (logged).  Unclassified objects get category ``UNCLASSIFIED``.  GeoJSON
    does not store the image size, so ``height``/``width`` stay None unless given.
    """
    data = _load_json(path)
    objects = []
    try:
        features = _features(data)
    except ValueError as error:
        raise AnnotationError(f"{path}: {error}") from error
    for index, feature in enumerate(features):
        try:
            obj = _geojson_object(feature, len(objects) + 1)
        except (KeyError, TypeError, ValueError, IndexError, AttributeError) as error:
            raise AnnotationError(f"{path}: feature {index}: {error}") from error
        if obj is not None:
            objects.append(obj)
    name = image_file if image_file is not None else Path(path).stem
    return ImageAnnotations(name, height, width, objects, source=str(path))


def _closed(ring: np.ndarray) -> list[list[float]]:
    """A ring as a closed GeoJSON coordinate list."""
    return np.vstack([ring, ring[:1]]).tolist()


def _geojson_geometry(obj: AnnotatedObject) -> dict[str, Any]:
    """GeoJSON Polygon or MultiPolygon of an object, each hole under the smallest exterior holding it."""
    exteriors, holes = obj.polygons, obj.holes
    if obj.mask is not None or not exteriors:
        if obj.has_shape:
            crop, offset = obj.crop_mask()
            exteriors, holes = mask_to_rings(crop, 0.25, offset)
        else:
            x0, y0, x1, y1 = obj.box  # type: ignore[misc]
            exteriors, holes = [np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]])], []
    order = sorted(range(len(exteriors)), key=lambda i: _ring_area(exteriors[i]))
    parts: list[list[list[list[float]]]] = [[_closed(e)] for e in exteriors]
    for hole in holes:
        for i in order:
            if measure.points_in_poly(hole[:1], exteriors[i])[0]:
                parts[i].append(_closed(hole))
                break
    if len(parts) == 1:
        return {"type": "Polygon", "coordinates": parts[0]}
    return {"type": "MultiPolygon", "coordinates": parts}


def to_geojson_dict(objects: Iterable[AnnotatedObject], object_type: str = "annotation") -> dict[str, Any]:
    """A QuPath-readable FeatureCollection; ``object_type`` ("annotation" or "detection") unless an
    object's attributes say otherwise.  Scores go into measurements as "score"."""
    features = []
    for obj in objects:
        a = obj.attributes
        properties: dict[str, Any] = {"objectType": a.get("object_type", object_type)}
        if obj.category != UNCLASSIFIED:
            cls: dict[str, Any] = {"name": obj.category}
            if a.get("color") is not None:
                cls["color"] = a["color"]
            properties["classification"] = cls
        for key in ("name", "isLocked"):
            if key in a:
                properties[key] = a[key]
        measurements = dict(a.get("measurements") or {})
        if obj.score is not None:
            measurements["score"] = obj.score
        if measurements:
            properties["measurements"] = measurements
        features.append({"type": "Feature", "id": a.get("qupath_id") or str(uuid.uuid4()),
                         "geometry": _geojson_geometry(obj), "properties": properties})
    return {"type": "FeatureCollection", "features": features}


def write_geojson(path: str | os.PathLike[str], annotations: ImageAnnotations | Iterable[AnnotatedObject],
                  object_type: str = "annotation") -> Path:
    """Write objects as GeoJSON that QuPath imports (File > Import objects), atomically."""
    objects = annotations.objects if isinstance(annotations, ImageAnnotations) else annotations
    return atomic_write_json(path, to_geojson_dict(objects, object_type), indent=None)
