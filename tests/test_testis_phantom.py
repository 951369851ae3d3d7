"""Testis phantoms: stage-dependent composition, layering, unusable tubules, markers, files and truth readers;
windowed rendering equal to crops of the whole, streaming writes, and a phantom a wrong pipeline fails on."""

from __future__ import annotations

import json
import math
import tracemalloc
from collections import Counter

import numpy as np
import pytest

from app.core.images import open_image
from app.pipelines.stagetool import phantom as tp
from app.pipelines.stagetool import phantom_layout as tl
from app.pipelines.stagetool.classes import CELL_TYPES, STAGES
from app.pipelines.stagetool.phantom import render_testis, render_testis_truth, tubule_labels, write_testis
from app.pipelines.stagetool.phantom_layout import testis_layout as make_layout  # not a test
from app.pipelines.stagetool.truth import load_testis_truth, read_testis_truth


@pytest.fixture(scope="module")
def layout():
    return make_layout(seed=4, size=2600, damaged=0.15, longitudinal=0.1)


@pytest.fixture(scope="module")
def pixels(layout):
    return render_testis(layout, ("SOX9",))


def by_stage(layout):
    stage_of = {t.id: t.stage for t in layout.tubules}
    counts = {s: Counter() for s in STAGES}
    for cell in layout.cells:
        counts[stage_of[cell.tubule]][cell.kind] += 1
    return counts


def normalised_radius(layout, cell):
    """Distance of a cell from its tubule's centre over the tubule's mean radius (1 = basal wall)."""
    t = next(t for t in layout.tubules if t.id == cell.tubule)
    return math.hypot(cell.cy - t.cy, cell.cx - t.cx) / ((t.ry + t.rx) / 2)


def ellipse_mean(image, cell):
    """Mean of ``image`` over the cell's ellipse (None when the cell leaves the image)."""
    x0, y0, x1, y1 = cell.box
    if x0 < 0 or y0 < 0 or x1 > image.shape[1] or y1 > image.shape[0]:
        return None
    yy, xx = np.mgrid[y0:y1, x0:x1]
    dy, dx = yy + 0.5 - cell.cy, xx + 0.5 - cell.cx
    ca, sa = math.cos(cell.angle), math.sin(cell.angle)
    inside = ((dx * ca + dy * sa) / cell.a) ** 2 + ((-dx * sa + dy * ca) / cell.b) ** 2 <= 1
    return float(image[y0:y1, x0:x1][inside].mean()) if inside.any() else None


def test_composition_follows_the_stage(layout):
    counts = by_stage(layout)
    assert all(counts[s] for s in STAGES), "every stage should be drawn at this size"
    for stage in ("I-V", "VI-VIII", "IX", "X-XI"):
        assert counts[stage]["Spc sec"] == 0
    for stage in ("VI-VIII", "IX", "X-XI"):
        assert counts[stage]["m2m"] == 0
    # the only m2m outside XII: at most 2 per I-V tubule, carried over from XII (paper, figure 17)
    per_tubule = Counter(c.tubule for c in layout.cells if c.kind == "m2m" and c.stage == "I-V")
    assert all(n <= 2 for n in per_tubule.values())
    assert counts["XII"]["m2m"] > 5 * counts["I-V"]["m2m"] and counts["XII"]["Spc sec"] > 0
    for stage in ("IX", "X-XI", "XII"):
        assert counts[stage]["round spermatid"] == 0 and counts[stage]["late elongating spermatid"] == 0
        assert counts[stage]["early elongating spermatid"] > 0
    for stage in ("I-V", "VI-VIII"):
        assert counts[stage]["early elongating spermatid"] == 0 and counts[stage]["round spermatid"] > 0
        assert counts[stage]["late elongating spermatid"] > 0
    assert counts["I-V"]["Spc prePach"] == 0 and counts["VI-VIII"]["Spc prePach"] > 0


def test_cells_are_layered_from_the_wall_to_the_lumen(layout):
    normal = {t.id for t in layout.tubules if t.kind == "normal"}
    radial = {}
    for cell in layout.cells:
        if cell.tubule in normal:
            radial.setdefault(cell.kind, []).append(normalised_radius(layout, cell))
    mean = {k: np.mean(v) for k, v in radial.items()}
    basal = ("Sertoli", "Spg", "Spc prePach")
    luminal = ("round spermatid", "early elongating spermatid", "late elongating spermatid")
    assert min(mean[k] for k in basal) > mean["Spc Pach"] > max(mean[k] for k in luminal)
    assert min(mean[k] for k in basal) > 0.78 and max(mean[k] for k in luminal) < 0.6
    assert mean["Spg"] > mean["Spc Pach"] > mean["round spermatid"]


