"""What the training wizard trains on and how it calls a trainer, without widgets.

Trainers are found on the pipelines' registry specs; sources are the project's annotated images
and corrected predictions; validation metrics at zero mean the model found nothing.  No Qt.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from app.core.errors import UserError
from app.pipelines.registry import TrainerSpec, TrainingSource

SPLIT_FIELDS = ("val_fraction", "validation_fraction")  # set by the Data page's split, not the form
# validation metrics whose value 0 means the model found nothing (any split, any case)
USELESS_AT_ZERO = ("ap50", "dice", "f1", "mean_f1", "object_f1", "pixel_f1", "iou", "mean_iou")


Trainer = TrainerSpec  # the wizard's name for a pipeline's training offer


def _as_trainer(item: Any, key: str | None = None) -> Trainer | None:
    if isinstance(item, Trainer):
        return item
    if isinstance(item, dict):
        item = type("T", (), item)
    train = getattr(item, "train", None)
    params = getattr(item, "params", None)
    if train is None or params is None:
        return None
    mp = getattr(item, "model_pipeline", key)
    return Trainer(mp, getattr(item, "title", mp), params, train, getattr(item, "description", ""))


def find_trainers() -> dict[str, Trainer]:
    """Trainers the installed pipelines offer on their registry specs, by model pipeline name."""
    from app.pipelines import registry

    found: dict[str, Trainer] = {}
    for spec in registry.pipelines().values():
        trainers = getattr(spec, "trainers", None) or {}
        offers = trainers.items() if isinstance(trainers, dict) else [(None, t) for t in trainers]
        for key, item in offers:
            trainer = _as_trainer(item, key)
            if trainer is not None and trainer.model_pipeline:
                found[trainer.model_pipeline] = trainer
    return found


def project_sources(project: Any) -> list[TrainingSource]:
    """Training data the project holds: annotated images and corrected predictions (runs with edits)."""
    from app.core.edits import read_edits
    from app.gui.run_files import base_objects_file

    sources = []
    if project is None:
        return sources
    for entry in project.images():
        path = project.annotations_dir / f"{entry.name}.json"
        if path.is_file():
            sources.append(TrainingSource("annotations", entry.name, path, image_path=project.image_path(entry.name)))
    for run in reversed(project.runs()):
        edited = {e.get("image") for e in read_edits(run.folder)} if (run.folder / "edits.json").exists() else set()
        for image in run.results:
            path = base_objects_file(run, image)
            if path is not None and (image in edited or None in edited):
                sources.append(TrainingSource("corrected", image, path, Path(run.folder),
                                              _image_path(project, image)))
    return sources


def same_source(a: TrainingSource, b: TrainingSource) -> bool:
    """Whether two sources are the same data (kind, image, run folder, file)."""
    return (a.kind, a.image, str(a.run_folder), str(a.path)) == (b.kind, b.image, str(b.run_folder), str(b.path))


def _image_path(project: Any, image: str) -> Path | None:
    """The project's file of ``image``, or None when the image was removed from the project."""
    try:
        return project.image_path(image)
    except UserError:
        return None


def class_counts(sources: list[TrainingSource]) -> dict[str, int]:
    """Objects per class in the sources (annotation files through app.core.annotations when present)."""
    counts: dict[str, int] = {}

    def add(name: Any) -> None:
        counts[str(name)] = counts.get(str(name), 0) + 1

    for source in sources:
        try:
            if source.kind == "corrected":
                from app.core.edits import apply_edits, edits_for_image, read_edits
                from app.core.results import read_objects

                edits = edits_for_image(read_edits(source.run_folder), source.image)
                doc = apply_edits(read_objects(source.path), edits)
                for objects in doc.get("layers", {}).values():
                    for obj in objects:
                        if not obj.get("excluded"):
                            add(obj.get("class"))
            else:
                for name in _annotation_classes(source.path):
                    add(name)
        except (UserError, OSError, ValueError, KeyError):
            continue
    return dict(sorted(counts.items()))


def _annotation_classes(path: Path) -> list[str]:
    """Class of every object in a COCO JSON or QuPath GeoJSON file."""
    data = json.loads(Path(path).read_text())
    if isinstance(data, dict) and "annotations" in data:
        names = {c["id"]: c.get("name", str(c["id"])) for c in data.get("categories", [])}
        return [names.get(a.get("category_id"), str(a.get("category_id"))) for a in data["annotations"]]
    features = data.get("features", []) if isinstance(data, dict) else data
    out = []
    for feature in features:
        props = feature.get("properties", {}) or {}
        cls = props.get("classification") or {}
        out.append(cls.get("name") if isinstance(cls, dict) else props.get("name", "object"))
    return out


def zero_metrics(metrics: dict[str, Any] | None) -> list[str]:
    """Validation metrics at 0 that mean the model finds nothing, e.g. ``["val AP50 = 0"]``."""
    found = []
    for split, values in (metrics or {}).items():
        items = values.items() if isinstance(values, dict) else [(split, values)]
        for key, value in items:
            numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
            if numeric and str(key).lower() in USELESS_AT_ZERO and abs(float(value)) < 1e-9:
                found.append(f"{split} {key} = 0" if isinstance(values, dict) else f"{key} = 0")
    return found


def nothing_found_text(zero: list[str]) -> str:
    """The warning shown when validation metrics say the model finds nothing."""
    return (f"Warning: {', '.join(zero)} on the validation data: this model finds nothing there. Train longer, "
            "with more annotations, or check the annotations' classes before using it.")


def call_trainer(trainer: Trainer, sources: list[TrainingSource], params: Any, out_dir: Path, resume: bool,
                  validation_fraction: float) -> Any:
    """Call a trainer with the keywords it accepts (validation_fraction is optional for it)."""
    import inspect

    kwargs: dict[str, Any] = {"resume": resume}
    try:
        accepted = inspect.signature(trainer.train).parameters
    except (TypeError, ValueError):
        accepted = {}
    if "validation_fraction" in accepted:
        kwargs["validation_fraction"] = validation_fraction
    return trainer.train(sources, params, out_dir, **kwargs)
