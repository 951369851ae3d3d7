"""Parameters of the Kaizen pipeline, one dataclass per task (network, training, decomposition).

The GUI form and the CLI options are built from these; the values used are saved beside results
(decomposition) and in the model card (network and training).  Sizes in pixels of the *model's*
grid (after rescaling objects to ``target_diameter``) unless a field says otherwise.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any


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
class TrainParams:
    """How to train a Kaizen VQ-VAE on instance-labelled images."""

    patch: int = 40
    target_diameter: float = 16.0  # objects are rescaled to this diameter (px) before patches are cut
    epochs: int = 10
    steps_per_epoch: int = 200
    batch_size: int = 64
    learning_rate: float = 2e-3
    centred_fraction: float = 0.8  # share of patches centred on an object pixel (paper: 80%)
    mask_weight: float = 0.1  # weight of the mask BCE term
    validation_patches: int = 512
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    channels: int = 32
    codebook_size: int = 256
    code_dim: int = 32
    beta: float = 0.25
    time_limit_s: float = 0.0  # stop (and save) after this many seconds of training; 0 = no limit

    def vqvae_config(self) -> VQVAEConfig:
        """The network shape these parameters ask for."""
        return VQVAEConfig(patch=self.patch, channels=self.channels, codebook_size=self.codebook_size,
                           code_dim=self.code_dim, beta=self.beta, downsample=2 if self.patch <= 64 else 3)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class DecomposeParams:
    """How to decompose an image (Algorithms 2 and 3) and turn objects into masks.

    ``accept_margin`` and ``min_residual`` are the two guards the quick trial found necessary on real
    images: a kept object must lower the L1 loss by at least ``accept_margin`` times its own summed
    intensity, and a candidate needs a 7x7-mean residual of at least ``min_residual`` (normalised
    intensity, image range 0..1).  Defaults were chosen on the nuclei-dsb2018 validation split
    (bench/kaizen.py tune); a model card's ``extra.decompose`` overrides them for that model.
    """

    diameter: float | None = None  # typical object diameter in input pixels; None = estimate from the image
    accept_margin: float = 0.6
    min_residual: float = 0.2
    error_rounds: int = 0  # Algorithm 3: extra passes on the error image (0 = core algorithm only)
    max_candidates: int = 256  # per round
    max_iterations: int = 100  # rounds of the core algorithm (a safety bound)
    # "image": object image > mask_fraction x input mean (the paper's rule, with mask_fraction 0.1);
    # "object": object image > mask_fraction x the object's own maximum; "head": mask head > 0.5.
    # On the validation split "object" at 0.15 beat the paper's rule at AP70-AP90 (see the model card).
    mask_rule: str = "object"
    mask_fraction: float = 0.15
    min_area: int = 0  # objects smaller than this (input pixels) are dropped; 0 = keep all
    batch_size: int = 512  # candidates per network call (a round larger than this is split)
    device: str = "auto"
    channel: str | None = None  # channel name or index of a multi-channel image; None = the only one (RGB: mean)
    z: int | None = None  # z-plane of a stack; None = a 2-D image

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None) -> "DecomposeParams":
        return cls(**_known(cls, values or {}))


def _known(cls: type, values: dict[str, Any]) -> dict[str, Any]:
    """Only the keys ``cls`` has (settings saved by an older or newer version load anyway)."""
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in values.items() if k in names}


__all__ = ["VQVAEConfig", "TrainParams", "DecomposeParams"]
