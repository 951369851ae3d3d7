"""Tests for app.core.metrics: hand-computed cases, edge cases, and cross-checks (pycocotools, real labels)."""

from __future__ import annotations

import contextlib
import io
import math

import numpy as np
import pytest
from scipy import ndimage as ndi

from app.core import metrics as M
from app.core.metrics.instances import assign_matches

# --------------------------------------------------------------------------------------------
# semantic
# --------------------------------------------------------------------------------------------


def test_confusion_matrix_counts_and_ignores_255():
    truth = np.array([[0, 0, 1, 1], [2, 2, 255, 1]])
    pred = np.array([[0, 1, 1, 1], [2, 0, 2, 1]])
    cm = M.confusion_matrix(truth, pred, 3)
    # pixel by pixel (truth -> pred): 0->0, 0->1, 1->1, 1->1, 2->2, 2->0, (255 ignored), 1->1
    expected = np.array([[1, 1, 0],
                         [0, 3, 0],
                         [1, 0, 1]])
    np.testing.assert_array_equal(cm, expected)


def test_confusion_matrix_rejects_out_of_range_prediction_and_shape_mismatch():
    with pytest.raises(ValueError):
        M.confusion_matrix(np.array([0, 1]), np.array([0, 3]), 3)
    with pytest.raises(ValueError):
        M.confusion_matrix(np.zeros((2, 2), int), np.zeros((2, 3), int), 3)


def test_semantic_scores_hand_computed():
    cm = np.array([[1, 1, 0, 0],
                   [0, 3, 0, 0],
                   [1, 0, 1, 0],
                   [0, 0, 0, 0]])  # class 3 absent from truth and prediction
    s = M.semantic_scores(cm)
    # t = [2, 3, 2, 0], p = [2, 4, 1, 0], diag = [1, 3, 1, 0], total 7
    assert s["pixel_accuracy"] == pytest.approx(5 / 7)
    # accuracy per class: 1/2, 3/3, 1/2 -> mean 2/3 (class 3 excluded)
    assert s["mean_accuracy"] == pytest.approx((0.5 + 1 + 0.5) / 3)
    # IoU: 1/(2+2-1)=1/3, 3/(3+4-3)=3/4, 1/(2+1-1)=1/2
    iou = [1 / 3, 3 / 4, 1 / 2]
    assert s["per_class_iou"][:3] == pytest.approx(iou)
    assert math.isnan(s["per_class_iou"][3]) and math.isnan(s["per_class_accuracy"][3])
    assert s["mean_iou"] == pytest.approx(sum(iou) / 3)
    # fw-IoU = 2/7 * 1/3 + 3/7 * 3/4 + 2/7 * 1/2
    assert s["fw_iou"] == pytest.approx(2 / 7 / 3 + 3 / 7 * 3 / 4 + 2 / 7 / 2)
    assert s["classes_present"] == [0, 1, 2]


def test_semantic_scores_class_only_predicted_counts_in_miou_not_in_mean_accuracy():
    cm = np.array([[2, 2],
                   [0, 0]])  # class 1 never true, predicted twice
    s = M.semantic_scores(cm)
    # t0 = 4, n00 = 2 -> acc0 = 0.5; IoU0 = 2/(4+2-2) = 0.5; IoU1 = 0/(0+2-0) = 0
    assert s["mean_accuracy"] == pytest.approx(0.5)
    assert s["mean_iou"] == pytest.approx(0.25)
    assert s["fw_iou"] == pytest.approx(0.5)  # class 1 has weight 0


def test_semantic_scores_of_no_pixels_are_nan():
    s = M.semantic_scores(np.zeros((3, 3), int))
    assert all(math.isnan(s[k]) for k in ("pixel_accuracy", "mean_accuracy", "mean_iou", "fw_iou"))


# --------------------------------------------------------------------------------------------
# instances
# --------------------------------------------------------------------------------------------


def split_and_missed():
    """Truth: two 4x4 squares; prediction: the first split into two 4x2 halves, the second missed."""
    truth = np.zeros((4, 10), np.uint16)
    truth[:, 0:4] = 1
    truth[:, 6:10] = 2
    pred = np.zeros((4, 10), np.uint16)
    pred[:, 0:2] = 1
    pred[:, 2:4] = 2
    return truth, pred


