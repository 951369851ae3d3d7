"""How well a run agrees with a user's corrections: old model vs new model on the corrected sections.

After "Train on my corrections" the question is whether the new model now predicts what the user
corrected.  The corrected results (predictions with the edits applied) are the reference: tubules
are paired by box overlap (IoU >= 0.5, greedy by IoU) and count as agreeing when the stage is the
same; cells are paired the same way and count when the type is the same.  An unpaired reference
object disagrees.  No Qt; the GUI shows :func:`compare_runs`'s rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from app.core.metrics import box_iou_pairs

MATCH_IOU = 0.5


def _boxes(objects: Sequence[dict[str, Any]]) -> np.ndarray:
    return np.asarray([o.get("box") or [0, 0, 0, 0] for o in objects], dtype=float).reshape(-1, 4)


def pair_objects(reference: Sequence[dict[str, Any]], predicted: Sequence[dict[str, Any]],
                 min_iou: float = MATCH_IOU) -> list[tuple[int, int]]:
    """(reference index, predicted index) pairs: each object used once, best IoU first."""
    rows, cols, ious = box_iou_pairs(_boxes(reference), _boxes(predicted), min_iou)
    used_r: set[int] = set()
    used_c: set[int] = set()
    pairs = []
    for k in np.argsort(-ious, kind="stable"):
        r, c = int(rows[k]), int(cols[k])
        if r not in used_r and c not in used_c:
            used_r.add(r)
            used_c.add(c)
            pairs.append((r, c))
    return pairs


def layer_agreement(reference: Sequence[dict[str, Any]], predicted: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Paired objects of the same class: agreement (share of the reference), precision, sensitivity."""
    reference = [o for o in reference if not o.get("excluded")]
    predicted = [o for o in predicted if not o.get("excluded")]
    same = sum(1 for r, c in pair_objects(reference, predicted) if reference[r].get("class") == predicted[c].get("class"))
    return {"reference": len(reference), "predicted": len(predicted), "agree": same,
            "agreement": same / len(reference) if reference else None,
            "precision": same / len(predicted) if predicted else None,
            "sensitivity": same / len(reference) if reference else None}


def section_agreement(corrected: dict[str, Any], run_doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Tubule stage and cell type agreement of one run's section with the corrected section."""
    out = {}
    for layer in ("tubules", "cells"):
        ref = (corrected.get("layers") or {}).get(layer)
        if ref is not None:
            out[layer] = layer_agreement(ref, (run_doc.get("layers") or {}).get(layer) or [])
    return out


def pooled(rows: Sequence[dict[str, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Sections summed: counts added, then the ratios of the sums."""
    out: dict[str, dict[str, Any]] = {}
    for row in rows:
        for layer, values in row.items():
            total = out.setdefault(layer, {"reference": 0, "predicted": 0, "agree": 0})
            for key in total:
                total[key] += values[key]
    for total in out.values():
        ref, pred, agree = total["reference"], total["predicted"], total["agree"]
        total.update(agreement=agree / ref if ref else None, precision=agree / pred if pred else None,
                     sensitivity=agree / ref if ref else None)
    return out


def compare_runs(corrected: dict[str, dict[str, Any]], old: dict[str, dict[str, Any]],
                 new: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows "what, old model, new model" over the sections present in all three (image -> objects document)."""
    images = [name for name in corrected if name in old and name in new]
    before = pooled([section_agreement(corrected[i], old[i]) for i in images])
    after = pooled([section_agreement(corrected[i], new[i]) for i in images])
    rows = []
    labels = {"tubules": ("tubule stage agreement", "agreement"),
              "cells": ("cell type sensitivity", "sensitivity")}
    for layer, (label, key) in labels.items():
        if layer in before:
            rows.append({"what": label, "old": before[layer][key], "new": after[layer][key],
                         "objects": before[layer]["reference"]})
    if "cells" in before:
        rows.append({"what": "cell type precision", "old": before["cells"]["precision"],
                     "new": after["cells"]["precision"], "objects": before["cells"]["reference"]})
    for row in rows:
        row["sections"] = len(images)
    return rows
