"""Stagetool training: crops and their targets, augmentation, COCO input, checkpoints and resume, the card."""

from __future__ import annotations

import json

import numpy as np
import pytest

from app.cli import main
from app.core.annotations import AnnotatedObject, ImageAnnotations, labels_to_objects, write_coco
from app.core.images import write_tiff
from app.core.jobs import run
from app.core.modelcard import load_model_card
from app.pipelines.stagetool.classes import CELL_TYPES, STAGES
from app.pipelines.stagetool.dataset import Crop, CropSampler, Section, augment
from app.pipelines.stagetool.params import TrainParams
from app.pipelines.stagetool.train import cell_metrics, train
from stagetool_testing import one_torch_thread  # noqa: F401  (autouse fixture)
from test_stagetool_section import draw_section


def drawn_sections(kind: str, seeds=(0, 1)) -> list[Section]:
    sections = []
    for seed in seeds:
        image, truth, _ = draw_section(seed)
        if kind == "tubules":
            objects = [AnnotatedObject(id=o.id, category=truth.tubule_stages[o.id], mask=o.mask, mask_offset=o.mask_offset)
                       for o in labels_to_objects(truth.tubule_labels, keep_masks=True)]
        else:
            objects = [AnnotatedObject(id=i + 1, category=c, box=tuple(b))
                       for i, (b, c) in enumerate(zip(truth.cell_boxes, truth.cell_types))]
        sections.append(Section(name=f"s{seed}", objects=objects, array=image[0]))
    return sections


def test_crops_carry_the_objects_they_show():
    sampler = CropSampler(drawn_sections("cells"), "cells", crop_size=128, class_balanced=True)
    section = sampler.sections[0]
    box = section.objects[0].box
    window = (int(box[1]) - 20, int(box[0]) - 30, int(box[1]) - 20 + 128, int(box[0]) - 30 + 128)
    crop = sampler.crop(0, window)
    assert crop.image.shape == (128, 128)
    assert [30.0, 20.0] == pytest.approx(crop.boxes[np.argmin(np.abs(crop.boxes[:, :2] - [30, 20]).sum(1)), :2].tolist())
    assert crop.labels.min() >= 1 and crop.labels.max() <= len(CELL_TYPES)
    # the drawn cell is bright in the crop where its box says
    x0, y0, x1, y1 = crop.boxes[0].astype(int)
    assert crop.image[y0:y1, x0:x1].mean() > 0.4
    tubules = CropSampler(drawn_sections("tubules"), "tubules", crop_size=64, downsample=2)
    crop = tubules.crop(0, (0, 0, 128, 128))
    assert crop.masks.shape[1:] == (64, 64) and len(crop.masks) == len(crop.boxes) == len(crop.labels) >= 1
    for mask, box in zip(crop.masks, crop.boxes):
        rows, cols = np.nonzero(mask)
        assert (cols.min(), rows.min(), cols.max() + 1, rows.max() + 1) == tuple(box.astype(int))


def test_augmentation_moves_boxes_with_the_image():
    rng = np.random.default_rng(3)
    image = np.zeros((64, 64), np.float32)
    image[5:15, 40:60] = 1.0
    mask = (image > 0)[None]
    crop = Crop(image, np.array([[40, 5, 60, 15]], np.float32), np.array([2]), mask)
    for _ in range(8):
        out = augment(crop, rng)
        x0, y0, x1, y1 = out.boxes[0].astype(int)
        assert out.masks[0, y0:y1, x0:x1].all() and out.masks[0].sum() == 200
        assert out.image[y0:y1, x0:x1].mean() > out.image.mean()


def test_class_balanced_sampling_favours_rare_types():
    sampler = CropSampler(drawn_sections("cells"), "cells", crop_size=64, class_balanced=True)
    rng = np.random.default_rng(0)
    counts = sampler.class_counts
    rare = min(counts, key=counts.get)
    hits = 0
    for _ in range(200):
        s, (y0, x0, y1, x1) = sampler.random_window(rng)
        boxes = sampler._boxes[s]
        inside = (boxes[:, 0] >= x0) & (boxes[:, 2] <= x1) & (boxes[:, 1] >= y0) & (boxes[:, 3] <= y1)
        hits += any(sampler.sections[s].objects[i].category == rare for i in np.flatnonzero(inside))
    share = counts[rare] / sum(counts.values())
    assert hits / 200 > 2 * share  # seen far more often than its share of the objects


def test_cell_metrics_of_perfect_predictions():
    crop = Crop(np.zeros((32, 32), np.float32), np.array([[1, 1, 9, 9], [12, 12, 20, 20]], np.float32), np.array([1, 3]))
    outputs = [{"boxes": crop.boxes, "labels": crop.labels - 1, "scores": np.array([0.9, 0.8])}]
    metrics = cell_metrics([crop], outputs)
    assert metrics["AP50"] == pytest.approx(100.0) and metrics["mean_precision"] == 1.0


