"""Evaluation of Stagetool results against ground truth, as in the paper's tables 2-4.

* Tubules, pixel level (table 2): pixel accuracy, mean accuracy, mean IoU, frequency-weighted IoU
  of the section's stage map (background + 5 stages; excluded tubules are background).  The
  paper measured its tubule model on single tiles; here the merged whole-section map is scored.
* Cells (table 3): COCO box AP50 / AP75 over the whole section, and per cell type precision,
  sensitivity and F1 at IoU 0.5 with the type confusion matrix.
* Whole section (table 4): each ground-truth tubule with a stage is matched to the predicted
  tubule covering most of it (IoU >= 0.5); agreement = same stage / all truth tubules (a missed
  tubule counts as a disagreement).

Phantom sections are easier than tissue: every number measured on them says so.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from app.core.annotations import polygon_to_mask
from app.core.atomic import atomic_write_json
from app.core.errors import UserError
from app.core.images import open_image
from app.core.metrics import box_ap, confusion_matrix, detection_scores, semantic_scores
from app.pipelines.stagetool.batch import write_batch_outputs, write_section_outputs
from app.pipelines.stagetool.classes import CELL_TYPES, STAGES
from app.pipelines.stagetool.curation import section_dirs
from app.pipelines.stagetool.layout import EVALUATION_FILE, OBJECTS_FILE, POOLED
from app.pipelines.stagetool.truth import load_testis_truth

PHANTOM_NOTE = "measured on synthetic phantom sections, which are easier than tissue"
MAX_EVAL_PIXELS = 120_000_000


@dataclass
class SectionTruth:
    """Ground truth of one section: tubule id image, stage per tubule id (None = not staged), cells."""

    name: str
    tubule_labels: np.ndarray
    tubule_stages: dict[int, str | None]
    cell_boxes: np.ndarray
    cell_types: list[str]
    synthetic: bool = True
    unusable: set[int] = field(default_factory=set)  # damaged / longitudinal: not staged by experts


def _rasterise(tubules: list[dict], shape: tuple[int, int], scale: int) -> tuple[np.ndarray, np.ndarray]:
    """Predicted (stage map, tubule id map) at 1/scale resolution from tubule polygons (excluded left out)."""
    stage_index = {s: i + 1 for i, s in enumerate(STAGES)}
    stage_map = np.zeros(shape, np.uint8)
    id_map = np.zeros(shape, np.int32)
    for t in sorted(tubules, key=lambda t: -(t.get("area_px") or 0)):
        if t.get("excluded") or len(t.get("polygon") or []) < 3:
            continue
        ring = np.asarray(t["polygon"], np.float64) / scale
        x0, y0 = np.floor(ring.min(0)).astype(int)
        x1, y1 = np.ceil(ring.max(0)).astype(int)
        x0, y0 = max(x0, 0), max(y0, 0)
        x1, y1 = min(x1, shape[1]), min(y1, shape[0])
        if x1 <= x0 or y1 <= y0:
            continue
        mask = polygon_to_mask([ring - [x0, y0]], (y1 - y0, x1 - x0))
        stage_map[y0:y1, x0:x1][mask] = stage_index.get(t.get("class"), 0)
        id_map[y0:y1, x0:x1][mask] = int(t["id"])
    return stage_map, id_map


def _reduce_labels(labels: np.ndarray, scale: int) -> np.ndarray:
    """Nearest (pixel-centre) sampling of a label image at 1/scale."""
    if scale == 1:
        return labels
    return labels[scale // 2::scale, scale // 2::scale]


@dataclass
class SectionParts:
    """What the metrics of one section are computed from, so several sections can be pooled exactly."""

    confusion: np.ndarray  # pixel confusion, background + stages
    scale: int
    stages: dict[str, Any]  # stage_agreement() of the section
    truth_cells: dict[str, np.ndarray]
    pred_cells: dict[str, np.ndarray]


def section_parts(doc: dict[str, Any], truth: SectionTruth) -> SectionParts:
    """Pixel confusion, stage agreement and cell boxes of one curated results document against its truth."""
    height, width = truth.tubule_labels.shape
    scale = max(1, math.ceil(math.sqrt(height * width / MAX_EVAL_PIXELS)))
    truth_ids = _reduce_labels(truth.tubule_labels, scale)
    layers = doc.get("layers", {})
    pred_stage, pred_ids = _rasterise(layers.get("tubules", []), truth_ids.shape, scale)
    stage_lut = np.zeros(int(truth_ids.max()) + 1, np.uint8)
    for tid, stage in truth.tubule_stages.items():
        if stage in STAGES and tid < len(stage_lut):
            stage_lut[tid] = STAGES.index(stage) + 1
    confusion = confusion_matrix(stage_lut[truth_ids], pred_stage, len(STAGES) + 1)
    staged = {tid: (None if tid in truth.unusable else stage) for tid, stage in truth.tubule_stages.items()}
    stages = stage_agreement(truth_ids, staged, pred_ids, layers.get("tubules", []))
    truth_cells, pred_cells = cell_lists(truth, layers.get("cells", []))
    return SectionParts(np.asarray(confusion, np.int64), scale, stages, truth_cells, pred_cells)


def evaluate_section(doc: dict[str, Any], truth: SectionTruth) -> dict[str, Any]:
    """The paper's metrics for one curated results document against its truth."""
    return summarise_parts([section_parts(doc, truth)], doc.get("image"), truth.synthetic)


