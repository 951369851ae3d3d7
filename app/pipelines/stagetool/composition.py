"""Stage a tubule from the cells found in it: the cell associations that define the stages.

Experts stage a tubule by which germ cells sit together (science.md / thesis figure 7: m2m and
secondary spermatocytes only at XII, late elongating spermatids up to VIII, early elongating
spermatids from IX and longer with each stage).  The paper's Mask R-CNN stages a tubule from its
pixels alone; this module is our addition: a multinomial logistic regression on the share of each
of the 9 cell types among a tubule's cells and the elongation of its elongating spermatids,
fitted on annotated tubules (their truth cells) and stored in the tubule model's card
(``extra.composition``), so a model folder carries its stager.  ``AnalyzeParams.stage_from``
chooses masks (the paper), cells (this) or auto (cells where a tubule has enough of them).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from app.core.errors import UserError
from app.pipelines.stagetool.classes import CELL_TYPES, STAGES
from app.pipelines.stagetool.params import MIN_CELLS

ELONGATED = ("early elongating spermatid", "late elongating spermatid")
FEATURES = tuple(f"share {t}" for t in CELL_TYPES) + tuple(f"elongation {t}" for t in ELONGATED) + ("log cells",)


def features(types: Sequence[str], boxes: np.ndarray) -> np.ndarray:
    """The feature vector of one tubule from its cells' types and boxes (x0, y0, x1, y1)."""
    types = list(types)
    boxes = np.asarray(boxes, float).reshape(-1, 4)
    n = max(len(types), 1)
    shares = [sum(1 for t in types if t == name) / n for name in CELL_TYPES]
    sides = np.sort(np.stack([boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]], 1), 1) if len(boxes) else None
    elongation = []
    for name in ELONGATED:
        rows = [i for i, t in enumerate(types) if t == name]
        elongation.append(float(np.mean(sides[rows, 1] / np.maximum(sides[rows, 0], 1.0))) - 1.0 if rows else 0.0)
    return np.array(shares + elongation + [np.log1p(len(types))], np.float64)


@dataclass
class Stager:
    """Standardisation and multinomial logistic regression weights (features -> 5 stage probabilities)."""

    mean: np.ndarray
    scale: np.ndarray
    weights: np.ndarray  # (n_features + 1, n_stages), last row the bias
    n_train: int = 0

    def probabilities(self, x: np.ndarray) -> np.ndarray:
        """Stage probabilities for one feature vector (or rows of them)."""
        z = (np.atleast_2d(x) - self.mean) / self.scale
        logits = np.hstack([z, np.ones((len(z), 1))]) @ self.weights
        logits -= logits.max(1, keepdims=True)
        p = np.exp(logits)
        return p / p.sum(1, keepdims=True)

    def to_dict(self) -> dict[str, Any]:
        return {"features": list(FEATURES), "stages": list(STAGES), "mean": self.mean.round(6).tolist(),
                "scale": self.scale.round(6).tolist(), "weights": self.weights.round(6).tolist(),
                "n_train": self.n_train, "min_cells": MIN_CELLS}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Stager:
        if list(data.get("features", [])) != list(FEATURES) or list(data.get("stages", [])) != list(STAGES):
            raise UserError("the tubule model's composition stager was made for other features or stages")
        return cls(np.array(data["mean"]), np.array(data["scale"]), np.array(data["weights"]), int(data["n_train"]))


def fit(x: np.ndarray, stages: Sequence[str], l2: float = 1e-2, steps: int = 3000, lr: float = 0.5,
        prior: Stager | None = None) -> Stager:
    """Fit the stager by gradient descent on the mean cross-entropy (plus L2 on the weights).

    With ``prior`` the fit starts from that stager (its standardisation kept) and the L2 term pulls
    towards its weights (the bias too) instead of zero: a refit on the few tubules a lab corrected
    adapts the stager to a new cell model without forgetting the stages those tubules do not show.
    """
    x = np.asarray(x, np.float64).reshape(len(stages), len(FEATURES))
    y = np.array([STAGES.index(s) for s in stages])
    if prior is None and len(set(y.tolist())) < 2:
        raise UserError("a composition stager needs annotated tubules of at least two stages")
    if prior is not None:
        mean, scale, anchor = prior.mean, prior.scale, prior.weights
    else:
        mean, scale = x.mean(0), x.std(0)
        scale[scale < 1e-9] = 1.0
        anchor = np.zeros((len(FEATURES) + 1, len(STAGES)))
    z = np.hstack([(x - mean) / scale, np.ones((len(x), 1))])
    onehot = np.eye(len(STAGES))[y]
    w = anchor.copy()
    for _ in range(steps):
        logits = z @ w
        logits -= logits.max(1, keepdims=True)
        p = np.exp(logits)
        p /= p.sum(1, keepdims=True)
        pull = w - anchor
        if prior is None:  # from zero: the bias is not shrunk
            pull[-1] = 0.0
        grad = z.T @ (p - onehot) / len(z) + l2 * pull
        w -= lr * grad
    return Stager(mean, scale, w, len(x) + (prior.n_train if prior is not None else 0))


