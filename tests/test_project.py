"""Tests for app.core.project (and the atomic writes it re-exports): layout, images, runs, reports, migration."""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import tifffile

import app

from app.core.errors import ImageError, ProjectError
from app.core.project import (
    MIGRATIONS,
    SCHEMA_VERSION,
    Project,
    atomic_path,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
)
from app.core.runs import Run


def write_tiff(path: Path, channels: tuple[str, ...] = ("DAPI", "SOX9"), pixel_size: float = 0.5,
               value: int = 7) -> Path:
    """A tiny 2-channel OME-TIFF with channel names and pixel size in its metadata."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = np.full((len(channels), 8, 8), value, np.uint16)
    tifffile.imwrite(path, data, ome=True, metadata={
        "axes": "CYX", "Channel": {"Name": list(channels)},
        "PhysicalSizeX": pixel_size, "PhysicalSizeY": pixel_size,
    })
    return path


def fingerprint(path: Path) -> tuple[bytes, int]:
    """Bytes and modification time of a file, to prove it was never written."""
    return path.read_bytes(), os.stat(path).st_mtime_ns


@pytest.fixture
def project(tmp_path: Path) -> Project:
    return Project.create(tmp_path / "MyProject", "My project")


@pytest.fixture
def raw(tmp_path: Path) -> Path:
    """A raw image outside the project, as a lab's acquisition folder would hold it."""
    return write_tiff(tmp_path / "raw" / "section1.ome.tif")


# ----------------------------------------------------------------------------- create / open


def test_create_makes_layout_and_open_reads_it_back(tmp_path: Path) -> None:
    created = Project.create(tmp_path / "P", "Testis batch")
    for sub in ("images", "annotations", "runs", "reports"):
        assert (tmp_path / "P" / sub).is_dir()
    data = json.loads((tmp_path / "P" / "project.json").read_text())
    assert data["schema_version"] == SCHEMA_VERSION == 1
    assert data["name"] == "Testis batch" and data["images"] == [] and data["settings"] == {}
    assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", data["created"])
    created.settings["tile_size"] = 1024
    created.save()
    (tmp_path / "P" / "annotations").rmdir()  # empty folders get lost in copies (git keeps none)
    opened = Project.open(tmp_path / "P")
    assert opened.name == "Testis batch" and opened.settings == {"tile_size": 1024}
    assert (tmp_path / "P" / "annotations").is_dir()
    assert opened.created == data["created"]
    assert opened.root == opened.folder == tmp_path / "P"


def test_create_refuses_non_empty_folder_and_existing_project(tmp_path: Path) -> None:
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    with pytest.raises(ProjectError, match="not empty"):
        Project.create(busy, "x")
    assert sorted(p.name for p in busy.iterdir()) == ["notes.txt"]
    Project.create(tmp_path / "p", "x")
    before = (tmp_path / "p" / "project.json").read_bytes()
    with pytest.raises(ProjectError, match="already holds a project"):
        Project.create(tmp_path / "p", "y")
    assert (tmp_path / "p" / "project.json").read_bytes() == before
    empty = tmp_path / "empty"
    empty.mkdir()
    assert Project.create(empty).name == "empty"  # an empty existing folder is fine


def test_open_refuses_folder_without_project(tmp_path: Path) -> None:
    with pytest.raises(ProjectError, match="not a Stagescope project"):
        Project.open(tmp_path)


@pytest.mark.parametrize("content, message", [
    (b'{"schema_version": 1, "name": "x", "images": [', "corrupt"),
    (b"\xff\xfe\x00garbage", "corrupt"),
    (b"[1, 2]", "corrupt"),
    (b'{"name": "x"}', "schema_version"),
    (b'{"schema_version": 1, "images": [{"path": "a.tif", "mode": "link"}]}', "no 'name'"),
    (b'{"schema_version": 7, "name": "x", "images": []}', "newer Stagescope"),
    (b'{"schema_version": 1, "images": [{"name": "a", "path": "a.tif", "mode": "link"},'
     b' {"name": "A", "path": "b.tif", "mode": "link"}]}', "used twice: A, a"),
    (b'{"schema_version": 1, "images": {}}', "must be an object and 'images' a list"),
])
def test_bad_project_json_is_refused_and_left_untouched(tmp_path: Path, content: bytes, message: str) -> None:
    folder = tmp_path / "P"
    folder.mkdir()
    (folder / "project.json").write_bytes(content)
    with pytest.raises(ProjectError, match=message) as info:
        Project.open(folder)
    assert "project.json" in str(info.value)
    assert (folder / "project.json").read_bytes() == content
    assert sorted(p.name for p in folder.iterdir()) == ["project.json"]  # no backup, no folders, no temp


