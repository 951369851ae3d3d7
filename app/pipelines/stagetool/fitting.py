"""Fit a tubule model's composition stager and store it in the model's card (``stagescope stagetool fit-stager``).

The workflow around :mod:`.composition` (which holds the stager itself): gather training rows from
truth files or from the cells a cell model found in annotated sections, fit, and write the stager
into ``extra.composition`` of the tubule model card.  Kept apart from :mod:`.composition` because it
reads results folders and truth (:mod:`.evaluate`), which the analysis that uses the stager must not
import.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from app.core.atomic import atomic_write_json, read_json
from app.core.errors import ModelError, UserError
from app.core.jobs import Job, Progress
from app.core.modelcard import CARD_FILE, load_model_card, resolve_model
from app.pipelines.stagetool.classes import CELL_TYPES, STAGES
from app.pipelines.stagetool.composition import (Stager, accuracy, features, fit, prediction_examples, refit_if_better,
                                                  truth_examples)
from app.pipelines.stagetool.curation import section_dirs
from app.pipelines.stagetool.evaluate import load_truth
from app.pipelines.stagetool.layout import PREDICTIONS_FILE
from app.pipelines.stagetool.params import MIN_CELLS
from app.pipelines.stagetool.truth import truth_files


def fit_into_model(truth: Sequence[str | Path], model_dir: str | Path,
                   predictions: str | Path | None = None, data: str | None = None) -> tuple[Stager, float]:
    """Fit a stager and store it in a tubule model's card; returns it and its training accuracy.

    Without ``predictions`` it is fitted on the annotated cells of the truth files/folders; with a
    results folder of ``stagescope stagetool analyze`` on the same annotated sections, on the cells
    the cell model found there (:func:`.composition.prediction_examples`).  ``data`` (what it was fitted on, for
    the card) defaults to a description made from the inputs.
    """
    if predictions is not None:
        return _fit_predictions_into_model(Path(predictions), [Path(t) for t in truth], model_dir, data)
    docs = [read_json(path, UserError, "truth file") for folder in truth for path in truth_files(folder)]
    if not docs:
        raise UserError(f"no truth JSON found in {', '.join(str(t) for t in truth)}")
    return fit_docs_into_model(docs, model_dir, data or f"{len(docs)} truth file(s)")


def _fit_predictions_into_model(results: Path, truth: Sequence[Path], model_dir: str | Path,
                                data: str | None) -> tuple[Stager, float]:
    if len(truth) != 1:
        raise UserError("fitting on predictions needs one truth folder (the annotated sections' truth)")
    rows, stages, names = [], [], []
    for folder in section_dirs(results):
        doc = read_json(folder / PREDICTIONS_FILE, UserError, "results file")
        name = doc.get("image") or folder.name
        section = load_truth(truth[0], name)
        r, s = prediction_examples(doc["layers"]["cells"], section.tubule_labels, section.tubule_stages,
                                   section.unusable)
        rows += r
        stages += s
        names.append(name)
    if not rows:
        raise UserError(f"{results}: no analysed section with annotated tubules holding {MIN_CELLS} or more found cells")
    cell_model = doc.get("meta", {}).get("models", {}).get("cells", {}).get("name", "?")
    data = data or (f"cells found by model {cell_model!r} in {len(names)} annotated section(s) ({results.name}), "
                    f"their truth stages")
    return store_in_model(np.array(rows), stages, model_dir, data)


def fit_docs_into_model(docs: Sequence[dict[str, Any]], model_dir: str | Path, data: str) -> tuple[Stager, float]:
    """Fit a stager on truth documents and store it (with ``data``, what it was fitted on) in a tubule model's card."""
    x, stages = truth_examples(docs)
    return store_in_model(x, stages, model_dir, data)


def store_in_model(x: np.ndarray, stages: Sequence[str], model_dir: str | Path, data: str) -> tuple[Stager, float]:
    """Fit a stager on feature rows and store it (with ``data``, what it was fitted on) in a tubule model's card."""
    card = load_model_card(model_dir)
    if card.pipeline != "stagetool-tubules":
        raise ModelError(f"{model_dir} is a {card.pipeline} model, not a Stagetool tubule model")
    stager = fit(x, stages)
    accuracy = float(np.mean([STAGES[i] == s for i, s in zip(stager.probabilities(x).argmax(1), stages)]))
    path = Path(model_dir) / CARD_FILE
    card_data = read_json(path, ModelError, "the model card")
    card_data.setdefault("extra", {})["composition"] = {**stager.to_dict(), "train_accuracy": round(accuracy, 4),
                                                        "data": data}
    atomic_write_json(path, card_data)
    return stager, accuracy


# ----------------------------------------------------------- refit on a new cell model's own cells


