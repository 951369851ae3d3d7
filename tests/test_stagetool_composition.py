"""Staging tubules from the cell types found in them (our addition to the paper's mask vote)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from app.core.errors import UserError
from app.pipelines.stagetool.phantom import render_testis_truth
from app.pipelines.stagetool.phantom_layout import testis_layout as make_layout  # not a test
from app.pipelines.stagetool.truth import TRUTH_SUFFIX
from app.pipelines.stagetool import composition as C

SIZE = 1024


def _docs(seeds):
    return [render_testis_truth(make_layout(seed, SIZE), ()) for seed in seeds]


@pytest.fixture(scope="module")
def stager():
    x, stages = C.truth_examples(_docs(range(10)))
    return C.fit(x, stages)


@pytest.mark.slow
def test_stages_of_held_out_phantom_tubules_follow_from_their_cells(stager):
    """Fitted on 10 phantom sections, it stages the tubules of 10 others (never seen) from their truth cells."""
    x, stages = C.truth_examples(_docs(range(100, 110)))
    predicted = [C.STAGES[i] for i in stager.probabilities(x).argmax(1)]
    accuracy = np.mean([p == s for p, s in zip(predicted, stages)])
    assert len(set(stages)) == 5 and len(stages) >= 20
    assert accuracy >= 0.9, accuracy
    # a stager fitted on shuffled stages has learnt nothing: chance level on the same tubules
    xt, st = C.truth_examples(_docs(range(10)))
    shuffled = C.fit(xt, list(np.random.default_rng(0).permutation(st)))
    chance = np.mean([C.STAGES[i] == s for i, s in zip(shuffled.probabilities(x).argmax(1), stages)])
    assert chance < 0.6


def test_features_see_shares_and_elongation():
    boxes = np.array([[0, 0, 10, 10], [0, 0, 30, 10], [0, 0, 10, 10], [0, 0, 5, 5]], float)
    types = ["Sertoli", "early elongating spermatid", "Sertoli", "m2m"]
    f = dict(zip(C.FEATURES, C.features(types, boxes)))
    assert f["share Sertoli"] == 0.5 and f["share m2m"] == 0.25 and f["share Spg"] == 0
    assert f["elongation early elongating spermatid"] == pytest.approx(2.0)  # 30 x 10 box: 3:1, minus 1
    assert f["elongation late elongating spermatid"] == 0.0


def _tubules_and_cells(n_cells: int):
    tubules = [{"id": 1, "class": "XII", "score": 0.9}, {"id": 2, "class": "XII", "score": 0.9}]
    doc = render_testis_truth(make_layout(3, SIZE), ())
    stage = next(t for t in doc["tubules"] if t["usable"] and t["stage"] != "XII")
    own = [c for c in doc["cells"] if c["tubule"] == stage["id"]][:n_cells]
    cells = [{"class": c["type"], "box": c["box"], "tubule_id": 1} for c in own]
    return tubules, cells, stage["stage"]


def test_stage_tubules_modes(stager):
    tubules, cells, truth = _tubules_and_cells(200)
    C.stage_tubules(tubules, cells, stager, "auto")
    assert tubules[0]["class"] == truth and tubules[0]["stage_source"] == "cells"
    assert set(tubules[0]["stage_from_cells"]) == set(C.STAGES)
    assert tubules[1]["class"] == "XII" and tubules[1]["stage_source"] == "masks"  # no cells: the mask vote stays
    tubules, cells, _ = _tubules_and_cells(200)
    C.stage_tubules(tubules, cells, stager, "masks")
    assert tubules[0]["class"] == "XII" and tubules[0]["stage_source"] == "masks"
    with pytest.raises(UserError, match="composition stager"):
        C.stage_tubules(tubules, cells, None, "cells")
    tubules, cells, _ = _tubules_and_cells(C.MIN_CELLS - 1)
    C.stage_tubules(tubules, cells, stager, "auto")  # too few cells to count: masks decide
    assert tubules[0]["stage_source"] == "masks"


def test_cli_fits_the_stager_into_a_tubule_model_card(capsys, tmp_path):
    from test_stagetool_cli import cli, tiny_model

    from app.pipelines.stagetool.predict import load_model, stager_of

    truth = tmp_path / "truth"
    truth.mkdir()
    for seed in range(4):
        (truth / f"s{seed}{TRUTH_SUFFIX}").write_text(json.dumps(render_testis_truth(make_layout(seed, SIZE), ())))
    tubules, cells = tiny_model(tmp_path / "tub", "tubules"), tiny_model(tmp_path / "cel", "cells")
    code, out, err = cli(capsys, "stagetool", "fit-stager", truth, "--model", tubules)
    assert code == 0, err
    assert "training figure" in out
    model = load_model(tubules, "tubules", device="cpu")
    stager = stager_of(model)
    assert stager is not None and stager.n_train > 10
    assert "4 truth file(s)" in model.reference()["stager_data"]  # results and the Methods sheet say what it was fitted on
    code, _, err = cli(capsys, "stagetool", "fit-stager", truth, "--model", cells)  # a cell model has no stages
    assert code == 2 and "not a Stagetool tubule model" in err
    code, _, err = cli(capsys, "stagetool", "fit-stager", tmp_path / "empty", "--model", tubules)
    assert code == 2


def _found_cells(doc, rng):
    """What a flawed cell model finds in a phantom: most late elongating spermatids missed, half the
    preleptotene-zygotene spermatocytes called spermatogonia (the demo cell model's real weak spots)."""
    found = []
    for c in doc["cells"]:
        kind = c["type"]
        if kind == "late elongating spermatid" and rng.random() < 0.7:
            continue
        if kind == "Spc prePach" and rng.random() < 0.5:
            kind = "Spg"
        x0, y0, x1, y1 = c["box"]
        found.append({"class": kind, "box": c["box"], "centroid": [(y0 + y1) / 2, (x0 + x1) / 2]})
    return found


def _prediction_rows(seeds, rng):
    from app.pipelines.stagetool.phantom import tubule_labels

    rows, stages = [], []
    for seed in seeds:
        layout = make_layout(seed, SIZE)
        doc = render_testis_truth(layout, ())
        truth_stages = {t["id"]: t["stage"] for t in doc["tubules"]}
        unusable = {t["id"] for t in doc["tubules"] if not t["usable"]}
        r, s = C.prediction_examples(_found_cells(doc, rng), tubule_labels(layout), truth_stages, unusable)
        rows += r
        stages += s
    return np.array(rows), stages


@pytest.mark.slow
def test_a_stager_fitted_on_found_cells_learns_the_cell_models_mistakes(stager):
    """Fitted on the cells a flawed model finds in annotated tubules, the stager stages new tubules (from
    the same flawed model) at least as well as one fitted on the annotated cells, and here better."""
    rng = np.random.default_rng(0)
    x_fit, s_fit = _prediction_rows(range(10), rng)
    x_new, s_new = _prediction_rows(range(100, 110), rng)
    assert len(s_fit) >= 20 and len(s_new) >= 20

    def accuracy(model):
        return np.mean([C.STAGES[i] == s for i, s in zip(model.probabilities(x_new).argmax(1), s_new)])

    on_found = accuracy(C.fit(x_fit, s_fit))
    on_truth = accuracy(stager)  # fitted on annotated cells of seeds 0-9
    assert on_found >= 0.9, on_found
    assert on_found > on_truth, (on_found, on_truth)


def test_prediction_examples_group_found_cells_by_the_annotated_tubule_under_them():
    labels = np.zeros((100, 100), np.int32)
    labels[:50] = 1
    labels[50:] = 2
    cells = ([{"class": "Sertoli", "box": [0, 0, 4, 4], "centroid": [10.0, 10.0]}] * C.MIN_CELLS
             + [{"class": "m2m", "box": [0, 0, 4, 4], "centroid": [70.0, 10.0]}] * C.MIN_CELLS
             + [{"class": "m2m", "box": [0, 0, 4, 4], "centroid": [250.0, 10.0]}])  # off the image: clamped to 2
    rows, stages = C.prediction_examples(cells, labels, {1: "I-V", 2: "XII"})
    assert stages == ["I-V", "XII"]
    assert dict(zip(C.FEATURES, rows[0]))["share Sertoli"] == 1.0
    assert dict(zip(C.FEATURES, rows[1]))["share m2m"] == 1.0
    assert C.prediction_examples(cells, labels, {1: "I-V", 2: "XII"}, unusable={2})[1] == ["I-V"]
    assert C.prediction_examples(cells[:C.MIN_CELLS - 1], labels, {1: "I-V"})[1] == []  # too few to count
