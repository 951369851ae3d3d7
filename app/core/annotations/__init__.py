"""Annotated objects in memory and their files: COCO JSON, QuPath GeoJSON, label images, RLE.

Coordinates
-----------
Polygons are (K, 2) float arrays of (x, y) vertices in pixel coordinates of the whole image or
section, where pixel (row r, column c) covers [c, c + 1) x [r, r + 1) (its centre is
(c + 0.5, r + 0.5)).  This is the convention of COCO, QuPath and our boxes (x0, y0, x1, y1 with
x1/y1 exclusive), so a polygon traced around a mask has the mask's exact bounding box.  Rings are
stored open (last vertex != first); GeoJSON's closing vertex is dropped on import and added on
export.

Shapes
------
An object's region is the union of its ``polygons`` (exterior rings) minus the union of its
``holes`` (interior rings).  A part lying inside another part's hole (an island in a lake) is lost
by that rule; such objects are rare in microscopy and keep their exact shape when a ``mask`` is set.
A ``mask`` (bool array cropped to the object, placed at ``mask_offset`` = (y0, x0)) takes precedence
over polygons when rendering.

RLE is COCO's (column-major run lengths, starting with a background run); it is implemented here in
numpy so the app runs without pycocotools, which the tests use as a cross-check.

Modules: ``geometry`` (rings, boxes, masks <-> polygons), ``rle`` (COCO run lengths), ``model``
(AnnotatedObject, ImageAnnotations, label images), ``coco`` and ``geojson`` (the two file formats).
The names below are the public face; import them from here.
"""

from __future__ import annotations

from app.core.annotations.coco import coco_category_names, from_coco_dict, read_coco, to_coco_dict, write_coco
from app.core.annotations.geojson import read_geojson, to_geojson_dict, write_geojson
from app.core.annotations.geometry import (Box, mask_to_box, mask_to_polygons, mask_to_rings, polygon_to_mask,
                                           polygons_to_box)
from app.core.annotations.model import (UNCLASSIFIED, AnnotatedObject, ImageAnnotations, check_categories,
                                        labels_to_objects, objects_to_labels)
from app.core.annotations.rle import rle_counts_from_string, rle_counts_to_string, rle_decode, rle_encode

__all__ = [
    "UNCLASSIFIED", "AnnotatedObject", "Box", "ImageAnnotations", "check_categories", "coco_category_names",
    "from_coco_dict", "labels_to_objects", "mask_to_box", "mask_to_polygons", "mask_to_rings",
    "objects_to_labels", "polygon_to_mask", "polygons_to_box", "read_coco", "read_geojson",
    "rle_counts_from_string", "rle_counts_to_string", "rle_decode", "rle_encode", "to_coco_dict",
    "to_geojson_dict", "write_coco", "write_geojson",
]
