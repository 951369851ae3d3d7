"""Instance segmentation scores (nuclei, Kaizen): AP at an IoU threshold = TP / (TP + FP + FN) with
optimal one-to-one matching at IoU >= threshold, as in the StarDist and Cellpose papers."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment


DEFAULT_THRESHOLDS: tuple[float, ...] = (0.5, 0.6, 0.7, 0.8, 0.9)
_DENSE_PAIR_LIMIT = 1 << 24  # joint histograms up to 16 M cells are counted with bincount


def _compact_labels(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Map label ids to 1..n per pixel (0 stays background); returns (ids, per-pixel index, areas)."""
    flat = np.asarray(labels).ravel()
    if flat.dtype.kind not in "iub":
        raise ValueError(f"label images must be integer, got {flat.dtype}")
    if flat.size == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64)
    if flat.dtype.kind == "i" and flat.min() < 0:
        raise ValueError("label images must not hold negative ids")
    top = int(flat.max())
    if top <= 4 * flat.size + 1024:  # ids small enough for a lookup table: O(pixels)
        flat = flat.astype(np.int64, copy=False)
        areas_all = np.bincount(flat, minlength=1)
        ids = np.flatnonzero(areas_all[1:]) + 1
        lut = np.zeros(top + 1, np.int64)
        lut[ids] = np.arange(1, ids.size + 1)
        return ids, lut[flat], areas_all[ids]
    uniq, inverse, counts = np.unique(flat, return_inverse=True, return_counts=True)
    if uniq[0] == 0:
        return uniq[1:].astype(np.int64), inverse.astype(np.int64), counts[1:]
    return uniq.astype(np.int64), inverse.astype(np.int64) + 1, counts


def assign_matches(rows: np.ndarray, cols: np.ndarray, ious: np.ndarray, threshold: float) -> np.ndarray:
    """Indices into the candidate pairs that form an optimal one-to-one matching at IoU >= threshold.

    Maximises the number of matches, then their summed IoU (StarDist's cost); pairs below the
    threshold never match.  When no object takes part in two eligible pairs (always the case for
    label images above IoU 0.5) the eligible pairs are the matching.  Otherwise (boxes: duplicate
    detections of one cell) the assignment is solved separately on each connected group of
    pairs, which gives the same optimum as one big problem, in memory that does not grow with the
    section (a whole-section dense matrix was 55 000 x 55 000 at 8000 px).
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    eligible = np.flatnonzero(ious >= threshold)
    if eligible.size == 0:
        return eligible
    r, c = rows[eligible], cols[eligible]
    if np.unique(r).size == r.size and np.unique(c).size == c.size:
        return eligible
    ur, ri = np.unique(r, return_inverse=True)
    uc, ci = np.unique(c, return_inverse=True)
    nodes = ur.size + uc.size
    graph = coo_matrix((np.ones(eligible.size), (ri, ur.size + ci)), shape=(nodes, nodes))
    _, component = connected_components(graph, directed=False)
    group = component[ri]  # the group of each eligible pair
    sizes = np.bincount(group)
    chosen = [eligible[sizes[group] == 1]]  # a pair alone in its group always matches
    order = np.argsort(group, kind="stable")
    order = order[sizes[group[order]] > 1]
    starts = np.flatnonzero(np.r_[True, np.diff(group[order]) != 0])
    for members in np.split(order, starts[1:]) if order.size else []:
        chosen.append(eligible[members[_solve_group(ri[members], ci[members], ious[eligible[members]])]])
    return np.sort(np.concatenate(chosen))


def _solve_group(ri: np.ndarray, ci: np.ndarray, ious: np.ndarray) -> np.ndarray:
    """Indices of the pairs (rows ``ri``, columns ``ci``) of one connected group that an optimal matching keeps."""
    ur, a_index = np.unique(ri, return_inverse=True)
    uc, b_index = np.unique(ci, return_inverse=True)
    k = min(ur.size, uc.size)
    weights = np.zeros((ur.size, uc.size))
    weights[a_index, b_index] = 1.0 + ious / (2.0 * k)  # count first, IoU breaks ties (< 0.5 total)
    pair_index = np.full(weights.shape, -1, np.int64)
    pair_index[a_index, b_index] = np.arange(ri.size)
    a, b = linear_sum_assignment(weights, maximize=True)
    keep = weights[a, b] > 0
    return pair_index[a[keep], b[keep]]


@dataclass(frozen=True)
class InstanceMatch:
    """Overlaps between the objects of one true and one predicted label image.

    Only overlapping pairs are stored (sparse): ``pair_truth``/``pair_pred`` index into
    ``truth_ids``/``pred_ids``; ``pair_iou`` is their IoU.  Matching at a threshold is done on
    demand by :meth:`matches`, so one InstanceMatch serves every threshold.
    """

    truth_ids: np.ndarray
    pred_ids: np.ndarray
    truth_areas: np.ndarray
    pred_areas: np.ndarray
    pair_truth: np.ndarray
    pair_pred: np.ndarray
    pair_iou: np.ndarray

    @property
    def n_true(self) -> int:
        """Number of true objects."""
        return int(self.truth_ids.size)

    @property
    def n_pred(self) -> int:
        """Number of predicted objects."""
        return int(self.pred_ids.size)

    def iou_matrix(self) -> np.ndarray:
        """Dense (n_true, n_pred) IoU matrix (zeros where objects do not overlap)."""
        dense = np.zeros((self.n_true, self.n_pred))
        dense[self.pair_truth, self.pair_pred] = self.pair_iou
        return dense

    def matches(self, threshold: float = 0.5) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Matched (truth id, predicted id, IoU) arrays of the optimal matching at IoU >= threshold."""
        chosen = assign_matches(self.pair_truth, self.pair_pred, self.pair_iou, threshold)
        return (self.truth_ids[self.pair_truth[chosen]], self.pred_ids[self.pair_pred[chosen]],
                self.pair_iou[chosen])

    def counts(self, threshold: float = 0.5) -> tuple[int, int, int]:
        """(TP, FP, FN) at an IoU threshold."""
        tp = int(assign_matches(self.pair_truth, self.pair_pred, self.pair_iou, threshold).size)
        return tp, self.n_pred - tp, self.n_true - tp


