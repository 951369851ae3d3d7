"""Results as files in the project: one objects JSON per image and run, read by viewer and reports.

An objects file holds ``{"schema_version", "image", "pipeline", "layers": {layer: [object, ...]}, "meta"}``
where each object is a dict with at least ``id``, ``class`` (name), ``box`` (x0, y0, x1, y1) in
section pixel coordinates, and optionally ``polygon`` (list of (x, y)), ``score``, ``centroid``
(y, x), ``tubule_id``, ``excluded`` and pipeline-specific fields.  Layers are what the viewer
draws separately (e.g. "tubules", "cells", "nuclei", "objects").
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from app.core.atomic import json_default, read_json
from app.core.errors import UserError

RESULTS_SCHEMA_VERSION = 1
OBJECTS_FILE = "objects.json"
STAGING_PREFIX = ".partial-"


@contextmanager
def output_set(folder: Path) -> Iterator[Path]:
    """Yield a hidden staging folder inside ``folder``; its files move into ``folder`` only if the block succeeds.

    One image's outputs (labels, objects file, tables, run record) thus appear together or not at
    all: a full disk or an error midway leaves the previous files untouched and no labels without
    their objects.json.  Hidden leftovers (writers' temporary files) are not moved.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=folder))
    try:
        yield staging
        for item in sorted(staging.iterdir()):
            if not item.name.startswith("."):
                os.replace(item, folder / item.name)
    except OSError as error:  # name the output the user asked for, not the staging folder
        if error.filename and str(error.filename).startswith(str(staging)):
            error.filename = str(folder / Path(error.filename).relative_to(staging))
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


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
    from app.core.atomic import atomic_write_text

    doc = objects_document(image, pipeline, layers, meta)
    atomic_write_text(Path(path), json.dumps(doc, indent=1, default=json_default))
    return Path(path)


def read_objects(path: Path) -> dict[str, Any]:
    """Read an objects file; a corrupt or newer one is a user error naming the file."""
    path = Path(path)
    doc = read_json(path, UserError, "results file")
    if not isinstance(doc, dict):
        raise UserError(f"{path}: not a results file (a JSON object is expected, this holds a {type(doc).__name__})")
    if doc.get("schema_version", 0) > RESULTS_SCHEMA_VERSION:
        raise UserError(f"{path}: results written by a newer Stagescope (schema {doc['schema_version']})")
    return doc
