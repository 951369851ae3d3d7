"""Batches of sections: resumable, one failing section logged while the others go on, reports per section.

An output folder is a run folder (:class:`app.core.project.Run`): ``run.json`` records the
parameters, models and which sections are done; each section gets a sub-folder with
``predictions.json`` (raw predictions), ``objects.json`` (after curation edits), ``summary.json``,
``tubules.csv``, ``cells.csv`` and ``<section>.xlsx``; ``batch.xlsx`` pools the sections and
``log.txt`` has one line per section with its time.  Every file is written atomically, so a crash
loses at most the section in progress, and a restarted batch skips finished sections (unless
``force``, or unless they were analysed with other models or parameters, or the section file's
content changed).  Re-running with new edits only rewrites the reports.
"""

from __future__ import annotations

import json
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from app.core.atomic import atomic_write_json
from app.core.device import use_threads
from app.core.edits import edits_for_image, read_edits
from app.core.errors import ImageError, UserError
from app.core.fingerprint import file_fingerprint
from app.core.images import list_images, open_image
from app.core.jobs import ConsoleProgress, Job, Progress, run
from app.core.locks import results_writer
from app.core.outputs import save_report_text
from app.core.project import Run, now_iso
from app.core.project_edit import entry_metadata
from app.core.results import read_objects, write_objects
from app.pipelines.stagetool import curation, tables
from app.pipelines.stagetool.classes import MARKERS
from app.pipelines.stagetool.layout import (
    BATCH_WORKBOOK, EVALUATION_FILE, LOG_FILE, OBJECTS_FILE, PIPELINE, POOLED, PREDICTIONS_FILE, SUMMARY_FILE,
)
from app.pipelines.stagetool.params import AnalyzeParams
from app.pipelines.stagetool.loading import LoadedModel, load_model
from app.pipelines.stagetool.predict import analyze_section, resolve_channels, section_name
from app.pipelines.stagetool.report_excel import write_batch_workbook, write_section_workbook

# parameters that change the predictions (the others only change the reports)
PREDICTION_PARAMS = ("dapi", "antibodies", "tta", "overlap", "cell_tile", "tubule_tile", "tubule_score", "cell_score",
                     "min_votes",
                     "adaptive_low", "adaptive_high", "adaptive_block", "skip_background", "min_tissue",
                     "map_scale", "min_tubule_area_um2", "positive_fraction")


def report_context(section_dir: Path, context: dict | None = None) -> dict:
    """Run id and group (animal, condition) a section's reports carry: as given, else as its summary.json
    recorded them, else the id in the run folder's run.json."""
    found: dict = {"run_id": None, "group": None}
    if (section_dir / SUMMARY_FILE).exists():
        old = json.loads((section_dir / SUMMARY_FILE).read_text())
        found.update({k: old.get(k) for k in found})
    if found["run_id"] is None and (section_dir.parent / "run.json").exists():
        found["run_id"] = json.loads((section_dir.parent / "run.json").read_text()).get("id")
    found.update({k: v for k, v in (context or {}).items() if v is not None})
    return found


def write_section_outputs(section_dir: str | Path, edits: Sequence[dict] = (), evaluation: dict | None = None,
                          context: dict | None = None, force: bool = False) -> dict:
    """From ``predictions.json`` and the edits: objects.json, summary.json, CSV tables and the workbook
    (``context``: run id and group, see :func:`report_context`).

    A CSV table or workbook the user changed is kept and the new one gets a versioned name, unless ``force``.
    """
    section_dir = Path(section_dir)
    raw = read_objects(section_dir / PREDICTIONS_FILE)
    curated = curation.apply(raw, edits)
    write_objects(section_dir / OBJECTS_FILE, curated["image"], PIPELINE, curated["layers"], curated["meta"])
    summary = tables.summarise(curated)
    summary.update({k: v for k, v in report_context(section_dir, context).items() if v is not None})
    atomic_write_json(section_dir / SUMMARY_FILE, summary)
    tubule_rows, cell_rows = tables.tubule_rows(curated), tables.cell_rows(curated)
    save_report_text(section_dir / "tubules.csv", tables.rows_to_csv(tubule_rows), force)
    save_report_text(section_dir / "cells.csv", tables.rows_to_csv(cell_rows), force)
    if evaluation is None and (section_dir / EVALUATION_FILE).exists():
        evaluation = json.loads((section_dir / EVALUATION_FILE).read_text())
    write_section_workbook(section_dir / f"{curated['image']}.xlsx", summary, tubule_rows, cell_rows, evaluation,
                           force=force)
    return summary