def match_instances(truth_labels: np.ndarray, pred_labels: np.ndarray) -> InstanceMatch:
    """IoU of every overlapping (true, predicted) object pair, from a joint histogram of label pairs.

    One pass over the pixels (np.bincount on combined pair codes), no per-object loop.
    """
    truth_labels = np.asarray(truth_labels)
    pred_labels = np.asarray(pred_labels)
    if truth_labels.shape != pred_labels.shape:
        raise ValueError(f"truth {truth_labels.shape} and prediction {pred_labels.shape} differ in shape")
    t_ids, t_idx, t_area = _compact_labels(truth_labels)
    p_ids, p_idx, p_area = _compact_labels(pred_labels)
    n_t, n_p = t_ids.size, p_ids.size
    both = (t_idx > 0) & (p_idx > 0)
    codes = (t_idx[both] - 1) * n_p + (p_idx[both] - 1)
    if n_t * n_p <= _DENSE_PAIR_LIMIT:
        joint = np.bincount(codes, minlength=n_t * n_p)
        pairs = np.flatnonzero(joint)
        inter = joint[pairs]
    else:  # too many objects for a dense table: count only the pairs that occur
        pairs, inter = np.unique(codes, return_counts=True)
    pt, pp = pairs // max(n_p, 1), pairs % max(n_p, 1)
    iou = inter / (t_area[pt] + p_area[pp] - inter)
    return InstanceMatch(t_ids, p_ids, t_area, p_area, pt.astype(np.int64), pp.astype(np.int64),
                         iou.astype(np.float64))


def _ratio(num: float, den: float) -> float:
    """num / den, with 0 / 0 = 1.0 (nothing to find and nothing found is not an error)."""
    return float(num / den) if den else 1.0


def _ap_key(threshold: float) -> str:
    """'AP50' for 0.5, 'AP75' for 0.75, 'AP62.5' for 0.625."""
    return f"AP{round(threshold * 100, 6):g}"


def _scores_from_counts(counts: dict[float, tuple[int, int, int]], n_images: int, n_true: int,
                        n_pred: int, thresholds: Sequence[float]) -> dict[str, Any]:
    """The instance-score dict from (TP, FP, FN) per threshold."""
    out: dict[str, Any] = {}
    for t in thresholds:
        tp, fp, fn = counts[t]
        out[_ap_key(t)] = _ratio(tp, tp + fp + fn)
    tp, fp, fn = counts[0.5]
    out.update(precision=_ratio(tp, tp + fp), recall=_ratio(tp, tp + fn), f1=_ratio(2 * tp, 2 * tp + fp + fn),
               tp=tp, fp=fp, fn=fn, n_images=n_images, n_true=n_true, n_pred=n_pred)
    return out


def _as_match(item: InstanceMatch | tuple[np.ndarray, np.ndarray]) -> InstanceMatch:
    """Accept a precomputed InstanceMatch or a (truth labels, predicted labels) pair."""
    if isinstance(item, InstanceMatch):
        return item
    truth, pred = item
    return match_instances(truth, pred)


def instance_scores_per_image(pairs: Iterable[InstanceMatch | tuple[np.ndarray, np.ndarray]],
                              thresholds: Sequence[float] = DEFAULT_THRESHOLDS) -> list[dict[str, Any]]:
    """One :func:`instance_scores` dict per image (``n_images`` = 1, plus ``image`` = its index)."""
    rows = []
    for i, item in enumerate(pairs):
        m = _as_match(item)
        counts = {t: m.counts(t) for t in {*thresholds, 0.5}}
        rows.append({"image": i, **_scores_from_counts(counts, 1, m.n_true, m.n_pred, thresholds)})
    return rows


def instance_scores(pairs: Iterable[InstanceMatch | tuple[np.ndarray, np.ndarray]],
                    thresholds: Sequence[float] = DEFAULT_THRESHOLDS) -> dict[str, Any]:
    """Instance AP pooled over a data set: TP, FP, FN summed over images, AP = TP / (TP + FP + FN).

    ``pairs`` yields :class:`InstanceMatch` objects or (truth labels, predicted labels) tuples
    (matched on the fly, so a generator keeps one image in memory).  Keys: ``AP50`` ... ``AP90``
    (one per threshold), and at IoU 0.5 ``precision``, ``recall``, ``f1``, ``tp``, ``fp``, ``fn``;
    plus ``n_images``, ``n_true``, ``n_pred``.  0 / 0 counts as 1.0 (see module docstring).
    """
    wanted = sorted({*thresholds, 0.5})
    totals = {t: np.zeros(3, np.int64) for t in wanted}
    n_images = n_true = n_pred = 0
    for item in pairs:
        m = _as_match(item)
        for t in wanted:
            totals[t] += m.counts(t)
        n_images += 1
        n_true += m.n_true
        n_pred += m.n_pred
    counts = {t: tuple(int(v) for v in totals[t]) for t in wanted}
    return _scores_from_counts(counts, n_images, n_true, n_pred, thresholds)
