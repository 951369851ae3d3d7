"""One home for image files (app.core.formats): the GUI's add dialog and add-folder, `project add` and batch
listing accept the same files and name them the same way (issue 13, item 5)."""

from __future__ import annotations

import fnmatch
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import tifffile
from PIL import Image as PILImage

from app.pipelines.runner import image_items
from app.cli import main
from app.core.formats import IMAGE_SUFFIXES, image_beside, image_stem
from app.core.project import Project

# file -> the image name every entry point gives it (None: not an image, everyone skips it)
FILES = {
    "a.tif": "a", "b.ome.tif": "b", "c.png": "c", "d.jpg": "d", "E.JPEG": "E", "f.tiff": "f", "g.btf": "g",
    "k.ome.btf": "k", "notes.txt": None, "table.csv": None, "a.tif.bak": None,
}


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """A folder of small images in every plain format, with non-image files and a sub-folder among them."""
    folder = tmp_path / "mixed"
    (folder / "sub").mkdir(parents=True)
    data = np.arange(24 * 32, dtype=np.uint8).reshape(24, 32)
    for name in FILES:
        path = folder / name
        if name.lower().endswith((".png", ".jpg", ".jpeg")):
            PILImage.fromarray(data).save(path)
        elif name.lower().endswith((".tif", ".tiff", ".btf")):
            tifffile.imwrite(path, data, bigtiff=name.endswith(".btf"), ome=".ome." in name or None)
        else:
            path.write_text("not an image")
    tifffile.imwrite(folder / "sub" / "h.tif", data)  # folders are not searched recursively
    return folder


def _expected() -> list[str]:
    return sorted(name for name in FILES.values() if name)


def _fake_window(project: Project) -> SimpleNamespace:
    """The little of MainWindow that ProjectController.add_images uses."""
    errors: list[tuple] = []
    window = SimpleNamespace(project=project, current_image="shown", errors=errors,
                             browser=SimpleNamespace(refresh=lambda: None),
                             show_error=lambda *args: errors.append(args),
                             statusBar=lambda: SimpleNamespace(showMessage=lambda *args: None),
                             settings=SimpleNamespace(last_folder=lambda kind: "", remember_folder=lambda *a: None))
    return window


def test_gui_add_folder_project_add_and_batch_accept_the_same_files(folder, tmp_path, qapp, capsys):
    from app.gui.project_controller import ProjectController

    gui_project = Project.create(tmp_path / "gui", name="gui")
    window = _fake_window(gui_project)
    gui_added = ProjectController(window).add_images([folder])  # a folder dropped on the browser
    assert window.errors == []

    assert main(["project", "new", str(tmp_path / "cli")]) == 0
    assert main(["project", "add", str(tmp_path / "cli"), str(folder)]) == 0
    cli_names = [entry.name for entry in Project.open(tmp_path / "cli").images()]

    batch_names = [item.name for item in image_items([folder])]

    assert sorted(gui_added) == sorted(cli_names) == sorted(batch_names) == _expected()


def test_the_add_dialog_filter_offers_exactly_the_files_a_folder_add_takes(folder, tmp_path, qapp, monkeypatch):
    """The dialog's name filter (Qt matches it ignoring case) picks the same files as adding the folder."""
    from PySide6.QtWidgets import QFileDialog

    from app.gui import project_controller

    offered: list[str] = []

    def dialog(parent, title, start, filters):
        patterns = filters.split(";;")[0].split("(", 1)[1].rstrip(")").split()
        offered.extend(p.name for p in sorted(folder.iterdir())
                       if p.is_file() and any(fnmatch.fnmatch(p.name.lower(), pat) for pat in patterns))
        return [str(folder / name) for name in offered], filters

    monkeypatch.setattr(QFileDialog, "getOpenFileNames", staticmethod(dialog))
    window = _fake_window(Project.create(tmp_path / "dialog", name="dialog"))
    controller = project_controller.ProjectController(window)
    controller.add_images_dialog()
    assert sorted(image_stem(name) for name in offered) == _expected()
    assert sorted(e.name for e in window.project.images()) == _expected()
    assert all(suffix == suffix.lower() for suffix in IMAGE_SUFFIXES)


def test_an_annotation_file_finds_the_image_named_like_it(tmp_path):
    """QuPath's `a.geojson` and `a.tif.geojson` both belong to a.tif; a.labels.tif and a text file do not count."""
    for name in ("a.labels.tif", "a.tif", "a.txt", "b.ome.tif"):
        if name.endswith(".tif"):
            tifffile.imwrite(tmp_path / name, np.zeros((4, 4), np.uint8))
        else:
            (tmp_path / name).write_text("x")
    assert image_beside(tmp_path / "a.geojson") == tmp_path / "a.tif"
    assert image_beside(tmp_path / "a.tif.geojson") == tmp_path / "a.tif"
    assert image_beside(tmp_path / "b.geojson") == tmp_path / "b.ome.tif"
    assert image_beside(tmp_path / "b.ome.geojson") == tmp_path / "b.ome.tif"  # the old Stagetool rule
    assert image_beside(tmp_path / "c.geojson") is None


def test_a_brightfield_stack_file_is_named_as_the_project_names_it(folder):
    """`brightfield segment a.b.ome.tif` names its field a.b (it was a: the name cut at the first dot)."""
    from app.pipelines.brightfield.predict import collect_fields

    stack = folder / "set1.day2.ome.tif"
    tifffile.imwrite(stack, np.zeros((3, 8, 8), np.uint8), ome=True)
    assert [f.name for f in collect_fields([stack])] == [image_stem(stack)] == ["set1.day2"]
