"""Which section to correct next: a per-section uncertainty score from the models' own votes and scores.

A user with an hour to correct should spend it where the models hesitate.  Per tubule the stage
*margin* is the gap between the two most likely stages (the composition stager's probabilities
when the cells decided, else the tubule model's mask vote); per cell the class score says how sure
the cell model was.  A section's ``score`` (0 = sure, 1 = guessing) averages the tubules' lack of
margin and the cells' lack of score; objects the user already corrected (edited, excluded, added)
count as certain, so a corrected section falls down the list.  No Qt: the GUI's browser lists
:func:`rank_sections` as the CLI's ``stagescope stagetool rank`` does.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from app.core.errors import UserError
from app.pipelines.stagetool.classes import STAGES
from app.pipelines.stagetool.layout import OBJECTS_FILE, SUMMARY_FILE

AMBIGUOUS_MARGIN = 0.2  # a tubule whose two best stages are closer than this is "ambiguous"
LOW_CELL_SCORE = 0.6  # a cell scored below this is "unsure"
STAGE_WEIGHT = 0.5  # share of the tubules' stage doubt in the section score (the rest: cells)


def stage_margin(tubule: dict[str, Any]) -> float:
    """Gap between the best and second-best stage of a tubule (0..1); 1 for one the user excluded or restaged."""
    if tubule.get("excluded") or tubule.get("edited"):
        return 1.0
    votes = tubule.get("stage_from_cells") if tubule.get("stage_source") == "cells" else None
    votes = votes or tubule.get("stage_weights") or {}
    p = np.array([float(votes.get(s) or 0.0) for s in STAGES], float)
    if p.sum() <= 0:
        return 0.0
    p = np.sort(p / p.sum())[::-1]
    return float(p[0] - p[1])


def cell_confidence(cell: dict[str, Any]) -> float:
    """How sure the cell model was of a cell (its class score); 1 for a cell the user added or retyped."""
    if cell.get("edited") or cell.get("added"):
        return 1.0
    score = cell.get("score")
    return 1.0 if score is None else float(score)


def section_uncertainty(doc: dict[str, Any]) -> dict[str, Any]:
    """The uncertainty record of one objects document: ``score`` (0..1, higher = correct this first) and its parts."""
    layers = doc.get("layers") or {}
    tubules, cells = layers.get("tubules") or [], layers.get("cells") or []
    margins = np.array([stage_margin(t) for t in tubules], float)
    confidence = np.array([cell_confidence(c) for c in cells], float)
    stage_doubt = float(np.mean(1.0 - margins)) if len(margins) else None
    cell_doubt = float(np.mean(1.0 - confidence)) if len(confidence) else None
    parts = [(STAGE_WEIGHT, stage_doubt), (1.0 - STAGE_WEIGHT, cell_doubt)]
    known = [(w, v) for w, v in parts if v is not None]
    score = sum(w * v for w, v in known) / sum(w for w, _ in known) if known else 0.0
    return {"score": round(score, 4),
            "stage_doubt": None if stage_doubt is None else round(stage_doubt, 4),
            "cell_doubt": None if cell_doubt is None else round(cell_doubt, 4),
            "ambiguous_tubules": int((margins < AMBIGUOUS_MARGIN).sum()),
            "unsure_cells": int((confidence < LOW_CELL_SCORE).sum()),
            "n_tubules": len(tubules), "n_cells": len(cells)}


def _section_folders(results: Path) -> list[Path]:
    """Section folders under a results (run) folder, a folder of runs or a whole project."""
    if not results.is_dir():
        raise UserError(f"{results}: no such results folder")
    if (results / OBJECTS_FILE).exists():
        return [results]
    return sorted(p.parent for p in results.rglob(OBJECTS_FILE))


def rank_sections(results: str | Path) -> list[dict[str, Any]]:
    """Sections of a results folder, most uncertain first: name, folder and :func:`section_uncertainty`.

    Reads ``summary.json`` when it holds the record, else computes it from ``objects.json`` (older results).
    """
    rows = []
    root = Path(results)
    for folder in _section_folders(root):
        record = None
        summary = folder / SUMMARY_FILE
        if summary.exists():
            record = json.loads(summary.read_text()).get("uncertainty")
        doc = None
        if record is None:
            doc = json.loads((folder / OBJECTS_FILE).read_text())
            record = section_uncertainty(doc)
        name = folder.name if doc is None else doc.get("image", folder.name)
        where = folder.parent.relative_to(root).as_posix() if folder != root else ""
        rows.append({"section": name, "folder": str(folder), "run": "" if where == "." else where, **record})
    rows.sort(key=lambda row: (-row["score"], row["section"]))
    return rows


def format_ranking(rows: list[dict[str, Any]]) -> str:
    """The ranking as a plain-text table for the terminal."""
    if not rows:
        return "no analysed sections found"
    lines = [f"{'rank':>4}  {'score':>5}  {'ambiguous tubules':>17}  {'unsure cells':>12}  section"]
    names = [row["section"] for row in rows]
    for number, row in enumerate(rows, start=1):
        name = row["section"] if names.count(row["section"]) == 1 or not row["run"] else f"{row['section']} ({row['run']})"
        tubules = f"{row['ambiguous_tubules']}/{row['n_tubules']}"
        cells = f"{row['unsure_cells']}/{row['n_cells']}"
        lines.append(f"{number:>4}  {row['score']:>5.3f}  {tubules:>17}  {cells:>12}  {name}")
    return "\n".join(lines)
