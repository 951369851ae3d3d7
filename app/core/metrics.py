"""Evaluation metrics for the three pipelines: semantic, instance, box and pixel-score metrics.

Definitions follow ``shared/science.md`` ("Metrics definitions"):

* semantic segmentation (tubule model): pixel accuracy, mean accuracy, mean IoU and
  frequency-weighted IoU from a confusion matrix, as Detectron2's ``SemSegEvaluator`` computes them;
* instance segmentation (nuclei, Kaizen): AP at an IoU threshold = TP / (TP + FP + FN) with optimal
  one-to-one matching at IoU >= threshold, as in the StarDist and Cellpose papers;
* boxes (cell detector): COCO AP50 / AP75 (101-point interpolated precision, greedy matching by
  score) and per-class precision / sensitivity / F1 with a class confusion matrix;
* pixel scores (brightfield U-Net): exact ROC AUC via ranks (Mann-Whitney U).

Input formats
-------------
* label images: integer arrays of any shape, 0 = background, any positive ids (need not be
  consecutive);
* boxes: per image a mapping ``{"boxes": (N, 4) float (x0, y0, x1, y1), "labels": (N,) int,
  "scores": (N,) float}``; ``"scores"`` is needed for predictions only.  Box area is
  ``(x1 - x0) * (y1 - y0)``, as in torchvision and COCO.

Empty sets
----------
Count ratios of the form good / (good + bad) (instance AP, precision, recall, F1) are 1.0 when the
denominator is 0: with nothing to find and nothing found, nothing went wrong.  Per-class values that
cannot be defined (a class absent from the data) are NaN and excluded from the class means.
Dict results hold plain Python numbers and lists so they can be written to JSON directly.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.stats import rankdata

DEFAULT_THRESHOLDS: tuple[float, ...] = (0.5, 0.6, 0.7, 0.8, 0.9)
COCO_RECALL_POINTS = np.linspace(0.0, 1.0, 101)
_DENSE_PAIR_LIMIT = 1 << 24  # joint histograms up to 16 M cells are counted with bincount


# --------------------------------------------------------------------------------------------
# semantic segmentation
# --------------------------------------------------------------------------------------------


MIN_SEMANTIC_CLASSES = 2  # background 0 and at least one class: with one class every score is trivially 1


def check_class_count(n_classes: int) -> None:
    """Refuse a class count a semantic evaluation cannot mean (ValueError saying the rule)."""
    if isinstance(n_classes, bool) or not isinstance(n_classes, (int, np.integer)) or n_classes < MIN_SEMANTIC_CLASSES:
        raise ValueError(f"the number of classes must be at least {MIN_SEMANTIC_CLASSES} (background 0 and one "
                         f"class), not {n_classes}")


def out_of_range_values(classes: np.ndarray, n_classes: int, ignore: int | None = None,
                        limit: int = 5) -> list[int]:
    """Up to ``limit`` distinct values of a class map outside ``[0, n_classes)``, ``ignore`` excepted (for messages).

    :func:`confusion_matrix` skips such truth pixels; callers that must not drop data silently
    check with this first.
    """
    values = np.asarray(classes).ravel()
    bad = (values < 0) | (values >= n_classes)
    if ignore is not None:
        bad &= values != ignore
    if not bad.any():
        return []
    return [int(v) for v in np.unique(values[bad])[:limit]]


def confusion_matrix(truth: np.ndarray, pred: np.ndarray, n_classes: int) -> np.ndarray:
    """Count pixels per (true class, predicted class): rows = truth, columns = prediction.

    Pixels whose truth lies outside ``[0, n_classes)`` (e.g. 255 = ignore) are not counted; a
    predicted class outside that range at a counted pixel is an error (ValueError).
    """
    truth = np.asarray(truth)
    pred = np.asarray(pred)
    if truth.shape != pred.shape:
        raise ValueError(f"truth {truth.shape} and prediction {pred.shape} differ in shape")
    t = truth.ravel().astype(np.int64)
    p = pred.ravel().astype(np.int64)
    valid = (t >= 0) & (t < n_classes)
    t, p = t[valid], p[valid]
    if p.size and (p.min() < 0 or p.max() >= n_classes):
        raise ValueError(f"prediction holds classes outside [0, {n_classes})")
    counts = np.bincount(t * n_classes + p, minlength=n_classes * n_classes)
    return counts.reshape(n_classes, n_classes)


def semantic_scores(confusion: np.ndarray) -> dict[str, Any]:
    """Pixel accuracy, mean accuracy, mean IoU, fw-IoU and per-class values from a confusion matrix.

    With t_i = pixels of class i in truth, p_i = in prediction, n_ii = correct:
    accuracy_i = n_ii / t_i (defined where t_i > 0), IoU_i = n_ii / (t_i + p_i - n_ii) (defined
    where t_i + p_i > 0).  Classes absent from truth AND prediction are NaN and excluded from the
    means; a class only predicted has IoU 0 and counts in mean IoU, not in mean accuracy (t_i = 0);
    fw-IoU weighs by t_i.  Matches Detectron2's SemSegEvaluator.  No pixels at all: NaN.
    """
    cm = np.asarray(confusion, dtype=np.float64)
    if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
        raise ValueError(f"confusion matrix must be square, got {cm.shape}")
    tp = np.diag(cm)
    t = cm.sum(axis=1)
    p = cm.sum(axis=0)
    union = t + p - tp
    with np.errstate(divide="ignore", invalid="ignore"):
        acc = np.where(t > 0, tp / t, np.nan)
        iou = np.where(union > 0, tp / union, np.nan)
    total = t.sum()
    present = union > 0
    return {
        "pixel_accuracy": float(tp.sum() / total) if total else float("nan"),
        "mean_accuracy": float(np.nanmean(acc)) if (t > 0).any() else float("nan"),
        "mean_iou": float(np.nanmean(iou)) if present.any() else float("nan"),
        "fw_iou": float(np.nansum(t / total * np.nan_to_num(iou))) if total else float("nan"),
        "per_class_iou": [float(v) for v in iou],
        "per_class_accuracy": [float(v) for v in acc],
        "classes_present": [int(i) for i in np.flatnonzero(present)],
        "n_pixels": int(total),
    }


# --------------------------------------------------------------------------------------------
# instance segmentation
# --------------------------------------------------------------------------------------------


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


def _assign(rows: np.ndarray, cols: np.ndarray, ious: np.ndarray, threshold: float) -> np.ndarray:
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
        chosen = _assign(self.pair_truth, self.pair_pred, self.pair_iou, threshold)
        return (self.truth_ids[self.pair_truth[chosen]], self.pred_ids[self.pair_pred[chosen]],
                self.pair_iou[chosen])

    def counts(self, threshold: float = 0.5) -> tuple[int, int, int]:
        """(TP, FP, FN) at an IoU threshold."""
        tp = int(_assign(self.pair_truth, self.pair_pred, self.pair_iou, threshold).size)
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


# --------------------------------------------------------------------------------------------
# boxes
# --------------------------------------------------------------------------------------------


def box_iou(boxes_a: np.ndarray, boxes_b: np.ndarray) -> np.ndarray:
    """(N, M) IoU of two sets of (x0, y0, x1, y1) boxes; area = (x1 - x0) * (y1 - y0) as torchvision."""
    a = np.asarray(boxes_a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(boxes_b, dtype=np.float64).reshape(-1, 4)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    wh = np.clip(np.minimum(a[:, None, 2:], b[None, :, 2:]) - np.maximum(a[:, None, :2], b[None, :, :2]), 0, None)
    inter = wh[..., 0] * wh[..., 1]
    union = area_a[:, None] + area_b[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / union, 0.0)


def box_iou_pairs(boxes_a: np.ndarray, boxes_b: np.ndarray, min_iou: float = 0.0,
                  chunk: int = 256) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rows, cols, iou) of the box pairs whose IoU is > 0 and >= ``min_iou``, sorted by row then column.

    A whole section holds tens of thousands of cells: a dense (N, M) IoU matrix would take
    gigabytes.  Rows are taken in chunks along x, and each chunk is compared only with the boxes
    that overlap its x-range, so memory grows with the number of overlapping pairs.
    """
    a = np.asarray(boxes_a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(boxes_b, dtype=np.float64).reshape(-1, 4)
    empty = (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0))
    if not len(a) or not len(b):
        return empty
    order_a = np.argsort(a[:, 0], kind="stable")
    order_b = np.argsort(b[:, 0], kind="stable")
    b_x0 = b[order_b, 0]
    parts = []
    for start in range(0, len(a), chunk):
        rows = order_a[start:start + chunk]
        hi = np.searchsorted(b_x0, a[rows, 2].max(), side="left")  # b.x0 < max a.x1
        cand = order_b[:hi]
        cand = cand[b[cand, 2] > a[rows, 0].min()]  # b.x1 > min a.x0
        if not cand.size:
            continue
        iou = box_iou(a[rows], b[cand])
        r, c = np.nonzero((iou > 0) & (iou >= min_iou))
        if r.size:
            parts.append((rows[r], cand[c], iou[r, c]))
    if not parts:
        return empty
    rows, cols, vals = (np.concatenate(x) for x in zip(*parts))
    order = np.lexsort((cols, rows))
    return rows[order], cols[order], vals[order]


