"""Runs from the GUI as a technician meets them: the selection that is run, failures and cancels shown,
the pipeline offered first, runs refused before they start, threads, antibody channels (issue 14)."""

from __future__ import annotations

import dataclasses
import json

import pytest

pytest.importorskip("pytestqt")

from PySide6.QtCore import Qt  # noqa: E402

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


def _click_image(win, qtbot, name, modifier=Qt.KeyboardModifier.NoModifier):
    tree = win.browser.tree
    item = win.browser._image_items[name]
    tree.scrollToItem(item)
    qtbot.mouseClick(tree.viewport(), Qt.MouseButton.LeftButton, modifier, tree.visualItemRect(item).center())
    assert win.wait_until_ready(20)


def _run_fake(win, all_images=False, **params):
    win.run_panel.select_pipeline(FAKE_NAME)
    for name, value in params.items():
        win.run_panel.form.editors[name].set_value(value)
    win.run_pipeline(all_images)
    assert win.queue.wait(30)
    assert win.wait_until_ready(20)


@pytest.mark.parametrize("with_run", [False, True])
def test_ctrl_click_adds_to_the_selection_and_the_run_uses_exactly_it(window, qtbot, tmp_path, with_run):
    project = make_project(tmp_path, n_images=3, with_run=with_run)
    assert window.open_project(project.folder)
    assert window.wait_until_ready(20)
    _click_image(window, qtbot, "section1")
    _click_image(window, qtbot, "section3", Qt.KeyboardModifier.ControlModifier)
    assert window.current_image == "section3"  # opened ...
    assert window.browser.selected_images() == ["section1", "section3"]  # ... and added to the selection
    before = {run.id for run in project.runs()}
    _run_fake(window)
    new = [run for run in project.runs() if run.id not in before]
    assert len(new) == 1 and set(new[0].results) == {"section1", "section3"}
    assert window.browser.selected_images() == ["section1", "section3"]  # the run's end kept the picks


# ----------------------------------------------------------------------------- 2. failures and cancels shown


def _register(name, analyze, params_type, kinds=("section",)):
    from app.pipelines.registry import PipelineSpec, register

    return register(PipelineSpec(name=name, title=f"Test {name}", description="test pipeline", params=params_type,
                                 analyze=analyze, image_kinds=kinds, layers=("tubules", "cells")))


@dataclasses.dataclass
class PartialParams:
    failing: str = "section2"


def _partial_analyze(project, image_names, params, models):
    """Like Stagetool's batch: a failing image is recorded and the run goes on, ending "failed"."""
    from app.core.jobs import Progress
    from app.core.results import OBJECTS_FILE, write_objects

    from gui_fakes import fake_layers

    run = project.new_run("partial", params, models)
    for number, name in enumerate(image_names):
        yield Progress("sections", number, len(image_names), name)
        if name == params.failing:
            run.mark_image_failed(name, "no tissue found on the DAPI channel")
            continue
        path = run.image_dir(name) / OBJECTS_FILE
        write_objects(path, name, "partial", fake_layers(600, 800))
        run.mark_image_done(name, {"objects": path})
    yield Progress("sections", len(image_names), len(image_names))
    run.finish("failed")
    return run.folder


def test_a_partly_failed_run_is_shown_failed_with_a_visible_summary(window, qtbot, tmp_path):
    from PySide6.QtWidgets import QMessageBox

    _register("partial", _partial_analyze, PartialParams)
    project = make_project(tmp_path, n_images=3)
    assert window.open_project(project.folder) and window.wait_until_ready(20)
    window.run_panel.reload()
    window.run_panel.select_pipeline("partial")
    window.run_pipeline(True)
    assert window.queue.wait(30) and window.wait_until_ready(20)
    [record] = [r for r in window.queue.records if r.kind == "analyze"]
    assert record.status == "partly failed"
    assert record.problems == {"section2": "no tissue found on the DAPI channel"}
    row = window.jobs_widget._items[record.id]
    assert row.text(1) == "partly failed" and "section2" in row.text(4)
    assert window.jobs_widget._bars[record.id].format() == "partly failed"  # not "100%"
    title, message, _details = window.errors[-1]
    assert title.startswith("Run partly failed") and "section2: no tissue found on the DAPI channel" in message
    boxes = [b for b in window.findChildren(QMessageBox) if b.isVisible()]
    assert boxes and "section2: no tissue found" in boxes[-1].text()  # in the box, not only in a tooltip
    assert "1 failed" in window.jobs_widget.summary.text()


