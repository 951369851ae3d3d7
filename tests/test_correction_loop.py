"""The loop's Qt-free parts: agreement with corrections, the training time estimate, the retraining plan."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import pytest

from app.core.edits import make_edit, write_edits
from app.core.errors import UserError
from app.gui.correction_loop import plan_retraining, preset_values, rerun_models
from app.gui.training_estimate import estimate, format_duration, planned_pixels, seconds_per_pixel
from app.pipelines.stagetool.agreement import compare_runs, layer_agreement, pair_objects


def _t(box, cls, **extra):
    return {"box": box, "class": cls, **extra}


def test_objects_pair_by_overlap_and_agree_by_class():
    reference = [_t([0, 0, 10, 10], "IX"), _t([20, 0, 30, 10], "XII"), _t([40, 0, 50, 10], "I-V")]
    predicted = [_t([1, 0, 11, 10], "IX"), _t([20, 0, 30, 10], "IX"), _t([100, 0, 110, 10], "I-V")]
    assert sorted(pair_objects(reference, predicted)) == [(0, 0), (1, 1)]
    result = layer_agreement(reference, predicted)
    assert result["agree"] == 1 and result["agreement"] == pytest.approx(1 / 3)
    assert result["precision"] == pytest.approx(1 / 3)
    excluded = reference + [_t([60, 0, 70, 10], "IX", excluded=True)]
    assert layer_agreement(excluded, predicted)["reference"] == 3  # an excluded tubule is no reference


def test_compare_runs_pools_sections_for_old_and_new():
    corrected = {"a": {"layers": {"tubules": [_t([0, 0, 10, 10], "I-V")], "cells": []}},
                 "b": {"layers": {"tubules": [_t([0, 0, 10, 10], "I-V"), _t([20, 0, 30, 10], "IX")]}}}
    old = {"a": {"layers": {"tubules": [_t([0, 0, 10, 10], "IX")]}},
           "b": {"layers": {"tubules": [_t([0, 0, 10, 10], "IX"), _t([20, 0, 30, 10], "IX")]}}}
    new = {"a": {"layers": {"tubules": [_t([0, 0, 10, 10], "I-V")]}},
           "b": {"layers": {"tubules": [_t([0, 0, 10, 10], "I-V")]}}}
    rows = {r["what"]: r for r in compare_runs(corrected, old, new)}
    stage = rows["tubule stage agreement"]
    assert stage["old"] == pytest.approx(1 / 3) and stage["new"] == pytest.approx(2 / 3)
    assert stage["objects"] == 3 and stage["sections"] == 2


def _card(name, backbone, seconds, steps, batch, crop):
    return SimpleNamespace(name=name, training={"seconds": seconds, "steps": steps,
                                                "recipe": {"backbone": backbone, "batch_size": batch, "crop_size": crop}})


def test_the_estimate_scales_an_earlier_training_of_the_same_network():
    @dataclasses.dataclass
    class P:
        backbone: str = "lite"
        epochs: int = 10
        crops_per_epoch: int = 40
        batch_size: int = 4
        crop_size: int = 256
        time_limit_s: float = 0.0

    lite = _card("demo", "lite", 100.0, 1000, 2, 256)  # 0.1 s per step of 2 crops of 256 px
    assert seconds_per_pixel(lite) == pytest.approx(100 / (1000 * 2 * 256 ** 2))
    assert planned_pixels(P()) == 10 * 10 * 4 * 256 ** 2
    other = _card("big", "resnet50", 1.0, 1, 1, 1)
    result = estimate(P(), [other, lite])  # the card of another backbone is not used
    assert result.seconds == pytest.approx(100 * 0.2)  # 100 steps of twice the pixels: 0.2 s each
    assert "demo" in result.text() and "about" in result.text()
    assert estimate(P(time_limit_s=5.0), [lite]).seconds == 5.0
    assert estimate(P(), [other]).seconds is None and "once training starts" in estimate(P(), []).text()
    assert format_duration(30) == "30 s" and format_duration(600) == "10 min" and format_duration(9000) == "2.5 h"


def _run(tmp_path, models):
    folder = tmp_path / "runs" / "r1"
    folder.mkdir(parents=True)
    for image in ("a", "b"):
        (folder / image).mkdir()
        (folder / image / "objects.json").write_text('{"image": "%s", "layers": {"tubules": [], "cells": []}}' % image)
    return SimpleNamespace(folder=folder, id="r1", pipeline="stagetool", models=models,
                           results={"a": {}, "b": {}}, parameters={})


def _project(names):
    return SimpleNamespace(images=lambda: [SimpleNamespace(name=n) for n in names],
                           image_path=lambda n: f"/images/{n}.tif")


def test_the_plan_trains_the_layer_corrected_most_from_the_model_that_made_it(tmp_path):
    model = tmp_path / "models" / "lab-cells"
    model.mkdir(parents=True)
    run = _run(tmp_path, {"tubules": {"name": "t-demo"}, "cells": {"name": "lab-cells", "folder": str(model)}})
    project = _project(["a", "b", "c"])
    with pytest.raises(UserError, match="no corrections"):
        plan_retraining(project, run)
    write_edits(run.folder, [make_edit("retype_cell", "a", 1, "Sertoli"), make_edit("delete_cell", "a", 2),
                             make_edit("restage_tubule", "a", 1, "IX")])
    plan = plan_retraining(project, run)
    assert plan.model_pipeline == "stagetool-cells" and plan.images == ["a"] and plan.rest == ["b", "c"]
    assert plan.init_from == str(model) and "fine-tunes from" in plan.note()
    assert [(s.kind, s.image) for s in plan.sources] == [("corrected", "a")]
    assert rerun_models(plan, "stagetool-cells", tmp_path / "new") == {"tubules": "t-demo", "cells": str(tmp_path / "new")}

    from app.pipelines.stagetool import CellTrainParams

    # the folder holds no card: only the start and the fine-tuning rate are preset
    assert preset_values(CellTrainParams, plan.init_from) == ({"init_from": str(model), "lr": 2e-4, "pretrained": ""},
                                                              "")
    assert plan.starts == {"stagetool-tubules": "", "stagetool-cells": str(model)}  # t-demo is not on this computer
    assert "random weights" in plan.note("stagetool-tubules")

    @dataclasses.dataclass
    class NoStart:
        epochs: int = 1

    values, why = preset_values(NoStart, plan.init_from)
    assert values == {} and "random weights" in why


def test_a_model_not_on_this_computer_is_no_start(tmp_path):
    run = _run(tmp_path, {"tubules": {"name": "gone", "folder": str(tmp_path / "gone")}})
    write_edits(run.folder, [make_edit("restage_tubule", "b", 3, "IX")])
    plan = plan_retraining(_project(["a", "b"]), run)
    assert plan.model_pipeline == "stagetool-tubules" and plan.init_from == "" and "random weights" in plan.note()


def test_a_corrected_section_falls_down_the_doubt_list(tmp_path):
    import json

    from app.gui.correction_loop import section_doubts

    run = _run(tmp_path, {})
    unsure = {"id": 1, "class": "IX", "box": [0, 0, 9, 9], "stage_weights": {"IX": 0.5, "XII": 0.45, "I-V": 0.05}}
    sure = {"id": 1, "class": "IX", "box": [0, 0, 9, 9], "stage_weights": {"IX": 1.0}}
    for image, tubule in (("a", unsure), ("b", sure)):
        doc = {"image": image, "layers": {"tubules": [tubule], "cells": [{"id": 1, "class": "Sertoli",
                                                                           "box": [1, 1, 3, 3], "score": 0.9}]}}
        (run.folder / image / "objects.json").write_text(json.dumps(doc))
    before = section_doubts(run)
    assert before["a"]["score"] > before["b"]["score"] and before["a"]["ambiguous_tubules"] == 1
    write_edits(run.folder, [make_edit("restage_tubule", "a", 1, "XII")])
    after = section_doubts(run)
    assert after["a"]["score"] < before["a"]["score"] and after["a"]["ambiguous_tubules"] == 0
    assert section_doubts(SimpleNamespace(pipeline="kaizen")) == {}
