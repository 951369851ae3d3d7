"""Stagetool: whole DAPI testis sections -> tubule stages, cell types, antigen profiles, Excel reports.

Method: Meikar, Majoral et al., Endocrinology 2023 (science.md section 2).  Modules:
:mod:`.models` (torchvision Mask R-CNN / Faster R-CNN), :mod:`.dataset` and :mod:`.train`
(training from annotations or phantoms), :mod:`.predict` (tiles, TTA, merges), :mod:`.merge`,
:mod:`.antigen`, :mod:`.curation`, :mod:`.tables`, :mod:`.batch` and :mod:`.evaluate`.
Importing the package registers the pipeline; heavy modules load only when a job runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from app.core.jobs import Job
from app.pipelines.registry import PipelineSpec, register
from app.pipelines.stagetool.params import AnalyzeParams


def _analyze(project: Any, image_names: list[str], params: AnalyzeParams, models: dict[str, str]) -> Job[Path]:
    """Registry entry point: analyse project images into a new run folder (see batch.analyze_project)."""
    from app.pipelines.stagetool.batch import analyze_project

    return (yield from analyze_project(project, image_names, params, models))


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
))
