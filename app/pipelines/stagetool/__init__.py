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

from app.core.errors import AnnotationError, UserError
from app.core.jobs import Job
from app.pipelines.contract import Item, Layer, PipelineSpec, Sample, TrainerSpec
from app.pipelines.registry import TrainingSource, register, training_images
from app.pipelines.stagetool.classes import CELL_TYPES, STAGES, STAGE_COLOURS
from app.pipelines.stagetool.layout import EVALUATION_FILE
from app.pipelines.stagetool.params import PREDICTION_PARAMS, AnalyzeParams, TrainParams

DEMO_MODELS = {"tubules": "stagetool-tubules-demo", "cells": "stagetool-cells-demo"}  # as loading.DEMO_MODELS


def expand(inputs: Any) -> list[Item]:
    """Section files as ``stagetool analyze`` takes them (truth and label files in folders left out)."""
    from app.pipelines.runner import image_name
    from app.pipelines.stagetool.batch import section_files

    return [Item(image_name(p), (str(p.resolve()),)) for p in section_files(list(inputs))]


def check(items: Any, params: AnalyzeParams) -> None:
    """Before any model loads: valid parameters, 2-D sections with the channels asked for (project names win)."""
    from app.pipelines.stagetool.batch import check_sections

    params.validate()
    check_sections([(i.name, Path(i.sources[0])) for i in items if not i.meta.get("channel_names")], params)


def load(folders: dict[str, str], params: AnalyzeParams) -> dict[str, Any]:
    """The tubule and cell networks (once per process or worker), torch threads as asked."""
    from app.core.device import use_threads
    from app.pipelines.stagetool.loading import load_model

    use_threads(int(params.threads or 0))
    return {kind: load_model(folders[kind], kind, params.device) for kind in ("tubules", "cells")}


def device_of(loaded: Any) -> str:
    from app.pipelines.runner import device_label

    return device_label(loaded["tubules"].device)


def analyze_one(item: Item, folder: Path, loaded: Any, params: AnalyzeParams) -> Job[dict]:
    """One section into ``folder``: predictions.json, objects.json (edits applied), summary.json, CSV tables,
    ``<section>.xlsx``.  ``item.meta``: the project's pixel size and channel names (they win over the file's),
    its group (written into the reports) and ``synthetic`` (say so in the reports; None = ask the file)."""
    from app.core.edits import edits_for_image, read_edits
    from app.pipelines.stagetool.batch import write_section_outputs
    from app.pipelines.stagetool.predict import analyze_section

    metadata = {k: v for k, v in item.meta.items() if k in ("pixel_size_um", "channel_names")}
    (folder.parent / EVALUATION_FILE).unlink(missing_ok=True)  # the pooled evaluation was of older predictions
    yield from analyze_section(item.sources[0], folder, loaded["tubules"], loaded["cells"], params, name=item.name,
                               synthetic=item.meta.get("synthetic"), metadata=metadata or None)
    edits = edits_for_image(read_edits(folder.parent), item.name)  # edits.json of the run or output folder
    summary = write_section_outputs(folder, edits, context={"group": item.meta.get("group")})
    return {"n_tubules": summary.get("n_tubules"), "n_cells": summary.get("n_cells")}


def demo(project: Any, folder: Path) -> list[str]:
    """For ``./run.sh``: analyse the sample project's testis sections with the shipped demo models.

    Returns the files a user should open (the batch workbook, copied into the project's reports).
    """
    import shutil

    from app.core.jobs import ConsoleProgress, run
    from app.pipelines.stagetool.classes import MARKERS
    from app.pipelines.stagetool.layout import BATCH_WORKBOOK

    entries = [entry for entry in project.images() if "testis" in (entry.group or "").lower()]
    if not entries:
        return []
    names = [entry.name for entry in entries]
    markers = [c for c in (entries[0].channels or []) if c in MARKERS]
    params = AnalyzeParams(antibodies=",".join(f"{m}={m}" for m in markers), threads=1)
    run_folder = run(SPEC.analyze(project, names, params), ConsoleProgress())
    produced = [str(run_folder / BATCH_WORKBOOK)] if (run_folder / BATCH_WORKBOOK).exists() else []
    if produced:
        report = project.report_path("stagetool-sample.xlsx")
        shutil.copy2(run_folder / BATCH_WORKBOOK, report)
        produced.append(str(report))
    return produced


