"""Stop rule against fragments and background: what a kept object must explain.

Lowering the L1 loss is not enough on real images: dim diffuse signal, out-of-focus haze and the
texture inside large nuclei get redrawn as many small objects that each lower the loss a bit.  An
object is kept only if (each check off at 0):

* its own intensity: the generated object's peak >= ``min_peak`` (normalised input units, 0..1);
* agreement with the mask head: IoU of the object's mask with the head's mask (p > 0.5) >=
  ``min_head_agreement`` (the head was trained to outline the central nucleus; fragments of
  texture or haze disagree with it);
* contrast to the local background: mean normalised input inside the mask minus the median in a
  ring around it (outside every object) >= ``min_contrast``, and >= ``min_snr`` times the ring's
  noise (robust sigma): on pure noise the percentile normalisation stretches noise to the full
  0..1 range, so an absolute contrast alone lets noise clusters through.

Thresholds are chosen on the validation split (bench/kaizen.py tune) and stored in the model card.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from app.pipelines.kaizen.outputs import KaizenObject


def local_contrast(obj: KaizenObject, norm: np.ndarray, covered: np.ndarray, in_noise: bool = False) -> float:
    """Mean of ``norm`` inside the object's mask minus the median of a ring around it outside ``covered``.

    ``in_noise``: the same difference in units of the ring's noise (robust sigma from its MAD).
    """
    y, x = obj.offset
    h, w = obj.mask.shape
    ring_width = max(2, int(round(0.25 * np.sqrt(obj.mask.sum()))))
    y0, x0 = max(0, y - ring_width), max(0, x - ring_width)
    y1, x1 = min(norm.shape[0], y + h + ring_width), min(norm.shape[1], x + w + ring_width)
    mask = np.zeros((y1 - y0, x1 - x0), bool)
    mask[y - y0: y - y0 + h, x - x0: x - x0 + w] = obj.mask[: y1 - y, : x1 - x]
    ring = ndi.binary_dilation(mask, iterations=ring_width) & ~mask & ~covered[y0:y1, x0:x1]
    window = norm[y0:y1, x0:x1]
    if not mask.any():
        return 0.0
    if not ring.any():  # surrounded by other objects: no background to compare with
        return float("inf")
    values = window[ring]
    contrast = float(window[mask].mean() - np.median(values))
    if in_noise:
        sigma = 1.4826 * float(np.median(np.abs(values - np.median(values))))
        return contrast / max(sigma, 1e-6)
    return contrast


def apply_stop_rule(objects: list[KaizenObject], norm: np.ndarray, intensity_range: float, min_peak: float,
                    min_head_agreement: float, min_contrast: float, min_snr: float = 0.0) -> list[KaizenObject]:
    """The objects that pass all active checks, renumbered 1..N (``norm``: the normalised input)."""
    if not objects or (min_peak <= 0 and min_head_agreement <= 0 and min_contrast <= 0 and min_snr <= 0):
        return objects
    covered = np.zeros(norm.shape, bool)
    for obj in objects:
        y, x = obj.offset
        h, w = obj.mask.shape
        covered[y:y + h, x:x + w] |= obj.mask[: norm.shape[0] - y, : norm.shape[1] - x]
    kept = []
    for obj in objects:
        if min_peak > 0 and float(obj.image.max()) / max(intensity_range, 1e-12) < min_peak:
            continue
        if min_head_agreement > 0 and obj.head_agreement < min_head_agreement:
            continue
        if min_contrast > 0 and local_contrast(obj, norm, covered) < min_contrast:
            continue
        if min_snr > 0 and local_contrast(obj, norm, covered, in_noise=True) < min_snr:
            continue
        kept.append(obj)
    for number, obj in enumerate(kept, 1):
        obj.id = number
    return kept


__all__ = ["apply_stop_rule", "local_contrast"]
