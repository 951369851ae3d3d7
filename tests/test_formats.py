"""Microscope formats read through their libraries (app/core/readers.py), on files their own writers made.

CZI is written by Zeiss' pylibCZIrw, OME-Zarr by bioio-ome-zarr's writer, SVS-style slides by tifffile;
pixels and metadata are checked against the source arrays.  ND2, LIF, VSI, NDPI and SCN have no writer here:
their readers are checked to be registered and to refuse a damaged file in one line.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from app.cli import main
from app.core.errors import ImageError
from app.core.formats import IMAGE_SUFFIXES, image_format, image_stem, split_scene
from app.core.images import list_images, open_image, read_image
from app.core.readers import LIBRARIES
from gui_testing import main_window

ROOT = Path(__file__).resolve().parents[1]


def write_czi(path: Path, scenes: list[np.ndarray], names: list[str], pixel_size_um: float) -> Path:
    """A CZI with one scene per (C, Y, X) array, written by pylibCZIrw (Zeiss' own writer)."""
    from pylibCZIrw import czi as pyczi

    with pyczi.create_czi(str(path), exist_ok=True) as czi:
        x = 0
        for s, array in enumerate(scenes):
            for c, plane in enumerate(array):
                czi.write(data=np.ascontiguousarray(plane), plane={"C": c, "T": 0, "Z": 0}, scene=s, location=(x, 0))
            x += array.shape[-1] + 100  # scenes side by side on the slide, apart
        czi.write_metadata(document_name=path.stem, channel_names=dict(enumerate(names)),
                           scale_x=pixel_size_um * 1e-6, scale_y=pixel_size_um * 1e-6)
    return path


def write_zarr(path: Path, array: np.ndarray, names: list[str], pixel_size_um: float, levels: int = 3,
               chunk: int = 256) -> Path:
    """An OME-Zarr (C, Y, X) pyramid written by bioio-ome-zarr's OMEZarrWriter."""
    from bioio_ome_zarr.writers import Channel, OMEZarrWriter

    c, h, w = array.shape
    shapes = [(c, -(-h // 2**i), -(-w // 2**i)) for i in range(levels)]
    writer = OMEZarrWriter(str(path), level_shapes=shapes, dtype=array.dtype, chunk_shape=(1, chunk, chunk),
                           axes_names=["c", "y", "x"], axes_types=["channel", "space", "space"],
                           axes_units=[None, "micrometer", "micrometer"],
                           physical_pixel_size=[1.0, pixel_size_um, pixel_size_um],
                           channels=[Channel(label=n, color="FFFFFF") for n in names])
    writer.write_full_volume(array)
    return path


@pytest.fixture
def arrays():
    rng = np.random.default_rng(3)
    return [rng.integers(0, 60000, (2, 300, 420), dtype=np.uint16),
            rng.integers(0, 60000, (2, 250, 380), dtype=np.uint16)]


# ------------------------------------------------------------------------------------------- CZI


def test_czi_two_scenes_two_channels_read_back_exactly(tmp_path, arrays):
    path = write_czi(tmp_path / "slide.czi", arrays, ["DAPI", "SOX9"], 0.325)
    refs = list_images(path)
    assert [str(r) for r in refs] == [f"{path}#scene-1", f"{path}#scene-2"]
    for ref, source in zip(refs, arrays):
        with open_image(ref) as image:
            info = image.info
            assert info.format == "czi" and info.axes == "CYX" and info.shape == source.shape
            assert info.channel_names == ("DAPI", "SOX9") and info.dtype == np.uint16
            assert info.pixel_size_um == pytest.approx(0.325) and len(info.scenes) == 2
            assert np.array_equal(image.read(), source)
            assert np.array_equal(image.read(channel="SOX9", region=(17, 33, 120, 200)), source[1, 17:120, 33:200])
            # a window over the edge is zero padded like every other format
            assert np.array_equal(image.read(channel=0, region=(-5, 0, 10, 10))[5:], source[0, :10, :10])
    assert open_image(path).info.scene == 0  # the file alone opens its first scene
    with pytest.raises(ImageError, match="no scene 3; the file has 2"):
        open_image(f"{path}#scene-3")


def test_czi_region_read_asks_libczi_for_that_window_only(tmp_path, arrays, monkeypatch):
    """A region of a big scene is one ROI per plane, never the whole plane (a 20000 px section stays on disk)."""
    path = write_czi(tmp_path / "big.czi", arrays[:1], ["DAPI", "SOX9"], 0.5)
    from pylibCZIrw import czi as pyczi

    rois = []
    original = pyczi.CziReader.read

    def spy(self, *args, **kwargs):
        rois.append(kwargs.get("roi"))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(pyczi.CziReader, "read", spy)
    with open_image(path) as image:
        image.read(channel="DAPI", region=(100, 200, 164, 264))
    assert rois == [(200, 100, 64, 64)]


# -------------------------------------------------------------------------------------- OME-Zarr


def test_ome_zarr_pyramid_levels_channels_and_pixel_size(tmp_path):
    import zarr

    rng = np.random.default_rng(5)
    source = rng.integers(0, 4000, (2, 1000, 700), dtype=np.uint16)
    path = write_zarr(tmp_path / "section.ome.zarr", source, ["DAPI", "SOX9"], 0.5)
    assert list_images(path) == [path] and image_stem(path) == "section"
    with open_image(path) as image:
        info = image.info
        assert info.format == "ome-zarr" and info.axes == "CYX" and info.channel_names == ("DAPI", "SOX9")
        assert info.pixel_size_um == pytest.approx(0.5)
        assert info.levels == ((1000, 700), (500, 350), (250, 175))
        assert np.array_equal(image.read(), source)
        assert np.array_equal(image.read(channel="SOX9", region=(300, 100, 560, 333)), source[1, 300:560, 100:333])
        stored = zarr.open_group(str(path), mode="r")
        for level in (1, 2):  # the writer's own levels, read as they are (not recomputed)
            assert np.array_equal(image.read(level=level), np.asarray(stored[str(level)]))


def test_cli_info_shows_scenes_levels_and_pixel_size(capsys, tmp_path, arrays):
    czi = write_czi(tmp_path / "slide.czi", arrays, ["DAPI", "SOX9"], 0.25)
    zarr_path = write_zarr(tmp_path / "s.zarr", arrays[0], ["DAPI", "SOX9"], 0.5, levels=2)
    assert main(["info", str(czi), f"{czi}#scene-2", str(zarr_path)]) == 0
    out = capsys.readouterr().out
    assert f"{czi}#scene-2" in out and "scenes      2: scene-1, scene-2" in out and "0.25 um" in out
    assert "pyramid     2 levels: [[300, 420], [150, 210]]" in out and "format      ome-zarr" in out
    assert main(["info", "--json", f"{czi}#scene-2"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["scene"] == 1 and info["shape"] == [2, 250, 380] and info["channel_names"] == ["DAPI", "SOX9"]


# ----------------------------------------------------------------------------------- whole slide


def test_svs_style_slide_through_tiffslide_keeps_its_levels_and_mpp(tmp_path):
    import tifffile

    rng = np.random.default_rng(7)
    base = rng.integers(0, 255, (1024, 1536, 3), dtype=np.uint8)
    path = tmp_path / "scan.svs"
    head = "Aperio Image Library v12.0.15\n1536x1024 [0,0 1536x1024] (256x256) RAW|AppMag = 20|MPP = 0.4990"
    with tifffile.TiffWriter(path) as tif:  # the Aperio layout: baseline, thumbnail, reduced levels
        tif.write(base, tile=(256, 256), photometric="rgb", description=head, metadata=None)
        tif.write(base[::8, ::8].copy(), photometric="rgb", description="Aperio Image Library thumbnail",
                  metadata=None)
        tif.write(base[::2, ::2].copy(), tile=(256, 256), photometric="rgb", description="Aperio level",
                  metadata=None)  # Aperio marks levels as full images (subfiletype 0), not as reduced
    with open_image(path) as image:
        info = image.info
        assert info.format == "whole-slide" and info.channel_names == ("R", "G", "B")
        assert info.pixel_size_um == pytest.approx(0.499)
        assert info.levels[0] == (1024, 1536) and (512, 768) in info.levels
        assert np.array_equal(image.read(region=(100, 200, 300, 500)), np.moveaxis(base[100:300, 200:500], -1, 0))
        assert np.array_equal(image.read(channel="G", level=info.levels.index((512, 768))), base[::2, ::2, 1])


# ---------------------------------------------------------------- formats without a writer here


@pytest.mark.parametrize("suffix", [".nd2", ".lif", ".vsi", ".czi", ".ndpi", ".scn", ".svs", ".zarr"])
def test_registered_readers_refuse_a_damaged_file_in_one_line(capsys, tmp_path, suffix):
    fmt = image_format(f"x{suffix}")
    assert fmt in LIBRARIES and suffix in IMAGE_SUFFIXES
    from app.core.project import Project

    Project.create(tmp_path / "proj", "p")
    path = tmp_path / f"broken{suffix}"
    if suffix == ".zarr":
        path.mkdir()
        (path / "zarr.json").write_text("{not json")
    else:
        path.write_bytes(b"II*\x00" + bytes(range(256)) * 3 if suffix in (".ndpi", ".scn", ".svs") else b"\x00junk" * 50)
    with pytest.raises(ImageError, match="broken"):
        open_image(path)
    for argv in (["info", str(path)], ["project", "add", str(tmp_path / "proj"), str(path)]):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and str(path) in err and "Traceback" not in err, argv


def test_scene_names_split_only_real_scene_marks(tmp_path):
    assert split_scene("a/slide.czi#scene-2") == (Path("a/slide.czi"), 1)
    assert split_scene("a/slide.czi#scene-0") == (Path("a/slide.czi#scene-0"), None)
    odd = tmp_path / "lab#scene-2"  # a real file whose name only looks like a scene
    odd.write_bytes(b"")
    assert split_scene(odd) == (odd, None)
    assert image_stem("x/slide.czi#scene-2") == "slide_scene-2" and image_stem("x/a.ome.tif") == "a"


def test_project_add_links_each_scene_and_an_ome_zarr_folder(capsys, tmp_path, arrays):
    from app.core.project import Project

    czi = write_czi(tmp_path / "slide.czi", arrays, ["DAPI", "SOX9"], 0.25)
    zarr_path = write_zarr(tmp_path / "sec.ome.zarr", arrays[0], ["DAPI", "SOX9"], 0.5, levels=1)
    project = Project.create(tmp_path / "proj", "p")
    assert main(["project", "add", str(project.folder), str(czi), str(zarr_path)]) == 0
    project = Project.open(project.folder)
    names = [e.name for e in project.images()]
    assert names == ["slide_scene-1", "slide_scene-2", "sec"]
    assert project.image("slide_scene-2").channels == ["DAPI", "SOX9"]
    with project.open_image("slide_scene-2") as image:
        assert np.array_equal(image.read(), arrays[1])
    with project.open_image("sec") as image:
        assert image.info.pixel_size_um == pytest.approx(0.5)


# ------------------------------------------------------------------- same analysis, any format


def test_stagetool_analyze_finds_the_same_tubules_and_cells_in_czi_zarr_and_ome_tiff(capsys, tmp_path):
    """The shipped demo models on one phantom section saved as OME-TIFF, a CZI scene and OME-Zarr."""
    assert main(["phantom", "testis", "--out", str(tmp_path / "ph"), "--count", "1", "--size", "1024"]) == 0
    tiff = tmp_path / "ph" / "testis_000.ome.tif"
    with open_image(tiff) as image:
        pixels, names, size = image.read(), list(image.info.channel_names), image.info.pixel_size_um
    blank = np.zeros((2, 256, 256), pixels.dtype)  # scene 1: a small empty field, the section is scene 2
    czi = write_czi(tmp_path / "czi_section.czi", [blank, pixels], names, size)
    zarr_path = write_zarr(tmp_path / "zarr_section.ome.zarr", pixels, names, size, levels=2)
    assert np.array_equal(read_image(f"{czi}#scene-2"), pixels) and np.array_equal(read_image(zarr_path), pixels)
    out = tmp_path / "out"
    models = ROOT / "models"
    code = main(["stagetool", "analyze", str(tiff), str(czi), str(zarr_path), "--out", str(out), "--synthetic",
                 "--tubule-model", str(models / "stagetool-tubules-demo"),
                 "--cell-model", str(models / "stagetool-cells-demo"), "--threads", "1"])
    assert code == 0, capsys.readouterr().err

    def objects(name: str) -> dict:
        doc = json.loads((out / name / "objects.json").read_text())
        assert doc["meta"]["pixel_size_um"] == pytest.approx(size)
        return doc["layers"]

    reference = objects("testis_000")
    assert reference["tubules"] and reference["cells"]
    for name in ("czi_section_scene-2", "zarr_section"):
        assert objects(name) == reference, name


def test_viewer_overview_levels_build_for_a_czi_scene(tmp_path, arrays):
    """The viewer's cached overview of one scene: built from that scene, stamped with the CZI file."""
    from app.core.jobs import run
    from app.core.pyramid import build_pyramid, open_pyramid

    czi = write_czi(tmp_path / "slide.czi", arrays, ["DAPI", "SOX9"], 0.5)
    ref, cache = f"{czi}#scene-2", tmp_path / "cache"
    run(build_pyramid(ref, cache, min_side=64))
    with open_pyramid(ref, cache) as pyramid:
        assert len(pyramid.levels) > 1 and not pyramid.needs_cache()
        half = pyramid.read(1)
        assert half.shape == (2, 125, 190)
        assert abs(float(half[1].mean()) - float(arrays[1][1].mean())) < 200


def test_preload_imports_only_the_libraries_a_project_needs(tmp_path):
    """In a fresh process (this one has them all): an OME-Zarr loads bioio's plugin, a TIFF nothing more, no libCZI."""
    import subprocess
    import sys

    code = ("import sys; from app.core.readers import preload; done = preload(['a/s.ome.zarr', 'b.tif', 'c.ome.tif']); "
            "print(done, 'bioio_ome_zarr' in sys.modules, 'pylibCZIrw' in sys.modules, preload(['d.zarr']))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["['bioio',", "'bioio_ome_zarr']", "True", "False", "[]"]


def test_gui_adds_each_czi_scene_and_an_ome_zarr_folder_and_shows_a_scene(qtbot, tmp_path, arrays, monkeypatch):
    """Files dropped on the project browser: a two-scene CZI becomes two images, an OME-Zarr folder one."""
    window = main_window(qtbot, size=None, show=False)
    try:
        assert window.new_project(tmp_path / "proj")
        czi = write_czi(tmp_path / "slide.czi", arrays, ["DAPI", "SOX9"], 0.25)
        zarr_path = write_zarr(tmp_path / "sec.ome.zarr", arrays[0], ["DAPI", "SOX9"], 0.5, levels=2)
        window.browser.files_dropped.emit([czi, zarr_path])
        assert [e.name for e in window.project.images()] == ["slide_scene-1", "slide_scene-2", "sec"]
        window.open_image("slide_scene-2")
        assert window.wait_until_ready(30) and window.current_image == "slide_scene-2"
        assert not window.errors
        # opening the project again starts importing its readers in the background (seconds for OME-Zarr)
        from app.gui import project_controller

        seen: list[list[str]] = []
        monkeypatch.setattr(project_controller, "preload_readers", lambda paths: seen.append([str(p) for p in paths]))
        assert window.open_project(tmp_path / "proj")
        window._preload.join(10)
        assert len(seen) == 1 and any(p.endswith("sec.ome.zarr") for p in seen[0])
        assert any(p.endswith("slide.czi#scene-2") for p in seen[0])
    finally:
        window.confirm = lambda *args: True
        window.queue.shutdown()
        window.close()
