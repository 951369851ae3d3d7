"""The truth files of Stagetool's phantoms and their readers (what ``evaluate`` and training read).

Per section ``testis_NNN``: ``testis_NNN_tubules.tif`` (tubule ids) and ``testis_NNN_truth.json``
(tubules with stage / kind / usable, cells with box, type, tubule and drawn marker levels), written
by :func:`app.pipelines.stagetool.phantom.write_testis`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from app.core.annotations import AnnotatedObject
from app.core.images import read_image

TRUTH_SUFFIX = "_truth.json"
TUBULES_SUFFIX = "_tubules.tif"


def truth_files(folder: str | Path) -> list[Path]:
    """The truth JSON files of a phantom folder (or the file itself)."""
    folder = Path(folder)
    if folder.is_file():
        return [folder]
    return sorted(folder.glob(f"*{TRUTH_SUFFIX}"))


def read_testis_truth(folder: str | Path) -> list[dict[str, Any]]:
    """Per section of a phantom folder: name, image path, tubule objects and cell objects (core annotations)."""
    sections = []
    for path in truth_files(folder):
        data = json.loads(path.read_text())
        name = path.name[: -len(TRUTH_SUFFIX)]
        labels = read_image(path.with_name(f"{name}{TUBULES_SUFFIX}"))
        found = ndi.find_objects(labels)
        tubules = []
        for t in data["tubules"]:
            if t["id"] > len(found) or found[t["id"] - 1] is None:
                continue
            slices = found[t["id"] - 1]
            tubules.append(AnnotatedObject(id=t["id"], category=t["stage"], mask=labels[slices] == t["id"],
                                           mask_offset=(slices[0].start, slices[1].start),
                                           attributes={"kind": t["kind"], "usable": t["usable"]}))
        cells = [AnnotatedObject(id=i + 1, category=c["type"], box=tuple(c["box"]), attributes={"tubule": c["tubule"]})
                 for i, c in enumerate(data["cells"])]
        sections.append({"name": name, "image": str(path.with_name(data.get("image", f"{name}.ome.tif"))),
                         "tubules": tubules, "cells": cells, "pixel_size_um": data.get("pixel_size_um")})
    return sections


def load_testis_truth(truth: str | Path, section: str) -> dict[str, Any]:
    """Evaluation truth of one section: tubule id image, stage per usable tubule, cell boxes and types."""
    truth = Path(truth)
    candidates = [p for p in truth_files(truth) if p.name[: -len(TRUTH_SUFFIX)] in (section, _base(section))]
    if truth.is_file():
        candidates = [truth]
    if not candidates:
        raise FileNotFoundError(section)
    path = candidates[0]
    data = json.loads(path.read_text())
    name = path.name[: -len(TRUTH_SUFFIX)]
    labels = read_image(path.with_name(f"{name}{TUBULES_SUFFIX}"))
    return {"tubule_labels": labels,
            "tubule_stages": {t["id"]: t["stage"] for t in data["tubules"]},
            "unusable": {t["id"] for t in data["tubules"] if not t["usable"]},
            "cell_boxes": np.array([c["box"] for c in data["cells"]], float).reshape(-1, 4),
            "cell_types": [c["type"] for c in data["cells"]]}


def _base(section: str) -> str:
    """A section name without an .ome suffix (testis_000.ome -> testis_000)."""
    return section[:-4] if section.endswith(".ome") else section
