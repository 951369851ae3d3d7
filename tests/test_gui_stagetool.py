"""A real Stagetool run shown in the main window: tubules by stage with a legend, cells by type, one item per class.

The run goes through the registry exactly as a click on "Run" does (run panel -> job queue ->
app.pipelines.runner.analyze_project -> the spec's analyze_one -> objects.json), with the exact "oracle" networks of
tests/test_stagetool_section.py in place of trained models, so the test takes seconds.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

pytest.importorskip("pytestqt")
torch = pytest.importorskip("torch")

from test_stagetool_section import SCALE, draw_section, oracle_model  # noqa: E402 - the oracle section and networks
from gui_testing import main_window  # noqa: E402


@pytest.fixture
def stagetool_project(tmp_path, monkeypatch):
    """A project with one drawn testis section; model loading answers with the oracle networks."""
    from app.core.images import write_tiff
    from app.core.project import Project
    from app.pipelines.runner import clear_model_cache
    from app.pipelines.stagetool import loading, predict

    monkeypatch.setattr(predict, "intensity_range", lambda overview: (0.0, SCALE))
    oracles = {"tubules": oracle_model("tubules", 128, downsample=2), "cells": oracle_model("cells", 128)}
    monkeypatch.setattr(loading, "load_model", lambda _name, kind, _device="auto": oracles[kind])  # the spec's load
    clear_model_cache()  # models loaded by other tests of this process are not the oracles
    image, truth, _ = draw_section()
    path = tmp_path / "sec.ome.tif"
    write_tiff(path, image.astype(np.uint16), axes="CYX", channel_names=["DAPI", "SOX9"], pixel_size_um=0.5)
    project = Project.create(tmp_path / "project", name="stagetool view")
    project.add_image(path, group="testis")
    torch.set_num_threads(1)
    return Project.open(project.folder), truth


def analyse_in_window(window, project) -> None:
    """Open the drawn section's project in the window and run Stagetool on it from the Run panel, as a user would."""
    assert window.open_project(project.folder) and window.wait_until_ready(20)
    window.run_panel.reload()
    window.run_panel.select_pipeline("stagetool")
    for name, value in {"tta": "off", "overlap": 48, "map_scale": 2}.items():
        window.run_panel.form.editors[name].set_value(value)
    window.run_pipeline(True)
    assert window.queue.wait(120) and window.wait_until_ready(20)
    assert not window.errors, window.errors


def test_a_stagetool_run_shows_stages_and_cell_types(qtbot, stagetool_project):
    from app.gui.overlays import STAGE_COLOURS, STAGES, class_colour

    project, truth = stagetool_project
    window = main_window(qtbot)
    try:
        analyse_in_window(window, project)
        [run] = project.runs()
        assert run.status == "finished" and run.pipeline == "stagetool"

        overlays = window.viewer.overlays
        assert set(overlays.layers) == {"tubules", "cells"}
        tubules, cells = overlays.layers["tubules"], overlays.layers["cells"]
        stages = Counter(o["class"] for o in tubules.data.objects)
        types = Counter(o["class"] for o in cells.data.objects)
        assert stages == Counter(truth.tubule_stages.values())
        assert types == Counter(truth.cell_types)
        # one drawing item per class (the section fits one 2048 px chunk), not one per object
        assert set(tubules.items) == set(stages) and set(cells.items) == set(types)
        assert all(len(items) == 1 for items in list(tubules.items.values()) + list(cells.items.values()))
        assert overlays.item_count() == len(stages) + len(types) < len(tubules.data.objects) + len(cells.data.objects)
        # tubules coloured by stage, in the fixed stage colours; the legend lists them with counts
        for stage in stages:
            assert class_colour("tubules", stage, 0).name() == STAGE_COLOURS[STAGES.index(stage)]
        legend = window.layers_panel.tree
        rows = {legend.topLevelItem(i).text(0): legend.topLevelItem(i) for i in range(legend.topLevelItemCount())}
        assert rows["tubules"].text(1) == "5" and rows["cells"].text(1) == str(len(truth.cell_types))
        shown = {rows["tubules"].child(i).text(0): int(rows["tubules"].child(i).text(1))
                 for i in range(rows["tubules"].childCount())}
        assert {k: v for k, v in shown.items() if v} == dict(stages)
    finally:
        window.confirm = lambda *args: True
        window.queue.shutdown()
        window.close()