def section_outputs(section_dir: Path, name: str) -> dict[str, Path]:
    """The files a finished section has, for run.json."""
    return {"predictions": section_dir / PREDICTIONS_FILE, "objects": section_dir / OBJECTS_FILE,
            "summary": section_dir / SUMMARY_FILE, "tubules": section_dir / "tubules.csv",
            "cells": section_dir / "cells.csv", "workbook": section_dir / f"{name}.xlsx"}


def fingerprint(params: AnalyzeParams, tubule_model: LoadedModel, cell_model: LoadedModel) -> dict[str, Any]:
    """What a section's predictions depend on: model weights and the prediction parameters."""
    values = params.to_dict()
    return {"tubules": tubule_model.card.weights_sha256, "cells": cell_model.card.weights_sha256,
            **{k: values[k] for k in PREDICTION_PARAMS}}


def _stored_fingerprint(section_dir: Path) -> dict[str, Any] | None:
    path = section_dir / PREDICTIONS_FILE
    if not path.exists():
        return None
    try:
        meta = json.loads(path.read_text()).get("meta", {})
    except (OSError, ValueError):
        return None
    params = meta.get("params", {})
    models = meta.get("models", {})
    return {"tubules": models.get("tubules", {}).get("weights_sha256"),
            "cells": models.get("cells", {}).get("weights_sha256"), **{k: params.get(k) for k in PREDICTION_PARAMS}}


def _log(out: Path, line: str) -> None:
    """Append a line to the batch log (small appends; the log is a record, not a result)."""
    with open(out / LOG_FILE, "a", encoding="utf-8") as handle:
        handle.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')}  {line}\n")


def open_run(out: Path, params: AnalyzeParams, models: dict[str, Any]) -> Any:
    """The run in ``out`` (resumed when run.json exists) or a new one."""
    out.mkdir(parents=True, exist_ok=True)
    if (out / "run.json").exists():
        run = Run.load(out)
        if run.pipeline != PIPELINE:
            raise UserError(f"{out} holds a {run.pipeline} run; choose another --out folder for Stagetool")
        run.parameters, run.models = params.to_dict(), models
        run.resume()
        return run
    run = Run(folder=out, id=out.name, pipeline=PIPELINE, parameters=params.to_dict(), models=models,
              started=now_iso())
    run.save()
    return run


