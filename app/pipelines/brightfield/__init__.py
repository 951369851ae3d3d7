"""Brightfield nuclei segmentation (Fishman et al., J. Microscopy 2021; science.md section 1).

Nuclei labels are derived from a paired fluorescence (DNA stain) image (labels.py), a small U-Net
(unet.py) learns them from the brightfield z-planes (train.py), and from then on nuclei are
segmented, counted and measured from brightfield alone (predict.py).  experiments.py answers
"how many planes" and "how much data" on held-out fields.  Long work is a job (a generator of
:class:`app.core.jobs.Progress` returning its result); parameters are the dataclasses of params.py.

Typical use::

    from app.core.jobs import run
    from app.pipelines.brightfield import BrightfieldModel, load_stack, segment
    model = BrightfieldModel.load()                      # the shipped brightfield-sephace model
    result = run(segment(model, load_stack("set2/")))   # result.labels, result.rows, result.count
"""

from __future__ import annotations

import importlib
from typing import Any

# name -> module; imported on first use so that `import app.pipelines.brightfield.params` (the CLI
# parser) does not pull in torch
_EXPORTS = {
    "DerivedLabels": "labels", "Registration": "labels", "check_registration": "labels",
    "derive_labels": "labels", "split_nuclei": "labels",
    "ExperimentParams": "params", "LabelParams": "params", "SegmentParams": "params", "TrainParams": "params",
    "BrightfieldModel": "predict", "FieldInput": "predict", "SegmentResult": "predict", "instances": "predict",
    "probability_job": "predict", "segment": "predict", "segment_fields": "predict",
    "PlaneStack": "stack", "load_stack": "stack",
    "TrainingField": "train", "TrainResult": "train", "load_training_field": "train", "save_trained": "train",
}  # the training job itself: app.pipelines.brightfield.train.train (the name is also the sub-module's)
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    """Import the public names lazily (PEP 562)."""
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)


def with_model_defaults(params: Any, card_params: Any) -> Any:
    """Segment parameters where every field left at its default takes the model card's value.

    A model trained on small phantom nuclei stores min_area 40, the sephaCe one 1000: a form or
    batch that passes the defaults must not undo what the card says (as ``brightfield segment``).
    """
    import dataclasses

    if params is None:
        return card_params
    defaults = type(params)()
    changes = {f.name: getattr(card_params, f.name) for f in dataclasses.fields(params)
               if getattr(params, f.name) == getattr(defaults, f.name) and hasattr(card_params, f.name)}
    return dataclasses.replace(params, **changes)


def analyze_project(project: Any, image_names: list[str], params: Any, models: dict[str, str] | None = None) -> Any:
    """Registry entry point: segment project images (each a brightfield z-stack file) into a new run folder.

    Per image: labels.tif, nuclei.csv and objects.json (layer "nuclei") in the run's image folder;
    returns the run folder.
    """
    from pathlib import Path

    from app.core.images import write_tiff
    from app.core.jobs import Job
    from app.pipelines.brightfield.predict import BrightfieldModel, segment, write_csv, write_objects_json
    from app.pipelines.brightfield.stack import load_stack
    from app.pipelines.registry import analyze_images

    model = BrightfieldModel.load((models or {}).get("brightfield"))
    from app.pipelines.brightfield.params import to_dict

    params = with_model_defaults(params, model.segment)

    run = project.new_run("brightfield", to_dict(params), {"brightfield": model.model_id})

    def one(name: str, folder: Path) -> Job[dict]:
        result = yield from segment(model, load_stack(project.image_path(name)), params, name=name)
        written = {"labels": write_tiff(folder / "labels.tif", result.labels, axes="YX"),
                   "nuclei": write_csv(folder / "nuclei.csv", result.rows),
                   "objects": write_objects_json(folder / "objects.json", result, name, model)}
        return {**written, "count": result.count}

    return (yield from analyze_images(run, image_names, one))


def train_from_sources(sources: list[Any], params: Any, out_dir: Any, resume: bool = False,
                       validation_fraction: float = 0.2) -> Any:
    """Registry trainer: a U-Net from annotated brightfield stacks (nuclei outlines painted into labels).

    ``validation_fraction`` replaces ``params.val_fraction`` (the bottom strip of each field kept for
    validation).  Training restarts from scratch on ``resume`` (the U-Net trains in minutes; only the best
    weights are checkpointed).  Writes and returns the model folder ``out_dir``.
    """
    import dataclasses
    from pathlib import Path

    from app.core.annotations import objects_to_labels
    from app.core.jobs import Progress
    from app.pipelines.brightfield.stack import load_stack
    from app.pipelines.brightfield.train import TrainingField, save_trained, train
    from app.pipelines.registry import training_images

    yield Progress("data", 0, len(sources), "reading the annotated stacks"
                   + (" (brightfield training restarts from scratch)" if resume else ""))
    fields = []
    for item in training_images(sources):
        stack = load_stack(item.image_path)
        objects = [dataclasses.replace(o, id=i) for i, o in enumerate(item.objects, 1)]
        labels = objects_to_labels(objects, stack.data.shape[-2:]).astype("int32")
        fields.append(TrainingField(stack, labels, item.name))
    params = dataclasses.replace(params, val_fraction=validation_fraction)
    result = yield from train(fields, params, checkpoint_dir=Path(out_dir))
    best = next((r for r in result.history if r.get("epoch") == result.best_epoch), {})
    metrics = {"validation": {"data": f"bottom {validation_fraction:.0%} strip of each training field",
                              **{k: v for k, v in best.items() if k.startswith("val_")}}} if best else {}
    save_trained(result, Path(out_dir), Path(out_dir).name, metrics, data=", ".join(f.name for f in fields))
    return Path(out_dir)


def _register() -> None:
    """Describe the pipeline to the GUI and batch runner (app.pipelines.registry)."""
    from app.pipelines.brightfield.params import SegmentParams, TrainParams
    from app.pipelines.registry import PipelineSpec, TrainerSpec, register

    register(PipelineSpec(
        name="brightfield",
        title="Brightfield: nuclei from label-free z-planes",
        description="A U-Net trained on fluorescence-derived labels segments and counts nuclei from brightfield "
                    "focal planes alone. Outputs a label image, per-nucleus measurements (CSV) and objects JSON.",
        params=SegmentParams,
        model_pipelines=("brightfield",),
        analyze=analyze_project,
        image_kinds=("brightfield-stack",),
        layers=("nuclei",),
        trainers={"brightfield": TrainerSpec(
            model_pipeline="brightfield", title="Brightfield U-Net (nuclei from z-planes)", params=TrainParams,
            train=train_from_sources,
            description="Learns nuclei from annotated brightfield z-stacks (annotations from the paired "
                        "fluorescence, e.g. `stagescope brightfield derive-labels`, or drawn by hand).")},
    ))


_register()
