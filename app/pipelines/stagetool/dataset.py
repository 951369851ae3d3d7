"""Training data for the Stagetool models: sections with annotated objects, cut into random crops.

A :class:`Section` is a DAPI image (a file read lazily, or an array in memory) with its objects
as core :class:`~app.core.annotations.AnnotatedObject` (tubules with outlines or masks and a
stage; cells with boxes and a type), from COCO JSON, QuPath GeoJSON or phantom sections.
:class:`CropSampler` cuts random crops (``crop_size`` model pixels = ``crop_size * downsample``
section pixels): by default centred on an object of a class drawn with probability inversely
proportional to its frequency (rare types such as m2m and secondary spermatocytes are seen as
often as common ones), else anywhere with tissue; then flips, 90-degree rotations and intensity
changes (gain, gamma, noise, blur).  Normalisation is the section-level one used at inference.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from app.core.annotations import check_categories, read_coco, read_geojson
from app.core.errors import AnnotationError, UserError
from app.core.formats import image_beside
from app.core.images import open_image
from app.core.tiles import rotate90, rotate_boxes
from app.pipelines.stagetool.classes import CELL_TYPES, STAGES
from app.pipelines.stagetool.models import normalise
from app.pipelines.stagetool.section import intensity_range, matched_step, reduce_block, section_overview, to_model_pixels
from app.pipelines.stagetool.truth import read_testis_truth

OVERVIEW_FACTOR = 4


@dataclass
class Section:
    """One training image: pixels (array or lazily read file), objects, normalisation range, name."""

    name: str
    objects: list[Any]
    array: np.ndarray | None = None
    path: Path | None = None
    channel: int | str = 0
    stats: tuple[float, float] | None = None
    shape: tuple[int, int] = (0, 0)
    pixel_size_um: float | None = None
    synthetic: bool = False
    _image: Any = field(default=None, repr=False)
    _lock: Any = field(default_factory=threading.Lock, repr=False)  # file reads from crop-preparing threads

    def __post_init__(self) -> None:
        if self.array is not None:
            self.shape = tuple(self.array.shape[-2:])  # type: ignore[assignment]
        if self.stats is None:
            self.stats = self._stats()
        if self.pixel_size_um is None and self.path is not None:  # the file's, so training crops match the
            self.pixel_size_um = self.image().info.pixel_size_um  # model's scale (CropSampler) on every path

    def image(self) -> Any:
        """The opened image file (kept open for the crops)."""
        if self._image is None:
            self._image = open_image(self.path)
            self.shape = (self._image.info.height, self._image.info.width)
        return self._image

    def read(self, window: tuple[int, int, int, int]) -> np.ndarray:
        """Raw pixels of a window (zero padded beyond the section)."""
        if self.array is not None:
            y0, x0, y1, x1 = window
            height, width = self.shape
            out = np.zeros((y1 - y0, x1 - x0), np.float32)
            cy0, cx0, cy1, cx1 = max(y0, 0), max(x0, 0), min(y1, height), min(x1, width)
            if cy1 > cy0 and cx1 > cx0:
                out[cy0 - y0:cy1 - y0, cx0 - x0:cx1 - x0] = self.array[cy0:cy1, cx0:cx1]
            return out
        with self._lock:
            image = self.image()
            return np.asarray(image.read(channel=image.channel_index(self.channel), region=window), np.float32)

    def _stats(self) -> tuple[float, float]:
        if self.array is not None:
            return intensity_range(reduce_block(self.array, OVERVIEW_FACTOR))
        image = self.image()
        channel = image.channel_index(self.channel)
        return intensity_range(section_overview(image, channel, OVERVIEW_FACTOR, str(self.path)))


# ------------------------------------------------------------------------------------- loading


def class_names(kind: str) -> tuple[str, ...]:
    """The classes a model of ``kind`` learns."""
    return STAGES if kind == "tubules" else CELL_TYPES


def _resolve_image(file_name: str, base: Path) -> Path:
    path = Path(file_name)
    for candidate in (path, base / path, base / path.name):
        if candidate.is_file():
            return candidate
    raise AnnotationError(f"{base}: the image {file_name!r} named in the annotations was not found "
                          f"(looked beside the annotation file too)")


def _for_kind(image: Any, kind: str) -> Any:
    """A whole QuPath section (tubules and cells in one file, as `stagescope export qupath` writes it):
    keep the objects of ``kind``, leaving out the other kind and tubules marked excluded."""
    other = set(class_names("cells" if kind == "tubules" else "tubules"))
    image.objects = [o for o in image.objects if o.category not in other
                     and not (o.attributes.get("measurements") or {}).get("Excluded")]
    return image


def sections_from_file(path: Path, kind: str, channel: int | str = 0) -> list[Section]:
    """Sections from a COCO JSON or a QuPath GeoJSON (image = same name with an image suffix beside it)."""
    names = class_names(kind)
    suffix = "".join(path.suffixes[-2:]).lower()
    if path.suffix.lower() == ".geojson" or suffix.endswith(".geo.json"):
        image = image_beside(path)
        if image is None:
            stem = path.name[: -len(".geojson")] if path.name.lower().endswith(".geojson") else path.stem
            raise AnnotationError(f"{path}: no image named {stem}.tif beside this GeoJSON file")
        images = [_for_kind(read_geojson(path, image_file=str(image)), kind)]
    else:
        images = read_coco(path)
    check_categories(images, names)
    if not any(im.objects for im in images):
        raise AnnotationError(f"{path}: holds no {kind[:-1]} annotations; export the annotated objects "
                              "(an empty file would train a model on nothing)")
    sections = []
    for im in images:
        objects = [o for o in im.objects if (o.has_shape if kind == "tubules" else True)]
        if kind == "tubules" and len(objects) < len(im.objects):
            raise AnnotationError(f"{path}: {im.file_name}: tubule annotations need outlines (polygons or masks), "
                                  f"{len(im.objects) - len(objects)} have only boxes")
        image_path = _resolve_image(im.file_name, path.parent)
        if im.height is not None and im.width is not None:  # checked on the header, before any pixel is read
            with open_image(image_path) as image:
                shape = (image.info.height, image.info.width)
            if shape != (im.height, im.width):
                raise AnnotationError(f"{path}: {im.file_name} is {im.width} x {im.height} px in the annotations but "
                                      f"the image {image_path} is {shape[1]} x {shape[0]} px (width x height); "
                                      "the annotations were made on another image")
        sections.append(Section(name=Path(im.file_name).name, objects=objects, path=image_path, channel=channel))
    return sections


def sections_from_phantom_folder(folder: Path, kind: str) -> list[Section]:
    """Phantom sections (image + truth files written by :func:`app.pipelines.stagetool.phantom.write_testis`)."""
    found = []
    for truth in read_testis_truth(folder):
        objects = truth["tubules"] if kind == "tubules" else truth["cells"]
        found.append(Section(name=truth["name"], objects=objects, path=Path(truth["image"]), channel=0,
                             pixel_size_um=truth.get("pixel_size_um"), synthetic=True))
    if not found:
        raise UserError(f"{folder}: no phantom testis sections found")
    return found


def sections_from_results(folder: Path, kind: str, keep_empty: bool = False) -> list[Section]:
    """Corrected results as training sections: each analysed section with the run's edits applied.

    ``folder`` is a results (run) folder of ``stagescope stagetool analyze`` or the GUI, or one section
    folder of it; the edits are the run's ``edits.json`` (as the viewer writes them), applied to the
    raw predictions, else those ``objects.json`` already holds.  Excluded tubules are left out; a
    section left without objects of ``kind`` is skipped unless ``keep_empty``.
    """
    from app.core.edits import read_edits
    from app.core.results import read_objects
    from app.pipelines.stagetool import curation
    from app.pipelines.stagetool.layout import OBJECTS_FILE, PREDICTIONS_FILE

    found = []
    for section_dir in curation.section_dirs(folder):
        run_dir = section_dir if (section_dir / "edits.json").exists() else section_dir.parent
        doc = read_objects(section_dir / OBJECTS_FILE)
        if (run_dir / "edits.json").exists() and (section_dir / PREDICTIONS_FILE).exists():
            doc = curation.apply(read_objects(section_dir / PREDICTIONS_FILE), read_edits(run_dir))
        tubules, cells = curation.to_annotations(doc)
        objects = tubules.objects if kind == "tubules" else cells.objects
        image = Path(doc.get("meta", {}).get("image_path") or "")
        if not image.is_file():
            raise UserError(f"{section_dir}: its section image {image} is gone; relink it or train on an export")
        channel = doc.get("meta", {}).get("dapi_channel", 0) or 0
        channel = int(channel) if str(channel).isdigit() else channel
        if objects or keep_empty:
            found.append(Section(name=str(doc.get("image")), objects=objects, path=image, channel=channel,
                                 pixel_size_um=doc.get("meta", {}).get("pixel_size_um"),
                                 synthetic=bool(doc.get("meta", {}).get("synthetic"))))
    if not found:
        raise UserError(f"{folder}: its corrected results hold no {kind}")
    return found


def _is_results(folder: Path) -> bool:
    """Whether ``folder`` holds Stagetool results (objects.json in it or in its section folders)."""
    return (folder / "objects.json").exists() or any(folder.glob("*/objects.json"))


def load_sections(paths: Sequence[str | Path], kind: str) -> list[Section]:
    """Training sections from annotation files, phantom folders and (corrected) results folders.

    Unknown classes are an AnnotationError.
    """
    sections: list[Section] = []
    for item in paths:
        path = Path(item)
        if path.is_dir() and _is_results(path):
            sections += sections_from_results(path, kind)
        elif path.is_dir():
            sections += sections_from_phantom_folder(path, kind)
        elif path.is_file():
            sections += sections_from_file(path, kind)
        else:
            raise UserError(f"{path}: no such annotation file or folder")
    if not sections:
        raise UserError("no training sections")
    return sections


# ------------------------------------------------------------------------------------- crops


@dataclass
class Crop:
    """A model input (H, W) float32 in [0, ~1] and its torchvision target (boxes, labels 1.., masks)."""

    image: np.ndarray
    boxes: np.ndarray
    labels: np.ndarray
    masks: np.ndarray | None = None

    def target(self) -> dict[str, torch.Tensor]:
        """The torchvision detection target."""
        target = {"boxes": torch.from_numpy(self.boxes.astype(np.float32)).reshape(-1, 4),
                  "labels": torch.from_numpy(self.labels.astype(np.int64))}
        if self.masks is not None:
            target["masks"] = torch.from_numpy(self.masks.astype(np.uint8))
        return target


class CropSampler:
    """Random, class-balanced, augmented crops of sections for one model kind."""

    def __init__(self, sections: Sequence[Section], kind: str, crop_size: int, downsample: int = 1,
                 class_balanced: bool = True, augment: bool = True, min_visible: float = 0.5,
                 pixel_size_um: float | None = None) -> None:
        """``pixel_size_um``: the model's pixel size (before ``downsample``); sections at another known
        pixel size are resampled to it, so one model sees one scale (:func:`.section.matched_step`)."""
        self.sections = list(sections)
        self.kind = kind
        self.names = class_names(kind)
        self.crop_size = int(crop_size)
        self.downsample = int(downsample)
        self.steps = [matched_step(self.downsample, pixel_size_um, getattr(s, "pixel_size_um", None))
                      for s in self.sections]
        self.class_balanced = class_balanced
        self.augment = augment
        self.min_visible = min_visible
        self.index = {name: i for i, name in enumerate(self.names)}
        self._by_class: dict[int, list[tuple[int, int]]] = {}
        for s, section in enumerate(self.sections):
            for o, obj in enumerate(section.objects):
                self._by_class.setdefault(self.index[obj.category], []).append((s, o))
        self._boxes = [np.array([o.box for o in s.objects], np.float64).reshape(-1, 4) for s in self.sections]

    @property
    def class_counts(self) -> dict[str, int]:
        """Objects per class over all sections."""
        return {self.names[c]: len(v) for c, v in sorted(self._by_class.items())}

    def random_window(self, rng: np.random.Generator) -> tuple[int, tuple[int, int, int, int]]:
        """(section index, window in section pixels): around a class-balanced object, or anywhere."""
        classes = sorted(self._by_class)
        if self.class_balanced and classes and rng.random() < 0.8:
            cls = classes[rng.integers(len(classes))]
            s, o = self._by_class[cls][rng.integers(len(self._by_class[cls]))]
            side = self.side(s)
            x0, y0, x1, y1 = self.sections[s].objects[o].box
            cy = rng.uniform(y0, y1) if self.kind == "tubules" else (y0 + y1) / 2
            cx = rng.uniform(x0, x1) if self.kind == "tubules" else (x0 + x1) / 2
            top = int(cy - rng.uniform(0.1, 0.9) * side)
            left = int(cx - rng.uniform(0.1, 0.9) * side)
        else:
            s = int(rng.integers(len(self.sections)))
            side = self.side(s)
            height, width = self.sections[s].shape
            top = int(rng.integers(0, max(1, height - side + 1)))
            left = int(rng.integers(0, max(1, width - side + 1)))
        return s, (top, left, top + side, left + side)

    def side(self, s: int) -> int:
        """Section pixels a crop of section ``s`` covers."""
        return int(round(self.crop_size * self.steps[s]))

    def crop(self, s: int, window: tuple[int, int, int, int], rng: np.random.Generator | None = None) -> Crop:
        """The crop of section ``s`` at ``window``; augmented when ``rng`` is given and augment is on."""
        section = self.sections[s]
        raw = to_model_pixels(section.read(window), self.steps[s], (self.crop_size, self.crop_size))
        image = normalise(raw, *section.stats).numpy()
        boxes, labels, masks = self._targets(s, window)
        crop = Crop(image, boxes, labels, masks)
        if rng is not None and self.augment:
            crop = augment(crop, rng)
        return crop

    def sample(self, rng: np.random.Generator) -> Crop:
        """One random training crop."""
        s, window = self.random_window(rng)
        return self.crop(s, window, rng)

    def _targets(self, s: int, window: tuple[int, int, int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        """Boxes (model pixels), labels (1..) and, for tubules, masks of the objects visible in a window."""
        y0, x0, y1, x1 = window
        d = self.steps[s]
        side = self.crop_size
        boxes = self._boxes[s]
        visible_x = np.clip(boxes[:, 2], x0, x1) - np.clip(boxes[:, 0], x0, x1)
        visible_y = np.clip(boxes[:, 3], y0, y1) - np.clip(boxes[:, 1], y0, y1)
        area = np.maximum((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]), 1e-6)
        share = np.clip(visible_x, 0, None) * np.clip(visible_y, 0, None) / area
        need = 0.02 if self.kind == "tubules" else self.min_visible  # partial tubules are the norm in tiles
        out_boxes, out_labels, out_masks = [], [], []
        for o in np.flatnonzero(share >= need):
            obj = self.sections[s].objects[o]
            if self.kind == "tubules":
                mask = _window_mask(obj, window, d, side)
                if mask.sum() < 16:
                    continue
                rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
                out_boxes.append([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1])
                out_masks.append(mask)
            else:
                bx0, by0, bx1, by1 = obj.box
                box = [(max(bx0, x0) - x0) / d, (max(by0, y0) - y0) / d, (min(bx1, x1) - x0) / d,
                       (min(by1, y1) - y0) / d]
                if box[2] - box[0] < 2 or box[3] - box[1] < 2:
                    continue
                out_boxes.append(box)
            out_labels.append(self.index[obj.category] + 1)
        boxes_arr = np.array(out_boxes, np.float32).reshape(-1, 4)
        labels_arr = np.array(out_labels, np.int64)
        masks_arr = None
        if self.kind == "tubules":
            masks_arr = np.array(out_masks, bool).reshape(-1, side, side)
        return boxes_arr, labels_arr, masks_arr


def _window_mask(obj: Any, window: tuple[int, int, int, int], downsample: float, side: int) -> np.ndarray:
    """An object's mask inside a window, at model resolution (nearest sampling of pixel centres)."""
    crop, (oy, ox) = obj.crop_mask()
    y0, x0 = window[0], window[1]
    centres = np.floor((np.arange(side) + 0.5) * downsample).astype(np.int64)
    ys = y0 + centres - oy
    xs = x0 + centres - ox
    valid_y = (ys >= 0) & (ys < crop.shape[0])
    valid_x = (xs >= 0) & (xs < crop.shape[1])
    mask = np.zeros((side, side), bool)
    if valid_y.any() and valid_x.any():
        mask[np.ix_(valid_y, valid_x)] = crop[np.ix_(ys[valid_y], xs[valid_x])]
    return mask


