"""Export a run's or a results folder's objects for QuPath (GeoJSON) or napari (label TIFFs + CSV).

Used by ``stagescope export qupath|labels`` and by the GUI's File > Export results action: both
run :func:`export_job`.  Any pipeline's results are exported: the objects file of each image
(``objects.json`` of a project run or ``stagetool analyze``; ``<stem>.objects.json`` of
``kaizen segment``), with the run's curation edits applied the way the viewer applies them.  A
pipeline that has its own vocabulary for QuPath (which layer is an annotation, which measurements)
provides ``app.pipelines.<name>.exports`` with ``OBJECT_TYPES``, ``COLOURS`` and ``measurements(doc)``;
the others get detections with their numeric fields and area, in the viewer's first generic colour.  No Qt here.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import re
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from app.core.errors import UserError
from app.core.jobs import Job, Progress
from app.core.outputs import save_report

FORMATS = ("qupath", "labels")
OBJECTS_FILE = "objects.json"
PREDICTIONS_FILE = "predictions.json"


@dataclass
class ResultFile:
    """One image's objects file, and the run folder whose edits apply to it (None outside a run)."""

    image: str
    path: Path
    run_folder: Path | None = None


def find_results(source: str | Path) -> list[ResultFile]:
    """The objects files under a run folder, a results folder (any depth) or a single objects file."""
    source = Path(source)
    if source.is_file():
        return [ResultFile(_image_name(source), source)]
    if not source.is_dir():
        raise UserError(f"{source}: no such run or results folder")
    run_file = source / "run.json"
    found = _run_results(source, run_file) if run_file.is_file() else []
    if not found:
        found = _results_below(source)
    if not found:
        raise UserError(f"{source}: no results here (no objects.json); give a run folder or a results folder")
    return found


def _results_below(source: Path) -> list[ResultFile]:
    """Objects files under a folder of runs (a project, its runs/) or of results folders.

    The runs found below are read through their run.json, so their edits and the project's pixel
    size apply; a Kaizen project run's ``kaizen.objects.json`` beside the image's ``objects.json``
    is the same objects again, not another image."""
    found: list[ResultFile] = []
    runs: list[Path] = []
    for run_file in sorted(source.rglob("run.json")):
        listed = _run_results(run_file.parent, run_file)
        if listed:
            runs.append(run_file.parent)
            found += listed
    for path in sorted(source.rglob("*objects.json")):
        plain = path.name == OBJECTS_FILE
        if not (plain or path.name.endswith("." + OBJECTS_FILE)) or any(run in path.parents for run in runs):
            continue
        if not plain and (path.parent / OBJECTS_FILE).is_file():
            continue
        found.append(ResultFile(_image_name(path), path, path.parent if (path.parent / "run.json").is_file() else None))
    return found


def _image_name(path: Path) -> str:
    """The image an objects file belongs to: ``<stem>.objects.json`` -> stem, ``<image>/objects.json`` -> image."""
    if path.name.endswith("." + OBJECTS_FILE):
        return path.name[: -len("." + OBJECTS_FILE)]
    try:
        image = json.loads(path.read_text()).get("image")
    except (OSError, ValueError, AttributeError):
        image = None
    plain = isinstance(image, str) and image and "/" not in image and "\\" not in image
    return image if plain else path.parent.name


def _run_results(folder: Path, run_file: Path) -> list[ResultFile]:
    """Objects files of the finished images recorded in a run.json."""
    try:
        run = json.loads(run_file.read_text())
    except (OSError, ValueError) as error:
        raise UserError(f"{run_file}: cannot read the run record ({error})") from error
    found = []
    for image, result in (run.get("results") or {}).items():
        outputs = (result or {}).get("outputs") or {}
        candidates = [folder / v for k, v in outputs.items() if isinstance(v, str) and k == "objects"]
        candidates += [folder / image / OBJECTS_FILE, folder / f"{image}.{OBJECTS_FILE}"]
        path = next((p for p in candidates if p.is_file()), None)
        if path is not None:
            found.append(ResultFile(image, path, folder))
    return found


