"""`stagescope export qupath|labels`: QuPath GeoJSON that matches QuPath's import format and reads back as the
same objects (also as training sections), and label TIFFs + CSV tables napari opens, written tile by tile.

Real results: the shipped demo models on a small testis phantom (Stagetool) and on phantom nuclei (Kaizen).
"""

from __future__ import annotations

import csv
import json
import math
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import tifffile

from app.cli import main
from app.core.annotations import AnnotatedObject, objects_to_labels, polygon_to_mask, read_geojson
from app.core.errors import AnnotationError
from app.core.export_labels import TileRasteriser, write_label_tiff
from app.pipelines.stagetool.classes import CLASS_COLOURS, STAGES
from stagetool_testing import one_torch_thread  # noqa: F401  (autouse fixture)
from gui_testing import main_window


def _main(*argv) -> int:
    return main([str(a) for a in argv])


@pytest.fixture(scope="module")
def stagetool_results(tmp_path_factory):
    """A Stagetool results folder of one 512 px phantom section (DAPI + SOX9), analysed by the demo models."""
    base = tmp_path_factory.mktemp("stagetool")
    assert _main("phantom", "testis", "--out", base / "phantom", "--count", 1, "--size", 512, "--seed", 3,
                 "--markers", "SOX9") == 0
    assert _main("stagetool", "analyze", base / "phantom" / "testis_000.ome.tif", "--out", base / "results",
                 "--antibody", "SOX9=1") == 0
    doc = json.loads((base / "results" / "testis_000" / "objects.json").read_text())
    assert doc["layers"]["tubules"] and len(doc["layers"]["cells"]) > 20
    return base


@pytest.fixture(scope="module")
def kaizen_results(tmp_path_factory):
    """A `kaizen segment` folder of one 192 px phantom nuclei image (shipped model): the runner's layout,
    results/nuclei_000/{kaizen.tif, kaizen.objects.npz, kaizen.objects.json, objects.json} + run.json."""
    base = tmp_path_factory.mktemp("kaizen")
    assert _main("phantom", "nuclei", "--out", base / "phantom", "--count", 1, "--size", 192) == 0
    assert _main("kaizen", "segment", base / "phantom" / "nuclei_000.tif", "--out", base / "results") == 0
    return base


# ------------------------------------------------------------------ QuPath's import format, as explicit checks
# (jsonschema is not installed in the app's environment; these are the rules of QuPath 0.4+ "Import objects")


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _ring_problems(ring, where: str) -> list[str]:
    if not isinstance(ring, list) or len(ring) < 4:
        return [f"{where}: a ring needs >= 4 positions (closed)"]
    if any(not (isinstance(p, list) and len(p) == 2 and all(_is_number(v) for v in p)) for p in ring):
        return [f"{where}: positions must be [x, y] numbers"]
    return [] if ring[0] == ring[-1] else [f"{where}: ring not closed"]


def qupath_problems(data) -> list[str]:
    """Every way ``data`` breaks QuPath's GeoJSON import format (empty list = importable)."""
    if not isinstance(data, dict) or data.get("type") != "FeatureCollection" \
            or not isinstance(data.get("features"), list):
        return ["not a FeatureCollection with a features list"]
    problems = []
    for i, feature in enumerate(data["features"]):
        where = f"feature {i}"
        if feature.get("type") != "Feature":
            problems.append(f"{where}: type is not Feature")
        geometry = feature.get("geometry") or {}
        if geometry.get("type") == "Polygon":
            polygons = [geometry.get("coordinates")]
        elif geometry.get("type") == "MultiPolygon":
            polygons = geometry.get("coordinates")
        else:
            problems.append(f"{where}: geometry {geometry.get('type')!r} is not Polygon/MultiPolygon")
            polygons = []
        for polygon in polygons or []:
            for ring in polygon or [None]:
                problems += _ring_problems(ring, where)
        props = feature.get("properties")
        if not isinstance(props, dict):
            problems.append(f"{where}: no properties")
            continue
        if props.get("objectType") not in ("annotation", "detection"):
            problems.append(f"{where}: objectType {props.get('objectType')!r}")
        cls = props.get("classification")
        if not (isinstance(cls, dict) and isinstance(cls.get("name"), str) and cls["name"]):
            problems.append(f"{where}: classification needs a name")
        elif not (isinstance(cls.get("color"), list) and len(cls["color"]) == 3
                  and all(isinstance(c, int) and not isinstance(c, bool) and 0 <= c <= 255 for c in cls["color"])):
            problems.append(f"{where}: classification colour must be [r, g, b] integers 0-255")
        measurements = props.get("measurements")
        if not isinstance(measurements, dict):
            problems.append(f"{where}: measurements must be a name -> number object")
        else:
            problems += [f"{where}: measurement {k!r} = {v!r} is not a number" for k, v in measurements.items()
                         if not (isinstance(k, str) and _is_number(v))]
    return problems


