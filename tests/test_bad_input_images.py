"""Bad-input trials of issue 18 kept as tests: uncalibrated images, NaN pixels, images too large for
memory, full or read-only disks, negative label ids, library noise and Ctrl-C on a local cluster.

Each ends in one line on stderr with exit 2 (or, for calibration, in "unknown" instead of a number).
Tests run as root here, where chmod stops nothing, so write failures are monkeypatched OSErrors.
"""

from __future__ import annotations

import errno
import json
import os
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import tifffile
from openpyxl import load_workbook
from PIL import Image as PILImage

from app.cli import main
from app.core import images as images_mod
from app.core.errors import ImageError
from app.core.images import open_image, read_image

REPO = Path(__file__).resolve().parents[1]


def run_cli(capsys, *argv: object) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(err: str) -> str:
    """The single stderr line of a user error (asserts there is exactly one and no traceback).

    Progress lines of the command (``[stage] ...``) before it are allowed; nothing else is.
    """
    lines = [line for line in err.splitlines() if line.strip() and not line.startswith("[")]
    assert len(lines) == 1, err
    assert lines[0].startswith("stagescope: error: ") and "Traceback" not in err
    return lines[0]


def huge_strip_tiff(path: Path, width: int, height: int) -> Path:
    """A ~150-byte TIFF declaring ``width`` x ``height`` 8-bit pixels in one zlib strip (the '615 kB' trial)."""
    blob = zlib.compress(b"\0" * 1024)
    entries = [(256, 4, width), (257, 4, height), (258, 3, 8), (259, 3, 8), (262, 3, 1),
               (273, 4, None), (277, 3, 1), (278, 4, height), (279, 4, len(blob))]
    data_offset = 8 + 2 + 12 * len(entries) + 4
    out = bytearray(b"II*\0" + struct.pack("<I", 8) + struct.pack("<H", len(entries)))
    for tag, kind, value in entries:
        value = data_offset if value is None else value
        packed = struct.pack("<H", value) + b"\0\0" if kind == 3 else struct.pack("<I", value)
        out += struct.pack("<HHI", tag, kind, 1) + packed
    path.write_bytes(bytes(out + struct.pack("<I", 0) + blob))
    return path


# ------------------------------------------------------------------ 3. calibration


def test_tiff_without_resolution_tags_has_unknown_pixel_size(tmp_path, capsys):
    """Pillow writes no resolution tags; tifffile then reports 1 px/inch, which is not a 25 400 µm pixel."""
    path = tmp_path / "pillow.tif"
    PILImage.fromarray(np.zeros((32, 32), np.uint8)).save(path)
    assert open_image(path).info.pixel_size_um is None
    code, out, _ = run_cli(capsys, "info", path)
    assert code == 0 and "pixel size  unknown" in out
    code, out, _ = run_cli(capsys, "info", path, "--json")
    assert json.loads(out)["pixel_size_um"] is None


@pytest.mark.parametrize("unit, per_unit", [("CENTIMETER", 1.0), ("INCH", 1.0), ("INCH", 10.0)])
def test_pixel_size_outside_microscopy_range_is_unknown(tmp_path, unit, per_unit):
    path = tmp_path / "res.tif"
    tifffile.imwrite(path, np.zeros((8, 8), np.uint8), resolution=(per_unit, per_unit), resolutionunit=unit)
    assert open_image(path).info.pixel_size_um is None  # 10 000 or 25 400 or 2 540 µm per pixel


def test_implausible_png_dpi_and_ome_size_are_unknown_but_real_ones_kept(tmp_path):
    PILImage.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "a.png", dpi=(1, 1))
    assert open_image(tmp_path / "a.png").info.pixel_size_um is None
    tifffile.imwrite(tmp_path / "far.ome.tif", np.zeros((8, 8), np.uint8), metadata={"axes": "YX", "PhysicalSizeX": 5.0,
                                                                                      "PhysicalSizeXUnit": "mm"})
    assert open_image(tmp_path / "far.ome.tif").info.pixel_size_um is None
    tifffile.imwrite(tmp_path / "ok.tif", np.zeros((8, 8), np.uint8), resolution=(40000, 40000),
                     resolutionunit="CENTIMETER")
    assert open_image(tmp_path / "ok.tif").info.pixel_size_um == pytest.approx(0.25)


