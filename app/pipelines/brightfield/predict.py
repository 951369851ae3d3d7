"""Segment nuclei from brightfield planes with a trained U-Net: probability map -> instances -> measurements.

The field is normalised and resized to the model scale, predicted in overlapping tiles whose
probabilities are blended by :class:`app.core.tiles.Stitcher` (one pass when the field fits one
tile), resized back, thresholded and split into nuclei with the same distance-transform watershed
the labels were derived with.  Per nucleus: area, centroid, mean brightfield and, when a
fluorescence image is given, mean fluorescence, written to CSV beside a uint16 label TIFF.
"""

from __future__ import annotations

import csv
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage as ndi
from skimage import segmentation

from app.core.errors import ImageError, ModelError
from app.core.jobs import Job, Progress
from app.pipelines.brightfield.labels import label_dtype, split_nuclei
from app.pipelines.brightfield.params import SegmentParams, TrainParams, from_dict
from app.pipelines.brightfield.stack import PlaneStack, planes_for_model
from app.pipelines.brightfield.train import TrainResult, choose_device, prepare_input, resize, set_threads
from app.pipelines.brightfield.unet import UNet, UNetConfig, pad_to_multiple

DEFAULT_MODEL = "brightfield-sephace"
CSV_COLUMNS = ("field", "id", "area_px", "centroid_y", "centroid_x", "mean_brightfield", "mean_fluorescence")


@dataclass
class BrightfieldModel:
    """A U-Net ready to predict, with what it needs to know about its input (planes, scale, normalisation)."""

    net: UNet
    plane_spec: dict
    scale: float = 0.25
    low_percentile: float = 1.0
    high_percentile: float = 99.0
    segment: SegmentParams = field(default_factory=SegmentParams)
    name: str = "model"
    model_id: dict = field(default_factory=dict)

    @classmethod
    def load(cls, folder_or_name: str | Path | None = None) -> BrightfieldModel:
        """Load a model folder (or a model by name; default: the shipped sephaCe model), checking its sha256."""
        from app.core.modelcard import load_state_dict, resolve_model

        card = resolve_model(folder_or_name or DEFAULT_MODEL, pipeline="brightfield")
        extra = card.extra or {}
        if "unet" not in extra or "planes" not in extra:
            raise ModelError(f"model {card.name!r} ({card.folder}): card lacks the U-Net settings (extra.unet, extra.planes)")
        config = UNetConfig(**extra["unet"])
        if config.in_channels != card.input_channels:
            raise ModelError(f"model {card.name!r}: card says {card.input_channels} input planes but the U-Net has {config.in_channels}")
        net = UNet(config)
        try:
            net.load_state_dict(load_state_dict(card.folder))
        except RuntimeError as exc:
            raise ModelError(f"model {card.name!r} ({card.folder}): weights do not fit the U-Net in its card: {exc}") from exc
        norm = card.normalisation or {}
        return cls(
            net=net.eval(),
            plane_spec=extra["planes"],
            scale=float(extra.get("scale", 1.0)),
            low_percentile=float(norm.get("low_percentile", 1.0)),
            high_percentile=float(norm.get("high_percentile", 99.0)),
            segment=from_dict(SegmentParams, extra.get("segment", {})),
            name=card.name,
            model_id=card.model_id(),
        )

    @classmethod
    def from_result(cls, result: TrainResult) -> BrightfieldModel:
        """Wrap a freshly trained network (experiments evaluate without writing a folder)."""
        p = result.params
        return cls(net=result.model.eval(), plane_spec=result.plane_spec, scale=p.scale,
                   low_percentile=p.low_percentile, high_percentile=p.high_percentile, name="trained")

    @property
    def has_boundary(self) -> bool:
        """Whether the network also predicts a nucleus-boundary channel."""
        return self.net.config.out_channels > 1

    def planes(self, stack: PlaneStack) -> np.ndarray:
        """The planes of ``stack`` this model takes, checked against its card."""
        return planes_for_model(stack, self.plane_spec, self.name).data


@dataclass
class SegmentResult:
    """Nuclei of one field: instance labels, the nucleus probability map and one row per nucleus."""

    labels: np.ndarray
    probability: np.ndarray
    rows: list[dict[str, Any]]
    name: str = ""
    seconds: float = 0.0

    @property
    def count(self) -> int:
        """Number of nuclei."""
        return len(self.rows)


