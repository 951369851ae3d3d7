"""Which section to correct next: ambiguous predictions score higher, corrections lower the score, the score is
written into summary.json, and `stagescope stagetool rank` lists sections most uncertain first."""

from __future__ import annotations

import json

import pytest

from app.cli import main
from app.core.edits import make_edit
from app.core.results import write_objects
from app.pipelines.stagetool.batch import write_section_outputs
from app.pipelines.stagetool.classes import CELL_TYPES, STAGES
from app.pipelines.stagetool.uncertainty import rank_sections, section_uncertainty, stage_margin


def doc(name: str, weights: list[list[float]], scores: list[float]) -> dict:
    """A predictions document: tubules with mask votes ``weights``, cells of ``scores`` in the first tubule."""
    tubules = [{"id": i + 1, "class": STAGES[max(range(len(w)), key=w.__getitem__)], "score": max(w),
                "box": [400 * i, 0, 400 * i + 300, 300], "polygon": [[400 * i, 0], [400 * i + 300, 0], [400 * i + 300, 300]],
                "centroid": [150, 400 * i + 150], "area_px": 90000, "excluded": False,
                "stage_weights": dict(zip(STAGES, w))} for i, w in enumerate(weights)]
    cells = [{"id": j + 1, "class": CELL_TYPES[j % len(CELL_TYPES)], "score": s, "box": [10 + j, 10, 20 + j, 20],
              "centroid": [15, 15 + j], "tubule_id": 1, "votes": 1} for j, s in enumerate(scores)]
    return {"schema_version": 1, "image": name, "pipeline": "stagetool",
            "layers": {"tubules": tubules, "cells": cells}, "meta": {"shape": [300, 1200]}}


SURE = doc("sure", [[0.9, 0.05, 0.05, 0, 0], [0, 0, 0.95, 0.05, 0]], [0.97, 0.95, 0.99, 0.9])
TORN = doc("torn", [[0.4, 0.35, 0.25, 0, 0], [0, 0, 0.3, 0.3, 0.4]], [0.45, 0.55, 0.5, 0.6])


def test_ambiguous_predictions_score_higher():
    sure, torn = section_uncertainty(SURE), section_uncertainty(TORN)
    assert torn["score"] > sure["score"] + 0.3
    assert torn["ambiguous_tubules"] == 2 and sure["ambiguous_tubules"] == 0
    assert torn["unsure_cells"] == 3 and sure["unsure_cells"] == 0
    assert stage_margin(TORN["layers"]["tubules"][0]) == pytest.approx(0.05)


def test_the_stager_probabilities_decide_when_the_cells_staged_the_tubule():
    tubule = {**SURE["layers"]["tubules"][0], "stage_source": "cells",
              "stage_from_cells": dict(zip(STAGES, [0.3, 0.3, 0.2, 0.1, 0.1]))}
    assert stage_margin(tubule) == pytest.approx(0.0)


def test_corrections_make_a_section_surer():
    from app.pipelines.stagetool.curation import apply

    edits = [make_edit("restage_tubule", "torn", 1, STAGES[1]), make_edit("exclude_tubule", "torn", 2, True)]
    edits += [make_edit("retype_cell", "torn", j, CELL_TYPES[0]) for j in (1, 2, 3, 4)]
    assert section_uncertainty(apply(TORN, edits))["score"] == pytest.approx(0.0)


def test_summary_holds_the_score_and_rank_lists_the_most_uncertain_first(tmp_path, capsys):
    for item in (SURE, TORN):
        folder = tmp_path / "run" / item["image"]
        folder.mkdir(parents=True)
        write_objects(folder / "predictions.json", item["image"], "stagetool", item["layers"], item["meta"])
        write_section_outputs(folder)
    summary = json.loads((tmp_path / "run" / "torn" / "summary.json").read_text())
    assert summary["uncertainty"] == section_uncertainty(TORN)
    assert [row["section"] for row in rank_sections(tmp_path / "run")] == ["torn", "sure"]
    assert [row["section"] for row in rank_sections(tmp_path)] == ["torn", "sure"]  # a project or runs folder
    assert main(["stagetool", "rank", str(tmp_path / "run"), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["section"] == "torn" and rows[0]["score"] > rows[1]["score"]
    assert main(["stagetool", "rank", str(tmp_path / "run")]) == 0
    assert "correct torn first" in capsys.readouterr().out
    assert main(["stagetool", "rank", str(tmp_path / "missing")]) == 2
    other = tmp_path / "run2" / "sure"  # the same section in another run: the run tells them apart
    other.mkdir(parents=True)
    write_objects(other / "predictions.json", "sure", "stagetool", SURE["layers"], SURE["meta"])
    write_section_outputs(other)
    assert main(["stagetool", "rank", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "sure (run)" in out and "sure (run2)" in out


def test_the_suggested_order_covers_the_stages_then_follows_the_doubt():
    from app.pipelines.stagetool.uncertainty import suggest_order

    records = {"A": {"score": 0.9, "stages": {"I-V": 3}}, "B": {"score": 0.5, "stages": {"I-V": 1, "IX": 1, "X-XI": 2}},
               "C": {"score": 0.6, "stages": {"I-V": 2, "XII": 1}}, "E": {"score": 0.2, "stages": {"I-V": 1, "IX": 1}},
               "D": {"score": 0.1, "stages": {"XII": 4}, "corrected_objects": 3}}
    # D is corrected: its XII counts as covered and it comes last; B shows three new stages; then the
    # rest add nothing new and follow their doubt
    assert suggest_order(records) == [("B", ["I-V", "IX", "X-XI"]), ("A", []), ("C", []), ("E", []), ("D", [])]
    records["E"]["stages"]["VI-VIII"] = 1  # now E adds a stage no other shows: it comes right after B
    assert [name for name, _ in suggest_order(records)] == ["B", "E", "A", "C", "D"]
    same = {"x": {"score": 0.3, "stages": {"IX": 1}}, "y": {"score": 0.7, "stages": {"IX": 2}}}
    assert suggest_order(same) == [("y", ["IX"]), ("x", [])]  # equal stages: the more doubtful first
    assert suggest_order({"old": {"score": 0.4}, "new": {"score": 0.5}}) == [("new", []), ("old", [])]


def test_the_uncertainty_record_counts_the_stages_shown_and_the_corrections():
    from app.pipelines.stagetool.curation import apply

    record = section_uncertainty(TORN)
    assert record["stages"] == {"I-V": 1, "XII": 1} and record["corrected_objects"] == 0
    corrected = section_uncertainty(apply(TORN, [make_edit("exclude_tubule", "torn", 2, True),
                                                 make_edit("retype_cell", "torn", 1, CELL_TYPES[0])]))
    assert corrected["stages"] == {"I-V": 1} and corrected["corrected_objects"] == 2
