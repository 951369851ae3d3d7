"""`stagescope stagetool ...` end to end with tiny untrained models: files written, bad input refused clearly."""

from __future__ import annotations

import json

import numpy as np
import pytest
from openpyxl import load_workbook

from app.cli import main
from app.core.images import write_tiff
from app.core.modelcard import ModelCard, save_model
from app.pipelines.stagetool.classes import CELL_TYPES, STAGES
from app.pipelines.stagetool.models import ModelConfig, build_model
from stagetool_testing import one_torch_thread  # noqa: F401  (autouse fixture)


def tiny_model(folder, kind: str, tile: int = 128):
    classes = list(STAGES if kind == "tubules" else CELL_TYPES)
    config = ModelConfig(kind, "tiny", len(classes), tile_size=tile, fpn_channels=16, head_dim=32, mask_head_layers=1,
                         anchor_sizes=(8, 16, 32, 64, 128), detections_per_img=20)
    card = ModelCard(name=f"tiny-{kind}", pipeline=f"stagetool-{kind}", architecture="test", backbone="tiny",
                     classes=classes, extra={"model": config.to_dict()})
    import torch

    torch.manual_seed(0)
    net = build_model(config)
    with torch.no_grad():  # an untrained net that is sure of class 1: few boxes, so the test stays fast
        net.roi_heads.box_predictor.cls_score.bias[1] = 6.0
    return save_model(folder, card, net.state_dict(), half=True).folder


@pytest.fixture
def models(tmp_path):
    return tiny_model(tmp_path / "tub", "tubules"), tiny_model(tmp_path / "cel", "cells")


@pytest.fixture
def section(tmp_path):
    rng = np.random.default_rng(0)
    image = (rng.random((2, 160, 200)) * 3000).astype(np.uint16)
    path = tmp_path / "sec.ome.tif"
    write_tiff(path, image, axes="CYX", channel_names=["DAPI", "SOX9"], pixel_size_um=0.5)
    return path


