"""Simulated corrections: the edits a careful user would make to a section's predictions, from its ground truth.

For benches and tests of the correct -> train -> re-run loop (``bench/adaptation.py``): the edits
are the core's (:mod:`app.core.edits`), the very list the viewer writes into a run's
``edits.json``, and each comes with the clicks it costs in the viewer (:data:`CLICKS`).

* cells: predictions are matched one-to-one to truth cells by box IoU >= 0.5 (best pairs first);
  a matched cell of the wrong type is retyped, an unmatched prediction deleted, a missed truth cell
  added with its box;
* tubules: a predicted tubule whose best truth tubule (IoU >= 0.5) is usable and of another stage
  is restaged; one matching no truth tubule, or an unusable (damaged, longitudinal) one, excluded;
  a usable truth tubule no prediction found is returned as *missed*: it needs an outline drawn.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from app.core.edits import make_edit, next_object_id
from app.core.metrics import box_iou_pairs
from app.pipelines.stagetool.evaluate import SectionTruth, _rasterise

# clicks in the viewer: select + choose (retype, restage), select + delete/exclude, type + click + drag (add a
# cell with its box), and an outline of about this many vertices for a missed tubule
CLICKS = {"retype_cell": 2, "delete_cell": 2, "add_cell": 3, "restage_tubule": 2, "exclude_tubule": 2,
          "outline": 16}
MATCH_IOU = 0.5


@dataclass
class Corrections:
    """The edits for one section, the clicks they cost and the usable truth tubules still missing."""

    edits: list[dict[str, Any]] = field(default_factory=list)
    missed_tubules: list[int] = field(default_factory=list)  # truth tubule ids: outlines to draw

    @property
    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for edit in self.edits:
            out[edit["action"]] = out.get(edit["action"], 0) + 1
        if self.missed_tubules:
            out["outline"] = len(self.missed_tubules)
        return out

    @property
    def clicks(self) -> int:
        return sum(CLICKS[action] * n for action, n in self.counts.items())


def _match(truth_boxes: np.ndarray, pred_boxes: np.ndarray, scores: np.ndarray) -> dict[int, int]:
    """One-to-one prediction -> truth matches at IoU >= MATCH_IOU, highest IoU first (ties: higher score)."""
    rows, cols, ious = box_iou_pairs(pred_boxes, truth_boxes, MATCH_IOU)
    if not len(rows):
        return {}
    order = np.lexsort((-scores[rows], -ious))
    matched: dict[int, int] = {}
    taken: set[int] = set()
    for i in order:
        p, t = int(rows[i]), int(cols[i])
        if p in matched or t in taken:
            continue
        matched[p] = t
        taken.add(t)
    return matched


def correct_cells(doc: dict[str, Any], truth: SectionTruth) -> list[dict[str, Any]]:
    """Retype, delete and add edits that turn the document's cells into the truth's (at IoU 0.5)."""
    image = doc.get("image")
    cells = (doc.get("layers") or {}).get("cells") or []
    pred_boxes = np.array([c["box"] for c in cells], float).reshape(-1, 4)
    scores = np.array([c.get("score") or 0.0 for c in cells], float)
    truth_boxes = np.asarray(truth.cell_boxes, float).reshape(-1, 4)
    matched = _match(truth_boxes, pred_boxes, scores)
    edits = []
    for p, cell in enumerate(cells):
        if p not in matched:
            edits.append(make_edit("delete_cell", image, cell["id"]))
        elif cell.get("class") != truth.cell_types[matched[p]]:
            edits.append(make_edit("retype_cell", image, cell["id"], truth.cell_types[matched[p]]))
    found = set(matched.values())
    next_id = next_object_id(cells)
    for t, (box, kind) in enumerate(zip(truth_boxes, truth.cell_types)):
        if t not in found:
            x0, y0, x1, y1 = (float(v) for v in box)
            edits.append(make_edit("add_cell", image, next_id, kind, box=[x0, y0, x1, y1],
                                   centroid=[(y0 + y1) / 2, (x0 + x1) / 2]))
            next_id += 1
    return edits


def correct_tubules(doc: dict[str, Any], truth: SectionTruth) -> tuple[list[dict[str, Any]], list[int]]:
    """Restage and exclude edits for the predicted tubules, and the usable truth tubules nobody found."""
    image = doc.get("image")
    tubules = (doc.get("layers") or {}).get("tubules") or []
    labels = truth.tubule_labels
    _, pred_ids = _rasterise(tubules, labels.shape, 1)
    n_pred = int(pred_ids.max()) + 1
    counts = np.bincount((labels.astype(np.int64) * n_pred + pred_ids).ravel(),
                         minlength=(int(labels.max()) + 1) * n_pred).reshape(-1, n_pred)
    truth_area, pred_area = counts.sum(1), counts.sum(0)
    edits, found = [], set()
    for t in tubules:
        pid = int(t["id"])
        if t.get("excluded") or pid >= n_pred or pred_area[pid] == 0:
            continue
        overlaps = counts[1:, pid]
        tid = int(np.argmax(overlaps)) + 1 if overlaps.size else 0
        inter = counts[tid, pid] if tid else 0
        iou = inter / (truth_area[tid] + pred_area[pid] - inter) if tid else 0.0
        stage = truth.tubule_stages.get(tid) if iou >= MATCH_IOU else None
        if iou >= MATCH_IOU:
            found.add(tid)
        if stage is None or tid in truth.unusable:
            edits.append(make_edit("exclude_tubule", image, pid, True))
        elif t.get("class") != stage:
            edits.append(make_edit("restage_tubule", image, pid, stage))
    missed = [tid for tid, stage in sorted(truth.tubule_stages.items())
              if stage is not None and tid not in truth.unusable and tid not in found
              and tid < len(truth_area) and truth_area[tid] > 0]
    return edits, missed


def simulate(doc: dict[str, Any], truth: SectionTruth) -> Corrections:
    """Every correction a careful user makes to one section's (raw) predictions."""
    tubule_edits, missed = correct_tubules(doc, truth)
    return Corrections(tubule_edits + correct_cells(doc, truth), missed)
