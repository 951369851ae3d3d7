"""Training the tubule (Mask R-CNN) and cell (Faster R-CNN) models, as a cancellable job.

A run starts from random weights, fine-tunes an existing model (``init_from``: the demo model or
the lab's last one) or starts from torchvision's ImageNet / COCO weights (``pretrained``); see
:mod:`.start`, and the card records which.  Each epoch draws ``crops_per_epoch`` random,
class-balanced, augmented crops (:mod:`.dataset`), trains with AdamW and a cosine schedule
(over the steps, or over ``time_limit_s`` when that ends first, so a time-boxed run still anneals),
then validates on fixed crops of held-out sections with the paper's metrics (tubules: pixel
accuracy, mean accuracy, mIoU, fw-IoU of the crop's stage map; cells: box AP50/AP75 and mean
precision/sensitivity at IoU 0.5).  ``checkpoint.pt`` is written after every epoch (resume with
``resume=True``); the best epoch's weights become the model folder's ``weights.pt`` + ``card.json``.
A run stopped by ``time_limit_s`` saves the best epoch; a cancelled run (GUI cancel, Ctrl-C) keeps
``checkpoint.pt`` to resume from.
"""

from __future__ import annotations

import dataclasses
import io
import math
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from app.core.atomic import atomic_path
from app.core.device import use_threads
from app.core.errors import ModelError, UserError
from app.core.jobs import Job, Progress
from app.core.metrics import box_ap, confusion_matrix, detection_scores, semantic_scores
from app.core.modelcard import ModelCard, save_model
from app.pipelines.stagetool.dataset import (
    Crop, CropSampler, check_training_sections, class_names, load_sections, split_sections,
)
from app.pipelines.stagetool.models import ModelConfig, build_model, count_parameters, default_config, pick_device
from app.pipelines.stagetool.params import TrainParams
from app.pipelines.stagetool.start import (
    Start, ensure_pretrained, fine_tune_config, from_model, pretrained_file, source_card, start_network,
)

CHECKPOINT_FILE = "checkpoint.pt"
PRETRAINING_NOTE = ("random weights: every layer was trained from scratch on these annotations "
                    "(the paper's tubule model started from ImageNet weights)")
SYNTHETIC_NOTE = "synthetic training data: for trying the software, not for real sections"


# ------------------------------------------------------------------------------------ metrics


@torch.no_grad()
def predict_crops(net: torch.nn.Module, crops: Sequence[Crop], device: torch.device, batch: int = 2) -> list[dict]:
    """Network outputs (numpy, labels 0-based) for validation crops."""
    net.eval()
    outputs = []
    for start in range(0, len(crops), batch):
        images = [torch.from_numpy(c.image)[None].to(device) for c in crops[start:start + batch]]
        for out in net(images):
            item = {"boxes": out["boxes"].cpu().numpy(), "labels": out["labels"].cpu().numpy() - 1,
                    "scores": out["scores"].cpu().numpy()}
            if "masks" in out:
                item["masks"] = (out["masks"][:, 0] > 0.5).cpu().numpy()
            outputs.append(item)
    return outputs


def stage_map(masks: np.ndarray, labels: np.ndarray, scores: np.ndarray | None, shape: tuple[int, int]) -> np.ndarray:
    """Semantic map (0 = background, stage index + 1) from instance masks; higher scores painted last."""
    out = np.zeros(shape, np.int64)
    order = np.argsort(scores) if scores is not None else np.arange(len(labels))
    for i in order:
        out[masks[i]] = int(labels[i]) + 1
    return out


def tubule_metrics(crops: Sequence[Crop], outputs: Sequence[dict], score: float = 0.3) -> dict[str, Any]:
    """Pixel accuracy, mean accuracy, mIoU and fw-IoU over background + the 5 stages (paper table 2)."""
    n = len(class_names("tubules")) + 1
    confusion = np.zeros((n, n), np.int64)
    for crop, out in zip(crops, outputs):
        truth = stage_map(crop.masks, crop.labels - 1, None, crop.image.shape)
        keep = out["scores"] >= score
        pred = stage_map(out["masks"][keep], out["labels"][keep], out["scores"][keep], crop.image.shape)
        confusion += confusion_matrix(truth, pred, n)
    scores = semantic_scores(confusion)
    return {k: float(scores[k]) for k in ("pixel_accuracy", "mean_accuracy", "mean_iou", "fw_iou")}


