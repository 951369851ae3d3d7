"""Pixel scores (brightfield U-Net): exact ROC AUC via ranks (Mann-Whitney U)."""

from __future__ import annotations

import numpy as np
from scipy.stats import rankdata


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