# the drawn section and oracle networks of the Stagetool GUI test
from test_gui_stagetool import stagetool_project  # noqa: F401,E402 - a fixture


def test_a_cancelled_stagetool_run_is_recorded_cancelled(qtbot, stagetool_project, monkeypatch):  # noqa: F811
    import time as _time

    from app.core.jobs import Progress
    from app.core.project import Project
    from app.pipelines.stagetool import predict

    def slow_section(*_args, **_kwargs):
        for step in range(200):
            _time.sleep(0.05)
            yield Progress("tubules", step, 200, "slow")

    monkeypatch.setattr(predict, "analyze_section", slow_section)  # what the spec's analyze_one calls
    project, _truth = stagetool_project
    win = main_window(qtbot)
    try:
        assert win.open_project(project.folder) and win.wait_until_ready(20)
        win.run_panel.select_pipeline("stagetool")
        win.run_pipeline(True)
        qtbot.waitUntil(lambda: any(r.progress is not None and r.progress.stage == "tubules"
                                    for r in win.queue.records), timeout=20000)
        win.queue.cancel_all()
        assert win.queue.wait(30)
        [run] = Project.open(project.folder).runs()
        assert run.status == "cancelled" and run.finished  # not "running" for ever
    finally:
        win.confirm = lambda *args: True
        win.queue.shutdown()
        win.close()


# ----------------------------------------------------------------------------- 3. antibody channels


def test_antibody_channels_are_offered_from_the_images_and_checked_before_the_run(
        qtbot, stagetool_project):  # noqa: F811
    project, _truth = stagetool_project
    win = main_window(qtbot)
    try:
        assert win.open_project(project.folder) and win.wait_until_ready(20)
        panel = win.run_panel
        panel.select_pipeline("stagetool")
        assert panel.antibody_box.isVisibleTo(panel)
        items = {panel.antibody_list.item(i).text(): panel.antibody_list.item(i).checkState()
                 for i in range(panel.antibody_list.count())}
        assert items == {"DAPI": Qt.CheckState.Unchecked, "SOX9": Qt.CheckState.Checked}
        assert panel.build_request().params.antibodies == "SOX9=SOX9"  # antigen profiles by default
        panel.antibody_list.item(1).setCheckState(Qt.CheckState.Unchecked)
        assert panel.build_request().params.antibodies == ""
        panel.form.editors["antibodies"].set_value("SOX9")  # a bare channel name is that channel
        assert panel.build_request().params.antibodies == "SOX9=SOX9"
        panel.form.editors["antibodies"].set_value("CREM")  # not a channel of the image: refused before the run
        win.run_pipeline(True)
        assert not win.queue.records
        title, message, _ = win.errors[-1]
        assert title == "Cannot start the run" and "no channel 'CREM'" in message and "DAPI, SOX9" in message
        panel.form.editors["antibodies"].set_value("SOX9=1:abc")  # malformed: refused at once, not in the job
        win.run_pipeline(True)
        assert not win.queue.records and "not a number" in win.errors[-1][1]
    finally:
        win.confirm = lambda *args: True
        win.queue.shutdown()
        win.close()


# ----------------------------------------------------------------------------- 4. guards against a wrong choice


def _nuclei_image(path, size=256):
    """A small single-channel image of bright discs without a pixel size (like the sample's nuclei)."""
    import numpy as np
    import tifffile

    yy, xx = np.mgrid[:size, :size]
    data = np.full((size, size), 20, np.uint16)
    for cy, cx in ((60, 60), (120, 180), (200, 90)):
        data[(yy - cy) ** 2 + (xx - cx) ** 2 < 15 ** 2] = 800
    tifffile.imwrite(path, data)
    return path


