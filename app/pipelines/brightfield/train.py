"""Train the brightfield U-Net on z-planes with nuclei labels derived from fluorescence.

Each field is normalised per plane (percentiles), resized to the model scale, and its bottom strip
(``val_fraction``) is held back for validation, so early stopping never looks at a test field.
Training draws random crops from the rest with flips, 90-degree rotations, zoom, contrast jitter,
defocus-like blur and noise; the loss is BCE + soft Dice on the nucleus channel (+ BCE on the
optional boundary channel); AdamW with a one-cycle learning rate.  What is validated, checkpointed
and returned is an exponential moving average of the weights.  On sephaCe (one training field)
the average and the one-cycle schedule together turned a validation curve that jumped 2x between
epochs into a smooth one and lifted held-out object F1 from 0.14 to 0.70 in the harder direction
(set2 -> set1).  :func:`train` is a job: a generator yielding Progress and returning a
:class:`TrainResult`; closing it stops training and leaves the best weights so far in the
checkpoint file (when an output folder was given).
"""

from __future__ import annotations

import copy
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from skimage import segmentation
from torch.nn import functional as F

from app.core.device import pick_device, use_threads
from app.core.errors import ImageError, UserError
from app.core.jobs import Job, Progress
from app.pipelines.brightfield.params import SegmentParams, TrainParams, to_dict
from app.pipelines.brightfield.stack import PlaneStack, normalise, plane_spec
from app.pipelines.brightfield.unet import UNet, UNetConfig, count_parameters, pad_to_multiple

CHECKPOINT_FILE = "checkpoint.pt"
MODEL_ARCHITECTURE = "unet"
SUPPORTED_DEVICES = ("cpu", "cuda", "mps")  # devices a brightfield job can run on


@dataclass
class TrainingField:
    """One field to learn from: its brightfield planes and its nuclei label image (same H, W)."""

    stack: PlaneStack
    labels: np.ndarray
    name: str = ""


@dataclass
class TrainResult:
    """The trained network (best validation epoch, eval mode, on CPU) and how it got there."""

    model: UNet
    params: TrainParams
    plane_spec: dict
    history: list[dict] = field(default_factory=list)
    best_epoch: int = 0
    seconds: float = 0.0
    stopped: str = ""
    fields: list[str] = field(default_factory=list)

    @property
    def config(self) -> UNetConfig:
        """The U-Net architecture."""
        return self.model.config


def choose_device(device: str = "auto") -> torch.device:
    """The torch device of a brightfield job (the rule of :func:`app.core.device.pick_device`)."""
    return pick_device(device, SUPPORTED_DEVICES, "the brightfield pipeline")


