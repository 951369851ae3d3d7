"""The headless demo that ./run.sh runs without a display."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
from openpyxl import load_workbook

from app import demo
from app.demo import run_demo

SECTION_SHEETS = ["Summary", "Tubules", "Cells", "Stage x cell type", "Cells per tubule", "Antigen profiles",
                  "Methods"]


def _runs(folder, pipeline: str) -> list:
    runs = sorted(p for p in (folder / "runs").iterdir() if (p / "run.json").exists())
    return [p for p in runs if json.loads((p / "run.json").read_text()).get("pipeline") == pipeline]


@pytest.mark.slow
def test_demo_builds_sample_project_and_runs_kaizen_and_stagetool(tmp_path, capsys, monkeypatch):
    assert run_demo(tmp_path / "sample") == 0
    out = capsys.readouterr().out
    labels = sorted((tmp_path / "sample" / "runs").rglob("kaizen.tif"))
    assert len(labels) == 3 and str(labels[0]) in out
    # the shipped model finds objects in the phantom nuclei, and a second run reuses the project
    truth = tifffile.imread(tmp_path / "sample" / "raw" / "nuclei" / "nuclei_000_labels.tif")
    found = tifffile.imread(next(p for p in labels if "nuclei_000" in str(p)))
    assert found.max() > 0 and abs(len(np.unique(found)) - len(np.unique(truth))) <= len(np.unique(truth)) // 2

    # Stagetool: the shipped demo models on the testis section (DAPI + SOX9), workbook with all sheets
    [run] = _runs(tmp_path / "sample", "stagetool")
    section = run / "testis_000"
    workbook = load_workbook(section / "testis_000.xlsx")
    assert workbook.sheetnames == SECTION_SHEETS
    objects = json.loads((section / "objects.json").read_text())
    cells, tubules = objects["layers"]["cells"], objects["layers"]["tubules"]
    assert len(tubules) >= 3 and len(cells) > 500  # a 2048 px phantom holds ~14 tubules and ~4000 nuclei
    summary = {row[0].value: row[1].value for row in workbook["Summary"].iter_rows(min_row=2) if row[0].value}
    assert summary.get("cells (all)") == len(cells) and summary.get("cell model") == "stagetool-cells-demo"
    assert "SOX9" in str(list(workbook["Antigen profiles"].values))
    assert any("synthetic" in str(v).lower() for row in workbook["Methods"].values for v in row)
    report = tmp_path / "sample" / "reports" / "stagetool-sample.xlsx"
    assert report.exists() and str(report) in out
    assert "Sections" in load_workbook(report).sheetnames

    kaizen_only = demo.pipeline_steps()[:1]  # the second run only checks that the project is reused
    monkeypatch.setattr(demo, "pipeline_steps", lambda: kaizen_only)
    assert run_demo(tmp_path / "sample") == 0
    assert len(_runs(tmp_path / "sample", "kaizen")) == 2
