"""Kaizen: decompose fluorescence images into objects with a VQ-VAE that redraws one object at a time.

Method: Majoral & Domnich, PLoS One 2025 (science.md section 3).  Modules: :mod:`.vqvae` (the
network), :mod:`.train` (patches and training job), :mod:`.sizing` (object diameter, rescaling),
:mod:`.decompose` (Algorithms 2 and 3), :mod:`.multiscale` (size chosen per region),
:mod:`.stoprule` (what a kept object must explain), :mod:`.outputs` (labels, object stack, JSON),
:mod:`.model` (model folders), :mod:`.params` (parameter dataclasses).  Importing the package
registers the pipeline; torch loads only when a job runs.

Typical use::

    from app.pipelines.kaizen.model import load_kaizen_model
    from app.pipelines.kaizen.decompose import decompose
    result = decompose(image, load_kaizen_model())      # the shipped kaizen-nuclei model
    labels = result.labels()                            # uint16, overlaps to the brighter object
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from app.core.jobs import Job, Progress
from app.pipelines.kaizen.params import DecomposeParams, TrainParams
from app.pipelines.registry import PipelineSpec, TrainerSpec, TrainingSource, analyze_images, register


def analyze_project(project: Any, image_names: list[str], params: DecomposeParams,
                    models: dict[str, str] | None = None) -> Job[Path]:
    """Registry entry point: decompose project images into a new run folder; returns the folder."""
    from app.core.results import write_objects
    from app.pipelines.kaizen.decompose import decompose_job, read_gray
    from app.pipelines.kaizen.model import load_kaizen_model
    from app.pipelines.kaizen.outputs import write_outputs
    from app.pipelines.kaizen.train import resolve_device

    models = models or {}
    model = load_kaizen_model(models.get("kaizen"), device=resolve_device(params.device))
    run = project.new_run("kaizen", params.to_dict(), {"kaizen": model.card.model_id()})

    def one(name: str, folder: Path) -> Job[dict]:
        result = yield from decompose_job(read_gray(project.image_path(name)), model, params, name=name)
        written = write_outputs(folder, "kaizen", result, source=name)
        written["objects"] = write_objects(folder / "objects.json", name, "kaizen",
                                           {"objects": [o.to_dict() for o in result.objects]})
        return {**written, "count": len(result.objects)}

    return (yield from analyze_images(run, image_names, one))


def train_from_sources(sources: list[TrainingSource], params: TrainParams, out_dir: Path, resume: bool = False,
                       validation_fraction: float = 0.2) -> Job[Path]:
    """Registry trainer: a Kaizen model from annotated images (objects painted into label images).

    Images are split by the fixed hash rule of :func:`.train.is_validation` (all of them train when
    the rule would leave none); returns the model folder ``out_dir``.
    """
    import numpy as np

    from app.core.annotations import objects_to_labels
    from app.pipelines.kaizen.decompose import read_gray
    from app.pipelines.kaizen.train import SPLIT_RULE, is_validation, train_job
    from app.pipelines.registry import training_images

    yield Progress("data", 0, len(sources), "reading the annotated images")
    percent = int(round(100 * validation_fraction))
    train, val = [], []
    for item in training_images(sources):
        image = read_gray(item.image_path)
        labels = objects_to_labels([_renumbered(o, i) for i, o in enumerate(item.objects, 1)], image.shape)
        (val if percent and is_validation(item.name, percent) else train).append(
            (item.name, image, labels.astype(np.int32)))
    if not train:
        train, val = val, []
    info = {"data": ", ".join(name for name, _, _ in train + val),
            "split_rule": SPLIT_RULE.replace("< 20", f"< {percent}"),
            "train_images_total": len(train), "validation_images_total": len(val)}
    return (yield from train_job(train, val, Path(out_dir), params, resume=resume, data_info=info))


def _renumbered(obj: Any, number: int) -> Any:
    """An annotation object with id ``number`` (label values must be unique and positive)."""
    import dataclasses

    return dataclasses.replace(obj, id=number)


SPEC = register(PipelineSpec(
    name="kaizen",
    title="Kaizen: decompose fluorescence images into objects",
    description="A VQ-VAE redraws one nucleus (or cell) at a time until the internal picture explains the image; "
                "objects may overlap. Outputs a label image, one generated image per object and objects JSON.",
    params=DecomposeParams,
    model_pipelines=("kaizen",),
    analyze=analyze_project,
    image_kinds=("fluorescence",),
    layers=("objects",),
    trainers={"kaizen": TrainerSpec(
        model_pipeline="kaizen", title="Kaizen VQ-VAE (nuclei or whole cells)", params=TrainParams,
        train=train_from_sources,
        description="Learns to redraw the central object of a patch from instance-annotated fluorescence images "
                    "(patch 40 for nuclei, 120 for whole cells).")},
))
