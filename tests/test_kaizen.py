"""Kaizen parts on hand-made inputs: VQ-VAE, sizing, candidate search, acceptance, outputs, bad input."""

from __future__ import annotations

import json
import math
import time

import numpy as np
import pytest
import torch

from app.core.errors import ImageError, UserError
from app.pipelines.kaizen import decompose as dec
from app.pipelines.kaizen.outputs import Decomposition, KaizenObject, write_outputs
from app.pipelines.kaizen.params import DecomposeParams, TrainParams, VQVAEConfig
from app.pipelines.kaizen.sizing import (as_gray, diameter_from_labels, estimate_diameter, has_signal, normalise,
                                         rescale)
from app.pipelines.kaizen.train import augment_batch, is_validation, prepare_image, window_size
from app.pipelines.kaizen.vqvae import VQVAE, VectorQuantizerEMA, code_perplexity, vqvae_loss
from helpers_images import disks


# ------------------------------------------------------------------ VQ-VAE


def test_vqvae_shapes_and_straight_through_gradient():
    config = VQVAEConfig(patch=16, channels=4, codebook_size=8, code_dim=4)
    model = VQVAE(config)
    x = torch.rand(3, 1, 16, 16)
    out = model(x)
    assert out.object.shape == (3, 1, 16, 16) and out.mask_logit.shape == (3, 1, 16, 16)
    assert out.codes.shape == (3, 4, 4) and out.codes.dtype == torch.int64
    assert (out.object >= 0).all()
    loss, terms = vqvae_loss(out, x, (x > 0.5).float(), beta=0.25, mask_weight=0.1)
    loss.backward()
    first_conv = model.encoder[0].weight
    assert first_conv.grad is not None and first_conv.grad.abs().sum() > 0  # gradient skipped the quantiser
    assert set(terms) >= {"recon", "mask", "commit", "perplexity"}


def test_codebook_starts_from_encoder_outputs_and_reseeds_dead_entries():
    vq = VectorQuantizerEMA(num_codes=4, code_dim=2, decay=0.5, dead_fraction=0.5)
    vq.train()
    z = torch.tensor([[1.0, 0.0], [0.0, 1.0]]).repeat(8, 1).T.reshape(1, 2, 4, 4)  # only two distinct vectors
    vq(z)
    assert vq.initialised
    rows = {tuple(r) for r in vq.codebook.tolist()}
    assert rows <= {(1.0, 0.0), (0.0, 1.0)} or len(rows) <= 4  # seeded from data, not random noise
    vq.codebook[3] = torch.tensor([100.0, 100.0])  # far away: never chosen, so it must be reseeded
    for _ in range(6):
        vq(z)
    assert vq.codebook[3].abs().max() < 10


def test_perplexity_counts_equally_used_codes():
    assert code_perplexity(torch.tensor([0, 1, 2, 3]), 8).item() == pytest.approx(4.0)
    assert code_perplexity(torch.tensor([5, 5, 5]), 8).item() == pytest.approx(1.0)


def test_config_rejects_patch_not_divisible():
    with pytest.raises(ValueError):
        VQVAEConfig(patch=42, downsample=2)


# ------------------------------------------------------------------ sizing and input conversion


def test_diameter_from_labels_is_median_equivalent_circle():
    labels = np.zeros((50, 50), np.uint16)
    labels[0:10, 0:10] = 1  # area 100
    labels[20:30, 20:30] = 2
    labels[40:42, 40:42] = 3  # area 4
    assert diameter_from_labels(labels) == pytest.approx(2 * math.sqrt(100 / math.pi))
    assert diameter_from_labels(np.zeros((5, 5), np.uint16)) is None


@pytest.mark.parametrize("radius", [5.0, 12.0, 25.0])
def test_estimate_diameter_of_disks(radius):
    side = int(radius * 12)
    centres = [(int(radius * 3), int(radius * 3)), (int(radius * 3), int(radius * 8)), (int(radius * 8), int(radius * 5))]
    image, _ = disks((side, side), centres, radius, noise=3.0)
    estimate = estimate_diameter(normalise(image)[0])
    assert estimate == pytest.approx(2 * radius, rel=0.2)


def test_estimate_diameter_on_core_phantoms_follows_the_label_diameter():
    """Touching/overlapping, textured, unevenly lit nuclei (app.core.phantoms): the image estimate stays close."""
    from app.core.phantoms import nuclei

    ratios, estimates = [], []
    for radius in ((4.0, 6.0), (6.0, 12.0), (12.0, 20.0)):
        p = nuclei(seed=2, size=256, count=20, radius=radius)
        estimate = estimate_diameter(normalise(p.image.astype(np.float32))[0])
        ratios.append(estimate / diameter_from_labels(p.labels))
        estimates.append(estimate)
    assert all(0.9 < r < 1.35 for r in ratios), ratios  # measured 1.07-1.16: blur widens, merged pairs count once
    assert estimates[0] < estimates[1] < estimates[2]