def accuracy(stager: Stager, x: np.ndarray, stages: Sequence[str]) -> float:
    """Share of rows ``x`` the stager gives their stage."""
    predicted = stager.probabilities(np.asarray(x, np.float64)).argmax(1)
    return float(np.mean([STAGES[i] == s for i, s in zip(predicted, stages)])) if len(stages) else 0.0


def refit_if_better(x: np.ndarray, stages: Sequence[str], prior: Stager) -> tuple[Stager | None, dict[str, Any]]:
    """A refit of ``prior`` on rows ``x``, or None when it would not stage such tubules better.

    Each row is left out once and staged by a refit on the others; the refit is kept only when
    that beats the prior on the same rows (ties keep the prior).  On the adaptation bench this
    kept the refit where it raised held-out stages (widefield k = 2 and 4) and kept the prior
    where a refit on 4-16 tubules would have lost one of 15 (cryosection).
    """
    x = np.asarray(x, np.float64).reshape(len(stages), len(FEATURES))
    before = accuracy(prior, x, stages)
    hits = []
    for i in range(len(stages)):
        others = [j for j in range(len(stages)) if j != i]
        if not others:
            break
        hits.append(accuracy(fit(x[others], [stages[j] for j in others], prior=prior), x[i:i + 1], stages[i:i + 1]))
    left_out = float(np.mean(hits)) if hits else 0.0
    info = {"tubules": len(stages), "stager_in_use_accuracy": round(before, 4),
            "refit_left_out_accuracy": round(left_out, 4), "refitted": left_out > before}
    return (fit(x, stages, prior=prior) if left_out > before else None), info


def truth_examples(sections: Sequence[dict[str, Any]]) -> tuple[np.ndarray, list[str]]:
    """Training rows from truth documents (the phantom truth JSON: tubules with stage/usable, cells with tubule)."""
    rows, stages = [], []
    for doc in sections:
        by_tubule: dict[int, list[dict[str, Any]]] = {}
        for cell in doc["cells"]:
            if cell.get("tubule"):
                by_tubule.setdefault(int(cell["tubule"]), []).append(cell)
        for tubule in doc["tubules"]:
            cells = by_tubule.get(int(tubule["id"]), [])
            if tubule.get("usable", True) and len(cells) >= MIN_CELLS:
                rows.append(features([c["type"] for c in cells], np.array([c["box"] for c in cells])))
                stages.append(tubule["stage"])
    if not rows:
        raise UserError("no usable annotated tubule with its cells was found to fit a composition stager")
    return np.array(rows), stages


def stage_tubules(tubules: list[dict[str, Any]], cells: list[dict[str, Any]], stager: Stager | None,
                  mode: str) -> None:
    """Set each tubule's ``class`` and ``score`` from its cells (``mode`` cells or auto) and record why.

    ``mode`` is ``AnalyzeParams.stage_from`` (checked there): masks, cells or auto.

    The mask vote stays in ``stage_weights``; ``stage_from_cells`` holds the composition
    probabilities and ``stage_source`` says which one decided.
    """
    for t in tubules:
        t["stage_source"] = "masks"
    if mode == "masks" or stager is None:
        if mode == "cells":
            raise UserError("stage_from=cells needs a tubule model with a composition stager (extra.composition)")
        return
    members: dict[int, list[dict[str, Any]]] = {}
    for cell in cells:
        if cell.get("tubule_id"):
            members.setdefault(int(cell["tubule_id"]), []).append(cell)
    for t in tubules:
        own = members.get(int(t["id"]), [])
        if len(own) < MIN_CELLS and mode == "auto":
            continue
        p = stager.probabilities(features([c["class"] for c in own], np.array([c["box"] for c in own])))[0]
        t["stage_from_cells"] = {s: round(float(v), 4) for s, v in zip(STAGES, p)}
        t["class"], t["score"], t["stage_source"] = STAGES[int(p.argmax())], round(float(p.max()), 4), "cells"


def prediction_examples(cells: Sequence[dict[str, Any]], tubule_labels: np.ndarray,
                        tubule_stages: dict[int, str | None], unusable: set[int] | frozenset[int] = frozenset(),
                        ) -> tuple[list[np.ndarray], list[str]]:
    """Training rows from the cells a cell model *found* in an annotated section (results ``cells``).

    Each found cell joins the annotated tubule under its centre (``tubule_labels``, section pixels);
    a usable staged tubule with >= MIN_CELLS found cells gives one row.  Fitting on these instead
    of the annotated cells teaches the stager the cell model's own mistakes (types it mixes up,
    cells it misses), which it meets again on new sections.
    """
    from app.pipelines.stagetool.merge import assign_cells

    members: dict[int, list[dict[str, Any]]] = {}
    tubule_ids = assign_cells(np.array([c["centroid"] for c in cells], float), tubule_labels, 1)
    for cell, tid in zip(cells, tubule_ids.tolist()):
        if tid:
            members.setdefault(tid, []).append(cell)
    rows, stages = [], []
    for tid, stage in sorted(tubule_stages.items()):
        own = members.get(tid, [])
        if stage in STAGES and tid not in unusable and len(own) >= MIN_CELLS:
            rows.append(features([c["class"] for c in own], np.array([c["box"] for c in own])))
            stages.append(stage)
    return rows, stages
