"""Refitting the composition stager on a new cell model's own cells (the loop's "Train on my corrections").

Tubule stages come from the cells the cell model finds.  A fine-tuned cell model makes other
mistakes than the one the stager was fitted on (on the widefield phantoms its boxes of elongating
spermatids are rounder, so X-XI tubules read as IX), so after training a cell model the app refits
the stager on the cells it finds in the corrected sections, starting from the stager in use.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from app.core.annotations import AnnotatedObject
from app.pipelines.stagetool import composition as C
from app.pipelines.stagetool.phantom import render_testis_truth, tubule_labels
from app.pipelines.stagetool.phantom_layout import testis_layout as make_layout  # not a test

SIZE = 1024


def _rounder_cells(doc):
    """What a blur-fooled cell model finds: every cell, but elongating spermatids' boxes half as elongated."""
    found = []
    for c in doc["cells"]:
        x0, y0, x1, y1 = c["box"]
        if "elongating" in c["type"]:
            w, h = x1 - x0, y1 - y0
            cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
            short, long = min(w, h), max(w, h)
            long = short + 0.25 * (long - short)
            w, h = (long, short) if w >= h else (short, long)
            x0, y0, x1, y1 = cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2
        found.append({"class": c["type"], "box": [x0, y0, x1, y1], "centroid": [(y0 + y1) / 2, (x0 + x1) / 2]})
    return found


def _rows(seeds, cells_of):
    rows, stages = [], []
    for seed in seeds:
        layout = make_layout(seed, SIZE)
        doc = render_testis_truth(layout, ())
        r, s = C.prediction_examples(cells_of(doc), tubule_labels(layout),
                                     {t["id"]: t["stage"] for t in doc["tubules"]},
                                     {t["id"] for t in doc["tubules"] if not t["usable"]})
        rows += r
        stages += s
    return np.array(rows), stages


def _truth_cells(doc):
    return [{"class": c["type"], "box": c["box"], "centroid": c["centroid"]} for c in doc["cells"]]


@pytest.mark.slow
def test_a_refit_from_the_stager_in_use_learns_the_new_models_boxes_and_keeps_the_other_stages():
    """The prior (fitted on annotated cells) misreads a model with rounder boxes; refitted from it on two
    corrected sections of that model, it stages new sections of that model better, and a refit on
    tubules of only two stages still stages the other three as the prior did."""
    prior = C.fit(*_rows(range(6), _truth_cells))
    x_fit, s_fit = _rows(range(10, 12), _rounder_cells)
    x_new, s_new = _rows(range(100, 106), _rounder_cells)
    assert len(s_fit) >= 10 and len(set(s_new)) == 5

    def accuracy(stager, x, stages):
        return float(np.mean([C.STAGES[i] == s for i, s in zip(stager.probabilities(x).argmax(1), stages)]))

    refit = C.fit(x_fit, s_fit, prior=prior)
    before, after = accuracy(prior, x_new, s_new), accuracy(refit, x_new, s_new)
    assert after > before and after >= 0.85, (before, after)
    assert refit.n_train == prior.n_train + len(s_fit)
    assert np.array_equal(refit.mean, prior.mean)  # the prior's standardisation is kept

    two = [i for i, s in enumerate(s_fit) if s in ("IX", "X-XI")]
    assert len({s_fit[i] for i in two}) == 2
    narrow = C.fit(x_fit[two], [s_fit[i] for i in two], prior=prior)
    others = [i for i, s in enumerate(s_new) if s in ("I-V", "VI-VIII", "XII")]
    x_other, s_other = x_new[others], [s_new[i] for i in others]
    assert accuracy(narrow, x_other, s_other) >= accuracy(prior, x_other, s_other) - 0.1
    with pytest.raises(Exception):  # without a prior one stage is not enough to fit
        C.fit(x_fit[:1], s_fit[:1])


def test_outline_examples_join_cells_to_the_outline_under_their_centre(monkeypatch):
    from app.pipelines.stagetool import fitting

    monkeypatch.setattr(fitting, "MIN_CELLS", 3)
    square = AnnotatedObject(1, "XII", polygons=[np.array([[0, 0], [50, 0], [50, 50], [0, 50]], float)])
    mask = np.zeros((40, 40), bool)
    mask[:, :20] = True  # only the left half of its box
    half = AnnotatedObject(2, "I-V", mask=mask, mask_offset=(100, 100))  # (y, x)
    unstaged = AnnotatedObject(3, "Sertoli", box=(0, 0, 50, 50))
    boxes = np.array([[10, 10, 14, 14]] * 3 + [[105, 105, 109, 109]] * 3 + [[130, 105, 134, 109]] * 3, float)
    types = ["m2m"] * 3 + ["Sertoli"] * 3 + ["Spg"] * 3  # the Spg sit in the right half: outside the mask
    rows, stages = fitting.outline_examples([square, half, unstaged], boxes, types)
    assert stages == ["XII", "I-V"]
    assert dict(zip(C.FEATURES, rows[0]))["share m2m"] == 1.0
    assert dict(zip(C.FEATURES, rows[1]))["share Sertoli"] == 1.0
    assert fitting.outline_examples([square], boxes[:2], types[:2]) == ([], [])  # too few cells


