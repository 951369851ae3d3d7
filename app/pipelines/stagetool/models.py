"""The two Stagetool networks, built from torchvision.models.detection parts.

Tubule model: Mask R-CNN with 5 stage classes; cell model: Faster R-CNN with 9 cell types
(science.md section 2).  The paper's backbones (ResNet-50 FPN, ResNeXt-101 32x8d FPN) are the
defaults for GPU training; lighter ones are selectable for CPU ("resnet18", "resnet34", and the
narrow "lite" / "tiny" residual bodies defined here, which keep demo models and tests small).

Choices that differ from torchvision's defaults, and why:

* gray input: the first convolution takes one channel (DAPI) instead of RGB, and the
  transform's mean/std are single values; images arrive already normalised to about [0, 1]
  (see :func:`normalise`), so the transform only centres them.
* GroupNorm instead of frozen BatchNorm: networks start from random weights, a Stagetool model or
  published weights without their BatchNorm statistics (:mod:`.start`), and batches of one or two
  crops are too small for BatchNorm.
* anchors are sized to the objects (cells of a few tens of pixels, tubule masks of hundreds),
  and the transform never resizes a tile (min_size = max_size = tile size).

Everything needed to rebuild a network is a :class:`ModelConfig`, stored in the model card's
``extra["model"]``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torchvision.models.detection import FasterRCNN, MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN, resnet_fpn_backbone
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.resnet import BasicBlock

from app.core.device import pick_device as core_pick_device
from app.core.errors import ModelError
from app.pipelines.stagetool.classes import CELL_TYPES, STAGES
from app.pipelines.stagetool.params import BACKBONES, KINDS, LITE_BACKBONES, PAPER_BACKBONES, TORCHVISION_BACKBONES


@dataclass
class ModelConfig:
    """What rebuilds a Stagetool network: kind, backbone, class count and head sizes.

    ``downsample`` is the factor by which sections are reduced before the network sees them
    (1 = full resolution, as in the paper; the CPU demo tubule model uses more).  A card stores an
    integer; at analysis time it may become fractional, when a section's pixel size differs from
    the one the model was trained at (:func:`.loading.prepare`).  ``tile_size``
    is the tile side the network sees, in its own (downsampled) pixels.
    """

    kind: str
    backbone: str
    num_classes: int
    tile_size: int = 1024
    downsample: float = 1
    in_channels: int = 1
    fpn_channels: int = 256
    head_dim: int = 1024
    mask_head_layers: int = 4
    anchor_sizes: tuple[int, ...] = (32, 64, 128, 256, 512)
    aspect_ratios: tuple[float, ...] = (0.5, 1.0, 2.0)
    detections_per_img: int = 100
    image_mean: float = 0.5
    image_std: float = 0.25
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON form for the model card."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """Rebuild from a card's ``extra["model"]``; unknown keys are an error naming them."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ModelError(f"model configuration has unknown fields {unknown}; update Stagescope")
        values = dict(data)
        for key in ("anchor_sizes", "aspect_ratios"):
            if key in values:
                values[key] = tuple(values[key])
        return cls(**values)


