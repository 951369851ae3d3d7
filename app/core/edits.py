"""Curation edits: a list of small actions a person took on a run's results, kept in the run folder.

``runs/<run-id>/edits.json`` holds ``{"schema_version": 1, "edits": [edit, ...]}`` where each edit
is a dict ``{"action", "image", "id", "value", ...}``:

- ``exclude_tubule``: ``value`` true/false; the tubule is kept but marked ``excluded``.
- ``restage_tubule``: ``value`` = the new stage name.
- ``retype_cell``: ``value`` = the new cell type.
- ``delete_cell``: the cell is removed (``value`` unused).
- ``add_cell``: a new cell ``id`` of type ``value`` with ``box`` (x0, y0, x1, y1) and optional
  ``centroid`` (y, x); it is assigned to the (non-excluded or excluded) tubule whose polygon holds
  its centre.
- ``resize_cell``: the cell gets ``box`` (x0, y0, x1, y1) and its centre as ``centroid``.
- ``add_tubule``: a new tubule ``id`` of stage ``value`` with ``polygon`` [[x, y], ...]; cells
  not yet in a tubule whose centre it holds join it.
- ``reshape_tubule``: the tubule gets ``polygon``; its cells now outside leave it, cells in no
  tubule now inside join it.

The original results are never rewritten: :func:`apply_edits` applies the list, in order, to an
objects document (:mod:`app.core.results`) and returns a new one.  Edits name ``image`` so one file
serves a run of many images; an edit without ``image`` applies to any image.  A plain JSON list is
also accepted when reading.  No Qt here: the GUI's undo stack appends and removes edits and calls
:func:`write_edits`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from app.core.atomic import atomic_write_json, read_json
from app.core.edit_geometry import as_points, box_centroid, polygon_area, polygon_box
from app.core.errors import UserError

EDITS_FILE = "edits.json"
EDITS_SCHEMA_VERSION = 1
ACTIONS = ("exclude_tubule", "restage_tubule", "retype_cell", "delete_cell", "add_cell", "resize_cell",
           "add_tubule", "reshape_tubule")
# which results layer each action touches (an edit may override with its own "layer")
ACTION_LAYERS = {
    "exclude_tubule": "tubules", "restage_tubule": "tubules",
    "retype_cell": "cells", "delete_cell": "cells", "add_cell": "cells", "resize_cell": "cells",
    "add_tubule": "tubules", "reshape_tubule": "tubules",
}


def edits_path(run_folder: str | os.PathLike[str]) -> Path:
    """The edits file of a run folder (it may not exist yet)."""
    return Path(run_folder) / EDITS_FILE


def make_edit(action: str, image: str | None, object_id: Any, value: Any = None, **extra: Any) -> dict[str, Any]:
    """One edit dict, checked; ``extra`` carries e.g. ``box`` and ``centroid`` for ``add_cell``."""
    edit = {"action": action, "image": image, "id": object_id, "value": value, **extra}
    check_edit(edit)
    return edit


def check_edit(edit: Any, where: str = "edit") -> None:
    """Raise UserError when an edit is malformed (unknown action, no id, add_cell without a box)."""
    if not isinstance(edit, dict):
        raise UserError(f"{where}: expected an object, found {type(edit).__name__}")
    action = edit.get("action")
    if action not in ACTIONS:
        raise UserError(f"{where}: unknown action {action!r} (known: {', '.join(ACTIONS)})")
    if edit.get("id") is None:
        raise UserError(f"{where}: {action} needs an 'id'")
    if action in ("restage_tubule", "retype_cell", "add_cell", "add_tubule") and not isinstance(edit.get("value"), str):
        raise UserError(f"{where}: {action} needs a class name as 'value'")
    if action in ("add_cell", "resize_cell"):
        box = edit.get("box")
        if not isinstance(box, (list, tuple)) or len(box) != 4:
            raise UserError(f"{where}: {action} needs a 'box' (x0, y0, x1, y1)")
    if action in ("add_tubule", "reshape_tubule"):
        polygon = edit.get("polygon")
        if not isinstance(polygon, (list, tuple)) or len(polygon) < 3 \
                or any(not isinstance(p, (list, tuple)) or len(p) != 2 for p in polygon):
            raise UserError(f"{where}: {action} needs a 'polygon' of at least 3 [x, y] points")


def read_edits(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The edits in a file (or a run folder's edits.json); a missing file means no edits."""
    path = Path(path)
    if path.is_dir():
        path = edits_path(path)
    if not path.exists():
        return []
    data = read_json(path, UserError, "edits file")
    if isinstance(data, dict):
        version = data.get("schema_version", 1)
        if isinstance(version, int) and version > EDITS_SCHEMA_VERSION:
            raise UserError(f"{path}: edits written by a newer Stagescope (schema {version})")
        data = data.get("edits", [])
    if not isinstance(data, list):
        raise UserError(f"{path}: edits must be a list")
    for index, edit in enumerate(data):
        check_edit(edit, f"{path}: edit {index + 1}")
    return data


