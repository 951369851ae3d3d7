"""Simulated corrections (the adaptation bench's careful user): the edits turn predictions into the truth, go
through the viewer's edits file format, and cost the clicks counted."""

from __future__ import annotations

import numpy as np

from app.core.edits import read_edits, write_edits
from app.pipelines.stagetool.classes import CELL_TYPES, STAGES
from app.pipelines.stagetool.corrections import CLICKS, simulate
from app.pipelines.stagetool.curation import apply
from app.pipelines.stagetool.evaluate import SectionTruth, evaluate_section


def square(x0, y0, x1, y1):
    return [[x0, y0], [x1, y0], [x1, y1], [x0, y1]]


def truth() -> SectionTruth:
    labels = np.zeros((200, 300), np.uint16)
    labels[10:90, 10:90] = 1
    labels[10:90, 110:190] = 2
    labels[110:190, 10:90] = 3  # usable, but no prediction finds it
    labels[110:190, 210:290] = 4  # damaged: not staged by experts
    boxes = np.array([[20, 20, 30, 30], [40, 40, 52, 50], [120, 20, 130, 30]], float)
    return SectionTruth("s", labels, {1: STAGES[0], 2: STAGES[2], 3: STAGES[1], 4: STAGES[3]}, boxes,
                        [CELL_TYPES[0], CELL_TYPES[4], CELL_TYPES[2]], unusable={4})


def predictions() -> dict:
    tubules = [{"id": 1, "class": STAGES[0], "polygon": square(10, 10, 90, 90), "area_px": 6400},
               {"id": 2, "class": STAGES[4], "polygon": square(110, 10, 190, 90), "area_px": 6400},
               {"id": 3, "class": STAGES[1], "polygon": square(210, 110, 290, 190), "area_px": 6400},
               {"id": 4, "class": STAGES[1], "polygon": square(200, 0, 240, 40), "area_px": 1600}]
    cells = [{"id": 1, "class": CELL_TYPES[0], "score": 0.9, "box": [20, 20, 30, 30], "centroid": [25, 25]},
             {"id": 2, "class": CELL_TYPES[5], "score": 0.8, "box": [41, 40, 52, 50], "centroid": [45, 46]},
             {"id": 3, "class": CELL_TYPES[1], "score": 0.6, "box": [150, 150, 160, 160], "centroid": [155, 155]}]
    for t in tubules:
        t["box"] = [min(p[0] for p in t["polygon"]), min(p[1] for p in t["polygon"]),
                    max(p[0] for p in t["polygon"]), max(p[1] for p in t["polygon"])]
    return {"schema_version": 1, "image": "s", "pipeline": "stagetool", "layers": {"tubules": tubules, "cells": cells},
            "meta": {"shape": [200, 300]}}


def test_a_careful_users_edits_and_their_clicks(tmp_path):
    section, doc = truth(), predictions()
    corrections = simulate(doc, section)
    assert corrections.counts == {"restage_tubule": 1, "exclude_tubule": 2, "retype_cell": 1, "delete_cell": 1,
                                  "add_cell": 1, "outline": 1}
    assert corrections.missed_tubules == [3]
    assert corrections.clicks == sum(CLICKS[a] * n for a, n in corrections.counts.items())
    write_edits(tmp_path, corrections.edits)  # the viewer's file format round-trips
    fixed = apply(doc, read_edits(tmp_path))
    evaluation = evaluate_section(fixed, section)
    assert evaluation["cells"]["mean_precision"] == 1.0 and evaluation["cells"]["mean_sensitivity"] == 1.0
    stages = evaluation["stages"]
    assert stages["agree"] == 2 and stages["missed"] == 1  # tubule 3 needs an outline drawn
    assert simulate(fixed, section).edits == []  # nothing left to correct but the outline


def test_evaluate_with_force_rewrites_the_reports(tmp_path):
    """evaluate_results(force=True) once passed ``force`` where the report context goes, and crashed."""
    from app.core.results import write_objects
    from app.pipelines.stagetool.batch import write_section_outputs
    from app.pipelines.stagetool.evaluate import evaluate_results
    from app.pipelines.stagetool.phantom import write_testis

    write_testis(tmp_path / "truth", seed=1, count=1, size=640, markers=())
    folder = tmp_path / "run" / "testis_000"
    write_objects(folder / "predictions.json", "testis_000", "stagetool", {"tubules": [], "cells": []},
                  {"shape": [640, 640]})
    write_section_outputs(folder)
    result = evaluate_results(tmp_path / "run", tmp_path / "truth", force=True)
    assert result["testis_000"]["stages"]["agree"] == 0 and (folder / "evaluation.json").exists()