def test_split_and_missed_object_iou_exactly_at_threshold():
    truth, pred = split_and_missed()
    m = M.match_instances(truth, pred)
    # each half: intersection 8, union 16 + 8 - 8 = 16 -> IoU exactly 0.5
    np.testing.assert_allclose(m.iou_matrix(), [[0.5, 0.5], [0.0, 0.0]])
    s = M.instance_scores([m])
    # at 0.5 only one half may match truth 1 (one-to-one): TP 1, FP 1 (other half), FN 1 (truth 2)
    assert (s["tp"], s["fp"], s["fn"]) == (1, 1, 1)
    assert s["AP50"] == pytest.approx(1 / 3)
    assert s["precision"] == s["recall"] == s["f1"] == pytest.approx(0.5)
    # at 0.6 nothing matches: TP 0, FP 2, FN 2 -> AP 0
    assert s["AP60"] == s["AP90"] == 0.0
    assert s["n_true"] == s["n_pred"] == 2 and s["n_images"] == 1


def test_matching_is_optimal_not_greedy():
    # one row of pixels: t1 = [0, 10), t2 = [10, 30); p1 = [0, 3), p2 = [3, 17)
    truth = np.zeros((1, 30), np.int32)
    truth[0, :10], truth[0, 10:30] = 1, 2
    pred = np.zeros((1, 30), np.int32)
    pred[0, :3], pred[0, 3:17] = 1, 2
    m = M.match_instances(truth, pred)
    # IoU(t1,p1) = 3/10; IoU(t1,p2) = 7/(10+14-7) = 7/17 = 0.412; IoU(t2,p2) = 7/(20+14-7) = 7/27 = 0.259
    np.testing.assert_allclose(m.iou_matrix(), [[3 / 10, 7 / 17], [0, 7 / 27]])
    # greedy by IoU would take (t1, p2) first and leave 1 match; the optimum at 0.25 has 2: (t1,p1), (t2,p2)
    s = M.instance_scores([m], thresholds=(0.25,))
    assert s["AP25"] == 1.0
    t_ids, p_ids, ious = m.matches(0.25)
    assert sorted(zip(t_ids.tolist(), p_ids.tolist())) == [(1, 1), (2, 2)]


def test_empty_truth_and_or_prediction():
    empty = np.zeros((5, 5), np.uint16)
    one = empty.copy()
    one[1:3, 1:3] = 7
    both_empty = M.instance_scores([(empty, empty)])
    assert both_empty["AP50"] == both_empty["precision"] == both_empty["recall"] == both_empty["f1"] == 1.0
    only_pred = M.instance_scores([(empty, one)])  # TP 0, FP 1, FN 0
    assert (only_pred["AP50"], only_pred["precision"], only_pred["recall"], only_pred["f1"]) == (0.0, 0.0, 1.0, 0.0)
    only_truth = M.instance_scores([(one, empty)])  # TP 0, FP 0, FN 1
    assert (only_truth["AP50"], only_truth["precision"], only_truth["recall"], only_truth["f1"]) == (0.0, 1.0, 0.0, 0.0)
    nothing = M.instance_scores([])
    assert nothing["n_images"] == 0 and nothing["AP50"] == 1.0


def test_pooled_scores_sum_counts_over_images_and_per_image_variant():
    truth, pred = split_and_missed()  # TP 1, FP 1, FN 1 at 0.5
    perfect = (truth, truth)  # TP 2
    pooled = M.instance_scores([(truth, pred), perfect])
    # pooled: TP 3, FP 1, FN 1 -> AP50 = 3/5 (not the mean of 1/3 and 1)
    assert pooled["AP50"] == pytest.approx(3 / 5)
    assert pooled["n_images"] == 2
    rows = M.instance_scores_per_image([(truth, pred), perfect])
    assert [r["AP50"] for r in rows] == pytest.approx([1 / 3, 1.0])
    assert [r["image"] for r in rows] == [0, 1]


