"""Whole-section flow with an oracle network: tiling, rotations, seams, merging and assignment lose nothing.

The oracle "network" finds bright blobs by thresholding and reads their class from their
intensity, so it is exact and rotation-equivariant: whatever the section flow gets wrong (a box
rotated back to the wrong place, a cell kept twice on a seam, a tubule split in two, a cell
assigned to the wrong tubule) shows up as a difference from the drawn truth.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from scipy import ndimage

from app.core.errors import ImageError
from app.core.images import write_tiff
from app.core.jobs import run
from app.core.modelcard import ModelCard
from app.pipelines.stagetool.classes import CELL_TYPES, STAGES
from app.pipelines.stagetool import predict
from app.pipelines.stagetool.batch import write_section_outputs
from app.pipelines.stagetool.evaluate import SectionTruth, evaluate_section
from app.pipelines.stagetool.models import ModelConfig
from app.pipelines.stagetool.params import AnalyzeParams
from stagetool_testing import one_torch_thread  # noqa: F401  (autouse fixture)

SCALE = 1000.0  # raw intensity of 1.0


class Oracle(torch.nn.Module):
    """Thresholds a normalised tile: cells are blobs > 0.45 (class from intensity), tubules > 0.05 (stage)."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.transform = SimpleNamespace(min_size=(0,), max_size=0)
        self.roi_heads = SimpleNamespace(score_thresh=0.0)
        self.calls = 0

    def forward(self, images):
        self.calls += len(images)
        return [self._one(image[0].numpy()) for image in images]

    def _one(self, tile):
        if self.kind == "cells":
            labels, n = ndimage.label(tile > 0.45)
        else:
            labels, n = ndimage.label(ndimage.binary_fill_holes(tile > 0.05))
        boxes, classes, masks = [], [], []
        for index, slices in enumerate(ndimage.find_objects(labels), start=1):
            region = labels[slices] == index
            values = tile[slices][region]
            if self.kind == "cells":
                cls = int(np.clip(np.round((values.mean() - 0.5) / 0.05), 0, 8))
            else:
                body = values[(values > 0.05) & (values < 0.4)]
                cls = int(np.clip(np.round((np.median(body) - 0.1) / 0.05), 0, 4))
                mask = np.zeros(tile.shape, bool)
                mask[slices] = region
                masks.append(mask)
            boxes.append([slices[1].start, slices[0].start, slices[1].stop, slices[0].stop])
            classes.append(cls + 1)
        # the oracle is unsure (0.6) of metaphase plates (m2m), sure (0.99) of everything else
        scores = [0.6 if self.kind == "cells" and c == CELL_TYPES.index("m2m") + 1 else 0.99 for c in classes]
        out = {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
               "labels": torch.tensor(classes, dtype=torch.int64), "scores": torch.tensor(scores).reshape(-1)}
        if self.kind == "tubules":
            out["masks"] = torch.from_numpy(np.array(masks, np.float32).reshape(-1, 1, *tile.shape))
        return out


def oracle_model(kind: str, tile: int, downsample: int = 1) -> predict.LoadedModel:
    classes = list(STAGES if kind == "tubules" else CELL_TYPES)
    card = ModelCard(name=f"oracle-{kind}", pipeline=f"stagetool-{kind}", architecture="oracle", classes=classes,
                     weights_sha256=kind * 4)
    config = ModelConfig(kind, "tiny", len(classes), tile_size=tile, downsample=downsample)
    return predict.LoadedModel(card, Oracle(kind), config, torch.device("cpu"))


