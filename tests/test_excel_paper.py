"""The workbook a reviewer accepts: widths, number formats, cells per tubule (mean ± SD), group and run id,
and a Methods paragraph; read back with openpyxl."""

from __future__ import annotations

import json

import numpy as np
import pytest
from openpyxl import load_workbook

from app.pipelines.stagetool.classes import CELL_TYPES, STAGES
from app.pipelines.stagetool import curation, tables
from app.pipelines.stagetool.report_excel import write_batch_workbook, write_section_workbook

from test_excel import section_doc, sheet_rows


def _summary(doc: dict, **context) -> dict:
    return {**json.loads(json.dumps(tables.summarise(doc))), **context}


def test_section_workbook_has_widths_formats_and_cells_per_tubule(tmp_path):
    doc = curation.apply(section_doc("s1"), [{"action": "exclude_tubule", "image": "s1", "id": 3, "value": True}])
    summary = _summary(doc, run_id="20261203-run", group="mouse A")
    path = write_section_workbook(tmp_path / "s1.xlsx", summary, tables.tubule_rows(doc), tables.cell_rows(doc))
    wb = load_workbook(path)

    for name in ("Summary", "Tubules", "Cells", "Stage x cell type", "Cells per tubule", "Methods"):
        widths = wb[name].column_dimensions
        assert widths["A"].width and widths["A"].width >= 8, f"{name}: column A has no width"
    tubules = wb["Tubules"]
    header = [c.value for c in tubules[1]]
    assert tubules.column_dimensions["A"].width < tubules.column_dimensions["E"].width  # "id" vs "area (µm²)"
    score = tubules.cell(2, header.index("score (0-1)") + 1)
    assert score.number_format == "0.00" and isinstance(score.value, float)

    # percentages are fractions shown as 0.0%, never 94.8051948051948
    ws = wb["Stage x cell type"]
    start = next(r for r in range(1, ws.max_row + 1) if str(ws.cell(r, 1).value).startswith("% of the stage"))
    cell = ws.cell(start + 1, 2)  # Sertoli, stage I-V: 2 of tubule 1's 3 cells
    assert cell.number_format == "0.0%" and cell.value == pytest.approx(2 / 3)
    antigen = wb["Antigen profiles"]
    start = next(r for r in range(1, antigen.max_row + 1) if str(antigen.cell(r, 1).value).startswith("SOX9 %"))
    assert antigen.cell(start + 1, 2).number_format == "0.0%" and 0 <= antigen.cell(start + 1, 2).value <= 1

    summary_rows = {r[0]: r[1] for r in sheet_rows(wb["Summary"]) if r and r[0]}
    assert summary_rows["group"] == "mouse A" and summary_rows["run id"] == "20261203-run"

    rows = sheet_rows(wb["Cells per tubule"])
    header = rows[0]
    assert header[:2] == ["stage", "tubules (n)"]
    assert f"{CELL_TYPES[0]} mean" in header and f"{CELL_TYPES[0]} SD" in header
    by_stage = {r[0]: dict(zip(header, r)) for r in rows[1:1 + len(STAGES)]}
    assert by_stage[STAGES[0]]["tubules (n)"] == 1 and by_stage[STAGES[0]][f"{CELL_TYPES[0]} mean"] == 2
    assert by_stage[STAGES[0]][f"{CELL_TYPES[0]} SD"] is None  # one tubule: no SD
    assert by_stage[STAGES[2]]["tubules (n)"] == 0  # the IX tubule was excluded