def test_match_instances_with_large_sparse_ids_equals_compact_ids():
    truth, pred = split_and_missed()
    big_t = np.where(truth > 0, truth.astype(np.int64) * 1_000_000_007, 0)  # beyond a lookup table
    big_p = np.where(pred > 0, pred.astype(np.uint32) + 70_000, 0).astype(np.uint32)
    a, b = M.match_instances(truth, pred), M.match_instances(big_t, big_p)
    np.testing.assert_allclose(a.iou_matrix(), b.iou_matrix())
    assert b.truth_ids.tolist() == [1_000_000_007, 2_000_000_014]
    assert b.matches(0.5)[1].tolist()[0] in (70_001, 70_002)


def test_match_instances_rejects_bad_input():
    with pytest.raises(ValueError):
        M.match_instances(np.zeros((3, 3), float), np.zeros((3, 3), float))
    with pytest.raises(ValueError):
        M.match_instances(np.zeros((3, 3), int), np.zeros((3, 4), int))


def erode_labels(labels: np.ndarray, radius: int) -> np.ndarray:
    """Per-label binary erosion by a disk: a pixel stays when its whole disk neighbourhood has its label."""
    y, x = np.ogrid[-radius:radius + 1, -radius:radius + 1]
    disk = x * x + y * y <= radius * radius
    same = ndi.minimum_filter(labels, footprint=disk) == ndi.maximum_filter(labels, footprint=disk)
    return np.where(same, labels, 0).astype(labels.dtype)


def test_stardist_mask_against_itself_and_eroded(shared_data):
    tifffile = pytest.importorskip("tifffile")
    path = shared_data / "stardist-sample" / "mask2d.tif"
    if not path.is_file():
        pytest.skip(f"{path} not present")
    truth = tifffile.imread(path)
    self_scores = M.instance_scores([(truth, truth)])
    assert self_scores["n_true"] == 125
    assert all(self_scores[f"AP{t}"] == 1.0 for t in (50, 60, 70, 80, 90))

    eroded = erode_labels(truth, 2)
    scores = M.instance_scores([(truth, eroded)])
    # An eroded object lies inside its own truth object only, so its IoU is area(eroded) / area(truth);
    # objects eroded away are misses.  Count TP/FP/FN from areas alone and compare.
    a_t = np.bincount(truth.ravel())
    a_e = np.bincount(eroded.ravel(), minlength=a_t.size)
    ids = np.flatnonzero(a_t[1:]) + 1
    ratio = a_e[ids] / a_t[ids]
    for t in (0.5, 0.6, 0.7, 0.8, 0.9):
        tp = int((ratio >= t).sum())
        fp = int(((ratio > 0) & (ratio < t)).sum())
        fn = ids.size - tp
        assert scores[f"AP{round(t * 100)}"] == pytest.approx(tp / (tp + fp + fn))
    # nuclei here have a radius of ~12 px: eroding 2 px keeps ~(10/12)^2 = 0.69 of the area, so no
    # object reaches IoU 0.8, while most pass 0.5
    assert scores["AP80"] == scores["AP90"] == 0.0
    assert scores["AP50"] > 0.8
    print("\nmask2d vs disk(2)-eroded:", {k: round(v, 4) if isinstance(v, float) else v for k, v in scores.items()})


# --------------------------------------------------------------------------------------------
# boxes
# --------------------------------------------------------------------------------------------


def test_box_iou_hand_computed():
    a = np.array([[0, 0, 10, 10]])
    b = np.array([[5, 0, 15, 10], [20, 20, 30, 30], [0, 0, 10, 10]])
    # overlap 5 x 10 = 50, union 100 + 100 - 50 = 150 -> 1/3; disjoint 0; same box 1
    np.testing.assert_allclose(M.box_iou(a, b), [[1 / 3, 0.0, 1.0]])
    assert M.box_iou(np.zeros((0, 4)), b).shape == (0, 3)


def test_box_ap_hand_computed():
    gt = [{"boxes": [[0, 0, 10, 10], [20, 0, 30, 10]], "labels": [0, 0]}]
    pred = [{"boxes": [[0, 0, 10, 10], [50, 50, 60, 60], [20, 0, 30, 10]], "labels": [0, 0, 0],
             "scores": [0.9, 0.8, 0.7]}]
    # by score: hit, miss, hit -> recall 0.5, 0.5, 1.0; precision 1, 1/2, 2/3 -> envelope 1, 2/3, 2/3
    # 101 recall points: 0.00..0.50 (51 points) -> 1.0; 0.51..1.00 (50 points) -> 2/3
    expected = (51 * 1.0 + 50 * 2 / 3) / 101
    assert M.box_ap(gt, pred, 0.5) == pytest.approx(expected)
    assert M.box_ap_per_class(gt, pred, 0.5) == {0: pytest.approx(expected)}