def summarise_parts(parts: list[SectionParts], section: str | None, synthetic: bool) -> dict[str, Any]:
    """The paper's metrics over one or more sections: confusions and stage counts summed, cells pooled."""
    semantic = semantic_scores(sum(p.confusion for p in parts))
    tubules = {k: float(semantic[k]) for k in ("pixel_accuracy", "mean_accuracy", "mean_iou", "fw_iou")}
    per_iou = list(semantic.get("per_class_iou", []))
    tubules["per_class_iou"] = {name: _num(v) for name, v in zip(("background", *STAGES), per_iou)}
    tubules["resolution_scale"] = max(p.scale for p in parts)
    return {"section": section, "synthetic": synthetic, "note": PHANTOM_NOTE if synthetic else "",
            "n_sections": len(parts), "tubules": tubules,
            "cells": cell_scores([p.truth_cells for p in parts], [p.pred_cells for p in parts]),
            "stages": pool_stages([p.stages for p in parts])}


def _num(value: Any) -> float | None:
    value = float(value)
    return value if math.isfinite(value) else None


def stage_agreement(truth_ids: np.ndarray, truth_stages: dict[int, str | None], pred_ids: np.ndarray,
                    pred_tubules: list[dict]) -> dict[str, Any]:
    """Whole-section stage agreement: truth tubules matched to predicted ones by IoU >= 0.5."""
    pred_stage = {int(t["id"]): t.get("class") for t in pred_tubules if not t.get("excluded")}
    n_pred = int(pred_ids.max()) + 1
    pair = truth_ids.astype(np.int64) * n_pred + pred_ids
    counts = np.bincount(pair.ravel(), minlength=(int(truth_ids.max()) + 1) * n_pred)
    counts = counts.reshape(-1, n_pred)
    truth_area = counts.sum(1)
    pred_area = counts.sum(0)
    matrix = np.zeros((len(STAGES), len(STAGES) + 1), np.int64)  # last column: missed
    for tid, stage in truth_stages.items():
        if stage not in STAGES or tid >= len(truth_area) or truth_area[tid] == 0:
            continue
        overlaps = counts[tid, 1:]
        best = int(np.argmax(overlaps)) + 1 if overlaps.size else 0
        inter = counts[tid, best] if best else 0
        union = truth_area[tid] + pred_area[best] - inter if best else truth_area[tid]
        row = STAGES.index(stage)
        if not best or inter / union < 0.5 or pred_stage.get(best) not in STAGES:
            matrix[row, -1] += 1
        else:
            matrix[row, STAGES.index(pred_stage[best])] += 1
    return _stage_counts(matrix)


def _stage_counts(matrix: np.ndarray) -> dict[str, Any]:
    """Agreement figures from a stage confusion matrix (rows truth, columns predicted + missed)."""
    total, agree, missed = int(matrix.sum()), int(np.trace(matrix[:, :-1])), int(matrix[:, -1].sum())
    labels = list(STAGES)
    return {"n_tubules": total, "agree": agree, "disagree": total - agree, "missed": missed,
            "agreement": agree / total if total else None,
            "confusion": {"labels": labels, "columns": labels + ["missed"], "matrix": matrix.tolist()}}