def test_stagetool_report_without_calibration_gives_areas_in_px(tmp_path):
    from app.pipelines.stagetool import tables
    from app.pipelines.stagetool.report_excel import write_section_workbook

    tubules = [{"id": 1, "class": "I-III", "score": 0.9, "box": [0, 0, 10, 10], "polygon": [], "centroid": [5, 5],
                "area_px": 80, "excluded": False}]
    doc = {"schema_version": 1, "image": "s", "pipeline": "stagetool", "layers": {"tubules": tubules, "cells": []},
           "meta": {"image_path": "s.tif", "shape": [10, 10], "pixel_size_um": None}}
    rows = tables.tubule_rows(doc)
    assert rows[0]["area_px"] == 80 and "area_um2" not in rows[0]
    assert "area_um2" not in tables.rows_to_csv(rows).splitlines()[0]
    path = write_section_workbook(tmp_path / "s.xlsx", tables.summarise(doc), rows, tables.cell_rows(doc))
    book = load_workbook(path)
    summary = {row[0]: row[1] for row in book["Summary"].iter_rows(values_only=True)}
    assert str(summary["pixel size (µm)"]).startswith("unknown") and "px" in summary["pixel size (µm)"]
    header = next(book["Tubules"].iter_rows(values_only=True))
    assert "area (px²)" in header and "area (µm²)" not in header
    doc["meta"]["pixel_size_um"] = 0.5  # a calibrated section keeps its µm² column
    assert tables.tubule_rows(doc)[0]["area_um2"] == pytest.approx(20.0)


# ------------------------------------------------------------------ 6. NaN pixels


