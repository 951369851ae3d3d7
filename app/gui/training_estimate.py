"""How long a training will take, said before it starts, from what earlier trainings measured.

A model card records its training's seconds, steps and recipe (crop size, batch size, backbone).
Time grows with the pixels seen (steps x batch x crop²), so an earlier training of the same network
gives seconds per pixel; the planned training's pixels times that is the estimate.  The model being
fine-tuned is asked first (the same network), then the library's models of that pipeline.  The
estimate says which training it comes from: that computer may be faster or slower than this one.
No Qt.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class Estimate:
    """Seconds expected (None when nothing comparable was measured) and where that number comes from."""

    seconds: float | None
    basis: str

    def text(self) -> str:
        """One line for the wizard."""
        if self.seconds is None:
            return f"Time: {self.basis}"
        return (f"Estimated time: about {format_duration(self.seconds)} of training steps, plus reading the "
                f"sections, a validation after each epoch and, for a cell model trained on corrected runs, one "
                f"analysis of those sections to refit the stager ({self.basis})")


def format_duration(seconds: float) -> str:
    """'40 s', '12 min', '2.5 h'."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def planned_pixels(params: Any) -> float | None:
    """Pixels a training of ``params`` will push through the network (steps x batch x crop²), or None."""
    epochs, crops = getattr(params, "epochs", None), getattr(params, "crops_per_epoch", None)
    batch, crop = getattr(params, "batch_size", None), getattr(params, "crop_size", None)
    if not all(isinstance(v, (int, float)) and v > 0 for v in (epochs, crops, batch, crop)):
        return None
    steps = epochs * max(1, int(crops) // int(batch))
    return float(steps * batch * crop * crop)


def seconds_per_pixel(card: Any) -> float | None:
    """Measured training seconds per pixel of a model card, or None when the card does not say."""
    training = getattr(card, "training", None) or {}
    recipe = training.get("recipe") or {}
    seconds, steps = training.get("seconds"), training.get("steps")
    batch, crop = recipe.get("batch_size"), recipe.get("crop_size")
    if not all(isinstance(v, (int, float)) and v > 0 for v in (seconds, steps, batch, crop)):
        return None
    return float(seconds) / (float(steps) * float(batch) * float(crop) ** 2)


def _backbone(card: Any) -> str | None:
    recipe = (getattr(card, "training", None) or {}).get("recipe") or {}
    return recipe.get("backbone")


def estimate(params: Any, cards: list[Any]) -> Estimate:
    """The estimate for ``params`` from the first card (fine-tuned model first) with the same backbone."""
    pixels = planned_pixels(params)
    if pixels is None:
        return Estimate(None, "shown once training starts")
    backbone = getattr(params, "backbone", None)
    for card in cards:
        rate = seconds_per_pixel(card)
        if rate is not None and (backbone is None or _backbone(card) == backbone):
            seconds = pixels * rate
            limit = getattr(params, "time_limit_s", 0) or 0
            capped = ""
            if limit and seconds > limit:
                seconds, capped = float(limit), ", capped by the time limit"
            return Estimate(seconds, f"as fast as the training of {card.name!r}{capped}; "
                                     "this computer may be faster or slower")
    return Estimate(None, f"no earlier training of a {backbone} network to go by; "
                          "the time per epoch is shown once training starts")


def cards_for(model_pipeline: str, init_from: str = "") -> list[Any]:
    """The fine-tuned model's card first, then the library's cards of the pipeline."""
    from app.core.errors import UserError
    from app.core.modelcard import find_models, load_model_card

    cards = []
    if init_from:
        try:
            cards.append(load_model_card(init_from))
        except UserError:
            pass
    try:
        cards += find_models(model_pipeline)
    except (UserError, ValueError):
        pass
    return cards