def default_config(kind: str, backbone: str | None = None, num_classes: int | None = None,
                   tile_size: int = 1024, downsample: int = 1) -> ModelConfig:
    """Sensible sizes for a tubule or cell model at a given backbone and tile size.

    Anchors assume 400x sections (cells about 10-60 px, tubules several hundred px) divided by
    ``downsample``; light backbones get narrower FPN and box heads.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, not {kind!r}")
    backbone = backbone or PAPER_BACKBONES[kind]
    if backbone not in BACKBONES:
        raise ModelError(f"unknown backbone {backbone!r}; choose one of {', '.join(BACKBONES)}")
    light = backbone in LITE_BACKBONES
    tiny = backbone == "tiny"
    if kind == "tubules":
        base = (64, 128, 256, 512, 1024)
        sizes = tuple(max(8, s // downsample) for s in base)
        config = ModelConfig(kind, backbone, num_classes or len(STAGES), tile_size=tile_size, downsample=downsample,
                             anchor_sizes=sizes, detections_per_img=50)
    else:
        base = (8, 16, 32, 64, 128)
        sizes = tuple(max(4, s // downsample) for s in base)
        config = ModelConfig(kind, backbone, num_classes or len(CELL_TYPES), tile_size=tile_size,
                             downsample=downsample, anchor_sizes=sizes, detections_per_img=max_cells(tile_size))
    if light:
        config.fpn_channels = 16 if tiny else 64
        config.head_dim = 32 if tiny else 256
        config.mask_head_layers = 1 if tiny else 2
    return config


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with up to 32 groups of at least 4 channels: the from-scratch detection norm."""
    groups = 32
    while groups > 1 and (channels % groups or channels // groups < 4):
        groups //= 2
    return nn.GroupNorm(groups, channels)


class LiteBody(nn.Module):
    """A narrow ResNet body (stem + 4 stages of BasicBlocks, strides 4..32) for one-channel input."""

    def __init__(self, widths: tuple[int, ...], blocks: tuple[int, ...], in_channels: int = 1) -> None:
        super().__init__()
        stem = widths[0]
        self.conv1 = nn.Conv2d(in_channels, stem, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = group_norm(stem)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        inplanes = stem
        for index, (width, count) in enumerate(zip(widths, blocks), start=1):
            stride = 1 if index == 1 else 2
            layers = []
            for block in range(count):
                downsample = None
                if block == 0 and (stride != 1 or inplanes != width):
                    downsample = nn.Sequential(nn.Conv2d(inplanes, width, 1, stride=stride, bias=False),
                                               group_norm(width))
                layers.append(BasicBlock(inplanes, width, stride if block == 0 else 1, downsample,
                                         norm_layer=group_norm))
                inplanes = width
            setattr(self, f"layer{index}", nn.Sequential(*layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # not used: IntermediateLayerGetter walks children
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


def build_backbone(config: ModelConfig) -> BackboneWithFPN:
    """ResNet/ResNeXt FPN (torchvision, no weights) or a lite body with FPN, taking gray input."""
    if config.backbone in LITE_BACKBONES:
        widths, blocks = LITE_BACKBONES[config.backbone]
        body = LiteBody(widths, blocks, config.in_channels)
        return_layers = {f"layer{i}": str(i - 1) for i in range(1, 5)}
        return BackboneWithFPN(body, return_layers, list(widths), config.fpn_channels)
    if config.backbone not in TORCHVISION_BACKBONES:
        raise ModelError(f"unknown backbone {config.backbone!r}; choose one of {', '.join(BACKBONES)}")
    backbone = resnet_fpn_backbone(backbone_name=config.backbone, weights=None, norm_layer=group_norm,
                                   trainable_layers=5)
    old = backbone.body.conv1
    backbone.body.conv1 = nn.Conv2d(config.in_channels, old.out_channels, kernel_size=7, stride=2, padding=3,
                                    bias=False)
    if config.fpn_channels != backbone.out_channels:
        raise ModelError("torchvision ResNet backbones use 256 FPN channels; set fpn_channels=256")
    return backbone


def build_model(config: ModelConfig) -> nn.Module:
    """The Mask R-CNN (tubules) or Faster R-CNN (cells) that ``config`` describes, untrained."""
    backbone = build_backbone(config)
    n_levels = len(backbone.fpn.inner_blocks) + 1  # + the max-pool level
    sizes = tuple(config.anchor_sizes)[:n_levels]
    if len(sizes) != n_levels:
        raise ModelError(f"{n_levels} anchor sizes needed, the configuration has {len(config.anchor_sizes)}")
    anchors = AnchorGenerator(tuple((s,) for s in sizes), (tuple(config.aspect_ratios),) * n_levels)
    channels = config.fpn_channels
    common: dict[str, Any] = dict(
        num_classes=None,
        min_size=config.tile_size,
        max_size=config.tile_size,
        image_mean=[config.image_mean] * config.in_channels,
        image_std=[config.image_std] * config.in_channels,
        rpn_anchor_generator=anchors,
        box_head=TwoMLPHead(channels * 7 * 7, config.head_dim),
        box_predictor=FastRCNNPredictor(config.head_dim, config.num_classes + 1),
        box_detections_per_img=config.detections_per_img,
    )
    if config.kind == "cells":
        n = config.detections_per_img
        common.update(rpn_pre_nms_top_n_test=max(600, 3 * n), rpn_post_nms_top_n_test=max(300, 2 * n),
                      rpn_pre_nms_top_n_train=max(2000, 3 * n), rpn_post_nms_top_n_train=max(1000, 2 * n),
                      box_score_thresh=0.05, box_nms_thresh=0.4)
        return FasterRCNN(backbone, **common)
    # a training crop holds a handful of tubules: fewer proposals and sampled RoIs than torchvision's
    # defaults (made for COCO's crowded scenes) train as well at about 2/3 of the step time
    common.update(rpn_pre_nms_top_n_train=600, rpn_post_nms_top_n_train=300, box_batch_size_per_image=128)
    layers = [channels] * config.mask_head_layers
    return MaskRCNN(backbone, mask_head=MaskRCNNHeads(channels, layers, 1),
                    mask_predictor=MaskRCNNPredictor(layers[-1], channels, config.num_classes + 1), **common)


def max_cells(tile_size: int) -> int:
    """Detections to allow per cell tile: dense epithelium holds about one nucleus per 400 px² (at most)."""
    return max(100, (tile_size * tile_size) // 400)


def set_inference(model: nn.Module, tile_size: int, score_threshold: float, kind: str | None = None) -> None:
    """Prepare a loaded network for tiles of ``tile_size`` pixels and drop detections below ``score_threshold``.

    The transform never resizes (min = max = tile size), so a model trained on small crops can
    run on larger tiles, which need fewer seams; a cell model then may return more boxes (and
    proposals) per tile; low-scoring boxes are cut before NMS (faster).
    """
    model.transform.min_size = (int(tile_size),)
    model.transform.max_size = int(tile_size)
    model.roi_heads.score_thresh = float(score_threshold)
    if kind == "cells" and hasattr(model, "rpn"):
        n = max_cells(tile_size)
        model.roi_heads.detections_per_img = n
        model.rpn._pre_nms_top_n["testing"] = max(600, 3 * n)
        model.rpn._post_nms_top_n["testing"] = max(300, 2 * n)


def count_parameters(model: nn.Module) -> int:
    """Number of parameters (for cards and the training wizard)."""
    return sum(p.numel() for p in model.parameters())


def load_network(card: Any, state_dict: dict[str, Any], device: str | torch.device = "cpu") -> tuple[nn.Module, ModelConfig]:
    """Rebuild the network a card describes and load its (checked) weights, in eval mode."""
    raw = (card.extra or {}).get("model")
    if not isinstance(raw, dict):
        raise ModelError(f"model {card.name!r} has no Stagetool network description (extra.model) in its card")
    config = ModelConfig.from_dict(raw)
    model = build_model(config)
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as error:
        raise ModelError(f"model {card.name!r}: weights do not fit the network its card describes ({error})") from error
    return model.to(device).eval(), config


def pick_device(name: str = "auto") -> torch.device:
    """The torch device of a Stagetool job (:func:`app.core.device.pick_device`: CUDA, else MPS, else CPU)."""
    return core_pick_device(name, pipeline="Stagetool")


def normalise(tile: Any, low: float, high: float) -> torch.Tensor:
    """Map raw intensities to about [0, 1] with section-level percentiles ``low``/``high`` (float32 tensor)."""
    import numpy as np

    array = np.asarray(tile, dtype=np.float32)
    scale = 1.0 / max(high - low, 1e-6)
    return torch.from_numpy(np.clip((array - low) * scale, 0.0, 1.5))