def draw_section(seed: int = 0):
    """Tubules (stage in their intensity) with cells (type in their intensity) and a marker channel."""
    rng = np.random.default_rng(seed)
    height, width = 420, 560
    dapi = np.zeros((height, width), np.float32)
    marker = np.zeros((height, width), np.float32)
    tubule_ids = np.zeros((height, width), np.int32)
    yy, xx = np.mgrid[:height, :width]
    centres = [(100, 100), (100, 290), (110, 470), (310, 140), (320, 400)]
    stages = {}
    cells_boxes, cells_types, cells_tubule = [], [], []
    for tid, (cy, cx) in enumerate(centres, start=1):
        stage = int(rng.integers(5))
        stages[tid] = STAGES[stage]
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= 85 ** 2
        dapi[disc] = 0.1 + 0.05 * stage
        tubule_ids[disc] = tid
        for _ in range(12):  # cells on a ring, away from each other
            pass
        angles = np.linspace(0, 2 * np.pi, 12, endpoint=False) + rng.uniform(0, 0.5)
        for angle in angles:
            radius = rng.uniform(25, 65)
            y, x = int(cy + radius * np.sin(angle)), int(cx + radius * np.cos(angle))
            box = (x - 4, y - 4, x + 5, y + 5)
            if any(not (b[2] + 2 < box[0] or box[2] + 2 < b[0] or b[3] + 2 < box[1] or box[3] + 2 < b[1])
                   for b in cells_boxes):
                continue
            kind = int(rng.integers(9))
            dapi[box[1]:box[3], box[0]:box[2]] = 0.5 + 0.05 * kind
            marker[box[1]:box[3], box[0]:box[2]] = 0.9 if kind == 0 else 0.05  # "SOX9": Sertoli only
            cells_boxes.append(box)
            cells_types.append(CELL_TYPES[kind])
            cells_tubule.append(tid)
    truth = SectionTruth("sec", tubule_ids, stages, np.array(cells_boxes, float), cells_types)
    return np.stack([dapi, marker]) * SCALE, truth, cells_tubule


@pytest.fixture
def section(tmp_path, monkeypatch):
    monkeypatch.setattr(predict, "intensity_range", lambda overview: (0.0, SCALE))
    image, truth, cell_tubules = draw_section()
    path = tmp_path / "sec.ome.tif"
    write_tiff(path, image.astype(np.uint16), axes="CYX", channel_names=["DAPI", "SOX9"], pixel_size_um=0.5)
    return path, truth, cell_tubules


@pytest.mark.parametrize("tta", ["off", "full", "adaptive"])
def test_oracle_section_is_reproduced_exactly(section, tmp_path, tta):
    path, truth, cell_tubules = section
    tubules, cells = oracle_model("tubules", 128, downsample=2), oracle_model("cells", 128)
    params = AnalyzeParams(tta=tta, overlap=48, batch_size=3, antibodies="SOX9=SOX9:400", map_scale=2, adaptive_block=32)
    doc = run(predict.analyze_section(path, tmp_path / "out", tubules, cells, params))
    found_cells = doc["layers"]["cells"]
    found_tubules = doc["layers"]["tubules"]
    # every cell once (no seam doubles, none lost), with its type, and in its own tubule
    assert len(found_cells) == len(truth.cell_types)
    truth_boxes = np.asarray(truth.cell_boxes)
    for cell in found_cells:
        distance = np.abs(truth_boxes - np.asarray(cell["box"])).max(axis=1)
        match = int(np.argmin(distance))
        assert distance[match] < 1e-3
        assert cell["class"] == truth.cell_types[match]
        tubule = next(t for t in found_tubules if t["id"] == cell["tubule_id"])
        truth_id = truth.tubule_labels[int(cell["centroid"][0]), int(cell["centroid"][1])]
        assert truth_id == cell_tubules[match]
        assert tubule["class"] == truth.tubule_stages[truth_id]
        if tta == "full" or (tta == "adaptive" and cell["class"] == "m2m"):
            assert cell["votes"] == 4
        elif tta == "adaptive":
            assert cell["votes"] in (1, 4)  # sure cells in a rotated block were voted too
    # five tubules, each staged right, even though no tile sees a whole tubule
    assert len(found_tubules) == 5
    assert all(t["n_masks"] > 1 for t in found_tubules)
    evaluation = evaluate_section(doc, truth)
    assert evaluation["stages"]["agreement"] == 1.0
    assert evaluation["cells"]["AP50"] == pytest.approx(100.0)
    assert evaluation["cells"]["mean_precision"] == 1.0 and evaluation["cells"]["mean_sensitivity"] == 1.0
    assert evaluation["tubules"]["pixel_accuracy"] > 0.97
    # antigen: only Sertoli cells light up the marker
    for cell in found_cells:
        assert (cell["antigen"]["SOX9"]["mean"] > 400) == (cell["class"] == "Sertoli")
    tiles = doc["meta"]["tiles"]
    n_tiles = tiles["cell_tiles_analysed"]
    if tta == "adaptive":  # only blocks around m2m cells were rotated (3 more passes each)
        n_m2m = truth.cell_types.count("m2m")
        assert 0 < tiles["cell_blocks_rotated"] and 0 < tiles["cell_tiles_rotated"] < n_tiles
        assert n_m2m <= tiles["cell_blocks_rotated"] <= 4 * n_m2m  # a cell in an overlap is seen by up to 4 tiles
        assert cells.net.calls == n_tiles + 3 * tiles["cell_blocks_rotated"]
    else:
        assert tiles["cell_tiles_rotated"] == (n_tiles if tta == "full" else 0)
        assert cells.net.calls == n_tiles * (4 if tta == "full" else 1)


