"""Box scores (cell detector): COCO AP50 / AP75 (101-point interpolated precision, greedy matching by
score) and per-class precision / sensitivity / F1 with a class confusion matrix."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from app.core.metrics.instances import assign_matches

COCO_RECALL_POINTS = np.linspace(0.0, 1.0, 101)


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
        chosen = assign_matches(rows, cols, values, iou)
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
