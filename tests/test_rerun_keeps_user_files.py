"""Issue 18 point 5 for redone items: an item folder redone (its input changed) keeps what the user put or changed.

The user's own files stay, a report they changed or made read-only keeps its name and the new one
gets a versioned name that the CLI prints; ``--force`` replaces the reports (the user's own files stay).
"""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest
import tifffile
from openpyxl import load_workbook

from app.core.images import write_tiff
from app.core.outputs import collect_kept, recorded, save_report_text, why_keep
from app.core.republish import replace_folder
from stagetool_testing import one_torch_thread  # noqa: F401  (autouse fixture)
from test_bad_input_nonsense import cli, models, section  # noqa: F401  (fixtures)

posix_only = pytest.mark.skipif(os.name != "posix", reason="read-only by mode bits")


def _new_section(path, seed: int) -> None:
    """Other pixels in the same section file: the resume rule redoes it."""
    image = (np.random.default_rng(seed).random((2, 160, 200)) * 3000).astype(np.uint16)
    write_tiff(path, image, axes="CYX", channel_names=["DAPI", "SOX9"], pixel_size_um=0.5)


@posix_only
def test_stagetool_redo_keeps_the_users_sheet_csv_and_notes_and_says_where_the_new_reports_went(
        capsys, tmp_path, models, section):
    out = tmp_path / "out"
    args = ["stagetool", "analyze", section, "--out", out, "--tubule-model", models[0], "--cell-model", models[1],
            "--tta", "off", "--overlap", "16"]
    assert cli(capsys, *args)[0] == 0
    sec = out / "sec"
    workbook, cells_csv, tubules_csv = sec / "sec.xlsx", sec / "cells.csv", sec / "tubules.csv"
    notes = sec / "notes.txt"
    wb = load_workbook(workbook)
    wb.create_sheet("My notes")["A1"] = "counted by hand: 17"
    wb.save(workbook)
    cells_csv.write_text(cells_csv.read_text() + "my own row\n")
    notes.write_text("stain was weak\n")
    tubules_bytes = tubules_csv.read_bytes()
    tubules_csv.chmod(stat.S_IREAD)  # an unchanged report the user protected
    objects_before = (sec / "objects.json").read_bytes()
    (sec / "evaluation.json").write_text("{}")  # an evaluation of the old predictions: goes with them

    _new_section(section, 1)
    code, stdout, err = cli(capsys, *args)
    assert code == 0, err
    assert (sec / "objects.json").read_bytes() != objects_before  # redone, not resumed
    assert "My notes" in load_workbook(workbook).sheetnames and "my own row" in cells_csv.read_text()
    assert notes.read_text() == "stain was weak\n" and tubules_csv.read_bytes() == tubules_bytes
    new_workbook, new_cells, new_tubules = sec / "sec (2).xlsx", sec / "cells (2).csv", sec / "tubules (2).csv"
    assert "My notes" not in load_workbook(new_workbook).sheetnames
    assert "my own row" not in new_cells.read_text() and new_tubules.exists()
    for path in (new_workbook, new_cells, new_tubules):
        assert str(path) in stdout, stdout  # the user is told where each new report went
    assert not (sec / "notes (2).txt").exists() and not (sec / "objects (2).json").exists()
    assert not (sec / "evaluation.json").exists()
    # the new reports are the app's (a later run may replace them), the kept ones stay protected
    assert {"sec (2).xlsx", "cells (2).csv", "tubules (2).csv"} <= set(recorded(sec))
    assert all(why_keep(p) is None for p in (new_workbook, new_cells, new_tubules))
    tubules_csv.chmod(stat.S_IREAD | stat.S_IWRITE)  # no longer read-only: still the user's, kept
    assert all(why_keep(p) is not None for p in (workbook, cells_csv, tubules_csv))
    assert not [p for p in out.iterdir() if p.is_dir() and p.name.startswith(".")]  # no staging or old folder left

    # redone again: the versioned reports nobody changed are replaced, no third copy piles up
    _new_section(section, 2)
    code, stdout, err = cli(capsys, *args)
    assert code == 0, err
    assert not (sec / "sec (3).xlsx").exists() and not (sec / "cells (3).csv").exists()
    assert "My notes" in load_workbook(workbook).sheetnames and str(new_workbook) in stdout

    # --force replaces the reports; the user's own notes stay
    _new_section(section, 3)
    code, stdout, err = cli(capsys, *args, "--force")
    assert code == 0, err
    assert "My notes" not in load_workbook(workbook).sheetnames and "my own row" not in cells_csv.read_text()
    assert tubules_csv.stat().st_mode & stat.S_IWUSR and notes.read_text() == "stain was weak\n"
    assert not new_workbook.exists() and not new_cells.exists()  # unchanged reports no longer made: gone
    assert "kept" not in stdout