def test_background_tiles_are_skipped_and_results_written(section, tmp_path):
    path, truth, _ = section
    cells = oracle_model("cells", 64)
    params = AnalyzeParams(tta="off", overlap=16, map_scale=2, min_tissue=0.05)
    run(predict.analyze_section(path, tmp_path / "out", oracle_model("tubules", 64, 2), cells, params))
    info = json.loads((tmp_path / "out" / predict.PREDICTIONS_FILE).read_text())["meta"]["tiles"]
    assert 0 < info["cell_tiles_analysed"] < info["cell_tiles"]  # the empty corners were skipped
    summary = write_section_outputs(tmp_path / "out")
    assert summary["n_cells"] == len(truth.cell_types)
    assert sum(summary["stage_counts"].values()) == 5
    assert (tmp_path / "out" / "sec.xlsx").exists() and (tmp_path / "out" / "cells.csv").exists()


def test_batch_is_resumable_and_a_bad_section_does_not_stop_it(section, tmp_path, monkeypatch):
    """Stagetool through the runner (its one loop, as every pipeline): failures recorded, reruns resume."""
    import dataclasses

    from app.batch import run_batch
    from app.core.edits import write_edits
    from app.pipelines import registry
    from app.pipelines.runner import clear_model_cache

    path, _, _ = section
    broken = tmp_path / "broken.tif"
    broken.write_bytes(path.read_bytes()[:4000])  # a truncated file
    out = tmp_path / "batch"
    values = {"tta": "off", "overlap": 32, "map_scale": 2}
    tubules, cells = oracle_model("tubules", 128, 2), oracle_model("cells", 128)
    oracles = dataclasses.replace(registry.get("stagetool"), models={},  # the oracles instead of model folders
                                  load=lambda folders, params: {"tubules": tubules, "cells": cells})
    monkeypatch.setitem(registry._REGISTRY, "stagetool", oracles)
    clear_model_cache()
    result = run_batch("stagetool", [path, broken], out, params=values)
    assert result["counts"]["done"] == 1 and result["counts"]["failed"] == 1
    assert json.loads((out / "run.json").read_text())["failed"].keys() == {"broken"}
    assert (out / "batch.xlsx").exists()
    calls = cells.net.calls
    # again: the finished section is skipped (reports rewritten with the edits), the broken one retried
    write_edits(out, [{"action": "exclude_tubule", "image": "sec", "id": 1, "value": True}])
    result = run_batch("stagetool", [path, broken], out, params=values)
    assert result["counts"]["skipped"] == 1 and result["counts"]["failed"] == 1 and cells.net.calls == calls
    summary = json.loads((out / "sec" / "summary.json").read_text())
    assert summary["n_excluded"] == 1 and summary["edits_applied"] == 1
    # a parameter that only changes reports (threads): still skipped; one that changes predictions: analysed again
    assert run_batch("stagetool", [path], out, params={**values, "threads": 1})["counts"]["skipped"] == 1
    result = run_batch("stagetool", [path], out, params={**values, "tta": "full"})
    assert result["counts"]["done"] == 1 and cells.net.calls > calls
    summary = json.loads((out / "sec" / "summary.json").read_text())
    assert summary["n_excluded"] == 1  # the edits stay applied to the new predictions