def pool_stages(stages: list[dict[str, Any]]) -> dict[str, Any]:
    """Stage agreement over several sections (their confusion matrices summed)."""
    return _stage_counts(sum(np.asarray(s["confusion"]["matrix"], np.int64) for s in stages))


def cell_lists(truth: SectionTruth, cells: list[dict]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Truth and predicted cells of a section as metric inputs (boxes, 0-based labels, scores)."""
    index = {c: i for i, c in enumerate(CELL_TYPES)}
    gt = {"boxes": np.asarray(truth.cell_boxes, np.float64).reshape(-1, 4),
          "labels": np.array([index[c] for c in truth.cell_types], np.int64)}
    kept = [c for c in cells if c.get("class") in index]
    pred = {"boxes": np.array([c["box"] for c in kept], np.float64).reshape(-1, 4),
            "labels": np.array([index[c["class"]] for c in kept], np.int64),
            "scores": np.array([c.get("score") if c.get("score") is not None else 1.0 for c in kept], np.float64)}
    return gt, pred


def cell_scores(gt: list[dict[str, np.ndarray]], pred: list[dict[str, np.ndarray]],
                score_threshold: float = 0.0) -> dict[str, Any]:
    """Box AP50/AP75 (%) and per-type precision/sensitivity/F1 at IoU 0.5 with the confusion matrix.

    Over all given sections; AP counts every detection of a section (no 100-per-image cap).
    """
    det = detection_scores(gt, pred, len(CELL_TYPES), iou=0.5, score_threshold=score_threshold,
                           class_names=CELL_TYPES)
    per_class = {}
    for i, name in enumerate(CELL_TYPES):
        per_class[name] = {"precision": _num(det["precision"][i]), "sensitivity": _num(det["sensitivity"][i]),
                           "f1": _num(det["f1"][i]), "truth": int(det["tp"][i] + det["fn"][i]),
                           "predicted": int(det["tp"][i] + det["fp"][i])}
    labels = list(CELL_TYPES) + ["background"]
    if score_threshold > 0:
        pred = [{k: v[p["scores"] >= score_threshold] for k, v in p.items()} for p in pred]
    ap50, ap75 = (_num(box_ap(gt, pred, iou, None)) for iou in (0.5, 0.75))
    return {"AP50": None if ap50 is None else 100 * ap50, "AP75": None if ap75 is None else 100 * ap75,
            "mean_precision": _num(det["mean_precision"]), "mean_sensitivity": _num(det["mean_sensitivity"]),
            "mean_f1": _num(det["mean_f1"]), "n_truth": int(sum(len(g["labels"]) for g in gt)),
            "n_predicted": int(sum(len(p["labels"]) for p in pred)),
            "per_class": per_class, "confusion": {"labels": labels, "matrix": det["confusion"]}}


def format_evaluation(evaluation: dict[str, Any]) -> str:
    """Plain-text tables of one section's evaluation, next to the paper's figures."""
    lines = []
    if evaluation.get("synthetic"):
        lines.append(f"({PHANTOM_NOTE})")
    t = evaluation["tubules"]
    lines.append("tubules (pixel level)      ours     paper")
    for key, paper in (("pixel_accuracy", 0.9180), ("mean_accuracy", 0.8551), ("mean_iou", 0.7423), ("fw_iou", 0.8569)):
        lines.append(f"  {key:22s} {t[key]:.4f}   {paper:.4f}")
    c = evaluation["cells"]
    lines.append("cells                      ours     paper")
    for key, paper in (("AP50", 78.99), ("AP75", 50.00)):
        lines.append(f"  {key:22s} {c[key] if c[key] is not None else float('nan'):7.2f}   {paper:.2f}")
    for key, paper in (("mean_precision", 0.9607), ("mean_sensitivity", 0.8402)):
        value = c[key]
        lines.append(f"  {key:22s} {value if value is not None else float('nan'):.4f}   {paper:.4f}")
    lines.append("  per type at IoU 0.5       precision sensitivity   F1   truth  predicted")
    for name, v in c["per_class"].items():
        fmt = [f"{v[k]:.4f}" if v[k] is not None else "  -   " for k in ("precision", "sensitivity", "f1")]
        lines.append(f"  {name:26s} {fmt[0]:>8s} {fmt[1]:>8s} {fmt[2]:>8s} {v['truth']:6d} {v['predicted']:6d}")
    s = evaluation["stages"]
    share = f"{100 * s['agreement']:.1f}%" if s["agreement"] is not None else "-"
    lines.append(f"whole-section stages: {s['agree']} of {s['n_tubules']} tubules agree ({share}; paper 107 of 112, "
                 f"95.6%); {s['missed']} not found")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------ files


def load_truth(truth: Path, section: str) -> SectionTruth:
    """The ground truth of ``section`` from a truth file or a folder of phantom truth (phantoms.py)."""
    try:
        data = load_testis_truth(truth, section)
    except FileNotFoundError as error:
        raise UserError(f"{truth}: no ground truth for section {section!r} (expected {section}_truth.json "
                        f"and {section}_tubules.tif)") from error
    return SectionTruth(name=section, tubule_labels=data["tubule_labels"], tubule_stages=data["tubule_stages"],
                        cell_boxes=data["cell_boxes"], cell_types=data["cell_types"], synthetic=True,
                        unusable=data["unusable"])


def check_truth_size(section_truth: SectionTruth, shape: Any, truth: Path, name: str) -> None:
    """Refuse ground truth drawn on an image of another size than the section (it would score nonsense)."""
    if not shape or len(shape) != 2:
        return
    height, width = (int(v) for v in shape)
    t_height, t_width = section_truth.tubule_labels.shape[-2:]
    if (t_height, t_width) != (height, width) or section_truth.tubule_labels.ndim != 2:
        raise UserError(f"{truth}: the ground truth of section {name!r} is {t_width} x {t_height} px but the section "
                        f"is {width} x {height} px (width x height); give the truth made for this section")


def check_truth_for_sections(truth: str | Path, sections: Sequence[tuple[str, Path]]) -> None:
    """Before an analysis with ``--truth``: every section has ground truth of its own size (UserError if not)."""
    truth = Path(truth)
    if not truth.exists():
        raise UserError(f"{truth}: no such ground truth file or folder")
    for name, path in sections:
        section_truth = load_truth(truth, name)
        try:
            with open_image(path) as image:
                shape = (image.info.height, image.info.width)
        except UserError:  # an unreadable section fails on its own in the batch, with its message
            continue
        check_truth_size(section_truth, shape, truth, name)


def evaluate_results(results: str | Path, truth: str | Path, force: bool = False) -> dict[str, dict[str, Any]]:
    """Evaluate every section of a results folder; writes evaluation.json and rewrites the workbooks.

    Workbooks and tables the user changed are kept (new ones get versioned names) unless ``force``.
    """
    results, truth = Path(results), Path(truth)
    if not truth.exists():
        raise UserError(f"{truth}: no such ground truth file or folder")
    scored = []  # every section is scored before anything is written, so a bad truth changes no file
    for folder in section_dirs(results):
        doc = json.loads((folder / OBJECTS_FILE).read_text())
        name = doc.get("image") or folder.name
        section_truth = load_truth(truth, name)
        check_truth_size(section_truth, doc.get("meta", {}).get("shape"), truth, name)
        scored.append((folder, doc, name, section_parts(doc, section_truth), section_truth.synthetic))
    evaluations, parts = {}, []
    for folder, doc, name, part, synthetic in scored:
        parts.append(part)
        evaluation = summarise_parts([part], name, synthetic)
        atomic_write_json(folder / EVALUATION_FILE, evaluation)
        edits = doc.get("meta", {}).get("edits", [])
        write_section_outputs(folder, edits, evaluation, force=force)
        evaluations[name] = evaluation
    if len(parts) > 1:
        pooled = summarise_parts(parts, POOLED, all(e["synthetic"] for e in evaluations.values()))
        atomic_write_json(results / EVALUATION_FILE, pooled)
        evaluations[POOLED] = pooled
    if (results / "run.json").exists():
        write_batch_outputs(results, [f.name for f in section_dirs(results)], force)
    return evaluations
