"""Brightfield training, model folders, prediction, experiments and the CLI, on small synthetic stacks.

A tiny U-Net trains for a few seconds on one core phantom field (app.core.phantoms.brightfield_stack:
defocus contrast that flips sign across focus, touching and overlapping nuclei, paired DNA stain) and
must beat chance on another.
"""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import tifffile
import torch

from app.cli import main
from app.core.errors import ModelError
from app.core.jobs import Progress, run
from app.core.phantoms import brightfield_stack
from app.pipelines.brightfield.experiments import experiment_planes, experiment_size, scores
from app.pipelines.brightfield.params import ExperimentParams, SegmentParams, TrainParams
from app.pipelines.brightfield.predict import BrightfieldModel, instances, probability_job, segment
from app.pipelines.brightfield.stack import PlaneStack
from app.pipelines.brightfield.train import TrainingField, save_trained, train

TINY = TrainParams(scale=1.0, width=4, depth=2, crop=32, batch_size=4, steps_per_epoch=8, epochs=6,
                   patience=6, lr=3e-2, threads=1, device="cpu")
SEGMENT = SegmentParams(min_area=20, split_depth=2, threads=1, device="cpu")


def phantom(seed: int, size: int = 64, n_planes: int = 3):
    """A small core brightfield phantom: ``n_planes`` planes 3 um apart around focus, 6 nuclei, paired DNA stain."""
    return brightfield_stack(seed=seed, size=size, count=6, n_planes=n_planes, z_step_um=3.0, radius=(5.0, 8.0))


def phantom_field(seed: int, size: int = 64, n_planes: int = 3) -> TrainingField:
    """The phantom as a training field; planes scaled x150 so they survive being written as 8-bit files."""
    p = phantom(seed, size, n_planes)
    z = [float(v) for v in p.z_um]
    return TrainingField(PlaneStack(p.planes * 150, z, [f"z{v:g}" for v in z], f"phantom{seed}"), p.labels,
                         f"phantom{seed}")


@pytest.fixture(scope="module")
def fields() -> list[TrainingField]:
    return [phantom_field(seed) for seed in (1, 2)]


@pytest.fixture(scope="module")
def trained(fields):
    result = run(train([fields[0]], TINY))
    return result


def test_training_yields_progress_and_beats_chance(fields):
    events: list[Progress] = []
    result = run(train([fields[0]], TINY), events.append)
    assert {"prepare", "train", "validate"} <= {e.stage for e in events}
    assert len(result.history) >= 1 and result.best_epoch >= 1
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"] * 1.5
    model = BrightfieldModel.from_result(result)
    test = fields[1]
    prob = run(probability_job(model, test.stack.data, SEGMENT))
    measured = scores(test.labels, instances(prob, SEGMENT), prob[0])
    foreground = np.count_nonzero(test.labels) / test.labels.size
    chance_f1 = 2 * foreground / (1 + foreground)  # calling every pixel nucleus
    assert measured["auroc"] > 0.75
    assert measured["pixel_f1"] > chance_f1 + 0.15


def test_closing_the_job_stops_training(fields, tmp_path):
    job = train([fields[0]], TINY, checkpoint_dir=tmp_path)
    for event in job:
        if event.stage == "validate":
            break
    job.close()  # the consumer stops pulling: no exception, checkpoint of the best epoch kept
    saved = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert saved["epoch"] == 1 and "state_dict" in saved


def test_model_folder_round_trip(trained, fields, tmp_path):
    card = save_trained(trained, tmp_path / "m", "tiny", metrics={"held_out": {"data": "phantom2", "pixel_f1": 0.5}},
                        segment=SEGMENT)
    assert card.pipeline == "brightfield" and card.input_channels == 3
    assert card.channel_meaning == fields[0].stack.z_offsets()
    loaded = BrightfieldModel.load(tmp_path / "m")
    assert loaded.scale == 1.0 and loaded.segment.min_area == SEGMENT.min_area
    x = fields[1].stack.data
    a = run(probability_job(BrightfieldModel.from_result(trained), x, SEGMENT))
    b = run(probability_job(loaded, x, SEGMENT))
    assert np.abs(a - b).max() < 0.02  # float16 weights on disk
    with pytest.raises(ModelError, match="expects 3 plane"):
        run(segment(loaded, fields[1].stack.select([0, 1])))


