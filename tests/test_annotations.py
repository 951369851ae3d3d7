"""Tests for app.core.annotations: RLE, masks <-> polygons <-> labels, COCO and QuPath GeoJSON files."""

from __future__ import annotations

import json

import numpy as np
import pytest

from app.core import annotations as A
from app.core.errors import AnnotationError
from app.core.metrics import match_instances


def disk_mask(shape=(48, 64), centre=(22.3, 30.6), radius=14.2) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 < radius**2


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


# --------------------------------------------------------------------------------------------
# RLE
# --------------------------------------------------------------------------------------------


def test_rle_hand_computed():
    mask = np.array([[0, 1],
                     [1, 1],
                     [0, 0]], bool)
    # column-major: column 0 = 0,1,0 ; column 1 = 1,1,0 -> 0 1 0 1 1 0 -> runs bg1 fg1 bg1 fg2 bg1
    rle = A.rle_encode(mask)
    assert rle == {"size": [3, 2], "counts": [1, 1, 1, 2, 1]}
    np.testing.assert_array_equal(A.rle_decode(rle), mask)
    full = np.ones((2, 2), bool)
    assert A.rle_encode(full)["counts"] == [0, 4]  # starts with an empty background run
    assert A.rle_encode(~full)["counts"] == [4]
    assert A.rle_counts_from_string(A.rle_counts_to_string([1, 1, 1, 2, 1])) == [1, 1, 1, 2, 1]
    with pytest.raises(ValueError):
        A.rle_decode({"size": [3, 2], "counts": [1, 1]})  # sums to 2, not 6


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # inside pycocotools, numpy 2
def test_rle_agrees_with_pycocotools():
    mask_util = pytest.importorskip("pycocotools.mask")
    rng = np.random.default_rng(1)
    for i in range(40):
        h, w = (int(v) for v in rng.integers(1, 40, 2))
        mask = rng.random((h, w)) < rng.random()
        if i < 2:
            mask[:] = bool(i)  # all empty, all full
        ours = A.rle_encode(mask)
        ref = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
        assert A.rle_counts_to_string(ours["counts"]) == ref["counts"].decode()
        assert A.rle_counts_from_string(ref["counts"]) == ours["counts"]
        np.testing.assert_array_equal(A.rle_decode({"size": [h, w], "counts": ref["counts"].decode()}), mask)
        theirs = mask_util.decode(mask_util.frPyObjects({"size": [h, w], "counts": ours["counts"]}, h, w))
        np.testing.assert_array_equal(theirs.astype(bool), mask)
    big = np.zeros((300, 500), bool)  # large counts need several characters each, and negative deltas
    big[10:290, 7:9] = True
    big[100:101, 200:480] = True
    ref = mask_util.encode(np.asfortranarray(big.astype(np.uint8)))
    assert A.rle_counts_to_string(A.rle_encode(big)["counts"]) == ref["counts"].decode()


# --------------------------------------------------------------------------------------------
# masks, polygons, labels
# --------------------------------------------------------------------------------------------


def test_disk_polygon_mask_polygon_round_trip():
    mask = disk_mask()
    polygons = A.mask_to_polygons(mask)
    assert len(polygons) == 1 and polygons[0].shape[1] == 2
    # outline through pixel-edge midpoints: its box is the mask's exact (end-exclusive) box
    assert A.polygons_to_box(polygons) == A.mask_to_box(mask)
    back = A.polygon_to_mask(polygons, mask.shape)
    assert iou(back, mask) > 0.95
    again = A.polygon_to_mask(A.mask_to_polygons(back), mask.shape)
    assert iou(again, back) > 0.95


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # inside pycocotools, numpy 2
def test_polygon_raster_matches_pycocotools_convention():
    mask_util = pytest.importorskip("pycocotools.mask")
    t = np.linspace(0, 2 * np.pi, 60, endpoint=False)
    ring = np.c_[31.3 + 17.2 * np.cos(t), 28.7 + 13.1 * np.sin(t)]
    ours = A.polygon_to_mask([ring], (64, 64))
    coco = mask_util.decode(mask_util.merge(mask_util.frPyObjects([ring.ravel().tolist()], 64, 64))).astype(bool)
    # same pixel convention: a handful of boundary pixels differ; a half-pixel shift differs by ~40
    assert (ours ^ coco).sum() <= 10


