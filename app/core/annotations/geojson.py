"""QuPath GeoJSON files: read into and write from :class:`~app.core.annotations.model.AnnotatedObject`."""

from __future__ import annotations

import json
import logging
import os
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
from skimage import measure

from app.core.atomic import atomic_write_json
from app.core.errors import AnnotationError
from app.core.annotations.geometry import mask_to_rings, ring_area
from app.core.annotations.model import UNCLASSIFIED, AnnotatedObject, ImageAnnotations, load_json


log = logging.getLogger(__name__)

_QUPATH_OLD_TYPES = {"PathAnnotationObject": "annotation", "PathDetectionObject": "detection",
                     "PathCellObject": "cell", "PathTileObject": "tile"}


def _geojson_polygons(geometry: Mapping[str, Any]) -> list[list[Any]]:
    """Polygons (each [exterior, *holes] coordinate lists) of a GeoJSON geometry; [] for points and lines."""
    kind = geometry.get("type")
    if kind == "Polygon":
        return [geometry["coordinates"]]
    if kind == "MultiPolygon":
        return list(geometry["coordinates"])
    if kind == "GeometryCollection":
        return [p for g in geometry["geometries"] for p in _geojson_polygons(g)]
    if kind in ("Point", "MultiPoint", "LineString", "MultiLineString"):
        return []
    raise ValueError(f"unknown geometry type {kind!r}")


def _qupath_category(properties: Mapping[str, Any]) -> tuple[str, Any]:
    """(class name, colour or None) from QuPath properties (classification dict, or string in old files)."""
    cls = properties.get("classification")
    if cls is None:
        return UNCLASSIFIED, None
    if isinstance(cls, str):
        return cls, None
    if isinstance(cls, Mapping):
        name = cls.get("name") or ": ".join(cls.get("names") or []) or UNCLASSIFIED
        return str(name), cls.get("color", cls.get("colorRGB"))
    raise ValueError(f"classification must be an object or a string, not {type(cls).__name__}")


def _geojson_object(feature: Mapping[str, Any], object_id: int) -> AnnotatedObject | None:
    """One QuPath feature as an AnnotatedObject; None for features without an area (points, lines)."""
    if feature.get("type") != "Feature":
        raise ValueError(f"expected a Feature, got type {feature.get('type')!r}")
    geometry = feature.get("geometry")
    properties = feature.get("properties") or {}
    if geometry is None:
        return None
    exteriors, holes = [], []
    for polygon in _geojson_polygons(geometry):
        rings = [np.asarray(r, dtype=np.float64)[:, :2] for r in polygon]
        if not rings or len(_open(rings[0])) < 3:
            continue
        exteriors.append(rings[0])
        holes.extend(r for r in rings[1:] if len(_open(r)) >= 3)
    if not exteriors:
        log.warning("skipping a %s feature without an area", geometry.get("type"))
        return None
    category, color = _qupath_category(properties)
    attributes: dict[str, Any] = {}
    object_type = properties.get("objectType") or _QUPATH_OLD_TYPES.get(str(feature.get("id")))
    if object_type:
        attributes["object_type"] = object_type
    if feature.get("id") and str(feature["id"]) not in _QUPATH_OLD_TYPES:
        attributes["qupath_id"] = str(feature["id"])
    for key in ("name", "isLocked"):
        if key in properties:
            attributes[key] = properties[key]
    if color is not None:
        attributes["color"] = color
    measurements = properties.get("measurements")
    if isinstance(measurements, list):  # QuPath 0.2: [{"name": ..., "value": ...}]
        measurements = {m["name"]: m.get("value") for m in measurements}
    if measurements:
        attributes["measurements"] = dict(measurements)
    if "nucleusGeometry" in feature:
        attributes["nucleus_geometry"] = feature["nucleusGeometry"]
    score = None
    for key in ("score", "Detection probability"):
        if measurements and isinstance(measurements.get(key), (int, float)):
            score = measurements[key]
            break
    return AnnotatedObject(id=object_id, category=category, polygons=exteriors, holes=holes,
                           score=score, attributes=attributes)


def _open(ring: np.ndarray) -> np.ndarray:
    """A ring without its closing vertex."""
    return ring[:-1] if len(ring) > 1 and np.array_equal(ring[0], ring[-1]) else ring


def _features(data: Any) -> list[Any]:
    """The features of a FeatureCollection, a plain list of Features, or a single Feature."""
    if isinstance(data, list):
        return data
    if isinstance(data, Mapping):
        if data.get("type") == "FeatureCollection":
            if not isinstance(data.get("features"), list):
                raise ValueError("FeatureCollection without a 'features' list")
            return data["features"]
        if data.get("type") == "Feature":
            return [data]
        raise ValueError(f"expected a FeatureCollection or Feature, got type {data.get('type')!r}")
    raise ValueError(f"expected GeoJSON features, got a {type(data).__name__}")


