"""Train a Kaizen VQ-VAE: patches centred on labelled objects, target = the patch times the central object's mask.

Images are normalised and rescaled so that their median object diameter (from the labels) becomes
``target_diameter``; patches are cut around a random pixel of a random object (80%) or at a random
place (20%; the target is then whatever object covers the centre, usually nothing).  Augmentations:
rotations by any angle and flips, +-25% scale, intensity gain, background offset and noise.  The
job checkpoints every epoch (and when cancelled), resumes from a checkpoint, reports validation
loss, mask IoU and codebook perplexity, and writes a model folder (card.json + weights.pt).
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from app.core.device import pick_device
from app.core.errors import UserError
from app.core.jobs import Job, Progress
from app.pipelines.kaizen.params import TrainParams
from app.pipelines.kaizen.sizing import as_gray, diameter_from_labels, normalise, rescale
from app.pipelines.kaizen.vqvae import VQVAE, vqvae_loss

CHECKPOINT = "checkpoint.pt"
SUPPORTED_DEVICES = ("cpu", "cuda")  # devices Kaizen runs on (mps is refused with one line)
SPLIT_SALT = "kaizen-split-v1"
SPLIT_RULE = ("validation if int(sha256('kaizen-split-v1:' + name).hexdigest()[:8], 16) % 100 < 20, "
              "where name is the image file stem")


def is_validation(name: str, percent: int = 20, salt: str = SPLIT_SALT) -> bool:
    """The fixed, order-independent split rule: hash of the file stem (about ``percent``% validation)."""
    digest = hashlib.sha256(f"{salt}:{name}".encode()).hexdigest()
    return int(digest[:8], 16) % 100 < percent


def resolve_device(device: str) -> torch.device:
    """The torch device of a Kaizen job (:func:`app.core.device.pick_device`); Kaizen runs on cpu or cuda."""
    return pick_device(device, SUPPORTED_DEVICES, "Kaizen")


@dataclass
class TrainImage:
    """One training image on the model's grid: normalised intensities, labels and object pixel lists."""

    name: str
    image: np.ndarray  # float32, padded by ``pad`` on each side
    labels: np.ndarray  # same padding
    pad: int
    scale: float  # model grid / original grid
    diameter: float  # median object diameter in the original image
    object_pixels: list[np.ndarray] = field(default_factory=list)  # per object: (n, 2) padded (y, x)


def prepare_image(name: str, image: np.ndarray, labels: np.ndarray, target_diameter: float,
                  pad: int) -> TrainImage | None:
    """Normalise, rescale so the median object diameter is ``target_diameter``, pad, index object pixels.

    Returns None for an image without objects.  Label images of another size are refused.
    """
    image = as_gray(image, name)
    if labels.ndim != 2 or labels.shape != image.shape:
        raise UserError(f"{name}: label image size {labels.shape} does not match image size {image.shape}")
    diameter = diameter_from_labels(labels)
    if diameter is None:
        return None
    factor = target_diameter / diameter
    norm, _, _ = normalise(image)
    small = rescale(norm, factor)
    small_labels = rescale(labels.astype(np.int32), factor, order=0)
    small = np.pad(small, pad)
    small_labels = np.pad(small_labels, pad)
    order = np.argsort(small_labels.ravel(), kind="stable")
    sorted_ids = small_labels.ravel()[order]
    ids, starts = np.unique(sorted_ids, return_index=True)
    bounds = list(starts[1:]) + [sorted_ids.size]
    pixels = []
    for obj_id, start, stop in zip(ids, starts, bounds):
        if obj_id == 0:
            continue
        flat = order[start:stop]
        pixels.append(np.stack(np.unravel_index(flat, small_labels.shape), axis=1).astype(np.int32))
    if not pixels:
        return None
    return TrainImage(name, small, small_labels, pad, factor, diameter, pixels)


