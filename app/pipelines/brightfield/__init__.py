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
    "probability_job": "predict", "segment": "predict",
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
    """Segment parameters where every field left at its default takes the model card's value (see the runner)."""
    from app.pipelines.runner import with_model_defaults as merge

    return merge(params, card_params)


def expand(inputs: Any) -> list[Any]:
    """Fields from paths as ``brightfield segment`` takes them: field folders, plane files, stack files."""
    from pathlib import Path

    from app.pipelines.brightfield.predict import collect_fields
    from app.pipelines.contract import Item

    return [Item(f.name, tuple(str(Path(p).resolve()) for p in f.planes),
                 {"fluorescence": str(Path(f.fluo).resolve())} if f.fluo else {}) for f in collect_fields(list(inputs))]


def load(folders: dict[str, str], params: Any) -> Any:
    """The U-Net of the model folder (once per process or worker)."""
    from app.pipelines.brightfield.predict import BrightfieldModel

    return BrightfieldModel.load(folders["brightfield"])


def prepare(params: Any, loaded: Any) -> Any:
    """Fields left at their defaults take the model card's segmentation values (min_area 40 vs sephaCe's 1000)."""
    return with_model_defaults(params, loaded.segment)


def device_of(loaded: Any) -> str:
    from app.pipelines.runner import device_label

    return device_label(next(loaded.net.parameters()).device)


def analyze_one(item: Any, folder: Any, loaded: Any, params: Any) -> Any:
    """Segment one field into ``folder``: labels.tif, nuclei.csv, objects.json (layer "nuclei") [, probability.tif]."""
    from pathlib import Path

    import numpy as np

    from app.core.images import write_tiff
    from app.pipelines.brightfield.predict import segment, write_csv, write_objects_json
    from app.pipelines.brightfield.stack import load_stack, read_gray

    stack = load_stack([Path(p) for p in item.sources] if len(item.sources) > 1 else Path(item.sources[0]))
    fluo = read_gray(Path(item.extras["fluorescence"])) if item.extras.get("fluorescence") else None
    result = yield from segment(loaded, stack, params, fluo, name=item.name)
    write_tiff(folder / "labels.tif", result.labels, axes="YX")
    if params.save_probability:
        write_tiff(folder / "probability.tif", (result.probability * 255).round().astype(np.uint8), axes="YX")
    write_csv(folder / "nuclei.csv", result.rows)
    write_objects_json(folder / "objects.json", result, item.name, loaded)
    return {"count": result.count}


def finish(out: Any, names: Any, params: Any, force: bool = False, skipped: Any = ()) -> dict[str, Any]:
    """nuclei.csv (every field's nuclei) and counts.csv (nuclei per field) over the finished fields.

    Tables the user changed are kept and the new ones get versioned names, unless ``force``.
    """
    import csv
    from pathlib import Path

    from app.core.outputs import save_report_text
    from app.pipelines.brightfield.predict import csv_text

    rows, counts = [], []
    for name in names:
        path = Path(out) / name / "nuclei.csv"
        if path.exists():
            with open(path, newline="") as handle:
                field_rows = list(csv.DictReader(handle))
            rows += field_rows
            counts.append({"field": name, "count": len(field_rows)})
    if not counts:
        return {}
    return {"nuclei": save_report_text(Path(out) / "nuclei.csv", csv_text(rows), force),
            "counts": save_report_text(Path(out) / "counts.csv", csv_text(counts, ("field", "count")), force)}


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


def demo_step(project: Any, folder: Any) -> list[str]:
    """For the demo: count nuclei in the sample's brightfield field with the shipped phantom-trained model."""
    from pathlib import Path

    from app.core.jobs import ConsoleProgress, run
    from app.pipelines.registry import get

    spec = get("brightfield")
    names = [e.name for e in project.images() if e.group == "brightfield fields" and "planes" in e.name]
    run_folder = run(spec.analyze(project, names, spec.params(), {"brightfield": "brightfield-phantom-demo"}),
                     ConsoleProgress())
    return sorted(str(p) for p in Path(run_folder).rglob("*") if p.suffix in (".tif", ".csv"))


def _register() -> None:
    """Describe the pipeline to every entry point (app.pipelines.registry)."""
    from app.pipelines.brightfield.params import SegmentParams, TrainParams
    from app.pipelines.contract import Layer, PipelineSpec, Sample, TrainerSpec
    from app.pipelines.registry import register

    register(PipelineSpec(
        name="brightfield",
        title="Brightfield: nuclei from label-free z-planes",
        description="A U-Net trained on fluorescence-derived labels segments and counts nuclei from brightfield "
                    "focal planes alone. Outputs a label image, per-nucleus measurements (CSV) and objects JSON.",
        params=SegmentParams,
        analyze_one=analyze_one,
        models={"brightfield": "brightfield"},
        default_models={"brightfield": "brightfield-sephace"},
        load=load,
        prepare_params=prepare,
        device_of=device_of,
        expand=expand,
        finish=finish,
        warm_modules=("app.pipelines.brightfield.predict", "app.core.images", "tifffile"),
        image_kinds=("brightfield-stack",),
        layers=(Layer("nuclei", "#00e5ff", 0),),
        sample=Sample("brightfield fields", "planes"),
        demo=demo_step,
        trainers={"brightfield": TrainerSpec(
            model_pipeline="brightfield", title="Brightfield U-Net (nuclei from z-planes)", params=TrainParams,
            train=train_from_sources,
            description="Learns nuclei from annotated brightfield z-stacks (annotations from the paired "
                        "fluorescence, e.g. `stagescope brightfield derive-labels`, or drawn by hand).")},
    ))


_register()