def cli(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_analyze_writes_results_and_a_workbook_that_matches_them(capsys, tmp_path, models, section):
    out = tmp_path / "out"
    code, stdout, err = cli(capsys, "stagetool", "analyze", section, "--out", out, "--tubule-model", models[0],
                            "--cell-model", models[1], "--antibody", "SOX9=1:1500", "--tta", "full", "--cell-score", "0.5",
                            "--tubule-score", "0.5", "--synthetic", "--overlap", "16")
    assert code == 0, err
    folder = out / "sec"
    for name in ("predictions.json", "objects.json", "summary.json", "tubules.csv", "cells.csv", "sec.xlsx"):
        assert (folder / name).exists(), name
    assert (out / "batch.xlsx").exists() and (out / "run.json").exists() and "sec" in (out / "log.txt").read_text()
    doc = json.loads((folder / "objects.json").read_text())
    summary = json.loads((folder / "summary.json").read_text())
    wb = load_workbook(folder / "sec.xlsx")
    assert wb.sheetnames == ["Summary", "Tubules", "Cells", "Stage x cell type", "Cells per tubule",
                             "Antigen profiles", "Methods"]
    rows = list(wb["Cells"].iter_rows(values_only=True))
    cells = doc["layers"]["cells"]
    assert len(cells) > 0 and len(rows) - 1 == len(cells)
    header = rows[0]
    for row, cell in zip(rows[1:], cells):
        values = dict(zip(header, row))
        assert values["id"] == cell["id"] and values["cell type"] == cell["class"]
        assert values["x0 (px)"] == pytest.approx(cell["box"][0])
        assert values["SOX9 mean"] == pytest.approx(cell["antigen"]["SOX9"]["mean"])
    summary_rows = {r[0]: r[1] for r in wb["Summary"].iter_rows(values_only=True) if r and r[0]}
    assert summary_rows["cells (all)"] == summary["n_cells"] and "SYNTHETIC" in summary_rows["note"]
    assert summary["antibodies"][0]["threshold"] == 1500.0
    assert summary["antibodies"][0]["threshold_source"] == "given by the user"
    positives = sum(1 for c in cells if c["antigen"]["SOX9"]["mean"] > 1500 and c["antigen"]["SOX9"]["q"] > 750)
    assert summary["antigen"]["SOX9"]["positive_cells"] == positives
    methods = " ".join(str(v) for r in wb["Methods"].iter_rows(values_only=True) for v in r if v is not None)
    assert "tiny-cells" in methods and "1500" in methods

    # again: nothing to do, the reports are rewritten (with an edit)
    edits = tmp_path / "edits.json"
    edits.write_text(json.dumps({"edits": [{"action": "delete_cell", "image": "sec", "id": cells[0]["id"]}]}))
    code, stdout, _ = cli(capsys, "stagetool", "analyze", section, "--out", out, "--tubule-model", models[0],
                          "--cell-model", models[1], "--antibody", "SOX9=1:1500", "--tta", "full", "--cell-score", "0.5",
                          "--tubule-score", "0.5", "--edits", edits, "--overlap", "16")
    assert code == 0 and "already analysed" in stdout
    after = json.loads((folder / "summary.json").read_text())
    assert after["n_cells"] == summary["n_cells"] - 1 and after["edits_applied"] == 1
    assert len(json.loads((folder / "predictions.json").read_text())["layers"]["cells"]) == len(cells)

    # curated results as training annotations
    code, _, _ = cli(capsys, "stagetool", "export", out, "--out", tmp_path / "coco")
    assert code == 0
    coco = json.loads((tmp_path / "coco" / "cells.coco.json").read_text())
    assert len(coco["annotations"]) == after["n_cells"]
    assert [c["name"] for c in coco["categories"]] == list(CELL_TYPES)


def test_bad_input_gets_clear_messages(capsys, tmp_path, models, section):
    # a model card of the other pipeline
    code, _, err = cli(capsys, "stagetool", "analyze", section, "--out", tmp_path / "o", "--tubule-model", models[1],
                       "--cell-model", models[1])
    assert code == 2 and "stagetool-cells model, not a stagetool-tubules model" in err
    # a channel the section does not have: refused before the models are loaded, naming what the section has
    code, _, err = cli(capsys, "stagetool", "analyze", section, "--out", tmp_path / "o", "--tubule-model", models[0],
                       "--cell-model", models[1], "--antibody", "SALL4=SALL4")
    assert code == 2 and "no channel 'SALL4'" in err and "DAPI" in err
    # a damaged file: a clear message, earlier results untouched
    damaged = tmp_path / "damaged.tif"
    damaged.write_bytes(section.read_bytes()[:3000])
    code, out, _ = cli(capsys, "stagetool", "analyze", damaged, "--out", tmp_path / "o", "--tubule-model", models[0],
                       "--cell-model", models[1])
    assert code == 1 and "damaged" in out
    # annotations with classes Stagetool does not know
    coco = {"images": [{"id": 1, "file_name": section.name, "height": 160, "width": 200}],
            "categories": [{"id": 1, "name": "Leydig"}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 10, 10]}]}
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(coco))
    code, _, err = cli(capsys, "stagetool", "train", "cells", path, "--out", tmp_path / "m", "--epochs", "1")
    assert code == 2 and "Leydig" in err and "Sertoli" in err
    # a bad antibody option
    code, _, err = cli(capsys, "stagetool", "analyze", section, "--out", tmp_path / "o", "--antibody", "SOX9")
    assert code == 2 and "NAME=CHANNEL" in err


