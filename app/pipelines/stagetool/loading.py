"""Loading Stagetool's networks for inference: find a model by name or folder, check its card, run it on tiles.

:class:`LoadedModel` is a network on its device with the card it came from (what results record);
:func:`detect` runs it on normalised tiles.  Split from :mod:`.predict`, which drives the passes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from app.core.errors import ModelError
from app.core.modelcard import load_state_dict, resolve_model
from app.pipelines.stagetool import composition
from app.pipelines.stagetool.classes import CELL_TYPES, STAGES
from app.pipelines.stagetool.models import ModelConfig, load_network, pick_device, set_inference
from app.pipelines.stagetool.section import matched_step

DEMO_MODELS = {"tubules": "stagetool-tubules-demo", "cells": "stagetool-cells-demo"}


@dataclass
class LoadedModel:
    """A Stagetool network ready for inference, with the card it came from."""

    card: Any
    net: torch.nn.Module
    config: ModelConfig
    device: torch.device

    def reference(self) -> dict[str, Any]:
        """What results and reports record about this model."""
        ref = self.card.model_id()
        ref.update(architecture=self.card.architecture, backbone=self.card.backbone,
                   downsample=self.config.downsample, tile_size=self.config.tile_size,
                   training_data=self.card.training.get("data"))
        stager = (self.card.extra or {}).get("composition")
        if stager:
            ref["stager_data"] = stager.get("data")
        return ref


def load_model(name_or_path: str | Path | None, kind: str, device: str = "auto") -> LoadedModel:
    """Find (by folder or name; default: the shipped demo model), check and load a tubule or cell model."""
    pipeline = f"stagetool-{kind}"
    card = resolve_model(name_or_path or DEMO_MODELS[kind], pipeline=pipeline)
    card.check_fits(pipeline=pipeline, n_channels=1, classes=list(STAGES if kind == "tubules" else CELL_TYPES))
    torch_device = pick_device(device)
    net, config = load_network(card, load_state_dict(card.folder), torch_device)
    if config.kind != kind:
        raise ModelError(f"model {card.name!r} describes a {config.kind} network but is filed as {pipeline}")
    return LoadedModel(card, net, config, torch_device)


def stager_of(model: LoadedModel, cell_model: LoadedModel | None = None) -> composition.Stager | None:
    """The composition stager of an analysis (``extra.composition`` of a card), if any.

    A cell model trained on a lab's corrections carries a stager refitted on the cells it finds
    (:func:`.fitting.refit_for_cell_model`) and wins; otherwise the tubule model's is used.
    """
    card = stager_card(model, cell_model)
    return composition.Stager.from_dict(card.extra["composition"]) if card is not None else None


def stager_card(model: LoadedModel, cell_model: LoadedModel | None = None) -> Any:
    """The card whose stager :func:`stager_of` uses (the cell model's first), or None."""
    for card in ((cell_model.card,) if cell_model is not None else ()) + (model.card,):
        if (card.extra or {}).get("composition"):
            return card
    return None


@torch.no_grad()
def detect(model: LoadedModel, tiles: Sequence[np.ndarray]) -> list[dict[str, np.ndarray]]:
    """Run a network on normalised (H, W) float tiles; boxes, 0-based labels, scores (+ boolean masks)."""
    if not tiles:
        return []
    batch = [torch.from_numpy(np.ascontiguousarray(t, dtype=np.float32))[None].to(model.device) for t in tiles]
    outputs = model.net(batch)
    results = []
    for out in outputs:
        item = {"boxes": out["boxes"].float().cpu().numpy(), "labels": out["labels"].cpu().numpy() - 1,
                "scores": out["scores"].float().cpu().numpy()}
        if "masks" in out:
            item["masks"] = (out["masks"][:, 0] > 0.5).cpu().numpy()
        results.append(item)
    return results


def section_step(model: LoadedModel, pixel_size_um: float | None) -> float:
    """Section pixels per model pixel so the network sees the section at the pixel size it was trained at.

    Objects the size the model learned matter more than anything else a detector learned: a model
    trained at 0.5 um per pixel misses most tubules of a 0.65 um section.  Without both pixel sizes,
    or when they agree within 5%, the card's own downsample is kept.
    """
    return matched_step(model.config.downsample, getattr(model.card, "pixel_size_um", None), pixel_size_um)


def prepare(model: LoadedModel, tile: int, score: float, pixel_size_um: float | None = None) -> ModelConfig:
    """The model's configuration for this analysis (tile size override, section step) with the network set up for it.

    With ``pixel_size_um`` (the section's) tiles are resampled to the model's pixel size
    (:func:`section_step`); ``downsample`` of the returned configuration is then that step.
    """
    config = dataclasses.replace(model.config, tile_size=tile or model.config.tile_size,
                                 downsample=section_step(model, pixel_size_um))
    set_inference(model.net, config.tile_size, score, config.kind)
    return config