def test_the_format_check_catches_what_qupath_refuses():
    good = {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [4, 0], [4, 4], [0, 0]]]},
            "properties": {"objectType": "detection", "classification": {"name": "Spg", "color": [0, 225, 225]},
                           "measurements": {"score": 0.9}}}
    assert qupath_problems({"type": "FeatureCollection", "features": [good]}) == []
    bad = json.loads(json.dumps(good))
    bad["properties"].update(objectType="cell", classification={"name": "Spg", "color": "#00e1e1"},
                             measurements={"SOX9 mean": None, "flag": True, "gain": float("nan"), "stage": "IX"})
    bad["geometry"]["coordinates"][0].pop()
    assert len(qupath_problems(json.loads(json.dumps({"type": "FeatureCollection", "features": [bad]})))) == 7
    no_class = json.loads(json.dumps(good))
    del no_class["properties"]["classification"]["name"]
    no_class["type"], no_class["geometry"] = "feature", {"type": "Point", "coordinates": [1, 2]}
    assert len(qupath_problems({"type": "FeatureCollection", "features": [no_class]})) == 3
    assert qupath_problems({"type": "Feature", "features": [good]}) == ["not a FeatureCollection with a features list"]


# ------------------------------------------------------------------ QuPath GeoJSON


def test_stagetool_geojson_is_qupath_format_and_round_trips(stagetool_results, tmp_path):
    results = stagetool_results / "results"
    doc = json.loads((results / "testis_000" / "objects.json").read_text())
    assert _main("export", "qupath", results, "--out", tmp_path) == 0
    path = tmp_path / "testis_000.geojson"
    data = json.loads(path.read_text())
    assert qupath_problems(data) == []
    again = tmp_path / "again"
    assert _main("export", "qupath", results, "--out", again) == 0
    assert (again / "testis_000.geojson").read_bytes() == path.read_bytes()  # same results, same file
    assert len({f["id"] for f in data["features"]}) == len(data["features"])
    tubules, cells = doc["layers"]["tubules"], doc["layers"]["cells"]
    assert len(data["features"]) == len(tubules) + len(cells)

    imported = {o.attributes["name"]: o for o in read_geojson(path).objects}
    assert sorted(imported) == sorted([f"tubules {t['id']}" for t in tubules] + [f"cells {c['id']}" for c in cells])
    assert Counter(o.category for o in imported.values()) == Counter(o["class"] for o in tubules + cells)
    rows = {int(r["id"]): r for r in csv.DictReader(open(results / "testis_000" / "tubules.csv"))}
    for tubule in tubules:
        obj = imported[f"tubules {tubule['id']}"]
        assert obj.attributes["object_type"] == "annotation" and obj.score == pytest.approx(tubule["score"])
        assert obj.attributes["color"] == [int(CLASS_COLOURS[tubule["class"]][i:i + 2], 16) for i in (1, 3, 5)]
        np.testing.assert_allclose(obj.polygons[0], tubule["polygon"], atol=1e-6)
        values = obj.attributes["measurements"]
        assert values["Area µm^2"] == pytest.approx(float(rows[tubule["id"]]["area_um2"]))
        assert values["Num cells"] == sum(c.get("tubule_id") == tubule["id"] for c in cells)
    for cell in cells:
        obj = imported[f"cells {cell['id']}"]
        assert obj.attributes["object_type"] == "detection" and obj.category == cell["class"]
        np.testing.assert_allclose(obj.box, cell["box"], atol=1e-6)
        assert obj.score == pytest.approx(cell["score"])
        values = obj.attributes["measurements"]
        assert values["SOX9 mean"] == pytest.approx(cell["antigen"]["SOX9"]["mean"])
        assert values["SOX9 positive"] in (0, 1)

    # and as training data: the file beside its image gives the same tubules and the same cells
    from app.pipelines.stagetool.dataset import load_sections

    beside = stagetool_results / "phantom" / "testis_000.geojson"
    beside.write_text(path.read_text())
    [tubule_section] = load_sections([beside], "tubules")
    [cell_section] = load_sections([beside], "cells")
    assert sorted(o.category for o in tubule_section.objects) == sorted(t["class"] for t in tubules
                                                                         if not t.get("excluded"))
    assert all(o.category in STAGES for o in tubule_section.objects)
    assert Counter(o.category for o in cell_section.objects) == Counter(c["class"] for c in cells)