@pytest.mark.slow
def test_phantom_analyze_with_truth_and_evaluate(capsys, tmp_path, models):
    code, _, err = cli(capsys, "phantom", "testis", "--out", tmp_path / "ph", "--size", "640", "--seed", "5",
                       "--markers", "SOX9,SCP3")
    assert code == 0, err
    section = tmp_path / "ph" / "testis_000.ome.tif"
    out = tmp_path / "res"
    code, _, err = cli(capsys, "stagetool", "analyze", section, "--out", out, "--tubule-model", models[0],
                       "--cell-model", models[1], "--antibody", "SOX9=SOX9", "--antibody", "SCP3=2:900",
                       "--truth", tmp_path / "ph", "--tta", "off", "--overlap", "16")
    assert code == 0, err
    folder = out / "testis_000"
    evaluation = json.loads((folder / "evaluation.json").read_text())
    assert evaluation["synthetic"] is True and evaluation["stages"]["n_tubules"] > 0
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["synthetic"] is True  # the phantom's README says so
    wb = load_workbook(folder / "testis_000.xlsx")
    assert wb.sheetnames[-1] == "Evaluation"
    rows = {r[0]: r[1] for r in wb["Evaluation"].iter_rows(values_only=True) if r and r[0]}
    assert rows["whole-section stage n_tubules"] == evaluation["stages"]["n_tubules"]
    assert rows["tubules pixel_accuracy"] == pytest.approx(evaluation["tubules"]["pixel_accuracy"])
    assert "Evaluation" in load_workbook(out / "batch.xlsx").sheetnames
    code, stdout, _ = cli(capsys, "stagetool", "evaluate", out, tmp_path / "ph")
    assert code == 0 and "whole-section stages" in stdout and "synthetic" in stdout
    code, _, err = cli(capsys, "stagetool", "evaluate", out, tmp_path / "nowhere")
    assert code == 2 and "nowhere" in err


@pytest.mark.slow
def test_reanalysing_drops_the_evaluation_of_the_old_predictions(capsys, tmp_path, models, section):
    """An evaluation describes the predictions it was made from: --force without truth must not keep it."""
    out = tmp_path / "out"
    args = ["stagetool", "analyze", section, "--out", out, "--tubule-model", models[0], "--cell-model", models[1],
            "--tta", "off", "--overlap", "16"]
    assert cli(capsys, *args)[0] == 0
    stale = {"stale": True}
    (out / "sec" / "evaluation.json").write_text(json.dumps(stale))  # as left by an earlier --truth run
    (out / "evaluation.json").write_text(json.dumps(stale))
    assert cli(capsys, *args)[0] == 0  # finished and unchanged: skipped, its evaluation kept
    assert (out / "sec" / "evaluation.json").exists()
    assert cli(capsys, *args, "--force")[0] == 0
    assert not (out / "sec" / "evaluation.json").exists() and not (out / "evaluation.json").exists()
    assert "Evaluation" not in load_workbook(out / "sec" / "sec.xlsx").sheetnames


@pytest.mark.slow
def test_stage_from_option_and_fitting_the_stager_on_found_cells(capsys, tmp_path, models):
    code, _, err = cli(capsys, "phantom", "testis", "--out", tmp_path / "ph", "--size", "640", "--seed", "5")
    assert code == 0, err
    out = tmp_path / "res"
    code, _, err = cli(capsys, "stagetool", "analyze", tmp_path / "ph" / "testis_000.ome.tif", "--out", out,
                       "--tubule-model", models[0], "--cell-model", models[1], "--tta", "off", "--overlap", "16",
                       "--stage-from", "masks")
    assert code == 0, err
    doc = json.loads((out / "testis_000" / "predictions.json").read_text())
    assert doc["meta"]["params"]["stage_from"] == "masks"
    assert all(t["stage_source"] == "masks" for t in doc["layers"]["tubules"])
    # the untrained cell model's cells fill tubules of one stage only: a clear refusal, the card untouched
    card = (models[0] / "card.json").read_text()
    code, _, err = cli(capsys, "stagetool", "fit-stager", tmp_path / "ph", "--model", models[0], "--predictions", out)
    assert code == 2 and "at least two stages" in err
    assert (models[0] / "card.json").read_text() == card
    code, _, err = cli(capsys, "stagetool", "fit-stager", tmp_path / "ph", tmp_path / "ph", "--model", models[0],
                       "--predictions", out)
    assert code == 2 and "one truth folder" in err
