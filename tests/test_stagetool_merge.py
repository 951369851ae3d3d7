"""Stagetool merges: rotation vote, seam de-duplication, tubule grouping and weighted majority, antigen rule."""

from __future__ import annotations

import math

import numpy as np
import pytest

from app.core.errors import UserError
from app.pipelines.stagetool import antigen
from app.pipelines.stagetool.merge import (
    Detections, TileMask, assign_cells, box_centres, crosses, dedupe_seams, downscale_mask, inside,
    merge_tubules, paint_tubules, tta_vote, weighted_majority,
)


def dets(boxes, labels, scores) -> Detections:
    return Detections(np.array(boxes, np.float32).reshape(-1, 4), np.array(labels, np.int64),
                      np.array(scores, np.float32))


# ------------------------------------------------------------------------------------ rotation vote


def test_tta_vote_majority_class_and_votes():
    cell = [10, 10, 30, 30]
    passes = [dets([cell], [2], [0.9]), dets([[11, 10, 31, 30]], [2], [0.8]),
              dets([[10, 11, 30, 31]], [2], [0.7]), dets([cell], [5], [0.95])]
    merged = tta_vote(passes, min_votes=2)
    assert len(merged) == 1
    assert merged.labels[0] == 2  # three votes beat one confident vote
    assert merged.votes[0] == 4
    assert merged.scores[0] == pytest.approx((0.9 + 0.8 + 0.7) / 4)
    # score-weighted mean box: x0 = (10*.9 + 11*.8 + 10*.7 + 10*.95) / 3.35
    assert merged.boxes[0, 0] == pytest.approx((10 * .9 + 11 * .8 + 10 * .7 + 10 * .95) / 3.35, rel=1e-5)


def test_tta_vote_tie_broken_by_summed_score_and_lonely_boxes_dropped():
    a = [0, 0, 20, 20]
    lonely = [100, 100, 120, 120]
    passes = [dets([a, lonely], [1, 4], [0.6, 0.99]), dets([a], [1], [0.6]), dets([a], [3], [0.9]), dets([a], [3], [0.9])]
    merged = tta_vote(passes, min_votes=2)
    assert len(merged) == 1  # the box seen by one pass only is dropped
    assert merged.labels[0] == 3  # 2 votes each; 1.8 > 1.2
    single = tta_vote(passes, min_votes=1)
    assert len(single) == 2


def test_tta_vote_keeps_neighbours_apart_and_one_box_per_pass():
    left, right = [0, 0, 20, 20], [22, 0, 42, 20]
    passes = [dets([left, right], [0, 1], [0.9, 0.9]) for _ in range(4)]
    merged = tta_vote(passes)
    assert len(merged) == 2
    assert sorted(merged.votes.tolist()) == [4, 4]
    assert sorted(merged.labels.tolist()) == [0, 1]


def test_single_pass_is_returned_unchanged():
    one = dets([[0, 0, 5, 5]], [7], [0.4])
    merged = tta_vote([one])
    assert merged.labels.tolist() == [7] and merged.votes.tolist() == [1]


# ------------------------------------------------------------------------------------ seams, cores


def test_core_rule_and_seam_dedupe():
    boxes = np.array([[90, 10, 110, 30], [91, 10, 111, 30], [10, 10, 20, 20]], np.float32)
    centres = box_centres(boxes)
    assert centres[0].tolist() == [20.0, 100.0]
    assert inside(centres, (0, 0, 100, 100)).tolist() == [False, False, True]
    assert crosses(boxes, (0, 0, 100, 100)).tolist() == [True, True, False]
    cells = dets(boxes, [0, 0, 1], [0.8, 0.9, 0.5])
    kept = dedupe_seams(cells, np.array([True, True, False]))
    assert len(kept) == 2
    assert kept.scores.tolist() == pytest.approx([0.9, 0.5])  # the better of the doubles survives
    # a double that is not on a seam is not touched (the core rule already settled it)
    assert len(dedupe_seams(cells, np.array([False, False, False]))) == 3


# ------------------------------------------------------------------------------------ tubules


def disc(shape, cy, cx, r):
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r


def test_weighted_majority_small_partial_masks_count_less():
    # a confident small partial mask loses against a larger, less confident one
    label, weights = weighted_majority(np.array([0, 1]), np.array([0.9, 0.6]), np.array([0.2, 0.9]), 5)
    assert label == 1
    assert weights[1] == pytest.approx(0.54 / 0.72)
    assert weights.sum() == pytest.approx(1.0)


