"""What a Stagetool section looks like in QuPath and napari: tubules as annotations, cells as detections.

Measurements come from the same tables as the CSV and Excel reports (:mod:`.tables`), so a number
in QuPath is the number in the workbook: per tubule its area (µm², or px² when the pixel size is
unknown), stage score (the GeoJSON "score"), excluded flag and cells per type; per cell its score (the GeoJSON "score"),
tubule id, and per antibody the mean intensity and positive flag (1/0).  Found by
``app.exports`` as ``app.pipelines.<pipeline>.exports``.
"""

from __future__ import annotations

from typing import Any

from app.core.export_qupath import area_measurement
from app.pipelines.stagetool import tables
from app.pipelines.stagetool.classes import CELL_TYPES, CLASS_COLOURS

OBJECT_TYPES = {"tubules": "annotation", "cells": "detection"}
COLOURS = CLASS_COLOURS  # QuPath shows the stages and cell types in the viewer's colours


def measurements(doc: dict[str, Any]) -> dict[str, dict[Any, dict[str, Any]]]:
    """Layer -> object id -> measurement name -> value, for QuPath's measurement list and the napari CSV."""
    pixel = (doc.get("meta") or {}).get("pixel_size_um")
    tubules = {}
    for row in tables.tubule_rows(doc):
        values: dict[str, Any] = {**area_measurement(row["area_px"], pixel), "Excluded": row["excluded"],
                                  "Num cells": row["cells"]}
        values.update({f"Num {name}": row[name] for name in CELL_TYPES})
        tubules[row["id"]] = values
    cells = {}
    for row in tables.cell_rows(doc):
        values = {"Tubule": row["tubule"]}
        if None not in (row["x0"], row["y0"], row["x1"], row["y1"]):
            values.update(area_measurement((row["x1"] - row["x0"]) * (row["y1"] - row["y0"]), pixel))
        values.update({k: v for k, v in row.items() if k.endswith(" mean") or k.endswith(" positive")})
        cells[row["id"]] = values
    return {"tubules": tubules, "cells": cells}
