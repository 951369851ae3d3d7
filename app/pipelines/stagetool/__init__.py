"""Stagetool: whole DAPI testis sections -> tubule stages, cell types, antigen profiles, Excel reports.

Method: Meikar, Majoral et al., Endocrinology 2023 (science.md section 2).  Everything Stagetool
lives here.  Modules: :mod:`.classes` (stages, cell types, markers, palette), :mod:`.layout`
(names in a results folder), :mod:`.phantom_layout` / :mod:`.phantom` / :mod:`.phantom_style` /
:mod:`.truth` (synthetic sections, other labs' styles, their truth files), :mod:`.models` (torchvision
Mask R-CNN / Faster R-CNN), :mod:`.dataset`, :mod:`.start` and :mod:`.train` (training from annotations,
phantoms or corrected results; random, fine-tuned or pretrained starts), :mod:`.uncertainty` (which
section to correct next), :mod:`.corrections` (simulated corrections for benches), :mod:`.loading`,
:mod:`.section` and :mod:`.predict` (tiles, TTA, merges), :mod:`.merge`, :mod:`.antigen`,
:mod:`.composition` and :mod:`.fitting` (the composition stager), :mod:`.curation`, :mod:`.tables`,
:mod:`.report_excel` / :mod:`.report_sheets` / :mod:`.per_tubule` (workbooks), :mod:`.batch` and
:mod:`.evaluate`.  Importing the package registers the pipeline; modules that import torch load
only when a job runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.core.errors import AnnotationError
from app.core.jobs import Job
from app.pipelines.registry import PipelineSpec, TrainerSpec, TrainingSource, register, training_images
from app.pipelines.stagetool.classes import CELL_TYPES, STAGES
from app.pipelines.stagetool.params import AnalyzeParams, TrainParams


def _analyze(project: Any, image_names: list[str], params: AnalyzeParams, models: dict[str, str]) -> Job[Path]:
    """Registry entry point: analyse project images into a new run folder (see batch.analyze_project)."""
    from app.pipelines.stagetool.batch import analyze_project

    return (yield from analyze_project(project, image_names, params, models))


@dataclass
class TubuleTrainParams(TrainParams):
    """Training parameters of a tubule model (``kind`` fixed, so the form does not offer it)."""

    kind: str = field(default="tubules", init=False, metadata={"help": "tubules (Mask R-CNN, 5 stages)"})


@dataclass
class CellTrainParams(TrainParams):
    """Training parameters of a cell model (``kind`` fixed, so the form does not offer it)."""

    kind: str = field(default="cells", init=False, metadata={"help": "cells (Faster R-CNN, 9 types)"})


def _trainer(kind: str) -> Any:
    """Registry trainer for ``kind``: stagetool.train.train on the chosen sources; returns the model folder."""

    def train_from_sources(sources: list[TrainingSource], params: TrainParams, out_dir: Path, resume: bool = False,
                           validation_fraction: float = 0.2) -> Job[Path]:
        import dataclasses

        from app.core.annotations import ImageAnnotations, check_categories  # scipy: kept off the CLI's start
        from app.pipelines.stagetool.dataset import Section, class_names
        from app.pipelines.stagetool.train import train

        values = {f.name: getattr(params, f.name) for f in dataclasses.fields(TrainParams) if f.init}
        params = TrainParams(**{**values, "kind": kind, "val_fraction": validation_fraction})
        images = training_images(sources)  # a run's corrected results hold tubules and cells together
        check_categories([ImageAnnotations(i.name, None, None, i.objects, source=str(i.image_path)) for i in images],
                         STAGES + CELL_TYPES)
        wanted = set(class_names(kind))
        sections = []
        for image in images:
            objects = [o for o in image.objects if o.category in wanted and (kind == "cells" or o.has_shape)]
            if objects:
                sections.append(Section(name=image.name, objects=objects, path=image.image_path))
        if not sections:
            raise AnnotationError(f"none of the chosen images has {kind} annotated"
                                  + (" with outlines" if kind == "tubules" else ""))
        yield from train([], out_dir, params, name=Path(out_dir).name, resume=resume, sections=sections,
                         data_description=", ".join(s.name for s in sections))
        return Path(out_dir)

    return train_from_sources


SPEC = register(PipelineSpec(
    name="stagetool",
    title="Stagetool: testis tubule stages and cell types",
    description="Whole DAPI testis cross-sections: tubules staged (I-V, VI-VIII, IX, X-XI, XII), nine cell types "
                "counted per tubule, antigen profiles per antibody channel, Excel report.",
    params=AnalyzeParams,
    model_pipelines=("stagetool-tubules", "stagetool-cells"),
    analyze=_analyze,
    image_kinds=("section", "fluorescence"),
    layers=("tubules", "cells"),
    trainers={
        "stagetool-tubules": TrainerSpec(
            model_pipeline="stagetool-tubules", title="Stagetool tubule stages (Mask R-CNN)",
            params=TubuleTrainParams, train=_trainer("tubules"),
            description="Learns tubule outlines and their stage (I-V, VI-VIII, IX, X-XI, XII) from DAPI sections."),
        "stagetool-cells": TrainerSpec(
            model_pipeline="stagetool-cells", title="Stagetool cell types (Faster R-CNN)",
            params=CellTrainParams, train=_trainer("cells"),
            description="Learns the nine cell types (Sertoli ... late elongating spermatid) from DAPI sections."),
    },
))
