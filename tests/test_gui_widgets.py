"""Widgets of the desktop app one by one (pytest-qt, offscreen): forms, job queue, overlays, viewer, browser."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pytest

pytest.importorskip("pytestqt")

from app.core.jobs import Progress  # noqa: E402
from app.gui.main import configure_pyqtgraph  # noqa: E402

from gui_fakes import fake_layers, make_project, write_section  # noqa: E402


@pytest.fixture(autouse=True)
def _pyqtgraph():
    configure_pyqtgraph()


# ----------------------------------------------------------------------------- forms


@dataclass
class Params:
    """Parameters of a made-up pipeline."""

    epochs: int = 10  # passes over the data
    learning_rate: float = 2e-3
    use_tta: bool = True
    device: str = "auto"
    diameter: float | None = None  # None = estimate
    mode: Literal["fast", "full"] = "fast"
    sizes: list[int] = field(default_factory=lambda: [1, 2])

    def __post_init__(self):
        if self.epochs < 1:
            raise ValueError("epochs must be at least 1")


def test_form_built_from_dataclass_round_trips_values(qtbot):
    from app.gui.forms import DataclassForm

    form = DataclassForm(Params)
    qtbot.addWidget(form)
    assert set(form.editors) == {"epochs", "learning_rate", "use_tta", "device", "diameter", "mode", "sizes"}
    assert form.values() == Params()
    assert form.editors["epochs"].toolTip() == "passes over the data"  # from the source comment
    form.editors["epochs"].editor.setValue(3)
    form.editors["diameter"].auto.setChecked(False)
    form.editors["diameter"].editor.setValue(17.5)
    form.editors["mode"].editor.setCurrentIndex(1)
    form.editors["sizes"].editor.setText("[4, 5, 6]")
    form.editors["device"].editor.setCurrentText("cpu")
    assert form.values() == Params(epochs=3, diameter=17.5, mode="full", sizes=[4, 5, 6], device="cpu")
    form.set_values({"epochs": 7, "unknown": 1, "diameter": None})
    assert form.values().epochs == 7 and form.values().diameter is None


def test_form_reports_invalid_values(qtbot):
    from app.gui.forms import DataclassForm

    form = DataclassForm(Params)
    qtbot.addWidget(form)
    form.editors["epochs"].editor.setValue(0)
    with pytest.raises(ValueError, match="epochs must be at least 1"):
        form.values()
    form.editors["epochs"].editor.setValue(2)
    form.editors["sizes"].editor.setText("[1,")
    with pytest.raises(ValueError, match="Sizes: not valid JSON"):
        form.values()


# ----------------------------------------------------------------------------- job queue


def _counting_job(n, delay=0.0, fail_at=None):
    for i in range(n):
        if delay:
            time.sleep(delay)
        if fail_at == i:
            raise RuntimeError("boom at step %d" % i)
        yield Progress("count", i + 1, n, f"step {i + 1}")
    return n * 10


def test_job_queue_runs_jobs_in_order_with_progress_and_results(qtbot):
    from app.gui.job_queue import JobQueue
    from app.gui.job_queue_widget import JobQueueWidget

    queue = JobQueue()
    widget = JobQueueWidget(queue)
    qtbot.addWidget(widget)
    seen = []
    queue.changed.connect(lambda r: seen.append((r.title, r.status)))
    done = []
    first = queue.submit("first", lambda: _counting_job(3), on_success=done.append)
    second = queue.submit("second", lambda: _counting_job(2))
    assert queue.wait(10)
    assert (first.status, first.result, second.status, second.result) == ("finished", 30, "finished", 20)
    assert done == [30]
    assert seen.index(("first", "running")) < seen.index(("second", "running"))
    assert first.progress == Progress("count", 3, 3, "step 3")
    assert widget.tree.topLevelItemCount() == 2
    assert widget.tree.topLevelItem(0).text(1) == "finished"
    assert widget.summary.text() == "Idle"


def test_job_failure_keeps_message_and_traceback(qtbot):
    from app.gui.job_queue import JobQueue
    from app.gui.job_queue_widget import JobQueueWidget

    queue = JobQueue()
    widget = JobQueueWidget(queue)
    qtbot.addWidget(widget)
    with qtbot.waitSignal(queue.failed, timeout=10000) as blocker:
        record = queue.submit("bad", lambda: _counting_job(5, fail_at=2))
    assert blocker.args[0] is record
    assert record.status == "failed" and record.message == "RuntimeError: boom at step 2"
    assert "Traceback" in record.details and "step 2" in record.details  # the progress log is in the details
    dialog = widget.show_details(record)
    assert "boom at step 2" in dialog.findChild(__import__("PySide6.QtWidgets").QtWidgets.QPlainTextEdit).toPlainText()
    dialog.close()


def test_cancel_running_and_queued_jobs(qtbot):
    from app.gui.job_queue import JobQueue

    queue = JobQueue()
    cleaned = []

    def slow():
        try:
            yield from _counting_job(1000, delay=0.005)
        finally:
            cleaned.append(True)

    running = queue.submit("slow", slow)
    waiting = queue.submit("waiting", lambda: _counting_job(1))
    qtbot.waitUntil(lambda: running.status == "running" and running.progress is not None, timeout=5000)
    queue.cancel_all()
    assert queue.wait(10)
    assert running.status == "cancelled" and waiting.status == "cancelled"
    assert cleaned == [True]  # the generator's finally block ran
    assert running.progress.done < 1000


def test_a_job_in_another_lane_does_not_wait_for_the_main_lane(qtbot):
    from app.gui.job_queue import JobQueue

    queue = JobQueue()
    long = queue.submit("overnight batch", lambda: _counting_job(400, delay=0.005))
    quick = queue.submit("overview of a big image", lambda: _counting_job(2), lane="images")
    qtbot.waitUntil(lambda: quick.status == "finished", timeout=5000)
    assert long.status == "running"  # still going while the other lane finished
    queue.cancel_all()
    assert queue.wait(10) and long.status == "cancelled"


def test_format_seconds():
    from app.gui.job_queue_widget import format_seconds

    assert (format_seconds(None), format_seconds(12.4), format_seconds(185), format_seconds(3725)) == \
        ("", "12 s", "3 min 05 s", "1 h 02 min")


# ----------------------------------------------------------------------------- overlays


def test_overlays_draw_one_item_per_class_and_hit_test(qtbot):
    import pyqtgraph as pg

    from app.gui.layers_panel import LayersPanel
    from app.gui.overlays import OverlayManager

    widget = pg.GraphicsLayoutWidget()
    qtbot.addWidget(widget)
    view = widget.addViewBox(invertY=True)
    overlays = OverlayManager(view)
    panel = LayersPanel(overlays)
    qtbot.addWidget(panel)
    rng = np.random.default_rng(1)
    classes = ("Sertoli", "Spg", "m2m")
    cells = [{"id": i, "class": classes[i % 3], "box": [x, y, x + 8, y + 8]}
             for i, (x, y) in enumerate(rng.uniform(0, 5000, size=(5000, 2)))]
    layers = fake_layers(600, 800)
    layers["cells"] = cells
    overlays.set_document({"image": "a", "layers": layers})
    # zoomed out: one item per class; zoomed in: per class one item per 2048 px chunk (3 x 3 here)
    assert overlays.item_count() == 5 + 3
    overlays.update_detail(view_width=1000, image_px_per_screen_px=1)
    assert overlays.item_count() == 5 + 3 * 9
    assert not overlays.layers["cells"].whole_items["Spg"].isVisible()
    overlays.update_detail(view_width=20000, image_px_per_screen_px=2)
    assert overlays.layers["cells"].whole_items["Spg"].isVisible()
    # far out, 8 px cells would be under 3 screen pixels: a dot per cell instead of outlines
    overlays.update_detail(view_width=20000, image_px_per_screen_px=4)
    cells_layer = overlays.layers["cells"]
    assert cells_layer.mode == "points" and cells_layer.point_items["Spg"].isVisible()
    assert not cells_layer.whole_items["Spg"].isVisible()
    assert overlays.layers["tubules"].mode == "whole"  # 150 px tubules keep their outlines
    overlays.update_detail(view_width=20000, image_px_per_screen_px=2)
    assert overlays.object_count() == 5006
    spg = overlays.layers["cells"].data.outlines["Spg"]
    assert sum(len(x) for x, _y, _c in spg) == 5 * len([c for c in cells if c["class"] == "Spg"])
    assert sum(item.segment_count() for item in overlays.layers["cells"].items["Spg"]) == 4 * len(
        [c for c in cells if c["class"] == "Spg"])
    # hit test: cells above tubules, polygon containment for tubules
    cy, cx, r = 180.0, 200.0, 75.0
    hit = overlays.hit_test(cx, cy)
    assert hit[0] == "tubules" and hit[1]["id"] == 1
    assert overlays.hit_test(cx - r + 2, cy - r + 2) is None  # inside the box, outside the circle
    target = cells[42]
    hit = overlays.hit_test(target["box"][0] + 4, target["box"][1] + 4)
    assert hit[0] == "cells" and hit[1]["box"][0] <= target["box"][0] + 4 <= hit[1]["box"][2]
    # legend lists layers and classes with counts; toggles hide items
    top = panel.tree.topLevelItem(0)
    assert (top.text(0), top.text(1)) == ("tubules", "6")
    cells_item = panel.tree.topLevelItem(1)
    assert [cells_item.child(i).text(0) for i in range(3)] == ["Sertoli", "Spg", "m2m"]
    from PySide6.QtCore import Qt

    cells_item.setCheckState(0, Qt.CheckState.Unchecked)
    assert not any(item.isVisible() for item in overlays.layers["cells"].items["Spg"])
    assert not overlays.layers["cells"].whole_items["Spg"].isVisible()
    assert overlays.hit_test(target["box"][0] + 4, target["box"][1] + 4) is None or \
        overlays.hit_test(target["box"][0] + 4, target["box"][1] + 4)[0] == "tubules"


def test_generated_object_images_are_summed_in_place():
    from app.pipelines.kaizen.drawing import generated_objects_rgba

    stack = {"images": np.ones((2, 3, 3), np.float32), "offsets": np.array([[0, 0], [1, 2]]),
             "shapes": np.array([[3, 3], [2, 3]])}
    rgba, rect = generated_objects_rgba(stack, colour="#ff0000")
    assert rect == (0.0, 0.0, 5.0, 3.0) and rgba.shape == (3, 5, 4)
    # pixel (1, 2) is covered by both objects: brightest, full alpha; (0, 0) by one; (0, 4) by none
    assert rgba[1, 2, 3] == 255 and rgba[0, 0, 3] == 127 and rgba[0, 4, 3] == 0
    assert rgba[1, 2, :3].tolist() == [255, 0, 0]


def test_kaizen_objects_get_the_outline_of_their_whole_mask():
    from app.pipelines.kaizen.drawing import outline_objects_from_stack

    masks = np.zeros((2, 8, 8), bool)
    masks[0, 2:6, 1:5] = True  # a 4 x 4 square at crop (2, 1)
    masks[1, :3, :3] = True
    stack = {"masks": masks, "offsets": np.array([[10, 20], [0, 0]]), "shapes": np.array([[8, 8], [3, 3]]),
             "ids": np.array([7, 8])}
    kept = [[0.0, 0.0], [1.0, 0.0], [1.0, 1.0]]
    objects = [{"id": 7, "box": [21, 12, 25, 16]}, {"id": 8, "box": [0, 0, 3, 3], "polygon": kept},
               {"id": 9, "box": [0, 0, 1, 1]}]
    doc = {"layers": {"objects": objects}}
    assert outline_objects_from_stack(doc, stack) == 1
    first, second, third = doc["layers"]["objects"]
    ring = np.array(first["polygon"])
    # pixels x 21..24, y 12..15 of the image (crop offset + mask position); the outline follows their edges,
    # as the object's box [21, 12, 25, 16] does
    assert ring[:, 0].min() == pytest.approx(21) and ring[:, 0].max() == pytest.approx(25)
    assert ring[:, 1].min() == pytest.approx(12) and ring[:, 1].max() == pytest.approx(16)
    assert second["polygon"] == kept and "polygon" not in third  # own outline kept; no mask, no outline


def test_run_panel_follows_the_results_until_the_user_picks_a_pipeline(qtbot):
    from app.core.settings import Settings
    from app.gui.run_panel import RunPanel

    panel = RunPanel(Settings())
    qtbot.addWidget(panel)
    panel.suggest_pipeline("kaizen")
    assert panel.pipeline_combo.currentData() == "kaizen"
    index = panel.pipeline_combo.findData("stagetool")
    panel.pipeline_combo.setCurrentIndex(index)
    panel.pipeline_combo.activated.emit(index)  # what a click on the list does
    panel.suggest_pipeline("kaizen")
    assert panel.pipeline_combo.currentData() == "stagetool"
    remembered = RunPanel(Settings(pipeline_params={"__last__": {"pipeline": "brightfield"}}))
    qtbot.addWidget(remembered)
    remembered.suggest_pipeline("kaizen")
    assert remembered.pipeline_combo.currentData() == "brightfield"


def test_excluded_tubules_are_drawn_apart():
    from app.gui.overlays import EXCLUDED, prepare_layer

    layers = fake_layers(600, 800)
    layers["tubules"][0]["excluded"] = True
    data = prepare_layer("tubules", layers["tubules"])
    assert data.class_names[-1] == EXCLUDED and data.counts()[EXCLUDED] == 1
    assert data.counts()["I-V"] == 1  # the other I-V tubule


# ----------------------------------------------------------------------------- tile viewer


def test_viewer_shows_overview_then_detail_and_channel_changes(qtbot, tmp_path):
    from app.core.jobs import run
    from app.core.pyramid import build_pyramid
    from app.gui.channel_display import composite
    from app.gui.channel_panel import ChannelPanel
    from app.gui.tile_viewer import TileViewer

    path = write_section(tmp_path / "s.ome.tif", height=1200, width=1600, channels=2)
    viewer = TileViewer()
    panel = ChannelPanel(viewer)
    qtbot.addWidget(viewer)
    qtbot.addWidget(panel)
    viewer.resize(800, 600)
    viewer.show()
    # a cache is needed when the overview must be smaller than the image
    cache = tmp_path / "cache"
    run(build_pyramid(path, cache, min_side=300))
    viewer.overview_side = 800
    with qtbot.waitSignal(viewer.image_opened, timeout=10000):
        viewer.open_image("s", path, cache)
    assert viewer.image_size() == (1200, 1600)
    assert viewer.overview_item.image.shape == (600, 800, 3)
    assert [c.name for c in viewer.channels] == ["DAPI", "marker1"]
    assert viewer.channels[0].colour == "#5a8cff"  # DAPI is blue
    assert panel.list.count() == 2
    qtbot.waitUntil(viewer.is_idle, timeout=5000)
    # zoom in: a full-resolution detail of the visible region appears
    from PySide6.QtCore import QRectF

    viewer.view.setRange(QRectF(100, 100, 300, 200), padding=0)
    qtbot.waitUntil(lambda: viewer.is_idle() and viewer.detail_level() == 0, timeout=5000)
    detail = viewer._detail
    assert detail.rect.contains(QRectF(100, 100, 300, 200))
    assert detail.raw.shape[1] < 1200  # only the region, not the whole image
    values = viewer.pixel_values(150.5, 120.5)
    assert values is not None and len(values) == 2
    # hiding a channel recomposites: the detail turns black where only that channel was visible
    before = viewer.detail_item.image.copy()
    viewer.set_channel(0, visible=False)
    viewer.set_channel(1, visible=False)
    qtbot.waitUntil(lambda: viewer.is_idle() and viewer.detail_item.image.max() == 0, timeout=5000)
    assert before.max() > 0
    # composite is additive and clipped
    data = np.array([[[0, 100]], [[100, 100]]], dtype=np.uint16)
    from app.gui.channel_display import ChannelDisplay

    rgb = composite(data, [ChannelDisplay("a", "#ff0000", (0, 100)), ChannelDisplay("b", "#ff8000", (0, 100))])
    assert rgb[0, 0].tolist() == [255, 128, 0] and rgb[0, 1].tolist() == [255, 128, 0]
    viewer.shutdown()


def test_viewer_steps_through_focal_planes(qtbot, tmp_path):
    import tifffile

    from app.gui.tile_viewer import TileViewer

    planes = np.stack([np.full((40, 50), 10 * (z + 1), np.uint8) for z in range(3)])
    planes[:, 0, 0] = 0
    path = tmp_path / "stack.ome.tif"
    tifffile.imwrite(path, planes, ome=True, metadata={"axes": "ZYX"})
    viewer = TileViewer()
    qtbot.addWidget(viewer)
    with qtbot.waitSignal(viewer.image_opened, timeout=10000):
        viewer.open_image("stack", path)
    assert not viewer.z_slider.isHidden() and viewer.z_slider.maximum() == 2
    assert viewer.pixel_values(10.5, 10.5) == [10.0]
    viewer.set_z(2)
    qtbot.waitUntil(lambda: viewer.is_idle() and viewer.pixel_values(10.5, 10.5) == [30.0], timeout=5000)
    assert viewer.z_label.text() == "z 3/3"
    viewer.shutdown()


def test_viewer_asks_for_a_pyramid_when_the_image_is_too_big(qtbot, tmp_path):
    from app.gui.tile_viewer import TileViewer

    path = write_section(tmp_path / "s.ome.tif", height=600, width=800)
    viewer = TileViewer()
    viewer.overview_side = 500
    qtbot.addWidget(viewer)
    with qtbot.waitSignal(viewer.needs_pyramid, timeout=10000) as blocker:
        viewer.open_image("s", path, tmp_path / "nocache")
    assert blocker.args == ["s"]
    viewer.shutdown()


# ----------------------------------------------------------------------------- project browser


def test_project_browser_lists_images_runs_reports_and_drops(qtbot, tmp_path):
    from PySide6.QtCore import QMimeData, QPointF, Qt, QUrl
    from PySide6.QtGui import QDropEvent

    from app.gui.project_browser import ProjectBrowser

    project = make_project(tmp_path, n_images=2, with_run=True)
    (project.reports_dir / "r.xlsx").write_bytes(b"x")
    browser = ProjectBrowser()
    qtbot.addWidget(browser)
    browser.set_project(project)
    labels = [browser.tree.topLevelItem(i).text(0) for i in range(3)]
    assert labels == ["Images (2)", "Runs (1)", "Reports (1)"]
    qtbot.waitUntil(lambda: len(browser.thumbnails) == 2, timeout=10000)
    with qtbot.waitSignal(browser.image_selected) as blocker:
        browser.tree.setCurrentItem(browser._image_items["section2"])
    assert blocker.args == ["section2"]
    assert browser.selected_images() == ["section2"]
    run_item = browser._run_items[project.runs()[0].id]
    assert run_item.childCount() == 2
    with qtbot.waitSignal(browser.files_dropped) as blocker:
        mime = QMimeData()
        mime.setUrls([QUrl.fromLocalFile(str(tmp_path / "new.tif"))])
        event = QDropEvent(QPointF(5, 5), Qt.DropAction.CopyAction, mime, Qt.MouseButton.LeftButton,
                           Qt.KeyboardModifier.NoModifier)
        browser.tree.dropEvent(event)
    assert blocker.args == [[Path(tmp_path / "new.tif")]]
    browser.filter.setText("2")
    assert browser._image_items["section1"].isHidden() and not browser._image_items["section2"].isHidden()
    browser.shutdown()
