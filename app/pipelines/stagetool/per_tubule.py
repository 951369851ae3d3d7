"""Cells of each type per tubule, as mean and standard deviation per stage (the table a paper reports).

Input rows are :func:`app.pipelines.stagetool.tables.tubule_rows` (one per tubule, with its stage,
exclusion flag and a count per cell type); excluded tubules are left out, as in the stage tables.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class CountStats:
    """Cells of one type per tubule of one stage: tubules counted, mean and sample SD (None below 2 tubules)."""

    n: int
    mean: float | None
    sd: float | None


def cells_per_tubule(rows: Iterable[dict[str, Any]], stages: Sequence[str],
                     cell_types: Sequence[str]) -> dict[str, dict[str, CountStats]]:
    """{stage: {cell type: CountStats}} over the tubules that are not excluded."""
    used = [r for r in rows if not r.get("excluded")]
    result: dict[str, dict[str, CountStats]] = {}
    for stage in stages:
        counts = np.array([[float(r.get(t) or 0) for t in cell_types] for r in used if r.get("stage") == stage],
                          float).reshape(-1, len(cell_types))
        n = len(counts)
        means = counts.mean(axis=0) if n else [None] * len(cell_types)
        sds = counts.std(axis=0, ddof=1) if n > 1 else [None] * len(cell_types)
        result[stage] = {t: CountStats(n, None if m is None else float(m), None if s is None else float(s))
                         for t, m, s in zip(cell_types, means, sds)}
    return result