def nan_image(tmp_path: Path, value: float = np.nan, count: int = 12) -> Path:
    data = np.full((64, 64), 100.0, np.float32)
    data[40:40 + count // 4, 10:14] = value
    path = tmp_path / "nan.tif"
    tifffile.imwrite(path, data, tile=(32, 32))
    return path


def test_nan_pixels_are_refused_with_their_count(tmp_path):
    path = nan_image(tmp_path)
    with pytest.raises(ImageError, match=r"nan\.tif: 12 NaN pixels; no analysis"):
        read_image(path)
    with open_image(path) as image:
        assert image.read(region=(0, 0, 32, 64)).shape == (32, 64)  # a clean tile streams as before
        with pytest.raises(ImageError, match=r"12 NaN pixels in rows 32-64, columns 0-32"):
            image.read(region=(32, 0, 64, 32))  # the tile holding them names where it looked
        assert np.isnan(image.read(finite=False)).sum() == 12  # a caller may ask for them explicitly


def test_infinite_pixels_are_refused(tmp_path):
    with pytest.raises(ImageError, match="4 infinite pixels"):
        read_image(nan_image(tmp_path, np.inf, count=4))


def test_kaizen_segment_refuses_nan_image_instead_of_finding_nothing(tmp_path, capsys):
    code, out, err = run_cli(capsys, "kaizen", "segment", nan_image(tmp_path), "--out", tmp_path / "out")
    assert code == 2 and "12 NaN pixels" in one_line_error(err)
    assert not (tmp_path / "out" / "nan.tif").exists()


def test_brightfield_and_stagetool_readers_refuse_nan(tmp_path):
    from app.pipelines.brightfield.stack import read_gray
    from app.pipelines.stagetool.predict import read_region

    path = nan_image(tmp_path)
    with pytest.raises(ImageError, match="12 NaN pixels"):
        read_gray(path)
    with open_image(path) as image, pytest.raises(ImageError, match="NaN pixels"):
        read_region(image, 0, (32, 0, 64, 64), str(path))  # Stagetool's per-tile read, not numpy's message


# ------------------------------------------------------------------ 8. size guard


def test_huge_declared_image_is_refused_by_size_before_decoding(tmp_path, capsys):
    path = huge_strip_tiff(tmp_path / "huge.tif", 1_000_000, 1_000_000)
    assert path.stat().st_size < 1000
    assert open_image(path).info.shape == (1_000_000, 1_000_000)  # the header alone is fine (info works)
    with pytest.raises(ImageError, match=r"1000000 x 1000000 pixels at once needs 931\.3 GiB"):
        read_image(path)
    code, _, err = run_cli(capsys, "kaizen", "segment", path, "--out", tmp_path / "out")
    assert code == 2 and "GiB of memory" in one_line_error(err) and "corrupt" not in err


def test_size_guard_counts_the_steps_working_memory(tmp_path, capsys, monkeypatch):
    """The trial's 100000 x 100000 uint8 file: 9.3 GiB decoded, but Kaizen works in float copies on top."""
    path = huge_strip_tiff(tmp_path / "big.tif", 100_000, 100_000)
    monkeypatch.setattr(images_mod, "available_memory", lambda: 20 << 30)
    code, _, err = run_cli(capsys, "kaizen", "segment", path, "--out", tmp_path / "out")
    line = one_line_error(err)
    assert code == 2 and "100000 x 100000 pixels" in line and "20.0 GiB is free" in line


def test_tiles_of_a_section_larger_than_memory_still_stream(tmp_path, monkeypatch):
    path = tmp_path / "section.tif"
    data = np.arange(256 * 256, dtype=np.uint16).reshape(256, 256)
    tifffile.imwrite(path, data, tile=(64, 64), compression="zlib")
    monkeypatch.setattr(images_mod, "available_memory", lambda: 64 * 1024)  # 64 KiB "free"
    monkeypatch.setattr(images_mod, "SMALL_READ_BYTES", 0, raising=False)
    with open_image(path) as image:
        with pytest.raises(ImageError, match=r"256 x 256 pixels at once needs 128\.0 KiB|needs 0\.1 MiB"):
            image.read()
        np.testing.assert_array_equal(image.read(region=(64, 64, 128, 128)), data[64:128, 64:128])


# ------------------------------------------------------------------ 7. disks, labels, noise, Ctrl-C


def small_nuclei(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 20, (96, 96)).astype(np.uint8)
    yy, xx = np.mgrid[:96, :96]
    for cy, cx in ((30, 30), (60, 65)):
        image[(yy - cy) ** 2 + (xx - cx) ** 2 < 64] = 200
    folder = tmp_path / "in"
    folder.mkdir()
    tifffile.imwrite(folder / "img.tif", image)
    return folder / "img.tif"


def test_disk_full_is_one_line_and_leaves_no_partial_result_set(tmp_path, capsys, monkeypatch):
    """A full disk while writing objects.json: no labels TIFF without it, no run.json, no staging folder."""
    from app.core import atomic

    real = atomic._fsync_file

    def full_disk(path):
        if str(path).endswith(".objects.json"):
            raise OSError(errno.ENOSPC, "No space left on device")
        real(path)

    monkeypatch.setattr(atomic, "_fsync_file", full_disk)
    out = tmp_path / "out"
    code, _, err = run_cli(capsys, "kaizen", "segment", small_nuclei(tmp_path), "--out", out)
    line = one_line_error(err)
    assert code == 2 and "no space left" in line and str(out / "img.objects.json") in line
    assert sorted(p.name for p in out.iterdir()) == []  # nothing half-written, hidden staging removed


@pytest.mark.parametrize("number", [errno.ENOSPC, errno.EACCES, errno.EROFS])
def test_write_errors_in_any_command_are_one_line_naming_the_path(tmp_path, capsys, monkeypatch, number):
    from app.core import atomic

    def refuse(path):
        raise OSError(number, os.strerror(number))

    monkeypatch.setattr(atomic, "_fsync_file", refuse)
    code, _, err = run_cli(capsys, "project", "new", tmp_path / "p")
    line = one_line_error(err)
    assert code == 2 and str(tmp_path / "p") in line


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_output_folder_is_one_line(tmp_path, capsys):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        code, _, err = run_cli(capsys, "phantom", "nuclei", "--out", folder / "x", "--count", 1)
    finally:
        folder.chmod(0o700)
    assert code == 2 and "permission denied" in one_line_error(err)


def test_debug_flag_shows_the_traceback(tmp_path, capsys):
    code, _, err = run_cli(capsys, "--debug", "info", tmp_path / "missing.tif")
    assert code == 2 and "Traceback" in err and err.strip().splitlines()[-1].startswith("stagescope: error:")


def negative_labels(tmp_path: Path) -> Path:
    labels = np.zeros((96, 96), np.int32)
    labels[20:40, 20:40] = 1
    labels[50:70, 50:70] = -3
    path = tmp_path / "labels" / "img.tif"
    path.parent.mkdir(exist_ok=True)
    tifffile.imwrite(path, labels)
    return path


def test_negative_label_ids_are_one_line(tmp_path, capsys):
    labels = negative_labels(tmp_path)
    code, _, err = run_cli(capsys, "evaluate", "instances", labels, labels)
    assert code == 2 and "400 pixel(s) have negative ids (down to -3)" in one_line_error(err)
    image = small_nuclei(tmp_path)
    code, _, err = run_cli(capsys, "kaizen", "train", image.parent, labels.parent, "--out", tmp_path / "m",
                           "--epochs", 1)
    assert code == 2 and "negative ids" in one_line_error(err)
    assert not (tmp_path / "m").exists()


def test_label_ids_accepts_whole_floats_and_refuses_fractions():
    from app.core.images import label_ids

    assert label_ids(np.array([[0.0, 2.0]]), "x").dtype == np.int64
    with pytest.raises(ImageError, match="fractions"):
        label_ids(np.array([[0.5, 2.0]]), "x")


def corrupt_tiff_with_bad_tag(path: Path) -> Path:
    """A tiled zlib TIFF whose ResolutionUnit is invalid (tifffile warns) and whose tiles do not inflate."""
    data = np.random.default_rng(1).integers(0, 999, (256, 256)).astype(np.uint16)
    tifffile.imwrite(path, data, tile=(64, 64), compression="zlib", resolution=(1e4, 1e4),
                     resolutionunit="CENTIMETER", metadata={"axes": "YX"})
    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        unit_value_at = page.tags["ResolutionUnit"].offset + 8
        tiles = list(page.dataoffsets)
    raw = bytearray(path.read_bytes())
    raw[unit_value_at:unit_value_at + 2] = struct.pack("<H", 74)
    for offset in tiles:
        raw[offset:offset + 4] = b"\xff\xff\xff\xff"
    path.write_bytes(bytes(raw))
    return path


def test_library_warnings_do_not_precede_the_one_line_error(tmp_path):
    """tifffile's tag warning and zarr's abandoned decode tasks stayed on stderr around the error line."""
    path = corrupt_tiff_with_bad_tag(tmp_path / "bad.tif")
    done = subprocess.run([sys.executable, "-m", "app", "evaluate", "instances", str(path), str(path)],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "cannot decode the pixels" in one_line_error(done.stderr)


def test_cluster_workers_start_ignoring_ctrl_c():
    """Workers inherit "ignore SIGINT" from the batch while they start, so a Ctrl-C stops only the batch."""
    from app.batch.cluster import block_interrupts, restore_interrupts

    if os.name == "nt" or not Path("/proc/self/status").exists():
        pytest.skip("reads the signal disposition from /proc")
    before = signal.getsignal(signal.SIGINT)
    previous = block_interrupts()
    try:
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(5)"])
    finally:
        restore_interrupts(previous)
    try:
        status = Path(f"/proc/{child.pid}/status").read_text()
        ignored = int(next(line for line in status.splitlines() if line.startswith("SigIgn:")).split()[1], 16)
        assert ignored & (1 << (signal.SIGINT - 1))
    finally:
        child.kill()
        child.wait()
    assert signal.getsignal(signal.SIGINT) is before


@pytest.mark.slow
def test_ctrl_c_on_a_local_cluster_batch_is_one_line(tmp_path):
    """The terminal's Ctrl-C (SIGINT to the whole process group) while a `--cluster local:2` batch gets going.

    Pressed while the workers import the pipeline (torch), it used to reach the workers too: their
    KeyboardInterrupt tracebacks and the scheduler's "broadcast failed" errors filled the terminal.
    """
    if os.name == "nt":
        pytest.skip("process groups are POSIX")
    folder = tmp_path / "in"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        tifffile.imwrite(folder / f"i{i}.tif", rng.integers(0, 255, (256, 256)).astype(np.uint8))
    process = subprocess.Popen(
        [sys.executable, "-m", "app", "batch", "analyze", "kaizen", str(folder), "--out", str(tmp_path / "out"),
         "--cluster", "local:2"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # as a terminal starts it
    lines = []
    try:
        for line in process.stderr:  # the workers are up; now they import the pipeline
            lines.append(line)
            if "workers connected" in line:
                break
        time.sleep(1.0)
        os.killpg(process.pid, signal.SIGINT)
        rest = process.communicate(timeout=60)[1]
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    err = "".join(lines) + rest
    assert process.returncode == 130, err
    assert "Traceback" not in err and "ERROR" not in err and "KeyboardInterrupt" not in err, err
    assert err.strip().splitlines()[-1] == "stagescope: interrupted"


def test_png_is_refused_by_size_even_for_a_small_region(tmp_path, monkeypatch):
    """Pillow cannot decode a region: the whole picture must fit, so its size is what is checked."""
    PILImage.fromarray(np.zeros((300, 400), np.uint8)).save(tmp_path / "a.png")
    monkeypatch.setattr(images_mod, "available_memory", lambda: 100_000)
    monkeypatch.setattr(images_mod, "SMALL_READ_BYTES", 0, raising=False)
    with open_image(tmp_path / "a.png") as image, pytest.raises(ImageError, match="400 x 300 pixels"):
        image.read(region=(0, 0, 10, 10))


def test_writer_error_on_a_full_disk_is_reported_as_the_full_disk(tmp_path, capsys, monkeypatch):
    """torch.save reports a full disk as 'RuntimeError: ... unexpected pos'; atomic_path says what it was."""
    import shutil as shutil_mod

    from app.cli import os_error_message
    from app.core.atomic import atomic_path

    monkeypatch.setattr(shutil_mod, "disk_usage", lambda folder: shutil_mod._ntuple_diskusage(100, 100, 0))
    with pytest.raises(OSError) as caught:
        with atomic_path(tmp_path / "weights.pt") as tmp:
            tmp.write_bytes(b"x")
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")
    assert caught.value.errno == errno.ENOSPC and not list(tmp_path.iterdir())
    assert os_error_message(caught.value) == f"{tmp_path / 'weights.pt'}: no space left on the disk; free some space and run again"


def test_batch_counts_a_nan_image_as_failed_not_done(tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    nan_image(folder)
    code, out, _ = run_cli(capsys, "batch", "analyze", "kaizen", folder, "--out", tmp_path / "out", "--quiet")
    assert code == 1 and "0 done" in out and "1 failed" in out and "12 NaN pixels" in out
