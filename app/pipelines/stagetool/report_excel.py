"""Excel workbooks (openpyxl) of Stagetool results, ready for a paper: numbers as numbers, units, charts.

A section workbook has the sheets Summary, Tubules, Cells, Stage x cell type, Antigen profiles
(bar charts like the paper's figures 17 and 19), Methods, and Evaluation when ground truth was
given.  A batch workbook has one row per section (Sections) and the pooled tables.  Inputs are
the JSON-able dicts of :mod:`app.pipelines.stagetool.tables` (summary, tubule rows, cell rows) and
:mod:`app.pipelines.stagetool.evaluate`, so the workbook shows exactly what the JSON results hold.

Workbooks are written in openpyxl's write-only mode (a section can have 50 000 cells) to a
temporary file that is renamed into place; one the user changed is kept (:mod:`app.core.outputs`).
Every sheet's header row is frozen, its columns are as wide as their content, and numbers carry
number formats: percentages are fractions shown as 0.0 %, scores 0.00, areas and intensities with
fixed decimals.  The "Cells per tubule" sheet gives the mean and SD of each cell type per tubule of
each stage; sections carry their group (animal or condition) and run id; Methods opens with a
paragraph a paper can quote.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from openpyxl import Workbook
from openpyxl.cell import WriteOnlyCell

from app import __version__
from app.pipelines.stagetool.params import MIN_CELLS
from app.pipelines.stagetool.report_sheets import (  # the sheet builders, shared by both workbooks
    ANTIGEN_RULE, SYNTHETIC_NOTE, WRAP, _antigen_sheet, _cells_per_tubule_sheet, _evaluation_sheet, _finish,
    _formatted, _header, _save, _sheet, _stage_type_sheet, _summary_sheet, _table, _value,
)

# ---------------------------------------------------------------------------------------- methods


MASK_VOTE = "weighted majority of the tile masks: class score x the mask's share of the tubule area (the paper)"
STAGE_METHODS = {
    "masks": MASK_VOTE,
    "cells": ("from the cell types found in the tubule: the tubule model card's composition stager (logistic "
              "regression on cell-type shares and spermatid elongation; Stagescope's addition to the paper)"),
    "auto": ("from the cell types found in the tubule (the tubule model card's composition stager: logistic "
             "regression on cell-type shares and spermatid elongation; Stagescope's addition to the paper) when "
             f"the tubule holds at least {MIN_CELLS} cells and the card has a stager; otherwise " + MASK_VOTE),
}



def _number(value: Any, digits: int = 2) -> str:
    return f"{value:.{digits}g}" if isinstance(value, float) else str(value)


def _model_phrase(model: dict[str, Any], what: str) -> str:
    """e.g. 'the Mask R-CNN (torchvision) model "tub" (backbone lite FPN; weights SHA-256 ab12...; trained on ...)'."""
    details = []
    if model.get("backbone"):
        details.append(f"backbone {model['backbone']}")
    if model.get("weights_sha256"):
        details.append(f"weights SHA-256 {str(model['weights_sha256'])[:12]}")
    if model.get("training_data"):
        details.append(f"trained on {str(model['training_data']).rstrip('.')}")
    architecture = model.get("architecture") or what
    extra = f" ({'; '.join(details)})" if details else ""
    return f"the {architecture} model \"{model.get('name') or 'unnamed'}\"{extra}"


def methods_paragraph(summaries: Sequence[dict[str, Any]]) -> str:
    """A Methods paragraph a paper can quote, built from the parameters, model cards and versions used."""
    first = summaries[0] if summaries else {}
    params, models = first.get("params", {}), first.get("models", {})
    version = first.get("app_version") or __version__
    n = len(summaries)
    pixel = first.get("pixel_size_um")
    text = [f"{'Each of the ' + str(n) + ' sections was' if n > 1 else 'The section was'} analysed with Stagescope "
            f"{version}, which implements the Stagetool method (Meikar, Majoral et al., Endocrinology 2023) with "
            "torchvision detection models" + (f", at a pixel size of {_number(pixel, 3)} µm." if pixel else ".")]
    tubules, cells = models.get("tubules", {}), models.get("cells", {})
    overlap = params.get("overlap")
    if tubules:
        tile = params.get("tubule_tile") or tubules.get("tile_size")
        tile_text = f" on {tile} px tiles" if tile else ("" if overlap is None else " on tiles")
        seams = f" overlapping by {overlap} px" if overlap is not None else ""
        score = params.get("tubule_score")
        text.append(f"Seminiferous tubules were segmented with {_model_phrase(tubules, 'tubule')}{tile_text}{seams}"
                    + (f", keeping masks with a class score of at least {_number(score)}" if score is not None else "")
                    + ".")
    if params.get("min_tubule_area_um2"):
        text.append(f"Tubules smaller than {_number(params['min_tubule_area_um2'], 4)} µm² were discarded.")
    text.append("The stage of each tubule was taken "
                + STAGE_METHODS.get(params.get("stage_from", "masks"), STAGE_METHODS["masks"]) + ".")
    if cells:
        tile = params.get("cell_tile") or cells.get("tile_size")
        tile_text = f" on {tile} px tiles" if tile else ""
        if params.get("tta", "off") == "off":
            how = (f"in one pass, keeping cells with a class score of at least {_number(params['single_score'])}"
                   if params.get("single_score") is not None else "in one pass")
        else:
            how = (f"at 0, 90, 180 and 270 degrees ({params['tta']} test-time augmentation), keeping a cell seen "
                   f"in at least {params.get('min_votes')} passes with a class score of at least "
                   f"{_number(params.get('cell_score'))} and taking the majority type")
        text.append(f"Cells were detected and typed with {_model_phrase(cells, 'cell')}{tile_text}, {how}; each "
                    "cell was assigned to the tubule that contains it.")
    antibodies = {a["name"]: a for s in summaries for a in s.get("antibodies", [])}
    if antibodies:
        fraction = params.get("positive_fraction", 0.65)
        listed = "; ".join(
            f"{name} (channel {a.get('channel')}, T = {_number(a.get('threshold'), 4)}"
            + (f", {a['threshold_source']}" if a.get("threshold_source") else "") + ")"
            for name, a in antibodies.items())
        text.append(f"Antibody channels: {listed}. " + ANTIGEN_RULE.format(fraction=fraction))
    excluded = sum(int(s.get("n_excluded") or 0) for s in summaries)
    edits = sum(int(s.get("edits_applied") or 0) for s in summaries)
    if excluded or edits:
        text.append(f"Before export, {edits} correction{'s' if edits != 1 else ''} were made by hand"
                    + (f" and {excluded} tubule{'s' if excluded != 1 else ''} excluded as damaged or cut "
                       "longitudinally (kept in the tubule and cell tables, left out of the stage and antigen "
                       "tables)" if excluded else "") + ".")
    text.append("Cells per tubule are given as mean ± SD over the tubules of each stage.")
    if any(s.get("synthetic") for s in summaries):
        text.append(SYNTHETIC_NOTE)
    return " ".join(text)


def _methods_sheet(wb: Workbook, summaries: Sequence[dict[str, Any]]) -> None:
    ws = _sheet(wb, "Methods", wide={1: 100})
    ws.append(_header(ws, ["item", "value", "detail"]))
    paragraph = WriteOnlyCell(ws.ws, value=methods_paragraph(summaries))
    paragraph.alignment = WRAP
    ws.append(["methods (text for a paper)", paragraph])
    ws.append([])
    first = summaries[0] if summaries else {}
    if any(s.get("synthetic") for s in summaries):
        ws.append(["data", SYNTHETIC_NOTE])
    ws.append(["software", f"Stagescope {first.get('app_version') or __version__}",
               "Stagetool method: Meikar, Majoral et al., Endocrinology 2023; torchvision detection models"])
    for kind, model in first.get("models", {}).items():
        ws.append([f"{kind} model", model.get("name"), model.get("weights_sha256")])
        for key in ("architecture", "backbone", "downsample", "training_data", "stager_data", "folder"):
            if model.get(key) is not None:
                ws.append([f"{kind} model {key}", _value(model[key])])
    for key, value in first.get("params", {}).items():
        ws.append([f"parameter {key}", _value(value)])
    fraction = first.get("params", {}).get("positive_fraction", 0.65)
    if first.get("antibodies"):
        ws.append(["antigen rule", ANTIGEN_RULE.format(fraction=fraction)])
    for s in summaries:
        for ab in s.get("antibodies", []):
            ws.append([f"antibody {ab['name']} ({s.get('section')})", _value(ab.get("threshold")),
                       f"channel {ab.get('channel')}; threshold {ab.get('threshold_source', '')}"])
    for s in summaries:
        ws.append([f"edits applied ({s.get('section')})", s.get("edits_applied", 0)])
        for edit in s.get("edits", []):
            ws.append(["edit", edit.get("action"), str({k: v for k, v in edit.items() if k != "action"})])
    ws.append(["tubule stage", STAGE_METHODS.get(first.get("params", {}).get("stage_from", "masks"), STAGE_METHODS["masks"])])
    ws.append(["excluded tubules", "kept in the Tubules and Cells sheets, left out of the stage and antigen tables"])



# -------------------------------------------------------------------------------------- workbooks


def write_section_workbook(path: str | os.PathLike[str], summary: dict[str, Any], tubule_rows: list[dict[str, Any]],
                           cell_rows: list[dict[str, Any]], evaluation: dict[str, Any] | None = None,
                           force: bool = False) -> Path:
    """One section's workbook (all sheets), written atomically; returns its path.

    A workbook the user changed at ``path`` is kept and the new one gets a versioned name unless ``force``.
    """
    wb = Workbook(write_only=True)
    _summary_sheet(wb, summary)
    _table(_sheet(wb, "Tubules"), tubule_rows, "no tubules found")
    _table(_sheet(wb, "Cells"), cell_rows, "no cells found")
    _stage_type_sheet(wb, summary, summary.get("section") or "section")
    _cells_per_tubule_sheet(wb, [("", tubule_rows)], summary["stages"], summary["cell_types"])
    thresholds = {a["name"]: a for a in summary.get("antibodies", [])}
    _antigen_sheet(wb, summary.get("antigen", {}), summary["stages"], summary["cell_types"],
                   summary.get("params", {}).get("positive_fraction", 0.65), thresholds)
    _methods_sheet(wb, [summary])
    if evaluation:
        _evaluation_sheet(wb, evaluation)
    return _save(_finish(wb), path, force)


def _group_blocks(summaries: Sequence[dict[str, Any]],
                  tubule_rows: Sequence[list[dict[str, Any]]]) -> list[tuple[str, list[dict[str, Any]]]]:
    """Tubule rows pooled over all sections, then per group when the sections come from several groups."""
    pairs = list(zip(summaries, tubule_rows))
    blocks = [("all sections", [r for _s, rows in pairs for r in rows])]
    groups = sorted({s.get("group") or "" for s in summaries})
    if len(groups) > 1:
        for group in groups:
            rows = [r for s, section_rows in pairs if (s.get("group") or "") == group for r in section_rows]
            blocks.append((f"group {group or '(none)'}", rows))
    return blocks


def write_batch_workbook(path: str | os.PathLike[str], summaries: list[dict[str, Any]], pooled: dict[str, Any],
                         evaluations: dict[str, dict[str, Any]] | None = None,
                         tubule_rows: Sequence[list[dict[str, Any]]] | None = None, force: bool = False) -> Path:
    """The batch workbook: one row per section (with group and run id), pooled stage x type table, cells per
    tubule (``tubule_rows``: each summary's :func:`tables.tubule_rows`, in the same order), antigen profiles,
    methods.

    Returns the path written: a versioned name when the user changed the workbook at ``path`` (unless ``force``).
    """
    wb = Workbook(write_only=True)
    ws = _sheet(wb, "Sections")
    stages, types = pooled["stages"], pooled["cell_types"]
    ws.append(_header(ws, ["section", "group", "run id", "tubules used", "tubules excluded",
                           *[f"tubules {s}" for s in stages], "cells", *[f"cells {t}" for t in types],
                           "analysis time (s)"]))
    for s in summaries:
        ws.append([s.get("section"), s.get("group"), s.get("run_id"), s["n_tubules_used"], s["n_excluded"],
                   *[s["stage_counts"][k] for k in stages], s["n_cells"], *[s["cell_counts"][k] for k in types],
                   _formatted(ws, s.get("timing_s", {}).get("total"), "0.0")])
    ws.append(_header(ws, ["all sections", None, None, pooled["n_tubules_used"], None,
                           *[pooled["stage_counts"][k] for k in stages], pooled["n_cells"],
                           *[pooled["cell_counts"][k] for k in types]]))
    if pooled.get("synthetic"):
        ws.append([SYNTHETIC_NOTE])
    _stage_type_sheet(wb, pooled, "all sections")
    if tubule_rows is not None and len(tubule_rows) != len(summaries):
        raise ValueError(f"{len(tubule_rows)} tubule tables for {len(summaries)} sections")
    _cells_per_tubule_sheet(wb, _group_blocks(summaries, tubule_rows) if tubule_rows else [], stages, types)
    _antigen_sheet(wb, pooled.get("antigen", {}), stages, types,
                   (summaries[0].get("params", {}) if summaries else {}).get("positive_fraction", 0.65), {})
    _methods_sheet(wb, summaries)
    if evaluations:
        ev = _sheet(wb, "Evaluation")
        keys = [("tubules", "pixel_accuracy"), ("tubules", "mean_iou"), ("cells", "AP50"), ("cells", "AP75"),
                ("cells", "mean_precision"), ("cells", "mean_sensitivity"), ("stages", "agreement")]
        ev.append(_header(ev, ["section", *[f"{a} {b}" for a, b in keys]]))
        for name, evaluation in evaluations.items():
            ev.append([name, *[_value(evaluation.get(a, {}).get(b)) for a, b in keys]])
        ev.append(["measured on synthetic phantom sections, which are easier than tissue"])
        for evaluation in evaluations.values():
            if (evaluation.get("n_sections") or 1) > 1:  # pooled over sections: the full tables
                _evaluation_sheet(wb, evaluation, "Evaluation pooled")
                break
    return _save(_finish(wb), path, force)
