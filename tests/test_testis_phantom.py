"""Testis phantoms: stage-dependent composition, layering, unusable tubules, markers, files and truth readers."""

from __future__ import annotations

import json
import math
from collections import Counter

import numpy as np
import pytest

from app.core.images import open_image
from app.core.testis_classes import STAGES
from app.core.testis_phantom import (
    load_testis_truth, read_testis_truth, render_testis, render_testis_truth, tubule_labels, write_testis,
)
from app.core.testis_phantom import testis_layout as make_layout  # not a test


@pytest.fixture(scope="module")
def layout():
    return make_layout(seed=4, size=2600, damaged=0.15, longitudinal=0.1)


def by_stage(layout):
    stage_of = {t.id: t.stage for t in layout.tubules}
    counts = {s: Counter() for s in STAGES}
    for cell in layout.cells:
        counts[stage_of[cell.tubule]][cell.kind] += 1
    return counts


def test_composition_follows_the_stage(layout):
    counts = by_stage(layout)
    assert all(counts[s] for s in STAGES), "every stage should be drawn at this size"
    for stage in ("VI-VIII", "IX", "X-XI"):
        assert counts[stage]["m2m"] == 0 and counts[stage]["Spc sec"] == 0
    assert counts["XII"]["m2m"] > 0 and counts["XII"]["Spc sec"] > 0
    for stage in ("IX", "X-XI", "XII"):
        assert counts[stage]["round spermatid"] == 0 and counts[stage]["late elongating spermatid"] == 0
        assert counts[stage]["early elongating spermatid"] > 0
    for stage in ("I-V", "VI-VIII"):
        assert counts[stage]["early elongating spermatid"] == 0 and counts[stage]["round spermatid"] > 0
    assert counts["I-V"]["Spc prePach"] == 0 and counts["VI-VIII"]["Spc prePach"] > 0


def test_cells_are_layered_from_the_wall_to_the_lumen(layout):
    tubules = {t.id: t for t in layout.tubules if t.kind == "normal"}
    radial = {}
    for cell in layout.cells:
        t = tubules.get(cell.tubule)
        if t is None:
            continue
        rho = math.hypot(cell.cy - t.cy, cell.cx - t.cx) / ((t.ry + t.rx) / 2)
        radial.setdefault(cell.kind, []).append(rho)
    mean = {k: np.mean(v) for k, v in radial.items()}
    assert mean["Spg"] > mean["Spc Pach"] > mean["round spermatid"]
    assert mean["Sertoli"] > mean["Spc Pach"]


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


def test_unusable_tubules_and_truth(layout):
    kinds = Counter(t.kind for t in layout.tubules)
    assert kinds["normal"] > 0 and kinds["damaged"] + kinds["longitudinal"] > 0
    truth = render_testis_truth(layout)
    assert truth["synthetic"] is True
    assert {t["id"] for t in truth["tubules"] if not t["usable"]} == {t.id for t in layout.tubules if t.kind != "normal"}
    labels = tubule_labels(layout)
    for cell in truth["cells"][:200]:
        y, x = (int(v) for v in cell["centroid"])
        assert labels[y, x] == cell["tubule"]  # every cell lies in its own tubule


def test_marker_lights_its_cell_types():
    small = make_layout(seed=1, size=1024)
    pixels = render_testis(small, ("SOX9",))
    assert pixels.shape == (2, 1024, 1024) and pixels.dtype == np.uint16
    sox9 = pixels[1].astype(float)
    sertoli, others = [], []
    for cell in small.cells:
        x0, y0, x1, y1 = (int(v) for v in cell.box)
        (sertoli if cell.kind == "Sertoli" else others).append(sox9[y0:y1, x0:x1].mean())
    assert sertoli and others
    assert np.median(sertoli) > 3 * np.median(others)


def test_files_and_readers(tmp_path):
    written = write_testis(tmp_path, seed=2, count=1, size=768, markers=("SOX9", "SCP3"))
    assert {p.name for p in written} >= {"testis_000.ome.tif", "testis_000_truth.json", "testis_000_tubules.tif",
                                         "README.txt"}
    with open_image(tmp_path / "testis_000.ome.tif") as image:
        assert image.info.channel_names == ("DAPI", "SOX9", "SCP3") and image.info.pixel_size_um == 0.5
    assert "SYNTHETIC" in (tmp_path / "README.txt").read_text()
    sections = read_testis_truth(tmp_path)
    assert len(sections) == 1 and sections[0]["name"] == "testis_000"
    data = json.loads((tmp_path / "testis_000_truth.json").read_text())
    assert len(sections[0]["cells"]) == len(data["cells"]) > 0
    assert len(sections[0]["tubules"]) == len(data["tubules"])
    truth = load_testis_truth(tmp_path, "testis_000")
    assert truth["tubule_labels"].shape == (768, 768) and len(truth["cell_types"]) == len(data["cells"])
    with pytest.raises(FileNotFoundError):
        load_testis_truth(tmp_path, "other")