def probability_job(model: BrightfieldModel, planes: np.ndarray, params: SegmentParams | None = None) -> Job[np.ndarray]:
    """Probability maps (C, H, W) of a raw (Z, H, W) stack, tile by tile; channel 0 = nucleus."""
    params = params or model.segment
    set_threads(params.threads)
    device = choose_device(params.device)
    net = model.net.to(device).eval()
    norm = TrainParams(scale=model.scale, low_percentile=model.low_percentile, high_percentile=model.high_percentile)
    x = prepare_input(np.asarray(planes), norm)[0]  # (Z, h, w) at model scale
    h, w = x.shape[-2:]
    tile = max(net.multiple, params.tile_size - params.tile_size % net.multiple)
    if h <= tile and w <= tile:
        yield Progress("predict", 0, 1, "whole field in one pass")
        small = _forward(net, x, device)
        yield Progress("predict", 1, 1)
    else:
        small = yield from _tiled(net, x, tile, params.overlap, device)
    full = resize(torch.from_numpy(small)[None], tuple(planes.shape[-2:]))[0]
    return full.numpy()


def _forward(net: UNet, x: torch.Tensor, device: torch.device) -> np.ndarray:
    """Sigmoid outputs (C, h, w) of one (Z, h, w) input, padded to the network's multiple."""
    padded, (h, w) = pad_to_multiple(x[None], net.multiple)
    with torch.inference_mode():
        out = torch.sigmoid(net(padded.to(device)))[0, :, :h, :w]
    return out.float().cpu().numpy()