def run_sections(run: Any, sections: Sequence[tuple[str, Path]], tubule_model: LoadedModel, cell_model: LoadedModel,
                 params: AnalyzeParams, edits: Sequence[dict] = (), force: bool = False,
                 synthetic: bool | None = None, metadata: dict[str, dict] | None = None,
                 groups: dict[str, str | None] | None = None) -> Job[dict]:
    """Analyse ``(name, path)`` sections into ``run.folder``; returns done/failed/skipped and the batch workbook.

    ``metadata`` maps a section to the pixel size / channel names its project gives (they win over the file's);
    ``groups`` maps it to its project group, written into the reports.
    """
    out = Path(run.folder)
    edits = list(edits) or read_edits(out)  # the GUI keeps its edits in the run folder
    names = [name for name, _ in sections]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise UserError(f"several sections would be written to the same folder: {', '.join(duplicates)}; "
                        "rename the files")
    wanted = fingerprint(params, tubule_model, cell_model)
    done, failed, skipped = [], {}, []
    _log(out, f"batch of {len(sections)} sections, TTA {params.tta}, models {tubule_model.card.name} / "
              f"{cell_model.card.name}")
    for number, (name, path) in enumerate(sections):
        yield Progress("sections", number, len(sections), name, item="section")
        section_dir = out / name
        start = time.monotonic()
        try:
            source = file_fingerprint(path)  # content, so a section rewritten with the same size is analysed again
            fresh = (force or not run.is_done(name) or _stored_fingerprint(section_dir) != wanted
                     or run.source_of(name) != source)
            if fresh:
                for stale in (section_dir / EVALUATION_FILE, out / EVALUATION_FILE):  # about the old predictions
                    stale.unlink(missing_ok=True)
                yield from analyze_section(path, section_dir, tubule_model, cell_model, params, name=name,
                                           synthetic=synthetic, metadata=(metadata or {}).get(name))
            else:
                skipped.append(name)
            summary = write_section_outputs(section_dir, edits_for_image(edits, name),
                                            context={"run_id": run.id, "group": (groups or {}).get(name)},
                                            force=force)
            run.mark_image_done(name, section_outputs(section_dir, name), source=source)
            done.append(name)
            seconds = time.monotonic() - start
            _log(out, f"{name}: {'analysed' if fresh else 'already done, reports rewritten'} in {seconds:.1f} s; "
                      f"{summary['n_tubules']} tubules, {summary['n_cells']} cells")
        except UserError as error:
            failed[name] = str(error)
            run.mark_image_failed(name, str(error))
            _log(out, f"{name}: FAILED: {error}")
        except Exception as error:  # a bug or a resource problem: log it fully and go on with the next section
            failed[name] = f"{type(error).__name__}: {error}"
            run.mark_image_failed(name, failed[name])
            _log(out, f"{name}: FAILED with an unexpected error:\n{traceback.format_exc()}")
    yield Progress("sections", len(sections), len(sections), item="section")
    workbook = write_batch_outputs(out, [n for n in names if run.is_done(n)], force)
    run.finish("finished" if not failed else "failed")
    return {"folder": out, "done": done, "failed": failed, "skipped": skipped, "workbook": workbook}


def write_batch_outputs(out: Path, names: Sequence[str], force: bool = False) -> Path | None:
    """The batch workbook pooling the finished sections' summaries (None when none finished); returns its path.

    A batch workbook the user changed is kept and the new one gets a versioned name, unless ``force``.
    """
    names = [n for n in names if (out / n / SUMMARY_FILE).exists()]
    summaries = [json.loads((out / n / SUMMARY_FILE).read_text()) for n in names]
    if not summaries:
        return None
    evaluations = {n: json.loads((out / n / EVALUATION_FILE).read_text()) for n in names
                   if (out / n / EVALUATION_FILE).exists()}
    if evaluations and (out / EVALUATION_FILE).exists():  # pooled over the sections by evaluate_results
        evaluations[POOLED] = json.loads((out / EVALUATION_FILE).read_text())
    pooled = tables.pool_summaries(summaries)
    atomic_write_json(out / "batch_summary.json", pooled)

    tubule_rows = [tables.tubule_rows(read_objects(out / n / OBJECTS_FILE)) if (out / n / OBJECTS_FILE).exists()
                   else [] for n in names]
    return write_batch_workbook(out / BATCH_WORKBOOK, summaries, pooled, evaluations or None, tubule_rows,
                                force=force)


def section_files(paths: Sequence[str | Path]) -> list[Path]:
    """Section files from command-line paths: folders expand to their images, truth and label files left out."""
    files: list[Path] = []
    for path in map(Path, paths):
        found = list_images(path)
        if path.is_dir():
            found = [f for f in found if not _looks_like_truth(f)]
        files.extend(found)
    if not files:
        raise UserError("no section images given")
    return files


def _looks_like_truth(path: Path) -> bool:
    name = path.name.lower()
    return any(tag in name for tag in ("truth", "label", "mask", "tubules", "cells"))