def test_the_cell_models_stager_wins_over_the_tubule_models():
    from app.pipelines.stagetool.loading import stager_of

    stager = C.fit(np.eye(len(C.FEATURES))[:5], list(C.STAGES))
    other = C.fit(np.eye(len(C.FEATURES))[5:10], list(C.STAGES))
    tubules = SimpleNamespace(card=SimpleNamespace(extra={"composition": other.to_dict()}))
    cells = SimpleNamespace(card=SimpleNamespace(extra={"composition": stager.to_dict()}))
    plain = SimpleNamespace(card=SimpleNamespace(extra={}))
    assert np.allclose(stager_of(tubules, cells).weights, stager.weights, atol=1e-5)
    assert np.allclose(stager_of(tubules, plain).weights, other.weights, atol=1e-5)
    assert np.allclose(stager_of(tubules).weights, other.weights, atol=1e-5)
    assert stager_of(plain, plain) is None


def test_refit_for_cell_model_reads_the_section_with_the_new_model_and_stores_the_stager(tmp_path, monkeypatch):
    """End to end on a drawn section: the cell model (an oracle that finds the drawn cells) analyses the
    corrected section, its cells join the corrected outlines, and the refitted stager, stored in the
    cell model's card, gives those tubules their corrected stages more often than the stager it started from."""
    import json

    from app.core.images import write_tiff
    from app.core.jobs import run
    from app.core.modelcard import load_model_card, resolve_model
    from app.pipelines.stagetool import fitting, loading, predict
    from app.pipelines.stagetool.dataset import Section
    from test_stagetool_cli import tiny_model
    from test_stagetool_section import SCALE, draw_section, oracle_model

    monkeypatch.setattr(predict, "intensity_range", lambda overview: (0.0, SCALE))
    monkeypatch.setattr(fitting, "MIN_CELLS", 5)
    image, truth, _ = draw_section()
    path = tmp_path / "sec.ome.tif"
    write_tiff(path, image.astype(np.uint16), axes="CYX", channel_names=["DAPI", "SOX9"], pixel_size_um=0.5)
    folder = tiny_model(tmp_path / "cells", "cells")
    oracle = oracle_model("cells", 128)
    asked = []

    def load(name, kind, device="auto"):
        asked.append((str(name), kind))
        oracle.card = load_model_card(name)
        return oracle

    monkeypatch.setattr(loading, "load_model", load)
    outlines = []
    for tid, stage in truth.tubule_stages.items():  # the corrected outlines: each tubule with its drawn stage
        ys, xs = np.nonzero(truth.tubule_labels == tid)
        mask = truth.tubule_labels[ys.min():ys.max() + 1, xs.min():xs.max() + 1] == tid
        outlines.append(AnnotatedObject(tid, stage, mask=mask, mask_offset=(int(ys.min()), int(xs.min()))))
    section = Section(name="sec", objects=[], path=path, pixel_size_um=0.5)
    info = run(fitting.refit_for_cell_model(folder, [section], [outlines], "stagetool-tubules-demo", "cpu", 1))
    assert asked == [(str(folder), "cells")]
    assert info is not None and info["tubules"] == len(truth.tubule_stages)
    assert "1 corrected section(s) (5 staged tubules)" in info["data"] and "stagetool-tubules-demo" in info["data"]
    extra = json.loads((folder / "card.json").read_text())["extra"]
    assert extra["stager_refit"] == info

    prior = loading.stager_of(SimpleNamespace(card=resolve_model("stagetool-tubules-demo")))
    cells = run(predict.find_cells(path, oracle, predict.AnalyzeParams(device="cpu", threads=1)))
    assert len(cells) == len(truth.cell_types)  # the oracle finds every drawn cell
    rows, stages = fitting.outline_examples(outlines, cells.boxes, [C.CELL_TYPES[int(i)] for i in cells.labels])
    assert len(stages) == len(truth.tubule_stages)
    assert info["stager_in_use_accuracy"] == pytest.approx(C.accuracy(prior, np.array(rows), stages), abs=1e-4)
    # stored (and used by analysis before the tubule model's) exactly when the left-out check favoured it
    assert ("composition" in extra) == info["refitted"] == (info["refit_left_out_accuracy"] > info["stager_in_use_accuracy"])
    # a section without staged outlines gives nothing to fit
    assert run(fitting.refit_for_cell_model(folder, [section], [[]], None, "cpu", 1)) is None