def load_document(result: ResultFile) -> dict[str, Any]:
    """The objects document of one image as the viewer shows it (run edits applied), in the results schema.

    A ``kaizen segment`` file (objects at the top level) becomes one layer "objects"; the image
    size goes to ``meta.shape`` when the file says it.
    """
    from app.core.edits import apply_edits, edits_for_image, edits_path, read_edits
    from app.core.results import read_objects

    doc = read_objects(result.path)
    if "layers" not in doc and isinstance(doc.get("objects"), list):
        shape = [doc["height"], doc["width"]] if doc.get("height") and doc.get("width") else None
        doc = {"image": result.image, "pipeline": doc.get("pipeline") or "kaizen",
               "layers": {"objects": doc["objects"]},
               "meta": {"shape": shape}}
    doc.setdefault("image", result.image)
    if result.run_folder is not None and edits_path(result.run_folder).is_file():
        edits = edits_for_image(read_edits(edits_path(result.run_folder)), result.image)
        base = result.path.parent / PREDICTIONS_FILE  # curated objects already hold their edits
        if base.is_file():
            doc = read_objects(base)
        doc = apply_edits(doc, edits)
    meta = doc.setdefault("meta", {})
    if not meta.get("pixel_size_um"):  # Kaizen and brightfield results do not record it; the project does
        meta["pixel_size_um"] = _project_pixel_size(result)
    return doc


def _project_pixel_size(result: ResultFile) -> float | None:
    """The pixel size the project records for the image of a project run (runs/<id>/ in a project folder)."""
    from app.core.project import PROJECT_FILE, Project

    if result.run_folder is None or not (result.run_folder.parent.parent / PROJECT_FILE).is_file():
        return None
    try:
        return Project.open(result.run_folder.parent.parent).image(result.image).pixel_size_um
    except (UserError, OSError, ValueError, KeyError):
        return None


def object_stack(result: ResultFile) -> dict[str, np.ndarray] | None:
    """The Kaizen object stack (whole masks) beside an objects file, or None."""
    name = result.path.name
    if name.endswith("." + OBJECTS_FILE):  # kaizen segment: <stem>.objects.npz beside <stem>.objects.json
        beside = [result.path.with_name(name[: -len("json")] + "npz")]
    else:  # a project run: the image's folder holds one stack
        beside = sorted(result.path.parent.glob("*.objects.npz"))
    for path in beside:
        if path.is_file():
            with np.load(path) as data:
                return {key: data[key] for key in data.files}
    return None


def pipeline_hooks(pipeline: str | None) -> ModuleType | None:
    """``app.pipelines.<pipeline>.exports`` when that pipeline describes its objects for QuPath, else None."""
    if not pipeline or not re.fullmatch(r"[a-z_][a-z0-9_]*", str(pipeline)):
        return None
    name = f"app.pipelines.{pipeline}.exports"
    try:
        if importlib.util.find_spec(name) is None:
            return None
    except ModuleNotFoundError:
        return None
    return importlib.import_module(name)


def image_shape(doc: dict[str, Any], result: ResultFile) -> tuple[int, int]:
    """(height, width) of the analysed image: from the results, a label TIFF beside them, or the objects' extent."""
    shape = (doc.get("meta") or {}).get("shape")
    if shape and len(shape) >= 2:
        return int(shape[-2]), int(shape[-1])
    import tifffile

    for path in sorted(result.path.parent.glob("*.tif")):
        if result.image in path.name or path.stem in ("labels", "kaizen"):
            try:
                with tifffile.TiffFile(path) as tif:
                    page_shape = tif.pages[0].shape
                return int(page_shape[0]), int(page_shape[1])
            except (OSError, ValueError, IndexError, tifffile.TiffFileError):
                continue
    boxes = [o["box"] for objects in (doc.get("layers") or {}).values() for o in objects if o.get("box")]
    if not boxes:
        return (1, 1)
    extent = np.ceil(np.asarray(boxes, np.float64)[:, 2:].max(axis=0)).astype(int)
    return int(extent[1]), int(extent[0])


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value)


def check_document(doc: dict[str, Any], path: Path, stack_ids: set[int]) -> None:
    """Refuse in one line, naming the file, an objects document the export cannot draw (a hand-edited or
    foreign file): layers of objects, each with a whole-number id and an outline, a box or a stack mask."""
    layers = doc.get("layers")
    if not isinstance(layers, dict):
        raise UserError(f"{path}: not a results file (no layers of objects)")
    for layer, entries in layers.items():
        if not isinstance(entries, list):
            raise UserError(f"{path}: layer {layer!r} is not a list of objects")
        for number, entry in enumerate(entries, 1):
            where = f"{path}: object {number} of layer {layer!r}"
            if not isinstance(entry, dict) or isinstance(entry.get("id"), bool) or not isinstance(entry.get("id"), int):
                raise UserError(f"{where} has no whole-number id")
            polygon, box = entry.get("polygon"), entry.get("box")
            if polygon and not (isinstance(polygon, list) and all(
                    isinstance(p, list) and len(p) == 2 and all(_is_number(v) for v in p) for p in polygon)):
                raise UserError(f"{where}: its outline is not a list of [x, y] numbers")
            if box is not None and not (isinstance(box, list) and len(box) == 4 and all(_is_number(v) for v in box)):
                raise UserError(f"{where}: its box is not [x0, y0, x1, y1] numbers")
            if not (polygon and len(polygon) >= 3) and box is None and entry["id"] not in stack_ids:
                raise UserError(f"{where} has no outline, box or mask")