def test_export_shows_the_curation_the_viewer_shows(stagetool_results, tmp_path):
    """Edits made in the viewer after the analysis (the run's edits.json) are in the export, applied once."""
    import shutil

    from app.core.edits import edits_path, make_edit, write_edits

    results = shutil.copytree(stagetool_results / "results", tmp_path / "results")
    cells = json.loads((results / "testis_000" / "objects.json").read_text())["layers"]["cells"]
    tubule = json.loads((results / "testis_000" / "objects.json").read_text())["layers"]["tubules"][0]
    write_edits(edits_path(results), [make_edit("delete_cell", "testis_000", cells[0]["id"]),
                                      make_edit("retype_cell", "testis_000", cells[1]["id"], "Sertoli"),
                                      make_edit("exclude_tubule", "testis_000", tubule["id"], True)])
    assert _main("export", "qupath", results, "--out", tmp_path / "out") == 0
    objects = {o.attributes["name"]: o for o in read_geojson(tmp_path / "out" / "testis_000.geojson").objects}
    assert f"cells {cells[0]['id']}" not in objects and objects[f"cells {cells[1]['id']}"].category == "Sertoli"
    assert sum(name.startswith("cells ") for name in objects) == len(cells) - 1
    assert objects[f"tubules {tubule['id']}"].attributes["measurements"]["Excluded"] == 1

    from app.pipelines.stagetool.dataset import load_sections  # training leaves the excluded tubule out

    shutil.copy(stagetool_results / "phantom" / "testis_000.ome.tif", tmp_path / "out")
    kept = sum(name.startswith("tubules ") for name in objects) - 1
    if kept == 0:  # the small phantom holds one tubule: once excluded, nothing is left to train tubules on
        with pytest.raises(AnnotationError, match="holds no tubule annotations"):
            load_sections([tmp_path / "out" / "testis_000.geojson"], "tubules")
    else:
        [section] = load_sections([tmp_path / "out" / "testis_000.geojson"], "tubules")
        assert len(section.objects) == kept
    [section] = load_sections([tmp_path / "out" / "testis_000.geojson"], "cells")
    assert len(section.objects) == len(cells) - 1


