"""Annotated objects in memory: one object (polygons, holes, mask, box), one image's objects, label images."""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from app.core.errors import AnnotationError
from app.core.annotations.geometry import Box, as_ring, mask_to_box, mask_to_rings, paste_slices, polygon_to_mask, polygons_to_box, ring_area


UNCLASSIFIED = "Unclassified"  # category of QuPath objects without a classification


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
        self.polygons = [as_ring(p) for p in self.polygons]
        self.holes = [as_ring(p) for p in self.holes]
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
            return sum(map(ring_area, self.polygons)) - sum(map(ring_area, self.holes))
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
        dst, src = paste_slices(crop.shape, offset, shape)
        out[dst] = crop[src]
        return out


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
        dst, src = paste_slices(crop.shape, offset, shape)
        region = out[dst]
        region[crop[src]] = obj.id
    return out


def load_json(path: str | os.PathLike[str]) -> Any:
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
