"""Add an antibody channel to finished Stagetool results: measure each saved cell on that channel.

The analysis measures antibody channels while a tile is in memory; a channel left out then is
measured afterwards from the saved cell boxes and the section image, with the same rule
(:func:`.antigen.measure_cells`), so the report exporter can add antigen profiles without running
the networks again.  The section is read in row strips, so a whole-slide section never sits in memory.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from app.core.errors import UserError
from app.core.images import open_image
from app.core.jobs import Job, Progress
from app.core.results import read_objects, write_objects
from app.pipelines.stagetool import antigen

STRIP_ROWS = 2048  # rows of the section read at once (plus the cells reaching below the strip)


def measure_channel(image_path: str | Path, boxes: np.ndarray, channel: str | int,
                    fraction: float = antigen.POSITIVE_FRACTION) -> tuple[int, np.ndarray, np.ndarray]:
    """Channel index, and per box (x0, y0, x1, y1) the mean and ``q`` of ``channel`` in the box's ellipse."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    means, quants = np.full(len(boxes), np.nan), np.full(len(boxes), np.nan)
    with open_image(image_path) as image:
        index = image.channel_index(channel)
        height, width = image.info.height, image.info.width
        tops = np.floor(boxes[:, 1]).astype(int) if len(boxes) else np.zeros(0, int)
        for y0 in range(0, height, STRIP_ROWS):
            chosen = np.flatnonzero((tops >= y0) & (tops < y0 + STRIP_ROWS)) if y0 else \
                np.flatnonzero(tops < STRIP_ROWS)
            if not len(chosen):
                continue
            top = max(0, int(tops[chosen].min()))
            bottom = min(height, max(top + 1, int(math.ceil(boxes[chosen, 3].max()))))
            region = np.asarray(image.read(channel=index, region=(top, 0, bottom, width)), np.float64)
            means[chosen], quants[chosen] = antigen.measure_cells(region, boxes[chosen], (top, 0), fraction)
    return index, means, quants


def add_antibody(files: Sequence[str | Path], image_path: str | Path, name: str, channel: str | int) -> Job[int]:
    """Job: measure antibody ``name`` on ``channel`` for the cells of each objects file of one section and
    save it into the file (cells' ``antigen``, the meta's ``antibodies`` with a suggested threshold).

    Returns the number of cells measured.  A name already measured in a file is a UserError.
    """
    name = name.strip()
    if not name:
        raise UserError("give the antibody a name")
    measured = 0
    for number, path in enumerate(files):
        yield Progress("measure", number, len(files), f"{name} on {Path(image_path).name}")
        doc = read_objects(Path(path))
        meta = dict(doc.get("meta") or {})
        if any(entry.get("name") == name for entry in meta.get("antibodies", [])):
            raise UserError(f"{Path(path).parent.name}: antibody {name} is measured already")
        cells = (doc.get("layers") or {}).get("cells", [])
        boxes = np.array([cell["box"] for cell in cells], np.float64).reshape(-1, 4)
        fraction = float((meta.get("params") or {}).get("positive_fraction", antigen.POSITIVE_FRACTION))
        index, means, quants = measure_channel(image_path, boxes, channel, fraction)
        for cell, mean, q in zip(cells, means, quants):
            values = {"mean": None if not np.isfinite(mean) else round(float(mean), 3),
                      "q": None if not np.isfinite(q) else round(float(q), 3)}
            cell["antigen"] = {**(cell.get("antigen") or {}), name: values}
        threshold = antigen.suggest_threshold(means)
        meta["antibodies"] = [*meta.get("antibodies", []), {
            "name": name, "channel": channel, "channel_index": index,
            "threshold": float(threshold) if np.isfinite(threshold) else None, "added_after_analysis": True}]
        write_objects(Path(path), doc.get("image"), doc.get("pipeline", "stagetool"), doc.get("layers", {}), meta)
        measured += len(cells)
    yield Progress("measure", len(files), len(files), f"{name}: {measured} cells measured")
    return measured