def test_missing_channel_is_a_clear_error(section, tmp_path):
    path, _, _ = section
    params = AnalyzeParams(antibodies="SALL4=SALL4")
    with pytest.raises(ImageError, match="no channel 'SALL4'"):
        run(predict.analyze_section(path, tmp_path / "o", oracle_model("tubules", 64), oracle_model("cells", 64), params))
    assert not (tmp_path / "o").exists()


def test_pooled_evaluation_sums_sections():
    from app.pipelines.stagetool.evaluate import cell_scores, pool_stages

    def stages(matrix):
        return {"confusion": {"matrix": matrix}}

    one = [[1, 0, 0, 0, 0, 1]] + [[0] * 6] * 4  # I-V: one agrees, one missed
    two = [[0] * 6, [0, 2, 0, 0, 0, 0], [0, 1, 0, 0, 0, 0], [0] * 6, [0] * 6]  # VI-VIII twice right, IX taken for VI-VIII
    pooled = pool_stages([stages(one), stages(two)])
    assert (pooled["n_tubules"], pooled["agree"], pooled["missed"]) == (5, 3, 1)
    assert pooled["agreement"] == pytest.approx(3 / 5)
    # cells: a perfect section and a section with one false positive pool to 2 TP + 1 FP for Sertoli
    gt = [{"boxes": np.array([[0, 0, 10, 10]], float), "labels": np.array([0])},
          {"boxes": np.array([[20, 20, 30, 30]], float), "labels": np.array([0])}]
    pred = [{"boxes": np.array([[0, 0, 10, 10]], float), "labels": np.array([0]), "scores": np.array([0.9])},
            {"boxes": np.array([[20, 20, 30, 30], [50, 50, 60, 60]], float), "labels": np.array([0, 0]),
             "scores": np.array([0.9, 0.4])}]
    scores = cell_scores(gt, pred)
    assert scores["per_class"]["Sertoli"]["precision"] == pytest.approx(2 / 3)
    assert scores["per_class"]["Sertoli"]["sensitivity"] == 1.0 and scores["n_predicted"] == 3
    strict = cell_scores(gt, pred, score_threshold=0.5)  # the weak false positive is cut
    assert strict["mean_precision"] == 1.0 and strict["n_predicted"] == 2


@pytest.mark.parametrize("size", [(2048, 2048), (3000, 1500), (700, 2500)])
def test_model_windows_stay_inside_the_section_and_hold_their_cores(size):
    """Networks trained on crops inside sections never see a band of padding at the edges (a padded
    edge tile made the tubule model draw one mask across two tubules); cores still partition it."""
    height, width = size
    config = ModelConfig("tubules", "tiny", 6, tile_size=512, downsample=2)
    owned = np.zeros(size, np.int32)
    for tile in predict.tile_windows(height, width, config, overlap=128):
        y0, x0, y1, x1 = predict.window_of(tile, config)
        assert (y1 - y0, x1 - x0) == (1024, 1024)
        assert y0 >= 0 and x0 >= 0
        assert y1 <= height or y0 == 0  # past the edge only when the section is smaller than a tile
        assert x1 <= width or x0 == 0
        cy0, cx0, cy1, cx1 = tile.core
        assert y0 <= cy0 and cy1 <= y1 and x0 <= cx0 and cx1 <= x1
        owned[cy0:cy1, cx0:cx1] += 1
    assert (owned == 1).all()


