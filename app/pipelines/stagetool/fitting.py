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
from app.core.modelcard import CARD_FILE, load_model_card
from app.pipelines.stagetool.classes import STAGES
from app.pipelines.stagetool.composition import Stager, fit, prediction_examples, truth_examples
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