def test_version_0_project_is_migrated_with_backup(tmp_path: Path, raw: Path) -> None:
    folder = tmp_path / "Old"
    folder.mkdir()
    v0 = {"schema_version": 0, "name": "old lab project", "created": "2021-03-04T10:00:00+01:00",
          "version": "0.0.3", "images": [
              {"file": str(raw), "channels": ["DAPI", "SOX9"], "pixel_size": 0.5},
              {"file": str(tmp_path / "other" / "section1.tif"), "channels": ["DAPI"]},
          ]}
    original = json.dumps(v0).encode()
    (folder / "project.json").write_bytes(original)
    assert 0 in MIGRATIONS

    project = Project.open(folder)

    assert (folder / "project.json.bak-v0").read_bytes() == original
    data = json.loads((folder / "project.json").read_text())
    assert data["schema_version"] == 1 and data["app_version"] == app.__version__
    assert [e.name for e in project.images()] == ["section1", "section1_2"]
    first = project.image("section1")
    assert (first.mode, first.channels, first.pixel_size_um) == ("link", ["DAPI", "SOX9"], 0.5)
    assert first.added == "2021-03-04T10:00:00+01:00"
    assert project.image_path("section1") == raw
    assert project.image("section1_2").pixel_size_um is None
    # opening again does not migrate again nor write a second backup
    Project.open(folder)
    assert sorted(p.name for p in folder.glob("project.json*")) == ["project.json", "project.json.bak-v0"]


# ---------------------------------------------------------------------------------- images


def test_link_image_reads_metadata_and_never_writes_raw(project: Project, raw: Path) -> None:
    before = fingerprint(raw)
    entry = project.add_image(raw, mode="link", group="control")
    assert (entry.name, entry.mode, entry.group) == ("section1", "link", "control")
    assert entry.channels == ["DAPI", "SOX9"] and entry.pixel_size_um == pytest.approx(0.5)
    assert entry.path == str(raw) and Path(entry.path).is_absolute()
    reopened = Project.open(project.folder)
    assert reopened.image_path("section1") == raw
    with reopened.open_image("section1") as image:
        assert list(image.info.channel_names) == ["DAPI", "SOX9"]
        assert int(image.read(channel="SOX9").max()) == 7
    reopened.remove_image("section1")
    assert reopened.images() == [] and Project.open(project.folder).images() == []
    assert raw.exists() and fingerprint(raw) == before
    assert list(project.images_dir.iterdir()) == []


def test_copy_image_goes_into_images_and_remove_deletes_only_the_copy(project: Project, raw: Path) -> None:
    before = fingerprint(raw)
    entry = project.add_image(raw, mode="copy")
    assert entry.mode == "copy" and entry.path == "images/section1.ome.tif"  # relative, posix
    copy = project.image_path("section1")
    assert copy == project.folder / "images" / "section1.ome.tif"
    assert copy.read_bytes() == before[0]
    assert os.stat(copy).st_mtime_ns == before[1]  # copy2 keeps the timestamp
    assert [p.name for p in project.images_dir.iterdir()] == ["section1.ome.tif"]  # no temp left
    project.remove_image("section1")
    assert not copy.exists()
    assert fingerprint(raw) == before


def test_image_inside_project_is_stored_relative(project: Project) -> None:
    inside = write_tiff(project.folder / "images" / "dropped.tif")
    entry = project.add_image(inside)
    assert entry.path == "images/dropped.tif"
    assert project.image_path("dropped") == inside