def test_merge_tubules_groups_tile_masks_of_one_tubule():
    full = disc((200, 300), 100, 100, 60)
    other = disc((200, 300), 100, 230, 50)
    left_half = full.copy()
    left_half[:, 100:] = False  # a tile saw only the left part
    masks = [TileMask.from_mask(full[:, :150], (0, 0), label=2, score=0.7),
             TileMask.from_mask(left_half, (0, 0), label=4, score=0.99),
             TileMask.from_mask(other[:, 150:], (0, 150), label=0, score=0.8)]
    tubules = merge_tubules(masks, 5)
    assert len(tubules) == 2
    first = next(t for t in tubules if 0 in t.members)
    assert sorted(first.members) == [0, 1]
    assert first.label == 2  # weight 0.7 * 1.0 beats 0.99 * ~0.5
    assert first.area == full[:, :150].sum()
    label_map = paint_tubules(tubules, (200, 300))
    assert set(np.unique(label_map)) == {0, 1, 2}
    ids = assign_cells(np.array([[100, 100], [100, 230], [5, 5]]), label_map, 1)
    assert ids[0] == first.id and ids[1] != first.id and ids[1] > 0 and ids[2] == 0


def test_touching_tubules_are_not_merged():
    a = disc((100, 200), 50, 50, 45)
    b = disc((100, 200), 50, 138, 45)
    a_grown = disc((100, 200), 50, 50, 47)  # overlaps b by a thin sliver
    masks = [TileMask.from_mask(a_grown, (0, 0), 0, 0.9), TileMask.from_mask(b, (0, 0), 1, 0.9)]
    assert (a_grown & b).sum() > 0
    assert len(merge_tubules(masks, 5)) == 2
    del a


def test_tilemask_roundtrip_and_downscale():
    mask = np.zeros((10, 12), bool)
    mask[2:5, 3:9] = True
    packed = TileMask.from_mask(mask, (100, 200), 1, 0.5)
    assert packed.box == (102, 203, 105, 209)
    assert packed.area == 18
    assert packed.mask().all()
    assert TileMask.from_mask(np.zeros((4, 4), bool), (0, 0), 0, 1.0) is None
    small = downscale_mask(np.kron(np.eye(2, dtype=bool), np.ones((4, 4), bool)), 4)
    assert small.tolist() == [[True, False], [False, True]]


# ------------------------------------------------------------------------------------ antigen


def test_order_statistic_matches_the_counting_rule():
    rng = np.random.default_rng(0)
    for n in (1, 2, 3, 7, 20, 101):
        values = rng.integers(0, 10, n).astype(float)
        q = antigen.order_statistic(values, 0.65)
        for t in np.arange(-1, 11, 0.5):
            by_count = (values > t).sum() >= math.ceil(0.65 * n)
            assert by_count == (q > t), (n, t)


def test_positive_rule_needs_mean_and_share():
    threshold = 100.0
    # half the pixels very bright: mean 200 > T but only 50% of pixels > T/2 -> negative
    half = np.r_[np.zeros(50), np.full(50, 400.0)]
    # all pixels at 120: mean > T and 100% > T/2 -> positive
    flat = np.full(100, 120.0)
    # 70% at 60 (> T/2), 30% at 250: mean 117 > T, 100% > 50 -> positive
    mixed = np.r_[np.full(70, 60.0), np.full(30, 250.0)]
    # dim: mean 90 < T -> negative
    dim = np.full(100, 90.0)
    means = np.array([v.mean() for v in (half, flat, mixed, dim)])
    quants = np.array([antigen.order_statistic(v) for v in (half, flat, mixed, dim)])
    assert antigen.is_positive(means, quants, threshold).tolist() == [False, True, True, False]


def test_measure_cells_uses_the_inscribed_ellipse():
    channel = np.zeros((40, 40), np.float32)
    channel[10:20, 10:20] = antigen.ellipse_mask(10, 10) * 100.0  # bright nucleus, dark corners
    means, quants = antigen.measure_cells(channel, np.array([[10, 10, 20, 20], [30, 30, 38, 38]]))
    assert means[0] == pytest.approx(100.0)
    assert quants[0] == pytest.approx(100.0)
    assert means[1] == 0.0
    # a region offset: the same cell measured from a crop starting at (5, 5)
    m2, _ = antigen.measure_cells(channel[5:, 5:], np.array([[10, 10, 20, 20]]), origin=(5, 5))
    assert m2[0] == pytest.approx(100.0)