def test_kaizen_geojson_outlines_the_whole_objects_and_round_trips(kaizen_results, tmp_path):
    results = kaizen_results / "results"
    doc = json.loads((results / "nuclei_000" / "kaizen.objects.json").read_text())
    assert _main("export", "qupath", results, "--out", tmp_path) == 0
    data = json.loads((tmp_path / "nuclei_000.geojson").read_text())
    assert qupath_problems(data) == []
    imported = {o.attributes["name"]: o for o in read_geojson(tmp_path / "nuclei_000.geojson").objects}
    assert len(imported) == len(doc["objects"]) > 5
    with np.load(results / "nuclei_000" / "kaizen.objects.npz") as stack:
        masks = {int(i): (m[:h, :w], tuple(o)) for i, m, (h, w), o in
                 zip(stack["ids"], stack["masks"], stack["shapes"], stack["offsets"])}
    for entry in doc["objects"]:
        obj = imported[f"objects {entry['id']}"]
        assert obj.category == "object" and obj.attributes["object_type"] == "detection"
        assert obj.attributes["measurements"]["Area px^2"] == entry["area"]  # no pixel size in Kaizen's file
        mask, (oy, ox) = masks[entry["id"]]
        drawn = polygon_to_mask([p - [ox, oy] for p in obj.polygons], mask.shape, [h - [ox, oy] for h in obj.holes])
        assert (drawn == mask).all()  # the outline gives back exactly the object's pixels


# ------------------------------------------------------------------ napari: label TIFFs and CSV


def _napari_points(path: Path) -> tuple[np.ndarray, dict[str, list[str]]]:
    """What napari's builtin CSV reader makes of a file: axis-* columns as coordinates, the rest properties."""
    with open(path, newline="") as handle:
        rows = list(csv.reader(handle))
    header, body = rows[0], rows[1:]
    axes = [i for i, name in enumerate(header) if name.startswith("axis-")]
    coords = np.array([[float(r[i]) for i in axes] for r in body])
    return coords, {name: [r[i] for r in body] for i, name in enumerate(header) if i not in axes}


def test_stagetool_labels_and_csv_for_napari(stagetool_results, tmp_path):
    results = stagetool_results / "results"
    doc = json.loads((results / "testis_000" / "objects.json").read_text())
    assert _main("export", "labels", results, "--out", tmp_path) == 0
    for layer in ("tubules", "cells"):
        with tifffile.TiffFile(tmp_path / f"testis_000_{layer}_labels.tif") as tif:
            page = tif.pages[0]
            labels = page.asarray()
            assert page.is_tiled and labels.dtype == np.uint16 and labels.shape == (512, 512)
            numerator, denominator = page.tags["XResolution"].value
            assert numerator / denominator == pytest.approx(2e4)  # pixels per cm: 0.5 µm
        objects = doc["layers"][layer]
        coords, props = _napari_points(tmp_path / f"testis_000_{layer}.csv")
        assert sorted(int(v) for v in props["label"]) == sorted(o["id"] for o in objects)
        assert Counter(props["class"]) == Counter(o["class"] for o in objects)
        assert all(len(v.partition(".")[2]) <= 3 for v in props["area_px"])  # no float noise (115.28929999999981)
        present = set(np.unique(labels)) - {0}
        assert present <= {o["id"] for o in objects} and len(present) >= 0.95 * len(objects)
        by_label = dict(zip((int(v) for v in props["label"]), coords))
        for obj in objects[:20]:
            rows, cols = np.nonzero(labels == obj["id"])
            if layer == "tubules":  # the centroid is where napari puts the pixels' centres
                np.testing.assert_allclose(by_label[obj["id"]], [rows.mean(), cols.mean()], atol=1.0)
            x0, y0, x1, y1 = obj["box"]
            assert rows.min() >= math.floor(y0) and rows.max() < math.ceil(y1)
            assert cols.min() >= math.floor(x0) and cols.max() < math.ceil(x1)
    assert "SOX9 mean" in props


def test_kaizen_labels_match_kaizens_own_label_image(kaizen_results, tmp_path):
    assert _main("export", "labels", kaizen_results / "results", "--out", tmp_path) == 0
    ours = tifffile.imread(tmp_path / "nuclei_000_objects_labels.tif")
    theirs = tifffile.imread(kaizen_results / "results" / "nuclei_000" / "kaizen.tif")
    assert ours.shape == theirs.shape and set(np.unique(ours)) == set(np.unique(theirs))
    assert (ours == theirs).mean() > 0.995  # they differ only where objects overlap (Kaizen: brighter wins)


