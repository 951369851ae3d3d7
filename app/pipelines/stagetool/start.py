"""How a Stagetool training run starts: random weights, fine-tuned from a model, or published pretrained weights.

The lab's loop is analyse -> correct -> train -> re-run, and its natural training step fine-tunes
the model that made the predictions (the demo model, or the lab's last model): ``init_from`` names
it (folder or name).  A model of the same kind is taken whole (its architecture, weights and
composition stager); one of the other kind starts only the backbone.  ``pretrained`` takes
torchvision's weights instead: ``imagenet`` (ResNet/ResNeXt backbones) or ``coco`` (torchvision's
ResNet-50 FPN Faster / Mask R-CNN), read from the torch hub cache (``$TORCH_HOME/hub/checkpoints``)
where torchvision keeps them, downloaded once after the user agreed to its size, or any ``.pth``
file the user points to.  Every start is recorded in the model card (:class:`Start`).  No Qt: the
training wizard asks :func:`pretrained_file` what a download would cost and runs :func:`download`.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from app.core.errors import ModelError, UserError
from app.core.modelcard import ModelCard, load_state_dict, resolve_model, sha256_file
from app.pipelines.stagetool.models import ModelConfig, max_cells
from app.pipelines.stagetool.params import LITE_BACKBONES, TrainParams

PRETRAINED = ("imagenet", "coco")
COCO_BACKBONE = "resnet50"  # torchvision publishes COCO detectors for this backbone only
START_CHOICES_NOTE = ("Start from random weights, fine-tune a model you already have (the demo model or your "
                      "last one), or start from torchvision's ImageNet / COCO weights (downloaded once when your "
                      "computer is online, or a .pth file you point to).")


@dataclass
class Start:
    """What a run started from: ``record`` goes into the card's ``training.start``, ``note`` is its sentence."""

    record: dict[str, Any]
    note: str
    carry: dict[str, Any] = field(default_factory=dict)  # card extras kept from the source (composition stager)


@dataclass
class PretrainedFile:
    """Where published weights live on this computer, where they come from and how big they are."""

    name: str
    url: str
    path: Path
    size_mb: float | None

    @property
    def present(self) -> bool:
        return self.path.is_file()


# ------------------------------------------------------------------------------------ sources


def source_card(init_from: str | Path) -> ModelCard:
    """The card of the model a run starts from (folder or name), checked to be a Stagetool model."""
    card = resolve_model(init_from)
    if not card.pipeline.startswith("stagetool-"):
        raise ModelError(f"{init_from}: a {card.pipeline} model cannot start a Stagetool network")
    return card


def models_of_results(results: str | Path) -> dict[str, str]:
    """The folders of the models that made a results folder's predictions, per kind: the loop's fine-tune start.

    Read from the first section's ``predictions.json`` (``meta.models``); a model whose folder is gone
    or whose weights changed since (another sha256) is left out, so a start never names other weights.
    """
    import json

    from app.core.modelcard import load_model_card
    from app.pipelines.stagetool.layout import PREDICTIONS_FILE

    found = sorted(Path(results).rglob(PREDICTIONS_FILE))
    if not found:
        raise UserError(f"{results}: no Stagetool predictions here; analyse sections first")
    models = (json.loads(found[0].read_text()).get("meta") or {}).get("models") or {}
    out = {}
    for kind, ref in models.items():
        folder = ref.get("folder")
        try:
            card = load_model_card(folder) if folder else None
        except UserError:
            card = None
        if card is not None and card.weights_sha256 == ref.get("weights_sha256"):
            out[kind] = str(folder)
    return out


def fine_tune_config(card: ModelCard, params: TrainParams) -> ModelConfig | None:
    """The source model's network description for crops of ``params.crop_size``; None when it is of the other kind."""
    if card.pipeline != f"stagetool-{params.kind}":
        return None
    raw = (card.extra or {}).get("model")
    if not isinstance(raw, dict):
        raise ModelError(f"model {card.name!r} has no Stagetool network description (extra.model) in its card")
    config = ModelConfig.from_dict(raw)
    config.tile_size = params.crop_size
    if config.kind == "cells":
        config.detections_per_img = max(config.detections_per_img, max_cells(params.crop_size))
    return config


def pretrained_file(source: str, backbone: str, kind: str) -> PretrainedFile:
    """The file ``pretrained`` names: torchvision's weights for ``backbone`` / ``kind``, or a .pth path as given."""
    if source not in PRETRAINED:
        path = Path(source).expanduser()
        if not path.is_file():
            raise UserError(f"pretrained must be imagenet, coco or a weights file; {source!r} is none of them")
        return PretrainedFile(path.name, "", path, round(path.stat().st_size / 1e6, 1))
    from torchvision.models import get_model_weights

    if backbone in LITE_BACKBONES:
        raise UserError(f"no published weights exist for the {backbone} backbone; choose resnet18/34/50/101 or "
                        "resnext for ImageNet weights, resnet50 for COCO weights, or start from a model")
    if source == "coco":
        if backbone != COCO_BACKBONE:
            raise UserError(f"COCO weights exist for the {COCO_BACKBONE} backbone only, not {backbone}")
        weights = get_model_weights("maskrcnn_resnet50_fpn" if kind == "tubules" else "fasterrcnn_resnet50_fpn")
        chosen = weights.COCO_V1
    else:
        chosen = get_model_weights(backbone).IMAGENET1K_V1
    name = f"{source} {chosen} ({backbone})"
    file = Path(urllib.parse.urlparse(chosen.url).path).name
    return PretrainedFile(name, chosen.url, Path(torch.hub.get_dir()) / "checkpoints" / file,
                          chosen.meta.get("_file_size"))