def cell_metrics(crops: Sequence[Crop], outputs: Sequence[dict], score: float = 0.5) -> dict[str, Any]:
    """Box AP50/AP75 (%) and mean precision/sensitivity/F1 at IoU 0.5 (paper table 3)."""
    truth = [{"boxes": c.boxes, "labels": c.labels - 1} for c in crops]
    preds = [{"boxes": o["boxes"], "labels": o["labels"], "scores": o["scores"]} for o in outputs]
    n = len(class_names("cells"))
    det = detection_scores(truth, preds, n, iou=0.5, score_threshold=score)
    return {"AP50": 100 * box_ap(truth, preds, 0.5, None), "AP75": 100 * box_ap(truth, preds, 0.75, None),
            "mean_precision": det["mean_precision"], "mean_sensitivity": det["mean_sensitivity"],
            "mean_f1": det["mean_f1"]}


def validation_score(kind: str, metrics: dict[str, Any]) -> float:
    """The number that picks the best epoch: tubules mIoU, cells mean F1 at IoU 0.5 (NaN counts as 0).

    A small share of a second metric (tubules mean accuracy, cells AP50) breaks ties, so an early
    network that finds nothing above the score threshold is not kept over a later one that nearly does.
    """
    def value(key: str) -> float:
        number = metrics.get(key)
        return 0.0 if number is None or not math.isfinite(number) else float(number)

    if kind == "tubules":
        return value("mean_iou") + 1e-3 * value("mean_accuracy")
    return value("mean_f1") + 1e-5 * value("AP50")


# ------------------------------------------------------------------------------------ training


def _checkpoint(path: Path, state: dict[str, Any]) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def _load_checkpoint(path: Path) -> dict[str, Any]:
    try:
        return torch.load(io.BytesIO(path.read_bytes()), map_location="cpu", weights_only=True)
    except Exception as error:  # torch's messages run over many lines: the first says what went wrong
        first = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
        raise ModelError(f"{path}: cannot resume from this checkpoint ({first}); delete it to start afresh") from error


def learning_progress(step: int, total_steps: int, elapsed: float, time_limit: float) -> float:
    """How far training is, 0..1: by steps, or by time when a time limit is nearer (the cosine follows it)."""
    progress = step / max(total_steps, 1)
    if time_limit:
        progress = max(progress, elapsed / time_limit)
    return min(1.0, progress)


def lr_factor(step: int, warmup: int, progress: float) -> float:
    """Learning-rate multiplier: linear warmup, then cosine decay over ``progress`` (0..1).

    The warmup ends after ``warmup`` steps or at 10% of the run, whichever comes first, so a short
    time-limited run (a fine-tuning of a few minutes: far fewer steps than planned) still trains at full rate.
    """
    warm = min(1.0, max((step + 1) / max(warmup, 1), progress / 0.1))
    return warm * 0.5 * (1 + math.cos(math.pi * progress))


def _clean(value: Any) -> float | None:
    """A metric for JSON: rounded, NaN (undefined, e.g. nothing predicted) as None."""
    value = float(value)
    return round(value, 4) if math.isfinite(value) else None


def make_card(name: str, kind: str, config: ModelConfig, params: TrainParams, data: dict[str, Any],
              metrics: dict[str, Any], history: list[dict], pixel_size_um: float | None) -> Any:
    """The model card: architecture, classes, input, normalisation, training data and recipe, metrics."""
    architecture = "Mask R-CNN (torchvision)" if kind == "tubules" else "Faster R-CNN (torchvision)"
    return ModelCard(
        name=name, pipeline=f"stagetool-{kind}", architecture=architecture, backbone=f"{config.backbone} FPN",
        classes=list(class_names(kind)), input_channels=1, channel_meaning=["DAPI"],
        pixel_size_um=pixel_size_um,
        normalisation={"method": "section intensity range: 1st-99.9th percentile of a 4x block-mean overview "
                                 "mapped to [0, 1] (clipped at 1.5), then (x - 0.5) / 0.25 inside the network",
                       "downsample": config.downsample, "tile_size": config.tile_size},
        training={"data": data.get("description"), "sections": data.get("sections"),
                  "class_counts": data.get("class_counts"), "recipe": params.to_dict(),
                  "start": (data.get("start") or {}).get("record", {"kind": "random"}),
                  "pretraining": (data.get("start") or {}).get("note") or PRETRAINING_NOTE,
                  "epochs_done": len(history), "history": history,
                  "parameters": data.get("n_parameters"), "seconds": data.get("seconds"), "steps": data.get("steps")},
        metrics={"val": {"data": data.get("val_description"), **metrics}},
        extra={"model": config.to_dict(), "synthetic": data.get("synthetic", False),
               **(data.get("start") or {}).get("carry", {}),
               **({"note": SYNTHETIC_NOTE} if data.get("synthetic") else {})},
    )


