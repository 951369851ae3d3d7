"""Parameters of Stagetool analysis and training: one dataclass each, saved beside the results.

The GUI builds its forms from these fields (``metadata["help"]`` is the label's tooltip) and the
CLI exposes the ones a user changes most; ``to_dict`` is what run.json and the Excel Methods
sheet record.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from app.core.errors import UserError
from app.core.params import Params
from app.pipelines.stagetool.antigen import parse_antibody

MIN_CELLS = 20  # fewer cells than this (a tubule cut at the section edge, a missed one): too few to stage by
TTA_MODES = ("off", "full", "adaptive")
STAGE_FROM = ("auto", "cells", "masks")
TORCHVISION_BACKBONES = ("resnet18", "resnet34", "resnet50", "resnet101", "resnext50_32x4d", "resnext101_32x8d")
# narrow residual bodies defined in models.py: (widths of the 4 stages, blocks per stage)
LITE_BACKBONES = {
    "lite": ((32, 64, 128, 256), (2, 2, 2, 2)),
    "lite-s": ((24, 48, 96, 192), (1, 1, 2, 1)),
    "tiny": ((8, 16, 16, 32), (1, 1, 1, 1)),
}
BACKBONES = TORCHVISION_BACKBONES + tuple(LITE_BACKBONES)
PAPER_BACKBONES = {"tubules": "resnet50", "cells": "resnext101_32x8d"}
KINDS = ("tubules", "cells")


def _help(text: str, choices: tuple[str, ...] | None = None, basic: bool = False, label: str | None = None,
          **kwargs: Any) -> Any:
    """A dataclass field with its help text (and the values a form may offer, as a combo box); ``basic``
    fields are the few a biologist changes, shown above the form's folded Advanced section; ``label``
    replaces the form's label made from the field name."""
    extra: dict[str, Any] = {"choices": choices} if choices else {}
    if label:
        extra["label"] = label
    return field(metadata={"help": text, **extra, **({"basic": True} if basic else {})}, **kwargs)


