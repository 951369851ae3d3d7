"""Parameters of the Kaizen pipeline, one dataclass per task (network, training, decomposition).

The GUI form and the CLI options are built from these; the values used are saved beside results
(decomposition) and in the model card (network and training).  Sizes in pixels of the *model's*
grid (after rescaling objects to ``target_diameter``) unless a field says otherwise.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from app.core.params import Params, param

DEVICE_HELP = "auto (a CUDA GPU when there is one, else the CPU), cpu or cuda[:N]; Kaizen does not run on mps"
MASK_RULES = ("image", "object", "head")


@dataclass
class VQVAEConfig:
    """Shape of the VQ-VAE: patch side, widths, codebook; stored in the model card."""

    patch: int = 40  # 40 for nuclei, 120 for whole cells (paper)
    channels: int = 32  # width of the first conv; later layers use 2x
    downsample: int = 2  # stride-2 stages: latent grid side = patch / 2**downsample
    res_blocks: int = 1
    codebook_size: int = 256
    code_dim: int = 32
    beta: float = 0.25  # commitment weight (paper: 0.1-2.0)
    ema_decay: float = 0.99

    def __post_init__(self) -> None:
        step = 2 ** self.downsample
        if self.patch % step:
            raise ValueError(f"patch {self.patch} must be a multiple of {step} (2**downsample)")

    @property
    def grid(self) -> int:
        """Side of the grid of discrete codes."""
        return self.patch // 2 ** self.downsample

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "VQVAEConfig":
        return cls(**_known(cls, values))


@dataclass
class TrainParams(Params):
    """How to train a Kaizen VQ-VAE on instance-labelled images."""

    patch: int = param(40, "patch side: 40 for nuclei, 120 for whole cells (paper)")
    target_diameter: float = param(16.0, "objects are rescaled to this diameter (px) before patches are cut")
    epochs: int = param(16, "passes of steps_per_epoch training steps (the shipped kaizen-nuclei recipe)")
    steps_per_epoch: int = param(250, "training steps between validations")
    batch_size: int = param(64, "patches per training step")
    lr: float = param(2e-3, "AdamW peak learning rate (warm-up, then cosine decay)")
    centred_fraction: float = param(0.8, "share of patches centred on an object pixel (paper: 80%)")
    mask_weight: float = param(0.1, "weight of the mask BCE term")
    validation_patches: int = param(512, "patches the validation loss is measured on")
    seed: int = param(0, "random seed")
    device: str = param("auto", DEVICE_HELP)
    channels: int = param(32, "width of the first conv; later layers use 2x")
    codebook_size: int = param(256, "number of discrete codes")
    code_dim: int = param(32, "length of each code vector")
    beta: float = param(0.25, "commitment weight (paper: 0.1-2.0)")
    time_limit_s: float = param(0.0, "stop (and save) after this many seconds of training; 0 = no limit")

    def vqvae_config(self) -> VQVAEConfig:
        """The network shape these parameters ask for."""
        return VQVAEConfig(patch=self.patch, channels=self.channels, codebook_size=self.codebook_size,
                           code_dim=self.code_dim, beta=self.beta, downsample=2 if self.patch <= 64 else 3)


@dataclass
class DecomposeParams(Params):
    """How to decompose an image (Algorithms 2 and 3) and turn objects into masks.

    ``accept_margin`` and ``min_residual`` are the two guards the quick trial found necessary on real
    images: a kept object must lower the L1 loss by at least ``accept_margin`` times its own summed
    intensity, and a candidate needs a 7x7-mean residual of at least ``min_residual`` (normalised
    intensity, image range 0..1).  Defaults were chosen on the nuclei-dsb2018 validation split
    (bench/kaizen.py tune); a model card's ``extra.decompose`` overrides them for that model.
    The size ladder (``scales``, ``switch_share``) and the stop rule (``min_peak``,
    ``min_head_agreement``, ``min_contrast``, ``min_snr``) are off here because their useful values
    depend on the model (an undertrained mask head disagrees with everything); the shipped model's
    card switches them on with values tuned on validation (``tune`` chooses them for any model).
    ``background`` (subtract a smooth background before normalising) and ``merge_guard`` (the ladder
    keeps touching whole nuclei apart) are off here for the same reason and set by the card.
    """

    diameter: float | None = param(None, "typical object diameter in input pixels (default: estimated per image)")
    accept_margin: float = param(0.6, "keep an object only if it lowers the L1 loss by this share of its own "
                                      "intensity")
    min_residual: float = param(0.2, "minimum 7x7-mean residual (normalised 0..1) for a candidate")
    error_rounds: int = param(0, "extra passes on the error image (Algorithm 3); 0 = core algorithm only")
    max_candidates: int = param(256, "candidates per round at most")
    max_iterations: int = param(100, "rounds of the core algorithm at most (a safety bound)")
    # On the validation split "object" at 0.15 beat the paper's rule at AP70-AP90 (see the model card).
    mask_rule: str = param("object", "'image': object image above --mask-fraction x image mean (paper); 'object': "
                                     "above --mask-fraction x the object's maximum; 'head': mask-head probability "
                                     "above 0.5", choices=MASK_RULES)
    mask_fraction: float = param(0.15, "mask threshold as a fraction of the image mean or object maximum "
                                       "(see mask_rule; paper: 0.1 of the image mean)")
    min_area: int = param(0, "drop objects smaller than this many pixels (0 = keep all)")
    background: float = param(0.0, "before normalising, subtract a smooth background (grey opening) this many times "
                                    "wider than the largest diameter tried; 0 = off")
    scales: str = param("1", "also decompose at the diameter times these factors and keep, per region, the "
                                 "scale whose objects explain the input best (L1); '1' = one diameter per image")
    switch_share: float = param(0.0, "another scale replaces the estimated diameter in a region only if it lowers "
                                     "the L1 there by this share")
    object_cost: float = param(0.0, "L1 (normalised intensity x pixels) each object adds when scales are compared")
    min_peak: float = param(0.0, "stop rule: drop objects whose generated peak is below this (normalised 0..1)")
    min_head_agreement: float = param(0.0, "stop rule: drop objects whose mask overlaps the mask head's by less "
                                           "than this IoU")
    min_contrast: float = param(0.0, "stop rule: drop objects less than this (normalised 0..1) brighter than "
                                      "the background ring around them")
    min_snr: float = param(0.0, "stop rule: drop objects whose contrast to that ring is below this many times "
                                "the ring's noise (robust sigma)")
    merge_guard: float = param(0.0, "size ladder: keep the estimated diameter in a region where each object it found "
                                    "there agrees with the mask head by at least this IoU (0 = off)")
    batch_size: int = param(512, "candidates per network call (a larger round is split)")
    device: str = param("auto", DEVICE_HELP)
    channel: str | None = param(None, "channel name or index of a multi-channel image (default: the only one; RGB: "
                                      "their mean)")
    z: int | None = param(None, "z-plane of a stack (default: a 2-D image)")


def _known(cls: type, values: dict[str, Any]) -> dict[str, Any]:
    """Only the keys ``cls`` has (settings saved by an older or newer version load anyway)."""
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in values.items() if k in names}


__all__ = ["VQVAEConfig", "TrainParams", "DecomposeParams"]