def _image_boxes(item: Mapping[str, Any], need_scores: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validated (boxes (N, 4), labels (N,), scores (N,)) of one image's box dict."""
    boxes = np.asarray(item["boxes"], dtype=np.float64).reshape(-1, 4)
    labels = np.asarray(item["labels"], dtype=np.int64).reshape(-1)
    if "scores" in item:
        scores = np.asarray(item["scores"], dtype=np.float64).reshape(-1)
    elif need_scores:
        raise ValueError("predictions need 'scores'")
    else:
        scores = np.ones(len(boxes))
    if not len(boxes) == len(labels) == len(scores):
        raise ValueError(f"boxes ({len(boxes)}), labels ({len(labels)}) and scores ({len(scores)}) differ in length")
    if (boxes[:, 2:] < boxes[:, :2]).any():
        raise ValueError("boxes must be (x0, y0, x1, y1) with x1 >= x0 and y1 >= y0")
    return boxes, labels, scores


def _check_lengths(ground_truth: Sequence, predictions: Sequence) -> None:
    """Ground truth and predictions must list the same images in the same order."""
    if len(ground_truth) != len(predictions):
        raise ValueError(f"{len(ground_truth)} ground-truth images but {len(predictions)} prediction images")


def _coco_greedy(detections: np.ndarray, truth: np.ndarray, threshold: float) -> np.ndarray:
    """COCO's matching: detections (by score) take the best still-free truth box at IoU >= threshold.

    Works on the sparse overlapping pairs (:func:`box_iou_pairs`), so whole sections fit in memory.
    """
    threshold = min(threshold, 1 - 1e-10)
    rows, cols, vals = box_iou_pairs(detections, truth, threshold)
    taken = np.zeros(len(truth), bool)
    matched = np.zeros(len(detections), bool)
    starts = np.searchsorted(rows, np.arange(len(detections) + 1))
    for d in range(len(detections)):
        c, v = cols[starts[d]:starts[d + 1]], vals[starts[d]:starts[d + 1]]
        free = ~taken[c]
        if not free.any():
            continue
        c, v = c[free], v[free]
        best = np.flatnonzero(v == v.max())
        g = c[best[-1]]  # COCO keeps the last of equal best IoUs (columns are sorted)
        taken[g] = matched[d] = True
    return matched


def _coco_precision_ap(scores: np.ndarray, hits: np.ndarray, n_truth: int) -> float:
    """101-point interpolated AP of scored detections (hit/miss) against n_truth objects, as COCOeval."""
    order = np.argsort(-scores, kind="mergesort")
    hits = hits[order]
    tp = np.cumsum(hits).astype(np.float64)
    fp = np.cumsum(~hits).astype(np.float64)
    recall = tp / n_truth
    precision = tp / (tp + fp + np.spacing(1))
    precision = np.maximum.accumulate(precision[::-1])[::-1]  # precision envelope
    idx = np.searchsorted(recall, COCO_RECALL_POINTS, side="left")
    q = np.zeros(COCO_RECALL_POINTS.size)
    ok = idx < hits.size
    q[ok] = precision[idx[ok]]
    return float(q.mean())


def box_ap_per_class(ground_truth: Sequence[Mapping[str, Any]], predictions: Sequence[Mapping[str, Any]],
                     iou_threshold: float = 0.5, max_detections: int | None = 100) -> dict[int, float]:
    """COCO box AP per class present in the ground truth (0..1, not percent).

    Per image and class, detections are sorted by score (ties keep input order), cut to
    ``max_detections`` (COCO's 100; None = all) and greedily matched to the best free truth box at
    IoU >= threshold; precision/recall are pooled over images and interpolated at 101 recall points.
    """
    _check_lengths(ground_truth, predictions)
    gts = [_image_boxes(g, need_scores=False) for g in ground_truth]
    dts = [_image_boxes(p, need_scores=True) for p in predictions]
    classes = sorted({int(c) for _, labels, _ in gts for c in labels})
    out = {}
    for c in classes:
        scores, hits, n_truth = [], [], 0
        for (gb, gl, _), (db, dl, ds) in zip(gts, dts):
            g = gb[gl == c]
            d_boxes, d_scores = db[dl == c], ds[dl == c]
            order = np.argsort(-d_scores, kind="mergesort")[:max_detections]
            n_truth += len(g)
            scores.append(d_scores[order])
            hits.append(_coco_greedy(d_boxes[order], g, iou_threshold))
        out[c] = _coco_precision_ap(np.concatenate(scores), np.concatenate(hits), n_truth)
    return out


def box_ap(ground_truth: Sequence[Mapping[str, Any]], predictions: Sequence[Mapping[str, Any]],
           iou_threshold: float = 0.5, max_detections: int | None = 100) -> float:
    """COCO box AP at one IoU threshold (AP50: 0.5, AP75: 0.75), mean over classes in the ground truth.

    Agrees with pycocotools' COCOeval (areaRng 'all', maxDets 100).  NaN when no ground truth.
    The paper quotes it in percent (AP50 78.99 = 0.7899 here).
    """
    per_class = box_ap_per_class(ground_truth, predictions, iou_threshold, max_detections)
    return float(np.mean(list(per_class.values()))) if per_class else float("nan")


def detection_scores(ground_truth: Sequence[Mapping[str, Any]], predictions: Sequence[Mapping[str, Any]],
                     n_classes: int | None = None, iou: float = 0.5, score_threshold: float = 0.5,
                     class_names: Sequence[str] | None = None) -> dict[str, Any]:
    """Per-class precision, sensitivity (recall) and F1 of detections, and a class confusion matrix.

    Labels must lie in [0, n_classes); ``n_classes`` defaults to len(class_names), else the largest
    label + 1.  Predictions scoring below ``score_threshold`` are dropped (predictions without
    ``"scores"`` are all kept); the rest are matched one-to-one to truth boxes by IoU >= ``iou`` ignoring class (most matches,
    then highest IoU).  ``confusion`` has n_classes + 1 rows (truth) and columns (prediction); the
    last row/column is background: unmatched predictions land in the last row, missed truth in the
    last column.  TP_c = confusion[c, c], FP_c = column c minus TP_c, FN_c = row c minus TP_c.
    A class never predicted has NaN precision, one absent from truth NaN sensitivity; means
    (``mean_precision``, ``mean_sensitivity``, ``mean_f1``) skip NaNs, i.e. classes absent from
    truth and prediction are excluded.
    """
    _check_lengths(ground_truth, predictions)
    if n_classes is None:
        labels = [np.asarray(item["labels"]).reshape(-1) for item in (*ground_truth, *predictions)]
        n_classes = len(class_names) if class_names is not None else int(max((lab.max() for lab in labels if lab.size),
                                                                             default=-1)) + 1
    n = int(n_classes)
    cm = np.zeros((n + 1, n + 1), np.int64)
    for g, p in zip(ground_truth, predictions):
        gb, gl, _ = _image_boxes(g, need_scores=False)
        db, dl, ds = _image_boxes(p, need_scores=False)
        keep = ds >= score_threshold
        db, dl = db[keep], dl[keep]
        for labels in (gl, dl):
            if labels.size and (labels.min() < 0 or labels.max() >= n):
                raise ValueError(f"box labels must lie in [0, {n})")
        rows, cols, values = box_iou_pairs(gb, db, iou)
        chosen = _assign(rows, cols, values, iou)
        mt, mp = rows[chosen], cols[chosen]
        np.add.at(cm, (gl[mt], dl[mp]), 1)
        np.add.at(cm, (np.delete(gl, mt), n), 1)  # missed truth -> background column
        np.add.at(cm, (n, np.delete(dl, mp)), 1)  # unmatched prediction -> background row
    tp = np.diag(cm)[:n].astype(np.float64)
    n_pred = cm[:, :n].sum(axis=0).astype(np.float64)
    n_true = cm[:n, :].sum(axis=1).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(n_pred > 0, tp / n_pred, np.nan)
        sensitivity = np.where(n_true > 0, tp / n_true, np.nan)
        f1 = np.where(n_pred + n_true > 0, 2 * tp / (n_pred + n_true), np.nan)

    def mean(values: np.ndarray) -> float:
        return float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")

    return {
        "precision": precision.tolist(), "sensitivity": sensitivity.tolist(), "f1": f1.tolist(),
        "tp": tp.astype(int).tolist(), "fp": (n_pred - tp).astype(int).tolist(),
        "fn": (n_true - tp).astype(int).tolist(),
        "mean_precision": mean(precision), "mean_sensitivity": mean(sensitivity), "mean_f1": mean(f1),
        "confusion": cm.tolist(),
        "class_names": list(class_names) if class_names is not None else [str(i) for i in range(n)],
        "iou": float(iou), "score_threshold": float(score_threshold),
    }


# --------------------------------------------------------------------------------------------
# pixel scores
# --------------------------------------------------------------------------------------------


def pixel_auroc(truth: np.ndarray, scores: np.ndarray) -> float:
    """Exact ROC AUC of per-pixel scores against a boolean truth (Mann-Whitney U with mid-ranks).

    Equals the probability that a random positive pixel scores above a random negative one, ties
    counting one half.  NaN when truth holds only one class (AUC undefined).
    """
    truth = np.asarray(truth).astype(bool).ravel()
    scores = np.asarray(scores, dtype=np.float64).ravel()
    if truth.shape != scores.shape:
        raise ValueError(f"truth ({truth.size} values) and scores ({scores.size}) differ in size")
    n_pos = int(truth.sum())
    n_neg = truth.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(scores)  # average ranks for ties
    u = ranks[truth].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (float(n_pos) * float(n_neg)))