def test_parse_antibody_and_errors():
    assert antigen.parse_antibody("SOX9=2:1200") == antigen.Antibody("SOX9", 2, 1200.0)
    assert antigen.parse_antibody("SALL4=SALL4") == antigen.Antibody("SALL4", "SALL4", None)
    for bad in ("SOX9", "=1", "SOX9=1:abc", "SOX9=1:-5"):
        with pytest.raises(UserError):
            antigen.parse_antibody(bad)


def test_suggested_threshold_separates_two_populations():
    rng = np.random.default_rng(1)
    means = np.r_[rng.normal(100, 10, 300), rng.normal(600, 40, 100)]
    t = antigen.suggest_threshold(means)
    assert 150 < t < 500
    assert math.isnan(antigen.suggest_threshold(np.array([1.0, 2.0])))


def test_profile_percent_per_stage_and_type():
    types = [0, 0, 0, 1, 1, 0]
    stages = [0, 0, 1, 1, 1, -1]  # the last cell lies in no usable tubule
    positive = [True, False, True, False, False, True]
    result = antigen.profile(types, stages, positive, n_types=2, n_stages=2)
    assert result["total"].tolist() == [[2, 0], [1, 2]]
    assert result["positive"].tolist() == [[1, 0], [1, 0]]
    assert result["percent"][0, 0] == 50.0 and result["percent"][1, 0] == 100.0
    assert math.isnan(result["percent"][0, 1]) and result["percent"][1, 1] == 0.0


def test_tiles_with_a_thin_overlap_still_join_one_tubule_but_not_two():
    """Masks of neighbouring tiles are compared where both tiles looked (here a 10 px strip)."""
    full = disc((100, 200), 50, 100, 45)  # one tubule across the seam at x = 95..105
    left = full.copy()
    left[:, 105:] = False
    right = full.copy()
    right[:, :95] = False
    masks = [TileMask.from_mask(left[:, :105], (0, 0), 1, 0.9, tile=0),
             TileMask.from_mask(right[:, 95:], (0, 95), 1, 0.9, tile=1)]
    assert masks[0].window == (0, 0, 100, 105) and masks[1].window == (0, 95, 100, 200)
    tubules = merge_tubules(masks, 5)
    assert len(tubules) == 1 and tubules[0].area == full.sum()
    # two tubules touching at the seam: each tile sees its own, they share no pixels in the strip
    a, b = disc((100, 200), 50, 50, 50), disc((100, 200), 50, 150, 49)
    masks = [TileMask.from_mask(a[:, :105], (0, 0), 1, 0.9, tile=0),
             TileMask.from_mask(b[:, 95:], (0, 95), 2, 0.9, tile=1)]
    assert len(merge_tubules(masks, 5)) == 2


def test_a_sliver_at_the_strip_edge_is_not_joined_to_a_neighbour_bleeding_over_it():
    """Found on held-out phantoms: tile 0 sees tubule A's edge as a sliver inside the strip both
    tiles looked at; tile 1's mask of the touching tubule B bleeds over half of that sliver.  The
    old rule (shared >= half of the smaller part) joined A and B into one tubule."""
    a, b = disc((200, 200), 60, 100, 50), disc((200, 200), 150, 100, 50)  # touching at y = 100..110
    strip_top = 104  # tile 1 looks at rows 104..200, tile 0 at rows 0..120
    b_bleeding = b | (disc((200, 200), 60, 100, 50) & (np.arange(200)[:, None] >= 107))
    masks = [TileMask.from_mask(a[:120], (0, 0), 1, 0.9, tile=0),
             TileMask.from_mask(b_bleeding[strip_top:], (strip_top, 0), 2, 0.9, tile=1)]
    part_a = a[strip_top:120].sum()
    shared = (a & b_bleeding)[strip_top:120].sum()
    assert shared >= 0.5 * part_a  # what the old rule accepted
    assert len(merge_tubules(masks, 5)) == 2


def test_one_pass_keeps_one_box_per_cell_across_types():
    """The network's NMS is per class: a cell boxed as two types is one cell (as the rotation vote does)."""
    from app.pipelines.stagetool.merge import Detections, one_per_cell

    boxes = np.array([[0, 0, 10, 10], [0.5, 0, 10.5, 10], [30, 30, 40, 40], [34, 30, 44, 40]], np.float32)
    cells = Detections(boxes, np.array([1, 2, 3, 3]), np.array([0.6, 0.9, 0.8, 0.7], np.float32))
    kept = one_per_cell(cells)
    assert kept.labels.tolist() == [2, 3, 3]  # the two-type cell keeps its surer type; neighbours (IoU 0.43) stay
    assert len(one_per_cell(cells.select(np.array([0])))) == 1