def check_sections(sections: Sequence[tuple[str, Path]], params: AnalyzeParams) -> None:
    """Before any model is loaded: each section is 2-D and has the DAPI and antibody channels asked for.

    A wrong ``--dapi``/``--antibody`` channel or a z-stack is the user's to fix for the whole batch,
    so it is refused at once (ImageError naming the file and what it has); a file that cannot be
    opened is left to fail on its own in the batch while the other sections go on.
    """
    antibodies, dapi = params.antibody_list(), params.dapi_channel()
    for _, path in sections:
        try:
            image = open_image(path)
        except UserError:
            continue
        with image:
            info = image.info
            if info.n_planes > 1:
                raise ImageError(f"{path}: Stagetool analyses 2-D sections, this file has {info.n_planes} z-planes "
                                 f"(axes {info.axes}, shape {tuple(info.shape)}); save one plane or a projection "
                                 "per section")
            resolve_channels(image, dapi, antibodies, str(path))


def analyze_paths(paths: Sequence[str | Path], out: str | Path, params: AnalyzeParams | None = None,
                  tubule_model: str | Path | None = None, cell_model: str | Path | None = None,
                  edits: Sequence[dict] = (), force: bool = False, synthetic: bool | None = None) -> Job[dict]:
    """The CLI's batch: sections given as files, results in ``out`` (a resumable run folder)."""
    params = params or AnalyzeParams()
    params.validate()
    sections = [(section_name(Path(p)), Path(p)) for p in paths]
    for _, path in sections:
        if not path.is_file():
            raise UserError(f"{path}: no such section file")

    check_sections(sections, params)  # bad channels or axes: exit 2 before any model loads
    with results_writer(Path(out)):  # a second analyze into the same folder is refused, not interleaved
        yield Progress("models", 0, 2, "loading models")
        use_threads(params.threads)
        tubules = load_model(tubule_model, "tubules", params.device)
        cells = load_model(cell_model, "cells", params.device)
        run = open_run(Path(out), params, {"tubules": tubules.reference(), "cells": cells.reference()})
        return (yield from run_sections(run, sections, tubules, cells, params, edits, force, synthetic))


def analyze_project(project: Any, image_names: Sequence[str], params: AnalyzeParams,
                    models: dict[str, str] | None = None) -> Job[Path]:
    """The registry's entry point: a new run in ``project`` over ``image_names``; returns the run folder."""
    params.validate()
    use_threads(params.threads)
    models = models or {}
    tubules = load_model(models.get("tubules") or models.get("stagetool-tubules"), "tubules", params.device)
    cells = load_model(models.get("cells") or models.get("stagetool-cells"), "cells", params.device)
    run = project.new_run(PIPELINE, params.to_dict(), {"tubules": tubules.reference(), "cells": cells.reference()})
    sections = [(name, Path(project.image_path(name))) for name in image_names]

    metadata = {name: entry_metadata(project, name) for name in image_names}  # the project's pixel size wins
    groups = {name: project.image(name).group for name in image_names}
    try:
        yield from run_sections(run, sections, tubules, cells, params, metadata=metadata, groups=groups)
    except GeneratorExit:  # the GUI cancelled the job: the run must not stay "running" for ever
        run.finish("cancelled")
        raise
    return Path(run.folder)


def demo_step(project: Any, folder: Path) -> list[str]:
    """For ``./run.sh``: analyse the sample project's testis sections with the shipped demo models.

    Returns the files a user should open (the batch workbook, copied into the project's reports).
    """
    import shutil



    entries = [entry for entry in project.images() if "testis" in (entry.group or "").lower()]
    if not entries:
        return []
    names = [entry.name for entry in entries]
    markers = [c for c in (entries[0].channels or []) if c in MARKERS]
    params = AnalyzeParams(antibodies=",".join(f"{m}={m}" for m in markers), threads=1)
    run_folder = run(analyze_project(project, names, params), ConsoleProgress())
    produced = [str(run_folder / BATCH_WORKBOOK)] if (run_folder / BATCH_WORKBOOK).exists() else []
    if produced:
        report = project.report_path("stagetool-sample.xlsx")
        shutil.copy2(run_folder / BATCH_WORKBOOK, report)
        produced.append(str(report))
    return produced