# ------------------------------------------------------------------------------------- augmentation


def augment(crop: Crop, rng: np.random.Generator) -> Crop:
    """Random 90-degree rotation and flip (image, boxes, masks) and intensity changes (image only)."""
    image, boxes, masks = crop.image, crop.boxes, crop.masks
    shape = image.shape
    k = int(rng.integers(4))
    if k:
        boxes = rotate_boxes(boxes, k, shape).astype(np.float32) if len(boxes) else boxes
        image = rotate90(image, k)
        masks = rotate90(masks, k) if masks is not None else None
        shape = image.shape
    if rng.random() < 0.5:
        image = image[:, ::-1]
        masks = masks[:, :, ::-1] if masks is not None else None
        if len(boxes):
            boxes = boxes.copy()
            boxes[:, [0, 2]] = shape[1] - boxes[:, [2, 0]]
    image = intensity_augment(np.ascontiguousarray(image), rng)
    masks = np.ascontiguousarray(masks) if masks is not None else None
    return Crop(image, np.ascontiguousarray(boxes, np.float32), crop.labels, masks)


def intensity_augment(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Gain, gamma, offset, Gaussian noise and occasional blur, as staining and microscopes vary."""
    from scipy import ndimage

    out = np.clip(image, 0, None) * rng.uniform(0.7, 1.3)
    out = out ** rng.uniform(0.75, 1.33)
    out = out + rng.uniform(-0.05, 0.05)
    if rng.random() < 0.3:
        out = ndimage.gaussian_filter(out, rng.uniform(0.5, 1.2))
    out = out + rng.normal(0, rng.uniform(0, 0.04), out.shape)
    return np.clip(out, 0, 1.5).astype(np.float32)


def check_training_sections(train: Sequence[Section], kind: str) -> None:
    """Refuse training data that would write a meaningless model: no objects, or boxes that are not boxes.

    Every object's box must have a positive width and height and overlap its section; the training
    sections together must hold at least one object.  AnnotationError names the section and object.
    """
    for section in train:
        height, width = section.shape
        for obj in section.objects:
            x0, y0, x1, y1 = obj.box
            if not all(math.isfinite(v) for v in (x0, y0, x1, y1)) or x1 <= x0 or y1 <= y0:
                raise AnnotationError(f"{section.name}: object {obj.id} ({obj.category}) has the box "
                                      f"x {x0:g}..{x1:g}, y {y0:g}..{y1:g}, which has no area")
            if height and width and (x1 <= 0 or y1 <= 0 or x0 >= width or y0 >= height):
                raise AnnotationError(f"{section.name}: object {obj.id} ({obj.category}) at x {x0:g}..{x1:g}, "
                                      f"y {y0:g}..{y1:g} lies outside the {width} x {height} px image")
    if not any(section.objects for section in train):
        names = ", ".join(s.name for s in train[:5]) + (" ..." if len(train) > 5 else "")
        raise AnnotationError(f"no {kind[:-1]} annotations in the training sections ({names}); "
                              "a model cannot learn from none")


def split_sections(sections: Sequence[Section], val_fraction: float, seed: int) -> tuple[list[Section], list[Section]]:
    """Whole sections held out for validation (at least one when there are two or more)."""
    order = np.random.default_rng(seed).permutation(len(sections))
    n_val = min(len(sections) - 1, max(1 if len(sections) > 1 and val_fraction > 0 else 0,
                                       int(math.floor(len(sections) * val_fraction + 0.5))))
    val = [sections[i] for i in order[:n_val]]
    train = [sections[i] for i in order[n_val:]]
    return train, val