def download(file: PretrainedFile, progress: bool = True) -> Path:
    """Fetch ``file`` into the torch hub cache; a machine that is offline gets one line saying what to do."""
    file.path.parent.mkdir(parents=True, exist_ok=True)
    try:
        torch.hub.download_url_to_file(file.url, str(file.path), progress=progress)
    except Exception as error:  # URLError, timeouts, HTTP errors, a full disk: all one line for the user
        reason = str(getattr(error, "reason", error)).splitlines()[0][:120] if str(error) else type(error).__name__
        raise UserError(f"could not download the {file.name} weights ({reason}): is this computer online? "
                        f"Otherwise fetch {file.url} on one that is and put it at {file.path}") from error
    return file.path


def ensure_pretrained(file: PretrainedFile, confirm: Callable[[str], bool] | None) -> Path:
    """The weights file, downloaded first when missing and ``confirm(question)`` agrees (None = never ask)."""
    if file.present:
        return file.path
    size = f"{file.size_mb:.0f} MB" if file.size_mb else "a file"
    question = f"The {file.name} weights are not on this computer yet: download {size} into {file.path.parent}?"
    if confirm is None or not confirm(question):
        raise UserError(f"the {file.name} weights are not downloaded yet ({size} from {file.url}); agree to the "
                        f"download (--yes on the command line) or put the file at {file.path}")
    return download(file)


# ------------------------------------------------------------------------------------ loading


def _adapt(name: str, tensor: torch.Tensor, own: dict[str, torch.Tensor]) -> torch.Tensor | None:
    """``tensor`` fitted to the network's tensor ``name``: RGB first convolutions summed to gray; None if it cannot."""
    if name not in own:
        return None
    want = own[name]
    if tensor.shape == want.shape:
        return tensor.to(want.dtype)
    if name.endswith("conv1.weight") and tensor.dim() == 4 and tensor.shape[1] == 3 and want.shape[1] == 1 \
            and tensor.shape[0] == want.shape[0] and tensor.shape[2:] == want.shape[2:]:
        return tensor.sum(1, keepdim=True).to(want.dtype)  # DAPI is one channel: the filter's response to gray
    return None


def load_pretrained(net: torch.nn.Module, path: Path, source: str) -> int:
    """Copy the fitting tensors of a torchvision state dict into ``net``; returns how many.

    ImageNet classifier weights are named as the bare ResNet (``layer1...``): they go to ``backbone.body``.
    Normalisation layers are skipped: the network uses GroupNorm, and BatchNorm statistics do not carry over.
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise UserError(f"{path}: not a readable weights file ({str(error).splitlines()[0][:120]})") from error
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    own = net.state_dict()
    bare = not any(k.startswith("backbone.") for k in state)
    taken = {}
    for key, tensor in state.items():
        if not isinstance(tensor, torch.Tensor) or "bn" in key or ".downsample.1." in key:
            continue
        name = f"backbone.body.{key}" if bare else key
        fitted = _adapt(name, tensor, own)
        if fitted is not None:
            taken[name] = fitted
    if not taken:
        raise UserError(f"{path}: none of its tensors fit this network; is it a torchvision ResNet or "
                        f"R-CNN state dict ({source})?")
    net.load_state_dict(taken, strict=False)
    return len(taken)


def start_network(net: torch.nn.Module, params: TrainParams, source: ModelCard | None,
                  confirm: Callable[[str], bool] | None = None) -> Start:
    """Load the start ``params`` asks for into ``net`` (built from :func:`fine_tune_config` when fine-tuning)."""
    if source is not None:
        return from_model(net, params.kind, source)
    if params.pretrained:
        file = pretrained_file(params.pretrained, params.backbone, params.kind)
        path = ensure_pretrained(file, confirm)
        count = load_pretrained(net, path, params.pretrained)
        return Start({"kind": "pretrained", "weights": file.name, "file": path.name, "sha256": sha256_file(path),
                      "tensors": count},
                     f"started from published pretrained weights: {file.name} ({count} tensors)")
    return Start({"kind": "random"}, "random weights: every layer trained from scratch on these annotations")


def from_model(net: torch.nn.Module, kind: str, card: ModelCard, backbone_only: bool = False) -> Start:
    """Fine-tune a same-kind model whole, or start the backbone from a model of the other kind (or ``backbone_only``)."""
    state = load_state_dict(card.folder)
    own = net.state_dict()
    whole = card.pipeline == f"stagetool-{kind}" and not backbone_only
    shared = {k: v.to(own[k].dtype) for k, v in state.items() if k in own and own[k].shape == v.shape
              and (whole or k.startswith("backbone."))}
    if not shared:
        backbone = ((card.extra or {}).get("model") or {}).get("backbone") or card.backbone or "another backbone"
        raise ModelError(f"{card.folder}: its backbone ({backbone}) does not fit this network's; "
                         "choose a model with the same backbone")
    net.load_state_dict(shared, strict=False)
    record = {"kind": "fine-tuned" if whole else "backbone", "model": card.name, "sha256": card.weights_sha256,
              "tensors": len(shared), "of": len(own), "trained_on": card.training.get("data")}
    carry = {}
    if whole and (card.extra or {}).get("composition"):
        carry["composition"] = card.extra["composition"]  # the stager reads cells; it still applies
    what = "fine-tuned from" if whole else f"backbone ({len(shared)} tensors) started from"
    return Start(record, f"{what} model {card.name!r} (sha256 {card.weights_sha256[:12]}), trained on "
                         f"{card.training.get('data') or 'unknown data'}", carry)
