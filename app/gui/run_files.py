"""Where a run keeps an image's results: objects files (raw and curated), seeded edits, Kaizen's stack.

No Qt: the viewer, the report exporter and the training wizard read runs through these.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def objects_file(run: Any, image: str) -> Path | None:
    """The objects JSON of ``image`` in a run (recorded output ``objects``, else the usual places)."""
    from app.core.results import OBJECTS_FILE

    recorded = run.output_path(image, "objects") if hasattr(run, "output_path") else None
    if recorded is not None and recorded.is_file():
        return recorded
    outputs = (getattr(run, "results", {}) or {}).get(image, {}).get("outputs", {}) or {}
    for value in outputs.values():
        if isinstance(value, str) and value.endswith(".json") and "objects" in Path(value).name:
            path = Path(run.folder) / value
            if path.is_file():
                return path
    for path in (Path(run.folder) / image / OBJECTS_FILE, Path(run.folder) / f"{image}.{OBJECTS_FILE}"):
        if path.is_file():
            return path
    return None


def base_objects_file(run: Any, image: str) -> Path | None:
    """The uncurated results of an image: the ``predictions`` output when a pipeline keeps its raw
    predictions apart from the curated ``objects`` (Stagetool), else the objects file.

    The viewer and the reports apply the run's edits to this file, so an edit is never applied twice.
    """
    recorded = run.output_path(image, "predictions") if hasattr(run, "output_path") else None
    if recorded is not None and recorded.is_file():
        return recorded
    return objects_file(run, image)


def seed_edits(run: Any, image: str) -> list[dict[str, Any]]:
    """Edits already applied at analysis time (e.g. ``--edits FILE``) when the run has no edits file yet.

    They are recorded in the curated objects' ``meta.edits``; a session starts from them so the
    viewer shows what the pipeline reported.
    """
    from app.core.edits import EDITS_FILE

    base, curated = base_objects_file(run, image), objects_file(run, image)
    if (Path(run.folder) / EDITS_FILE).exists() or curated is None or base == curated:
        return []
    try:
        meta = json.loads(curated.read_text(encoding="utf-8")).get("meta", {})
    except (OSError, ValueError):
        return []
    edits = meta.get("edits") or []
    return [e for e in edits if isinstance(e, dict)]


def latest_run_with_results(project: Any, image: str) -> Any:
    """The newest run of the project that has an objects file for ``image`` (None if there is none)."""
    for run in reversed(project.runs()):
        if image in run.results and objects_file(run, image) is not None:
            return run
    return None


def stack_file(run: Any, image: str) -> Path | None:
    """Kaizen's object stack (generated object images, ``*.objects.npz``) of an image in a run, if any."""
    recorded = run.output_path(image, "stack") if hasattr(run, "output_path") else None
    if recorded is not None and recorded.is_file():
        return recorded
    folder = Path(run.folder) / image
    found = sorted(folder.glob("*.objects.npz")) if folder.is_dir() else []
    return found[0] if found else None