def test_the_fitting_pipeline_is_offered_first_and_a_wrong_one_is_refused(qtbot, tmp_path, monkeypatch):
    from app.core.project import Project
    from app.pipelines import registry

    monkeypatch.delitem(registry._REGISTRY, FAKE_NAME, raising=False)  # only the real pipelines
    project = make_project(tmp_path, n_images=1)
    project.add_image(_nuclei_image(tmp_path / "raw" / "nuclei.tif"), group="nuclei")
    project = Project.open(project.folder)
    win = main_window(qtbot)  # a new user: nothing remembered
    try:
        assert win.open_project(project.folder, image="nuclei") and win.wait_until_ready(20)
        panel = win.run_panel
        assert panel.current_spec().name == "kaizen"  # small single-channel nuclei, not Brightfield (alphabetical)
        win.open_image("section1")
        assert win.wait_until_ready(20)
        assert panel.current_spec().name == "stagetool"  # a DAPI section with a marker channel

        # Stagetool on the 256 px nuclei image without pixel size: refused before it starts, in one line
        panel.select_pipeline("stagetool")
        panel._chosen = True
        win.open_image("nuclei")
        assert win.wait_until_ready(20) and panel.current_spec().name == "stagetool"  # the user's pick stays
        win.run_pipeline(False)
        assert not win.queue.records
        title, message, _ = win.errors[-1]
        assert title == "Cannot start the run" and "nuclei: no pixel size" in message and "\n" not in message
        # Brightfield on one plane: its model wants the focal planes of a z-stack
        panel.select_pipeline("brightfield")
        win.run_pipeline(False)
        assert not win.queue.records and win.errors[-1][0] == "Cannot start the run"
        assert "nuclei: 1 plane(s)" in win.errors[-1][1] or "nuclei: one plane" in win.errors[-1][1]
    finally:
        win.confirm = lambda *args: True
        win.queue.shutdown()
        win.close()


def _stagetool_run(project, images, objects_for=None):
    from app.core.results import OBJECTS_FILE, write_objects

    from gui_fakes import fake_layers

    run = project.new_run("stagetool", {})
    for name in images:
        path = run.image_dir(name) / OBJECTS_FILE
        write_objects(path, name, "stagetool", fake_layers(600, 800))
        run.mark_image_done(name, {"objects": path})
    run.finish()
    return run


def test_the_report_exporter_offers_stagetool_runs_only_and_counts_a_section_once(qtbot, tmp_path):
    from app.pipelines.stagetool import tables  # noqa: F401 - what the exporter writes through
    from app.core.jobs import run as run_job
    from app.core.settings import Settings
    from app.gui.report_exporter import ReportExporter
    from app.gui.report_sections import find_report_writer, report_job

    from app.core.results import OBJECTS_FILE, write_objects

    from gui_fakes import fake_layers

    project = make_project(tmp_path, n_images=2)
    first = _stagetool_run(project, ["section1", "section2"])
    second = _stagetool_run(project, ["section1"])
    kaizen = project.new_run("kaizen", {})  # results of another pipeline: nothing for a Stagetool workbook
    path = kaizen.image_dir("section1") / OBJECTS_FILE
    write_objects(path, "section1", "kaizen", {"objects": fake_layers(600, 800)["cells"]})
    kaizen.mark_image_done("section1", {"objects": path})
    kaizen.finish()
    dialog = ReportExporter(project, Settings(), queue=None)
    qtbot.addWidget(dialog)
    assert {e.pipeline for e in dialog.entries} == {"stagetool"}
    assert {(e.run_id, e.image) for e in dialog.chosen()} == {(second.id, "section1")}  # newest run ticked
    # ticking section1 of the older run unticks it in the newer one: one section, counted once
    parent = next(dialog.sections.topLevelItem(i) for i in range(dialog.sections.topLevelItemCount())
                  if first.id in dialog.sections.topLevelItem(i).text(0))
    parent.child(0).setCheckState(0, Qt.CheckState.Checked)
    assert {(e.run_id, e.image) for e in dialog.chosen()} == {(first.id, "section1")}
    dialog.set_chosen([(first.id, "section1"), (second.id, "section1")])  # both: still one of them
    assert [e.image for e in dialog.chosen()] == ["section1"]
    dialog.chosen = lambda: list(dialog.entries)  # should both reach the writer anyway, it refuses
    assert dialog.write() is None and "section1 is ticked in 2 runs" in dialog.status.text()
    del dialog.chosen
    # the workbook's sections carry their run id
    dialog.set_chosen([(first.id, "section1"), (first.id, "section2")])
    seen = []

    def writer(docs, path):
        seen.extend(doc["meta"]["run_id"] for doc in docs)
        return find_report_writer()(docs, path)

    run_job(report_job(dialog.chosen(), {}, project.report_path("r.xlsx"), writer))
    assert seen == [first.id, first.id]