@dataclass
class AnalyzeParams(Params):
    """How a whole section is analysed (DESIGN.md "Stagetool data flow")."""

    dapi: str = _help("DAPI channel: name or 0-based index", default="0", basic=True)
    antibodies: str = _help("antibody channels, comma separated NAME=CHANNEL[:T] (e.g. SOX9=1:1200, SALL4=2); "
                            "without T a threshold is suggested from the data; the Run panel's channel list "
                            "adds the ticked channels", default="", label="Antibodies by name (NAME=CHANNEL[:T])")
    tta: str = _help("cell test-time augmentation: off (one pass, cells kept from single_score, one box per "
                     "cell), full (every tile at 0/90/180/270 degrees, the paper: tighter boxes, 3-4x the time), "
                     "adaptive (one pass, then rotations only for the blocks of a tile that hold an uncertain cell)",
                     default="off", choices=TTA_MODES, basic=True)
    overlap: int = _help("tile overlap in section pixels (a cell or tubule part on a seam is seen whole once)",
                         default=128)
    cell_tile: int = _help("cell model tile side in model pixels (0 = the size it was trained on)", default=0)
    tubule_tile: int = _help("tubule model tile side in model pixels (0 = the size it was trained on)", default=0)
    batch_size: int = _help("tiles per network call (larger is faster on a GPU)", default=2)
    device: str = _help("auto, cpu, cuda or mps", default="auto", basic=True)
    threads: int = _help("CPU threads for torch (0 = torch's default, all cores; 1 was 3x faster than that on a "
                         "busy 2-core machine)", default=1)
    tubule_score: float = _help("minimum class score of a tubule mask from one tile", default=0.3)
    stage_from: str = _help("tubule stage from: masks (the paper: weighted vote of the tubule model), cells (the "
                            "cell types found in the tubule, if the tubule model has a composition stager) or auto "
                            f"(cells where a tubule holds at least {MIN_CELLS} cells, else masks)", default="auto",
                            choices=STAGE_FROM, basic=True)
    cell_score: float = _help("with rotations: minimum class score of a cell in each pass", default=0.5)
    single_score: float = _help("without rotations (tta off): minimum class score of a cell; lower than cell_score "
                                "because no vote of other passes confirms it (0.4: chosen on validation phantoms)",
                                default=0.4)
    min_votes: int = _help("with rotations: passes (of 4) that must see a cell for it to be kept", default=2)
    adaptive_low: float = _help("adaptive TTA: scores from here ...", default=0.3)
    adaptive_high: float = _help("... up to here count as uncertain", default=0.8)
    adaptive_block: int = _help("adaptive TTA: side of the blocks (model pixels) rotated around uncertain cells; "
                                "each gets 32 px of context", default=128)
    match_pixel_size: bool = _help("resample tiles to the pixel size the models were trained at, when both the "
                                   "section's and the model's pixel sizes are known (off: the model sees the "
                                   "section's pixels as they are)", default=True)
    skip_background: bool = _help("skip tiles without tissue (found on a low-resolution overview)", default=True)
    min_tissue: float = _help("share of a tile that must be tissue for it to be analysed", default=0.02)
    map_scale: int = _help("tubule map resolution: section pixels per map pixel (memory grows as 1/scale^2)",
                           default=4)
    min_tubule_area_um2: float = _help("tubules smaller than this (µm², or px² without pixel size) are dropped",
                                       default=0.0, basic=True)
    positive_fraction: float = _help("antigen rule: share of a cell's pixels that must exceed T/2", default=0.65)

    def validate(self) -> None:
        """Raise UserError for values that cannot work, naming the parameter."""
        if self.stage_from not in STAGE_FROM:
            raise UserError(f"stage_from must be masks, cells or auto, not {self.stage_from!r}")
        if self.tta not in TTA_MODES:
            raise UserError(f"tta must be one of {', '.join(TTA_MODES)}, not {self.tta!r}")
        if self.overlap < 0:
            raise UserError("overlap must be >= 0 pixels")
        if self.cell_tile < 0 or self.tubule_tile < 0 or (self.cell_tile % 32) or (self.tubule_tile % 32):
            raise UserError("tile sizes must be 0 (the model's) or a positive multiple of 32")
        if self.batch_size < 1:
            raise UserError("batch_size must be at least 1")
        if not 1 <= self.min_votes <= 4:
            raise UserError("min_votes must be between 1 and 4")
        if self.map_scale < 1:
            raise UserError("map_scale must be at least 1")
        self.antibody_list()
        if self.adaptive_block < 32 or self.adaptive_block % 32:
            raise UserError("adaptive_block must be a positive multiple of 32")
        for name in ("tubule_score", "cell_score", "single_score", "adaptive_low", "adaptive_high",
                     "min_tissue", "positive_fraction"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise UserError(f"{name} must lie between 0 and 1, not {value}")

    def antibody_list(self) -> list[Any]:
        """The antibody channels as :class:`~app.pipelines.stagetool.antigen.Antibody` objects."""
        items = [a.strip() for a in self.antibodies.split(",") if a.strip()]
        parsed = [parse_antibody(a) for a in items]
        names = [a.name for a in parsed]
        if len(set(names)) != len(names):
            raise UserError(f"antibody names must differ: {', '.join(names)}")
        return parsed

    def dapi_channel(self) -> str | int:
        """The DAPI channel as an index when it is a number, else a name."""
        text = str(self.dapi).strip()
        return int(text) if text.isdigit() else text


@dataclass
class TrainParams(Params):
    """How a tubule or cell model is trained (train.py)."""

    kind: str = _help("tubules (Mask R-CNN, 5 stages) or cells (Faster R-CNN, 9 types)", default="cells")
    backbone: str = _help("resnet50 / resnext101_32x8d are the paper's (GPU); resnet18, resnet34, lite, "
                          "lite-s for CPU; tiny for tests. Fine-tuning (init_from a model of the same kind) keeps that "
                          "model's backbone",
                          default="lite")
    crop_size: int = _help("training crop side in model pixels (the paper: 1024)", default=1024)
    downsample: int = _help("section pixels per model pixel (1 = full resolution)", default=1)
    epochs: int = _help("passes over the training crops", default=20)
    crops_per_epoch: int = _help("random crops per epoch", default=200)
    batch_size: int = _help("crops per step", default=2)
    lr: float = _help("initial learning rate (AdamW, cosine decay)", default=1e-3)
    weight_decay: float = _help("AdamW weight decay", default=1e-4)
    val_fraction: float = _help("share of sections (or images) kept for validation", default=0.2)
    val_crops: int = _help("validation crops evaluated after each epoch", default=16)
    class_balanced: bool = _help("centre crops on rare classes more often (m2m, secondary spermatocytes)",
                                 default=True)
    augment: bool = _help("flips, 90-degree rotations, gain/gamma/noise/blur", default=True)
    device: str = _help("auto, cpu, cuda or mps", default="auto")
    seed: int = _help("random seed", default=0)
    half: bool = _help("store weights as float16 (half the file)", default=True)
    time_limit_s: float = _help("stop after this many seconds (0 = no limit); the best epoch is kept", default=0.0)
    threads: int = _help("CPU threads for torch (0 = torch's default)", default=0)
    init_from: str = _help("model to start from (folder or name, e.g. stagetool-cells-demo or your last model): one "
                           "of the same kind is fine-tuned whole (use a lower lr, e.g. 2e-4), one of the other kind "
                           "starts the backbone only; empty = random or pretrained weights", default="", basic=True)
    pretrained: str = _help("published weights to start from when init_from is empty: imagenet (ResNet/ResNeXt "
                            "backbones), coco (resnet50: torchvision's COCO detector) or a .pth file; downloaded once "
                            "into the torch cache when missing; empty = random", default="", basic=True)
    loader_threads: int = _help("threads preparing training crops in the background (0 = in the training loop)",
                                default=0)

    def validate(self) -> None:
        """Raise UserError for values that cannot work, naming the parameter."""
        if self.kind not in KINDS:
            raise UserError(f"kind must be tubules or cells, not {self.kind!r}")
        if self.backbone not in BACKBONES:
            raise UserError(f"unknown backbone {self.backbone!r}; choose one of {', '.join(BACKBONES)}")
        if self.crop_size < 32 or self.crop_size % 32:
            raise UserError("crop_size must be a multiple of 32 (and at least 32)")
        if self.downsample < 1 or self.epochs < 1 or self.batch_size < 1 or self.crops_per_epoch < 1:
            raise UserError("downsample, epochs, batch_size and crops_per_epoch must be at least 1")
        if not 0.0 <= self.val_fraction < 1.0:
            raise UserError("val_fraction must lie in [0, 1)")
        if self.init_from and self.pretrained:
            raise UserError("init_from and pretrained are two different starts: choose one")


# parameters that change the predictions (the others only change the reports)
PREDICTION_PARAMS = ("dapi", "antibodies", "tta", "overlap", "cell_tile", "tubule_tile", "tubule_score", "cell_score",
                     "min_votes",
                     "adaptive_low", "adaptive_high", "adaptive_block", "skip_background", "min_tissue",
                     "map_scale", "min_tubule_area_um2", "positive_fraction")
