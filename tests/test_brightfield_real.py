"""The brightfield pipeline on the real sephaCe fields (../shared/data/brightfield-sephace) and the shipped model.

Skipped when the data folder is absent.  Labels come from each field's DAPI image; the shipped
model was trained on set1 only, so set2 is held out.
"""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from app.cli import main
from app.core.jobs import run
from app.core.paths import bundled_models_dir
from app.pipelines.brightfield.experiments import scores
from app.pipelines.brightfield.predict import BrightfieldModel, instances, probability_job
from app.pipelines.brightfield.train import load_training_field

MODEL = bundled_models_dir() / "brightfield-sephace"


@pytest.fixture(scope="module")
def sephace(shared_data):
    folder = shared_data / "brightfield-sephace"
    if not folder.is_dir():
        pytest.skip(f"{folder} not present")
    return folder


@pytest.fixture(scope="module")
def set2(sephace):
    return load_training_field(sephace / "set2")


def test_labels_from_dapi_and_registration(set2):
    field, derived = set2
    assert field.stack.n_planes == 6 and field.stack.shape == (1024, 1344)
    offsets = field.stack.z_offsets()
    assert offsets[0] < -20 and offsets[-1] > 20  # init planes are +-25 um, sorted by z
    assert derived.count == 9  # whole nuclei of set2 (edge fragments under 1000 px dropped)
    reg = derived.registration
    assert reg.reliable and reg.magnitude < 8 and all(np.hypot(*s) <= 3 for s in reg.plane_shifts)


def test_shipped_model_card():
    card = json.loads((MODEL / "card.json").read_text())
    assert card["pipeline"] == "brightfield" and card["input_channels"] == 6
    assert card["extra"]["planes"]["n_stack"] == 6 and len(card["channel_meaning"]) == 6
    held_out = card["metrics"]["held_out"]
    assert "set2" in held_out["data"] and held_out["object_f1"] >= 0.8


def test_shipped_model_on_the_held_out_field(set2):
    model = BrightfieldModel.load()
    test, _ = set2
    prob = run(probability_job(model, model.planes(test.stack)))
    measured = scores(test.labels, instances(prob, model.segment), prob[0])
    assert measured["object_f1"] >= 0.8
    assert measured["auroc"] >= 0.95


def test_cli_segments_set2(sephace, tmp_path):
    out = tmp_path / "out"
    assert main(["brightfield", "segment", str(sephace / "set2"), "--out", str(out)]) == 0
    with open(out / "set2" / "nuclei.csv") as handle:  # the runner's layout (was out/set2_nuclei.csv)
        rows = list(csv.DictReader(handle))
    assert 7 <= len(rows) <= 12
    bright = [float(r["mean_fluorescence"]) > 40 for r in rows]  # DAPI: nuclei ~70-100, background ~22
    assert sum(bright) >= 0.8 * len(rows)