@posix_only
def test_kaizen_segment_redo_keeps_the_users_files_and_versions_a_protected_output(capsys, tmp_path):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 20, (96, 96)).astype(np.uint8)
    yy, xx = np.mgrid[:96, :96]
    image[(yy - 30) ** 2 + (xx - 30) ** 2 < 64] = 200
    source, out = tmp_path / "img.tif", tmp_path / "out"
    tifffile.imwrite(source, image)
    args = ["kaizen", "segment", source, "--out", out]
    assert cli(capsys, *args)[0] == 0
    item = out / "img"
    notes, counts, labels = item / "notes.txt", item / "my counts.csv", item / "kaizen.tif"
    notes.write_text("look at the left nucleus\n")
    counts.write_text("nucleus,area\n1,200\n")
    labels_before = labels.read_bytes()
    labels.chmod(stat.S_IREAD)  # an output the user protected

    image[(yy - 60) ** 2 + (xx - 65) ** 2 < 64] = 200  # a second nucleus: the input changed, the image is redone
    tifffile.imwrite(source, image)
    code, stdout, err = cli(capsys, *args)
    assert code == 0, err
    assert notes.read_text() == "look at the left nucleus\n" and counts.read_text() == "nucleus,area\n1,200\n"
    assert labels.read_bytes() == labels_before
    new_labels = item / "kaizen (2).tif"
    both_nuclei = tifffile.imread(new_labels)
    assert both_nuclei.max() > tifffile.imread(labels).max()  # the new one sees both nuclei
    assert str(new_labels) in stdout and "read-only" in stdout, stdout
    assert "kaizen (2).tif" in recorded(item)
    labels.chmod(stat.S_IREAD | stat.S_IWRITE)
    assert why_keep(labels) is not None  # kept as the user's, read-only or not

    # --force replaces the protected output; the user's own files stay
    code, stdout, err = cli(capsys, *args, "--force")
    assert code == 0, err
    assert np.array_equal(tifffile.imread(labels), both_nuclei) and not new_labels.exists()
    assert notes.exists() and counts.exists() and "kept" not in stdout


def test_replacing_a_folder_keeps_user_files_in_subfolders_and_drops_unchanged_reports_no_longer_made(tmp_path):
    """The rule itself, as project runs (app.pipelines.runner.publish_item) and batches apply it."""
    final, new = tmp_path / "item", tmp_path / ".new"
    (final / "tiles").mkdir(parents=True)
    save_report_text(final / "old report.csv", "a\n")  # the app's, unchanged; the new set no longer makes it
    save_report_text(final / "counts.csv", "a\n")
    (final / "counts.csv").write_text("a\nmine\n")  # changed by the user
    (final / "tiles" / "mine.txt").write_text("mine\n")
    (final / "tiles" / "t0.png").write_bytes(b"old")  # an app output from before: replaced
    (new / "tiles").mkdir(parents=True)
    save_report_text(new / "counts.csv", "b\n")
    (new / "tiles" / "t0.png").write_bytes(b"new")
    with collect_kept():
        kept = replace_folder(new, final)
    assert not new.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert (final / "counts.csv").read_text() == "a\nmine\n" and (final / "counts (2).csv").read_text() == "b\n"
    assert (final / "tiles" / "mine.txt").read_text() == "mine\n"
    assert (final / "tiles" / "t0.png").read_bytes() == b"new"
    assert not (final / "old report.csv").exists()
    assert [(k.kept, k.written) for k in kept] == [(final / "counts.csv", final / "counts (2).csv")]
    assert "changed" in kept[0].reason and set(recorded(final)) == {"counts.csv", "counts (2).csv"}
    assert why_keep(final / "counts (2).csv") is None and "changed" in why_keep(final / "counts.csv")
