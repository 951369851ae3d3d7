"""Kaizen: decompose fluorescence images into objects with a VQ-VAE that redraws one object at a time.

Method: Majoral & Domnich, PLoS One 2025 (science.md section 3).  Modules: :mod:`.vqvae` (the
network), :mod:`.train` (patches and training job), :mod:`.sizing` (object diameter, rescaling),
:mod:`.decompose` (Algorithms 2 and 3), :mod:`.multiscale` (size chosen per region),
:mod:`.stoprule` (what a kept object must explain), :mod:`.outputs` (labels, object stack, JSON),
:mod:`.model` (model folders), :mod:`.params` (parameter dataclasses).  Importing the package
registers the pipeline; torch loads only when a job runs.

:func:`analyze_one` is the one per-image step every entry point runs (app.pipelines.runner).

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
from app.pipelines.contract import Item, Layer, PipelineSpec, Sample, TrainerSpec
from app.pipelines.kaizen.params import DecomposeParams, TrainParams
from app.pipelines.registry import TrainingSource, register

OUTPUT_STEM = "kaizen"  # <item>/kaizen.tif, kaizen.objects.npz, kaizen.objects.json (+ objects.json)


def _channel(value: str | None) -> int | str | None:
    """A channel given as text: an index when it is a number, else a name."""
    if value is None:
        return None
    text = str(value)
    return int(text) if text.lstrip("-").isdigit() else text


def load(folders: dict[str, str], params: DecomposeParams) -> Any:
    """The Kaizen model on the asked device (once per process or worker)."""
    from app.pipelines.kaizen.model import load_kaizen_model
    from app.pipelines.kaizen.train import resolve_device

    return load_kaizen_model(folders["kaizen"], device=resolve_device(params.device))


def prepare(params: DecomposeParams, loaded: Any) -> DecomposeParams:
    """Fields left at their defaults take the model card's decomposition values."""
    from app.pipelines.runner import with_model_defaults

    return with_model_defaults(params, loaded.defaults)


def device_of(loaded: Any) -> str:
    from app.pipelines.runner import device_label

    return device_label(next(loaded.network.parameters()).device)


def analyze_one(item: Item, folder: Path, loaded: Any, params: DecomposeParams) -> Job[dict]:
    """Decompose one image into ``folder``: kaizen.tif (labels), kaizen.objects.npz/.json and objects.json."""
    from app.core.results import write_objects
    from app.pipelines.kaizen.decompose import decompose_job, read_gray
    from app.pipelines.kaizen.outputs import write_outputs

    image = read_gray(item.sources[0], channel=_channel(params.channel), z=params.z)
    result = yield from decompose_job(image, loaded, params, name=item.name)
    write_outputs(folder, OUTPUT_STEM, result, source=item.name)
    write_objects(folder / "objects.json", item.name, "kaizen", {"objects": [o.to_dict() for o in result.objects]})
    return {"count": len(result.objects), "diameter": result.diameter}


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


def demo_step(project: Any, folder: Path) -> list[str]:
    """For the demo: decompose the sample's fluorescence nuclei with the shipped Kaizen model."""
    from app.core.jobs import ConsoleProgress, run

    names = [e.name for e in project.images() if e.group == "fluorescence nuclei"]
    run_folder = run(SPEC.analyze(project, names, SPEC.params(), {}), ConsoleProgress())
    return sorted(str(p) for p in Path(run_folder).rglob("*.tif"))


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
    analyze_one=analyze_one,
    models={"kaizen": "kaizen"},
    default_models={"kaizen": "kaizen-nuclei"},
    load=load,
    prepare_params=prepare,
    device_of=device_of,
    warm_modules=("app.pipelines.kaizen.decompose", "app.pipelines.kaizen.model", "app.pipelines.kaizen.outputs",
                  "app.core.results", "tifffile"),
    output_names={"labels": f"{OUTPUT_STEM}.tif", "stack": f"{OUTPUT_STEM}.objects.npz",
                  "json": f"{OUTPUT_STEM}.objects.json", "objects": "objects.json"},
    image_kinds=("fluorescence",),
    layers=(Layer("objects", "#ffd700", 0),),
    sample=Sample("fluorescence nuclei", "nuclei"),
    demo=demo_step,
    trainers={"kaizen": TrainerSpec(
        model_pipeline="kaizen", title="Kaizen VQ-VAE (nuclei or whole cells)", params=TrainParams,
        train=train_from_sources,
        description="Learns to redraw the central object of a patch from instance-annotated fluorescence images "
                    "(patch 40 for nuclei, 120 for whole cells).")},
))