def test_signal_check_and_normalisation():
    assert not has_signal(np.zeros((64, 64), np.float32))
    assert not has_signal(np.random.default_rng(0).normal(100, 5, (64, 64)).astype(np.float32))
    image, _ = disks(noise=2.0)
    assert has_signal(image)
    norm, low, high = normalise(image)
    assert norm.min() == 0 and 0.95 < np.percentile(norm, 99.9) < 1.05 and high > low


def test_as_gray_converts_rgb_and_refuses_stacks():
    rgb = np.zeros((20, 30, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 30, 60, 90
    assert as_gray(rgb).shape == (20, 30) and as_gray(rgb)[0, 0] == pytest.approx(60)
    with pytest.raises(ImageError, match=r"\(5, 20, 30\)"):
        as_gray(np.zeros((5, 20, 30)), "stack.tif")


def test_rescale_labels_keeps_ids():
    labels = np.zeros((40, 40), np.int32)
    labels[10:20, 10:20] = 7
    small = rescale(labels, 0.5, order=0)
    assert small.shape == (20, 20) and set(np.unique(small)) == {0, 7}


# ------------------------------------------------------------------ training patches


def test_split_rule_is_fixed_and_about_a_fifth():
    names = [f"img{i:04d}" for i in range(2000)]
    share = np.mean([is_validation(n) for n in names])
    assert 0.17 < share < 0.23
    assert is_validation("img0007") == is_validation("img0007")


def test_prepare_refuses_label_size_mismatch():
    with pytest.raises(UserError, match=r"\(10, 12\).*\(10, 10\)"):
        prepare_image("a", np.zeros((10, 10)), np.zeros((10, 12), np.uint16), 16.0, 8)


def test_patches_target_is_input_times_central_mask():
    image, labels = disks((80, 80), ((40, 40), (40, 56)), radius=6)
    item = prepare_image("x", image, labels, target_diameter=12.0, pad=window_size(24) // 2 + 1)
    stack = torch.zeros(1, 2, window_size(24), window_size(24))
    half = window_size(24) // 2
    y, x = item.object_pixels[0][len(item.object_pixels[0]) // 2]
    stack[0, 0] = torch.from_numpy(item.image[y - half: y + half, x - half: x + half])
    stack[0, 1] = torch.from_numpy((item.labels[y - half: y + half, x - half: x + half] == item.labels[y, x]).astype(np.float32))
    inputs, target, mask = augment_batch(stack, 24, np.random.default_rng(0), augment=False)
    assert mask[0, 0, 12, 12] == 1  # the central pixel belongs to the target object
    assert torch.allclose(target, inputs * mask)
    assert inputs.sum() > target.sum() > 0  # the neighbour is in the input, not in the target


# ------------------------------------------------------------------ decomposition pieces


def test_distant_maxima_order_suppression_and_threshold():
    yy, xx = np.mgrid[:60, :60]

    def bump(cy, cx, amplitude):
        return amplitude * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * 2.0**2))

    # A is highest; B lies 8 px from A (inside A's 20 px square); C is far; D is below min_residual
    error = (bump(10, 10, 1.0) + bump(10, 18, 0.8) + bump(40, 40, 0.9) + bump(50, 8, 0.1)).astype(np.float32)
    valid = (slice(0, 60), slice(0, 60))
    points = dec.distant_maxima(error, box=7, suppress=20, min_residual=0.2, max_points=10, valid=valid)
    assert len(points) == 2
    assert abs(points[0][0] - 10) <= 1 and abs(points[0][1] - 10) <= 2
    assert tuple(points[1]) == (40, 40)
    assert len(dec.distant_maxima(error, box=7, suppress=12, min_residual=0.2, max_points=10, valid=valid)) == 3
    assert len(dec.distant_maxima(error, box=7, suppress=20, min_residual=0.2, max_points=1, valid=valid)) == 1
    skip = np.zeros(error.shape, bool)
    skip[40, 40] = True  # a rejected position is not proposed again
    again = dec.distant_maxima(error, box=7, suppress=20, min_residual=0.2, max_points=10, valid=valid, skip=skip)
    assert all(tuple(p) != (40, 40) for p in again)


def test_gain_share_hand_computed():
    residual = np.array([[1.0, 1.0], [0.0, 0.0]])
    perfect = residual.copy()
    assert dec._gain_share(residual, perfect) == pytest.approx(1.0)
    over = np.array([[1.0, 1.0], [1.0, 1.0]])  # explains 2, adds 2 of error: no gain
    assert dec._gain_share(residual, over) == pytest.approx(0.0)
    assert dec._gain_share(residual, np.zeros((2, 2))) == -1.0


def test_sizes_scale_with_patch():
    assert dec.box_size(40) == 7 and dec.suppression_size(40) == 32
    assert dec.box_size(120) == 21 and dec.suppression_size(120) == 96


# ------------------------------------------------------------------ outputs


def _object(id_, offset, value, size=6):
    image = np.full((size, size), value, np.float32)
    return KaizenObject(id=id_, offset=offset, image=image, mask=np.ones((size, size), bool),
                        codes=np.zeros((2, 2), np.int16), gain=0.9, mean_intensity=value)


def test_labels_give_overlaps_to_the_brighter_object_and_stack_keeps_both(tmp_path):
    import tifffile

    d = Decomposition(shape=(20, 20), objects=[_object(1, (2, 2), 5.0), _object(2, (5, 5), 9.0)])
    labels = d.labels()
    assert labels.dtype == np.uint16
    assert labels[3, 3] == 1 and labels[6, 6] == 2 and labels[10, 10] == 2 and labels[15, 15] == 0
    assert d.internal_image()[6, 6] == pytest.approx(14.0)  # the internal image keeps the overlap
    paths = write_outputs(tmp_path, "img", d)
    assert np.array_equal(tifffile.imread(paths["labels"]), labels)
    stack = np.load(paths["stack"])
    assert stack["images"].shape == (2, 6, 6) and stack["masks"][0].all() and stack["masks"][1].all()
    assert stack["offsets"].tolist() == [[2, 2], [5, 5]]
    doc = json.loads(paths["json"].read_text())
    first = doc["objects"][0]
    assert first["box"] == [2, 2, 8, 8] and first["area"] == 36 and first["centroid"] == [4.5, 4.5]
    assert doc["n_objects"] == 2 and len(first["codes"]) == 2


def test_empty_image_returns_at_once():
    model = tiny_untrained_model()
    for image in (np.zeros((512, 512), np.uint16), np.full((256, 256), 7.0)):
        started = time.perf_counter()
        result = dec.decompose(image, model)
        assert time.perf_counter() - started < 0.05
        assert result.objects == [] and result.candidates == 0 and result.labels().max() == 0


def test_decompose_refuses_a_stack():
    with pytest.raises(ImageError, match="2-D"):
        dec.decompose(np.zeros((3, 4, 32, 32)), tiny_untrained_model())


def tiny_untrained_model():
    from app.core.modelcard import ModelCard
    from app.pipelines.kaizen.model import KaizenModel

    config = TrainParams(patch=16, channels=4, codebook_size=8, code_dim=4).vqvae_config()
    card = ModelCard(name="tiny", pipeline="kaizen", architecture="vqvae")
    return KaizenModel(card, VQVAE(config).eval(), 6.0, DecomposeParams())


def test_objects_map_back_to_the_input_grid():
    patch, half = 16, 8
    yy, xx = np.mgrid[:patch, :patch]
    disk = ((yy - 8) ** 2 + (xx - 8) ** 2 <= 9).astype(np.float32)  # radius 3 at the patch centre
    found = [dec.Found(y=half + 10, x=half + 12, patch=disk * 0.8, codes=np.zeros((4, 4)), gain=0.9, prob=disk)]
    gray = np.zeros((48, 56), np.float32)
    areas = {}
    for rule in ("image", "object", "head"):
        objs = dec.to_objects(found, gray, (0.5, 0.5), half, patch, rule, threshold=0.1, fraction=0.3,
                              intensity_range=100.0, min_area=0)
        assert len(objs) == 1
        obj = objs[0]
        cy, cx = obj.centroid()
        # model-grid pixel u sits at input coordinate (u + 0.5) / scale - 0.5
        assert cy == pytest.approx((10 + 0.5) / 0.5 - 0.5, abs=0.3) and cx == pytest.approx((12 + 0.5) / 0.5 - 0.5, abs=0.3)
        assert obj.image.max() == pytest.approx(80.0, rel=0.05)  # back in input intensity units
        areas[rule] = obj.area
    assert areas["head"] == pytest.approx(4 * disk.sum(), rel=0.15)  # half-level edge: 2x the side, 4x the area
    assert areas["image"] > areas["object"] > areas["head"]  # lower thresholds, larger masks