def test_one_pass_keeps_cells_from_single_score_and_rotations_from_cell_score(section, tmp_path):
    """The default is one pass (tta off): without a vote to confirm them, cells count from single_score
    (0.45); with rotations each pass is cut at cell_score.  The oracle gives m2m 0.6, the rest 0.99."""
    path, truth, _ = section
    tubules, cells = oracle_model("tubules", 128, downsample=2), oracle_model("cells", 128)

    def m2m_found(**changes):
        params = AnalyzeParams(overlap=48, map_scale=2, **changes)
        doc = run(predict.analyze_section(path, tmp_path / str(len(changes)) / "_".join(changes), tubules, cells,
                                          params))
        return sum(c["class"] == "m2m" for c in doc["layers"]["cells"])

    assert AnalyzeParams().tta == "off" and AnalyzeParams().single_score < AnalyzeParams().cell_score
    n_m2m = truth.cell_types.count("m2m")
    assert n_m2m > 0 and m2m_found() == n_m2m
    assert m2m_found(single_score=0.7) == 0
    assert m2m_found(tta="full", single_score=0.7) == n_m2m
    assert m2m_found(tta="full", cell_score=0.7) == 0


@pytest.mark.parametrize("match", [True, False])
def test_sections_are_seen_at_the_models_pixel_size(section, tmp_path, match):
    """Models trained at 0.625 um see a 0.5 um section resampled by 1.25; results stay in section pixels."""
    path, truth, _ = section
    tubules, cells = oracle_model("tubules", 128, downsample=2), oracle_model("cells", 128)
    tubules.card.pixel_size_um = cells.card.pixel_size_um = 0.625
    params = AnalyzeParams(tta="off", overlap=48, batch_size=3, map_scale=2, match_pixel_size=match)
    messages = []
    doc = run(predict.analyze_section(path, tmp_path / "out", tubules, cells, params),
              lambda p: messages.append(p.message or ""))
    assert any("seen at the model's 0.625 µm" in m for m in messages) == match
    tiles = doc["meta"]["tiles"]
    assert (tiles["cell_step"], tiles["tubule_step"]) == ((1.25, 2.5) if match else (1.0, 2.0))
    assert tiles["cell_tile_px"] == (160 if match else 128)
    found = np.array([c["box"] for c in doc["layers"]["cells"]])
    truth_boxes = np.asarray(truth.cell_boxes)
    assert len(found) == len(truth_boxes)
    for box in truth_boxes:  # each drawn cell found where it is, at its size, to within a resampled pixel
        assert np.abs(found - box).max(axis=1).min() <= 1.5
    assert evaluate_section(doc, truth)["stages"]["agreement"] == 1.0


def test_training_crops_are_resampled_to_the_models_pixel_size():
    """A 0.25 um section trains a 0.5 um model at half size: boxes and masks shrink with the pixels."""
    from app.core.annotations import AnnotatedObject
    from app.pipelines.stagetool.dataset import CropSampler, Section

    image = np.zeros((256, 256), np.float32)
    image[100:140, 60:100] = 1.0
    cell = AnnotatedObject(id=1, category="Sertoli", box=(60.0, 100.0, 100.0, 140.0))
    section = Section(name="s", array=image, objects=[cell], pixel_size_um=0.25)
    sampler = CropSampler([section], "cells", 64, pixel_size_um=0.5, augment=False)
    assert sampler.side(0) == 128
    crop = sampler.crop(0, (80, 40, 208, 168))
    assert crop.image.shape == (64, 64)
    np.testing.assert_allclose(crop.boxes, [[10, 10, 30, 30]])
    plain = CropSampler([section], "cells", 64, augment=False)  # no model pixel size: the section's own
    assert plain.side(0) == 64
    np.testing.assert_allclose(plain.crop(0, (80, 40, 144, 104)).boxes, [[20, 20, 60, 60]])
