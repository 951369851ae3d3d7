"""The only list of pipelines: every package under app/pipelines/ that registers a spec, by name.

A pipeline package calls :func:`register` with its :class:`app.pipelines.contract.PipelineSpec`
when imported; :func:`pipelines` imports every package of this folder (a scan, so a new pipeline
is a new folder and nothing else), and :func:`register` refuses a second pipeline of the same name.
The GUI, CLI, batches, demo and self-test enumerate this registry; nothing else lists pipelines.

Training data shared by every trainer also lives here: :class:`TrainingSource` items (annotated
project images, corrected predictions of a run, imported COCO / QuPath GeoJSON files) and
:func:`training_images`, which turns them into images with their objects.  No Qt, no torch.
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from app.core.errors import AnnotationError, UserError
from app.core.formats import image_beside, image_stem
from app.core.modelcard import register_model_pipeline
from app.core.results import read_objects
from app.pipelines.contract import Item, Layer, LoadedModel, PipelineSpec, Sample, TrainerSpec
from app.pipelines.runner import analyze_images, analyze_project

__all__ = ["Item", "Layer", "LoadedModel", "PipelineSpec", "Sample", "TrainerSpec", "TrainingSource", "TrainingImage",
           "analyze_images", "get", "known", "pipelines", "register", "pipeline_packages", "training_images"]


def pipeline_packages() -> tuple[str, ...]:
    """The packages of app/pipelines/ (each a pipeline that registers itself on import), sorted by name."""
    import app.pipelines as package

    return tuple(sorted(f"{package.__name__}.{info.name}" for info in pkgutil.iter_modules(package.__path__)
                        if info.ispkg and not info.name.startswith("_")))


@dataclass(frozen=True)
class TrainingSource:
    """One piece of training data chosen by a user.

    ``kind`` "annotations": ``path`` is the image's COCO file in the project; "corrected": ``path`` is
    a run's objects.json of ``image`` whose edits (in ``run_folder``) are applied; "file": an imported
    COCO JSON (images named inside it) or QuPath GeoJSON (image = same stem beside it, or ``image_path``).
    """

    kind: str
    image: str | None = None
    path: Path | None = None
    run_folder: Path | None = None
    image_path: Path | None = None  # the pixels (project images: resolved by the caller)


@dataclass
class TrainingImage:
    """An image file with the objects annotated on it (app.core.annotations objects, section pixels)."""

    name: str
    image_path: Path
    objects: list[Any]
    pixel_size_um: float | None = None  # as the analysis used it (project metadata included), when known


_REGISTRY: dict[str, PipelineSpec] = {}
_SCANNED = False


def register(spec: PipelineSpec) -> PipelineSpec:
    """Add a pipeline (called by pipeline packages at import); a name another module registered is refused.

    The same module registering its name again (a reload, an idempotent test helper) replaces its spec.
    """
    old = _REGISTRY.get(spec.name)
    if old is not None and old.module != spec.module:
        raise ValueError(f"a pipeline named {spec.name!r} is already registered by {old.module or '?'}; "
                         f"{spec.module or '?'} must choose another name")
    if spec.analyze is None or getattr(spec.analyze, "func", None) is analyze_project:
        # the norm: project runs go through the runner's one loop, with this spec (also after dataclasses.replace)
        object.__setattr__(spec, "analyze", functools.partial(analyze_project, spec))
    _REGISTRY[spec.name] = spec

    register_model_pipeline(*spec.model_pipelines, *spec.trainers)
    return spec


def known() -> dict[str, PipelineSpec]:
    """The pipelines registered so far, without importing anything (Dask workers check before importing)."""
    return dict(_REGISTRY)


def pipelines(hidden: bool = True) -> dict[str, PipelineSpec]:
    """All pipelines by name (the packages of app/pipelines/ imported once); ``hidden=False`` leaves out probes."""
    global _SCANNED
    if not _SCANNED:
        for module in pipeline_packages():
            importlib.import_module(module)
        _SCANNED = True
    return {name: spec for name, spec in sorted(_REGISTRY.items()) if hidden or not spec.hidden}  # by name: the
    # same order whichever module happened to import a pipeline first


def get(name: str) -> PipelineSpec:
    """One pipeline by name; an unknown name is a user error listing the known ones."""
    known_now = pipelines()
    if name not in known_now:
        raise UserError(f"unknown pipeline '{name}'; available: {', '.join(sorted(known_now)) or 'none'}")
    return known_now[name]


def params_from_dict(params_type: type, values: dict[str, Any] | None) -> Any:
    """Build a parameters dataclass from saved values, ignoring keys it no longer has."""
    import dataclasses

    names = {f.name for f in dataclasses.fields(params_type)}
    return params_type(**{k: v for k, v in (values or {}).items() if k in names})


# ---------------------------------------------------------------------------------- training data


def training_images(sources: list[TrainingSource]) -> list[TrainingImage]:
    """The images and objects of the chosen sources (edits applied, excluded objects left out).

    A source whose image cannot be found, or whose file cannot be read, is a UserError naming it.
    """
    out: list[TrainingImage] = []
    for source in sources:
        if source.kind == "corrected":
            out.append(_corrected_image(source))
        elif source.kind in ("annotations", "file"):
            out += _annotation_file_images(source)
        else:
            raise UserError(f"unknown kind of training data {source.kind!r}")
    if not out:
        raise UserError("no training images: choose annotated images or corrected predictions")
    return out


def _corrected_image(source: TrainingSource) -> TrainingImage:
    """A run's objects of one image with the project's curation edits applied."""
    from app.core.edits import apply_edits, edits_for_image, read_edits  # numpy: kept off the CLI's start
    doc = read_objects(Path(source.path))
    if source.run_folder is not None and (Path(source.run_folder) / "edits.json").exists():
        doc = apply_edits(doc, edits_for_image(read_edits(source.run_folder), source.image or doc.get("image")))
    objects = []
    for layer in (doc.get("layers") or {}).values():
        objects += [_result_object(obj, len(objects) + 1) for obj in layer if not obj.get("excluded")]
    name = source.image or str(doc.get("image") or Path(source.path).parent.name)
    return TrainingImage(name, _need_image(source.image_path, source), objects,
                         (doc.get("meta") or {}).get("pixel_size_um"))


def _result_object(obj: dict[str, Any], number: int) -> Any:
    """An objects.json entry (class, box, polygon) as an annotation object with a fresh id."""
    from app.core.annotations import AnnotatedObject

    polygon = obj.get("polygon")
    return AnnotatedObject(id=number, category=str(obj.get("class")), box=obj.get("box"),
                           polygons=[polygon] if polygon else [], score=obj.get("score"))


def _annotation_file_images(source: TrainingSource) -> list[TrainingImage]:
    """Images of a COCO JSON or QuPath GeoJSON file, each paired with its image file."""
    from app.core.annotations import read_coco, read_geojson

    path = Path(source.path)
    if path.suffix.lower() == ".geojson" or path.name.lower().endswith(".geo.json"):
        image_path = source.image_path or image_beside(path)  # QuPath exports sit beside the image
        annotated = [read_geojson(path, image_file=str(image_path) if image_path else None)]
    else:
        annotated = read_coco(path)
    out = []
    for item in annotated:
        image_path = source.image_path if source.kind == "annotations" or len(annotated) == 1 else None
        image_path = image_path or _resolve(item.file_name, path.parent)
        out.append(TrainingImage(source.image or image_stem(item.file_name), _need_image(image_path, source),
                                 list(item.objects)))
    return out


def _resolve(file_name: str | None, base: Path) -> Path | None:
    """An image named in an annotation file: as given, or relative to the file's folder."""
    if not file_name:
        return None
    for candidate in (Path(file_name), base / file_name, base / Path(file_name).name):
        if candidate.is_file():
            return candidate
    return None


def _need_image(image_path: Path | None, source: TrainingSource) -> Path:
    if image_path is None or not Path(image_path).is_file():
        what = source.path or source.image
        raise AnnotationError(f"{what}: the annotated image was not found"
                              + (f" ({image_path})" if image_path else " (put it beside the annotation file)"))
    return Path(image_path)
