"""Section tables from an objects document: summary counts, tubule rows, cell rows, antigen profiles.

Everything a report shows is computed here from the *curated* objects document (the predictions
with the edits applied, :mod:`app.core.edits`), so the JSON summary, the CSV tables and the
Excel workbook can never disagree.  Excluded tubules, and the cells in them, stay in the
tubule and cell tables (flagged) but are left out of the stage tables and antigen profiles.
"""

from __future__ import annotations

import csv
import io
import math
from typing import Any

import numpy as np

from app.pipelines.stagetool.classes import CELL_TYPES, STAGES
from app.pipelines.stagetool import antigen
from app.pipelines.stagetool.uncertainty import section_uncertainty

SUMMARY_SCHEMA_VERSION = 1


def _finite(value: Any) -> Any:
    """NaN/inf as None (JSON null, an empty Excel cell)."""
    if isinstance(value, (float, np.floating)) and not math.isfinite(float(value)):
        return None
    if isinstance(value, np.generic):
        return value.item()
    return value


def tubule_stage_map(tubules: list[dict]) -> dict[Any, str | None]:
    """Stage name per tubule id; None for excluded tubules (they are not staged for the tables)."""
    return {t["id"]: (None if t.get("excluded") else t.get("class")) for t in tubules}


def cell_stage_index(cells: list[dict], tubules: list[dict]) -> np.ndarray:
    """Stage index per cell (-1 when outside a tubule, in an excluded one, or of an unknown stage)."""
    stages = tubule_stage_map(tubules)
    index = {name: i for i, name in enumerate(STAGES)}
    return np.array([index.get(stages.get(c.get("tubule_id")), -1) for c in cells], np.int64)


def cell_type_index(cells: list[dict]) -> np.ndarray:
    """Cell type index per cell (-1 for a class the table does not know)."""
    index = {name: i for i, name in enumerate(CELL_TYPES)}
    return np.array([index.get(c.get("class"), -1) for c in cells], np.int64)


def antibody_thresholds(doc: dict) -> dict[str, float | None]:
    """Threshold T per antibody recorded in the document's meta (user's or suggested; None = none found)."""
    return {a["name"]: a.get("threshold") for a in doc.get("meta", {}).get("antibodies", [])}


def cell_positive(cell: dict, name: str, threshold: float | None) -> bool | None:
    """Whether a cell is positive for antibody ``name`` at ``threshold`` (None when not measured)."""
    values = (cell.get("antigen") or {}).get(name)
    if not values or threshold is None or values.get("mean") is None:
        return None
    return bool(antigen.is_positive(np.array([values["mean"]]), np.array([values["q"]]), threshold)[0])


def summarise(doc: dict) -> dict[str, Any]:
    """Counts per stage and cell type, the stage x cell type table and antigen profiles of one section."""
    layers = doc.get("layers", {})
    tubules, cells = layers.get("tubules", []), layers.get("cells", [])
    meta = doc.get("meta", {})
    used = [t for t in tubules if not t.get("excluded")]
    stage_idx = cell_stage_index(cells, tubules)
    type_idx = cell_type_index(cells)
    table = np.zeros((len(STAGES), len(CELL_TYPES)), np.int64)
    ok = (stage_idx >= 0) & (type_idx >= 0)
    np.add.at(table, (stage_idx[ok], type_idx[ok]), 1)
    profiles = {}
    for name, threshold in antibody_thresholds(doc).items():
        if threshold is None:  # too few cells to suggest one: means are in the cell table, no profile
            continue
        positive = [bool(cell_positive(c, name, threshold)) for c in cells]
        result = antigen.profile(type_idx[ok], stage_idx[ok], np.array(positive, bool)[ok] if cells else [],
                                 len(CELL_TYPES), len(STAGES))
        profiles[name] = {
            "threshold": threshold,
            "percent": _by_names(result["percent"]),
            "positive": _by_names(result["positive"]),
            "total": _by_names(result["total"]),
            "positive_cells": int(sum(positive)),
        }
    return {
        "schema_version": SUMMARY_SCHEMA_VERSION,
        "section": doc.get("image"),
        "group": meta.get("group"),  # animal or condition, when the caller recorded it
        "run_id": meta.get("run_id"),
        "image": meta.get("image_path"),
        "shape": meta.get("shape"),
        "pixel_size_um": meta.get("pixel_size_um"),
        "synthetic": bool(meta.get("synthetic", False)),
        "stages": list(STAGES),
        "cell_types": list(CELL_TYPES),
        "models": meta.get("models", {}),
        "params": meta.get("params", {}),
        "antibodies": meta.get("antibodies", []),
        "edits": meta.get("edits", []),
        "edits_applied": int(meta.get("edits_applied", 0)),
        "n_tubules": len(tubules),
        "n_tubules_used": len(used),
        "n_excluded": len(tubules) - len(used),
        "stage_counts": {s: sum(1 for t in used if t.get("class") == s) for s in STAGES},
        "n_cells": len(cells),
        "n_cells_staged": int(ok.sum()),
        "cell_counts": {c: int((type_idx == i).sum()) for i, c in enumerate(CELL_TYPES)},
        "stage_by_type": _by_names(table),
        "antigen": profiles,
        "uncertainty": section_uncertainty(doc),  # which section to correct next (uncertainty.py)
        "timing_s": meta.get("timing_s", {}),
        "tiles": meta.get("tiles", {}),
        "app_version": meta.get("app_version"),
    }


