"""A section's reports and a batch's workbook, from the files the runner's items leave (no loop of its own).

Each section folder (``<out>/<section>/``, written by :func:`app.pipelines.stagetool.analyze_one`
through app.pipelines.runner, like every pipeline's items) holds ``predictions.json`` (raw
predictions), ``objects.json`` (after curation edits), ``summary.json``, ``tubules.csv``,
``cells.csv`` and ``<section>.xlsx`` (:func:`write_section_outputs`); ``batch.xlsx`` and
``batch_summary.json`` pool the finished sections (:func:`write_batch_outputs`).  Also: which
files of a folder are sections (:func:`section_files`) and the checks made before models load.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from app.core.atomic import atomic_write_json
from app.core.errors import ImageError, UserError
from app.core.images import list_images, open_image
from app.core.outputs import save_report_text
from app.core.results import read_objects, write_objects
from app.pipelines.stagetool import curation, tables
from app.pipelines.stagetool.layout import (
    BATCH_WORKBOOK, EVALUATION_FILE, OBJECTS_FILE, PIPELINE, POOLED, PREDICTIONS_FILE, SUMMARY_FILE,
)
from app.pipelines.stagetool.params import AnalyzeParams
from app.pipelines.stagetool.predict import resolve_channels
from app.pipelines.stagetool.report_excel import write_batch_workbook, write_section_workbook

def report_context(section_dir: Path, context: dict | None = None) -> dict:
    """Run id and group (animal, condition) a section's reports carry: as given, else as its summary.json
    recorded them, else the id in the run folder's run.json."""
    found: dict = {"run_id": None, "group": None}
    if (section_dir / SUMMARY_FILE).exists():
        old = json.loads((section_dir / SUMMARY_FILE).read_text())
        found.update({k: old.get(k) for k in found})
    if found["run_id"] is None and (section_dir.parent / "run.json").exists():
        found["run_id"] = json.loads((section_dir.parent / "run.json").read_text()).get("id")
    found.update({k: v for k, v in (context or {}).items() if v is not None})
    return found


def write_section_outputs(section_dir: str | Path, edits: Sequence[dict] = (), evaluation: dict | None = None,
                          context: dict | None = None, force: bool = False) -> dict:
    """From ``predictions.json`` and the edits: objects.json, summary.json, CSV tables and the workbook
    (``context``: run id and group, see :func:`report_context`).

    A CSV table or workbook the user changed is kept and the new one gets a versioned name, unless ``force``.
    """
    section_dir = Path(section_dir)
    raw = read_objects(section_dir / PREDICTIONS_FILE)
    curated = curation.apply(raw, edits)
    write_objects(section_dir / OBJECTS_FILE, curated["image"], PIPELINE, curated["layers"], curated["meta"])
    summary = tables.summarise(curated)
    summary.update({k: v for k, v in report_context(section_dir, context).items() if v is not None})
    atomic_write_json(section_dir / SUMMARY_FILE, summary)
    tubule_rows, cell_rows = tables.tubule_rows(curated), tables.cell_rows(curated)
    save_report_text(section_dir / "tubules.csv", tables.rows_to_csv(tubule_rows), force)
    save_report_text(section_dir / "cells.csv", tables.rows_to_csv(cell_rows), force)
    if evaluation is None and (section_dir / EVALUATION_FILE).exists():
        evaluation = json.loads((section_dir / EVALUATION_FILE).read_text())
    write_section_workbook(section_dir / f"{curated['image']}.xlsx", summary, tubule_rows, cell_rows, evaluation,
                           force=force)
    return summary


def write_batch_outputs(out: Path, names: Sequence[str], force: bool = False) -> Path | None:
    """The batch workbook pooling the finished sections' summaries (None when none finished); returns its path.

    A batch workbook the user changed is kept and the new one gets a versioned name, unless ``force``.
    """
    names = [n for n in names if (out / n / SUMMARY_FILE).exists()]
    summaries = [json.loads((out / n / SUMMARY_FILE).read_text()) for n in names]
    if not summaries:
        return None
    evaluations = {n: json.loads((out / n / EVALUATION_FILE).read_text()) for n in names
                   if (out / n / EVALUATION_FILE).exists()}
    if evaluations and (out / EVALUATION_FILE).exists():  # pooled over the sections by evaluate_results
        evaluations[POOLED] = json.loads((out / EVALUATION_FILE).read_text())
    pooled = tables.pool_summaries(summaries)
    atomic_write_json(out / "batch_summary.json", pooled)

    tubule_rows = [tables.tubule_rows(read_objects(out / n / OBJECTS_FILE)) if (out / n / OBJECTS_FILE).exists()
                   else [] for n in names]
    return write_batch_workbook(out / BATCH_WORKBOOK, summaries, pooled, evaluations or None, tubule_rows,
                                force=force)


def section_files(paths: Sequence[str | Path]) -> list[Path]:
    """Section files from command-line paths: folders expand to their images, truth and label files left out."""
    files: list[Path] = []
    for path in map(Path, paths):
        found = list_images(path)
        if path.is_dir():
            found = [f for f in found if not _looks_like_truth(f)]
        files.extend(found)
    if not files:
        raise UserError("no section images given")
    return files


def _looks_like_truth(path: Path) -> bool:
    name = path.name.lower()
    return any(tag in name for tag in ("truth", "label", "mask", "tubules", "cells"))


def check_sections(sections: Sequence[tuple[str, Path]], params: AnalyzeParams) -> None:
    """Before any model is loaded: each section is 2-D and has the DAPI and antibody channels asked for.

    A wrong ``--dapi``/``--antibody`` channel or a z-stack is the user's to fix for the whole batch,
    so it is refused at once (ImageError naming the file and what it has); a file that cannot be
    opened is left to fail on its own in the batch while the other sections go on.
    """
    antibodies, dapi = params.antibody_list(), params.dapi_channel()
    for _, path in sections:
        try:
            image = open_image(path)
        except UserError:
            continue
        with image:
            info = image.info
            if info.n_planes > 1:
                raise ImageError(f"{path}: Stagetool analyses 2-D sections, this file has {info.n_planes} z-planes "
                                 f"(axes {info.axes}, shape {tuple(info.shape)}); save one plane or a projection "
                                 "per section")
            resolve_channels(image, dapi, antibodies, str(path))