def batches(sampler: CropSampler, rng: np.random.Generator, batch_size: int, threads: int = 0) -> Iterator[list[Crop]]:
    """Endless training batches; with ``threads`` > 0 the next batches are prepared in background threads.

    Each crop draws from its own generator seeded by ``rng``, so the crops are the same whatever
    the number of threads (numpy and scipy release the GIL for most of the work).
    """
    def one_batch(seeds: np.ndarray) -> list[Crop]:
        return [sampler.sample(np.random.default_rng(int(seed))) for seed in seeds]

    if threads <= 0:
        while True:
            yield one_batch(rng.integers(0, 2 ** 63 - 1, batch_size))
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(threads) as pool:
        ahead = [pool.submit(one_batch, rng.integers(0, 2 ** 63 - 1, batch_size)) for _ in range(2 * threads)]
        while True:
            batch = ahead.pop(0).result()
            ahead.append(pool.submit(one_batch, rng.integers(0, 2 ** 63 - 1, batch_size)))
            yield batch


def init_backbone(net: torch.nn.Module, folder: str | Path) -> str:
    """Start ``net``'s backbone (body + FPN) from another Stagetool model's; returns a note for the card."""
    return from_model(net, "", source_card(folder), backbone_only=True).note


def model_pixel_size(source: Any, sections: Sequence[Any]) -> float | None:
    """The pixel size a new model works at: its source model's when fine-tuning, else the first section's.

    Sections at other known pixel sizes are resampled to it while training (CropSampler), so a model
    fine-tuned on a lab's 0.65 um sections keeps the scale its source learned.
    """
    if source is not None and getattr(source, "pixel_size_um", None):
        return float(source.pixel_size_um)
    return next((float(s.pixel_size_um) for s in sections if getattr(s, "pixel_size_um", None)), None)


