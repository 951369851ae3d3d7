"""Results as files in the project: one objects JSON per image and run, read by viewer and reports.

An objects file holds ``{"schema_version", "image", "pipeline", "layers": {layer: [object, ...]}, "meta"}``
where each object is a dict with at least ``id``, ``class`` (name), ``box`` (x0, y0, x1, y1) in
section pixel coordinates, and optionally ``polygon`` (list of (x, y)), ``score``, ``centroid``
(y, x), ``tubule_id``, ``excluded`` and pipeline-specific fields.  Layers are what the viewer
draws separately (e.g. "tubules", "cells", "nuclei", "objects").
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from app.core.atomic import read_json
from app.core.errors import UserError

RESULTS_SCHEMA_VERSION = 1
OBJECTS_FILE = "objects.json"


def objects_document(image: str, pipeline: str, layers: dict[str, list[dict]], meta: dict | None = None) -> dict:
    """Build the JSON document for one image's results."""
    return {
        "schema_version": RESULTS_SCHEMA_VERSION,
        "image": image,
        "pipeline": pipeline,
        "layers": layers,
        "meta": meta or {},
    }


def write_objects(path: Path, image: str, pipeline: str, layers: dict[str, list[dict]], meta: dict | None = None) -> Path:
    """Write one image's objects atomically (temp file + rename)."""
    from app.core.project import atomic_write_text

    doc = objects_document(image, pipeline, layers, meta)
    atomic_write_text(Path(path), json.dumps(doc, indent=1, default=_default))
    return Path(path)


def read_objects(path: Path) -> dict[str, Any]:
    """Read an objects file; a corrupt or newer one is a user error naming the file."""
    path = Path(path)
    doc = read_json(path, UserError, "results file")
    if doc.get("schema_version", 0) > RESULTS_SCHEMA_VERSION:
        raise UserError(f"{path}: results written by a newer Stagescope (schema {doc['schema_version']})")
    return doc


def _default(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