def test_types_differ_by_size_and_shape_not_by_a_unique_brightness(layout):
    sizes = {}
    brightness = {}
    for cell in layout.cells:
        sizes.setdefault(cell.kind, []).append(cell.a * cell.b)
        brightness.setdefault(cell.kind, []).append(cell.brightness)
    assert np.mean(sizes["Spc Pach"]) > 3 * np.mean(sizes["round spermatid"])
    # overlapping brightness ranges: Sertoli vs round spermatids vs pachytene spermatocytes
    for a, b in (("Sertoli", "round spermatid"), ("Spc Pach", "Sertoli"), ("Spg", "Spc prePach")):
        assert max(min(brightness[a]), min(brightness[b])) < min(max(brightness[a]), max(brightness[b]))


def nearest_mean_accuracy(features, kinds):
    """Balanced accuracy of a nearest-class-mean classifier on standardised ``features`` (fit on all)."""
    z = (features - features.mean(0)) / features.std(0)
    classes = sorted(set(kinds))
    kinds = np.array(kinds)
    means = np.array([z[kinds == k].mean(0) for k in classes])
    predicted = np.array(classes)[np.argmin(((z[:, None, :] - means[None]) ** 2).sum(-1), axis=1)]
    return np.mean([np.mean(predicted[kinds == k] == k) for k in classes])


def test_rendered_intensity_does_not_separate_the_types_but_size_and_position_do(layout, pixels):
    dapi = pixels[0].astype(float)
    rows, kinds = [], []
    for cell in layout.cells:
        mean = ellipse_mean(dapi, cell)
        if mean is not None:
            rows.append((mean, math.log(cell.a * cell.b), cell.a / cell.b, normalised_radius(layout, cell)))
            kinds.append(cell.kind)
    rows = np.array(rows)
    assert set(kinds) == set(CELL_TYPES)
    ranges = {k: np.percentile(rows[np.array(kinds) == k, 0], [10, 90]) for k in CELL_TYPES}
    overlaps = {(a, b) for a in CELL_TYPES for b in CELL_TYPES
                if a < b and max(ranges[a][0], ranges[b][0]) < min(ranges[a][1], ranges[b][1])}
    assert len(overlaps) >= 15, "most pairs of types should share a DAPI intensity range (10th-90th percentile)"
    assert all(any(k in pair for pair in overlaps) for k in CELL_TYPES), "no type may have a unique brightness"
    by_intensity = nearest_mean_accuracy(rows[:, :1], kinds)
    by_size_and_position = nearest_mean_accuracy(rows[:, 1:], kinds)
    assert by_intensity < 0.5 < 0.8 < by_size_and_position


def test_unusable_tubules_and_truth(layout):
    kinds = Counter(t.kind for t in layout.tubules)
    assert kinds["normal"] > 0 and kinds["damaged"] > 0 and kinds["longitudinal"] > 0
    truth = render_testis_truth(layout)
    assert truth["synthetic"] is True
    usable = {t["id"]: t["usable"] for t in truth["tubules"]}
    assert {i for i, ok in usable.items() if not ok} == {t.id for t in layout.tubules if t.kind != "normal"}
    assert all(usable[t.id] for t in layout.tubules if t.kind == "normal")
    longitudinal = [t for t in layout.tubules if t.kind == "longitudinal"]
    assert all(max(t.ry, t.rx) > 1.5 * min(t.ry, t.rx) for t in longitudinal)  # cut along: elongated
    labels = tubule_labels(layout)
    for cell in truth["cells"][:200]:
        y, x = (int(v) for v in cell["centroid"])
        assert labels[y, x] == cell["tubule"]  # every cell lies in its own tubule


def test_marker_lights_its_cell_types(layout, pixels):
    assert pixels.shape == (2, *layout.shape) and pixels.dtype == np.uint16
    sox9 = pixels[1].astype(float)
    sertoli, others = [], []
    for cell in layout.cells[::3]:
        mean = ellipse_mean(sox9, cell)
        if mean is not None:
            (sertoli if cell.kind == "Sertoli" else others).append(mean)
    assert len(sertoli) > 50 and len(others) > 500
    assert np.median(sertoli) > 3 * np.median(others)
    assert np.percentile(sertoli, 25) > np.percentile(others, 95)
    # the truth says which cells were drawn positive, and only Sertoli cells are
    truth = render_testis_truth(layout, ("SOX9",))
    levels = Counter((c["type"], c["markers"]["SOX9"] > 0) for c in truth["cells"])
    assert levels[("Sertoli", True)] > 0.5 * (levels[("Sertoli", True)] + levels[("Sertoli", False)])
    assert not any(positive for (kind, positive) in levels if kind != "Sertoli")


def test_a_window_renders_the_same_pixels_as_the_crop_of_the_whole():
    small = make_layout(seed=1, size=(700, 1100), damaged=0.3)
    whole = render_testis(small, ("SOX9", "CREM"))
    labels = tubule_labels(small)
    for region in ((0, 0, 300, 400), (517, 1000, 700, 1100), (250, 1020, 260, 1030), (3, 255, 700, 513)):
        y0, x0, y1, x1 = region
        assert np.array_equal(render_testis(small, ("SOX9", "CREM"), region=region), whole[:, y0:y1, x0:x1])
        assert np.array_equal(tubule_labels(small, region), labels[y0:y1, x0:x1])
    assert np.array_equal(render_testis(small, ("CREM",), region=(0, 0, 64, 64))[1], whole[2, :64, :64])
    again = make_layout(seed=1, size=(700, 1100), damaged=0.3)
    assert np.array_equal(render_testis(again, ("SOX9", "CREM")), whole)  # seeded: reproducible
    with pytest.raises(ValueError):
        render_testis(small, region=(0, 0, 701, 10))


