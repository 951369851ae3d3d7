"""Excel reports: every sheet present, numbers (not text) equal to the JSON results, charts, frozen headers."""

from __future__ import annotations

import json

import pytest
from openpyxl import load_workbook

from app.pipelines.stagetool.classes import CELL_TYPES, STAGES
from app.pipelines.stagetool import curation, tables
from app.pipelines.stagetool.report_excel import write_batch_workbook, write_section_workbook


def section_doc(name: str = "s1", synthetic: bool = True) -> dict:
    """A small curated-style document: 3 tubules (one excluded later), 6 cells, one antibody."""
    tubules = [
        {"id": 1, "class": STAGES[0], "score": 0.9, "box": [0, 0, 100, 100], "polygon": [[0, 0], [100, 0], [100, 100]],
         "centroid": [50.0, 50.0], "area_px": 7000, "excluded": False},
        {"id": 2, "class": STAGES[4], "score": 0.8, "box": [200, 0, 300, 100], "polygon": [], "centroid": [50, 250],
         "area_px": 6000, "excluded": False},
        {"id": 3, "class": STAGES[2], "score": 0.7, "box": [400, 0, 500, 100], "polygon": [], "centroid": [50, 450],
         "area_px": 5000, "excluded": False},
    ]

    def cell(i, kind, tubule, mean):
        return {"id": i, "class": CELL_TYPES[kind], "score": 0.95, "box": [i, i, i + 10, i + 10], "centroid": [i + 5, i + 5],
                "tubule_id": tubule, "antigen": {"SOX9": {"mean": mean, "q": mean}}}

    cells = [cell(1, 0, 1, 500.0), cell(2, 0, 1, 50.0), cell(3, 1, 1, 500.0), cell(4, 4, 2, 500.0),
             cell(5, 0, 3, 500.0), cell(6, 8, None, 500.0)]
    meta = {"image_path": f"/data/{name}.tif", "shape": [1000, 2000], "pixel_size_um": 0.5, "synthetic": synthetic,
            "models": {"tubules": {"name": "tub", "weights_sha256": "ab" * 32}, "cells": {"name": "cel", "weights_sha256": "cd" * 32}},
            "params": {"tta": "full", "positive_fraction": 0.65},
            "antibodies": [{"name": "SOX9", "channel": 1, "threshold": 100.0, "threshold_source": "given by the user"}],
            "timing_s": {"total": 12.5}}
    return {"schema_version": 1, "image": name, "pipeline": "stagetool", "layers": {"tubules": tubules, "cells": cells},
            "meta": meta}


def sheet_rows(ws):
    return [list(r) for r in ws.iter_rows(values_only=True)]


def test_section_workbook_matches_json(tmp_path):
    edits = [{"action": "exclude_tubule", "image": "s1", "id": 3, "value": True},
             {"action": "retype_cell", "image": "s1", "id": 2, "value": CELL_TYPES[1]}]
    doc = curation.apply(section_doc(), edits)
    summary = tables.summarise(doc)
    # hand-computed: tubule 3 excluded -> stages I-V: 1, XII: 1; cell 5 (in tubule 3) and cell 6 (no tubule) unstaged
    assert summary["stage_counts"][STAGES[0]] == 1 and summary["stage_counts"][STAGES[2]] == 0
    assert summary["n_excluded"] == 1 and summary["n_cells_staged"] == 4
    assert summary["stage_by_type"][STAGES[0]][CELL_TYPES[1]] == 2  # cell 3 plus the retyped cell 2
    sox9 = summary["antigen"]["SOX9"]
    assert sox9["percent"][STAGES[0]][CELL_TYPES[0]] == 100.0  # cell 1 only (cell 2 was retyped)
    assert sox9["percent"][STAGES[0]][CELL_TYPES[1]] == 50.0  # cell 3 positive, cell 2 (mean 50) not
    json_summary = json.loads(json.dumps(summary))  # what summary.json holds

    path = write_section_workbook(tmp_path / "s1.xlsx", json_summary, tables.tubule_rows(doc), tables.cell_rows(doc))
    wb = load_workbook(path)
    assert wb.sheetnames == ["Summary", "Tubules", "Cells", "Stage x cell type", "Cells per tubule",
                             "Antigen profiles", "Methods"]
    for ws in wb.worksheets:
        assert ws.freeze_panes == "A2"

    rows = sheet_rows(wb["Tubules"])
    header = rows[0]
    assert header[:5] == ["id", "stage", "score (0-1)", "area (px²)", "area (µm²)"]
    by_id = {r[0]: dict(zip(header, r)) for r in rows[1:]}
    assert by_id[3]["excluded"] is True
    assert by_id[1]["area (µm²)"] == pytest.approx(7000 * 0.25)
    assert by_id[1][CELL_TYPES[1]] == 2 and isinstance(by_id[1][CELL_TYPES[1]], int)

    rows = sheet_rows(wb["Cells"])
    header = rows[0]
    cells = {r[0]: dict(zip(header, r)) for r in rows[1:]}
    assert cells[2]["cell type"] == CELL_TYPES[1] and cells[2]["SOX9 positive"] is False
    assert cells[1]["SOX9 mean"] == 500.0 and cells[5]["stage"] is None

    rows = sheet_rows(wb["Stage x cell type"])
    assert rows[0][1:6] == list(STAGES)
    table = {r[0]: r[1:6] for r in rows[1:1 + len(CELL_TYPES)]}
    for t in CELL_TYPES:
        assert table[t] == [json_summary["stage_by_type"][s][t] for s in STAGES]
    assert len(wb["Stage x cell type"]._charts) == 1

    ws = wb["Antigen profiles"]
    assert len(ws._charts) == 1
    rows = sheet_rows(ws)
    start = next(i for i, r in enumerate(rows) if r[0] and str(r[0]).startswith("SOX9 % positive"))
    block = {r[0]: r[1:6] for r in rows[start + 1:start + 1 + len(CELL_TYPES)]}
    for t in CELL_TYPES:
        assert block[t] == [None if sox9["percent"][s][t] is None else pytest.approx(sox9["percent"][s][t] / 100)
                            for s in STAGES]  # fractions shown as 0.0%

    summary_rows = {r[0]: r[1] for r in sheet_rows(wb["Summary"]) if r and r[0]}
    assert summary_rows["tubules used"] == 2 and summary_rows["cells (all)"] == 6
    assert "SYNTHETIC" in summary_rows["note"]
    methods = [r for r in sheet_rows(wb["Methods"])]
    text = " ".join(str(v) for r in methods for v in r if v is not None)
    assert "ab" * 32 in text and "retype_cell" in text and "SYNTHETIC" in text and "65%" in text
    stage_rows = [r for r in methods if r and r[0] == "tubule stage"]
    assert stage_rows and "(the paper)" in stage_rows[0][1]  # these results carry no stage_from: the mask vote