@pytest.mark.slow
def test_train_writes_a_card_and_resumes(tmp_path):
    params = TrainParams(kind="tubules", backbone="tiny", crop_size=64, downsample=2, epochs=1, crops_per_epoch=4,
                         batch_size=2, val_crops=2, val_fraction=0.5, half=True)
    card = run(train([], tmp_path / "m", params, sections=drawn_sections("tubules"), data_description="drawn sections",
                     synthetic=True))
    assert card.pipeline == "stagetool-tubules" and card.classes == list(STAGES)
    assert card.weights_dtype == "float16" and card.extra["model"]["backbone"] == "tiny"
    assert "synthetic" in card.extra["note"] and "from scratch" in card.training["pretraining"]
    assert set(card.metrics["val"]) >= {"data", "pixel_accuracy", "mean_iou"}
    assert (tmp_path / "m" / "checkpoint.pt").exists()
    params.epochs = 2
    card = run(train([], tmp_path / "m", params, sections=drawn_sections("tubules"), resume=True))
    assert [h["epoch"] for h in card.training["history"]] == [1, 2]
    assert load_model_card(tmp_path / "m").training["epochs_done"] == 2


def test_cli_trains_cells_from_coco(tmp_path, capsys):
    image, truth, _ = draw_section(0)
    write_tiff(tmp_path / "sec.tif", image[0].astype(np.uint16), axes="YX")
    objects = [AnnotatedObject(id=i + 1, category=c, box=tuple(b)) for i, (b, c) in enumerate(zip(truth.cell_boxes,
                                                                                                  truth.cell_types))]
    write_coco(tmp_path / "cells.json", [ImageAnnotations("sec.tif", *image.shape[1:], objects)], list(CELL_TYPES))
    code = main(["stagetool", "train", "cells", str(tmp_path / "cells.json"), "--out", str(tmp_path / "model"),
                 "--backbone", "tiny", "--epochs", "1", "--crop-size", "64", "--crops-per-epoch", "2",
                 "--val-crops", "2", "--val-fraction", "0"])
    out, err = capsys.readouterr()
    assert code == 0, err
    card = json.loads((tmp_path / "model" / "card.json").read_text())
    assert card["pipeline"] == "stagetool-cells" and "AP50" in card["metrics"]["val"]
    assert card["training"]["class_counts"] == {t: truth.cell_types.count(t) for t in CELL_TYPES if t in truth.cell_types}


def test_background_batches_are_the_same_crops_as_inline_ones():
    from app.pipelines.stagetool.train import batches

    sampler = CropSampler(drawn_sections("cells"), "cells", crop_size=64)
    inline = batches(sampler, np.random.default_rng(5), 3, threads=0)
    threaded = batches(sampler, np.random.default_rng(5), 3, threads=2)
    for _ in range(3):
        a, b = next(inline), next(threaded)
        assert len(a) == len(b) == 3
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x.image, y.image)
            np.testing.assert_array_equal(x.boxes, y.boxes)
    threaded.close()


def test_given_validation_sections_are_held_out(tmp_path):
    params = TrainParams(kind="cells", backbone="tiny", crop_size=64, epochs=1, crops_per_epoch=2, batch_size=2,
                         val_crops=2, half=True)
    sections = drawn_sections("cells", seeds=(0, 1, 2))
    card = run(train([], tmp_path / "m", params, sections=sections[:2], val_sections=sections[2:],
                     data_description="drawn", synthetic=True))
    assert card.training["sections"] == ["s0", "s1", "s2"] and card.training["steps"] == 1
    assert "held-out sections" in card.metrics["val"]["data"]


def test_best_epoch_score_breaks_ties_by_a_second_metric():
    from app.pipelines.stagetool.train import validation_score

    nothing_found = {"mean_f1": 0.0, "AP50": 0.03, "mean_precision": float("nan")}
    nearly = {"mean_f1": 0.0, "AP50": 1.5}
    assert validation_score("cells", nearly) > validation_score("cells", nothing_found)
    assert validation_score("cells", {"mean_f1": 0.01, "AP50": 0.0}) > validation_score("cells", {"mean_f1": 0.0, "AP50": 99.0})
    assert validation_score("tubules", {"mean_iou": 0.2, "mean_accuracy": 0.1}) > \
        validation_score("tubules", {"mean_iou": 0.1999, "mean_accuracy": 0.0}) > validation_score("tubules", {"mean_iou": None})


def test_a_backbone_can_start_from_another_stagetool_model(tmp_path):
    import torch

    from app.core.errors import ModelError
    from app.core.modelcard import ModelCard, save_model
    from app.pipelines.stagetool.models import build_model, default_config
    from app.pipelines.stagetool.train import init_backbone

    torch.manual_seed(0)
    cells = build_model(default_config("cells", "tiny", tile_size=64))
    save_model(tmp_path / "cells", ModelCard(name="c", pipeline="stagetool-cells", architecture="t",
                                             classes=list(CELL_TYPES)), cells.state_dict())
    tubules = build_model(default_config("tubules", "tiny", tile_size=64))
    note = init_backbone(tubules, tmp_path / "cells")
    assert "'c'" in note
    key = "backbone.body.conv1.weight"
    torch.testing.assert_close(tubules.state_dict()[key], cells.state_dict()[key])
    other = build_model(default_config("tubules", "lite-s", tile_size=64))
    with pytest.raises(ModelError, match="does not fit"):
        init_backbone(other, tmp_path / "cells")