def export_one(result: ResultFile, fmt: str, out: Path, force: bool = False) -> list[Path]:
    """Write one image's export files into ``out``; returns their paths.

    Like every report, a file there that the user changed is kept and the new one gets a versioned
    name (app.core.outputs), unless ``force``.
    """
    from app.core.export_labels import napari_rows, write_label_tiff, write_napari_csv
    from app.core.export_qupath import area_measurement, feature_collection, reported_area, stack_masks, to_annotated

    doc = load_document(result)
    stack = object_stack(result)
    check_document(doc, result.path, set(stack_masks(stack)))
    hooks = pipeline_hooks(doc.get("pipeline"))
    object_types = getattr(hooks, "OBJECT_TYPES", None)
    measured = hooks.measurements(doc) if hooks is not None else None
    image = result.image
    if fmt == "qupath":
        collection = feature_collection(doc, object_types, measured, getattr(hooks, "COLOURS", None), stack=stack)
        text = json.dumps(collection, ensure_ascii=False)
        return [save_report(out / f"{image}.geojson", lambda tmp: tmp.write_text(text, encoding="utf-8"), force)]
    pixel = (doc.get("meta") or {}).get("pixel_size_um")
    shape = image_shape(doc, result)
    masks = stack_masks(stack)
    written = []
    for layer, entries in (doc.get("layers") or {}).items():
        objects = []
        for entry in entries:  # Kaizen masks are drawn as they are, not through an outline
            mask = None if entry.get("polygon") else masks.get(int(entry["id"]))
            obj = to_annotated(entry)
            if mask is not None:
                obj.mask, obj.mask_offset = mask
            objects.append(obj)
        extra = {}
        for obj, entry in zip(objects, entries):
            area = reported_area(entry, obj)
            values = {"area_px": round(area, 3), "score": entry.get("score"),
                      **(area_measurement(area, pixel) if pixel else {})}
            values.update((measured or {}).get(layer, {}).get(entry["id"], {}))
            extra[obj.id] = values
        rows = napari_rows(objects, extra)
        written.append(save_report(out / f"{image}_{layer}_labels.tif",
                                   lambda tmp: write_label_tiff(tmp, objects, shape, pixel), force))
        written.append(save_report(out / f"{image}_{layer}.csv", lambda tmp: write_napari_csv(tmp, rows), force))
    return written


def output_folders(results: list[ResultFile], source: Path, out: Path) -> list[Path]:
    """Where each image's files go: ``out``, or when two results share an image name (the same image
    in several runs of a project) ``out/<run folder>``, so no export replaces another."""
    names = [r.image for r in results]
    if len(set(names)) == len(names):
        return [out] * len(results)
    base = source if source.is_dir() else source.parent
    folders = []
    for result in results:
        folder = result.run_folder or result.path.parent
        try:
            relative = folder.resolve().relative_to(base.resolve())
        except ValueError:
            relative = Path(folder.name)
        folders.append(out / relative if relative.parts else out)
    return folders


def export_job(source: str | Path, fmt: str, out: str | Path, force: bool = False) -> Job[list[Path]]:
    """Export every image's results under ``source`` as ``fmt`` ("qupath" or "labels") into ``out``.

    ``force`` replaces files there that the user changed (otherwise they are kept, see export_one)."""
    if fmt not in FORMATS:
        raise UserError(f"unknown export format {fmt!r}; choose {' or '.join(FORMATS)}")
    results = find_results(source)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    folders = output_folders(results, Path(source), out)
    written: list[Path] = []
    for index, result in enumerate(results):
        yield Progress("export", index, len(results), result.image, item="image")
        folders[index].mkdir(parents=True, exist_ok=True)
        written += export_one(result, fmt, folders[index], force)
    yield Progress("export", len(results), len(results), "done", item="image")
    return written
