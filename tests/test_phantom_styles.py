"""Phantom styles ("new lab" sections): exact truth under every style, windows equal crops, and styles that
differ measurably from the training phantoms (pixel size, sharpness, lighting, oblique cuts, tears, debris)."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
from scipy import ndimage as ndi

from app.cli import main
from app.core.errors import UserError
from app.core.images import open_image
from app.pipelines.stagetool import phantom as tp
from app.pipelines.stagetool.phantom import render_testis, render_testis_truth, tubule_labels
from app.pipelines.stagetool.phantom_layout import testis_layout as make_layout  # not a test
from app.pipelines.stagetool.phantom_style import STYLES, get_style

NEW_LABS = [name for name in STYLES if name != "default"]


@pytest.fixture(scope="module", params=list(STYLES))
def styled(request):
    layout = make_layout(seed=7, size=1280, style=request.param)
    return request.param, layout, render_testis(layout, ())[0].astype(float), tubule_labels(layout)


def sharpness(image: np.ndarray) -> float:
    """Mean absolute Laplacian over the mean: fine detail per unit brightness."""
    return float(np.abs(ndi.laplace(image)).mean() / image.mean())


def test_at_least_two_new_lab_styles_and_unknown_names_are_one_line():
    assert len(NEW_LABS) >= 2
    with pytest.raises(UserError, match="known: default"):
        get_style("no-such-lab")


def test_default_style_is_the_training_phantom():
    plain, styled_default = make_layout(3, 800), make_layout(3, 800, style="default")
    assert np.array_equal(render_testis(plain, ("SOX9",)), render_testis(styled_default, ("SOX9",)))
    assert render_testis_truth(plain) == render_testis_truth(styled_default)


def test_truth_matches_what_is_drawn(styled):
    """Every truth cell is a drawn nucleus inside its tubule's label; no cell or tubule lies in a tear."""
    name, layout, _, labels = styled
    truth = render_testis_truth(layout, ())
    assert truth["pixel_size_um"] == get_style(name).pixel_size_um and truth["style"] == name
    section = tp._section_mask(layout, (0, 0, *layout.shape))
    drawn = tp._dapi(layout, (0, 0, *layout.shape), tp._index(layout), section)
    background = {round(v * layout.style.background, 4) for v in (0.0, 0.05, 0.06, 0.07, 0.14, 0.22)}
    ids = {t["id"] for t in truth["tubules"]}
    inside, total = 0, 0
    for cell in truth["cells"]:
        x0, y0, x1, y1 = cell["box"]
        assert 0 <= x0 < x1 <= layout.shape[1] and 0 <= y0 < y1 <= layout.shape[0] and cell["tubule"] in ids
        y, x = (int(v) for v in cell["centroid"])
        if not (0 <= y < layout.shape[0] and 0 <= x < layout.shape[1]):
            continue
        total += 1
        assert round(float(drawn[y, x]), 4) not in background  # a nucleus is drawn there
        inside += labels[y, x] == cell["tubule"]
    assert total > 300 and inside / total > 0.98  # oblique neighbours may overlap a few wall cells
    gaps = tp.torn(layout, (0, 0, *layout.shape))
    if gaps is not None:
        assert gaps.any() and not (labels[gaps] > 0).any()
        assert not any(gaps[int(c["centroid"][0]), int(c["centroid"][1])] for c in truth["cells"]
                       if 0 <= c["centroid"][0] < layout.shape[0] and 0 <= c["centroid"][1] < layout.shape[1])


def test_a_window_of_a_styled_section_equals_the_crop_of_the_whole():
    layout = make_layout(seed=2, size=900, style="cryosection")
    layout.defocus = np.array([[450.0, 450.0, 200.0]])  # the widefield's focus patches, here too
    layout.style = dataclasses.replace(STYLES["cryosection"], defocus_sigma=3.0)
    whole, labels = render_testis(layout, ("SOX9",)), tubule_labels(layout)
    for y0, x0, y1, x1 in ((0, 0, 300, 410), (400, 380, 520, 900), (123, 456, 789, 800)):
        assert np.array_equal(render_testis(layout, ("SOX9",), region=(y0, x0, y1, x1)), whole[:, y0:y1, x0:x1])
        assert np.array_equal(tubule_labels(layout, (y0, x0, y1, x1)), labels[y0:y1, x0:x1])


def test_styles_differ_measurably_from_the_training_phantoms():
    measured = {}
    for name in STYLES:
        layout = make_layout(seed=11, size=1536, style=name)
        dapi = render_testis(layout, ())[0].astype(float)
        usable = [t for t in layout.tubules if t.usable]
        radius = float(np.median([math.sqrt(t.ry * t.rx) for t in layout.tubules]))
        tissue = dapi[tp._section_mask(layout, (0, 0, *layout.shape))]
        clean = render_testis(layout, (), noise=0.0)[0].astype(float)  # sharpness without the camera noise
        measured[name] = {"radius": radius, "sharp": sharpness(clean),
                          "elongated": np.mean([max(t.ry, t.rx) / min(t.ry, t.rx) > 1.15 for t in usable]),
                          "debris": sum(c.kind == "debris" for c in layout.distractors),
                          "light": float(np.percentile(tissue, 95) / max(np.percentile(tissue, 50), 1))}
    base = measured["default"]
    for name in NEW_LABS:
        style, got = STYLES[name], measured[name]
        assert got["radius"] == pytest.approx(base["radius"] * style.scale, rel=0.15)  # another pixel size
        assert got["debris"] > 0 == base["debris"] and got["elongated"] > base["elongated"]
    assert measured["widefield"]["sharp"] < 0.8 * base["sharp"]  # soft focus, out-of-focus patches
    assert measured["cryosection"]["light"] != pytest.approx(base["light"], rel=0.1)  # other stain contrast
    assert measured["cryosection"]["elongated"] >= 0.2  # oblique cuts: elongated, still usable tubules


def test_cli_writes_a_styled_phantom_with_its_pixel_size(tmp_path, capsys):
    assert main(["phantom", "testis", "--out", str(tmp_path), "--count", "1", "--size", "640",
                 "--style", "widefield", "--markers", ""]) == 0
    with open_image(tmp_path / "testis_000.ome.tif") as image:
        assert image.info.pixel_size_um == pytest.approx(0.65)
    data = json.loads((tmp_path / "testis_000_truth.json").read_text())
    assert data["style"] == "widefield" and data["pixel_size_um"] == 0.65
    assert "widefield" in (tmp_path / "README.txt").read_text()
    assert main(["phantom", "testis", "--out", str(tmp_path / "x"), "--style", "nope"]) == 2
    assert "unknown phantom style" in capsys.readouterr().err