def test_mask_with_hole_gives_exterior_and_hole_ring():
    mask = np.zeros((12, 12), bool)
    mask[2:10, 2:10] = True
    mask[4:7, 4:7] = False  # 3x3 hole: area 64 - 9 = 55
    exteriors, holes = A.mask_to_rings(mask, tolerance=0)
    assert len(exteriors) == 1 and len(holes) == 1
    np.testing.assert_array_equal(A.polygon_to_mask(exteriors, mask.shape, holes), mask)
    obj = A.AnnotatedObject(1, "x", polygons=exteriors, holes=holes)
    assert obj.box == (2.0, 2.0, 10.0, 10.0)
    np.testing.assert_array_equal(obj.to_mask(mask.shape), mask)


def synthetic_labels() -> np.ndarray:
    labels = np.zeros((40, 50), np.uint16)
    labels[disk_mask((40, 50), (12, 12), 8)] = 3
    labels[disk_mask((40, 50), (12, 27), 8)] = 5  # touches label 3
    labels[25:38, 5:45] = 9
    labels[28:33, 20:26] = 0  # hole in 9 ...
    labels[29:32, 21:25] = 12  # ... with a small object inside it
    labels[0, 49] = 4  # single pixel on the image edge
    return labels


@pytest.mark.parametrize("keep_masks", [False, True])
def test_labels_objects_labels_round_trip(keep_masks):
    labels = synthetic_labels()
    objects = A.labels_to_objects(labels, "nucleus", keep_masks=keep_masks)
    assert [o.id for o in objects] == [3, 4, 5, 9, 12]
    assert objects[1].box == (49.0, 0.0, 50.0, 1.0)
    assert len(objects[3].holes) == 1
    back = A.objects_to_labels(objects, labels.shape)
    assert back.dtype == np.uint16
    m = match_instances(labels, back)
    truth_ids, pred_ids, ious = m.matches(0.5)
    assert truth_ids.tolist() == pred_ids.tolist() == [3, 4, 5, 9, 12]
    assert ious.min() > 0.95


def test_labels_round_trip_is_exact_on_real_nuclei(shared_data):
    tifffile = pytest.importorskip("tifffile")
    path = shared_data / "stardist-sample" / "mask2d.tif"
    if not path.is_file():
        pytest.skip(f"{path} not present")
    labels = tifffile.imread(path)
    objects = A.labels_to_objects(labels)
    assert len(objects) == 125
    # default simplification (0.25 px) keeps the pixel outline exactly on these nuclei
    np.testing.assert_array_equal(A.objects_to_labels(objects, labels.shape), labels)


def test_objects_to_labels_paints_larger_first_and_checks_ids():
    big = A.AnnotatedObject(1, "cell", box=(0, 0, 10, 10))  # box-only object fills its box
    small = A.AnnotatedObject(2, "nucleus", polygons=[[(3, 3), (6, 3), (6, 6), (3, 6)]])
    for order in ([big, small], [small, big]):
        labels = A.objects_to_labels(order, (12, 12))
        assert (labels == 2).sum() == 9 and (labels == 1).sum() == 100 - 9
    assert (A.objects_to_labels([small, big], (12, 12), largest_first=False) == 2).sum() == 0
    with pytest.raises(ValueError):
        A.objects_to_labels([big, A.AnnotatedObject(1, "x", box=(0, 0, 1, 1))], (5, 5))
    assert A.objects_to_labels([A.AnnotatedObject(70000, "x", box=(0, 0, 1, 1))], (2, 2)).dtype == np.uint32


def test_annotated_object_needs_a_shape_or_box():
    with pytest.raises(ValueError):
        A.AnnotatedObject(1, "x")
    with pytest.raises(ValueError):
        A.AnnotatedObject(1, "x", polygons=[[(0, 0), (1, 1)]])


# --------------------------------------------------------------------------------------------
# COCO
# --------------------------------------------------------------------------------------------