def read_geojson(path: str | os.PathLike[str], image_file: str | None = None, height: int | None = None,
                 width: int | None = None) -> ImageAnnotations:
    """Read QuPath's "Export objects as GeoJSON" (annotations, detections, cells) for one image.

    Coordinates are full-resolution pixels.  Polygons and MultiPolygons keep their holes; points
    and lines are skipped (logged).  Unclassified objects get category ``UNCLASSIFIED``.  GeoJSON
    does not store the image size, so ``height``/``width`` stay None unless given.
    """
    data = load_json(path)
    objects = []
    try:
        features = _features(data)
    except ValueError as error:
        raise AnnotationError(f"{path}: {error}") from error
    for index, feature in enumerate(features):
        try:
            obj = _geojson_object(feature, len(objects) + 1)
        except (KeyError, TypeError, ValueError, IndexError, AttributeError) as error:
            raise AnnotationError(f"{path}: feature {index}: {error}") from error
        if obj is not None:
            objects.append(obj)
    name = image_file if image_file is not None else Path(path).stem
    return ImageAnnotations(name, height, width, objects, source=str(path))


def _closed(ring: np.ndarray) -> list[list[float]]:
    """A ring as a closed GeoJSON coordinate list."""
    return np.vstack([ring, ring[:1]]).tolist()


def _geojson_geometry(obj: AnnotatedObject) -> dict[str, Any]:
    """GeoJSON Polygon or MultiPolygon of an object, each hole under the smallest exterior holding it."""
    exteriors, holes = obj.polygons, obj.holes
    if obj.mask is not None or not exteriors:
        if obj.has_shape:
            crop, offset = obj.crop_mask()
            exteriors, holes = mask_to_rings(crop, 0.25, offset)
        else:
            x0, y0, x1, y1 = obj.box  # type: ignore[misc]
            exteriors, holes = [np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]])], []
    order = sorted(range(len(exteriors)), key=lambda i: ring_area(exteriors[i]))
    parts: list[list[list[list[float]]]] = [[_closed(e)] for e in exteriors]
    for hole in holes:
        for i in order:
            if measure.points_in_poly(hole[:1], exteriors[i])[0]:
                parts[i].append(_closed(hole))
                break
    if len(parts) == 1:
        return {"type": "Polygon", "coordinates": parts[0]}
    return {"type": "MultiPolygon", "coordinates": parts}


def to_geojson_dict(objects: Iterable[AnnotatedObject], object_type: str = "annotation") -> dict[str, Any]:
    """A QuPath-readable FeatureCollection; ``object_type`` ("annotation" or "detection") unless an
    object's attributes say otherwise.  Scores go into measurements as "score"."""
    features = []
    for obj in objects:
        a = obj.attributes
        properties: dict[str, Any] = {"objectType": a.get("object_type", object_type)}
        if obj.category != UNCLASSIFIED:
            cls: dict[str, Any] = {"name": obj.category}
            if a.get("color") is not None:
                cls["color"] = a["color"]
            properties["classification"] = cls
        for key in ("name", "isLocked"):
            if key in a:
                properties[key] = a[key]
        measurements = dict(a.get("measurements") or {})
        if obj.score is not None:
            measurements["score"] = obj.score
        if measurements:
            properties["measurements"] = measurements
        geometry = _geojson_geometry(obj)
        features.append({"type": "Feature", "id": a.get("qupath_id") or _feature_id(len(features), geometry, properties),
                         "geometry": geometry, "properties": properties})
    return {"type": "FeatureCollection", "features": features}


def _feature_id(index: int, geometry: dict[str, Any], properties: dict[str, Any]) -> str:
    """A UUID made from the feature itself, so exporting the same results twice gives the same file."""
    text = json.dumps([index, geometry, properties], sort_keys=True, default=str)
    return str(uuid.uuid5(uuid.NAMESPACE_URL, "stagescope:" + text))


def write_geojson(path: str | os.PathLike[str], annotations: ImageAnnotations | Iterable[AnnotatedObject],
                  object_type: str = "annotation") -> Path:
    """Write objects as GeoJSON that QuPath imports (File > Import objects), atomically."""
    objects = annotations.objects if isinstance(annotations, ImageAnnotations) else annotations
    return atomic_write_json(path, to_geojson_dict(objects, object_type), indent=None)
