"""Curation of Stagetool results: edits applied to predictions, and curated results as training data.

The paper's whole-section output needed manual curation (damaged or longitudinally cut tubules
removed).  Edits are the core's (:mod:`app.core.edits`): exclude or restage a tubule, retype,
delete or add a cell; the GUI writes them, ``stagescope stagetool analyze --edits FILE`` accepts
them.  The raw predictions are never rewritten: :func:`apply` returns a curated copy that records
the edits it applied, which the reports then show.  :func:`export_results` writes the curated
objects as COCO JSON (tubule polygons; cell boxes) so corrected sections become training data.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from app.core.annotations import AnnotatedObject, ImageAnnotations, write_coco
from app.core.edits import apply_edits, edits_for_image
from app.core.errors import UserError
from app.pipelines.stagetool.classes import CELL_TYPES, STAGES
from app.pipelines.stagetool.layout import OBJECTS_FILE


def check_edit_classes(edits: Sequence[dict[str, Any]]) -> None:
    """Refuse a restage/retype/add edit naming a stage or cell type Stagetool does not know."""
    for number, edit in enumerate(edits, start=1):
        action, value = edit.get("action"), edit.get("value")
        if action in ("restage_tubule", "add_tubule") and value not in STAGES:
            raise UserError(f"edit {number}: unknown stage {value!r} (stages: {', '.join(STAGES)})")
        if action in ("retype_cell", "add_cell") and value not in CELL_TYPES:
            raise UserError(f"edit {number}: unknown cell type {value!r} (types: {', '.join(CELL_TYPES)})")


def apply(doc: dict[str, Any], edits: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """A curated copy of a predictions document with ``edits`` (for its section) applied and recorded."""
    mine = edits_for_image(list(edits), doc.get("image"))
    check_edit_classes(mine)
    curated = apply_edits(doc, mine)
    curated.setdefault("meta", {})["edits"] = mine
    return curated


def section_dirs(results: Path) -> list[Path]:
    """Section folders of a results folder (or the folder itself when it is one section)."""
    results = Path(results)
    if (results / OBJECTS_FILE).exists():
        return [results]
    found = sorted(p for p in results.iterdir() if (p / OBJECTS_FILE).exists()) if results.is_dir() else []
    if not found:
        raise UserError(f"{results}: no Stagetool results here (no */objects.json); run stagescope stagetool analyze")
    return found


def to_annotations(doc: dict[str, Any]) -> tuple[Any, Any]:
    """(tubules, cells) as core ImageAnnotations of the section image; excluded tubules are left out."""
    meta = doc.get("meta", {})
    height, width = meta.get("shape", [None, None])
    file_name = meta.get("image_path") or doc.get("image")
    tubules = ImageAnnotations(file_name, height, width)
    for t in doc["layers"].get("tubules", []):
        if t.get("excluded") or len(t.get("polygon") or []) < 3:
            continue
        tubules.objects.append(AnnotatedObject(id=int(t["id"]), category=t["class"],
                                               polygons=[np.asarray(t["polygon"], float)]))
    cells = ImageAnnotations(file_name, height, width)
    for c in doc["layers"].get("cells", []):
        cells.objects.append(AnnotatedObject(id=len(cells.objects) + 1, category=c["class"], box=tuple(c["box"])))
    return tubules, cells


def export_results(results: str | Path, out: str | Path) -> list[Path]:
    """Write ``tubules.coco.json`` and ``cells.coco.json`` of every curated section into ``out``."""
    out = Path(out)
    tubule_images, cell_images = [], []
    for folder in section_dirs(Path(results)):
        doc = json.loads((folder / OBJECTS_FILE).read_text())
        tubules, cells = to_annotations(doc)
        tubule_images.append(tubules)
        cell_images.append(cells)
    return [write_coco(out / "tubules.coco.json", tubule_images, list(STAGES)),
            write_coco(out / "cells.coco.json", cell_images, list(CELL_TYPES))]
