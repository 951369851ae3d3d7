"""Nuclei and brightfield phantoms (app/core/phantoms.py): seeded, truthful, overlapping, defocus and pairing."""

from __future__ import annotations

import numpy as np
import pytest

from app.core.phantoms import brightfield_stack, nuclei


@pytest.fixture(scope="module")
def crowd():
    """200 nuclei on a 640 px field: 20% placed overlapping, 30% touching an earlier nucleus."""
    return nuclei(seed=5, size=640, count=200, overlap=0.2, touch=0.3)


def test_nuclei_are_seeded_and_reproducible():
    a, b, c = nuclei(seed=3, size=128, count=12), nuclei(seed=3, size=128, count=12), nuclei(seed=4, size=128, count=12)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.labels, b.labels) and a.objects == b.objects
    assert not np.array_equal(a.labels, c.labels)
    assert a.image.dtype == np.uint16 and a.labels.dtype == np.uint16 and a.image.shape == (128, 128)


def test_labels_match_objects(crowd):
    ids = [o["id"] for o in crowd.objects]
    assert ids == list(range(1, 201)) and sorted(np.unique(crowd.labels)[1:]) == ids
    areas = np.bincount(crowd.labels.ravel(), minlength=201)
    for obj in crowd.objects:
        whole = crowd.mask(obj["id"])
        assert areas[obj["id"]] == obj["area"] and whole.sum() == obj["mask_area"]
        assert np.all(whole[crowd.labels == obj["id"]])  # a label never leaves its nucleus' shape
        cy, cx = np.argwhere(whole).mean(axis=0)
        assert (cy, cx) == pytest.approx(obj["centroid"])
    # every labelled pixel is covered by the drawn shape of its label, background by none
    covered = sum(crowd.mask(o["id"]).astype(int) for o in crowd.objects)
    assert np.array_equal(covered > 0, crowd.labels > 0)


def test_known_fractions_of_overlapping_and_touching_pairs(crowd):
    placed = [o["placed"] for o in crowd.objects]
    assert placed.count("overlapping") == 40 and placed.count("touching") == 60
    overlap_pairs = {tuple(sorted((o["id"], j))) for o in crowd.objects for j in o["overlaps"]}
    touch_pairs = {tuple(sorted((o["id"], j))) for o in crowd.objects for j in o["touches"]}
    # each placed nucleus contacts exactly its partner, the way it was asked to; nothing else touches
    assert overlap_pairs == {(o["partner"], o["id"]) for o in crowd.objects if o["placed"] == "overlapping"}
    assert touch_pairs == {(o["partner"], o["id"]) for o in crowd.objects if o["placed"] == "touching"}
    for a, b in overlap_pairs:  # overlaps are real: shared pixels, 10-30% of the smaller nucleus
        shared = (crowd.mask(a) & crowd.mask(b)).sum()
        smaller = min(crowd.objects[a - 1]["mask_area"], crowd.objects[b - 1]["mask_area"])
        assert 0.1 <= shared / smaller <= 0.45
    for a, b in touch_pairs:  # touching: no shared pixel, but 8-neighbours in the label image
        assert not (crowd.mask(a) & crowd.mask(b)).any()
        from scipy import ndimage as ndi

        assert (ndi.binary_dilation(crowd.labels == a, np.ones((3, 3))) & (crowd.labels == b)).any()


def test_overlaps_add_fluorescence_and_go_to_the_brighter_nucleus(crowd):
    a, b = next((o["partner"], o["id"]) for o in crowd.objects if o["placed"] == "overlapping"
                and o["mask_area"] > 300 and crowd.objects[o["partner"] - 1]["mask_area"] > 300)
    from scipy import ndimage as ndi

    shared = ndi.binary_erosion(crowd.mask(a) & crowd.mask(b), iterations=2)
    only_a = ndi.binary_erosion(crowd.mask(a) & ~crowd.mask(b), iterations=3)
    only_b = ndi.binary_erosion(crowd.mask(b) & ~crowd.mask(a), iterations=3)
    image = crowd.image.astype(float)
    assert image[shared].mean() > max(image[only_a].mean(), image[only_b].mean()) * 1.15
    brighter = a if crowd.objects[a - 1]["brightness"] > crowd.objects[b - 1]["brightness"] else b
    assert np.all(crowd.labels[crowd.mask(a) & crowd.mask(b)] == brighter)


def test_size_brightness_illumination_and_noise_vary(crowd):
    radii = [o["radius"] for o in crowd.objects]
    brightness = [o["brightness"] for o in crowd.objects]
    assert min(radii) < 7 and max(radii) > 11 and min(brightness) < 0.5 and max(brightness) > 0.9
    background = crowd.image.astype(float)
    background[crowd.labels > 0] = np.nan
    quarters = [np.nanmedian(background[y : y + 320, x : x + 320]) for y in (0, 320) for x in (0, 320)]
    assert max(quarters) > 1.2 * min(quarters)  # uneven background / illumination
    flat = nuclei(seed=1, size=64, count=0).image.astype(float)
    assert flat.std() > 10 and np.abs(np.diff(flat, axis=1)).mean() > 10  # pixel noise


def test_nuclei_keeps_the_demo_signature():
    p = nuclei(0, 96, 8, (5.0, 8.0))
    assert len(p.objects) == 8 and p.labels.max() == 8 and p.image.shape == (96, 96)


@pytest.fixture(scope="module")
def stack():
    return brightfield_stack(seed=2, size=192, count=20, n_planes=9)


def test_brightfield_contrast_flips_sign_and_is_lowest_near_focus(stack):
    inside = stack.labels > 0
    assert stack.planes.shape == (9, 192, 192) and stack.z_um == [-4, -3, -2, -1, 0, 1, 2, 3, 4]
    contrast = [float(plane[inside].mean() - plane[~inside].mean()) for plane in stack.planes]
    assert contrast[0] > 0 > contrast[8] and contrast[1] > 0 > contrast[7]  # sign flips across focus
    weakest = int(np.argmin(np.abs(contrast)))
    assert weakest in (3, 4, 5) and abs(contrast[4]) < 0.3 * min(abs(contrast[0]), abs(contrast[8]))


def test_brightfield_fluorescence_pairs_with_the_same_labels(stack):
    fluo = stack.fluorescence.astype(float)
    inside = stack.labels > 0
    assert fluo[inside].mean() > 3 * fluo[~inside].mean()
    per_nucleus = np.bincount(stack.labels.ravel(), fluo.ravel())[1:] / np.bincount(stack.labels.ravel())[1:]
    assert per_nucleus.min() > np.percentile(fluo[~inside], 99)  # every labelled nucleus is stained
    again = brightfield_stack(seed=2, size=192, count=20, n_planes=9)
    assert np.array_equal(again.planes, stack.planes) and np.array_equal(again.labels, stack.labels)


def test_registration_shift_moves_only_the_fluorescence_by_exactly_that(stack):
    moved = brightfield_stack(seed=2, size=192, count=20, n_planes=9, shift=(5, -7))
    assert moved.shift == (5, -7)
    assert np.array_equal(moved.fluorescence, np.roll(stack.fluorescence, (5, -7), axis=(0, 1)))
    assert np.array_equal(moved.labels, stack.labels) and np.array_equal(moved.planes, stack.planes)


def test_a_crowded_request_ends_with_fewer_nuclei_that_still_match_their_labels():
    p = nuclei(seed=0, size=64, count=60)
    assert 5 <= len(p.objects) < 60
    assert sorted(np.unique(p.labels)[1:]) == [o["id"] for o in p.objects]
