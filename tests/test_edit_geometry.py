"""Shape corrections without a screen: drawn outlines, dragged vertices and box corners, and the edits they make."""

from __future__ import annotations

import pytest

from app.core.edit_geometry import (
    PolygonDraft, clean_polygon, corner_at, move_vertex, nearest_vertex, polygon_area, resize_box,
)
from app.core.edits import apply_edits, make_edit, next_object_id, read_edits, write_edits
from app.core.errors import UserError


def test_a_drawn_outline_drops_repeated_clicks_and_needs_an_area():
    # a double-click lands as clicks on the same spot; clicking the first point again closes
    points = [(0, 0), (10, 0), (10, 0.2), (10, 10), (0, 10), (0, 10), (0.1, 0)]
    assert clean_polygon(points) == [[0, 0], [10, 0], [10, 10], [0, 10]]
    assert clean_polygon([(0, 0), (5, 5)]) is None
    assert clean_polygon([(0, 0), (5, 5), (10, 10)]) is None  # on a line: no area
    draft = PolygonDraft()
    for x, y in [(0, 0), (20, 0), (20, 20)]:
        draft.add(x, y)
    assert draft.preview((0, 20)) == [[0, 0], [20, 0], [20, 20], [0, 20], [0, 0]]
    draft.remove_last()
    assert draft.close() is None and draft.points == []


def test_vertex_and_corner_hits_respect_the_tolerance():
    square = [[0, 0], [10, 0], [10, 10], [0, 10]]
    assert nearest_vertex(square, 9, 1, 2) == 1
    assert nearest_vertex(square, 5, 5, 2) is None
    assert move_vertex(square, 2, 20, 20)[2] == [20, 20] and square[2] == [10, 10]
    assert polygon_area(move_vertex(square, 2, 20, 20)) == pytest.approx(200)
    box = [0, 0, 10, 8]
    assert corner_at(box, 10.5, 8.5, 1) == 2 and corner_at(box, 5, 4, 1) is None


def test_a_box_keeps_its_opposite_corner_and_a_minimum_size():
    box = [10, 10, 20, 20]
    assert resize_box(box, 2, 30, 25) == [10, 10, 30, 25]  # bottom-right dragged out
    assert resize_box(box, 0, 5, 12) == [5, 12, 20, 20]  # top-left dragged
    assert resize_box(box, 2, 0, 0) == [0, 0, 10, 10]  # past the opposite corner: flipped, not negative
    tiny = resize_box(box, 2, 10.5, 10.5)
    assert tiny[2] - tiny[0] >= 2 and tiny[3] - tiny[1] >= 2


def _doc():
    tubule = {"id": 1, "class": "IX", "polygon": [[0, 0], [50, 0], [50, 50], [0, 50]], "box": [0, 0, 50, 50]}
    cells = [{"id": 1, "class": "Sertoli", "box": [10, 10, 14, 14], "centroid": [12, 12], "tubule_id": 1},
             {"id": 2, "class": "Sertoli", "box": [40, 40, 44, 44], "centroid": [42, 42], "tubule_id": 1},
             {"id": 3, "class": "Sertoli", "box": [100, 100, 104, 104], "centroid": [102, 102], "tubule_id": None}]
    return {"image": "sec", "layers": {"tubules": [tubule], "cells": cells}}


def test_shape_edits_change_outlines_boxes_and_which_tubule_holds_a_cell(tmp_path):
    doc = _doc()
    outline = [[90, 90], [120, 90], [120, 120], [90, 120]]
    edits = [make_edit("add_tubule", "sec", next_object_id(doc["layers"]["tubules"]), "XII", polygon=outline),
             make_edit("reshape_tubule", "sec", 1, polygon=[[0, 0], [30, 0], [30, 30], [0, 30]]),
             make_edit("resize_cell", "sec", 1, box=[8, 8, 16, 18])]
    write_edits(tmp_path, edits)
    curated = apply_edits(doc, read_edits(tmp_path))
    tubules = {t["id"]: t for t in curated["layers"]["tubules"]}
    cells = {c["id"]: c for c in curated["layers"]["cells"]}
    assert tubules[2]["class"] == "XII" and tubules[2]["added"] and tubules[2]["box"] == [90, 90, 120, 120]
    assert tubules[2]["area_px"] == pytest.approx(900)
    assert tubules[1]["box"] == [0, 0, 30, 30] and tubules[1]["reshaped"]
    assert cells[3]["tubule_id"] == 2  # the drawn tubule holds the cell no tubule had
    assert cells[2]["tubule_id"] is None  # the smaller outline left this cell out
    assert cells[1]["tubule_id"] == 1 and cells[1]["box"] == [8, 8, 16, 18] and cells[1]["centroid"] == [13, 12]
    assert doc["layers"]["cells"][1]["tubule_id"] == 1  # the predictions are not rewritten
    assert curated["meta"]["edits_applied"] == 3


@pytest.mark.parametrize("edit", [
    {"action": "add_tubule", "id": 2, "value": "XII", "polygon": [[0, 0], [1, 1]]},
    {"action": "add_tubule", "id": 2, "polygon": [[0, 0], [1, 1], [0, 1]]},
    {"action": "reshape_tubule", "id": 1, "polygon": "square"},
    {"action": "resize_cell", "id": 1, "box": [1, 2, 3]},
])
def test_malformed_shape_edits_are_refused(edit):
    from app.core.edits import check_edit

    with pytest.raises(UserError):
        check_edit(edit)


def test_stagetool_refuses_a_drawn_tubule_of_an_unknown_stage():
    from app.pipelines.stagetool.curation import apply

    edit = make_edit("add_tubule", "sec", 2, "XIII", polygon=[[0, 0], [9, 0], [9, 9]])
    with pytest.raises(UserError, match="unknown stage"):
        apply(_doc(), [edit])