def write_edits(path: str | os.PathLike[str], edits: Iterable[dict[str, Any]]) -> Path:
    """Write the edits atomically (``path`` may be the run folder); returns the file."""
    path = Path(path)
    if path.is_dir():
        path = edits_path(path)
    edits = list(edits)
    for index, edit in enumerate(edits):
        check_edit(edit, f"edit {index + 1}")
    return atomic_write_json(path, {"schema_version": EDITS_SCHEMA_VERSION, "edits": edits})


def edits_for_image(edits: Iterable[dict[str, Any]], image: str) -> list[dict[str, Any]]:
    """The edits that apply to ``image`` (those naming it, and those naming no image)."""
    return [e for e in edits if e.get("image") in (None, image)]


def apply_edits(doc: dict[str, Any], edits: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """A copy of an objects document with the edits for its image applied in order.

    Edited objects get ``edited: True`` and keep their first class as ``original_class``; an edit
    naming an object that is not there (deleted earlier, or from another version) is skipped.
    """
    result = dict(doc)  # objects are copied one level deep: edits only set an object's own keys
    layers = {name: [dict(o) for o in objs or []] for name, objs in (doc.get("layers") or {}).items()}
    result["layers"] = layers
    result["meta"] = dict(doc.get("meta") or {})
    image = result.get("image")
    applied = 0
    for edit in edits:
        if image is not None and edit.get("image") not in (None, image):
            continue
        layer = layers.setdefault(edit.get("layer") or ACTION_LAYERS[edit["action"]], [])
        if _apply_one(edit, layer, layers.get("tubules", []), layers.get("cells")):
            applied += 1
    result["meta"]["edits_applied"] = applied
    return result


def _apply_one(edit: dict[str, Any], objects: list[dict[str, Any]], tubules: list[dict[str, Any]],
               cells: list[dict[str, Any]] | None = None) -> bool:
    """Apply one edit to a layer's object list in place; False when its object is not there."""
    action = edit["action"]
    if action == "add_cell":
        objects.append(_new_cell(edit, tubules))
        return True
    if action == "add_tubule":
        objects.append(_new_tubule(edit))
        _reassign_cells(objects[-1], cells)
        return True
    index = next((i for i, obj in enumerate(objects) if obj.get("id") == edit["id"]), None)
    if index is None:
        return False
    obj = objects[index]
    if action == "delete_cell":
        del objects[index]
    elif action == "resize_cell":
        obj["box"] = [float(v) for v in edit["box"]]
        obj["centroid"] = box_centroid(obj["box"])
        obj["edited"] = obj["resized"] = True
    elif action == "reshape_tubule":
        obj["polygon"] = as_points(edit["polygon"])
        obj["box"] = polygon_box(obj["polygon"])
        obj["area_px"] = round(polygon_area(obj["polygon"]), 1)
        obj["edited"] = obj["reshaped"] = True
        _reassign_cells(obj, cells)
    elif action == "exclude_tubule":
        obj["excluded"] = bool(True if edit.get("value") is None else edit["value"])
        obj["edited"] = True
    else:  # restage_tubule, retype_cell
        obj.setdefault("original_class", obj.get("class"))
        obj["class"] = edit["value"]
        obj["edited"] = True
    return True


def _new_cell(edit: dict[str, Any], tubules: list[dict[str, Any]]) -> dict[str, Any]:
    """The cell an ``add_cell`` edit describes, assigned to the tubule whose polygon holds its centre."""
    x0, y0, x1, y1 = (float(v) for v in edit["box"])
    centroid = edit.get("centroid") or [(y0 + y1) / 2, (x0 + x1) / 2]
    cell = {"id": edit["id"], "class": edit["value"], "box": [x0, y0, x1, y1], "centroid": list(centroid),
            "score": None, "added": True, "edited": True}
    tubule = tubule_at(tubules, float(centroid[0]), float(centroid[1]))
    if tubule is not None:
        cell["tubule_id"] = tubule.get("id")
    return cell


def _new_tubule(edit: dict[str, Any]) -> dict[str, Any]:
    """The tubule an ``add_tubule`` edit describes (drawn by hand: no score)."""
    polygon = as_points(edit["polygon"])
    return {"id": edit["id"], "class": edit["value"], "polygon": polygon, "box": polygon_box(polygon),
            "area_px": round(polygon_area(polygon), 1), "score": None, "added": True, "edited": True}


def _reassign_cells(tubule: dict[str, Any], cells: list[dict[str, Any]] | None) -> None:
    """After a tubule's outline changed: its cells outside leave it, unassigned cells inside join it."""
    polygon = np.asarray(tubule["polygon"], dtype=float)
    for cell in cells or []:
        centroid = cell.get("centroid") or box_centroid(cell.get("box") or [0, 0, 0, 0])
        inside = point_in_polygon(float(centroid[1]), float(centroid[0]), polygon)
        if cell.get("tubule_id") == tubule.get("id") and not inside:
            cell["tubule_id"] = None
        elif cell.get("tubule_id") is None and inside:
            cell["tubule_id"] = tubule.get("id")


def tubule_at(tubules: Iterable[dict[str, Any]], y: float, x: float) -> dict[str, Any] | None:
    """The first tubule whose polygon (or box, when it has none) contains the point (y, x)."""
    for tubule in tubules:
        box = tubule.get("box")
        if box and not (box[0] <= x < box[2] and box[1] <= y < box[3]):
            continue
        polygon = tubule.get("polygon")
        if polygon and len(polygon) >= 3:
            if point_in_polygon(x, y, np.asarray(polygon, dtype=float)):
                return tubule
        elif box:
            return tubule
    return None


def point_in_polygon(x: float, y: float, polygon: np.ndarray) -> bool:
    """Even-odd rule test of (x, y) against a polygon of (x, y) vertices."""
    xs, ys = polygon[:, 0], polygon[:, 1]
    xj, yj = np.roll(xs, 1), np.roll(ys, 1)
    crosses = (ys > y) != (yj > y)
    with np.errstate(divide="ignore", invalid="ignore"):
        at_x = (xj - xs) * (y - ys) / (yj - ys) + xs
    return bool(np.count_nonzero(crosses & (x < at_x)) % 2)


def next_object_id(objects: Iterable[dict[str, Any]], edits: Iterable[dict[str, Any]] = ()) -> int:
    """An integer id not used by any object or earlier add_cell edit (max + 1)."""
    ids = [o.get("id") for o in objects] + [e.get("id") for e in edits if e.get("action") in ("add_cell", "add_tubule")]
    numbers = [int(i) for i in ids if isinstance(i, (int, np.integer)) or (isinstance(i, str) and i.isdigit())]
    return max(numbers, default=0) + 1