def test_duplicate_names_get_a_suffix_and_same_file_is_refused(project: Project, raw: Path, tmp_path: Path) -> None:
    other = write_tiff(tmp_path / "raw2" / "section1.ome.tif", value=9)
    project.add_image(raw)
    assert project.add_image(other).name == "section1_2"
    upper = write_tiff(tmp_path / "raw3" / "SECTION1.tif")
    assert project.add_image(upper).name == "SECTION1_3"  # names compare without case
    with pytest.raises(ProjectError, match="already in the project as 'section1'"):
        project.add_image(raw)
    with pytest.raises(ProjectError, match="already has an image named 'Section1_2'"):
        project.add_image(write_tiff(tmp_path / "raw4" / "x.tif"), name="Section1_2")
    copied = [project.add_image(p, mode="copy").path for p in (raw, other)]
    assert copied == ["images/section1_4.ome.tif", "images/section1_5.ome.tif"]
    assert project.image_path("section1_5").read_bytes() == other.read_bytes()
    assert [e.name for e in Project.open(project.folder).images()] == [
        "section1", "section1_2", "SECTION1_3", "section1_4", "section1_5"]


def test_bad_image_requests(project: Project, tmp_path: Path, raw: Path) -> None:
    with pytest.raises(ImageError, match="is not a file"):
        project.add_image(tmp_path / "missing.tif")
    with pytest.raises(ProjectError, match="'copy' or 'link'"):
        project.add_image(raw, mode="move")
    with pytest.raises(ProjectError, match="not usable"):
        project.add_image(raw, name="a/b")
    with pytest.raises(ProjectError, match="no image named 'nope'"):
        project.image_path("nope")
    assert project.images() == []


def test_groups_and_entries_are_copies(project: Project, raw: Path, tmp_path: Path) -> None:
    project.add_image(raw, group="wt")
    project.add_image(write_tiff(tmp_path / "b.tif"), group="ko")
    assert [e.name for e in project.images(group="ko")] == ["b"]
    project.images()[0].group = "changed"  # a returned entry does not alter the project
    assert project.image("section1").group == "wt"
    project.set_group("section1", "ko")
    assert [e.name for e in Project.open(project.folder).images(group="ko")] == ["section1", "b"]


# ------------------------------------------------------------------------------------ runs


@dataclass
class Params:
    tile_size: int = 1024
    threshold: float = 0.5


def test_run_records_parameters_models_and_results(project: Project) -> None:
    run = project.new_run("stagetool", Params(), ["tubules-v1", "cells-v1"])
    assert re.fullmatch(r"\d{8}-\d{6}-\d{3}-[0-9a-f]{6}", run.id)
    assert run.folder == project.folder / "runs" / run.id
    data = json.loads((run.folder / "run.json").read_text())
    assert data["pipeline"] == "stagetool" and data["status"] == "running" and data["finished"] is None
    assert data["parameters"] == {"tile_size": 1024, "threshold": 0.5}
    assert data["models"] == ["tubules-v1", "cells-v1"]

    labels = run.image_dir("s1") / "labels.tif"
    atomic_write_bytes(labels, b"fake")
    run.mark_image_done("s1", {"labels": labels, "n_tubules": np.int64(12)})
    run.mark_image_failed("s2", "out of memory")
    run.finish("failed")

    loaded = Run.load(run.folder)
    assert loaded.results["s1"]["outputs"] == {"labels": "s1/labels.tif", "n_tubules": 12}
    assert loaded.output_path("s1", "labels") == labels
    assert loaded.is_done("s1") and not loaded.is_done("s2")
    assert loaded.failed == {"s2": "out of memory"}
    assert loaded.status == "failed" and loaded.finished is not None
    with pytest.raises(ValueError):
        loaded.finish("great")


def test_restarted_batch_skips_done_images(project: Project) -> None:
    images = ["a", "b", "c", "d"]
    processed: list[str] = []

    def batch(run: Run, crash_after: int | None = None) -> None:
        for name in images:
            if run.is_done(name):
                continue
            if crash_after is not None and len(processed) == crash_after:
                raise RuntimeError("power cut")
            processed.append(name)
            run.mark_image_done(name, {"count": len(name)})
        run.finish()

    run = project.new_run("brightfield", {"planes": 3}, [])
    with pytest.raises(RuntimeError):
        batch(run, crash_after=2)
    resumed = project.get_run(run.id)  # a new process reads the run back from disk
    assert resumed.status == "running"
    batch(resumed)
    assert processed == ["a", "b", "c", "d"]  # each image exactly once
    assert project.get_run(run.id).status == "finished"