def sample_images() -> list[A.ImageAnnotations]:
    ring_mask = np.zeros((9, 9), bool)
    ring_mask[1:8, 1:8] = True
    ring_mask[3:5, 3:5] = False
    crowd = np.zeros((4, 6), bool)
    crowd[1:3, :] = True
    first = A.ImageAnnotations("a.tif", 60, 80, [
        A.AnnotatedObject(1, "IX", polygons=[[(10, 10), (30, 10), (30, 25)], [(40, 40), (50, 40), (50, 50), (40, 50)]]),
        A.AnnotatedObject(2, "XII", mask=ring_mask, mask_offset=(20, 50), score=0.75),
        A.AnnotatedObject(3, "IX", mask=crowd, mask_offset=(50, 0), attributes={"iscrowd": 1, "note": "clump"}),
    ])
    second = A.ImageAnnotations("b.tif", 30, 40, [A.AnnotatedObject(1, "I-V", box=(1.5, 2.0, 11.5, 9.0), score=0.4)])
    return [first, second]


def assert_same_objects(a: A.ImageAnnotations, b: A.ImageAnnotations) -> None:
    assert (a.file_name, a.height, a.width, len(a.objects)) == (b.file_name, b.height, b.width, len(b.objects))
    for x, y in zip(a.objects, b.objects):
        assert x.category == y.category
        assert x.box == pytest.approx(y.box)
        assert x.score == pytest.approx(y.score) if x.score is not None else y.score is None
        assert len(x.polygons) == len(y.polygons)
        for p, q in zip(x.polygons, y.polygons):
            np.testing.assert_allclose(p, q)
        np.testing.assert_array_equal(x.to_mask(a.shape), y.to_mask(b.shape))
        assert x.attributes.get("iscrowd", 0) == y.attributes.get("iscrowd", 0)


def test_coco_round_trip(tmp_path):
    images = sample_images()
    path = A.write_coco(tmp_path / "ann.json", images, categories=["I-V", "IX", "XII"])
    back = A.read_coco(path)
    for a, b in zip(images, back):
        assert_same_objects(a, b)
    assert back[0].objects[2].attributes == {"iscrowd": 1, "note": "clump"}
    assert A.coco_category_names(path) == ["I-V", "IX", "XII"]
    raw = json.loads(path.read_text())
    segs = [ann.get("segmentation") for ann in raw["annotations"]]
    assert isinstance(segs[0], list) and len(segs[0]) == 2  # two polygons
    assert isinstance(segs[1]["counts"], str)  # mask with a hole -> compressed RLE
    assert isinstance(segs[2]["counts"], list)  # crowd -> uncompressed RLE, as COCO does
    assert segs[3] is None  # box only
    assert raw["annotations"][3]["bbox"] == [1.5, 2.0, 10.0, 7.0]  # (x0, y0, x1, y1) -> [x, y, w, h]


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # inside pycocotools, numpy 2
def test_coco_file_readable_by_pycocotools(tmp_path):
    pytest.importorskip("pycocotools")
    from pycocotools.coco import COCO
    import contextlib
    import io

    images = sample_images()
    path = A.write_coco(tmp_path / "ann.json", images[:1])
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(path))
    for ann, obj in zip(coco.loadAnns(coco.getAnnIds()), images[0].objects):
        theirs = coco.annToMask(ann).astype(bool)
        ours = obj.to_mask(images[0].shape)
        assert (theirs ^ ours).sum() <= 0.05 * ours.sum()  # polygon rasters differ at a few edge pixels
        if obj.mask is not None:
            np.testing.assert_array_equal(theirs, ours)  # RLE is exact


