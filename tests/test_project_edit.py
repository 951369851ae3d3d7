"""Relinking moved raw files and setting pixel size / channel names a plain TIFF lacks (core, CLI, pipeline)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile

from app.cli import main
from app.core.errors import ProjectError, UserError
from app.core.project import Project
from app.core.project_edit import apply_entry_metadata, missing_images, relink, set_image_metadata
from gui_testing import main_window


def _plain_tiff(path: Path, channels: int = 2, size: int = 32) -> Path:
    """A TIFF with pixels only: no channel names, no pixel size."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = np.arange(channels * size * size, dtype=np.uint16).reshape(channels, size, size)
    tifffile.imwrite(path, data if channels > 1 else data[0])
    return path


@pytest.fixture
def moved(tmp_path):
    """A project linking raw files in raw/animal1/, raw/animal2/; then the raw folder moves to server/lab/raw."""
    raw = tmp_path / "raw"
    files = [_plain_tiff(raw / "animal1" / "sec_a.tif"), _plain_tiff(raw / "animal1" / "sec_b.tif"),
             _plain_tiff(raw / "animal2" / "sec_a.tif")]
    project = Project.create(tmp_path / "proj")
    names = [project.add_image(f).name for f in files]
    new_root = tmp_path / "server" / "lab"
    new_root.mkdir(parents=True)
    shutil.move(str(raw), str(new_root / "raw"))
    return Project.open(tmp_path / "proj"), names, new_root / "raw"


def test_locating_one_moved_file_finds_the_others_by_the_same_layout(moved):
    project, names, new_raw = moved
    assert missing_images(project) == names
    result = relink(project, new_raw / "animal1" / "sec_b.tif")
    assert result.missing == [] and set(result.relinked) == set(names)
    reopened = Project.open(project.folder)
    assert reopened.image_path(names[2]) == new_raw / "animal2" / "sec_a.tif"  # same name, other animal
    assert missing_images(reopened) == []


def test_relink_to_a_folder_finds_files_by_the_tail_of_their_old_path(moved):
    project, names, new_raw = moved
    result = relink(project, new_raw.parent)
    assert result.missing == [] and result.relinked[names[0]] == new_raw / "animal1" / "sec_a.tif"


def test_a_file_name_shared_by_two_missing_images_needs_the_image_named(moved):
    project, names, new_raw = moved
    with pytest.raises(ProjectError, match="exactly one missing image"):
        relink(project, new_raw / "animal2" / "sec_a.tif")
    result = relink(project, new_raw / "animal2" / "sec_a.tif", image=names[2])
    assert result.missing == []