class PatchSampler:
    """Draws augmented (input, target, mask) patch batches from prepared images."""

    def __init__(self, images: list[TrainImage], patch: int, centred_fraction: float, seed: int,
                 augment: bool = True) -> None:
        if not images:
            raise UserError("no labelled objects in the training images")
        self.images, self.patch, self.centred = images, patch, centred_fraction
        self.window = window_size(patch)
        self.rng = np.random.default_rng(seed)
        self.augment = augment

    def _point(self) -> tuple[TrainImage, int, int]:
        item = self.images[self.rng.integers(len(self.images))]
        if self.rng.random() < self.centred:
            pixels = item.object_pixels[self.rng.integers(len(item.object_pixels))]
            y, x = pixels[self.rng.integers(len(pixels))]
        else:
            h, w = item.image.shape
            y = self.rng.integers(item.pad, h - item.pad)
            x = self.rng.integers(item.pad, w - item.pad)
        return item, int(y), int(x)

    def windows(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """``n`` raw (image, central-object mask) windows of side ``window`` centred on sampled points."""
        half = self.window // 2
        images = np.zeros((n, self.window, self.window), np.float32)
        masks = np.zeros_like(images)
        for i in range(n):
            item, y, x = self._point()
            sl = (slice(y - half, y - half + self.window), slice(x - half, x - half + self.window))
            images[i] = item.image[sl]
            centre = item.labels[y, x]
            if centre:
                masks[i] = item.labels[sl] == centre
        return images, masks

    def batch(self, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(input, target, mask) tensors of shape (n, 1, patch, patch)."""
        images, masks = self.windows(n)
        stack = torch.from_numpy(np.stack([images, masks], axis=1))
        return augment_batch(stack, self.patch, self.rng, self.augment)


def window_size(patch: int) -> int:
    """Side of the raw window cut before rotation/scaling, large enough for any angle at 0.8x zoom."""
    return int(math.ceil(patch * 1.42 / 0.8 / 2)) * 2


def augment_batch(stack: torch.Tensor, patch: int, rng: np.random.Generator,
                  augment: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rotate/flip/zoom (image bilinear, mask nearest) to ``patch``, then gain, offset and noise on the input."""
    n, _, window, _ = stack.shape
    if augment:
        angle = torch.from_numpy(rng.uniform(0, 2 * math.pi, n)).float()
        zoom = torch.from_numpy(np.exp(rng.uniform(math.log(0.8), math.log(1.25), n))).float()
        flip = torch.from_numpy(rng.choice([-1.0, 1.0], n)).float()
    else:
        angle, zoom, flip = torch.zeros(n), torch.ones(n), torch.ones(n)
    ratio = patch / window
    cos, sin = torch.cos(angle) * ratio / zoom, torch.sin(angle) * ratio / zoom
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 1] = cos * flip, -sin
    theta[:, 1, 0], theta[:, 1, 1] = sin * flip, cos
    # keep the window's centre pixel (index window//2) on the patch's centre pixel (index patch//2)
    c_in, c_out = 1.0 / window, 1.0 / patch
    theta[:, 0, 2] = c_in - (theta[:, 0, 0] + theta[:, 0, 1]) * c_out
    theta[:, 1, 2] = c_in - (theta[:, 1, 0] + theta[:, 1, 1]) * c_out
    grid = F.affine_grid(theta, (n, 1, patch, patch), align_corners=False)
    image = F.grid_sample(stack[:, :1], grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    mask = F.grid_sample(stack[:, 1:], grid, mode="nearest", padding_mode="zeros", align_corners=False)
    if augment:
        gain = torch.from_numpy(np.exp(rng.uniform(math.log(0.5), math.log(2.0), (n, 1, 1, 1)))).float()
        image = image * gain
    target = image * mask
    inputs = image
    if augment:
        offset = torch.from_numpy(rng.uniform(-0.02, 0.04, (n, 1, 1, 1))).float()
        sigma = torch.from_numpy(rng.uniform(0, 0.04, (n, 1, 1, 1))).float()
        inputs = (image + offset + sigma * torch.from_numpy(rng.standard_normal(image.shape)).float()).clamp_min(0)
    return inputs, target, mask


def prepare_images(pairs: list[tuple[str, np.ndarray, np.ndarray]], params: TrainParams) -> Job[list[TrainImage]]:
    """Prepare (name, image, labels) pairs, yielding progress; images without objects are skipped."""
    pad = window_size(params.patch) // 2 + 1
    prepared = []
    for i, (name, image, labels) in enumerate(pairs):
        item = prepare_image(name, image, labels, params.target_diameter, pad)
        if item is not None:
            prepared.append(item)
        yield Progress("prepare", i + 1, len(pairs), name)
    return prepared


@torch.no_grad()
def evaluate(model: VQVAE, batches: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]], params: TrainParams,
             device: torch.device) -> dict[str, float]:
    """Mean loss terms, mask IoU and codebook perplexity on fixed validation batches."""
    model.eval()
    totals: dict[str, float] = {}
    inter = union = 0.0
    used = torch.zeros(model.config.codebook_size, dtype=torch.bool)
    for inputs, target, mask in batches:
        inputs, target, mask = inputs.to(device), target.to(device), mask.to(device)
        out = model(inputs)
        loss, terms = vqvae_loss(out, target, mask, params.beta, params.mask_weight)
        terms["loss"] = float(loss.detach())
        for k, v in terms.items():
            totals[k] = totals.get(k, 0.0) + v / len(batches)
        pred = out.mask_logit > 0
        inter += float((pred & (mask > 0.5)).sum())
        union += float((pred | (mask > 0.5)).sum())
        used[out.codes.flatten().cpu()] = True
    totals["mask_iou"] = inter / max(union, 1.0)
    totals["codes_used"] = int(used.sum())
    model.train()
    return totals


