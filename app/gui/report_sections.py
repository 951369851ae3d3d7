"""What the report exporter works on, without widgets: sections of runs, curated documents, thresholds, jobs.

A section is one image's results in one run; its curated document is the objects file with the run's
edits applied.  The workbook writer is looked up when needed (Stagetool's report code) and runs as a
job.  No Qt: the dialog (:mod:`app.gui.report_exporter`) and tests use these directly.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from app.core.edits import apply_edits, edits_for_image, read_edits
from app.core.errors import UserError
from app.core.jobs import Progress
from app.core.results import read_objects
from app.gui.run_files import base_objects_file, objects_file, seed_edits


@dataclass(frozen=True)
class SectionEntry:
    """One image's results in one run: ``objects`` is the uncurated file the run's edits apply to."""

    run_id: str
    run_folder: Path
    pipeline: str
    image: str
    objects: Path
    seeded: str = "[]"  # JSON of the edits applied at analysis time, when the run has no edits file
    group: str | None = None  # the image's group in the project (animal, condition), for the workbook


REPORT_LAYERS = ("tubules", "cells")  # the workbook holds tubules with stages and cells with types


def report_pipelines() -> set[str]:
    """Pipelines whose results fill the workbook: Stagetool, and any registered one writing its layers."""
    from app.pipelines import registry

    found = {name for name, spec in registry.pipelines().items() if set(REPORT_LAYERS) <= set(spec.layers)}
    return found | {"stagetool"}


def section_entries(project: Any, pipelines: set[str] | None = None) -> list[SectionEntry]:
    """Every (run, image) with an objects file of the runs of ``pipelines`` (default: :func:`report_pipelines`;
    Kaizen or Brightfield runs would make an all-zero Stagetool workbook), newest run first."""
    pipelines = report_pipelines() if pipelines is None else pipelines
    entries = []
    for run in reversed(project.runs()):
        if run.pipeline not in pipelines:
            continue
        for image in run.results:
            path = base_objects_file(run, image)
            if path is not None:
                seeded = json.dumps(seed_edits(run, image))
                group = next((e.group for e in project.images() if e.name == image), None)
                entries.append(SectionEntry(run.id, Path(run.folder), run.pipeline, image, path, seeded, group))
    return entries


def curated_document(entry: SectionEntry, thresholds: dict[str, float] | None = None) -> dict[str, Any]:
    """A section's objects with the run's edits applied and the chosen antibody thresholds set."""
    doc = read_objects(entry.objects)
    edits = read_edits(entry.run_folder) or json.loads(entry.seeded)
    edits = edits_for_image(edits, entry.image)
    doc = apply_edits(doc, edits)
    meta = doc.setdefault("meta", {})
    meta["edits"] = edits
    meta["run_id"], meta["group"] = entry.run_id, entry.group  # columns of the workbook
    if thresholds:
        meta["antibodies"] = [dict(a, threshold=thresholds.get(a["name"], a.get("threshold")))
                              for a in meta.get("antibodies", [])]
    return doc


def antibodies_of(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Antibodies measured in the documents: name -> first meta entry (channel, threshold ...)."""
    found: dict[str, dict[str, Any]] = {}
    for doc in docs:
        for entry in doc.get("meta", {}).get("antibodies", []):
            found.setdefault(entry["name"], dict(entry))
    return found


def cell_measures(docs: list[dict[str, Any]], name: str) -> tuple[np.ndarray, np.ndarray]:
    """Mean intensity and the 65%-quantile value (``q``) of every measured cell for one antibody."""
    means, qs = [], []
    for doc in docs:
        for cell in doc.get("layers", {}).get("cells", []):
            values = (cell.get("antigen") or {}).get(name) or {}
            if values.get("mean") is not None:
                means.append(float(values["mean"]))
                qs.append(float(values.get("q", values["mean"])))
    return np.array(means, dtype=float), np.array(qs, dtype=float)


def positive_mask(means: np.ndarray, qs: np.ndarray, threshold: float) -> np.ndarray | None:
    """Which cells are positive at ``threshold`` by the Stagetool rule (None when it is not installed)."""
    try:
        antigen = importlib.import_module("app.pipelines.stagetool.antigen")
    except ImportError:
        return None
    return np.asarray(antigen.is_positive(means, qs, threshold), dtype=bool)