def train(annotations: Sequence[str | Path], out: str | Path, params: TrainParams | None = None,
          name: str | None = None, resume: bool = False, sections: Sequence[Any] | None = None,
          data_description: str | None = None, synthetic: bool | None = None,
          val_sections: Sequence[Any] | None = None, confirm_download: Callable[[str], bool] | None = None,
          ) -> Job[Any]:
    """Train a model of ``params.kind`` and write it to ``out``; returns the written ModelCard.

    ``annotations`` are COCO/GeoJSON files or phantom folders; ``sections`` (already loaded
    :class:`~app.pipelines.stagetool.dataset.Section` objects) may be given instead, and
    ``val_sections`` then fixes the validation sections (else ``val_fraction`` of them are held out).
    ``confirm_download(question)`` is asked before published weights are downloaded (None: never download).
    """
    params = params or TrainParams()
    params.validate()
    out = Path(out)
    kind = params.kind
    rng = np.random.default_rng(params.seed)
    torch.manual_seed(params.seed)
    use_threads(params.threads)
    device = pick_device(params.device)
    source = source_card(params.init_from) if params.init_from else None
    config = fine_tune_config(source, params) if source is not None else None
    if config is not None:  # fine-tuning keeps the source's network: its backbone and scale
        params.backbone, params.downsample = config.backbone, config.downsample
    elif params.pretrained and not resume:  # asked (and fetched) before minutes of reading data
        ensure_pretrained(pretrained_file(params.pretrained, params.backbone, kind), confirm_download)
    yield Progress("data", 0, 1, "reading annotations")
    all_sections = list(sections) if sections is not None else load_sections(annotations, kind)
    if val_sections is not None:
        train_sections, val_sections = all_sections, list(val_sections)
        all_sections = train_sections + val_sections
    else:
        train_sections, val_sections = split_sections(all_sections, params.val_fraction, params.seed)
    check_training_sections(train_sections, kind)
    val_note = "held-out sections"
    if not val_sections:
        val_sections, val_note = train_sections, "the training sections (only one section was given)"
    pixel = model_pixel_size(source, all_sections)
    sampler = CropSampler(train_sections, kind, params.crop_size, params.downsample, params.class_balanced,
                          params.augment, pixel_size_um=pixel)
    val_sampler = CropSampler(val_sections, kind, params.crop_size, params.downsample, False, False,
                              pixel_size_um=pixel)
    val_rng = np.random.default_rng(params.seed + 1)
    val_crops = [val_sampler.crop(*val_sampler.random_window(val_rng)) for _ in range(params.val_crops)]
    yield Progress("data", 1, 1, f"{len(train_sections)} training, {len(val_sections)} validation sections; "
                                 f"objects per class {sampler.class_counts}")

    config = config or default_config(kind, params.backbone, tile_size=params.crop_size, downsample=params.downsample)
    net = build_model(config)
    start = None if resume else start_network(net, params, source, confirm_download)
    net = net.to(device)
    optimizer = torch.optim.AdamW(net.parameters(), lr=params.lr, weight_decay=params.weight_decay)
    steps_per_epoch = max(1, params.crops_per_epoch // params.batch_size)
    total_steps = steps_per_epoch * params.epochs
    warmup = min(200, total_steps // 10 + 1)
    start_epoch, best, best_state, history, elapsed, step_count = 0, -1.0, None, [], 0.0, 0
    checkpoint = out / CHECKPOINT_FILE
    if resume:
        if not checkpoint.exists():
            raise UserError(f"{out}: no checkpoint to resume from ({CHECKPOINT_FILE})")
        state = _load_checkpoint(checkpoint)
        if state.get("config") != config.to_dict():
            raise UserError(f"{checkpoint}: the checkpoint was trained with other settings "
                            f"({state.get('config', {}).get('backbone')}); start a new folder or match them")
        net.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start_epoch, best, history = state["epoch"], state["best"], state["history"]
        step_count = state.get("steps", start_epoch * steps_per_epoch)
        best_state, elapsed = state.get("best_model"), state.get("elapsed", 0.0)
        start = state.get("start") and Start(**state["start"])
        rng = np.random.default_rng([params.seed, start_epoch])
    started = time.monotonic() - elapsed
    out.mkdir(parents=True, exist_ok=True)
    stopped_early = False
    feed = batches(sampler, rng, params.batch_size, params.loader_threads)
    for epoch in range(start_epoch, params.epochs):
        net.train()
        losses = []
        for step in range(steps_per_epoch):
            crops = next(feed)
            images = [torch.from_numpy(c.image)[None].to(device) for c in crops]
            targets = [{k: v.to(device) for k, v in c.target().items()} for c in crops]
            loss_parts = net(images, targets)
            loss = sum(loss_parts.values())
            if not torch.isfinite(loss):
                raise ModelError(f"training diverged at epoch {epoch + 1} (loss {loss.item()}); lower --lr")
            progress = learning_progress(step_count, total_steps, time.monotonic() - started, params.time_limit_s)
            for group in optimizer.param_groups:
                group["lr"] = params.lr * lr_factor(step_count, warmup, progress)
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 10.0)
            optimizer.step()
            step_count += 1
            losses.append(float(loss.item()))
            yield Progress("train", epoch * steps_per_epoch + step + 1, total_steps,
                           f"epoch {epoch + 1}/{params.epochs} loss {np.mean(losses[-20:]):.3f}")
            if progress >= 1.0:
                stopped_early = True
                break
        outputs = predict_crops(net, val_crops, device)
        metrics = tubule_metrics(val_crops, outputs) if kind == "tubules" else cell_metrics(val_crops, outputs)
        score = validation_score(kind, metrics)
        history.append({"epoch": epoch + 1, "loss": _clean(np.mean(losses)) if losses else None,
                        **{k: _clean(v) for k, v in metrics.items()}})
        if score >= best:  # ties go to the later (further annealed) epoch
            best = score
            best_state = {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
            best_metrics = metrics
        _checkpoint(checkpoint, {"model": net.state_dict(), "optimizer": optimizer.state_dict(),
                                 "steps": step_count, "epoch": epoch + 1, "best": best,
                                 "history": history, "best_model": best_state, "config": config.to_dict(),
                                 "start": start and dataclasses.asdict(start),
                                 "elapsed": time.monotonic() - started})
        yield Progress("validate", epoch + 1, params.epochs,
                       " ".join(f"{k} {v:.3f}" for k, v in metrics.items()) + f" (best {best:.3f})")
        if stopped_early:
            break
    feed.close()
    if best_state is None:
        raise UserError(f"{out}: no epoch finished; nothing to save")
    if "best_metrics" not in locals():
        best_metrics = {k: v for k, v in history[int(np.argmax([validation_score(kind, h) for h in history]))].items()
                        if k not in ("epoch", "loss")}
    is_synthetic = bool(synthetic) if synthetic is not None else any(getattr(s, "synthetic", False) for s in all_sections)
    description = data_description or ", ".join(str(a) for a in annotations)
    if is_synthetic and data_description is None:
        description = f"{len(all_sections)} synthetic phantom testis sections ({description})"
    data = {"description": description,
            "sections": [s.name for s in all_sections], "class_counts": sampler.class_counts,
            "n_parameters": count_parameters(net), "seconds": round(time.monotonic() - started, 1), "steps": step_count,
            "val_description": f"{len(val_crops)} random {params.crop_size} px crops of {val_note}"
                               + (" (synthetic phantoms, easier than tissue)" if is_synthetic else ""),
            "synthetic": is_synthetic, "start": start and dataclasses.asdict(start)}
    card = make_card(name or out.name, kind, config, params, data, {k: _clean(v) for k, v in best_metrics.items()},
                     history, pixel)
    written = save_model(out, card, best_state, half=params.half)
    yield Progress("save", 1, 1, f"model written to {out}")
    return written