def test_coco_import_of_hand_written_file(tmp_path):
    doc = {
        "images": [{"id": 7, "file_name": "s.png", "height": 4, "width": 3}],
        "categories": [{"id": 5, "name": "Sertoli"}, {"id": 6, "name": "Spg"}],
        "annotations": [
            {"id": 1, "image_id": 7, "category_id": 5, "bbox": [0, 1, 2, 2], "iscrowd": 0,
             "segmentation": [[0, 1, 2, 1, 2, 3, 0, 3], [0, 0, 1, 1]]},  # 2nd ring degenerate: dropped
            # column-major 4x3: column 0 = 0,1,1,0 ; others 0 -> runs bg1 fg2 bg9
            {"id": 2, "image_id": 7, "category_id": 6, "iscrowd": 1, "segmentation": {"size": [4, 3], "counts": [1, 2, 9]}},
        ],
    }
    path = tmp_path / "c.json"
    path.write_text(json.dumps(doc))
    (image,) = A.read_coco(path)
    assert (image.file_name, image.shape, image.image_id) == ("s.png", (4, 3), 7)
    first, second = image.objects
    assert (first.category, first.box, len(first.polygons)) == ("Sertoli", (0.0, 1.0, 2.0, 3.0), 1)
    assert first.area == 4.0
    assert second.category == "Spg" and second.attributes == {"iscrowd": 1}
    assert second.box == (0.0, 1.0, 1.0, 3.0) and second.mask_offset == (1, 0)
    np.testing.assert_array_equal(second.to_mask((4, 3))[:, 0], [False, True, True, False])


@pytest.mark.parametrize("text, message", [
    ("{not json", "not valid JSON"),
    ("[]", "must hold a JSON object"),
    ('{"images": [], "categories": []}', "'annotations' is missing"),
    ('{"images": [{"id": 1, "file_name": "a", "height": 2, "width": 2}], "categories": [],'
     ' "annotations": [{"id": 4, "image_id": 2, "category_id": 1}]}', "annotation 4 names no known image_id"),
    ('{"images": [{"id": 1, "file_name": "a", "height": 2, "width": 2}], "categories": [{"id": 1, "name": "x"}],'
     ' "annotations": [{"id": 4, "image_id": 1, "category_id": 3, "bbox": [0, 0, 1, 1]}]}', "unknown category_id 3"),
    ('{"images": [{"id": 1, "file_name": "a", "height": 2, "width": 2}], "categories": [{"id": 1, "name": "x"}],'
     ' "annotations": [{"id": 4, "image_id": 1, "category_id": 1, "segmentation": [[0, 0, 1]]}]}', "odd number"),
])
def test_malformed_coco_names_file_and_problem(tmp_path, text, message):
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(AnnotationError) as info:
        A.read_coco(path)
    assert str(path) in str(info.value) and message in str(info.value)


def test_missing_file_is_an_annotation_error(tmp_path):
    with pytest.raises(AnnotationError, match="not found"):
        A.read_coco(tmp_path / "nope.json")


def test_check_categories_lists_unknown_names_and_file():
    images = sample_images()
    images[0].source = "lab/section1.json"
    A.check_categories(images, ["I-V", "VI-VIII", "IX", "X-XI", "XII"])  # all known: no error
    with pytest.raises(AnnotationError) as info:
        A.check_categories(images, ["I-V", "IX"])
    text = str(info.value)
    assert "lab/section1.json" in text and "'XII' (1 object)" in text and "IX" in text.split("Allowed")[1]
    assert "I-V'" not in text.split("Allowed")[0]


# --------------------------------------------------------------------------------------------
# QuPath GeoJSON
# --------------------------------------------------------------------------------------------

QUPATH_SAMPLE = {
    "type": "FeatureCollection",
    "features": [
        {   # QuPath 0.4 style annotation: square 20 x 20 at (10, 10) with a 5 x 5 hole
            "type": "Feature", "id": "5f0c6a4e-1111-4b7e-9c39-2a1d6d2f4e01",
            "geometry": {"type": "Polygon", "coordinates": [
                [[10, 10], [30, 10], [30, 30], [10, 30], [10, 10]],
                [[15, 15], [20, 15], [20, 20], [15, 20], [15, 15]]]},
            "properties": {"objectType": "annotation", "classification": {"name": "IX", "color": [255, 0, 0]},
                           "isLocked": False},
        },
        {   # MultiPolygon: 4 x 4 square plus a 2 x 2 square; old-style string classification
            "type": "Feature",
            "geometry": {"type": "MultiPolygon", "coordinates": [
                [[[0, 0], [4, 0], [4, 4], [0, 4], [0, 0]]],
                [[[6, 0], [8, 0], [8, 2], [6, 2], [6, 0]]]]},
            "properties": {"objectType": "detection", "classification": "Spg"},
        },
        {   # a point annotation has no area: skipped
            "type": "Feature", "geometry": {"type": "Point", "coordinates": [3, 3]},
            "properties": {"objectType": "annotation"},
        },
        {   # QuPath 0.2 style: the id names the object type, measurements are a list, no class
            "type": "Feature", "id": "PathDetectionObject",
            "geometry": {"type": "Polygon", "coordinates": [[[1, 20], [5, 20], [5, 24], [1, 24], [1, 20]]]},
            "properties": {"isLocked": False, "measurements": [{"name": "Detection probability", "value": 0.8}]},
        },
    ],
}