def _by_names(array: np.ndarray) -> dict[str, dict[str, Any]]:
    """A stages x cell types array as {stage: {cell type: value}} (NaN -> None)."""
    return {s: {c: _finite(array[i, j]) for j, c in enumerate(CELL_TYPES)} for i, s in enumerate(STAGES)}


def tubule_rows(doc: dict) -> list[dict[str, Any]]:
    """One row per tubule: id, stage, score, area, centroid, exclusion and cells per type."""
    layers = doc.get("layers", {})
    tubules, cells = layers.get("tubules", []), layers.get("cells", [])
    pixel = doc.get("meta", {}).get("pixel_size_um")
    counts: dict[Any, dict[str, int]] = {t["id"]: dict.fromkeys(CELL_TYPES, 0) for t in tubules}
    for cell in cells:
        per = counts.get(cell.get("tubule_id"))
        if per is not None and cell.get("class") in per:
            per[cell["class"]] += 1
    rows = []
    for t in tubules:
        centroid = t.get("centroid") or [None, None]
        area = t.get("area_px")
        row = {
            "id": t["id"], "stage": t.get("class"), "score": _finite(t.get("score")),
            "area_px": area, "area_um2": _finite(area * pixel * pixel) if (area is not None and pixel) else None,
            "centroid_y": _finite(centroid[0]), "centroid_x": _finite(centroid[1]),
            "excluded": bool(t.get("excluded", False)), "edited": bool(t.get("edited", False)),
            "original_stage": t.get("original_class"),
        }
        if not pixel:  # no calibration: areas exist in px² only, so no empty µm² column
            del row["area_um2"]
        row.update(counts[t["id"]])
        row["cells"] = sum(counts[t["id"]].values())
        rows.append(row)
    return rows


def cell_rows(doc: dict) -> list[dict[str, Any]]:
    """One row per cell: id, type, score, box, tubule, stage, and per antibody mean and positive flag."""
    layers = doc.get("layers", {})
    stages = tubule_stage_map(layers.get("tubules", []))
    thresholds = antibody_thresholds(doc)
    rows = []
    for c in layers.get("cells", []):
        box = c.get("box") or [None] * 4
        row = {
            "id": c["id"], "type": c.get("class"), "score": _finite(c.get("score")),
            "x0": box[0], "y0": box[1], "x1": box[2], "y1": box[3],
            "tubule": c.get("tubule_id"), "stage": stages.get(c.get("tubule_id")),
            "edited": bool(c.get("edited", False)),
        }
        for name, threshold in thresholds.items():
            values = (c.get("antigen") or {}).get(name) or {}
            row[f"{name} mean"] = _finite(values.get("mean"))
            row[f"{name} positive"] = cell_positive(c, name, threshold)
        rows.append(row)
    return rows


def rows_to_csv(rows: list[dict[str, Any]]) -> str:
    """CSV text of table rows (header from the first row's keys)."""
    buffer = io.StringIO()
    if rows:
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows({k: ("" if v is None else v) for k, v in row.items()} for row in rows)
    return buffer.getvalue()


def pool_summaries(summaries: list[dict[str, Any]]) -> dict[str, Any]:
    """Pooled tables of a batch: summed stage/cell counts and stage x type, antigen % from pooled counts."""
    stage_counts = dict.fromkeys(STAGES, 0)
    cell_counts = dict.fromkeys(CELL_TYPES, 0)
    table = np.zeros((len(STAGES), len(CELL_TYPES)), np.int64)
    antibodies: dict[str, dict[str, np.ndarray]] = {}
    for s in summaries:
        for k in STAGES:
            stage_counts[k] += int(s["stage_counts"].get(k, 0))
        for k in CELL_TYPES:
            cell_counts[k] += int(s["cell_counts"].get(k, 0))
        table += _to_array(s["stage_by_type"])
        for name, prof in s.get("antigen", {}).items():
            acc = antibodies.setdefault(name, {"positive": np.zeros_like(table), "total": np.zeros_like(table)})
            acc["positive"] += _to_array(prof["positive"])
            acc["total"] += _to_array(prof["total"])
    pooled_antigen = {}
    for name, acc in antibodies.items():
        with np.errstate(invalid="ignore", divide="ignore"):
            percent = np.where(acc["total"] > 0, 100.0 * acc["positive"] / np.maximum(acc["total"], 1), np.nan)
        pooled_antigen[name] = {"percent": _by_names(percent), "positive": _by_names(acc["positive"]),
                                "total": _by_names(acc["total"])}
    return {
        "n_sections": len(summaries),
        "n_tubules_used": sum(s["n_tubules_used"] for s in summaries),
        "n_cells": sum(s["n_cells"] for s in summaries),
        "stage_counts": stage_counts, "cell_counts": cell_counts,
        "stage_by_type": _by_names(table), "antigen": pooled_antigen,
        "stages": list(STAGES), "cell_types": list(CELL_TYPES),
        "synthetic": any(s.get("synthetic") for s in summaries),
    }


def _to_array(nested: dict[str, dict[str, Any]]) -> np.ndarray:
    """{stage: {type: value}} back to a stages x types array (None -> 0)."""
    return np.array([[nested.get(s, {}).get(c) or 0 for c in CELL_TYPES] for s in STAGES], np.int64)
