"""Issue 18, points 5 and 8: reports never overwrite what the user changed; nonsense input is refused.

Each refusal is one line on stderr with exit 2 (UserError), before any model is loaded or written.
"""

from __future__ import annotations

import json
import os
import stat

import numpy as np
import pytest
from openpyxl import load_workbook

from app.cli import main
from app.core.images import write_tiff
from stagetool_testing import one_torch_thread  # noqa: F401  (autouse fixture)
from test_stagetool_cli import tiny_model


def cli(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def one_line_refusal(code: int, err: str) -> str:
    """The refusal's message, after checking it is exit 2 and one error line without a traceback.

    Progress lines may come before it on stderr (the console progress of a job that was refused).
    """
    assert code == 2, err
    errors = [line for line in err.splitlines() if line.startswith("stagescope: error")]
    assert len(errors) == 1 and err.rstrip().endswith(errors[0]) and "Traceback" not in err, err
    return errors[0]


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


# ------------------------------------------------------------------ point 5: reports keep the user's edits


def test_rerun_keeps_a_workbook_the_user_changed_and_says_where_the_new_one_went(capsys, tmp_path, models, section):
    out = tmp_path / "out"
    args = ["stagetool", "analyze", section, "--out", out, "--tubule-model", models[0], "--cell-model", models[1],
            "--tta", "off", "--overlap", "16"]
    assert cli(capsys, *args)[0] == 0
    workbook, batch, cells_csv = out / "sec" / "sec.xlsx", out / "batch.xlsx", out / "sec" / "cells.csv"
    wb = load_workbook(workbook)
    wb.create_sheet("My notes")["A1"] = "counted by hand: 17"
    wb.save(workbook)
    batch_bytes = batch.read_bytes()
    batch.chmod(stat.S_IREAD)  # a workbook the user protected
    cells_csv.write_text(cells_csv.read_text() + "my own row\n")

    code, stdout, err = cli(capsys, *args)
    assert code == 0, err
    assert "My notes" in load_workbook(workbook).sheetnames  # the user's sheet is still there
    assert batch.read_bytes() == batch_bytes and "my own row" in cells_csv.read_text()
    new_workbook, new_batch = out / "sec" / "sec (2).xlsx", out / "batch (2).xlsx"
    assert "My notes" not in load_workbook(new_workbook).sheetnames
    assert load_workbook(new_batch).sheetnames[0] == "Sections"
    assert "my own row" not in (out / "sec" / "cells (2).csv").read_text()
    for path in (new_workbook, new_batch, out / "sec" / "cells (2).csv"):
        assert str(path) in stdout, stdout  # the user is told where the new reports are
    assert "tubules (2).csv" not in stdout and not (out / "sec" / "tubules (2).csv").exists()  # untouched: replaced

    # again: the versioned reports nobody changed are replaced, no third copy piles up
    assert cli(capsys, *args)[0] == 0
    assert not (out / "sec" / "sec (3).xlsx").exists() and not (out / "batch (3).xlsx").exists()

    # evaluate rewrites the workbooks too: same rule
    truth = tmp_path / "truth"
    truth.mkdir()
    write_tiff(truth / "sec_tubules.tif", np.zeros((160, 200), np.uint16), axes="YX")
    (truth / "sec_truth.json").write_text(json.dumps({"name": "sec", "tubules": [], "cells": []}))
    code, stdout, err = cli(capsys, "stagetool", "evaluate", out, truth)
    assert code == 0, err
    assert "My notes" in load_workbook(workbook).sheetnames and str(new_workbook) in stdout
    assert "Evaluation" in load_workbook(new_workbook).sheetnames

    # --force replaces them
    batch.chmod(stat.S_IREAD | stat.S_IWRITE)
    assert cli(capsys, *args, "--force")[0] == 0
    assert "My notes" not in load_workbook(workbook).sheetnames and batch.read_bytes() != batch_bytes


def test_report_writer_versions_an_edited_file_and_replaces_its_own(tmp_path):
    from app.core.outputs import collect_kept, save_report_text

    path = tmp_path / "counts.csv"
    assert save_report_text(path, "a\n") == path
    assert save_report_text(path, "b\n") == path and path.read_text() == "b\n"  # its own, unchanged: replaced
    path.write_text("b\nedited\n")
    with collect_kept() as kept:
        written = save_report_text(path, "c\n")
    assert written == tmp_path / "counts (2).csv" and path.read_text() == "b\nedited\n"
    assert kept[0].kept == path and kept[0].written == written and "changed" in kept[0].reason
    (tmp_path / "other.csv").write_text("not ours\n")
    assert save_report_text(tmp_path / "other.csv", "x\n").name == "other (2).csv"
    assert save_report_text(tmp_path / "other.csv", "x\n", force=True).name == "other.csv"
    if os.name == "posix":
        assert (tmp_path / "other.csv").read_text() == "x\n"


def test_brightfield_segment_keeps_a_count_table_the_user_changed(capsys, tmp_path):
    from app.core.phantoms import write_phantom

    write_phantom("brightfield", tmp_path / "raw", seed=3, count=1, size=128)
    args = ["brightfield", "segment", tmp_path / "raw" / "field_000_planes.tif", "--out", tmp_path / "o",
            "--model", "brightfield-phantom-demo"]
    assert cli(capsys, *args)[0] == 0
    counts = tmp_path / "o" / "counts.csv"
    counts.write_text(counts.read_text() + "field_000_planes,12,checked by hand,\n")
    code, stdout, err = cli(capsys, *args)
    assert code == 0, err
    assert "checked by hand" in counts.read_text()
    assert str(tmp_path / "o" / "counts (2).csv") in stdout
    assert cli(capsys, *args, "--overwrite")[0] == 0 and "checked by hand" not in counts.read_text()


# ------------------------------------------------------------------ point 8: nonsense refused with exit 2


def write_truth(folder, name: str, shape: tuple[int, int]):
    """Ground truth in the phantom's format (no tubules, no cells) drawn on an image of ``shape``."""
    folder.mkdir(exist_ok=True)
    write_tiff(folder / f"{name}_tubules.tif", np.zeros(shape, np.uint16), axes="YX")
    (folder / f"{name}_truth.json").write_text(json.dumps({"name": name, "tubules": [], "cells": []}))
    return folder


@pytest.fixture
def loads(monkeypatch):
    """Names of the models Stagetool loads (a refusal must come before any)."""
    import app.pipelines.stagetool.loading as loading
    from app.pipelines.runner import clear_model_cache

    loaded, real = [], loading.load_model

    def counting(*args, **kwargs):
        loaded.append(args[1])
        return real(*args, **kwargs)

    monkeypatch.setattr(loading, "load_model", counting)  # what the spec's load calls
    clear_model_cache()
    return loaded


def test_evaluate_refuses_truth_of_another_size(capsys, tmp_path, models, section, loads):
    out = tmp_path / "out"
    args = ["stagetool", "analyze", section, "--out", out, "--tubule-model", models[0], "--cell-model", models[1],
            "--tta", "off", "--overlap", "16"]
    assert cli(capsys, *args)[0] == 0
    before = (out / "sec" / "sec.xlsx").read_bytes()
    truth = write_truth(tmp_path / "truth", "sec", (100, 120))
    message = one_line_refusal(*cli(capsys, "stagetool", "evaluate", out, truth)[::2])
    assert "120 x 100" in message and "200 x 160" in message
    assert not (out / "sec" / "evaluation.json").exists() and (out / "sec" / "sec.xlsx").read_bytes() == before
    # analyze --truth: refused before the models are loaded
    loads.clear()
    message = one_line_refusal(*cli(capsys, *args, "--truth", truth, "--force")[::2])
    assert "120 x 100" in message and loads == []


def test_analyze_refuses_a_missing_channel_or_a_z_stack_before_loading_models(capsys, tmp_path, models, section, loads):
    base = ["--out", tmp_path / "o", "--tubule-model", models[0], "--cell-model", models[1]]
    message = one_line_refusal(*cli(capsys, "stagetool", "analyze", section, *base, "--antibody", "SALL4=SALL4")[::2])
    assert "SALL4" in message and "DAPI" in message and "SOX9" in message
    message = one_line_refusal(*cli(capsys, "stagetool", "analyze", section, *base, "--dapi", "7")[::2])
    assert "7" in message and "DAPI" in message
    stack = tmp_path / "stack.ome.tif"
    write_tiff(stack, np.ones((2, 3, 64, 64), np.uint16), axes="CZYX", channel_names=["DAPI", "SOX9"])
    message = one_line_refusal(*cli(capsys, "stagetool", "analyze", section, stack, *base)[::2])
    assert "stack.ome.tif" in message and "3 z-planes" in message
    assert loads == [] and not (tmp_path / "o" / "run.json").exists()


def test_evaluate_semantic_refuses_a_class_count_below_two_and_out_of_range_truth(capsys, tmp_path):
    truth = np.zeros((20, 20), np.uint8)
    truth[:5] = 1
    truth[5:8] = 7  # not a class of a 3-class evaluation
    truth[8:10] = 255  # "ignore" in many data sets
    pred = np.zeros_like(truth)
    pred[:5] = 1
    write_tiff(tmp_path / "t.tif", truth, axes="YX")
    write_tiff(tmp_path / "p.tif", pred, axes="YX")
    files = ["evaluate", "semantic", tmp_path / "t.tif", tmp_path / "p.tif"]
    for n in ("0", "1"):
        message = one_line_refusal(*cli(capsys, *files, "--classes", n)[::2])
        assert "at least 2" in message and n in message
    message = one_line_refusal(*cli(capsys, *files, "--classes", "3")[::2])
    assert "t.tif" in message and "7, 255" in message
    message = one_line_refusal(*cli(capsys, *files, "--classes", "3", "--ignore", "255")[::2])
    assert "7" in message and "255" not in message.split("found")[1].split(";")[0]
    truth[5:8] = 2
    write_tiff(tmp_path / "t.tif", truth, axes="YX")
    code, out, err = cli(capsys, *files, "--classes", "3", "--ignore", "255", "--json")
    assert code == 0, err
    scores = json.loads(out)
    assert scores["pixel_accuracy"] == pytest.approx(300 / 360)  # 60 of class 2 missed; the 40 ignored not counted


def test_kaizen_train_has_the_options_its_hint_names_and_refuses_fractional_or_empty_labels(capsys, tmp_path):
    image = np.random.default_rng(1).random((2, 48, 48)).astype(np.float32)
    labels = np.zeros((48, 48), np.float32)
    labels[10:20, 10:20] = 1
    labels[30:40, 25:35] = 2.5  # not an object id: a resampled or averaged label image
    write_tiff(tmp_path / "cells.tif", image, axes="CYX", channel_names=["DNA", "membrane"])
    write_tiff(tmp_path / "labels.tif", labels, axes="YX")
    args = ["kaizen", "train", tmp_path / "cells.tif", tmp_path / "labels.tif", "--out", tmp_path / "m",
            "--epochs", "1", "--steps-per-epoch", "1", "--batch-size", "2", "--val-percent", "0"]
    message = one_line_refusal(*cli(capsys, *args)[::2])
    assert "--channel" in message  # the hint names options kaizen train has:
    message = one_line_refusal(*cli(capsys, *args, "--channel", "DNA")[::2])
    assert "labels.tif" in message and "2.5" in message  # fractional ids refused, not truncated to 2
    write_tiff(tmp_path / "labels.tif", np.zeros((48, 48), np.uint16), axes="YX")
    message = one_line_refusal(*cli(capsys, *args, "--channel", "0")[::2])
    assert "no objects" in message
    assert not (tmp_path / "m" / "card.json").exists()


def test_batch_with_corrupt_weights_is_refused_at_start_naming_the_model_folder(capsys, tmp_path):
    import shutil

    from app.core.modelcard import resolve_model

    model = tmp_path / "kaizen-copy"
    shutil.copytree(resolve_model("kaizen-nuclei", pipeline="kaizen").folder, model)
    weights = model / "weights.pt"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF
    weights.write_bytes(bytes(data))
    write_tiff(tmp_path / "img.tif", np.zeros((32, 32), np.uint16), axes="YX")
    message = one_line_refusal(*cli(capsys, "batch", "analyze", "kaizen", tmp_path / "img.tif", "--out",
                                    tmp_path / "out", "--model", f"kaizen={model}")[::2])
    assert str(model) in message and "corrupt" in message and "changed since" not in message
    assert not (tmp_path / "out" / "img").exists()


def coco(section, annotations, height: int = 160, width: int = 200) -> dict:
    return {"images": [{"id": 1, "file_name": section.name, "height": height, "width": width}],
            "categories": [{"id": 1, "name": "Sertoli"}],
            "annotations": [{"id": i + 1, "image_id": 1, "category_id": 1, "bbox": box}
                            for i, box in enumerate(annotations)]}


@pytest.mark.parametrize("case, expected", [
    ("no annotations", "no cell annotations"),
    ("empty GeoJSON", "no cell annotations"),
    ("negative box", "width and height"),
    ("box outside the image", "outside"),  # the old code refused it too, by chance, when a crop hit it
    ("wrong image size", "400 x 300"),
])
def test_stagetool_train_refuses_annotations_a_model_cannot_learn_from(capsys, tmp_path, section, case, expected):
    path = tmp_path / "cells.json"
    if case == "no annotations":
        path.write_text(json.dumps(coco(section, [])))
    elif case == "empty GeoJSON":
        path = tmp_path / "sec.ome.geojson"
        path.write_text(json.dumps({"type": "FeatureCollection", "features": []}))
    elif case == "negative box":
        path.write_text(json.dumps(coco(section, [[10, 10, 12, 12], [50, 50, -20, -20]])))
    elif case == "box outside the image":
        path.write_text(json.dumps(coco(section, [[10, 10, 12, 12], [-40, 20, 12, 12]])))  # x -40..-28
    else:
        path.write_text(json.dumps(coco(section, [[10, 10, 12, 12]], height=300, width=400)))
    message = one_line_refusal(*cli(capsys, "stagetool", "train", "cells", path, "--out", tmp_path / "m",
                                    "--epochs", "1", "--crop-size", "64", "--crops-per-epoch", "2")[::2])
    assert expected in message
    assert not (tmp_path / "m" / "card.json").exists() and not (tmp_path / "m" / "weights.pt").exists()


@pytest.mark.parametrize("rows, expected", [
    (None, "hold no nuclei (all 0)"),
    ((85, 95), "training part"),  # nuclei only in the bottom strip kept for validation
    ((10, 20), "validation strips"),  # none to validate on: val Dice 1.000 for a model that finds nothing
])
def test_brightfield_train_refuses_labels_without_nuclei(capsys, tmp_path, rows, expected):
    from app.core.phantoms import write_phantom

    write_phantom("brightfield", tmp_path / "raw", seed=3, count=1, size=96)
    labels = np.zeros((96, 96), np.uint16)
    if rows:
        labels[rows[0]:rows[1], 40:50] = 1
    write_tiff(tmp_path / "labels.tif", labels, axes="YX")
    message = one_line_refusal(*cli(capsys, "brightfield", "train", tmp_path / "raw" / "field_000_planes.tif",
                                    tmp_path / "labels.tif", "--out", tmp_path / "m", "--width", "4", "--depth", "2",
                                    "--crop", "32", "--batch-size", "2", "--steps-per-epoch", "1", "--max-epochs", "1",
                                    "--scale", "1", "--threads", "1", "--device", "cpu")[::2])
    assert expected in message and not (tmp_path / "m" / "card.json").exists()


def test_batch_analyze_keeps_a_batch_workbook_the_user_changed(capsys, tmp_path, models):
    rng = np.random.default_rng(0)
    write_tiff(tmp_path / "in" / "sec0.ome.tif", (rng.random((1, 80, 96)) * 3000).astype(np.uint16),
               axes="CYX", channel_names=["DAPI"])
    write_tiff(tmp_path / "more" / "sec1.ome.tif", (rng.random((1, 80, 96)) * 3000).astype(np.uint16),
               axes="CYX", channel_names=["DAPI"])
    args = ["batch", "analyze", "stagetool", tmp_path / "in", "--out", tmp_path / "out", "--model",
            f"tubules={models[0]}", "--model", f"cells={models[1]}", "--param", "tta=off", "--quiet"]
    assert cli(capsys, *args)[0] == 0
    batch = tmp_path / "out" / "batch.xlsx"
    wb = load_workbook(batch)
    wb.create_sheet("My notes")
    wb.save(batch)
    code, stdout, err = cli(capsys, *args[:4], tmp_path / "more", *args[4:])  # one more section
    assert code == 0, err
    assert "My notes" in load_workbook(batch).sheetnames
    assert f"kept {batch}" in stdout and str(tmp_path / "out" / "batch (2).xlsx") in stdout


def test_batch_report_csv_and_experiment_tables_the_user_changed_are_kept(capsys, tmp_path):
    write_tiff(tmp_path / "in" / "img0.tif", np.zeros((8, 8), np.uint8), axes="YX")
    args = ["batch", "analyze", "noop", tmp_path / "in", "--out", tmp_path / "out", "--param", "seconds=0"]
    assert cli(capsys, *args)[0] == 0
    report = tmp_path / "out" / "batch_report.csv"
    report.write_text(report.read_text() + "my note\n")
    code, stdout, err = cli(capsys, *args)
    assert code == 0, err
    assert "my note" in report.read_text() and str(tmp_path / "out" / "batch_report (2).csv") in stdout

    args = ["brightfield", "experiment", "size", "--phantom", "2", "--phantom-size", "128", "--out",
            tmp_path / "exp", "--quick", "--folds", "1", "--sizes", "2", "--width", "4", "--depth", "2", "--threads", "1"]
    assert cli(capsys, *args)[0] == 0
    table = tmp_path / "exp" / "size.csv"
    table.write_text(table.read_text() + "my note\n")
    code, stdout, err = cli(capsys, *args)
    assert code == 0, err
    assert "my note" in table.read_text()
    assert all((tmp_path / "exp" / f"size (2){suffix}").exists() for suffix in (".csv", ".txt", ".json", ".png"))
    assert str(tmp_path / "exp" / "size (2).csv") in stdout