def _learning_rate(step: int, total: int, base: float) -> float:
    """Linear warm-up over 3% of steps, then cosine decay to 2% of ``base``."""
    warm = max(1, int(0.03 * total))
    if step < warm:
        return base * (step + 1) / warm
    progress = min(1.0, (step - warm) / max(1, total - warm))
    return base * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * progress)))


def train_job(train_pairs: list[tuple[str, np.ndarray, np.ndarray]],
              val_pairs: list[tuple[str, np.ndarray, np.ndarray]],
              out_dir: Path, params: TrainParams, resume: bool = True,
              data_info: dict[str, Any] | None = None) -> Job[Path]:
    """Train (or resume) a VQ-VAE and write the model folder ``out_dir``; yields Progress, returns ``out_dir``.

    ``train_pairs``/``val_pairs`` are (name, image, labels).  A checkpoint in ``out_dir`` is resumed
    when ``resume`` is true; closing the generator saves a checkpoint first.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    device = resolve_device(params.device)
    torch.manual_seed(params.seed)
    train_images = yield from prepare_images(train_pairs, params)
    val_images = (yield from prepare_images(val_pairs, params)) if val_pairs else []
    sampler = PatchSampler(train_images, params.patch, params.centred_fraction, params.seed)
    val_batches = _validation_batches(val_images or train_images, params)

    model = VQVAE(params.vqvae_config()).to(device)
    optimiser = torch.optim.AdamW(model.parameters(), lr=params.lr, weight_decay=1e-4)
    total_steps = params.epochs * params.steps_per_epoch
    state: dict[str, Any] = {"step": 0, "elapsed_s": 0.0, "history": []}
    checkpoint = out_dir / CHECKPOINT
    if resume and checkpoint.exists():
        state = _load_checkpoint(checkpoint, model, optimiser, sampler, params)
        yield Progress("train", state["step"], total_steps, f"resumed at step {state['step']}")
    finished = False
    started = time.perf_counter() - state["elapsed_s"]
    cpu_started = time.process_time() - state.get("cpu_s", 0.0)
    try:
        model.train()
        while state["step"] < total_steps:
            if params.time_limit_s and time.perf_counter() - started > params.time_limit_s:
                break
            step = state["step"]
            for group in optimiser.param_groups:
                group["lr"] = _learning_rate(step, total_steps, params.lr)
            inputs, target, mask = (t.to(device) for t in sampler.batch(params.batch_size))
            out = model(inputs)
            loss, terms = vqvae_loss(out, target, mask, params.beta, params.mask_weight)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            state["step"] = step + 1
            state["elapsed_s"] = time.perf_counter() - started
            state["cpu_s"] = time.process_time() - cpu_started
            yield Progress("train", state["step"], total_steps,
                           f"loss {float(loss.detach()):.4f} perplexity {terms['perplexity']:.0f}")
            if state["step"] % params.steps_per_epoch == 0 or state["step"] == total_steps:
                scores = evaluate(model, val_batches, params, device)
                scores.update(step=state["step"], elapsed_s=round(state["elapsed_s"], 1))
                state["history"].append(scores)
                _save_checkpoint(checkpoint, model, optimiser, sampler, state, params)
                yield Progress("validate", state["step"] // params.steps_per_epoch, params.epochs,
                               f"val loss {scores['loss']:.4f} mask IoU {scores['mask_iou']:.3f} "
                               f"codes used {scores['codes_used']}", data=scores)
        finished = True
    finally:
        if not finished:
            state["elapsed_s"] = time.perf_counter() - started
            state["cpu_s"] = time.process_time() - cpu_started
            _save_checkpoint(checkpoint, model, optimiser, sampler, state, params)
    scores = state["history"][-1] if state["history"] else evaluate(model, val_batches, params, device)
    write_model(out_dir, model, params, state, scores, train_images, val_images, data_info or {})
    yield Progress("save", 1, 1, f"model written to {out_dir}")
    return out_dir


def _validation_batches(images: list[TrainImage], params: TrainParams) -> list[tuple[torch.Tensor, ...]]:
    """Fixed, unaugmented validation patches (seeded), in batches."""
    sampler = PatchSampler(images, params.patch, params.centred_fraction, seed=12345, augment=False)
    n, size = params.validation_patches, params.batch_size
    return [sampler.batch(min(size, n - i)) for i in range(0, n, size)]


def _save_checkpoint(path: Path, model: VQVAE, optimiser: torch.optim.Optimizer, sampler: PatchSampler,
                     state: dict[str, Any], params: TrainParams) -> None:
    """Write the checkpoint atomically, holding only tensors, dicts, lists, numbers and strings (the
    numpy generator's state is a dict of ints), so :func:`_read_checkpoint` can load it ``weights_only``."""
    from app.core.atomic import atomic_path

    payload = {"model": model.state_dict(), "optimiser": optimiser.state_dict(), "state": state,
               "params": params.to_dict(), "rng": sampler.rng.bit_generator.state,
               "torch_rng": torch.get_rng_state()}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def _load_checkpoint(path: Path, model: VQVAE, optimiser: torch.optim.Optimizer, sampler: PatchSampler,
                     params: TrainParams) -> dict[str, Any]:
    """Resume from ``path``: loaded with ``weights_only`` so a checkpoint handed over with a model folder
    cannot run code; one that does not load or does not fit is a one-line UserError."""
    payload = _read_checkpoint(path)
    saved = payload["params"]
    for key in ("patch", "channels", "codebook_size", "code_dim", "target_diameter"):
        if saved.get(key) != getattr(params, key):
            raise UserError(f"{path}: checkpoint was trained with {key}={saved.get(key)}, not "
                            f"{getattr(params, key)}; use another --out folder or delete the checkpoint")
    try:
        model.load_state_dict(payload["model"])
        optimiser.load_state_dict(payload["optimiser"])
        sampler.rng.bit_generator.state = payload["rng"]
        torch.set_rng_state(payload["torch_rng"])
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise UserError(f"{path}: the checkpoint does not fit this model ({_first_line(exc)}); "
                        f"{_CHECKPOINT_FIX}") from exc
    return payload["state"]


_CHECKPOINT_FIX = "delete it or train with --no-resume"


def _first_line(error: BaseException) -> str:
    """The first line of an error's message (torch's messages run over many lines)."""
    lines = str(error).strip().splitlines()
    return (lines[0] if lines else type(error).__name__)[:200]


def _read_checkpoint(path: Path) -> dict[str, Any]:
    """The checkpoint's dict, read with ``weights_only=True`` (tensors and plain values only, never code)."""
    import pickle

    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a refused global, or truncated / garbled: zip, pickle and storage errors
        if isinstance(exc, pickle.UnpicklingError) and "weights only" in str(exc).lower():  # possibly code
            raise UserError(f"{path}: the checkpoint holds objects other than tensors and plain values and was "
                            f"not loaded (it may have been tampered with); {_CHECKPOINT_FIX}") from exc
        raise UserError(f"{path}: the checkpoint is corrupt and cannot be read ({_first_line(exc)}); "
                        f"{_CHECKPOINT_FIX}") from exc
    state = payload.get("state") if isinstance(payload, dict) else None
    if (not isinstance(payload, dict) or not isinstance(payload.get("params"), dict) or not isinstance(state, dict)
            or not isinstance(state.get("step"), int) or not isinstance(state.get("elapsed_s"), (int, float))
            or not isinstance(state.get("history"), list)):
        raise UserError(f"{path}: not a Kaizen training checkpoint; {_CHECKPOINT_FIX}")
    return payload


def write_model(out_dir: Path, model: VQVAE, params: TrainParams, state: dict[str, Any], scores: dict[str, float],
                train_images: list[TrainImage], val_images: list[TrainImage], data_info: dict[str, Any]) -> None:
    """Write card.json + weights.pt (via app.core.modelcard) describing data, recipe, time and validation."""
    from app.pipelines.kaizen.model import save_kaizen_model

    training = {
        "images": len(train_images),
        "objects": int(sum(len(i.object_pixels) for i in train_images)),
        "validation_images": len(val_images),
        "recipe": params.to_dict(),
        "steps": state["step"],
        "seconds": round(state["elapsed_s"], 1),
        "cpu_seconds": round(state.get("cpu_s", 0.0), 1),
        "torch_threads": torch.get_num_threads(),
        "device": str(resolve_device(params.device)),
        "history": state["history"],
        **data_info,
    }
    save_kaizen_model(out_dir, model, params, training, {"validation_patches": scores})
