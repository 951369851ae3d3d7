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

The definitions live in one module per kind (:mod:`.semantic`, :mod:`.instances`, :mod:`.boxes`,
:mod:`.pixels`); their public names are importable from here.
"""

from __future__ import annotations

from app.core.metrics.boxes import (
    COCO_RECALL_POINTS, box_ap, box_ap_per_class, box_iou, box_iou_pairs, detection_scores,
)
from app.core.metrics.instances import (
    DEFAULT_THRESHOLDS, InstanceMatch, instance_scores, instance_scores_per_image, match_instances,
)
from app.core.metrics.pixels import pixel_auroc
from app.core.metrics.semantic import (
    MIN_SEMANTIC_CLASSES, check_class_count, confusion_matrix, out_of_range_values, semantic_scores,
)

__all__ = [
    "COCO_RECALL_POINTS", "DEFAULT_THRESHOLDS", "MIN_SEMANTIC_CLASSES", "InstanceMatch", "box_ap", "box_ap_per_class",
    "box_iou", "box_iou_pairs", "check_class_count", "confusion_matrix", "detection_scores", "instance_scores",
    "instance_scores_per_image", "match_instances", "out_of_range_values", "pixel_auroc", "semantic_scores",
]