def test_each_cell_draws_from_its_own_seed():
    """Leaving one cell out changes only the pixels near it: no shared sequential random stream."""
    small = make_layout(seed=2, size=600)
    before = render_testis(small, ("SOX9",)).astype(int)
    gone = small.cells[len(small.cells) // 2]
    small.cells = [c for c in small.cells if c is not gone]
    after = render_testis(small, ("SOX9",)).astype(int)
    changed = np.argwhere((before != after).any(0))
    assert len(changed) > 0
    reach = max(gone.a, gone.b) + 1.5 + tp.BLUR_MARGIN + 4
    assert np.abs(changed - [gone.cy, gone.cx]).max() <= reach


def test_the_layout_needs_no_section_sized_label_image(monkeypatch):
    small = make_layout(seed=5, size=1200)
    labels = tubule_labels(small)
    index = tl._Index(small)
    rng = np.random.default_rng(0)
    for y, x in rng.uniform(-5, 1205, (400, 2)):
        inside = 0 <= int(y) < 1200 and 0 <= int(x) < 1200 and labels[int(y), int(x)] > 0
        assert tl._in_a_tubule(index, small.shape, y, x) == inside

    def refuse(*args, **kwargs):
        raise AssertionError("testis_layout drew pixels")
    monkeypatch.setattr(tp, "tubule_labels", refuse)
    monkeypatch.setattr(tl, "_tubule_region", refuse)
    again = make_layout(seed=5, size=1200)
    assert [(c.cy, c.cx) for c in again.distractors] == [(c.cy, c.cx) for c in small.distractors]


@pytest.mark.slow
def test_a_big_section_streams_into_the_file(tmp_path, monkeypatch):
    """A 6000 x 6000 section (cells in one corner, to keep the test fast) is written tile by tile."""
    size = 6000
    corner = make_layout(seed=3, size=1024)
    big = tp.TestisLayout((size, size), 3, (size / 2, size / 2, 0.46 * size, 0.46 * size),
                          corner.tubules, corner.cells, corner.distractors)
    monkeypatch.setattr(tp, "testis_layout", lambda seed, size, style=None: big)
    tracemalloc.start()
    try:
        write_testis(tmp_path, seed=3, size=size, markers=())
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    float32_size = size * size * 4
    print(f"peak traced memory {peak / 1e6:.1f} MB = {peak / float32_size:.3f} x float32 size")
    assert peak < float32_size / 5, f"peak traced memory {peak / 1e6:.0f} MB"
    region = (900, 700, 1500, 1200)
    with open_image(tmp_path / "testis_000.ome.tif") as image:
        assert image.info.shape[-2:] == (size, size) and len(image.info.levels) > 1
        assert np.array_equal(image.read(region=region), render_testis(big, (), region=region)[0])
    with open_image(tmp_path / "testis_000_tubules.tif") as image:
        assert np.array_equal(image.read(region=region), tubule_labels(big, region))
    data = json.loads((tmp_path / "testis_000_truth.json").read_text())
    assert len(data["cells"]) == len(corner.cells) and data["image"] == "testis_000.ome.tif"
    assert data["markers"] == [] and data["cells"][0]["markers"] == {}


def test_files_and_readers(tmp_path):
    written = write_testis(tmp_path, seed=2, count=1, size=768, markers=("SOX9", "SCP3"))
    assert {p.name for p in written} >= {"testis_000.ome.tif", "testis_000_truth.json", "testis_000_tubules.tif",
                                         "README.txt"}
    with open_image(tmp_path / "testis_000.ome.tif") as image:
        assert image.info.channel_names == ("DAPI", "SOX9", "SCP3") and image.info.pixel_size_um == 0.5
        assert np.array_equal(image.read(channel="SCP3"), render_testis(make_layout(2, 768), ("SOX9", "SCP3"))[2])
    assert "SYNTHETIC" in (tmp_path / "README.txt").read_text()
    sections = read_testis_truth(tmp_path)
    assert len(sections) == 1 and sections[0]["name"] == "testis_000"
    data = json.loads((tmp_path / "testis_000_truth.json").read_text())
    assert data == {**render_testis_truth(make_layout(2, 768), ("SOX9", "SCP3")), "image": "testis_000.ome.tif"}
    assert len(sections[0]["cells"]) == len(data["cells"]) > 0
    assert len(sections[0]["tubules"]) == len(data["tubules"])
    truth = load_testis_truth(tmp_path, "testis_000")
    assert truth["tubule_labels"].shape == (768, 768) and len(truth["cell_types"]) == len(data["cells"])
    with pytest.raises(FileNotFoundError):
        load_testis_truth(tmp_path, "other")