def test_cli_relink_and_its_one_line_error(moved, capsys):
    project, names, new_raw = moved
    assert main(["project", "relink", str(project.folder), str(project.folder / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "does not exist" in err
    assert main(["project", "relink", str(project.folder), str(new_raw), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["missing"] == []


def test_pixel_size_and_channels_are_stored_and_checked(tmp_path, capsys):
    project = Project.create(tmp_path / "proj")
    name = project.add_image(_plain_tiff(tmp_path / "plain.tif")).name
    assert project.image(name).pixel_size_um is None
    assert main(["project", "set", str(project.folder), name, "--pixel-size", "0.5", "--channels", "DAPI,SOX9"]) == 0
    stored = json.loads((project.folder / "project.json").read_text())["images"][0]
    assert stored["pixel_size_um"] == 0.5 and stored["channels"] == ["DAPI", "SOX9"]
    with pytest.raises(ProjectError, match="2 channel"):
        set_image_metadata(project, name, channels="DAPI")
    with pytest.raises(ProjectError, match="positive"):
        set_image_metadata(project, name, pixel_size_um=-1)
    assert main(["project", "set", str(project.folder), name, "--channels", "DAPI,,X"]) == 2
    assert "empty names" in capsys.readouterr().err


def test_project_values_win_over_the_file_s(tmp_path):
    from app.core.images import open_image

    path = _plain_tiff(tmp_path / "plain.tif")
    with open_image(path) as image:
        apply_entry_metadata(image, {"pixel_size_um": 0.25, "channel_names": ["DAPI", "SOX9"]})
        assert image.info.pixel_size_um == 0.25 and image.info.channel_names == ("DAPI", "SOX9")
        assert image.channel_index("SOX9") == 1


def test_a_stagetool_run_uses_the_project_s_pixel_size_and_channel_names(tmp_path, monkeypatch):
    """A plain TIFF analysed in a project: SOX9 found by the name set in the project, µm from the project."""
    from test_stagetool_section import SCALE, draw_section, oracle_model

    from app.core.jobs import run
    from app.pipelines.registry import get
    from app.pipelines.runner import clear_model_cache
    from app.pipelines.stagetool import loading, predict
    from app.pipelines.stagetool.params import AnalyzeParams

    monkeypatch.setattr(predict, "intensity_range", lambda overview: (0.0, SCALE))
    models = {"tubules": oracle_model("tubules", 128, 2), "cells": oracle_model("cells", 128)}
    monkeypatch.setattr(loading, "load_model", lambda ref, kind, device: models[kind])  # the spec's load
    clear_model_cache()
    image, _, _ = draw_section()
    path = tmp_path / "plain.tif"
    tifffile.imwrite(path, image.astype(np.uint16))  # no names, no pixel size
    project = Project.create(tmp_path / "proj")
    name = project.add_image(path).name
    set_image_metadata(project, name, pixel_size_um=0.5, channels="DAPI,SOX9")
    params = AnalyzeParams(tta="off", overlap=32, map_scale=2, antibodies="SOX9=SOX9:400", threads=1)
    folder = run(get("stagetool").analyze(project, [name], params))
    meta = json.loads((Path(folder) / name / predict.PREDICTIONS_FILE).read_text())["meta"]
    assert meta["pixel_size_um"] == 0.5
    assert meta["antibodies"][0]["channel_index"] == 1


# ------------------------------------------------------------------------------------------- GUI


@pytest.fixture
def window(qtbot):
    pytest.importorskip("pytestqt")

    from gui_fakes import register_fake

    register_fake()
    win = main_window(qtbot)
    yield win
    win.confirm = lambda *args: True
    win.queue.shutdown()
    win.close()


def test_gui_locate_file_relinks_the_other_moved_images(window, tmp_path):
    from gui_fakes import make_project

    project = make_project(tmp_path, n_images=2)
    shutil.move(str(tmp_path / "raw"), str(tmp_path / "moved"))
    assert window.open_project(project.folder)
    window.open_image("section2")
    title, message, _ = window.errors[-1]
    assert title == "Image file missing"
    box = window._message_boxes[-1]
    assert "Locate file..." in [b.text() for b in box.buttons()]
    assert window.image_tools.locate("section2", choose=lambda *_: str(tmp_path / "moved" / "section2.ome.tif"))
    assert window.wait_until_ready(20)
    assert window.current_image == "section2" and window.viewer.image_size() == (600, 800)
    assert missing_images(Project.open(project.folder)) == []  # section1 was found by the same layout


def test_gui_pixel_size_and_channels_are_saved_and_draw_the_scale_bar(window, tmp_path):
    from app.gui.image_tools import ImageMetadataDialog

    path = _plain_tiff(tmp_path / "raw" / "plain.tif", size=256)
    project = Project.create(tmp_path / "proj")
    name = project.add_image(path).name
    assert window.open_project(project.folder)
    assert window.wait_until_ready(20) and window.viewer._scale_bar is None  # the file has no pixel size
    dialog = ImageMetadataDialog(window.project, name, window)
    dialog.channels.setText("DAPI")
    dialog.accept()
    assert "2 channel" in dialog.error.text() and dialog.result() == 0  # told in the dialog, not saved
    dialog.pixel_size.setValue(0.5)
    dialog.channels.setText("DAPI, SOX9")
    dialog.accept()
    assert dialog.result() == 1
    stored = Project.open(project.folder).image(name)
    assert stored.pixel_size_um == 0.5 and stored.channels == ["DAPI", "SOX9"]
    window.open_image(name)
    assert window.wait_until_ready(20)
    assert window.viewer._scale_bar is not None and window.viewer._scale_bar.pixel_size_um == 0.5
    assert [c.name for c in window.viewer.channels] == ["DAPI", "SOX9"]
    assert window.channel_panel.list.item(1).text().startswith("SOX9")


def test_export_view_writes_the_picture_with_overlays_at_the_chosen_resolution(window, tmp_path):
    from gui_fakes import make_project

    from app.gui.image_tools import export_view

    project = make_project(tmp_path, n_images=1, with_run=True)
    assert window.open_project(project.folder, image="section1")
    assert window.wait_until_ready(20) and window.viewer.overlays.object_count() > 0
    viewport = window.viewer.graphics.viewport().size()
    png = export_view(window.viewer, tmp_path / "view.png", scale=2)
    from PySide6.QtGui import QImage

    image = QImage(str(png))
    assert (image.width(), image.height()) == (2 * viewport.width(), 2 * viewport.height())
    tif = tifffile.imread(export_view(window.viewer, tmp_path / "view.tif"))
    assert tif.shape == (viewport.height(), viewport.width(), 3) and tif.max() > 0
    # overlays are in the figure: hiding them changes the picture
    for layer in window.viewer.overlays.layers.values():
        layer.set_visible(False)
    plain = tifffile.imread(export_view(window.viewer, tmp_path / "plain.tif"))
    assert np.abs(plain.astype(int) - tif.astype(int)).sum() > 0
    with pytest.raises(UserError, match="png or .tif"):
        export_view(window.viewer, tmp_path / "view.bmp")


def test_setting_metadata_from_a_stale_project_keeps_what_another_writer_added(tmp_path):
    """update_image is a read-modify-write under the lock: the CLI's add meanwhile is not lost."""
    gui = Project.create(tmp_path / "proj")
    first = gui.add_image(_plain_tiff(tmp_path / "a.tif")).name
    Project.open(tmp_path / "proj").add_image(_plain_tiff(tmp_path / "b.tif"))  # the CLI, meanwhile
    gui.update_image(first, pixel_size_um=0.5)
    again = Project.open(tmp_path / "proj")
    assert [e.name for e in again.images()] == ["a", "b"]
    assert again.image(first).pixel_size_um == 0.5


def test_a_project_saved_with_the_old_1_dpi_calibration_reads_it_as_unknown(tmp_path):
    """Projects saved before uncalibrated TIFFs were read as unknown held 25,400 µm pixels: now None."""
    project = Project.create(tmp_path / "proj")
    name = project.add_image(_plain_tiff(tmp_path / "plain.tif")).name
    path = project.folder / "project.json"
    data = json.loads(path.read_text())
    data["images"][0]["pixel_size_um"] = 25400.0
    path.write_text(json.dumps(data))
    assert Project.open(project.folder).image(name).pixel_size_um is None
    with pytest.raises(ProjectError, match="positive"):
        set_image_metadata(project, name, pixel_size_um=25400)
