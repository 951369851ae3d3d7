"""Which section to correct next: a per-section uncertainty score from the models' own votes and scores.

A user with an hour to correct should spend it where the models hesitate.  Per tubule the stage
*margin* is the gap between the two most likely stages (the composition stager's probabilities
when the cells decided, else the tubule model's mask vote); per cell the class score says how sure
the cell model was.  A section's ``score`` (0 = sure, 1 = guessing) averages the tubules' lack of
margin and the cells' lack of score; objects the user already corrected (edited, excluded, added)
count as certain, so a corrected section falls down the list.  The suggested order
(:func:`suggest_order`) also covers the stages: each next section adds the most stages the ones
before it did not show.  No Qt: the GUI's browser lists that order as ``stagescope stagetool rank`` does.
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
    shown = [str(t.get("class")) for t in tubules if not t.get("excluded") and t.get("class") in STAGES]
    corrected = sum(1 for o in [*tubules, *cells] if o.get("edited") or o.get("added") or o.get("excluded"))
    return {"score": round(score, 4),
            "stage_doubt": None if stage_doubt is None else round(stage_doubt, 4),
            "cell_doubt": None if cell_doubt is None else round(cell_doubt, 4),
            "ambiguous_tubules": int((margins < AMBIGUOUS_MARGIN).sum()),
            "unsure_cells": int((confidence < LOW_CELL_SCORE).sum()),
            "n_tubules": len(tubules), "n_cells": len(cells),
            "stages": {stage: shown.count(stage) for stage in STAGES if stage in shown},
            "corrected_objects": corrected}


def suggest_order(records: dict[str, dict[str, Any]]) -> list[tuple[str, list[str]]]:
    """Sections in the order to correct them, each with the stages it adds: (name, new stages).

    A model learns a stage only from corrected tubules of that stage, and a few sections may not
    show them all (on the adaptation bench the two corrected cryosection sections held no X-XI
    tubule, the stage of the one held-out error).  So each next section is the one whose tubules
    (as the models staged them) add the most stages not yet covered, the most doubtful among equals.
    Sections with corrections already count as covered and come last.
    """
    def stages(name: str) -> set[str]:
        return set((records[name].get("stages") or {}).keys())

    done = sorted((n for n in records if records[n].get("corrected_objects")), key=lambda n: (-records[n]["score"], n))
    covered = set().union(*(stages(n) for n in done)) if done else set()
    todo = sorted((n for n in records if n not in done), key=lambda n: (-records[n]["score"], n))
    order = []
    while todo:
        best = max(todo, key=lambda n: len(stages(n) - covered))  # the first of equals: the most doubtful
        order.append((best, sorted(stages(best) - covered, key=STAGES.index)))
        covered |= stages(best)
        todo.remove(best)
    return order + [(n, []) for n in done]


def _section_folders(results: Path) -> list[Path]:
    """Section folders under a results (run) folder, a folder of runs or a whole project."""
    if not results.is_dir():
        raise UserError(f"{results}: no such results folder")
    if (results / OBJECTS_FILE).exists():
        return [results]
    return sorted(p.parent for p in results.rglob(OBJECTS_FILE))


def rank_sections(results: str | Path) -> list[dict[str, Any]]:
    """Sections of a results folder in the order to correct them (:func:`suggest_order`): name, folder,
    :func:`section_uncertainty` and ``adds_stages``.

    Reads ``summary.json`` when it holds the record, else computes it from ``objects.json`` (older
    results; a summary without stage counts is ranked by its score alone).
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
    if "stages" not in (rows[0] if rows else {}) or any("stages" not in row for row in rows):
        rows.sort(key=lambda row: (-row["score"], row["section"]))  # summaries older than the stage counts
        return rows
    keyed = {f"{row['run']}/{row['section']}": row for row in rows}
    ordered = []
    for key, adds in suggest_order(keyed):
        ordered.append({**keyed[key], "adds_stages": adds})
    return ordered


def format_ranking(rows: list[dict[str, Any]]) -> str:
    """The ranking as a plain-text table for the terminal."""
    if not rows:
        return "no analysed sections found"
    lines = [f"{'rank':>4}  {'score':>5}  {'ambiguous tubules':>17}  {'unsure cells':>12}  {'adds stages':<26}  section"]
    names = [row["section"] for row in rows]
    for number, row in enumerate(rows, start=1):
        name = row["section"] if names.count(row["section"]) == 1 or not row["run"] else f"{row['section']} ({row['run']})"
        tubules = f"{row['ambiguous_tubules']}/{row['n_tubules']}"
        cells = f"{row['unsure_cells']}/{row['n_cells']}"
        adds = ", ".join(row.get("adds_stages") or []) or "-"
        lines.append(f"{number:>4}  {row['score']:>5.3f}  {tubules:>17}  {cells:>12}  {adds:<26}  {name}")
    return "\n".join(lines)