def test_read_qupath_geojson(tmp_path):
    path = tmp_path / "section.geojson"
    path.write_text(json.dumps(QUPATH_SAMPLE))
    ann = A.read_geojson(path, height=40, width=40)
    assert ann.file_name == "section" and ann.shape == (40, 40) and ann.source == str(path)
    square, multi, old = ann.objects
    assert [o.id for o in ann.objects] == [1, 2, 3]
    assert (square.category, len(square.polygons), len(square.holes)) == ("IX", 1, 1)
    assert len(square.polygons[0]) == 4  # closing vertex dropped
    assert square.attributes["object_type"] == "annotation" and square.attributes["color"] == [255, 0, 0]
    assert square.attributes["qupath_id"].startswith("5f0c6a4e")
    # area 20*20 - 5*5 = 375; pixel centres 10.5..29.5 minus 15.5..19.5 -> 400 - 25 pixels
    assert square.area == 375.0 and square.to_mask(ann.shape).sum() == 375
    assert (multi.category, len(multi.polygons), multi.box) == ("Spg", 2, (0.0, 0.0, 8.0, 4.0))
    assert multi.area == 16 + 4 and multi.attributes["object_type"] == "detection"
    assert old.category == A.UNCLASSIFIED and old.attributes["object_type"] == "detection"
    assert old.score == 0.8 and old.attributes["measurements"] == {"Detection probability": 0.8}


def test_read_plain_feature_list_and_errors(tmp_path):
    path = tmp_path / "list.json"
    path.write_text(json.dumps(QUPATH_SAMPLE["features"][:2]))
    assert len(A.read_geojson(path).objects) == 2
    path.write_text(json.dumps({"type": "Topology"}))
    with pytest.raises(AnnotationError, match="FeatureCollection"):
        A.read_geojson(path)
    path.write_text(json.dumps([{"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [1]]]}}]))
    with pytest.raises(AnnotationError) as info:
        A.read_geojson(path)
    assert str(path) in str(info.value) and "feature 0" in str(info.value)


def test_geojson_export_round_trip(tmp_path):
    src = tmp_path / "in.geojson"
    src.write_text(json.dumps(QUPATH_SAMPLE))
    original = A.read_geojson(src, height=40, width=40)
    mask_object = A.labels_to_objects(synthetic_labels(), "nucleus", keep_masks=True)[3]  # has a hole + mask
    mask_object.id = 4
    original.objects.append(mask_object)
    out = A.write_geojson(tmp_path / "out.geojson", original, object_type="detection")
    doc = json.loads(out.read_text())
    geometries = [f["geometry"] for f in doc["features"]]
    assert [g["type"] for g in geometries] == ["Polygon", "MultiPolygon", "Polygon", "Polygon"]
    assert len(geometries[0]["coordinates"]) == 2  # exterior + its hole
    assert geometries[0]["coordinates"][0][0] == geometries[0]["coordinates"][0][-1]  # closed ring
    assert "classification" not in doc["features"][2]["properties"]  # unclassified stays unclassified
    assert doc["features"][3]["properties"]["objectType"] == "detection"
    back = A.read_geojson(out, height=40, width=50)
    for a, b in zip(original.objects, back.objects):
        assert a.category == b.category
        assert a.score == b.score
        np.testing.assert_array_equal(a.to_mask((40, 50)), b.to_mask((40, 50)))
    assert back.objects[0].attributes["qupath_id"] == original.objects[0].attributes["qupath_id"]
