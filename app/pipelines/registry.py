"""The pipelines the app knows, described so that GUI, CLI and batches run them the same way.

A pipeline registers a :class:`PipelineSpec`; the GUI builds its run form from ``params`` (a
dataclass), lists models whose card pipeline is in ``model_pipelines``, and starts
``analyze(project, image_names, params, models)``, a job generator (app.core.jobs) that writes a
run folder in the project and returns its path.

A pipeline that can learn from annotations also lists ``trainers`` (model pipeline name ->
:class:`TrainerSpec`): a parameters dataclass and ``train(sources, params, out_dir, resume=False,
validation_fraction=0.2)``, a job that writes a model folder (card.json + weights.pt) and returns
it.  ``sources`` are :class:`TrainingSource` items (annotated project images, corrected predictions
of a run, imported COCO / QuPath GeoJSON files); :func:`training_images` turns them into images
with their objects, so each trainer only converts objects to what its network learns from.
Nothing here imports Qt: the training wizard and any script drive the same jobs.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.core.formats import image_beside, image_stem
from app.core.jobs import Job, Progress

# modules that call register() on import; missing ones are skipped (a pipeline not built yet)
PIPELINE_MODULES = ("app.pipelines.brightfield", "app.pipelines.stagetool", "app.pipelines.kaizen")


@dataclass(frozen=True)
class PipelineSpec:
    """What the GUI and batch runner need to know to run one pipeline on project images."""

    name: str
    title: str
    description: str
    params: type
    model_pipelines: tuple[str, ...]
    analyze: Callable[..., Job[Path]]  # (project, image_names, params, models: dict[str, str]) -> run folder
    image_kinds: tuple[str, ...] = field(default_factory=tuple)  # hints: "fluorescence", "brightfield-stack", "section"
    layers: tuple[str, ...] = field(default_factory=tuple)  # result layers it writes (objects.json)
    # model pipeline name (card.json "pipeline") -> how to train such a model from annotations
    trainers: dict[str, TrainerSpec] = field(default_factory=dict, compare=False, hash=False)


@dataclass(frozen=True)
class TrainerSpec:
    """How to train one kind of model: ``train(sources, params, out_dir, resume=False,
    validation_fraction=0.2) -> Job[Path]`` writes the model folder ``out_dir`` and returns it."""

    model_pipeline: str
    title: str
    params: type
    train: Callable[..., Job[Path]]
    description: str = ""


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


_REGISTRY: dict[str, PipelineSpec] = {}


def register(spec: PipelineSpec) -> PipelineSpec:
    """Add (or replace) a pipeline; called by pipeline packages at import."""
    _REGISTRY[spec.name] = spec
    return spec


def pipelines() -> dict[str, PipelineSpec]:
    """All available pipelines by name, importing the pipeline packages that exist."""
    for module in PIPELINE_MODULES:
        if importlib.util.find_spec(module) is not None:
            importlib.import_module(module)
    return dict(_REGISTRY)


def get(name: str) -> PipelineSpec:
    """One pipeline by name; an unknown name is a user error listing the known ones."""
    from app.core.errors import UserError

    known = pipelines()
    if name not in known:
        raise UserError(f"unknown pipeline '{name}'; available: {', '.join(sorted(known)) or 'none'}")
    return known[name]


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
    from app.core.errors import UserError

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
    from app.core.edits import apply_edits, edits_for_image, read_edits
    from app.core.results import read_objects

    doc = read_objects(Path(source.path))
    if source.run_folder is not None and (Path(source.run_folder) / "edits.json").exists():
        doc = apply_edits(doc, edits_for_image(read_edits(source.run_folder), source.image or doc.get("image")))
    objects = []
    for layer in (doc.get("layers") or {}).values():
        objects += [_result_object(obj, len(objects) + 1) for obj in layer if not obj.get("excluded")]
    name = source.image or str(doc.get("image") or Path(source.path).parent.name)
    return TrainingImage(name, _need_image(source.image_path, source), objects)


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
    from app.core.errors import AnnotationError

    if image_path is None or not Path(image_path).is_file():
        what = source.path or source.image
        raise AnnotationError(f"{what}: the annotated image was not found"
                              + (f" ({image_path})" if image_path else " (put it beside the annotation file)"))
    return Path(image_path)


def analyze_images(run: Any, image_names: list[str], analyze_one: Callable[[str, Path], Job[dict]]) -> Job[Path]:
    """Job: ``analyze_one(name, image_folder)`` (a job returning the outputs to record) for each image of a run.

    Each image is marked done as it finishes; the run ends "finished", "cancelled" (the consumer
    closed the job) or "failed" (anything raised, user errors too; the failing image and its reason
    are recorded in the run).  Returns the run folder.
    """
    status = "failed"
    try:
        for i, name in enumerate(image_names):
            yield Progress("images", i, len(image_names), name, item="image")
            try:
                outputs = yield from analyze_one(name, run.image_dir(name))
            except Exception as error:  # recorded in run.json (project list, the GUI's summary), then raised
                if hasattr(run, "mark_image_failed"):
                    run.mark_image_failed(name, str(error) or type(error).__name__)
                raise
            run.mark_image_done(name, outputs)
        yield Progress("images", len(image_names), len(image_names), "done", item="image")
        status = "finished"
    except GeneratorExit:
        status = "cancelled"
        raise
    finally:
        run.finish(status)
    return Path(run.folder)
