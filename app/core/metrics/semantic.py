"""Semantic segmentation scores (tubule model): pixel accuracy, mean accuracy, mean IoU and
frequency-weighted IoU from a confusion matrix, as Detectron2's ``SemSegEvaluator`` computes them."""

from __future__ import annotations

from typing import Any

import numpy as np

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