def suggested_threshold(means: np.ndarray) -> float | None:
    """The Stagetool suggestion for T from the cells' means (None when unavailable)."""
    try:
        antigen = importlib.import_module("app.pipelines.stagetool.antigen")
    except ImportError:
        return None
    value = float(antigen.suggest_threshold(means)) if len(means) else float("nan")
    return value if np.isfinite(value) else None


def duplicated_sections(entries: list[SectionEntry]) -> dict[str, list[str]]:
    """Images chosen from more than one run: image -> run ids (such a section would be counted twice)."""
    runs: dict[str, list[str]] = {}
    for entry in entries:
        runs.setdefault(entry.image, []).append(entry.run_id)
    return {image: ids for image, ids in runs.items() if len(ids) > 1}


def entry_files(project: Any, entry: SectionEntry) -> list[Path]:
    """The objects files of a section in its run: the raw predictions and, when apart, the curated objects."""
    run = project.get_run(entry.run_id)
    curated = objects_file(run, entry.image)
    return [entry.objects] + ([curated] if curated is not None and curated != entry.objects else [])


def add_antibody_job(project: Any, entries: list[SectionEntry], name: str, channel: str) -> Any:
    """Job: measure antibody ``name`` on ``channel`` for the saved cells of each section (Stagetool's
    remeasure step, no networks); returns the number of cells measured."""
    from app.pipelines.stagetool.remeasure import add_antibody

    total = 0
    for entry in entries:
        total += yield from add_antibody(entry_files(project, entry), project.image_path(entry.image), name, channel)
    return total


def find_report_writer() -> Callable[[list[dict[str, Any]], Path], Path] | None:
    """A function writing a workbook from curated documents, or None when the report code is absent."""
    try:
        excel = importlib.import_module("app.pipelines.stagetool.report_excel")
        tables = importlib.import_module("app.pipelines.stagetool.tables")
    except ImportError:
        return None
    needed = (getattr(excel, "write_section_workbook", None), getattr(excel, "write_batch_workbook", None),
              getattr(tables, "summarise", None))
    if not all(needed):
        return None

    def write(docs: list[dict[str, Any]], path: Path) -> Path:
        if len(docs) == 1:
            doc = docs[0]
            return excel.write_section_workbook(path, tables.summarise(doc), tables.tubule_rows(doc),
                                                tables.cell_rows(doc))
        summaries = [tables.summarise(doc) for doc in docs]
        return excel.write_batch_workbook(path, summaries, tables.pool_summaries(summaries), None,
                                          [tables.tubule_rows(doc) for doc in docs])

    return write


def report_job(entries: list[SectionEntry], thresholds: dict[str, float], path: Path,
               writer: Callable[[list[dict[str, Any]], Path], Path]):
    """Job: read the curated sections and write the workbook; returns its path."""
    docs = []
    for number, entry in enumerate(entries):
        yield Progress("read", number, len(entries), f"{entry.image} ({entry.run_id})")
        docs.append(curated_document(entry, thresholds))
    yield Progress("write", 0, 1, f"writing {path.name}")
    written = writer(docs, path)
    yield Progress("write", 1, 1, f"wrote {written}")
    return written


def preview_task(entry: SectionEntry, channel: int | None, project_folder: Path, image_path: Path) -> dict[str, Any]:
    """Reader thread: the section document and the overview of one antibody channel."""
    from app.core.pyramid import open_pyramid, pyramid_cache_dir

    doc = curated_document(entry)
    picture, factor = None, 1.0
    try:
        with open_pyramid(image_path, pyramid_cache_dir(project_folder, entry.image)) as pyramid:
            level = pyramid.overview_level()
            if level is not None:
                raw = pyramid.read(level)
                index = channel if channel is not None and channel < raw.shape[0] else 0
                picture, factor = raw[index], pyramid.levels[level].factor
    except (UserError, OSError):
        picture = None
    return {"doc": doc, "picture": picture, "factor": factor}