def test_a_table_the_user_changed_is_kept(kaizen_results, tmp_path, capsys):
    assert _main("export", "labels", kaizen_results / "results", "--out", tmp_path) == 0
    assert _main("export", "labels", kaizen_results / "results", "--out", tmp_path) == 0  # untouched: replaced
    table = tmp_path / "nuclei_000_objects.csv"
    table.write_text(table.read_text() + "my note\n")
    capsys.readouterr()
    assert _main("export", "labels", kaizen_results / "results", "--out", tmp_path) == 0
    assert table.read_text().endswith("my note\n") and (tmp_path / "nuclei_000_objects (2).csv").is_file()
    assert "nuclei_000_objects (2).csv" in capsys.readouterr().out
    assert _main("export", "labels", kaizen_results / "results", "--out", tmp_path, "--force") == 0
    assert "my note" not in table.read_text()


def test_brightfield_nuclei_for_qupath_and_napari(tmp_path):
    assert _main("phantom", "brightfield", "--out", tmp_path / "phantom", "--count", 1, "--size", 96) == 0
    assert _main("brightfield", "segment", tmp_path / "phantom" / "field_000_planes.tif", "--out", tmp_path / "bf",
                 "--model", "brightfield-phantom-demo") == 0
    assert _main("export", "qupath", tmp_path / "bf", "--out", tmp_path / "out") == 0
    assert _main("export", "labels", tmp_path / "bf", "--out", tmp_path / "out") == 0
    data = json.loads((tmp_path / "out" / "field_000_planes.geojson").read_text())
    assert qupath_problems(data) == [] and {f["properties"]["objectType"] for f in data["features"]} == {"detection"}
    ours = tifffile.imread(tmp_path / "out" / "field_000_planes_nuclei_labels.tif")
    np.testing.assert_array_equal(ours, tifffile.imread(tmp_path / "bf" / "field_000_planes" / "labels.tif"))
    assert len(data["features"]) == len(np.unique(ours)) - 1 > 0
    # export -> import: the training import reads back the same nuclei, outlines and measurements
    nuclei = json.loads((tmp_path / "bf" / "field_000_planes" / "objects.json").read_text())["layers"]["nuclei"]
    imported = {o.attributes["name"]: o for o in read_geojson(tmp_path / "out" / "field_000_planes.geojson").objects}
    assert sorted(imported) == sorted(f"nuclei {n['id']}" for n in nuclei)
    for nucleus in nuclei:
        obj = imported[f"nuclei {nucleus['id']}"]
        assert obj.category == nucleus["class"] == "nucleus" and obj.attributes["object_type"] == "detection"
        np.testing.assert_allclose(obj.polygons[0], nucleus["polygon"], atol=1e-6)
        values = obj.attributes["measurements"]
        assert values["Area px^2"] == nucleus["area_px"]  # a phantom outside a project: no pixel size
        assert values["mean_brightfield"] == pytest.approx(nucleus["mean_brightfield"])
        assert "mean_fluorescence" not in values  # null in the results: left out, QuPath refuses null


def test_fast_fill_gives_the_pixels_of_polygon_to_mask():
    """Row-by-row filling equals skimage's pixel-by-pixel test: traced outlines with holes, smooth and integer rings."""
    from scipy import ndimage as ndi

    from app.core.annotations import mask_to_rings
    from app.core.export_labels import scanline_mask

    rng = np.random.default_rng(2)
    for _ in range(30):
        mask = ndi.binary_opening(ndi.binary_closing(rng.random((40, 40)) > 0.5))
        exteriors, holes = mask_to_rings(mask, 0.25)
        np.testing.assert_array_equal(scanline_mask(exteriors, (40, 40), holes),
                                      polygon_to_mask(exteriors, (40, 40), holes))
    t = np.linspace(0, 2 * np.pi, 50, endpoint=False)
    for ring in (np.c_[20 + 30 * np.cos(t), 25 + 17 * np.sin(t)], np.array([[3, 4], [30, 4], [30, 20], [12, 33]])):
        np.testing.assert_array_equal(scanline_mask([ring], (40, 40)), polygon_to_mask([ring], (40, 40)))