def outline_examples(tubules: Sequence[Any], boxes: np.ndarray, types: Sequence[str]) -> tuple[list[np.ndarray], list[str]]:
    """Stager rows from staged tubule outlines and cells: each cell joins the outline holding its box centre.

    ``tubules`` are annotated objects (:class:`~app.core.annotations.AnnotatedObject`) whose category
    is a stage and which have an outline or mask; ``boxes`` (x0, y0, x1, y1 section px) and
    ``types`` are the cells.  A tubule with fewer than MIN_CELLS cells gives no row.
    """
    boxes = np.asarray(boxes, float).reshape(-1, 4)
    cx, cy = (boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2
    rows, stages = [], []
    for tubule in tubules:
        if tubule.category not in STAGES or not tubule.has_shape:
            continue
        mask, (oy, ox) = tubule.crop_mask()
        iy, ix = np.floor(cy - oy).astype(int), np.floor(cx - ox).astype(int)
        near = np.flatnonzero((iy >= 0) & (ix >= 0) & (iy < mask.shape[0]) & (ix < mask.shape[1]))
        inside = near[mask[iy[near], ix[near]]]
        if len(inside) >= MIN_CELLS:
            rows.append(features([types[i] for i in inside], boxes[inside]))
            stages.append(tubule.category)
    return rows, stages


def refit_for_cell_model(model_dir: str | Path, sections: Sequence[Any], tubules: Sequence[Sequence[Any]],
                         tubule_model: str | Path | None = None, device: str = "auto",
                         threads: int | None = None) -> Job[dict[str, Any] | None]:
    """Refit the stager on the cells a newly trained cell model finds in its own corrected sections.

    Tubule stages come from the cells the cell model finds, and a stager fitted on the old model's
    cells misreads a fine-tuned model's (bench/adaptation.py, widefield: 22 of 42 held-out stages
    right; refitted this way, 33).  The new model analyses each training section (``sections``: with
    a ``path``; ``tubules``: that section's corrected, staged outlines); its cells joined to those
    outlines are the rows.  The fit starts from the stager already in use (the model's own, else
    ``tubule_model``'s, default the demo's), is pulled towards it, and is kept only when it stages the
    corrected tubules better left out one at a time (:func:`.composition.refit_if_better`); then it is
    stored in the cell model's card (``extra.composition``), where analysis looks first.  The decision
    is recorded in ``extra.stager_refit`` and returned; None when there was nothing to fit.
    """
    from app.pipelines.stagetool.loading import DEMO_MODELS, load_model
    from app.pipelines.stagetool.params import AnalyzeParams
    from app.pipelines.stagetool.predict import find_cells

    pairs = [(s, t) for s, t in zip(sections, tubules) if getattr(s, "path", None) is not None
             and any(o.category in STAGES and o.has_shape for o in t)]
    if not pairs:
        return None
    model = load_model(model_dir, "cells", device)
    prior_data = (model.card.extra or {}).get("composition")
    start = f"its own stager ({model.card.name})"
    if not prior_data:
        try:
            tubule_card = resolve_model(tubule_model or DEMO_MODELS["tubules"], pipeline="stagetool-tubules")
        except (ModelError, UserError):
            tubule_card = resolve_model(DEMO_MODELS["tubules"], pipeline="stagetool-tubules")
        prior_data = (tubule_card.extra or {}).get("composition")
        start = f"the stager of {tubule_card.name!r}"
    if not prior_data:
        return None
    prior = Stager.from_dict(prior_data)
    params = AnalyzeParams(device=device, threads=AnalyzeParams().threads if threads is None else threads)
    rows: list[np.ndarray] = []
    stages: list[str] = []
    for number, (section, outlines) in enumerate(pairs):
        yield Progress("stager", number, len(pairs), f"finding cells in {section.name} with the new model")
        cells = yield from find_cells(section.path, model, params, section.channel, section.pixel_size_um)
        r, s = outline_examples(outlines, cells.boxes, [CELL_TYPES[int(i)] for i in cells.labels])
        rows += r
        stages += s
    yield Progress("stager", len(pairs), len(pairs), f"{len(rows)} staged tubule(s) with enough cells")
    if not rows:
        return None
    stager, info = refit_if_better(np.array(rows), stages, prior)
    where = f"{len(pairs)} corrected section(s) ({len(rows)} staged tubules)"
    scores = (f"{info['refit_left_out_accuracy']:.2f} of them right when each was left out, against "
              f"{info['stager_in_use_accuracy']:.2f} for the stager in use")
    info["data"] = (f"refitted on the cells this model found in {where}, starting from {start} ({scores})"
                    if stager is not None else
                    f"kept {start}: a refit on the cells this model found in {where} staged them no better ({scores})")
    path = Path(model_dir) / CARD_FILE
    card_data = read_json(path, ModelError, "the model card")
    card_data.setdefault("extra", {})["stager_refit"] = info
    if stager is not None:
        card_data["extra"]["composition"] = {**stager.to_dict(), "train_accuracy": round(accuracy(stager, np.array(rows), stages), 4),
                                             "data": info["data"]}
    atomic_write_json(path, card_data)
    yield Progress("stager", len(pairs), len(pairs), info["data"])
    return info


def refit_from_paths(model_dir: str | Path, annotations: Sequence[str | Path], device: str = "auto",
                     threads: int | None = None) -> Job[dict[str, Any] | None]:
    """``stagetool train cells RESULTS...``: the stager refit on the corrected results among ``annotations``.

    Annotation files and phantom folders are passed over (a model trained on them is not the loop's);
    each corrected section's staged outlines go with its cells.  None when no results folder has any.
    """
    from app.pipelines.stagetool.dataset import _is_results, load_sections
    from app.pipelines.stagetool.start import models_of_results

    results = [Path(p) for p in annotations if Path(p).is_dir() and _is_results(Path(p))]
    if not results:
        return None
    try:
        outlines = {s.name: s.objects for s in load_sections(results, "tubules")}
    except UserError:  # no tubules in the corrected results: nothing to stage from
        return None
    sections = load_sections(results, "cells")
    try:
        tubule_model = models_of_results(results[0]).get("tubules")
    except UserError:
        tubule_model = None
    return (yield from refit_for_cell_model(model_dir, sections, [outlines.get(s.name, []) for s in sections],
                                            tubule_model, device, threads))