def finish(out: Path, names: Any, params: AnalyzeParams, force: bool = False, skipped: Any = ()) -> dict[str, Path]:
    """Reports of the sections a rerun skipped, and of any with edits, rewritten with the folder's current edits
    (new edits need no new analysis); then the batch workbook (batch.xlsx) and batch_summary.json."""
    from app.core.edits import edits_for_image, read_edits
    from app.pipelines.stagetool.batch import write_batch_outputs, write_section_outputs

    edits = read_edits(Path(out))
    for name in names:
        if name in skipped or edits_for_image(edits, name):
            write_section_outputs(Path(out) / name, edits_for_image(edits, name), force=force)
    workbook = write_batch_outputs(Path(out), list(names), force)
    return {"workbook": workbook} if workbook else {}


@dataclass
class TubuleTrainParams(TrainParams):
    """Training parameters of a tubule model (``kind`` fixed, so the form does not offer it)."""

    kind: str = field(default="tubules", init=False, metadata={"help": "tubules (Mask R-CNN, 5 stages)"})


@dataclass
class CellTrainParams(TrainParams):
    """Training parameters of a cell model (``kind`` fixed, so the form does not offer it)."""

    kind: str = field(default="cells", init=False, metadata={"help": "cells (Faster R-CNN, 9 types)"})


def _tubule_model_of(sources: list[TrainingSource]) -> str | None:
    """The tubule model that analysed the first corrected run among ``sources`` (its stager is the refit's start)."""
    from app.pipelines.stagetool.start import models_of_results

    for source in sources:
        if source.kind == "corrected" and source.run_folder is not None:
            try:
                return models_of_results(source.run_folder).get("tubules")
            except UserError:
                continue
    return None


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
        sections, outlines = [], []
        corrected = {s.image for s in sources if s.kind == "corrected"}  # the loop's data: the refit is for them
        for image in images:
            objects = [o for o in image.objects if o.category in wanted and (kind == "cells" or o.has_shape)]
            if objects:
                sections.append(Section(name=image.name, objects=objects, path=image.image_path,
                                        pixel_size_um=image.pixel_size_um))
                outlines.append([o for o in image.objects if o.category in STAGES and o.has_shape]
                                if image.name in corrected else [])
        if not sections:
            raise AnnotationError(f"none of the chosen images has {kind} annotated"
                                  + (" with outlines" if kind == "tubules" else ""))
        yield from train([], out_dir, params, name=Path(out_dir).name, resume=resume, sections=sections,
                         data_description=", ".join(s.name for s in sections))
        if kind == "cells":  # stages come from this model's cells: refit the stager on what it finds in corrected runs
            from app.pipelines.stagetool.fitting import refit_for_cell_model

            yield from refit_for_cell_model(out_dir, sections, outlines, _tubule_model_of(sources),
                                            params.device, params.threads)
        return Path(out_dir)

    return train_from_sources


SPEC = register(PipelineSpec(
    name="stagetool",
    title="Stagetool: testis tubule stages and cell types",
    description="Whole DAPI testis cross-sections: tubules staged (I-V, VI-VIII, IX, X-XI, XII), nine cell types "
                "counted per tubule, antigen profiles per antibody channel, Excel report.",
    params=AnalyzeParams,
    analyze_one=analyze_one,
    models={"tubules": "stagetool-tubules", "cells": "stagetool-cells"},
    default_models=DEMO_MODELS,
    load=load,
    load_key=("device", "threads"),
    resume_params=PREDICTION_PARAMS,
    device_of=device_of,
    expand=expand,
    check=check,
    finish=finish,
    redo_drops=(EVALUATION_FILE,),  # an evaluation describes the predictions it was made from
    warm_modules=("app.pipelines.stagetool.predict", "app.pipelines.stagetool.batch",
                  "app.pipelines.stagetool.report_excel"),
    image_kinds=("section", "fluorescence"),
    layers=(Layer("tubules", STAGE_COLOURS.get("IX", "#00ff00"), 0), Layer("cells", "#ff00ff", 1)),
    sample=Sample("testis sections", ""),
    demo=demo,
    quick_params={"tta": "off"},
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