def test_box_ap_classes_and_empty_ground_truth():
    gt = [{"boxes": [[0, 0, 10, 10]], "labels": [1]}]
    pred = [{"boxes": [[0, 0, 10, 10], [0, 0, 10, 10]], "labels": [1, 2], "scores": [0.5, 0.9]}]
    # class 2 has no ground truth: ignored (COCO drops it); class 1 found perfectly
    assert M.box_ap(gt, pred) == pytest.approx(1.0)  # COCO adds eps to precision denominators
    # IoU exactly 0.5 counts (5x10 overlap / 10x10 + 5x10 - 50 = 100 -> 0.5)
    half = [{"boxes": [[0, 0, 5, 10]], "labels": [1], "scores": [1.0]}]
    assert M.box_ap(gt, half, 0.5) == pytest.approx(1.0) and M.box_ap(gt, half, 0.75) == 0.0
    empty_gt = [{"boxes": np.zeros((0, 4)), "labels": []}]
    assert math.isnan(M.box_ap(empty_gt, pred[:1]))
    with pytest.raises(ValueError):
        M.box_ap(gt, [])
    with pytest.raises(ValueError):
        M.box_ap(gt, [{"boxes": [[0, 0, 10, 10]], "labels": [1]}])  # no scores


def random_detection_set(seed: int, n_images: int = 6, n_classes: int = 3):
    """Random truth boxes and jittered, relabelled and extra predictions, one image with >100 detections."""
    rng = np.random.default_rng(seed)

    def boxes(n):
        xy = rng.uniform(0, 200, (n, 2))
        return np.c_[xy, xy + rng.uniform(5, 40, (n, 2))]

    gts, preds = [], []
    for i in range(n_images):
        n = int(rng.integers(0, 15)) if i else 60
        g, gl = boxes(n), rng.integers(0, n_classes, n)
        j = g + rng.normal(0, 2, g.shape)
        j = np.c_[np.minimum(j[:, :2], j[:, 2:] - 1), np.maximum(j[:, 2:], j[:, :2] + 1)]
        jl = np.where(rng.random(n) < 0.8, gl, rng.integers(0, n_classes, n))
        k = int(rng.integers(0, 8)) if i else 300  # image 0: > 100 detections per class
        p, pl = np.r_[j, boxes(k)], np.r_[jl, rng.integers(0, n_classes, k)]
        gts.append({"boxes": g, "labels": gl})
        preds.append({"boxes": p, "labels": pl, "scores": rng.random(len(pl))})
    return gts, preds


