"""Refitting the composition stager on a new cell model's own cells (the loop's "Train on my corrections").

Tubule stages come from the cells the cell model finds.  A fine-tuned cell model makes other
mistakes than the one the stager was fitted on (on the widefield phantoms its boxes of elongating
spermatids are rounder, so X-XI tubules read as IX), so after training a cell model the app refits
the stager on the cells it finds in the corrected sections, starting from the stager in use, and keeps
the refit only where it stages those tubules better when each is left out.
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


def _spg_cells(doc):
    """What a fine-tuned model that calls every preleptotene-zygotene spermatocyte a spermatogonium finds."""
    return [{"class": "Spg" if c["type"] == "Spc prePach" else c["type"], "box": c["box"], "centroid": c["centroid"]}
            for c in doc["cells"]]


@pytest.mark.slow
def test_a_refit_is_kept_only_where_it_stages_left_out_tubules_better():
    """From the stager in use (fitted on annotated cells), refitted on the cells a new model finds in four
    corrected sections: kept for a model whose mistake misleads the stager, and then better on new
    sections of that model; declined for a model with rounder boxes, where the refit would be worse."""
    prior = C.fit(*_rows(range(6), _truth_cells))
    for cells_of, keep in ((_spg_cells, True), (_rounder_cells, False)):
        x_fit, s_fit = _rows(range(10, 14), cells_of)
        x_new, s_new = _rows(range(100, 106), cells_of)
        assert len(s_fit) >= 10 and len(set(s_new)) == 5
        refit, info = C.refit_if_better(x_fit, s_fit, prior)
        assert info["refitted"] is keep and (refit is not None) is keep, info
        forced = C.fit(x_fit, s_fit, prior=prior)
        assert np.array_equal(forced.mean, prior.mean)  # the prior's standardisation is kept
        assert forced.n_train == prior.n_train + len(s_fit)
        before, after = C.accuracy(prior, x_new, s_new), C.accuracy(forced, x_new, s_new)
        if keep:
            assert info["stager_in_use_accuracy"] < 0.5 and after >= before + 0.3, (before, after)
        else:
            assert after < before, (before, after)  # what the check spared the user


def test_a_refit_needs_no_second_stage_with_a_prior():
    x = np.random.default_rng(0).random((3, len(C.FEATURES)))
    with pytest.raises(Exception):
        C.fit(x, ["IX"] * 3)
    prior = C.fit(np.eye(len(C.FEATURES))[:5], list(C.STAGES))
    assert C.fit(x, ["IX"] * 3, prior=prior).n_train == 8


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
    from app.pipelines.stagetool.loading import stager_card  # what predictions.json names as meta.stager_model

    assert stager_card(tubules, cells) is cells.card and stager_card(tubules, plain) is tubules.card
    assert stager_card(plain) is None


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


def _corrected_run(tmp_path):
    """A run of two sections: "a" with a tubule outline (restaged IX -> XII in the edits), "b" without."""
    from app.core.edits import make_edit, write_edits
    from app.core.images import write_tiff
    from app.core.results import write_objects

    for name in ("a", "b"):
        write_tiff(tmp_path / f"{name}.tif", np.full((100, 100), 100, np.uint16), axes="YX")
        meta = {"image_path": str(tmp_path / f"{name}.tif"), "shape": [100, 100], "dapi_channel": 0}
        square = [[10, 10], [60, 10], [60, 60], [10, 60], [10, 10]]
        tubules = [{"id": 1, "class": "IX", "score": 0.9, "polygon": square}] if name == "a" else []
        cells = [{"id": 1, "class": "Sertoli", "score": 0.9, "box": [20, 20, 28, 28], "centroid": [24, 24],
                  "tubule_id": 1 if name == "a" else None}]
        for file in ("predictions.json", "objects.json"):
            write_objects(tmp_path / "run" / name / file, name, "stagetool", {"tubules": tubules, "cells": cells}, meta)
    write_edits(tmp_path / "run", [make_edit("restage_tubule", "a", 1, "XII")])
    return tmp_path / "run"


@pytest.fixture
def refit_calls(monkeypatch):
    from app.pipelines.stagetool import fitting

    seen = {}

    def fake(model_dir, sections, outlines, tubule_model=None, device="auto", threads=None):
        seen.update(model=model_dir, names=[s.name for s in sections], outlines=outlines, tubule_model=tubule_model)
        return {"data": "refit"}
        yield  # a job

    monkeypatch.setattr(fitting, "refit_for_cell_model", fake)
    return seen


def test_the_cli_refits_on_corrected_results_only_and_pairs_outlines_with_their_section(tmp_path, refit_calls):
    from app.core.jobs import run
    from app.pipelines.stagetool import fitting

    results = _corrected_run(tmp_path)
    assert run(fitting.refit_from_paths(tmp_path / "m", [tmp_path / "a.tif", results])) == {"data": "refit"}
    assert refit_calls["names"] == ["a", "b"] and refit_calls["tubule_model"] is None  # no models in this run
    assert [[o.category for o in found] for found in refit_calls["outlines"]] == [["XII"], []]  # corrected stage
    refit_calls.clear()
    assert run(fitting.refit_from_paths(tmp_path / "m", [tmp_path / "a.tif"])) is None and not refit_calls


def test_the_gui_trainer_refits_a_cell_model_on_its_corrected_sources(tmp_path, refit_calls, monkeypatch):
    """"Train on my corrections" for cells: after training, the refit gets the corrected outlines of the
    corrected sources (other sources: none)."""
    from app.core.jobs import run
    from app.pipelines import stagetool
    from app.pipelines.registry import TrainingSource

    results = _corrected_run(tmp_path)
    monkeypatch.setattr("app.pipelines.stagetool.train.train", lambda *args, **kwargs: iter(()))  # no training here
    trainer = stagetool.SPEC.trainers["stagetool-cells"]
    sources = [TrainingSource("corrected", image=name, path=results / name / "objects.json", run_folder=results,
                              image_path=tmp_path / f"{name}.tif") for name in ("a", "b")]
    run(trainer.train(sources, trainer.params(device="cpu", threads=1), tmp_path / "m"))
    assert refit_calls["names"] == ["a", "b"] and refit_calls["model"] == tmp_path / "m"
    assert [[o.category for o in found] for found in refit_calls["outlines"]] == [["XII"], []]
    refit_calls.clear()  # an annotation file with staged outlines is not the loop's data: nothing to refit on
    from app.core.annotations import ImageAnnotations, write_coco

    square = np.array([[10, 10], [60, 10], [60, 60], [10, 60]], float)
    write_coco(tmp_path / "a.json", [ImageAnnotations("a.tif", 100, 100, [
        AnnotatedObject(1, "XII", polygons=[square]), AnnotatedObject(2, "Sertoli", box=(20, 20, 28, 28))])])
    run(trainer.train([TrainingSource("file", path=tmp_path / "a.json")], trainer.params(device="cpu", threads=1),
                      tmp_path / "n"))
    assert refit_calls["outlines"] == [[]]