def test_batch_workbook_has_group_and_run_id_columns_and_pooled_mean_sd(tmp_path):
    docs = [curation.apply(section_doc(n), []) for n in ("a", "b", "c")]
    # section b holds one more Sertoli cell in its I-V tubule: 3 tubules of stage I-V with 2, 3, 2 Sertoli cells
    docs[1]["layers"]["cells"].append({**docs[1]["layers"]["cells"][0], "id": 50})
    groups = {"a": "control", "b": "control", "c": "treated"}
    summaries = [_summary(d, run_id=f"run-{d['image']}", group=groups[d["image"]]) for d in docs]
    rows = [tables.tubule_rows(d) for d in docs]
    path = write_batch_workbook(tmp_path / "batch.xlsx", summaries, tables.pool_summaries(summaries), None, rows)
    wb = load_workbook(path)

    sections = sheet_rows(wb["Sections"])
    header = sections[0]
    assert header[:3] == ["section", "group", "run id"]
    assert [r[:3] for r in sections[1:4]] == [["a", "control", "run-a"], ["b", "control", "run-b"],
                                              ["c", "treated", "run-c"]]
    assert wb["Sections"].column_dimensions["B"].width >= len("treated")

    per_tubule = sheet_rows(wb["Cells per tubule"])
    header = per_tubule[0]
    pooled = {r[0]: dict(zip(header, r)) for r in per_tubule[1:1 + len(STAGES)]}
    sertoli = [2, 3, 2]
    assert pooled[STAGES[0]]["tubules (n)"] == 3
    assert pooled[STAGES[0]][f"{CELL_TYPES[0]} mean"] == pytest.approx(np.mean(sertoli))
    assert pooled[STAGES[0]][f"{CELL_TYPES[0]} SD"] == pytest.approx(np.std(sertoli, ddof=1))
    ws = wb["Cells per tubule"]
    assert ws.cell(2, 3).number_format == "0.0"
    labels = [r[0] for r in per_tubule if r and r[0]]
    assert "group control: cells per tubule" in labels and "group treated: cells per tubule" in labels


def test_methods_open_with_a_paragraph_built_from_the_run(tmp_path):
    doc = curation.apply(section_doc("s1"), [{"action": "exclude_tubule", "image": "s1", "id": 3, "value": True}])
    doc["meta"]["models"]["tubules"].update({"architecture": "Mask R-CNN (torchvision)", "backbone": "lite FPN",
                                             "tile_size": 512})
    doc["meta"]["params"].update({"tta": "off", "single_score": 0.4, "tubule_score": 0.3, "overlap": 128})
    path = write_section_workbook(tmp_path / "s1.xlsx", _summary(doc), tables.tubule_rows(doc), tables.cell_rows(doc))
    ws = load_workbook(path)["Methods"]
    assert ws.cell(2, 1).value.startswith("methods")
    paragraph = ws.cell(2, 2).value
    assert ws.cell(2, 2).alignment.wrap_text and ws.column_dimensions["B"].width >= 60
    for fact in ("Stagescope", "Mask R-CNN (torchvision)", '"tub"', "lite FPN", "512 px tiles", "128 px",
                 "at least 0.3", "in one pass", "at least 0.4", "SOX9 (channel 1, T = 100", "65%",
                 "1 tubule excluded", "0.5 µm", "mean ± SD", "abababababab"):
        assert fact in paragraph, f"{fact!r} missing from: {paragraph}"
    assert paragraph.count(". ") >= 5  # sentences, not a key/value list
    keys = [r[0] for r in sheet_rows(ws)]
    assert "tubule stage" in keys and "software" in keys  # the key/value table stays below for completeness


def test_the_report_exporter_writes_each_sections_run_id_and_group(tmp_path):
    """Sections ticked in the exporter carry their run id and project group into the workbook."""
    pytest.importorskip("PySide6")
    from app.core.jobs import run
    from app.core.results import write_objects
    from app.gui.report_exporter import SectionEntry, find_report_writer, report_job

    entries = []
    for name, run_id, group in (("a", "run-1", "control"), ("a", "run-2", "control"), ("b", "run-2", "treated")):
        doc = section_doc(name)
        folder = tmp_path / run_id
        folder.mkdir(exist_ok=True)
        path = write_objects(folder / f"{name}.json", name, "stagetool", doc["layers"], doc["meta"])
        entries.append(SectionEntry(run_id, folder, "stagetool", name, path, "[]", group))
    written = run(report_job(entries, {}, tmp_path / "report.xlsx", find_report_writer()))
    rows = sheet_rows(load_workbook(written)["Sections"])
    assert [r[:3] for r in rows[1:4]] == [["a", "control", "run-1"], ["a", "control", "run-2"],
                                          ["b", "treated", "run-2"]]
    pooled = {r[0]: r[1] for r in sheet_rows(load_workbook(written)["Cells per tubule"])[1:1 + len(STAGES)]}
    assert pooled[STAGES[0]] == 3  # one I-V tubule per section, the same section from two runs kept apart