def test_label_tiff_is_written_tile_by_tile(tmp_path, monkeypatch):
    """A section is never rasterised whole: only tile-sized windows are asked for, and seams do not show."""
    rng = np.random.default_rng(1)
    objects = []
    t = np.linspace(0, 2 * np.pi, 40, endpoint=False)
    for k in range(1, 41):  # discs and boxes laid on a grid, so none overlap
        cy, cx = 60 + 130 * ((k - 1) // 8), 70 + 125 * ((k - 1) % 8)
        if k % 2:
            r = rng.uniform(20, 60)
            objects.append(AnnotatedObject(k, "IX", polygons=[np.c_[cx + r * np.cos(t), cy + r * np.sin(t)]]))
        else:
            objects.append(AnnotatedObject(k, "Spg", box=(cx - 30.5, cy - 20.25, cx + 31.0, cy + 24.7)))
    objects.append(AnnotatedObject(70000, "Spg", box=(1000, 640, 1010, 650)))  # an id above uint16
    windows = []
    call = TileRasteriser.__call__
    monkeypatch.setattr(TileRasteriser, "__call__", lambda self, *w: windows.append(w) or call(self, *w))
    path = write_label_tiff(tmp_path / "big.tif", objects, (660, 1050), pixel_size_um=None, tile=256)
    written = tifffile.imread(path)
    assert written.dtype == np.uint32 and written.shape == (660, 1050)
    assert len(windows) == 3 * 5 and all(y1 - y0 <= 256 and x1 - x0 <= 256 for y0, x0, y1, x1 in windows)
    np.testing.assert_array_equal(written, objects_to_labels(objects, (660, 1050)))


# ------------------------------------------------------------------ command line and GUI action


def test_export_of_nothing_is_a_one_line_error(tmp_path, capsys):
    assert _main("export", "qupath", tmp_path / "missing", "--out", tmp_path / "o") == 2
    assert _main("export", "labels", tmp_path, "--out", tmp_path / "o") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "no such run" in err[0] and "no results here" in err[1]


@pytest.mark.parametrize("text, says", [
    ("[1, 2]", "not a results file"),
    ('{"layers": [1]}', "no layers of objects"),
    ('{"layers": {"cells": [{"class": "Spg"}]}}', "object 1 of layer 'cells' has no whole-number id"),
    ('{"layers": {"cells": [{"id": "x", "box": [0, 0, 4, 4]}]}}', "has no whole-number id"),
    ('{"layers": {"cells": [{"id": 1, "class": "Spg"}]}}', "has no outline, box or mask"),
    ('{"layers": {"cells": [{"id": 1, "polygon": [[1, 2], [3]]}]}}', "outline is not a list of [x, y] numbers"),
    ('{"layers": {"cells": [{"id": 1, "box": [1, 2, "a", 4]}]}}', "box is not [x0, y0, x1, y1] numbers"),
])
@pytest.mark.parametrize("fmt", ["qupath", "labels"])
def test_a_broken_objects_file_is_a_one_line_error(tmp_path, capsys, fmt, text, says):
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "objects.json").write_text(text)
    assert _main("export", fmt, tmp_path / "results", "--out", tmp_path / "out") == 2
    err = [line for line in capsys.readouterr().err.splitlines() if not line.startswith("[export]")]  # progress
    assert len(err) == 1 and "objects.json" in err[0] and says in err[0]