def test_runs_sorted_oldest_first_and_broken_ones_skipped(project: Project) -> None:
    ids = [project.new_run("kaizen", {}, []).id for _ in range(3)]
    assert len(set(ids)) == 3
    (project.runs_dir / "00000000-broken").mkdir()
    (project.runs_dir / "00000000-broken" / "run.json").write_text("{not json")
    project.new_run("brightfield", {}, [])
    assert [r.id for r in project.runs(pipeline="kaizen")] == sorted(ids)
    assert len(project.runs()) == 4
    with pytest.raises(ProjectError, match="cannot be read"):
        project.get_run("00000000-broken")


def test_model_cards_are_stored_as_short_ids(project: Project) -> None:
    class Card:
        def model_id(self) -> dict:
            return {"name": "bf-unet", "weights_sha256": "ab" * 32}

    run = project.new_run("brightfield", {}, [Card(), "other"])
    assert Run.load(run.folder).models == [{"name": "bf-unet", "weights_sha256": "ab" * 32}, "other"]


# --------------------------------------------------------------------------------- reports


def test_report_path_never_overwrites(project: Project) -> None:
    first = project.report_path("summary.xlsx")
    assert first == project.folder / "reports" / "summary.xlsx" and not first.exists()
    atomic_write_bytes(first, b"one")
    second = project.report_path("summary.xlsx")
    assert second.name == "summary (2).xlsx"
    atomic_write_bytes(second, b"two")
    assert project.report_path("summary.xlsx").name == "summary (3).xlsx"
    (project.reports_dir / ".tmp-1234.summary.xlsx").write_bytes(b"half")
    assert [p.name for p in project.reports()] == ["summary.xlsx", "summary (2).xlsx"]
    assert first.read_bytes() == b"one"
    with pytest.raises(ProjectError):
        project.report_path("../escape.xlsx")


# ---------------------------------------------------------------------------------- atomic


def test_atomic_writes_replace_whole_files(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "data.json"
    atomic_write_json(target, {"n": np.int32(3), "x": np.float32(0.5), "arr": np.arange(3), "p": Path("a/b")})
    assert json.loads(target.read_text()) == {"n": 3, "x": 0.5, "arr": [0, 1, 2], "p": "a/b"}
    atomic_write_text(target, "päivää\n")
    assert target.read_bytes() == "päivää\n".encode()
    assert [p.name for p in target.parent.iterdir()] == ["data.json"]


def test_atomic_path_renames_on_success_and_cleans_up_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "stack.ome.tif"
    target.write_bytes(b"old")
    with atomic_path(target) as tmp:
        assert tmp.parent == tmp_path and tmp.name.endswith(".stack.ome.tif") and tmp != target
        tifffile.imwrite(tmp, np.arange(16, dtype=np.uint8).reshape(4, 4))
        assert target.read_bytes() == b"old"  # not visible until the block ends
    assert np.array_equal(tifffile.imread(target), np.arange(16, dtype=np.uint8).reshape(4, 4))

    before = target.read_bytes()
    with pytest.raises(RuntimeError, match="writer crashed"):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"partial")
            raise RuntimeError("writer crashed")
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["stack.ome.tif"]

    with pytest.raises(FileNotFoundError):
        with atomic_path(tmp_path / "never.txt"):
            pass
    assert not (tmp_path / "never.txt").exists()


def test_json_refuses_unknown_objects(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="cannot write object"):
        atomic_write_json(tmp_path / "x.json", {"a": object()})
    assert list(tmp_path.iterdir()) == []


def test_project_can_move(project: Project, raw: Path, tmp_path: Path) -> None:
    """Copies and run outputs are stored relative, so a moved project still finds them."""
    project.add_image(raw, mode="copy")
    run = project.new_run("brightfield", {}, [])
    out = run.image_dir("section1") / "prob.tif"
    atomic_write_bytes(out, b"x")
    run.mark_image_done("section1", {"prob": out})
    moved = shutil.move(str(project.folder), str(tmp_path / "Moved"))
    again = Project.open(moved)
    assert again.image_path("section1").read_bytes() == raw.read_bytes()
    assert again.get_run(run.id).output_path("section1", "prob").read_bytes() == b"x"
