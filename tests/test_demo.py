"""The headless demo that ./run.sh runs without a display."""

from __future__ import annotations

import numpy as np
import tifffile

from app.demo import run_demo


def test_demo_builds_sample_project_and_runs_kaizen(tmp_path, capsys):
    assert run_demo(tmp_path / "sample") == 0
    out = capsys.readouterr().out
    labels = sorted((tmp_path / "sample" / "runs").rglob("kaizen.tif"))
    assert len(labels) == 3 and str(labels[0]) in out
    # the shipped model finds objects in the phantom nuclei, and a second run reuses the project
    truth = tifffile.imread(tmp_path / "sample" / "raw" / "nuclei" / "nuclei_000_labels.tif")
    found = tifffile.imread(next(p for p in labels if "nuclei_000" in str(p)))
    assert found.max() > 0 and abs(len(np.unique(found)) - len(np.unique(truth))) <= len(np.unique(truth)) // 2
    assert run_demo(tmp_path / "sample") == 0
    assert len(list((tmp_path / "sample" / "runs").iterdir())) == 2