def _tiled(net: UNet, x: torch.Tensor, tile: int, overlap: int, device: torch.device) -> Job[np.ndarray]:
    """Overlapping tiles blended by the core Stitcher."""
    from app.core.tiles import Stitcher, TileGrid

    h, w = x.shape[-2:]
    grid = TileGrid(h, w, tile_size=tile, overlap=min(max(0, overlap), tile // 2))
    out = np.zeros((net.config.out_channels, h, w), dtype=np.float32)
    stitcher = Stitcher(grid, out, clear=False)
    array = x.numpy()
    for i, t in enumerate(grid):
        patch = grid.read(array, t)
        stitcher.add(t, _forward(net, torch.from_numpy(np.ascontiguousarray(patch)), device))
        yield Progress("predict", i + 1, len(grid), f"tile {i + 1} of {len(grid)}")
    return stitcher.finish()


def instances(probability: np.ndarray, params: SegmentParams | None = None) -> np.ndarray:
    """Nuclei labels from probability maps (C, H, W) or (H, W): threshold + watershed split.

    With a boundary channel, seeds are the nucleus pixels away from predicted boundaries and the
    watershed grows them over the nucleus probability; otherwise the distance-transform split of
    :func:`split_nuclei` is used.
    """
    params = params or SegmentParams()
    prob = probability if probability.ndim == 3 else probability[None]
    mask = prob[0] > params.threshold
    if params.fill_holes:
        mask = ndi.binary_fill_holes(mask)
    if prob.shape[0] < 2:
        return split_nuclei(mask, params.split_depth, params.min_area)
    seeds, _ = ndi.label(mask & (prob[1] < 0.5))
    sizes = np.bincount(seeds.ravel())
    small = sizes < max(1, params.min_area // 10)
    small[0] = False
    seeds[small[seeds]] = 0
    grown = segmentation.watershed(-prob[0], seeds, mask=mask)
    areas = np.bincount(grown.ravel())
    keep = areas >= params.min_area
    keep[0] = False
    ids = np.zeros(areas.size, dtype=np.int64)
    ids[keep] = np.arange(1, keep.sum() + 1)
    return ids[grown].astype(label_dtype(int(keep.sum())))


def measure(labels: np.ndarray, planes: np.ndarray, fluo: np.ndarray | None = None, name: str = "") -> list[dict[str, Any]]:
    """One row per nucleus: area, centroid (y, x), mean brightfield over all planes, mean fluorescence."""
    ids = np.arange(1, int(labels.max()) + 1)
    if ids.size == 0:
        return []
    present = ids[np.bincount(labels.ravel(), minlength=ids.size + 1)[1:] > 0]
    area = ndi.sum(np.ones(labels.shape, np.float32), labels, present)
    cy = ndi.mean(np.arange(labels.shape[0], dtype=np.float64)[:, None] * np.ones(labels.shape[1]), labels, present)
    cx = ndi.mean(np.ones(labels.shape[0])[:, None] * np.arange(labels.shape[1], dtype=np.float64), labels, present)
    bright = ndi.mean(np.asarray(planes, dtype=np.float32).mean(axis=0), labels, present)
    fl = ndi.mean(np.asarray(fluo, dtype=np.float32), labels, present) if fluo is not None else [None] * len(present)
    return [
        {"field": name, "id": int(i), "area_px": int(a), "centroid_y": round(float(y), 2), "centroid_x": round(float(x), 2),
         "mean_brightfield": round(float(b), 3), "mean_fluorescence": None if f is None else round(float(f), 3)}
        for i, a, y, x, b, f in zip(present, area, cy, cx, bright, fl)
    ]


def segment(
    model: BrightfieldModel,
    stack: PlaneStack,
    params: SegmentParams | None = None,
    fluo: np.ndarray | None = None,
    name: str = "",
) -> Job[SegmentResult]:
    """Segment one field (a job): checks planes against the card, predicts, splits, measures."""
    params = params or model.segment
    start = time.monotonic()
    planes = model.planes(stack)
    if fluo is not None and np.shape(fluo) != stack.shape:
        raise ImageError(f"{name or stack.source}: the fluorescence image is {np.shape(fluo)} but the planes are {stack.shape}")
    prob = yield from probability_job(model, planes, params)
    yield Progress("instances", 0, 1, "threshold and watershed")
    labels = instances(prob, params)
    rows = measure(labels, stack.data, fluo, name)
    yield Progress("instances", 1, 1, f"{len(rows)} nuclei")
    return SegmentResult(labels, prob[0], rows, name, round(time.monotonic() - start, 3))


@dataclass
class FieldInput:
    """One field to segment: its planes (folder, files, or one stack file) and an optional fluorescence file."""

    name: str
    planes: list[Path]
    fluo: Path | None = None


def collect_fields(inputs: list[Path], fluo: Path | None = None) -> list[FieldInput]:
    """Fields to segment from command-line paths: plane files of one field, stack files, or field folders.

    See the help of ``stagescope brightfield segment``; batches (app/batch) read inputs the same way.
    """
    from app.core.errors import UserError
    from app.core.formats import PLANE_SUFFIXES, image_stem
    from app.pipelines.brightfield.stack import field_files, is_fluorescence_name, z_from_name

    for path in inputs:
        if not path.exists():
            raise UserError(f"{path}: no such file or folder")
    if len(inputs) > 1 and all(p.is_file() for p in inputs) and any(z_from_name(p.name) is not None for p in inputs):
        # plane files of one field (names carry z), perhaps with its fluorescence image among them
        if fluo is None:
            fluo = next((p for p in inputs if z_from_name(p.name) is None and is_fluorescence_name(p)), None)
        planes = [p for p in inputs if p != fluo]
        return [FieldInput(planes[0].parent.name or "field", planes, fluo)]
    fields = []
    for path in inputs:
        if path.is_file():
            fields.append(FieldInput(image_stem(path), [path], fluo))
            continue
        has_images = any(p.suffix.lower() in PLANE_SUFFIXES for p in path.iterdir() if p.is_file())
        subdirs = sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
        folders = [path] if has_images else subdirs
        if not folders:
            raise UserError(f"{path}: no plane images and no field folders in it")
        for folder in folders:
            planes, found = field_files(folder)
            fields.append(FieldInput(folder.name, planes, fluo or found))
    names = [f.name for f in fields]
    if len(set(names)) != len(names):
        raise UserError("two fields have the same folder name; their results would overwrite each other")
    return fields


def csv_text(rows: Sequence[dict[str, Any]], columns: Sequence[str] = CSV_COLUMNS) -> str:
    """Rows as CSV text; None becomes an empty cell."""
    import io

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
    return buffer.getvalue()


def write_csv(path: Path, rows: Sequence[dict[str, Any]], columns: Sequence[str] = CSV_COLUMNS) -> Path:
    """Rows as CSV (atomic write); None becomes an empty cell."""
    from app.core.atomic import atomic_write_text

    return atomic_write_text(path, csv_text(rows, columns))


def write_objects_json(path: Path, result: SegmentResult, image: str, model: BrightfieldModel) -> Path:
    """The nuclei as a results objects file (layer "nuclei": outline, box, measurements) for the viewer."""
    from app.core.annotations import labels_to_objects
    from app.core.results import write_objects

    rows = {row["id"]: row for row in result.rows}
    objects = []
    for obj in labels_to_objects(result.labels, category="nucleus"):
        row = rows.get(obj.id, {})
        polygon = max(obj.polygons, key=len).tolist() if obj.polygons else None
        objects.append({"id": int(obj.id), "class": "nucleus", "box": [float(v) for v in obj.box], "polygon": polygon,
                        "centroid": [row.get("centroid_y"), row.get("centroid_x")], "area_px": row.get("area_px"),
                        "mean_brightfield": row.get("mean_brightfield"),
                        "mean_fluorescence": row.get("mean_fluorescence")})
    return write_objects(path, image, "brightfield", {"nuclei": objects},
                         {"model": model.model_id or {"name": model.name}, "count": len(objects)})