def test_tiled_prediction_matches_whole_field(trained, fields):
    model = BrightfieldModel.from_result(trained)
    x = fields[1].stack.data
    whole = run(probability_job(model, x, SEGMENT))
    params = SegmentParams(tile_size=32, overlap=16, threads=1, device="cpu")
    events: list[Progress] = []
    tiled = run(probability_job(model, x, params), events.append)
    from app.core.tiles import TileGrid

    assert sum(e.stage == "predict" and e.done > 0 for e in events) == len(TileGrid(64, 64, 32, 16)) > 1
    assert np.corrcoef(whole.ravel(), tiled.ravel())[0, 1] > 0.95


def test_experiments_write_tables(fields, tmp_path):
    params = ExperimentParams(epochs=1, steps_per_epoch=2, width=4, sizes=(2, 8), folds=1, max_planes=2)
    base = TrainParams(scale=1.0, depth=2, crop=32, batch_size=2, threads=1, device="cpu")
    table = run(experiment_planes(fields, params, base, SEGMENT))
    assert [row["planes"] for row in table.rows][:3] == [(0,), (1,), (2,)]
    assert len(table.rows) == 4 and table.rows[3]["kind"] == "best 2"
    assert all(0 <= row["pixel_f1"] <= 1 and row["object_error"] == 1 - row["object_f1"] for row in table.rows)
    paths = table.write(tmp_path, "planes")
    assert (tmp_path / "planes.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "planes" in (tmp_path / "planes.txt").read_text()
    size = run(experiment_size(fields, params, base, SEGMENT))
    assert [row["training crops"] for row in size.rows] == [2, 8]
    assert len(paths) == 4


# ------------------------------------------------------------------ CLI


def write_field_folder(folder, field: TrainingField, with_fluo: bool = True):
    """A field folder as a microscope writes it: 8-bit planes named by z, and the phantom's DNA stain as fl.tif."""
    folder.mkdir(parents=True)
    for plane, z in zip(field.stack.data, field.stack.z):
        tifffile.imwrite(folder / f"bf_Z{z:.2f}.tif", np.clip(plane, 0, 255).astype(np.uint8))
    if with_fluo:
        tifffile.imwrite(folder / "fl.tif", phantom(int(field.name.removeprefix("phantom"))).fluorescence)
    return folder


def test_cli_derive_train_segment(fields, tmp_path, capsys):
    f1 = write_field_folder(tmp_path / "f1", fields[0])
    f2 = write_field_folder(tmp_path / "f2", fields[1])
    labels = tmp_path / "labels1.tif"
    assert main(["brightfield", "derive-labels", str(f1 / "fl.tif"), "--out", str(labels), "--min-area", "20",
                 "--sigma", "0"]) == 0
    derived = tifffile.imread(labels)
    assert derived.dtype == np.uint16 and derived.max() >= 1
    side = json.loads((tmp_path / "labels1.json").read_text())
    assert side["count"] == int(derived.max()) and side["params"]["min_area"] == 20

    model_dir = tmp_path / "model"
    assert main(["brightfield", "train", str(f1), str(labels), "--out", str(model_dir), "--scale", "1", "--width", "4",
                 "--depth", "2", "--crop", "32", "--batch-size", "2", "--steps-per-epoch", "2", "--epochs", "1",
                 "--threads", "1", "--device", "cpu"]) == 0
    card = json.loads((model_dir / "card.json").read_text())
    assert card["pipeline"] == "brightfield" and card["input_channels"] == 3
    assert card["extra"]["planes"]["n_stack"] == 3

    out = tmp_path / "out"
    assert main(["brightfield", "segment", str(f2), "--out", str(out), "--model", str(model_dir),
                 "--min-area", "20", "--threads", "1"]) == 0
    assert tifffile.imread(out / "f2_labels.tif").shape == fields[1].labels.shape
    with open(out / "f2_nuclei.csv") as handle:
        rows = list(csv.reader(handle))
    assert rows[0][:3] == ["field", "id", "area_px"] and "mean_fluorescence" in rows[0]
    doc = json.loads((out / "f2.objects.json").read_text())
    assert doc["pipeline"] == "brightfield" and len(doc["layers"]["nuclei"]) == len(rows) - 1
    run_json = json.loads((out / "run.json").read_text())
    assert run_json["model"]["weights_sha256"] == card["weights_sha256"]
    assert run_json["params"]["min_area"] == 20

    capsys.readouterr()
    one_plane = tmp_path / "one"
    one_plane.mkdir()
    tifffile.imwrite(one_plane / "bf_Z0.00.tif", np.zeros((64, 64), np.uint8))
    assert main(["brightfield", "segment", str(one_plane), "--out", str(out), "--model", str(model_dir)]) == 2
    assert "expects 3 plane" in capsys.readouterr().err


def test_cli_refuses_planes_of_different_sizes(trained, tmp_path, capsys):
    save_trained(trained, tmp_path / "m", "tiny")
    folder = tmp_path / "bad"
    folder.mkdir()
    tifffile.imwrite(folder / "bf_Z0.00.tif", np.zeros((64, 64), np.uint8))
    tifffile.imwrite(folder / "bf_Z5.00.tif", np.zeros((64, 60), np.uint8))
    assert main(["brightfield", "segment", str(folder), "--out", str(tmp_path / "o"), "--model", str(tmp_path / "m")]) == 2
    assert "same size" in capsys.readouterr().err


def test_registry_runs_project_stacks(trained, fields, tmp_path):
    from app.core.project import Project
    from app.pipelines.registry import get

    save_trained(trained, tmp_path / "m", "tiny", segment=SEGMENT)
    stack_file = tmp_path / "stack.tif"
    tifffile.imwrite(stack_file, np.clip(fields[1].stack.data, 0, 255).astype(np.uint8), photometric="minisblack")
    project = Project.create(tmp_path / "proj", name="p")
    entry = project.add_image(stack_file)
    spec = get("brightfield")
    assert spec.params is SegmentParams and "nuclei" in spec.layers
    folder = run(spec.analyze(project, [entry.name], SEGMENT, {"brightfield": str(tmp_path / "m")}))
    doc = json.loads((folder / "run.json").read_text())
    assert doc["status"] == "finished" and doc["parameters"]["min_area"] == SEGMENT.min_area
    labels = tifffile.imread(next(folder.rglob("labels.tif")))
    assert labels.shape == fields[1].labels.shape


def test_cli_experiment_quick(fields, tmp_path, capsys):
    f1 = write_field_folder(tmp_path / "f1", fields[0])
    f2 = write_field_folder(tmp_path / "f2", fields[1])
    out = tmp_path / "exp"
    assert main(["brightfield", "experiment", "planes", str(f1), str(f2), "--out", str(out), "--quick",
                 "--folds", "1", "--max-planes", "2", "--width", "4", "--scale", "1", "--depth", "2",
                 "--min-area", "20", "--sigma", "0", "--threads", "1"]) == 0
    text = capsys.readouterr().out
    assert "planes: error on the held-out field (f1+f2" not in text and "f1 -> f2" in text
    assert "best 2" in text and "--quick" in text
    table = json.loads((out / "planes.json").read_text())
    assert len(table["rows"]) == 4 and table["runs"][0]["fold"] == "f1 -> f2"
    assert (out / "planes.png").stat().st_size > 1000


def test_cli_experiment_on_phantom_stacks(tmp_path, capsys):
    out = tmp_path / "exp"
    assert main(["brightfield", "experiment", "size", "--phantom", "2", "--phantom-size", "128", "--out", str(out),
                 "--quick", "--folds", "1", "--sizes", "2", "--width", "4", "--depth", "2", "--threads", "1"]) == 0
    text = capsys.readouterr().out
    assert "phantom0 -> phantom1" in text and "--quick" in text
    table = json.loads((out / "size.json").read_text())
    assert [row["training crops"] for row in table["rows"]] == [2]
    assert table["params"]["segment"]["min_area"] == 30  # the phantom default, not sephaCe's 1000 px
    assert main(["brightfield", "experiment", "planes", "--phantom", "2", str(tmp_path), "--out", str(out)]) == 2
    assert "not both" in capsys.readouterr().err
