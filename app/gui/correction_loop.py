"""The correct -> train -> re-run loop without widgets: what to train on, from which model, and how long.

"Train on my corrections" starts from the run shown: its corrected sections are the training data,
the model that made its predictions is the starting point (fine-tuning), and the model of the layer
the user corrected most is the one to train.  Afterwards the new model re-runs the rest of the
project, and the corrected sections, so old and new can be compared with the corrections
(:mod:`app.pipelines.stagetool.agreement`).  No Qt: app/gui/loop_controller.py shows this.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.core.edits import ACTION_LAYERS, edits_for_image, read_edits
from app.core.errors import UserError
from app.pipelines.registry import TrainingSource

# a trainer's params field that starts training from another model's weights (the Stagetool trainer's)
FINE_TUNE_FIELDS = ("init_from",)
LAYER_TRAINERS = {"tubules": "stagetool-tubules", "cells": "stagetool-cells"}
FINE_TUNE_LR = 2e-4  # bench/adaptation.py fine-tunes the demo models at this rate (random weights: 1e-3)
RECIPE_KEYS = ("backbone", "crop_size", "downsample")  # what a whole-network fine-tune must keep


@dataclass
class RetrainPlan:
    """What "Train on my corrections" presets in the training wizard, and what follows it."""

    run_folder: Path
    run_id: str
    pipeline: str  # the analysis pipeline of the run (re-runs use it again)
    images: list[str]  # the corrected sections
    model_pipeline: str  # the trainer to preset
    sources: list[TrainingSource]
    init_from: str  # folder of the model that made the predictions, or "" when it is not on this computer
    old_models: dict[str, str]  # layer -> model folder (or name) that made the run
    edits_per_layer: dict[str, int] = field(default_factory=dict)
    rest: list[str] = field(default_factory=list)  # project images without corrections in this run
    starts: dict[str, str] = field(default_factory=dict)  # trainer -> folder of the run's model of its layer, or ""

    def note(self, model_pipeline: str | None = None) -> str:
        """One line for the wizard: data and starting point (of ``model_pipeline``, default the preset one)."""
        init = self.starts.get(model_pipeline, "") if model_pipeline else self.init_from
        start = (f"fine-tunes from the model that made these predictions ({Path(init).name})"
                 if init else "starts from random weights (the model that made these predictions "
                 "is not in your model library)")
        counts = ", ".join(f"{n} {layer} edits" for layer, n in self.edits_per_layer.items() if n)
        return f"Training on the corrections of run {self.run_id} ({len(self.images)} section(s); {counts}); {start}."


def model_folder(reference: Any) -> str:
    """The folder (or else the name) of a model as run.json records it."""
    if isinstance(reference, dict):
        folder = reference.get("folder")
        if folder and Path(folder).is_dir():
            return str(folder)
        return str(reference.get("name") or "")
    return str(reference or "")


def plan_retraining(project: Any, run: Any) -> RetrainPlan:
    """The plan for a run; UserError when it has no corrections yet or no trainer fits its layers."""
    from app.gui.run_files import base_objects_file

    edits = read_edits(run.folder)
    if not edits:
        raise UserError(f"run {run.id} has no corrections yet: restage, retype, add or draw in the viewer first")
    images = [image for image in run.results if edits_for_image(edits, image)]
    per_layer: dict[str, int] = {}
    for edit in edits:
        layer = edit.get("layer") or ACTION_LAYERS[edit["action"]]
        per_layer[layer] = per_layer.get(layer, 0) + 1
    trainable = [layer for layer in ("tubules", "cells") if per_layer.get(layer)]
    if not trainable or not images:
        raise UserError(f"run {run.id}: no trainable corrections (tubules or cells) found")
    layer = max(trainable, key=lambda name: per_layer[name])  # ties: tubules, listed first
    models = run.models if isinstance(run.models, dict) else {}
    old = {name: model_folder(models.get(name)) for name in ("tubules", "cells") if models.get(name)}
    sources = []
    for image in images:
        path = base_objects_file(run, image)
        if path is not None:
            sources.append(TrainingSource("corrected", image, path, Path(run.folder), _image_path(project, image)))
    rest = [entry.name for entry in project.images() if entry.name not in images] if project is not None else []
    starts = {LAYER_TRAINERS[name]: folder if folder and Path(folder).is_dir() else "" for name, folder in old.items()}
    return RetrainPlan(Path(run.folder), run.id, run.pipeline, images, LAYER_TRAINERS[layer], sources,
                       starts.get(LAYER_TRAINERS[layer], ""), old, per_layer, rest, starts)


def _image_path(project: Any, image: str) -> Path | None:
    try:
        return project.image_path(image) if project is not None else None
    except UserError:
        return None


def preset_values(params_class: Any, init_from: str) -> tuple[dict[str, Any], str]:
    """Form values the plan sets on a trainer's params, and a note when it cannot fine-tune.

    Fine-tuning keeps the start model's network, so its recipe's backbone, crop size and scale come
    with it, at the fine-tuning learning rate (bench/adaptation.py's); a pretrained-weights start
    is cleared (one start at a time).
    """
    names = {f.name for f in dataclasses.fields(params_class)} if dataclasses.is_dataclass(params_class) else set()
    field_name = next((name for name in FINE_TUNE_FIELDS if name in names), None)
    if field_name is None:
        return {}, "this trainer cannot start from another model: training starts from random weights"
    values: dict[str, Any] = {field_name: init_from}
    if not init_from:
        return values, ""
    values.update({k: v for k, v in start_recipe(init_from).items() if k in names})
    if "lr" in names:
        values["lr"] = FINE_TUNE_LR
    if "pretrained" in names:
        values["pretrained"] = ""
    return values, ""


def start_recipe(folder: str) -> dict[str, Any]:
    """The network settings (backbone, crop size, scale) the start model was trained with, from its card."""
    from app.core.modelcard import load_model_card

    try:
        recipe = (load_model_card(folder).training or {}).get("recipe") or {}
    except UserError:
        return {}
    return {key: recipe[key] for key in RECIPE_KEYS if recipe.get(key) is not None}


def run_params(spec: Any, run: Any) -> Any:
    """The analysis parameters a run was made with, as the pipeline's params (unknown keys dropped)."""
    params_class = spec.params
    names = {f.name for f in dataclasses.fields(params_class) if f.init}
    return params_class(**{k: v for k, v in (run.parameters or {}).items() if k in names})


def rerun_models(plan: RetrainPlan, model_pipeline: str, new_model: Path) -> dict[str, str]:
    """The models for a re-run: the new model for the trained layer, the run's own for the others."""
    models = dict(plan.old_models)
    layer = next(name for name, trainer in LAYER_TRAINERS.items() if trainer == model_pipeline)
    models[layer] = str(new_model)
    return models


def corrected_documents(run: Any, images: list[str]) -> dict[str, dict[str, Any]]:
    """image -> the run's predictions with its edits applied (the reference of the comparison)."""
    from app.core.edits import apply_edits

    edits = read_edits(run.folder)
    return {image: apply_edits(doc, edits_for_image(edits, image)) for image, doc in raw_documents(run, images).items()}


def raw_documents(run: Any, images: list[str]) -> dict[str, dict[str, Any]]:
    """image -> a run's predictions as the model made them (no edits)."""
    from app.core.results import read_objects
    from app.gui.run_files import base_objects_file

    out = {}
    for image in images:
        path = base_objects_file(run, image)
        if path is not None:
            out[image] = read_objects(path)
    return out


def compare_old_and_new(old_run: Any, new_run: Any, images: list[str]) -> list[dict[str, Any]]:
    """Agreement with the corrections of the old run's and the new run's predictions on ``images``."""
    from app.pipelines.stagetool.agreement import compare_runs

    return compare_runs(corrected_documents(old_run, images), raw_documents(old_run, images),
                        raw_documents(new_run, images))


def section_doubts(run: Any, images: list[str] | None = None) -> dict[str, dict[str, Any]]:
    """image -> uncertainty record (``score`` 0..1: correct the highest first) of a Stagetool run's sections.

    The record written at analysis time (summary.json) is used as it is; a section the user has
    corrected since is scored again with the edits applied, so corrected objects count as sure.
    """
    if getattr(run, "pipeline", None) != "stagetool":
        return {}
    import json

    from app.core.edits import apply_edits
    from app.gui.run_files import base_objects_file
    from app.pipelines.stagetool.layout import SUMMARY_FILE
    from app.pipelines.stagetool.uncertainty import section_uncertainty

    edits = read_edits(run.folder) if (Path(run.folder) / "edits.json").exists() else []
    out = {}
    for image in run.results if images is None else [i for i in images if i in run.results]:
        path = base_objects_file(run, image)
        if path is None:
            continue
        mine = edits_for_image(edits, image)
        record = None
        if not mine and (path.parent / SUMMARY_FILE).is_file():
            try:
                record = json.loads((path.parent / SUMMARY_FILE).read_text()).get("uncertainty")
            except (OSError, ValueError):
                record = None
        if record is None:
            from app.core.results import read_objects

            try:
                record = section_uncertainty(apply_edits(read_objects(path), mine))
            except (UserError, OSError, ValueError):
                continue
        out[image] = record
    return out
