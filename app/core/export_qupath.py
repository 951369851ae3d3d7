"""Results objects as QuPath GeoJSON: one FeatureCollection per image that File > Import objects opens.

QuPath's format (0.4+): a FeatureCollection of Features whose ``geometry`` is a Polygon or
MultiPolygon in full-resolution pixel coordinates and whose ``properties`` hold ``objectType``
("annotation" or "detection"), ``classification`` ``{"name": str, "color": [r, g, b]}`` and
``measurements`` (name -> number; QuPath refuses null and text there).  The geometry and the
feature layout come from :func:`app.core.annotations.to_geojson_dict`, the same code the training
import reads back, so export -> import round-trips.  Which layer is an annotation and which
measurements an object carries is the pipeline's vocabulary; callers pass it in (see
``app.exports``), so this module knows no pipeline.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from app.core.annotations import AnnotatedObject, mask_to_rings, to_geojson_dict

# classes outside a pipeline's palette (Kaizen "object", brightfield "nucleus") get the viewer's
# first generic colour (app/gui/overlays.py GENERIC_COLOURS[0]), so QuPath shows what the viewer showed
DEFAULT_COLOUR = "#00e1e1"
# fields of an objects-file entry that are geometry or bookkeeping, not measurements
# (the area is given once, under QuPath's name with its unit: see area_measurement)
_NOT_MEASURED = {"id", "box", "polygon", "centroid", "codes", "score", "class", "tubule_id", "original_class",
                 "area", "area_px"}


def hex_to_rgb(colour: str) -> list[int]:
    """'#rrggbb' as QuPath's [r, g, b] integers."""
    text = colour.lstrip("#")
    return [int(text[i:i + 2], 16) for i in (0, 2, 4)]


def class_colour(name: str, colours: Mapping[str, str] | None = None) -> list[int]:
    """The [r, g, b] of a class: from the pipeline's palette (name -> '#rrggbb'), else the default colour."""
    return hex_to_rgb((colours or {}).get(name, DEFAULT_COLOUR))


def numeric_measurements(values: Mapping[str, Any]) -> dict[str, float]:
    """Only finite numbers (bools as 0/1): QuPath's measurement lists hold numbers, never null or text."""
    out: dict[str, float] = {}
    for key, value in values.items():
        if isinstance(value, (bool, np.bool_)):
            out[str(key)] = float(bool(value))
        elif isinstance(value, (int, float, np.integer, np.floating)) and math.isfinite(float(value)):
            out[str(key)] = float(value) if isinstance(value, (float, np.floating)) else int(value)
    return out


def area_measurement(area_px: float | None, pixel_size_um: float | None) -> dict[str, float]:
    """QuPath's area key: "Area µm^2" when the pixel size is known, else "Area px^2" (the key says the unit)."""
    if area_px is None or not math.isfinite(float(area_px)):
        return {}
    if pixel_size_um:
        return {"Area µm^2": round(float(area_px) * pixel_size_um * pixel_size_um, 4)}
    return {"Area px^2": float(area_px)}


def reported_area(entry: Mapping[str, Any], obj: AnnotatedObject) -> float:
    """The area the pipeline reported (``area_px`` or ``area``: mask pixels), else the outline's area."""
    for key in ("area_px", "area"):
        value = entry.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
    return obj.area


def _finite(value: Any) -> float | None:
    """A score QuPath can hold (a finite number), else None: it becomes the "score" measurement."""
    ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))
    return float(value) if ok and math.isfinite(float(value)) else None


def generic_measurements(obj: Mapping[str, Any]) -> dict[str, float]:
    """The numeric scalar fields of an objects-file entry (area, intensities, gain ...), as they are named."""
    return numeric_measurements({k: v for k, v in obj.items() if k not in _NOT_MEASURED})


def to_annotated(obj: Mapping[str, Any],
                 stack_mask: tuple[np.ndarray, tuple[int, int]] | None = None) -> AnnotatedObject:
    """An objects-file entry as an AnnotatedObject: its polygon, else its mask from a Kaizen stack, else its box."""
    category = str(obj.get("class") or "object")
    polygons: list[Any] = []
    holes: list[Any] = []
    if obj.get("polygon") and len(obj["polygon"]) >= 3:
        polygons = [np.asarray(obj["polygon"], dtype=np.float64)]
    elif stack_mask is not None:
        polygons, holes = mask_to_rings(stack_mask[0], 0.25, stack_mask[1])
    box = obj.get("box")
    if polygons:
        box = None  # the outline's own box, so the geometry and the box agree
    return AnnotatedObject(id=int(obj["id"]), category=category, box=tuple(box) if box else None,
                           polygons=polygons, holes=holes, score=_finite(obj.get("score")))


def stack_masks(stack: Mapping[str, np.ndarray] | None) -> dict[int, tuple[np.ndarray, tuple[int, int]]]:
    """Per object id, its whole mask and offset (y, x) from a Kaizen object stack (``objects.npz``)."""
    if not stack or "masks" not in stack or "offsets" not in stack:
        return {}
    masks = stack["masks"]
    ids = stack["ids"] if "ids" in stack else np.arange(1, len(masks) + 1)
    shapes = stack["shapes"] if "shapes" in stack else np.array([m.shape for m in masks])
    out = {}
    for k, object_id in enumerate(ids):
        h, w = (int(v) for v in shapes[k])
        out[int(object_id)] = (np.asarray(masks[k][:h, :w], bool), (int(stack["offsets"][k][0]),
                                                                      int(stack["offsets"][k][1])))
    return out


def feature_collection(doc: Mapping[str, Any], object_types: Mapping[str, str] | None = None,
                       measurements: Mapping[str, Mapping[Any, Mapping[str, Any]]] | None = None,
                       colours: Mapping[str, str] | None = None,
                       stack: Mapping[str, np.ndarray] | None = None) -> dict[str, Any]:
    """All layers of an objects document as one QuPath FeatureCollection.

    ``object_types``: layer -> "annotation"/"detection" (default "detection");
    ``measurements``: layer -> object id -> name -> value (default: the object's numeric fields and
    its area); ``colours``: class name -> '#rrggbb', the pipeline's palette; ``stack``: a Kaizen
    objects.npz whose masks outline objects that have only a box.  Each feature's ``name`` is
    "<layer> <id>" so QuPath's object list tells where it came from.
    """
    pixel = (doc.get("meta") or {}).get("pixel_size_um")
    masks = stack_masks(stack)
    objects = []
    for layer, entries in (doc.get("layers") or {}).items():
        kind = (object_types or {}).get(layer, "detection")
        per_object = (measurements or {}).get(layer)
        for entry in entries:
            obj = to_annotated(entry, masks.get(int(entry["id"])) if not entry.get("polygon") else None)
            if per_object is not None:
                values = dict(per_object.get(entry["id"], {}))
            else:
                values = {**generic_measurements(entry), **area_measurement(reported_area(entry, obj), pixel)}
            obj.attributes.update(object_type=kind, name=f"{layer} {entry['id']}",
                                  color=class_colour(obj.category, colours),
                                  measurements=numeric_measurements(values))
            objects.append(obj)
    collection = to_geojson_dict(objects)
    for feature in collection["features"]:  # every object gets a measurement list, even an empty one
        feature["properties"].setdefault("measurements", {})
    return collection