def coco_eval_stats(gts, preds, n_classes):
    """pycocotools' AP50 and AP75 of the same boxes."""
    pytest.importorskip("pycocotools")
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    def xywh(b):
        return [float(b[0]), float(b[1]), float(b[2] - b[0]), float(b[3] - b[1])]

    anns = []
    for i, g in enumerate(gts):
        for b, lab in zip(g["boxes"], g["labels"]):
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": int(lab) + 1, "bbox": xywh(b),
                         "area": xywh(b)[2] * xywh(b)[3], "iscrowd": 0})
    coco = COCO()
    coco.dataset = {"images": [{"id": i + 1, "width": 300, "height": 300} for i in range(len(gts))],
                    "annotations": anns, "categories": [{"id": c + 1, "name": str(c)} for c in range(n_classes)]}
    results = [{"image_id": i + 1, "category_id": int(lab) + 1, "bbox": xywh(b), "score": float(s)}
               for i, p in enumerate(preds) for b, lab, s in zip(p["boxes"], p["labels"], p["scores"])]
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
        evaluator = COCOeval(coco, coco.loadRes(results), "bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return evaluator.stats[1], evaluator.stats[2]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_box_ap_agrees_with_pycocotools(seed):
    gts, preds = random_detection_set(seed)
    ap50, ap75 = coco_eval_stats(gts, preds, 3)
    assert 0.05 < ap50 < 0.95 and ap75 > 0.01  # a non-trivial case
    assert M.box_ap(gts, preds, 0.5) == pytest.approx(ap50, abs=1e-6)
    assert M.box_ap(gts, preds, 0.75) == pytest.approx(ap75, abs=1e-6)


def test_detection_scores_hand_computed():
    gt = [{"boxes": [[0, 0, 10, 10], [20, 0, 30, 10], [40, 0, 50, 10]], "labels": [0, 1, 1]}]
    pred = [{"boxes": [[0, 0, 10, 10],      # A: matches truth 0 (class 0), right class
                       [20, 0, 30, 10],     # B: matches truth 1 (class 1), predicted as class 0
                       [80, 80, 90, 90],    # D: no truth -> false positive of class 1
                       [40, 0, 50, 10]],    # below the score threshold: dropped, so truth 2 is missed
             "labels": [0, 0, 1, 1], "scores": [0.9, 0.8, 0.7, 0.1]}]
    s = M.detection_scores(gt, pred, n_classes=3, iou=0.5, score_threshold=0.5)
    # rows truth (0, 1, 2, background), columns prediction (0, 1, 2, background)
    assert s["confusion"] == [[1, 0, 0, 0],
                              [1, 0, 0, 1],
                              [0, 0, 0, 0],
                              [0, 1, 0, 0]]
    # class 0: TP 1, predicted 2, true 1 -> precision 1/2, sensitivity 1, F1 2/3
    # class 1: TP 0, predicted 1, true 2 -> 0, 0, 0; class 2 absent -> NaN, excluded from means
    assert s["precision"][:2] == pytest.approx([0.5, 0.0])
    assert s["sensitivity"][:2] == pytest.approx([1.0, 0.0])
    assert s["f1"][:2] == pytest.approx([2 / 3, 0.0])
    assert all(math.isnan(s[k][2]) for k in ("precision", "sensitivity", "f1"))
    assert s["mean_precision"] == pytest.approx(0.25)
    assert s["mean_sensitivity"] == pytest.approx(0.5)
    assert (s["tp"], s["fp"], s["fn"]) == ([1, 0, 0], [1, 1, 0], [0, 2, 0])
    # without n_classes: largest label + 1 = 2 classes, same numbers for classes 0 and 1
    s2 = M.detection_scores(gt, pred)
    assert len(s2["confusion"]) == 3 and s2["mean_precision"] == pytest.approx(0.25)


# --------------------------------------------------------------------------------------------
# pixel AUROC
# --------------------------------------------------------------------------------------------


def test_pixel_auroc_with_ties_hand_computed():
    # positive/negative pairs: (0.9>0.5) 1, (0.9>0.1) 1, (0.5=0.5) 1/2, (0.5>0.1) 1 -> 3.5 / 4
    assert M.pixel_auroc([1, 1, 0, 0], [0.9, 0.5, 0.5, 0.1]) == pytest.approx(0.875)
    assert M.pixel_auroc([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4]) == 1.0
    assert math.isnan(M.pixel_auroc([1, 1], [0.2, 0.3]))


def test_pixel_auroc_equals_pair_counting():
    rng = np.random.default_rng(3)
    truth = rng.random((20, 15)) < 0.3
    scores = rng.integers(0, 6, truth.shape) / 5 + 0.3 * truth  # many ties
    pos, neg = scores[truth], scores[~truth]
    brute = ((pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()) / (pos.size * neg.size)
    assert M.pixel_auroc(truth, scores) == pytest.approx(brute, abs=1e-12)


def test_sparse_box_pairs_equal_the_dense_matrix():
    rng = np.random.default_rng(3)
    xy = rng.uniform(0, 300, (700, 2))
    a = np.hstack([xy, xy + rng.uniform(2, 30, (700, 2))])
    xy = rng.uniform(0, 300, (500, 2))
    b = np.hstack([xy, xy + rng.uniform(2, 30, (500, 2))])
    dense = M.box_iou(a, b)
    for threshold in (0.0, 0.3):
        rows, cols, vals = M.box_iou_pairs(a, b, threshold, chunk=64)
        want_r, want_c = np.nonzero((dense > 0) & (dense >= threshold))
        np.testing.assert_array_equal(rows, want_r)
        np.testing.assert_array_equal(cols, want_c)
        np.testing.assert_allclose(vals, dense[want_r, want_c])
    assert all(len(x) == 0 for x in M.box_iou_pairs(np.zeros((0, 4)), b))


def test_whole_section_cell_matching_does_not_build_a_dense_matrix():
    """40 000 cells against 40 000: a dense IoU matrix would need > 10 GB; the sparse path stays small."""
    import tracemalloc

    rng = np.random.default_rng(0)
    side = 200  # a 200 x 200 grid of 10 px cells, 20 px apart (an 4000 x 4000 px section)
    yy, xx = np.mgrid[0:side, 0:side].reshape(2, -1) * 20.0
    truth = np.stack([xx, yy, xx + 10, yy + 10], 1)
    pred = truth + rng.uniform(-1.5, 1.5, truth.shape)
    gt = [{"boxes": truth, "labels": np.zeros(len(truth), int)}]
    dt = [{"boxes": pred, "labels": np.zeros(len(pred), int), "scores": rng.uniform(0.5, 1, len(pred))}]
    tracemalloc.start()
    scores = M.detection_scores(gt, dt, n_classes=1, iou=0.5)
    ap = M.box_ap(gt, dt, 0.5, None)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert scores["tp"] == [len(truth)] and ap > 0.99
    assert peak < 300e6, f"peak {peak / 1e6:.0f} MB"


@pytest.mark.slow
def test_matching_with_duplicate_detections_is_solved_per_group_in_small_memory():
    """Found on an 8000 px section: boxes of duplicate detections (two boxes at IoU >= 0.5 with one
    cell) sent the matching to one dense 55 000 x 55 000 problem (22.6 GiB).  Each connected group of
    candidate pairs is solved on its own: the same optimum, small memory."""
    import tracemalloc

    rng = np.random.default_rng(1)
    side = 150  # 22 500 cells, each detected twice (boxes shifted by up to 1 px: IoU >= 0.5 with it)
    yy, xx = np.mgrid[0:side, 0:side].reshape(2, -1) * 20.0
    truth = np.stack([xx, yy, xx + 10, yy + 10], 1)
    pred = np.concatenate([truth + rng.uniform(-1, 1, truth.shape), truth + rng.uniform(-1, 1, truth.shape)])
    gt = [{"boxes": truth, "labels": np.zeros(len(truth), int)}]
    dt = [{"boxes": pred, "labels": np.zeros(len(pred), int), "scores": np.ones(len(pred))}]
    tracemalloc.start()
    scores = M.detection_scores(gt, dt, n_classes=1, iou=0.5)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert scores["tp"] == [len(truth)] and scores["fp"] == [len(truth)]  # one match per cell, the double is FP
    assert peak < 300e6, f"peak {peak / 1e6:.0f} MB"


def test_grouped_assignment_equals_one_dense_assignment():
    """On random overlapping boxes the per-group solution keeps as many matches and the same summed IoU
    as the dense assignment over all pairs."""
    from scipy.optimize import linear_sum_assignment

    rng = np.random.default_rng(2)
    for trial in range(20):
        centres = rng.uniform(0, 60, (40, 2))
        truth = np.hstack([centres, centres + rng.uniform(6, 10, (40, 2))])
        pred = truth[rng.integers(0, 40, 60)] + rng.uniform(-2, 2, (60, 4))
        rows, cols, values = M.box_iou_pairs(truth, pred, 0.3)
        chosen = assign_matches(rows, cols, values, 0.3)
        assert len(set(rows[chosen])) == len(chosen) == len(set(cols[chosen]))  # one-to-one
        dense = np.zeros((len(truth), len(pred)))
        ok = values >= 0.3
        dense[rows[ok], cols[ok]] = 1.0 + values[ok] / (2.0 * len(truth))
        a, b = linear_sum_assignment(dense, maximize=True)
        kept = dense[a, b] > 0
        assert len(chosen) == kept.sum()
        np.testing.assert_allclose(values[chosen].sum(), (dense[a, b][kept] - 1.0).sum() * 2.0 * len(truth))
