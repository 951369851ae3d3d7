"""Kaizen decomposition: Algorithm 2 (core) and Algorithm 3 (predicting on the error) of Majoral & Domnich 2025.

Core algorithm, on the model's grid (image normalised and rescaled so objects have the trained size):
the internal image starts at zero; each round, the error (input - internal) is box-filtered
(7x7 mean for a 40 px patch), candidates are taken at its maxima greedily with a 32x32 square
suppressed around each one, *all* candidates of the round go through the VQ-VAE as one batch, and a
prediction is kept if adding it lowers the L1 loss between internal image and input.  The round
ends when nothing is kept.  Sizes scale with the patch size.

Two guards make this behave on real images (the quick trial ran away without them), both explicit
parameters chosen on validation data: a kept object must lower the loss by at least
``accept_margin`` x its own summed intensity (gain share of the object), and a candidate needs a box
mean residual of at least ``min_residual``.  Within a round, candidates are accepted greedily in
order of gain, each re-checked against the internal image updated by those accepted before it, so
two candidates on one object do not both get in.  Candidates are taken at local maxima of the
box-filtered error (a candidate on a slope next to a suppressed square is moved to the top of its
hill), and a position whose prediction was rejected is not proposed again (its prediction would be
the same).  Algorithm 3 reruns the core algorithm on the remaining error image ``error_rounds``
times (default 0: on nuclei-dsb2018 it added fragments; see the model card).

Object size: with ``scales`` (e.g. "1 2 4") the image is decomposed at the estimated diameter times
each factor and regions keep the scale that explains them best (:mod:`.multiscale`); kept objects
then pass the stop rule (:mod:`.stoprule`).  Both are off in :class:`DecomposeParams` and switched on
by a model card (the shipped one: see its ``decompose_note``).  With ``background`` > 0 a smooth
background (an opening ``background`` x the largest diameter tried wide) is subtracted first
(:mod:`.background`) and the diameter estimated again on the result (the larger estimate is kept): a
background slope is otherwise residual that Kaizen covers with objects.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy import ndimage as ndi

from app.core.errors import ImageError, UserError
from app.core.jobs import Job, Progress, run
from app.pipelines.kaizen.background import subtract_background
from app.pipelines.kaizen.model import KaizenModel
from app.pipelines.kaizen.multiscale import ScaleResult, merge_scales, parse_scales
from app.pipelines.kaizen.outputs import Decomposition, KaizenObject
from app.pipelines.kaizen.params import DecomposeParams
from app.pipelines.kaizen.sizing import (MAX_DIAMETER, MIN_DIAMETER, as_gray, estimate_diameter, has_signal,
                                         normalise, rescale)
from app.pipelines.kaizen.stoprule import apply_stop_rule

MASK_RULES = ("image", "object", "head")
SMALL = 1e-3  # generated intensities below this (normalised units) are treated as zero


def box_size(patch: int) -> int:
    """Side of the box filter: 7 for a 40 px patch, scaled with the patch and kept odd."""
    return max(3, int(round(7 * patch / 40)) | 1)


def suppression_size(patch: int) -> int:
    """Side of the square suppressed around a candidate: 32 for a 40 px patch."""
    return max(4, int(round(32 * patch / 40)))


@dataclass
class Found:
    """An object found on the model's grid: centre, generated patch, codes, gain share."""

    y: int
    x: int
    patch: np.ndarray
    codes: np.ndarray
    gain: float
    prob: np.ndarray  # mask-head probability patch


@dataclass
class CoreState:
    """Internal image and bookkeeping of one run of the core algorithm (padded by half a patch)."""

    source: np.ndarray  # padded input of this pass (image, or error image for Algorithm 3)
    internal: np.ndarray = field(init=False)
    rejected: np.ndarray = field(init=False)  # bool: positions already tried and rejected
    found: list[Found] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.internal = np.zeros_like(self.source)
        self.rejected = np.zeros(self.source.shape, bool)


def distant_maxima(error: np.ndarray, box: int, suppress: int, min_residual: float, max_points: int,
                   valid: tuple[slice, slice], skip: np.ndarray | None = None) -> np.ndarray:
    """Candidate points (y, x) at maxima of the box-mean error, at least ``suppress``/2 apart (Chebyshev).

    Points come in order of decreasing box-mean error; only those >= ``min_residual`` inside
    ``valid`` and not marked in ``skip`` are returned.
    """
    score = ndi.uniform_filter(error, box, mode="constant")
    region = np.zeros(error.shape, bool)
    region[valid] = True
    peaks = region & (score >= min_residual) & (score == ndi.maximum_filter(score, 3, mode="constant"))
    if skip is not None:
        peaks &= ~skip
    ys, xs = np.nonzero(peaks)
    if ys.size == 0:
        return np.zeros((0, 2), int)
    order = np.argsort(-score[ys, xs], kind="stable")
    taken = np.zeros(error.shape, bool)
    half = suppress // 2
    points = []
    for y, x in zip(ys[order], xs[order]):
        if taken[y, x]:
            continue
        points.append((y, x))
        taken[max(0, y - half): y + half, max(0, x - half): x + half] = True
        if len(points) >= max_points:
            break
    return np.array(points, int)