# ----------------------------------------------------------------------------- 6. CPU threads of a job


@dataclasses.dataclass
class ThreadParams:
    threads: int = 0


SEEN_THREADS: list[int] = []


def _threads_analyze(project, image_names, params, models):
    """Records the torch threads the job runs with (on the worker thread) and the threads parameter."""
    import torch

    from app.core.jobs import Progress

    yield Progress("work", 0, 1, "threads")
    SEEN_THREADS.extend([torch.get_num_threads(), params.threads])
    return None


@pytest.mark.parametrize("setting, expected", [(None, 1), (2, 2)])
def test_jobs_run_with_the_settings_threads_default_one(qtbot, tmp_path, setting, expected):
    import torch

    from app.core.settings import Settings
    from app.pipelines.stagetool.params import AnalyzeParams

    assert AnalyzeParams().threads == 1  # the CLI default as well
    _register("threads", _threads_analyze, ThreadParams)
    project = make_project(tmp_path, n_images=1)
    settings = Settings() if setting is None else Settings(threads=setting)
    win = main_window(qtbot, settings=settings)
    before = torch.get_num_threads()
    try:
        assert win.open_project(project.folder) and win.wait_until_ready(20)
        win.run_panel.select_pipeline("threads")
        SEEN_THREADS.clear()
        win.run_pipeline(True)
        assert win.queue.wait(30)
        assert SEEN_THREADS == [expected, expected]  # torch on the job's thread, and the pipeline's parameter
    finally:
        torch.set_num_threads(before)
        win.confirm = lambda *args: True
        win.queue.shutdown()
        win.close()


# ----------------------------------------------------------------------------- 3. an antibody added after analysis


def test_the_report_exporter_measures_an_antibody_the_analysis_left_out(qtbot, tmp_path):
    from app.pipelines.stagetool import tables  # noqa: F401 - what the exporter writes through
    import numpy as np

    from app.core.settings import Settings
    from app.gui.report_exporter import ReportExporter
    from app.gui.report_sections import cell_measures, curated_document

    project = make_project(tmp_path, n_images=1)  # channels DAPI and marker1 (bright inside the discs)
    run = _stagetool_run(project, ["section1"])
    dialog = ReportExporter(project, Settings(), queue=None)
    qtbot.addWidget(dialog)
    assert dialog.table.rowCount() == 0  # analysed without antibodies
    assert [dialog.add_channel.itemText(i) for i in range(dialog.add_channel.count())] == ["marker1", "DAPI"]
    assert dialog.add_antibody("marker1") == 36
    assert dialog.table.rowCount() == 1 and dialog.current_antibody() == "marker1"
    doc = curated_document(dialog.chosen()[0])
    means, _qs = cell_measures([doc], "marker1")
    assert len(means) == 36 and np.all(means > 500)  # every cell lies in a disc: marker 50-150 + 500
    assert doc["meta"]["antibodies"][-1]["channel_index"] == 1 and run.id == dialog.chosen()[0].run_id
    assert dialog.add_antibody("marker1") is None and "measured already" in dialog.status.text()


def test_settings_dialog_sets_the_threads_of_jobs(qtbot):
    from app.core.settings import Settings
    from app.gui.settings_dialog import SettingsDialog

    settings = Settings()
    assert settings.threads == 1 and Settings.from_dict({}).threads == 1
    dialog = SettingsDialog(settings)
    qtbot.addWidget(dialog)
    assert dialog.threads.value() == 1
    dialog.threads.setValue(0)  # all cores
    dialog.apply()
    assert settings.threads == 0 and Settings.from_dict(settings.to_dict()).threads == 0
