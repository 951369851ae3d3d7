"""The main window end to end (pytest-qt, offscreen): open a project, run a pipeline, curate, close."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("pytestqt")

from app.core.edits import read_edits  # noqa: E402

from gui_fakes import FAKE_NAME, make_project, register_fake  # noqa: E402
from gui_testing import main_window  # noqa: E402


@pytest.fixture
def window(qtbot):
    register_fake()
    win = main_window(qtbot)
    yield win
    win.confirm = lambda *args: True
    win.queue.shutdown()
    win.close()


def _run_fake(win, qtbot, all_images=True, **params):
    win.run_panel.reload()
    win.run_panel.select_pipeline(FAKE_NAME)
    for name, value in params.items():
        win.run_panel.form.editors[name].set_value(value)
    win.run_pipeline(all_images)
    assert win.queue.wait(20)
    assert win.wait_until_ready(20)


def test_open_run_and_see_overlays(window, qtbot, tmp_path):
    project = make_project(tmp_path, n_images=2)
    assert window.open_project(project.folder)
    assert window.wait_until_ready(20)
    assert window.current_image == "section1"
    assert window.viewer.image_size() == (600, 800)
    assert window.viewer.overlays.layers == {}
    assert not window.errors

    _run_fake(window, qtbot, cells_per_tubule=4, stack=True)
    runs = project.runs()
    assert len(runs) == 1 and runs[0].status == "finished" and set(runs[0].results) == {"section1", "section2"}
    assert json.loads((runs[0].folder / "run.json").read_text())["parameters"]["cells_per_tubule"] == 4
    overlays = window.viewer.overlays
    assert set(overlays.layers) == {"tubules", "cells"}
    assert len(overlays.layers["cells"].data.objects) == 24
    assert window.browser.tree.topLevelItem(1).text(0) == "Runs (1)"
    generated = overlays.image_layers["generated objects"]  # Kaizen-style generated object images
    assert generated.image.shape == (16, 26, 4) and generated.isVisible()
    assert window.layers_panel.tree.topLevelItem(2).text(0) == "generated objects"
    assert window.settings.pipeline_params[FAKE_NAME]["cells_per_tubule"] == 4  # remembered for next time
    # the next image shows the same run's results
    window.step_image(1)
    assert window.wait_until_ready(20)
    assert window.current_image == "section2" and overlays.object_count() == 30
    assert not window.errors


def test_curation_edits_write_the_edits_file_with_undo_redo(window, qtbot, tmp_path):
    project = make_project(tmp_path, n_images=1, with_run=True)
    window.open_project(project.folder)
    assert window.wait_until_ready(20)
    run_folder = project.runs()[0].folder
    overlays = window.viewer.overlays
    assert overlays.object_count() == 6 + 36

    # click a tubule (centre of the first disc) -> properties show it
    window.curation.clicked(200.0, 180.0, None)
    assert window.properties.layer == "tubules" and window.properties.obj["id"] == 1
    assert window.properties.tubule_box.isVisibleTo(window.properties)
    window.restage("XII")
    assert read_edits(run_folder) == [{"action": "restage_tubule", "image": "section1", "id": 1, "value": "XII"}]
    assert overlays.find("tubules", 1)["class"] == "XII"
    window.toggle_exclude()
    assert overlays.find("tubules", 1)["excluded"] is True
    assert "excluded" in overlays.layers["tubules"].items

    undo, redo = window.actions["undo"], window.actions["redo"]
    assert undo.text().startswith("&Undo exclude tubule 1") or "exclude tubule 1" in undo.text()
    undo.trigger()
    assert overlays.find("tubules", 1)["excluded"] is False and len(read_edits(run_folder)) == 1
    undo.trigger()
    assert overlays.find("tubules", 1)["class"] == "I-V" and read_edits(run_folder) == []
    redo.trigger()
    assert overlays.find("tubules", 1)["class"] == "XII" and len(read_edits(run_folder)) == 1

    # cells: retype, delete, add by clicking
    assert window.select_object("cells", 1)
    window.retype("m2m")
    assert overlays.find("cells", 1)["class"] == "m2m"
    window.select_object("cells", 2)
    window.delete_cell()
    assert overlays.find("cells", 2) is None
    window.set_add_mode(True)
    window.properties.add_type.setCurrentText("Spc sec")
    window.curation.clicked(50.0, 60.0, None)
    added = [c for c in overlays.layers["cells"].data.objects if c.get("added")]
    assert len(added) == 1 and added[0]["class"] == "Spc sec" and added[0]["centroid"] == [60.0, 50.0]
    assert added[0]["box"] == [45.0, 55.0, 55.0, 65.0]  # the median cell size (10 px) of this image
    actions = [e["action"] for e in read_edits(run_folder)]
    assert actions == ["restage_tubule", "retype_cell", "delete_cell", "add_cell"]

    # big layers are redrawn after an edit on a reader thread (same result)
    import app.gui.results_controller as results_controller

    results_controller.BACKGROUND_EDIT_OBJECTS = 0
    try:
        window.select_object("cells", 3)
        assert overlays.find("cells", 3)["class"] == "Spc Pach"
        window.retype("Spc sec")
        assert window.wait_until_ready(20)
        assert overlays.find("cells", 3)["class"] == "Spc sec"
        assert window.properties.obj["class"] == "Spc sec"
        window.actions["undo"].trigger()
        assert window.wait_until_ready(20) and overlays.find("cells", 3)["class"] == "Spc Pach"
    finally:
        results_controller.BACKGROUND_EDIT_OBJECTS = 5000

    # reopening the image reads the edits back from disk
    window.results.sessions.clear()
    window.open_image("section1")
    assert window.wait_until_ready(20)
    assert overlays.find("tubules", 1)["class"] == "XII" and overlays.find("cells", 2) is None


def test_failed_job_is_shown_in_the_window(window, qtbot, tmp_path):
    from PySide6.QtWidgets import QMessageBox

    project = make_project(tmp_path, n_images=1)
    window.open_project(project.folder)
    assert window.wait_until_ready(20)
    _run_fake(window, qtbot, fail=True)
    assert len(window.errors) == 1
    title, message, details = window.errors[0]
    assert title.startswith("Job failed") and "fake failure on section1" in message
    assert "Traceback" in details
    boxes = [b for b in window.findChildren(QMessageBox) if b.isVisible()]
    assert boxes and "fake failure" in boxes[0].text() and "Traceback" in boxes[0].detailedText()
    assert project.runs()[0].status == "failed"


def test_bad_parameters_and_missing_project_are_explained(window, qtbot, tmp_path):
    window.open_project(tmp_path / "nowhere")
    assert window.errors[-1][0] == "Cannot open the project" and "not a Stagescope project" in window.errors[-1][1]
    window.run_panel.reload()
    window.run_panel.select_pipeline(FAKE_NAME)
    window.run_pipeline(True)
    assert window.errors[-1][0] == "No project"


def test_closing_with_a_running_job_asks_first(window, qtbot, tmp_path):
    project = make_project(tmp_path, n_images=1)
    window.open_project(project.folder)
    assert window.wait_until_ready(20)
    window.run_panel.select_pipeline(FAKE_NAME)
    window.run_panel.form.editors["delay_s"].set_value(1.0)  # 5 s in all: still running when we close, even under load
    window.run_pipeline(True)
    qtbot.waitUntil(lambda: window.queue.running is not None, timeout=5000)
    asked = []
    window.confirm = lambda title, text: asked.append(text) or False
    window.close()
    assert asked and "1 job(s)" in asked[0]
    assert window.isVisible() and window.queue.is_busy()
    window.confirm = lambda title, text: True
    window.close()
    assert not window.isVisible()
    assert not window.queue.is_busy()
    assert project.runs()[0].status == "cancelled"


def test_every_action_has_a_shortcut_and_a_menu(window):
    from PySide6.QtWidgets import QMenu

    in_menus = set()
    for menu in window.findChildren(QMenu):
        in_menus.update(id(a) for a in menu.actions())
    missing_keys = [k for k, a in window.actions.items() if not a.shortcuts()]
    missing_menu = [k for k, a in window.actions.items() if id(a) not in in_menus]
    assert missing_keys == [] and missing_menu == []
    keys = [s.toString() for a in window.actions.values() for s in a.shortcuts()]
    assert len(keys) == len(set(keys)), "two actions share a shortcut"


def test_screenshot_waits_for_the_picture(window, qtbot, tmp_path):
    from PySide6.QtGui import QImage

    from app.gui.main import take_screenshot

    project = make_project(tmp_path, n_images=1, with_run=True)
    window.open_project(project.folder, image="section1")
    out = tmp_path / "shot.png"
    assert take_screenshot(window, out, timeout_s=30) == 0
    image = QImage(str(out))
    assert (image.width(), image.height()) == (window.width(), window.height())
    assert window.viewer.overlays.object_count() == 42  # overlays were drawn before the shot


def test_end_to_end_run_then_export_the_report(window, qtbot, tmp_path):
    from app.pipelines.stagetool import tables  # noqa: F401 - what the exporter writes through
    import openpyxl

    project = make_project(tmp_path, n_images=1)
    window.open_project(project.folder)
    assert window.wait_until_ready(20)
    _run_fake(window, qtbot, all_images=False)
    assert set(window.viewer.overlays.layers) == {"tubules", "cells"}
    window.select_object("tubules", 2)
    window.toggle_exclude()  # curation counts in the report
    window.export_report_dialog()
    dialog = window.dialogs.report_dialog
    assert [e.image for e in dialog.chosen()] == ["section1"]
    dialog.name_edit.setText("e2e")
    with qtbot.waitSignal(dialog.report_written, timeout=20000):
        dialog.write()
    assert window.queue.wait(10)
    path = project.reports_dir / "e2e.xlsx"
    assert dialog.written == path
    assert window.browser.tree.topLevelItem(2).text(0) == "Reports (1)"
    book = openpyxl.load_workbook(path, read_only=True)
    tubules = list(book["Tubules"].iter_rows(values_only=True))
    header = tubules[0]
    rows = {r[header.index("id")]: r for r in tubules[1:]}
    assert len(rows) == 6 and rows[2][header.index("excluded")] is True
    cells = list(book["Cells"].iter_rows(values_only=True))
    assert len(cells) == 1 + 36
    dialog.close()


def test_start_up_opens_the_recent_project_or_builds_the_sample(window, qtbot, tmp_path, monkeypatch):
    import app.demo
    from app.gui.main import open_start_project

    project = make_project(tmp_path / "a", n_images=1)
    window.settings.recent_projects = [str(tmp_path / "gone"), str(project.folder)]
    open_start_project(window, None, None)
    assert window.project.folder == project.folder

    window.settings.recent_projects = []
    built = []

    def fake_sample(folder, force=False):
        built.append(folder)
        return make_project(tmp_path / "sample", n_images=1)

    monkeypatch.setattr(app.demo, "build_sample_project", fake_sample)
    open_start_project(window, None, None)
    assert window.queue.wait(20) and window.wait_until_ready(20)
    assert built and window.project.folder == tmp_path / "sample" / "project"
    assert window.current_image == "section1"


def test_raw_predictions_with_analysis_time_edits_are_not_edited_twice(window, qtbot, tmp_path):
    """Stagetool keeps raw predictions and curated objects apart; edits given at analysis time seed curation."""
    from app.core.edits import make_edit
    from app.core.results import write_objects
    from app.gui.report_sections import curated_document, section_entries

    from gui_fakes import fake_layers

    project = make_project(tmp_path, n_images=1)
    run = project.new_run("stagetool", {})
    folder = run.image_dir("section1")
    layers = fake_layers(600, 800)
    added = make_edit("add_cell", "section1", 999, "m2m", box=[10, 10, 20, 20])
    write_objects(folder / "predictions.json", "section1", "stagetool", layers)
    curated = {"tubules": layers["tubules"], "cells": layers["cells"] + [{"id": 999, "class": "m2m",
                                                                          "box": [10, 10, 20, 20], "added": True}]}
    write_objects(folder / "objects.json", "section1", "stagetool", curated, {"edits": [added]})
    run.mark_image_done("section1", {"predictions": folder / "predictions.json", "objects": folder / "objects.json"})
    run.finish()
    window.open_project(project.folder)
    assert window.wait_until_ready(20)
    cells = window.viewer.overlays.layers["cells"].data.objects
    assert sum(1 for c in cells if c["id"] == 999) == 1 and len(cells) == 37
    window.select_object("cells", 1)
    window.delete_cell()
    assert [e["action"] for e in read_edits(run.folder)] == ["add_cell", "delete_cell"]
    doc = curated_document(section_entries(project)[0])
    assert len(doc["layers"]["cells"]) == 36 and sum(1 for c in doc["layers"]["cells"] if c["id"] == 999) == 1


def test_new_project_add_images_and_status_bar(window, qtbot, tmp_path):
    from gui_fakes import write_section

    assert window.new_project(tmp_path / "fresh")
    assert window.project.name == "fresh" and window.settings.recent_projects[0] == str(tmp_path / "fresh")
    assert window.recent_menu.actions()[0].text().endswith(str(tmp_path / "fresh"))
    good = write_section(tmp_path / "good.ome.tif")
    bad = tmp_path / "bad.tif"
    bad.write_bytes(b"not a tiff")
    added = window.add_images([good, bad])
    assert added == ["good"]
    assert window.errors[-1][0] == "Some images were not added" and "bad.tif" in window.errors[-1][2]
    assert window.wait_until_ready(20) and window.current_image == "good"
    window.hooks.mouse_moved(100.4, 50.6)
    assert window.coords_label.text() == "x 100  y 50"
    assert window.value_label.text().startswith("DAPI: ") and "marker1: " in window.value_label.text()
    window.hooks.mouse_moved(-5, 10)
    assert window.coords_label.text() == ""


def test_unexpected_exceptions_are_shown_in_the_window(window, monkeypatch):
    import sys

    from app.gui.main import install_excepthook

    monkeypatch.setattr(sys, "excepthook", sys.excepthook)
    install_excepthook(window)
    try:
        raise RuntimeError("a bug in a slot")
    except RuntimeError:
        sys.excepthook(*sys.exc_info())
    title, message, details = window.errors[-1]
    assert title == "Unexpected error" and message == "RuntimeError: a bug in a slot" and "Traceback" in details


def test_runs_on_several_images_go_to_the_settings_cluster(window, qtbot, tmp_path, monkeypatch):
    """With a run queue set (batch_cluster), a run on several images is one app.batch batch into a project run."""
    import dataclasses

    import app.batch.runner as batch_runner
    from app.core.runs import Run, now_iso
    from app.pipelines import registry
    from app.core.results import write_objects

    from gui_fakes import FakeParams, fake_layers

    calls = []

    def fake_batch_job(pipeline, paths, out, cluster, models, params):
        calls.append({"pipeline": pipeline, "paths": [p.name for p in paths], "out": out, "cluster": cluster,
                      "models": models, "params": params})
        run = Run(folder=out, id=out.name, pipeline=pipeline, parameters=params, models={}, started=now_iso())
        out.mkdir(parents=True)
        run.save()
        for path in paths:
            name = path.name.split(".")[0]
            objects = write_objects(out / name / "objects.json", name, pipeline, fake_layers(600, 800))
            run.mark_image_done(name, {"objects": objects})
        run.finish("finished")
        yield from ()
        return {"folder": out}

    real_get = registry.get
    # the fake pipeline as one that analyses image by image (a batch can run it)
    spec = dataclasses.replace(real_get(FAKE_NAME), analyze_one=lambda *args: None, models={"cells": "fake-cells"})
    monkeypatch.setattr(batch_runner, "batch_job", fake_batch_job)
    monkeypatch.setattr(registry, "get", lambda name: spec if name == FAKE_NAME else real_get(name))
    project = make_project(tmp_path, n_images=2)
    window.settings.batch_cluster = "local:2"
    assert window.open_project(project.folder) and window.wait_until_ready(20)
    _run_fake(window, qtbot, all_images=True, cells_per_tubule=3)
    [call] = calls
    assert call["cluster"] == "local:2" and call["pipeline"] == FAKE_NAME
    assert call["paths"] == ["section1.ome.tif", "section2.ome.tif"] and call["out"].parent == project.runs_dir
    assert call["params"]["cells_per_tubule"] == 3 and set(call["params"]) == set(vars(FakeParams()))
    assert "local:2" in window.queue.records[-1].title
    [run] = project.runs()
    assert run.folder == call["out"] and set(run.results) == {"section1", "section2"}
    assert set(window.viewer.overlays.layers) == {"tubules", "cells"}  # shown without a reload
    _run_fake(window, qtbot, all_images=False)  # one image stays on this computer
    assert len(calls) == 1 and len(project.runs()) == 2
