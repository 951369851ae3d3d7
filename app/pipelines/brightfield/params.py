"""Parameters of the brightfield pipeline: one dataclass per step (labels, training, segmentation, experiments).

Each field carries its help text in ``metadata["help"]``, so the CLI options (cli_brightfield.py)
and GUI forms are built from these classes; the values used are saved beside the results
(labels JSON, card.json, run.json).  Sizes are in pixels of the original field unless a name
says otherwise.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from app.core.params import Params, from_dict, param, to_dict


def _p(default: Any, help: str, choices: tuple[str, ...] | None = None) -> Any:
    """A dataclass field with its help text (for CLI options and GUI forms)."""
    return param(default, help=help, choices=choices)


def _threads() -> Any:
    """The ``threads`` field shared by training and segmentation."""
    return _p(None, "torch CPU threads (default: half the cores, 1 to 4)")


def _device() -> Any:
    """The ``device`` field shared by training and segmentation."""
    return _p("auto", "auto (a GPU when available), cpu, cuda or mps")


@dataclass
class LabelParams(Params):
    """How nuclei labels are derived from the fluorescence (DNA stain) image."""

    sigma: float = _p(2.0, "Gaussian smoothing before thresholding (px)")
    threshold: float | None = _p(None, "intensity threshold (default: Otsu on the smoothed image)")
    min_area: int = _p(1000, "objects smaller than this (px) are debris; sephaCe nuclei are 3000-13000 px")
    split_depth: float = _p(4.0, "distance maxima at least this deep (px) seed separate nuclei; 0 = never split")
    fill_holes: bool = _p(True, "fill holes inside nuclei")
    check_registration: bool = _p(True, "check the fluorescence/brightfield shift when planes are given")
    max_shift: float = _p(8.0, "a larger fluorescence/brightfield shift (px) is reported (and corrected); the estimate is good to ~2 px")
    search_radius: int = _p(40, "largest shift (px) the registration check looks for")
    correct_shift: bool = _p(True, "move the labels onto the brightfield when the shift exceeds --max-shift")


@dataclass
class TrainParams(Params):
    """How the U-Net is trained on brightfield planes and derived labels."""

    planes: tuple[int, ...] | None = _p(None, "planes to use, as 0-based indices in z order, e.g. 2,3 (default: all)")
    scale: float = _p(0.25, "the net sees the field resized by this factor (sephaCe nuclei ~25 px instead of ~100 px)")
    width: int = _p(16, "channels of the first U-Net level")
    depth: int = _p(3, "number of U-Net poolings")
    boundary: bool = _p(False, "add a nucleus-boundary output that helps split touching nuclei")
    crop: int = _p(64, "training crop side, in pixels at model scale")
    batch_size: int = _p(8, "crops per training step")
    steps_per_epoch: int = _p(20, "training steps between validations")
    epochs: int = _p(40, "most epochs")
    patience: int = _p(12, "early stopping: epochs without validation improvement")
    lr: float = _p(3e-3, "AdamW peak learning rate (one-cycle schedule over epochs)")
    ema_decay: float = _p(0.98, "per-step decay of the weight average that is validated and kept")
    weight_decay: float = _p(1e-4, "AdamW weight decay")
    val_fraction: float = _p(0.2, "bottom strip of each training field kept for validation")
    max_crops: int | None = _p(None, "train on only this many fixed crops (data-size experiments)")
    augment: bool = _p(True, "flips, 90-degree rotations, zoom, contrast jitter, defocus-like blur, noise")
    zoom_min: float = _p(0.8, "augmentation: smallest zoom of a training crop (nuclei sizes differ between fields)")
    zoom_max: float = _p(1.25, "augmentation: largest zoom of a training crop")
    low_percentile: float = _p(1.0, "per-plane normalisation: this percentile -> 0")
    high_percentile: float = _p(99.0, "per-plane normalisation: this percentile -> 1")
    time_budget_s: float | None = _p(None, "stop after this many seconds, keeping the best epoch")
    seed: int = _p(0, "random seed")
    threads: int | None = _threads()
    device: str = _device()


@dataclass
class SegmentParams(Params):
    """How a field is predicted and its probability map becomes nuclei instances."""

    threshold: float = _p(0.5, "nucleus probability above which a pixel is nucleus")
    fill_holes: bool = _p(True, "fill holes inside predicted nuclei (nuclei have none; the labels are filled too)")
    min_area: int = _p(1000, "smaller objects (px, full resolution) are dropped")
    split_depth: float = _p(4.0, "distance maxima at least this deep (px) seed separate nuclei; 0 = never split")
    tile_size: int = _p(1024, "tile side at model scale (a field up to 4096 px at scale 0.25 is one tile)")
    overlap: int = _p(64, "tile overlap at model scale, blended when stitching")
    save_probability: bool = _p(False, "also write the probability map (uint8 TIFF, 0-255)")
    threads: int | None = _threads()
    device: str = _device()


@dataclass
class ExperimentParams(Params):
    """What an experiment varies and the budget of each of its training runs (a table needs many)."""

    epochs: int = _p(20, "epochs of each training run (a fixed number of steps: comparable under any CPU load)")
    steps_per_epoch: int = _p(20, "training steps between validations")
    budget_s: float | None = _p(600.0, "stop a run after this many seconds even if its epochs are not done")
    width: int = _p(16, "U-Net width of the experiment runs")
    sizes: tuple[int, ...] = _p((4, 16, 64, 256), "training-set sizes for `experiment size`")
    by: str = _p("crops", "what `experiment size` counts: crops or fields", choices=("crops", "fields"))
    max_planes: int | None = _p(None, "stop the best-first plane sequence here (default: all planes)")
    repeats: int = _p(1, "training runs (seeds) per table row; the table shows their mean")
    folds: int | None = _p(None, "how many fields take a turn as the test field (default: all)")

    def train_params(self, base: TrainParams | None = None) -> TrainParams:
        """Training parameters of one experiment run."""
        base = base or TrainParams()
        return dataclasses.replace(base, width=self.width, steps_per_epoch=self.steps_per_epoch,
                                   time_budget_s=self.budget_s, epochs=self.epochs, patience=self.epochs)



__all__ = ["LabelParams", "TrainParams", "SegmentParams", "ExperimentParams", "to_dict", "from_dict"]
