"""A Kaizen model folder: the VQ-VAE's card (network shape, object size, decomposition defaults) and weights.

The card's ``extra`` holds what is needed to rebuild and use the network: ``vqvae`` (the
:class:`VQVAEConfig`), ``target_diameter`` (object size on the model's grid) and ``decompose``
(default :class:`DecomposeParams` values chosen on validation data, if any).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from app.core.errors import ModelError
from app.core.modelcard import ModelCard, load_state_dict, resolve_model, save_model
from app.pipelines.kaizen.params import DecomposeParams, TrainParams, VQVAEConfig
from app.pipelines.kaizen.sizing import NORM_PERCENTILES
from app.pipelines.kaizen.vqvae import VQVAE

PIPELINE = "kaizen"
DEFAULT_MODEL = "kaizen-nuclei"


@dataclass
class KaizenModel:
    """A loaded, ready-to-run Kaizen network with its card."""

    card: ModelCard
    network: VQVAE
    target_diameter: float
    defaults: DecomposeParams

    @property
    def patch(self) -> int:
        return self.network.config.patch


def save_kaizen_model(folder: Path, network: VQVAE, params: TrainParams, training: dict[str, Any],
                      metrics: dict[str, Any], name: str | None = None,
                      decompose: DecomposeParams | None = None) -> ModelCard:
    """Write card.json + weights.pt for a trained network."""
    folder = Path(folder)
    card = ModelCard(
        name=name or folder.name,
        pipeline=PIPELINE,
        architecture="vqvae",
        backbone=None,
        classes=["object"],
        input_channels=1,
        channel_meaning=["fluorescence (gray)"],
        normalisation={"method": "percentile", "low": NORM_PERCENTILES[0], "high": NORM_PERCENTILES[1],
                       "clip_below": 0.0, "then": f"rescale so the object diameter is {params.target_diameter} px"},
        training=training,
        metrics=metrics,
        extra={"vqvae": network.config.to_dict(), "target_diameter": params.target_diameter,
               "decompose": (decompose or DecomposeParams()).to_dict()},
    )
    return save_model(folder, card, network.state_dict())


def load_kaizen_model(name_or_dir: str | os.PathLike[str] | None = None, device: str | torch.device = "cpu") -> KaizenModel:
    """Load a Kaizen model by name (user models, then bundled) or folder; None = the shipped nuclei model."""
    card = resolve_model(name_or_dir if name_or_dir is not None else DEFAULT_MODEL, pipeline=PIPELINE)
    try:
        config = VQVAEConfig.from_dict(card.extra["vqvae"])
        target = float(card.extra["target_diameter"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelError(f"model card in {card.folder} lacks the Kaizen network settings ({exc})") from exc
    network = VQVAE(config)
    try:
        network.load_state_dict(load_state_dict(card.folder))
    except RuntimeError as exc:
        raise ModelError(f"weights in {card.folder} do not fit the network the card describes: {exc}") from exc
    network.to(device).eval()
    defaults = DecomposeParams.from_dict(card.extra.get("decompose"))
    return KaizenModel(card, network, target, defaults)