def test_a_score_qupath_cannot_hold_is_left_out(tmp_path):
    """NaN or text as a score would make QuPath refuse the whole file; the object keeps its other measurements."""
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "objects.json").write_text(json.dumps({"layers": {"cells": [
        {"id": 1, "class": "Spg", "box": [1, 2, 5, 6], "score": float("nan")},
        {"id": 2, "class": "Spg", "box": [8, 2, 12, 6], "score": "high"},
        {"id": 3, "class": "Spg", "box": [1, 8, 5, 12], "score": 0.5}]}}))
    assert _main("export", "qupath", tmp_path / "results", "--out", tmp_path / "out") == 0
    data = json.loads((tmp_path / "out" / "results.geojson").read_text())
    assert qupath_problems(data) == []
    assert [f["properties"]["measurements"].get("score") for f in data["features"]] == [None, None, 0.5]
    assert all(f["properties"]["measurements"]["Area px^2"] == 16 for f in data["features"])


def test_a_project_folder_exports_each_run_apart_with_its_edits(tmp_path):
    """Given the whole project: two runs of the same section land in a folder each (neither replaces the other),
    each with its own curation edits and the project's pixel size; a kaizen.objects.json beside an image's
    objects.json is not taken for another image."""
    import shutil

    from app.core.edits import edits_path, make_edit, write_edits
    from app.core.jobs import run as run_job
    from gui_fakes import FakeParams, fake_analyze, make_project

    project = make_project(tmp_path, n_images=1, with_run=True)
    run_job(fake_analyze(project, ["section1"], FakeParams(), {}))
    first, second = sorted(project.runs(), key=lambda r: r.id)
    cells = json.loads((first.folder / "section1" / "objects.json").read_text())["layers"]["cells"]
    write_edits(edits_path(first.folder), [make_edit("delete_cell", "section1", cells[0]["id"])])
    shutil.copy(second.folder / "section1" / "objects.json", second.folder / "section1" / "kaizen.objects.json")
    assert _main("export", "qupath", project.folder, "--out", tmp_path / "out") == 0

    written = sorted(p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*.geojson"))
    assert written == sorted(f"runs/{r.id}/section1.geojson" for r in (first, second))
    for run, expected in ((first, len(cells) - 1), (second, len(cells))):
        data = json.loads((tmp_path / "out" / "runs" / run.id / "section1.geojson").read_text())
        names = [f["properties"]["name"] for f in data["features"]]
        assert sum(n.startswith("cells ") for n in names) == expected
        assert all("Area µm^2" in f["properties"]["measurements"] for f in data["features"])


def test_export_dialog_offers_runs_formats_and_a_folder(qtbot, kaizen_results, tmp_path):
    from app.core.jobs import run
    from app.gui.export_actions import ExportDialog

    runs = [SimpleNamespace(id="run-a", pipeline="kaizen", results={"nuclei_000": {}},
                            folder=kaizen_results / "results"),
            SimpleNamespace(id="run-b", pipeline="kaizen", results={}, folder=tmp_path)]
    dialog = ExportDialog(runs, tmp_path, current=runs[0])
    qtbot.addWidget(dialog)
    dialog.format_box.setCurrentIndex(1)
    chosen, fmt, folder = dialog.choice()
    assert chosen is runs[0] and fmt == "labels" and folder == tmp_path / "exports" / "run-a-labels"


def test_file_menu_action_exports_a_project_run(qtbot, tmp_path):
    """The main window's File > Export results...: the dialog offers the project's run, the queue writes the files."""
    from gui_fakes import make_project, register_fake

    register_fake()
    project = make_project(tmp_path, n_images=1, with_run=True)
    window = main_window(qtbot, size=None, show=False)
    try:
        window.open_project(project.folder)
        window.actions["export_results"].trigger()
        dialog = window.export_actions.dialog
        assert dialog.run_box.count() == 1 and dialog.choice()[1] == "qupath"
        dialog.accept()
        assert window.queue.wait(30)
        [run] = project.runs()
        data = json.loads((project.folder / "exports" / f"{run.id}-qupath" / "section1.geojson").read_text())
        assert qupath_problems(data) == [] and data["features"]
        # the fake pipeline records no pixel size; the project knows the section's 0.5 µm
        assert all("Area µm^2" in f["properties"]["measurements"] for f in data["features"])
    finally:
        window.confirm = lambda *args: True
        window.queue.shutdown()
        window.close()