def test_methods_say_how_tubules_were_staged(tmp_path):
    """A run staged from the cells (stage_from auto) must not claim the paper's mask vote alone."""
    doc = curation.apply(section_doc("a", synthetic=True), [])
    doc["meta"]["params"]["stage_from"] = "auto"
    summary = json.loads(json.dumps(tables.summarise(doc)))
    path = write_section_workbook(tmp_path / "a.xlsx", summary, tables.tubule_rows(doc), tables.cell_rows(doc))
    rows = {r[0]: r[1] for r in sheet_rows(load_workbook(path)["Methods"]) if r and r[0]}
    assert "composition stager" in rows["tubule stage"] and "at least 20 cells" in rows["tubule stage"]


def test_evaluation_sheet_and_batch_workbook(tmp_path):
    docs = [curation.apply(section_doc(n, synthetic=True), []) for n in ("a", "b")]
    summaries = [json.loads(json.dumps(tables.summarise(d))) for d in docs]
    evaluation = {"synthetic": True, "tubules": {"pixel_accuracy": 0.9, "mean_accuracy": 0.8, "mean_iou": 0.7, "fw_iou": 0.85},
                  "cells": {"AP50": 80.0, "AP75": 60.0, "mean_precision": 0.97, "mean_sensitivity": 0.9, "mean_f1": 0.93,
                            "per_class": {t: {"precision": 1.0, "sensitivity": 0.5, "f1": 0.667} for t in CELL_TYPES}},
                  "stages": {"n_tubules": 10, "agree": 9, "disagree": 1, "missed": 0, "agreement": 0.9}}
    path = write_section_workbook(tmp_path / "a.xlsx", summaries[0], tables.tubule_rows(docs[0]), tables.cell_rows(docs[0]),
                                  evaluation)
    wb = load_workbook(path)
    rows = {r[0]: r[1] for r in sheet_rows(wb["Evaluation"]) if r and r[0]}
    assert rows["tubules mean_iou"] == 0.7 and rows["cells AP50 (%)"] == 80.0 and rows["whole-section stage agree"] == 9

    pooled = tables.pool_summaries(summaries)
    assert pooled["cell_counts"][CELL_TYPES[0]] == 2 * summaries[0]["cell_counts"][CELL_TYPES[0]]
    path = write_batch_workbook(tmp_path / "batch.xlsx", summaries, pooled, {"a": evaluation})
    wb = load_workbook(path)
    assert {"Sections", "Stage x cell type", "Antigen profiles", "Methods", "Evaluation"} <= set(wb.sheetnames)
    rows = sheet_rows(wb["Sections"])
    header = rows[0]
    sections = {r[0]: dict(zip(header, r)) for r in rows[1:3]}
    assert sections["a"]["cells"] == 6 and sections["b"][f"tubules {STAGES[0]}"] == 1
    total = rows[3]
    assert total[0] == "all sections" and total[3] == 6  # 3 tubules used in each section
    pooled_rows = {r[0]: r[1:6] for r in sheet_rows(wb["Stage x cell type"])[1:1 + len(CELL_TYPES)]}
    assert pooled_rows[CELL_TYPES[0]][0] == 2 * summaries[0]["stage_by_type"][STAGES[0]][CELL_TYPES[0]]
    sox9 = pooled["antigen"]["SOX9"]["percent"][STAGES[0]][CELL_TYPES[0]]
    ws = sheet_rows(wb["Antigen profiles"])
    start = next(i for i, r in enumerate(ws) if r[0] and str(r[0]).startswith("SOX9 % positive"))
    assert ws[start + 1][1] == pytest.approx(sox9 / 100)
