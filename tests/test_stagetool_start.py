"""How training starts: fine-tuning a model (recorded with its sha256, its stager kept), torchvision weights from the
torch cache (a locally made state dict: tests never download), one-line messages offline, corrected results as data."""

from __future__ import annotations

import json
import urllib.error

import numpy as np
import pytest
import torch

from app.cli import main
from app.core.edits import make_edit, write_edits
from app.core.errors import UserError
from app.core.jobs import run
from app.core.modelcard import load_model_card, load_state_dict
from app.core.results import write_objects
from app.core.images import write_tiff
from app.pipelines.stagetool.classes import CELL_TYPES
from app.pipelines.stagetool.dataset import load_sections
from app.pipelines.stagetool.models import build_model, default_config
from app.pipelines.stagetool.params import TrainParams
from app.pipelines.stagetool.start import from_model, pretrained_file, start_network
from app.pipelines.stagetool.train import train
from stagetool_testing import one_torch_thread  # noqa: F401  (autouse fixture)
from test_stagetool_train import drawn_sections


@pytest.fixture(autouse=True)
def no_downloads(monkeypatch, tmp_path):
    """A private torch cache, and a network that is never there."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None, raising=False)

    def offline(*args, **kwargs):
        raise urllib.error.URLError("Temporary failure in name resolution")
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)


def tiny(**values) -> TrainParams:
    return TrainParams(**{"kind": "cells", "backbone": "tiny", "crop_size": 64, "epochs": 1, "crops_per_epoch": 2,
                          "batch_size": 2, "val_crops": 2, "val_fraction": 0.5, "half": True, **values})


def test_fine_tuning_starts_from_the_model_and_the_card_says_so(tmp_path):
    source = run(train([], tmp_path / "a", tiny(), sections=drawn_sections("cells"), synthetic=True))
    assert source.training["start"] == {"kind": "random"}
    same = run(train([], tmp_path / "b", tiny(init_from=str(tmp_path / "a"), lr=0.0),
                     sections=drawn_sections("cells"), synthetic=True))
    start = same.training["start"]
    assert start["kind"] == "fine-tuned" and start["sha256"] == source.weights_sha256 and start["model"] == "a"
    assert start["tensors"] == start["of"] and "fine-tuned from model 'a'" in same.training["pretraining"]
    before, after = load_state_dict(tmp_path / "a"), load_state_dict(tmp_path / "b")
    assert all(torch.equal(before[k], after[k]) for k in before)  # lr 0: still the source's weights
    fresh = run(train([], tmp_path / "c", tiny(lr=0.0, seed=1), sections=drawn_sections("cells"), synthetic=True))
    assert not all(torch.equal(before[k], load_state_dict(tmp_path / "c")[k]) for k in before)
    assert fresh.training["start"] == {"kind": "random"}


def test_fine_tuning_keeps_the_source_network_and_its_stager(tmp_path):
    from app.core.modelcard import ModelCard, save_model

    config = default_config("tubules", "tiny", tile_size=64, downsample=2)
    net = build_model(config)
    save_model(tmp_path / "t", ModelCard(name="t", pipeline="stagetool-tubules", architecture="m", classes=[],
                                         extra={"model": config.to_dict(), "composition": {"w": [1.0]}}),
               net.state_dict())
    params = tiny(kind="tubules", backbone="lite", downsample=1, init_from=str(tmp_path / "t"))
    from app.pipelines.stagetool.start import fine_tune_config, source_card

    got = fine_tune_config(source_card(params.init_from), params)
    assert got.backbone == "tiny" and got.downsample == 2
    start = from_model(build_model(got), "tubules", load_model_card(tmp_path / "t"))
    assert start.carry == {"composition": {"w": [1.0]}} and start.record["kind"] == "fine-tuned"
    backbone = from_model(build_model(default_config("cells", "tiny", tile_size=64)), "cells",
                          load_model_card(tmp_path / "t"))
    assert backbone.record["kind"] == "backbone" and not backbone.carry


def test_imagenet_weights_come_from_the_torch_cache(tmp_path):
    import torchvision

    file = pretrained_file("imagenet", "resnet18", "cells")
    assert file.path.parent == tmp_path / "torch" / "hub" / "checkpoints" and not file.present
    assert file.size_mb and file.size_mb > 10
    torch.manual_seed(3)
    reference = torchvision.models.resnet18(weights=None).state_dict()  # made here: no download
    file.path.parent.mkdir(parents=True)
    torch.save(reference, file.path)
    net = build_model(default_config("cells", "resnet18", tile_size=64))
    start = start_network(net, TrainParams(kind="cells", backbone="resnet18", pretrained="imagenet"), None)
    state = net.state_dict()
    torch.testing.assert_close(state["backbone.body.conv1.weight"], reference["conv1.weight"].sum(1, keepdim=True))
    torch.testing.assert_close(state["backbone.body.layer3.1.conv2.weight"], reference["layer3.1.conv2.weight"])
    assert start.record["kind"] == "pretrained" and start.record["file"] == file.path.name
    assert len(start.record["sha256"]) == 64 and "imagenet" in start.note


def test_without_the_file_and_offline_the_user_gets_one_line(tmp_path, capsys):
    args = ["stagetool", "train", "cells", "unused", "--out", str(tmp_path / "m"), "--backbone", "resnet18",
            "--pretrained", "imagenet", "--epochs", "1"]
    assert main(args) == 2  # no terminal to ask on, no --yes: nothing is downloaded
    err = capsys.readouterr().err
    assert "not downloaded yet" in err and "--yes" in err and len(err.strip().splitlines()) == 1
    assert main(args + ["--yes"]) == 2
    err = capsys.readouterr().err
    assert "is this computer online" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert main(args[:-4] + ["--backbone", "lite", "--pretrained", "coco"]) == 2
    assert "no published weights" in capsys.readouterr().err
    with pytest.raises(UserError, match="choose one"):
        TrainParams(init_from="x", pretrained="imagenet").validate()


def test_corrected_results_are_training_sections(tmp_path):
    image = np.full((200, 200), 100, np.uint16)
    write_tiff(tmp_path / "sec.tif", image, axes="YX")
    cells = [{"id": i + 1, "class": CELL_TYPES[0], "score": 0.5, "box": [10 * i, 10, 10 * i + 8, 18],
              "centroid": [14, 10 * i + 4], "tubule_id": None} for i in range(3)]
    meta = {"image_path": str(tmp_path / "sec.tif"), "shape": [200, 200], "dapi_channel": "0"}
    write_objects(tmp_path / "run" / "sec" / "predictions.json", "sec", "stagetool", {"tubules": [], "cells": cells},
                  meta)
    write_objects(tmp_path / "run" / "sec" / "objects.json", "sec", "stagetool", {"tubules": [], "cells": cells}, meta)
    write_edits(tmp_path / "run", [make_edit("retype_cell", "sec", 2, CELL_TYPES[3]),
                                   make_edit("delete_cell", "sec", 3)])
    (section,) = load_sections([tmp_path / "run"], "cells")
    assert [o.category for o in section.objects] == [CELL_TYPES[0], CELL_TYPES[3]]
    assert section.path == tmp_path / "sec.tif"
    with pytest.raises(UserError, match="hold no tubules"):
        load_sections([tmp_path / "run"], "tubules")


def test_a_short_time_limited_run_is_not_all_warmup():
    from app.pipelines.stagetool.train import lr_factor

    assert lr_factor(0, 200, 0.0) == pytest.approx(1 / 200)
    assert lr_factor(20, 200, 0.1) == pytest.approx(0.5 * (1 + np.cos(np.pi * 0.1)))  # 10% of the time: full rate
    assert lr_factor(199, 200, 0.001) == pytest.approx(1.0, abs=1e-4)  # a long run: the step warmup as before
    assert lr_factor(5000, 200, 1.0) == pytest.approx(0.0)


def test_the_models_that_made_a_run_are_its_fine_tune_start(tmp_path):
    from app.pipelines.stagetool.start import models_of_results

    run(train([], tmp_path / "a", tiny(), sections=drawn_sections("cells"), synthetic=True))
    card = load_model_card(tmp_path / "a")
    models = {"cells": card.model_id(), "tubules": {**card.model_id(), "weights_sha256": "0" * 64}}
    write_objects(tmp_path / "run" / "s" / "predictions.json", "s", "stagetool", {"tubules": [], "cells": []},
                  {"models": models})
    assert models_of_results(tmp_path / "run") == {"cells": str(tmp_path / "a")}  # changed weights: not offered
    with pytest.raises(UserError, match="no Stagetool predictions"):
        models_of_results(tmp_path / "a")


def test_cli_fine_tunes_on_a_corrected_results_folder(tmp_path, capsys):
    """`stagetool train cells RESULTS --init-from MODEL`: the run's edits applied, the start in the card."""
    from test_stagetool_section import draw_section

    run(train([], tmp_path / "a", tiny(), sections=drawn_sections("cells"), synthetic=True))
    image, truth, _ = draw_section(0)
    write_tiff(tmp_path / "sec.tif", image[0].astype(np.uint16), axes="YX")
    cells = [{"id": i + 1, "class": CELL_TYPES[1], "score": 0.5, "box": [float(v) for v in box],
              "centroid": [0.0, 0.0], "tubule_id": None} for i, box in enumerate(truth.cell_boxes)]
    meta = {"image_path": str(tmp_path / "sec.tif"), "shape": list(image.shape[1:]), "dapi_channel": 0}
    for name in ("predictions.json", "objects.json"):
        write_objects(tmp_path / "run" / "sec" / name, "sec", "stagetool", {"tubules": [], "cells": cells}, meta)
    write_edits(tmp_path / "run", [make_edit("retype_cell", "sec", i + 1, kind) for i, kind in enumerate(truth.cell_types)])
    code = main(["stagetool", "train", "cells", str(tmp_path / "run"), "--out", str(tmp_path / "b"), "--init-from",
                 str(tmp_path / "a"), "--epochs", "1", "--crop-size", "64", "--crops-per-epoch", "2", "--val-crops", "2",
                 "--val-fraction", "0", "--lr", "2e-4"])
    out, err = capsys.readouterr()
    assert code == 0, err
    card = json.loads((tmp_path / "b" / "card.json").read_text())
    assert card["training"]["start"]["kind"] == "fine-tuned" and "fine-tuned from model 'a'" in out
    counts = card["training"]["class_counts"]
    assert counts == {t: truth.cell_types.count(t) for t in CELL_TYPES if t in truth.cell_types}  # the corrected types


def test_a_section_read_from_a_file_knows_its_pixel_size(tmp_path):
    """Sections the GUI's trainer builds from corrected results carry no pixel size of their own: the file's is
    used, so "Train on my corrections" resamples training crops to the fine-tuned model's scale as the CLI does."""
    from app.pipelines.stagetool.dataset import CropSampler, Section

    write_tiff(tmp_path / "sec.tif", np.full((300, 300), 100, np.uint16), axes="YX", pixel_size_um=0.25)
    section = Section(name="sec", objects=[], path=tmp_path / "sec.tif")
    assert section.pixel_size_um == pytest.approx(0.25)
    assert CropSampler([section], "cells", 64, pixel_size_um=0.5).side(0) == 128