def default_threads() -> int:
    """Half the CPU cores, 1 to 4: leaves a core for the GUI and other work.

    On this project's shared 2-core machine 2 threads were 2-4x *slower* than 1 under load
    (oversubscribed OpenMP threads wait on each other); bench/brightfield.py measures both.
    """
    return max(1, min(4, (os.cpu_count() or 2) // 2))


def set_threads(threads: int | None) -> None:
    """Set torch's CPU threads (default: :func:`default_threads`)."""
    use_threads(threads or default_threads())


def model_size(shape: tuple[int, int], scale: float) -> tuple[int, int]:
    """(H, W) of a field at model scale."""
    return max(1, round(shape[0] * scale)), max(1, round(shape[1] * scale))


def resize(array: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Area-average down (or bilinear up) a (N, C, H, W) tensor to ``size``."""
    if tuple(array.shape[-2:]) == tuple(size):
        return array
    if size[0] <= array.shape[-2] and size[1] <= array.shape[-1]:
        return F.interpolate(array, size=size, mode="area")
    return F.interpolate(array, size=size, mode="bilinear", align_corners=False)


def prepare_input(planes: np.ndarray, params: TrainParams) -> torch.Tensor:
    """Normalised planes at model scale, as a (1, Z, h, w) float tensor."""
    data = torch.from_numpy(normalise(planes, params.low_percentile, params.high_percentile))[None]
    return resize(data, model_size(planes.shape[-2:], params.scale))


def prepare_targets(labels: np.ndarray, scale: float, boundary: bool) -> torch.Tensor:
    """Soft targets at model scale: nucleus fraction per pixel, and optionally a boundary band."""
    size = model_size(labels.shape, scale)
    channels = [labels > 0]
    if boundary:
        band = segmentation.find_boundaries(labels, mode="inner")
        width = max(1, round(1 / scale))
        if width > 1:
            from scipy import ndimage as ndi

            band = ndi.binary_dilation(band, iterations=width - 1) & (labels > 0)
        channels.append(band)
    target = torch.from_numpy(np.stack(channels).astype(np.float32))[None]
    target = resize(target, size)
    if boundary:
        target[:, 1] = (target[:, 1] > 0.25).float()
    return target


def augment(x: torch.Tensor, y: torch.Tensor, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Random dihedral transform, per-plane contrast and offset, defocus-like blur and noise, per sample.

    Contrast is jittered around each crop plane's mean (x0.7-1.4), because fields of one culture
    differ in contrast more than flips and rotations can teach (set1 vs set2 of sephaCe).
    """
    from torchvision.transforms.functional import gaussian_blur

    xs, ys = [], []
    for xi, yi in zip(x, y):
        k = int(rng.integers(4))
        xi, yi = torch.rot90(xi, k, (1, 2)), torch.rot90(yi, k, (1, 2))
        if rng.random() < 0.5:
            xi, yi = xi.flip(2), yi.flip(2)
        n = xi.shape[0]
        contrast = torch.from_numpy(np.exp(rng.uniform(np.log(0.7), np.log(1.4), (n, 1, 1))).astype(np.float32))
        offset = torch.from_numpy(rng.uniform(-0.15, 0.15, (n, 1, 1)).astype(np.float32))
        mean = xi.mean(dim=(1, 2), keepdim=True)
        xi = (xi - mean) * contrast + mean + offset
        if rng.random() < 0.3:
            sigma = float(rng.uniform(0.3, 1.5))
            xi = gaussian_blur(xi[None], [5, 5], [sigma, sigma])[0]
        if rng.random() < 0.5:
            xi = xi + float(rng.uniform(0, 0.04)) * torch.randn(xi.shape)
        xs.append(xi)
        ys.append(yi)
    return torch.stack(xs), torch.stack(ys)


def loss_fn(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """BCE + soft Dice on the nucleus channel; BCE (boundary pixels weighted x5) on a boundary channel."""
    nucleus = logits[:, :1]
    t = target[:, :1]
    bce = F.binary_cross_entropy_with_logits(nucleus, t)
    p = torch.sigmoid(nucleus)
    dice = 1 - (2 * (p * t).sum() + 1) / (p.sum() + t.sum() + 1)
    loss = bce + dice
    if logits.shape[1] > 1:
        weight = 1 + 4 * target[:, 1:2]
        loss = loss + F.binary_cross_entropy_with_logits(logits[:, 1:2], target[:, 1:2], weight=weight)
    return loss


@dataclass
class _Prepared:
    """A field at model scale, split into a training region and a validation strip."""

    x: torch.Tensor  # (Z, h, w)
    y: torch.Tensor  # (C, h, w)
    train_rows: int  # rows [0, train_rows) for training; the rest validate


def _prepare_fields(fields: Sequence[TrainingField], params: TrainParams) -> tuple[list[_Prepared], dict]:
    """Select planes, check shapes, normalise and resize every field; returns them and the plane spec."""
    if not fields:
        raise UserError("no training fields given")
    if not any(np.any(np.asarray(f.labels)) for f in fields):  # else a "perfect" val Dice of 1 on nothing
        names = ", ".join(f.name or str(f.stack.source) for f in fields)
        raise UserError(f"the labels of {names} hold no nuclei (all 0); give label images with the nuclei marked, "
                        "or derive them from a fluorescence image that shows nuclei")
    prepared, spec, n_planes = [], None, None
    for f in fields:
        stack = f.stack.select(params.planes)
        if f.labels.shape != stack.shape:
            raise ImageError(
                f"{f.name or stack.source}: labels are {f.labels.shape[1]} x {f.labels.shape[0]} px but the planes are "
                f"{stack.shape[1]} x {stack.shape[0]} px; derive the labels from this field's fluorescence image"
            )
        if n_planes is not None and stack.n_planes != n_planes:
            raise ImageError(f"{f.name or stack.source}: {stack.n_planes} planes, the first field has {n_planes}")
        n_planes = stack.n_planes
        spec = spec or plane_spec(f.stack, params.planes)
        x = prepare_input(stack.data, params)[0]
        y = prepare_targets(np.asarray(f.labels), params.scale, params.boundary)[0]
        h = x.shape[-2]
        train_rows = h - int(round(h * params.val_fraction)) if params.val_fraction > 0 else h
        if train_rows < min(params.crop, h) // 2:
            raise UserError(f"{f.name or stack.source}: field too small for {params.crop} px crops with validation")
        prepared.append(_Prepared(x, y, train_rows))
    _check_nuclei_in_both_parts(prepared, params.val_fraction)
    return prepared, spec or {}


def _check_nuclei_in_both_parts(prepared: Sequence[_Prepared], val_fraction: float) -> None:
    """Refuse fields whose training rows, or whose validation strips, hold no nuclei at all.

    Without nuclei to learn from the model learns nothing; without nuclei to validate on the
    validation Dice is 1.000 for a model that finds nothing, and the best epoch is chosen on noise.
    """
    if not any(bool((p.y[0, :p.train_rows] > 0.5).any()) for p in prepared):
        raise UserError("the training part of the fields (all but the bottom strip) holds no nuclei; "
                        "give labels with the nuclei marked")
    strips = [p for p in prepared if p.train_rows < p.y.shape[-2]]
    if strips and not any(bool((p.y[0, p.train_rows:] > 0.5).any()) for p in strips):
        raise UserError(f"the validation strips (bottom {val_fraction:.0%} of each field) hold no nuclei, so the "
                        "validation score would mean nothing; change --val-fraction or add a field with nuclei there")


def _crop_positions(
    fields: list[_Prepared], crop: int, n: int, rng: np.random.Generator, zoom: tuple[float, float] = (1.0, 1.0)
) -> list[tuple[int, int, int, int]]:
    """``n`` random (field, y0, x0, side) windows inside the training regions; ``side`` = crop / zoom."""
    out = []
    for _ in range(n):
        i = int(rng.integers(len(fields)))
        f = fields[i]
        side = max(8, round(crop / float(np.exp(rng.uniform(np.log(zoom[0]), np.log(zoom[1]))))))
        h, w = f.train_rows, f.x.shape[-1]
        out.append((i, int(rng.integers(max(1, h - side + 1))), int(rng.integers(max(1, w - side + 1))), side))
    return out


def _cut(f: _Prepared, y0: int, x0: int, side: int, crop: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One window resized to ``crop`` (scale augmentation), padded by replication at the region's edge."""
    x = f.x[:, y0 : min(y0 + side, f.train_rows), x0 : x0 + side]
    y = f.y[:, y0 : min(y0 + side, f.train_rows), x0 : x0 + side]
    ph, pw = side - x.shape[-2], side - x.shape[-1]
    if ph or pw:
        x = F.pad(x[None], (0, pw, 0, ph), mode="replicate")[0]
        y = F.pad(y[None], (0, pw, 0, ph), mode="replicate")[0]
    if side != crop:
        x = F.interpolate(x[None], size=(crop, crop), mode="bilinear", align_corners=False)[0]
        y = F.interpolate(y[None], size=(crop, crop), mode="bilinear", align_corners=False)[0]
    return x, y


def _jitter_zoom(
    pick: tuple[int, int, int, int], crop: int, zoom: tuple[float, float], rng: np.random.Generator
) -> tuple[int, int, int, int]:
    """A fixed crop (data-size experiments) seen at a random zoom around its centre."""
    i, y0, x0, side = pick
    new = max(8, round(crop / float(np.exp(rng.uniform(np.log(zoom[0]), np.log(zoom[1]))))))
    shift = (side - new) // 2
    return i, max(0, y0 + shift), max(0, x0 + shift), new


def _validate(model: UNet, fields: list[_Prepared], device: torch.device) -> dict[str, float]:
    """Loss and Dice (at 0.5) on the validation strips of all fields."""
    model.eval()
    losses, inter, total = [], 0.0, 0.0
    with torch.inference_mode():
        for f in fields:
            if f.train_rows >= f.x.shape[-2]:
                continue
            x, (h, w) = pad_to_multiple(f.x[None, :, f.train_rows :], model.multiple)
            y = f.y[None, :, f.train_rows :]
            logits = model(x.to(device))[..., :h, :w].cpu()
            losses.append(float(loss_fn(logits, y)))
            pred = (logits[:, 0] > 0).float()
            truth = (y[:, 0] > 0.5).float()
            inter += float((pred * truth).sum())
            total += float(pred.sum() + truth.sum())
    model.train()
    if not losses:
        return {"val_loss": math.nan, "val_dice": math.nan}
    return {"val_loss": float(np.mean(losses)), "val_dice": 2 * inter / total if total else 1.0}


def train(
    fields: Sequence[TrainingField], params: TrainParams | None = None, checkpoint_dir: Path | None = None
) -> Job[TrainResult]:
    """Train a U-Net on ``fields``; yields Progress, returns a :class:`TrainResult` (see module doc)."""
    params = params or TrainParams()
    set_threads(params.threads)
    device = choose_device(params.device)
    torch.manual_seed(params.seed)
    rng = np.random.default_rng(params.seed)
    yield Progress("prepare", 0, len(fields), "normalising planes and labels")
    prepared, spec = _prepare_fields(fields, params)
    n_out = 2 if params.boundary else 1
    config = UNetConfig(in_channels=prepared[0].x.shape[0], out_channels=n_out, width=params.width, depth=params.depth)
    model = UNet(config).to(device)
    optimiser = torch.optim.AdamW(model.parameters(), lr=params.lr, weight_decay=params.weight_decay)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimiser, max_lr=params.lr, total_steps=params.epochs * params.steps_per_epoch, pct_start=0.1)
    # validated and kept: an exponential moving average of the weights (and BN statistics), far
    # less jumpy from epoch to epoch than the raw weights on one small validation strip
    ema = torch.optim.swa_utils.AveragedModel(
        model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(params.ema_decay), use_buffers=True)
    zoom = (params.zoom_min, params.zoom_max) if params.augment else (1.0, 1.0)
    fixed = _crop_positions(prepared, params.crop, params.max_crops, rng) if params.max_crops else None
    history: list[dict] = []
    best_state, best_loss, best_epoch, stale = None, math.inf, 0, 0
    start = time.monotonic()
    total_steps = params.epochs * params.steps_per_epoch
    stopped = "max epochs"
    yield Progress("train", 0, total_steps, f"U-Net {count_parameters(model):,} parameters on {device}")
    for epoch in range(1, params.epochs + 1):
        model.train()
        losses = []
        for step in range(params.steps_per_epoch):
            if fixed is not None:
                picks = [_jitter_zoom(fixed[int(i)], params.crop, zoom, rng)
                         for i in rng.integers(len(fixed), size=params.batch_size)]
            else:
                picks = _crop_positions(prepared, params.crop, params.batch_size, rng, zoom)
            pairs = [_cut(prepared[i], y0, x0, side, params.crop) for i, y0, x0, side in picks]
            x, y = torch.stack([p[0] for p in pairs]), torch.stack([p[1] for p in pairs])
            if params.augment:
                x, y = augment(x, y, rng)
            loss = loss_fn(model(x.to(device)), y.to(device))
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            scheduler.step()
            ema.update_parameters(model)
            losses.append(loss.item())
            done = (epoch - 1) * params.steps_per_epoch + step + 1
            yield Progress("train", done, total_steps, f"epoch {epoch} loss {np.mean(losses):.3f}")
            if params.time_budget_s is not None and time.monotonic() - start > params.time_budget_s:
                stopped = "time budget"
                break
        scores = _validate(ema.module, prepared, device)
        record = {"epoch": epoch, "train_loss": float(np.mean(losses)), **scores,
                  "seconds": round(time.monotonic() - start, 1)}
        history.append(record)
        monitor = scores["val_loss"] if not math.isnan(scores["val_loss"]) else record["train_loss"]
        if monitor < best_loss:
            best_loss, best_epoch, stale = monitor, epoch, 0
            best_state = copy.deepcopy(ema.module.state_dict())
            if checkpoint_dir is not None:
                _save_checkpoint(checkpoint_dir, best_state, config, params, epoch)
        else:
            stale += 1
        yield Progress("validate", epoch, params.epochs,
                       f"epoch {epoch}: train {record['train_loss']:.3f} val {scores['val_loss']:.3f} "
                       f"dice {scores['val_dice']:.3f}", data=record)
        if stopped == "time budget":
            break
        if stale >= params.patience:
            stopped = "early stopping"
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    model = model.cpu().eval()
    return TrainResult(
        model=model, params=params, plane_spec=spec, history=history, best_epoch=best_epoch,
        seconds=round(time.monotonic() - start, 1), stopped=stopped,
        fields=[f.name or f.stack.source for f in fields],
    )


def _save_checkpoint(folder: Path, state: dict, config: UNetConfig, params: TrainParams, epoch: int) -> None:
    """Best weights so far, written atomically, so a cancelled or crashed run keeps them."""
    from app.core.atomic import atomic_path

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with atomic_path(folder / CHECKPOINT_FILE) as tmp:
        torch.save({"state_dict": state, "unet": config.to_dict(), "params": to_dict(params), "epoch": epoch}, tmp)


def save_trained(
    result: TrainResult,
    folder: Path,
    name: str,
    metrics: dict[str, Any] | None = None,
    segment: SegmentParams | None = None,
    data: str = "",
    half: bool = True,
) -> Any:
    """Write the model folder (card.json + weights.pt) for a trained network; returns the written card.

    The card records the planes (indices, z offsets), the model scale, normalisation, the U-Net
    architecture, the training recipe and history, and the segmentation defaults.
    """
    from app.core.modelcard import ModelCard, save_model

    spec = result.plane_spec
    offsets = spec.get("z_offsets_um")
    card = ModelCard(
        name=name,
        pipeline="brightfield",
        architecture=MODEL_ARCHITECTURE,
        classes=["nucleus"],
        input_channels=result.config.in_channels,
        channel_meaning=list(offsets) if offsets else [f"plane {i}" for i in spec.get("indices", [])],
        normalisation={"method": "per-plane percentiles", "low_percentile": result.params.low_percentile,
                       "high_percentile": result.params.high_percentile, "scale": result.params.scale},
        training={"data": data or ", ".join(result.fields), "params": to_dict(result.params),
                  "best_epoch": result.best_epoch, "epochs": len(result.history), "stopped": result.stopped,
                  "seconds": result.seconds, "history": result.history},
        metrics=metrics or {},
        extra={"unet": result.config.to_dict(), "scale": result.params.scale, "planes": spec,
               "segment": to_dict(segment or SegmentParams())},
    )
    written = save_model(folder, card, result.model.state_dict(), half=half)
    checkpoint = Path(folder) / CHECKPOINT_FILE
    if checkpoint.exists():
        checkpoint.unlink()
    return written


def load_training_field(
    planes: Path | Sequence[Path],
    labels: Path | None = None,
    label_params: Any = None,
    name: str | None = None,
) -> tuple[TrainingField, Any]:
    """A field ready for training: its planes and a label image, or labels derived from its fluorescence.

    ``planes`` is a field folder, plane files or a stack file.  Without ``labels`` the field folder
    must hold a fluorescence image (fl.tif, *dapi*, ...): labels are derived from it and registered
    onto the planes.  Returns the field and the :class:`DerivedLabels` (None when a label file was given).
    """
    from app.pipelines.brightfield.labels import derive_labels
    from app.pipelines.brightfield.stack import field_files, load_stack, read_gray

    paths = [Path(planes)] if isinstance(planes, (str, Path)) else [Path(p) for p in planes]
    stack = load_stack(paths)
    label_name = name or (paths[0].name if paths[0].is_dir() else paths[0].parent.name)
    if labels is not None:
        label_image = read_gray(Path(labels))
        if label_image.ndim != 2:
            raise ImageError(f"{labels}: a label image must be 2-D, this one has shape {label_image.shape}")
        return TrainingField(stack, label_image.astype(np.int32), label_name), None
    fluo = field_files(paths[0])[1] if paths[0].is_dir() else None
    if fluo is None:
        raise UserError(
            f"{paths[0]}: no label image given and no fluorescence image (fl.tif, *dapi*, *hoechst*) in the field "
            "folder; run `stagescope brightfield derive-labels` and pass the labels"
        )
    derived = derive_labels(read_gray(fluo), label_params, stack.data)
    return TrainingField(stack, derived.labels, label_name), derived