@torch.no_grad()
def predict_patches(model: KaizenModel, source: np.ndarray, points: np.ndarray,
                    batch_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Object images (N, P, P), mask probabilities (N, P, P) and codes (N, G, G) for patches of ``source`` at ``points``."""
    p = model.patch
    half = p // 2
    crops = np.stack([source[y - half: y - half + p, x - half: x - half + p] for y, x in points])
    device = next(model.network.parameters()).device
    images, probs, codes = [], [], []
    for start in range(0, len(crops), batch_size):
        batch = torch.from_numpy(crops[start:start + batch_size]).to(device)[:, None]
        out = model.network(batch)
        images.append(out.object[:, 0].float().cpu().numpy())
        probs.append(torch.sigmoid(out.mask_logit[:, 0]).float().cpu().numpy())
        codes.append(out.codes.cpu().numpy())
    objects = np.concatenate(images)
    objects[objects < SMALL] = 0.0
    return objects, np.concatenate(probs), np.concatenate(codes)


def _gain_share(residual: np.ndarray, obj: np.ndarray) -> float:
    """Drop of the L1 loss when ``obj`` is added, as a share of the object's summed intensity."""
    total = float(obj.sum())
    if total <= 0:
        return -1.0
    return float(np.abs(residual).sum() - np.abs(residual - obj).sum()) / total


def core_round(model: KaizenModel, state: CoreState, params: DecomposeParams, valid: tuple[slice, slice]) -> tuple[int, int]:
    """One round of Algorithm 2: propose, predict all as one batch, keep the ones that lower the loss.

    Returns (candidates tried, objects kept).
    """
    p = model.patch
    half = p // 2
    error = state.source - state.internal
    points = distant_maxima(error, box_size(p), suppression_size(p), params.min_residual,
                            params.max_candidates, valid, skip=state.rejected)
    if len(points) == 0:
        return 0, 0
    objects, probs, codes = predict_patches(model, state.source, points, params.batch_size)
    windows = [(slice(y - half, y - half + p), slice(x - half, x - half + p)) for y, x in points]
    first = [_gain_share(error[w], o) for w, o in zip(windows, objects)]
    kept = 0
    for i in np.argsort(-np.asarray(first), kind="stable"):
        gain = first[i]
        if gain > params.accept_margin and kept:  # re-check against objects kept earlier this round
            gain = _gain_share(state.source[windows[i]] - state.internal[windows[i]], objects[i])
        y, x = points[i]
        if gain > params.accept_margin:
            state.internal[windows[i]] += objects[i]
            state.found.append(Found(int(y), int(x), objects[i], codes[i], gain, probs[i]))
            kept += 1
        else:
            state.rejected[max(0, y - 1): y + 2, max(0, x - 1): x + 2] = True
    return len(points), kept


def core_algorithm(model: KaizenModel, source: np.ndarray, params: DecomposeParams,
                   valid: tuple[slice, slice], label: str = "core") -> Job[tuple[CoreState, int, int]]:
    """Algorithm 2 on a padded source; returns (state, rounds, candidates)."""
    state = CoreState(source)
    rounds = candidates = 0
    for _ in range(params.max_iterations):
        tried, kept = core_round(model, state, params, valid)
        rounds += 1
        candidates += tried
        yield Progress("decompose", rounds, 0, f"{label}: {len(state.found)} objects ({tried} candidates)")
        if kept == 0:
            break
    return state, rounds, candidates


@dataclass
class Search:
    """What the core algorithm found on the model's grid, with what is needed to map it back."""

    found: list[Found]
    scales: tuple[float, float]  # model grid / input grid, per axis (exact after rounding)
    half: int  # half the patch (the padding of the model-grid image)
    image_mean: float  # mean of the normalised input (the paper's mask threshold is a fraction of it)
    intensity_range: float  # input units per normalised unit
    diameter: float
    rounds: int
    candidates: int


def search_job(gray: np.ndarray, model: KaizenModel, params: DecomposeParams,
               diameter: float | None = None) -> Job[Search | None]:
    """Normalise, rescale and run Algorithm 2 (and 3 when ``error_rounds`` > 0); None for an empty image.

    ``diameter`` (input pixels) overrides ``params.diameter`` and the estimate.
    """
    if gray.size == 0:
        return None
    norm, low, high = normalise(gray)
    if not has_signal(gray, low, high):
        return None  # nothing stands out of the noise: no work at all
    diameter = diameter or params.diameter or estimate_diameter(norm) or model.target_diameter
    small = rescale(norm, model.target_diameter / diameter)
    half = model.patch // 2
    padded = np.pad(small, half)
    valid = (slice(half, half + small.shape[0]), slice(half, half + small.shape[1]))
    found: list[Found] = []
    total_internal = np.zeros_like(padded)
    source = padded
    rounds = candidates = 0
    for pass_index in range(1 + max(0, params.error_rounds)):
        label = "image" if pass_index == 0 else f"error pass {pass_index}"
        state, r, c = yield from core_algorithm(model, source, params, valid, label)
        rounds, candidates = rounds + r, candidates + c
        if not state.found:
            break
        found.extend(state.found)
        total_internal += state.internal
        source = np.clip(padded - total_internal, 0, None)
    scales = (small.shape[0] / gray.shape[0], small.shape[1] / gray.shape[1])
    return Search(found, scales, half, float(norm.mean()), high - low, float(diameter), rounds, candidates)


def decompose_job(image: np.ndarray, model: KaizenModel, params: DecomposeParams | None = None,
                  name: str = "image") -> Job[Decomposition]:
    """Decompose one 2-D image into objects; yields Progress per round, returns a :class:`Decomposition`."""
    params = params or model.defaults
    if params.mask_rule not in MASK_RULES:
        raise UserError(f"unknown mask rule {params.mask_rule!r}: use one of {', '.join(MASK_RULES)}")
    gray = as_gray(image, name)
    result = Decomposition(shape=gray.shape, params=params.to_dict(), model=model.card.model_id())
    try:
        scales = parse_scales(params.scales)
    except ValueError as exc:
        raise UserError(str(exc)) from exc
    if gray.size == 0:
        return result
    prepared = prepare_input(gray, params, scales, model.target_diameter)
    if prepared is None:
        return result  # nothing stands out of the noise (or of a smooth background): no work at all
    work, norm, low, high, base = prepared  # object intensities are still measured on ``gray``
    found: list[ScaleResult] = []
    for factor in scales:
        diameter = float(np.clip(base * factor, MIN_DIAMETER, MAX_DIAMETER))
        if any(abs(r.diameter - diameter) < 1e-6 for r in found):
            continue
        search = yield from search_job(work, model, params, diameter=diameter)
        if search is None:
            return result
        result.rounds, result.candidates = result.rounds + search.rounds, result.candidates + search.candidates
        found.append(ScaleResult(diameter, objects_from_search(search, gray, model.patch, params)))
    margin = max(1, int(round(0.1 * base)))
    objects, diameters = merge_scales(norm * (high - low), found, params.object_cost * (high - low), margin,
                                      base=float(np.clip(base, MIN_DIAMETER, MAX_DIAMETER)),
                                      switch_share=params.switch_share, guard=params.merge_guard)
    result.diameter = float(np.median(diameters)) if diameters else float(base)
    result.scale = model.target_diameter / result.diameter
    result.objects = apply_stop_rule(objects, norm, high - low, params.min_peak, params.min_head_agreement,
                                     params.min_contrast, params.min_snr)
    for number, obj in enumerate(result.objects, 1):
        obj.id = number
    return result


def prepare_input(gray: np.ndarray, params: DecomposeParams, scales: tuple[float, ...],
                  fallback: float) -> tuple[np.ndarray, np.ndarray, float, float, float] | None:
    """(image to decompose, its normalised copy, low, high, base diameter), or None when nothing stands out.

    With ``params.background`` > 0 the smooth background is subtracted and the diameter estimated
    again on the result, keeping the larger estimate; ``fallback`` is the diameter when none can be estimated.
    """
    norm, low, high = normalise(gray)
    if not has_signal(gray, low, high):
        return None
    base = params.diameter or estimate_diameter(norm) or fallback
    if params.background <= 0:
        return gray, norm, low, high, base
    window = params.background * float(np.clip(base * max(scales), MIN_DIAMETER, MAX_DIAMETER))
    work = subtract_background(gray, window)
    norm, low, high = normalise(work)
    if not has_signal(work, low, high):
        return None  # only a smooth background
    again = estimate_diameter(norm) if not params.diameter else None
    # the larger estimate: subtraction can leave only chromatin texture inside a dense cluster of nuclei,
    # whose estimate is a fraction of a nucleus (d256b32adda37f23: 23.9 -> 14.7 px, AP50 0.47 -> 0.35)
    return work, norm, low, high, params.diameter or max(base, again or 0.0)


def objects_from_search(search: Search, gray: np.ndarray, patch: int, params: DecomposeParams) -> list[KaizenObject]:
    """Objects on the input grid, masked by ``params``' mask rule."""
    return to_objects(search.found, gray, search.scales, search.half, patch, params.mask_rule,
                      params.mask_fraction * search.image_mean, params.mask_fraction, search.intensity_range,
                      params.min_area)


def to_objects(found: list[Found], gray: np.ndarray, scales: tuple[float, float], half: int, patch: int,
               rule: str, threshold: float, fraction: float, intensity_range: float,
               min_area: int) -> list[KaizenObject]:
    """Map generated patches back to the input grid (bilinear), mask them, drop tiny ones, number them.

    Mask rules: ``image`` (paper) object image > ``threshold`` (fraction x input mean); ``object``:
    object image > fraction x its own maximum; ``head``: mask-head probability > 0.5.
    """
    height, width = gray.shape
    objects: list[KaizenObject] = []
    for item in found:
        # patch pixel (i, j) sits at model-grid (item.y - half - half + i) in unpadded coordinates
        top, left = item.y - 2 * half, item.x - 2 * half
        sy, sx = scales
        y0 = max(0, int(np.floor(top / sy)))
        x0 = max(0, int(np.floor(left / sx)))
        y1 = min(height, int(np.ceil((top + patch) / sy)) + 1)
        x1 = min(width, int(np.ceil((left + patch) / sx)) + 1)
        if y1 <= y0 or x1 <= x0:
            continue
        yy = (np.arange(y0, y1) + 0.5) * sy - 0.5 - top
        xx = (np.arange(x0, x1) + 0.5) * sx - 0.5 - left
        grid = np.meshgrid(yy, xx, indexing="ij")
        image = ndi.map_coordinates(item.patch, grid, order=1, mode="constant", cval=0.0).astype(np.float32)
        head = (ndi.map_coordinates(item.prob, grid, order=1, mode="constant", cval=0.0) > 0.5) & (image > SMALL)
        if rule == "head":
            mask = head
        elif rule == "object":
            mask = image > max(fraction * float(item.patch.max()), SMALL)
        else:
            mask = image > max(threshold, SMALL)
        mask = _main_part(mask)
        if mask.sum() < max(1, min_area):
            continue
        crop = gray[y0:y1, x0:x1]
        agreement = float((mask & head).sum() / max(1, (mask | head).sum()))
        objects.append(KaizenObject(id=len(objects) + 1, offset=(y0, x0), image=image * intensity_range,
                                    mask=mask, codes=item.codes.astype(np.int16), gain=item.gain,
                                    mean_intensity=float(crop[mask].mean()), head_agreement=agreement))
    return objects


def _main_part(mask: np.ndarray) -> np.ndarray:
    """The largest connected piece of a mask, holes filled: an object is one piece."""
    parts, n = ndi.label(mask)
    if n > 1:
        sizes = np.bincount(parts.ravel())
        sizes[0] = 0
        mask = parts == sizes.argmax()
    return ndi.binary_fill_holes(mask)


def decompose(image: np.ndarray, model: KaizenModel, params: DecomposeParams | None = None,
              name: str = "image") -> Decomposition:
    """Decompose one image without progress reporting (tests, scripts)."""
    return run(decompose_job(image, model, params, name))


__all__ = ["decompose", "decompose_job", "core_algorithm", "core_round", "distant_maxima", "predict_patches",
           "box_size", "suppression_size", "read_gray"]


# memory a decomposition needs per image pixel beside the decoded image (float copies, maps, labels):
# peak RSS grew by ~9 bytes per added pixel from a 1024 to a 2048 px image; 12 leaves some room
WORK_BYTES_PER_PIXEL = 12


def read_gray(path: str | os.PathLike[str], channel: int | str | None = None, z: int | None = None,
              labels: bool = False) -> np.ndarray:
    """Read one 2-D image for Kaizen: RGB becomes the mean of R, G, B; other channels or planes must be chosen.

    A z-stack or multi-channel image without ``z``/``channel`` is refused with a message naming its shape.
    ``labels=True`` reads a label image as is (2-D only).
    """
    from app.core.images import open_image

    with open_image(path) as image:
        info = image.info
        if not labels and channel is None and info.channel_names == ("R", "G", "B"):
            data = image.read(z=z, work_bytes_per_pixel=WORK_BYTES_PER_PIXEL).astype(np.float32).mean(axis=0)
        else:
            data = image.read(channel=channel, z=z, work_bytes_per_pixel=WORK_BYTES_PER_PIXEL)
    if data.ndim != 2:
        what = "label image" if labels else "image"
        hint = "" if labels else "; choose one with --channel / --z"
        raise ImageError(f"{path}: Kaizen needs a 2-D {what}, this one has axes {info.axes} "
                         f"and shape {tuple(info.shape)}{hint}")
    return data
