"""Brightfield pipeline: labels from fluorescence, registration, plane stacks, U-Net, instances, measurements.

Hand-made inputs with hand-computed answers and the core brightfield phantom (app.core.phantoms) for labels and
registration; no training here (see test_brightfield_train.py).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import tifffile
import torch
from scipy import ndimage as ndi

from app.core.errors import ImageError, ModelError
from app.core.metrics import instance_scores
from app.core.phantoms import brightfield_stack
from app.pipelines.brightfield.labels import (
    check_registration,
    deep_maxima,
    derive_labels,
    sharpest_plane,
    split_nuclei,
)
from app.pipelines.brightfield.params import LabelParams, SegmentParams, TrainParams, from_dict, to_dict
from app.pipelines.brightfield.predict import instances, measure
from app.pipelines.brightfield.stack import (
    PlaneStack,
    field_files,
    load_stack,
    normalise,
    plane_spec,
    planes_for_model,
    z_from_name,
)
from app.pipelines.brightfield.unet import UNet, UNetConfig, pad_to_multiple
from helpers_images import disc, ellipse


# ------------------------------------------------------------------ splitting


def test_two_touching_discs_are_split_and_an_ellipse_is_not():
    shape = (80, 140)
    pair = disc(shape, (40, 40), 18) | disc(shape, (40, 70), 18)  # overlap: neck ~ 2*sqrt(18^2-15^2) = 20 px
    labels = split_nuclei(pair, split_depth=4, min_area=50)
    assert labels.max() == 2
    assert labels[40, 30] != labels[40, 80] and labels[40, 30] > 0 and labels[40, 80] > 0
    # an elongated ellipse has a flat distance ridge whose equal-height points are not pixel
    # neighbours; it must stay one nucleus (this split it in two before deep_maxima)
    one = split_nuclei(ellipse(shape, (40, 70), 50, 22), split_depth=4, min_area=50)
    assert one.max() == 1
    assert split_nuclei(pair, split_depth=0, min_area=50).max() == 1


def test_small_objects_are_dropped_and_labels_are_uint16():
    mask = disc((60, 60), (30, 30), 10) | disc((60, 60), (5, 5), 2)  # 317 px and 13 px
    labels = split_nuclei(mask, split_depth=4, min_area=100)
    assert labels.dtype == np.uint16
    assert labels.max() == 1 and labels[5, 5] == 0 and labels[30, 30] == 1


def test_deep_maxima_counts_peaks_by_depth():
    x = np.linspace(-np.pi / 2, 7 * np.pi / 2, 200)  # minima at both ends
    signal = np.sin(x)[None, :] * 5 + 5  # two peaks of height 10 separated by a valley at 0
    markers, n = deep_maxima(np.repeat(signal, 3, axis=0), depth=4)
    assert n == 2
    _, n_shallow = deep_maxima(np.repeat(signal, 3, axis=0) * 0.1, depth=4)  # valley depth 1 < 4
    assert n_shallow == 1


# ------------------------------------------------------------------ labels and registration


@pytest.fixture(scope="module")
def field9():
    """A core phantom field: 9 brightfield planes, paired DNA stain, 20 nuclei (some touching or overlapping)."""
    return brightfield_stack(seed=4, size=192, count=20)


PHANTOM_LABELS = LabelParams(min_area=30, sigma=1.0, split_depth=2.0, max_shift=3)


def test_derive_labels_finds_the_nuclei_and_drops_debris(field9):
    fluo = field9.fluorescence.copy()
    gap = ndi.distance_transform_edt(field9.labels == 0)
    y, x = np.unravel_index(int(np.argmax(gap)), gap.shape)  # the emptiest background spot
    fluo[y - 1 : y + 2, x - 1 : x + 2] = 255  # debris: bright but 9 px
    result = derive_labels(fluo, PHANTOM_LABELS, field9.planes)
    assert result.labels.dtype == np.uint16 and result.labels[y, x] == 0
    assert 20 < result.threshold < 120
    found = instance_scores([(field9.labels, result.labels)])
    assert found["f1"] > 0.85  # measured 0.895: an overlapping pair can stay merged
    assert result.registration is not None and result.registration.shift == (0, 0)
    assert result.registration.plane == sharpest_plane(field9.planes)


def test_registration_detects_and_corrects_a_shift(field9):
    moved = brightfield_stack(seed=4, size=192, count=20, shift=(7, -5))
    result = derive_labels(moved.fluorescence, PHANTOM_LABELS, moved.planes)
    reg = result.registration
    assert reg.reliable and reg.shift == (-7, 5)  # moves the labels back onto the planes
    assert any("shifted" in m for m in reg.messages)
    truth = moved.labels > 0

    def iou(labels):
        return np.count_nonzero((labels > 0) & truth) / np.count_nonzero((labels > 0) | truth)

    uncorrected = derive_labels(moved.fluorescence, dataclasses.replace(PHANTOM_LABELS, correct_shift=False),
                                moved.planes)
    assert iou(result.labels) > 0.8 and iou(uncorrected.labels) < iou(result.labels) - 0.2


def test_misaligned_planes_are_reported(field9):
    planes = field9.planes.copy()
    planes[8] = ndi.shift(planes[8], (0, 9), mode="nearest")
    mask = field9.fluorescence > 60
    reg = check_registration(mask, planes, PHANTOM_LABELS)
    assert any("plane 8" in m for m in reg.messages)
    assert abs(reg.plane_shifts[8][1] + 9) <= 1


def test_labels_of_another_size_are_refused(field9):
    with pytest.raises(ImageError, match="same field"):
        derive_labels(field9.fluorescence[:100], LabelParams(), field9.planes)


def test_sharpest_plane():
    rng = np.random.default_rng(1)
    sharp = rng.normal(0, 1, (64, 64))
    assert sharpest_plane(np.stack([ndi.gaussian_filter(sharp, 3), sharp, ndi.gaussian_filter(sharp, 1)])) == 1


# ------------------------------------------------------------------ stacks


@pytest.mark.parametrize(
    "name, z",
    [
        ("init_Point0001_empty-Time1s-Z1327.60.tif", 1327.6),
        ("fine_Point0001_empty-Time4s-Z1362.00.tif", 1362.0),
        ("plane_z-3.5.tif", -3.5),
        ("stack_Z=12.tiff", 12.0),
        ("fl.tif", None),
        ("Zoom2.tif", None),
    ],
)
def test_z_from_name(name, z):
    assert z_from_name(name) == z


def write_field(folder, zs=(10.0, -5.0, 0.0), shape=(32, 40), fluo=True):
    folder.mkdir(parents=True, exist_ok=True)
    for i, z in enumerate(zs):
        tifffile.imwrite(folder / f"bf_Z{z:.2f}.tif", np.full(shape, 10 * (i + 1), np.uint8))
    if fluo:
        tifffile.imwrite(folder / "fl.tif", np.zeros(shape, np.uint8))
    return folder


def test_load_stack_sorts_planes_by_z(tmp_path):
    folder = write_field(tmp_path / "field")
    planes, fl = field_files(folder)
    assert fl is not None and fl.name == "fl.tif" and len(planes) == 3
    stack = load_stack(folder)
    assert stack.z == [-5.0, 0.0, 10.0]
    assert [int(p[0, 0]) for p in stack.data] == [20, 30, 10]  # written in order 10, -5, 0
    assert stack.z_offsets() == [-5.0, 0.0, 10.0]
    assert stack.select([2]).z == [10.0]


def test_planes_of_different_sizes_are_refused(tmp_path):
    folder = write_field(tmp_path / "field", fluo=False)
    tifffile.imwrite(folder / "bf_Z20.00.tif", np.zeros((30, 40), np.uint8))
    with pytest.raises(ImageError, match="same size"):
        load_stack(folder)


def test_planes_for_model_maps_a_full_stack_and_refuses_a_wrong_count():
    stack = PlaneStack(np.zeros((6, 8, 8)), [0, 10, 20, 21, 30, 45], [f"p{i}" for i in range(6)], "field")
    spec = plane_spec(stack, [2, 3])
    assert spec["n_stack"] == 6 and spec["z_offsets_um"] == [-0.5, 0.5]
    assert planes_for_model(stack, spec).n_planes == 2
    assert planes_for_model(stack.select([2, 3]), spec).n_planes == 2
    with pytest.raises(ModelError, match="expects 2 plane"):
        planes_for_model(stack.select([0, 1, 2]), spec)


def test_normalise_maps_percentiles_to_0_and_1():
    plane = np.arange(10000, dtype=np.float32).reshape(1, 100, 100)
    out = normalise(plane, 1, 99)
    assert abs(np.percentile(out, 1)) < 0.01 and abs(np.percentile(out, 99) - 1) < 0.01


def test_params_round_trip():
    params = TrainParams(planes=(1, 2), width=8)
    assert from_dict(TrainParams, to_dict(params)) == params
    assert to_dict(params)["planes"] == [1, 2]


# ------------------------------------------------------------------ U-Net and instances


@pytest.mark.parametrize("shape", [(1, 3, 32, 48), (2, 1, 37, 50)])
def test_unet_output_shape(shape):
    net = UNet(UNetConfig(in_channels=shape[1], out_channels=2, width=4, depth=2)).eval()
    x, (h, w) = pad_to_multiple(torch.zeros(shape), net.multiple)
    assert x.shape[-2] % 4 == 0 and x.shape[-1] % 4 == 0
    with torch.no_grad():
        y = net(x)[..., :h, :w]
    assert tuple(y.shape) == (shape[0], 2, shape[2], shape[3])


def test_instances_with_a_boundary_channel_split_touching_nuclei():
    shape = (80, 140)
    a, b = disc(shape, (40, 40), 18), disc(shape, (40, 72), 18)  # touching over a 4 px lens
    prob = np.zeros((2, *shape), np.float32)
    prob[0][a | b] = 0.9
    prob[1] = ndi.binary_dilation(a, iterations=2) & ~ndi.binary_erosion(a, iterations=2)
    prob[1] = np.maximum(prob[1], ndi.binary_dilation(b, iterations=2) & ~ndi.binary_erosion(b, iterations=2))
    labels = instances(prob, SegmentParams(min_area=100, split_depth=0))
    assert labels.max() == 2
    assert instances(prob[:1], SegmentParams(min_area=100, split_depth=0)).max() == 1


def test_measure_rows():
    labels = np.zeros((10, 10), np.uint16)
    labels[0:2, 0:3] = 1  # 6 px, centroid (0.5, 1)
    labels[5:9, 6:8] = 3  # 8 px, centroid (6.5, 6.5); id 2 absent
    planes = np.stack([np.full((10, 10), 10.0), np.full((10, 10), 20.0)])
    fluo = np.zeros((10, 10))
    fluo[5:9, 6:8] = 100
    rows = measure(labels, planes, fluo, name="f")
    assert [r["id"] for r in rows] == [1, 3]
    assert rows[0]["area_px"] == 6 and rows[0]["centroid_y"] == 0.5 and rows[0]["centroid_x"] == 1.0
    assert rows[1]["area_px"] == 8 and rows[1]["centroid_y"] == 6.5
    assert rows[0]["mean_brightfield"] == 15.0 and rows[1]["mean_fluorescence"] == 100.0
    assert measure(labels, planes)[0]["mean_fluorescence"] is None


def test_project_run_keeps_the_model_cards_segment_settings(tmp_path):
    """The GUI and batches pass default parameters: the card's min_area (40 for the phantom model) must survive."""
    from app.core.jobs import run
    from app.core.phantoms import write_phantom
    from app.core.project import Project
    from app.pipelines.brightfield import with_model_defaults
    from app.pipelines.registry import get
    from app.pipelines.brightfield.params import SegmentParams

    card = SegmentParams(min_area=40, split_depth=2.0)
    merged = with_model_defaults(SegmentParams(threshold=0.4), card)
    assert (merged.min_area, merged.split_depth, merged.threshold) == (40, 2.0, 0.4)  # the user's choice stays
    write_phantom("brightfield", tmp_path / "raw", seed=101, count=1, size=512)
    project = Project.create(tmp_path / "p", name="p")
    project.add_image(tmp_path / "raw" / "field_000_planes.tif", mode="link")
    name = project.images()[0].name
    folder = run(get("brightfield").analyze(project, [name], SegmentParams(), {"brightfield": "brightfield-phantom-demo"}))
    rows = (folder / name / "nuclei.csv").read_text().splitlines()
    assert len(rows) - 1 >= 20  # 30 nuclei drawn; the shipped phantom model found 26 of them on a held-out field
