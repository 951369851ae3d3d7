"""Which pipeline fits an image, and why a pipeline cannot run on one, in words a user can act on.

Qt-free, so the run panel (which pipeline to offer first), the main window (refuse a run before
it starts, one line per image) and scripts share the rules.  An image is described by
:class:`ImageFacts` (read from the file header and, when cheap, its overview); the rules only look
at those facts, the run's parameters and the model cards, never at a widget.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

# a mouse seminiferous tubule is about 200 µm across: an image narrower than one cannot be a testis section
TUBULE_DIAMETER_UM = 200.0
SECTION_MIN_PX = 1024  # an image at least this long on its longer side is taken for a section
MIN_TISSUE_FRACTION = 0.01  # below this share of tissue on the overview a section is empty
OVERVIEW_MAX_PX = 1024  # the tissue check reads a level no longer than this (file or cached level), else skips
DNA_CHANNELS = ("dapi", "hoechst", "dna", "nuclei")
KINDS = ("brightfield-stack", "section", "fluorescence")  # the image_kinds pipelines declare in the registry


@dataclass(frozen=True)
class ImageFacts:
    """What the rules need to know about one image (no pixels but an optional small overview)."""

    name: str
    height: int
    width: int
    n_channels: int = 1
    n_planes: int = 1
    channels: tuple[str, ...] = ()
    pixel_size_um: float | None = None
    overview: np.ndarray | None = None  # (C, h, w) low-resolution picture, when it could be read cheaply

    @property
    def planes(self) -> int:
        """Focal planes of a brightfield stack: its z-planes, or its channels when it has no z axis."""
        return self.n_planes if self.n_planes > 1 else self.n_channels

    def side_um(self) -> float | None:
        """The shorter side in µm (None without a pixel size)."""
        return min(self.height, self.width) * self.pixel_size_um if self.pixel_size_um else None

    def has_dna_channel(self) -> bool:
        """Whether a channel is named after a DNA stain (DAPI, Hoechst)."""
        return any(c.strip().lower() in DNA_CHANNELS for c in self.channels)


def image_facts(name: str, path: str | Path, cache_dir: str | Path | None = None,
                metadata: Mapping[str, Any] | None = None) -> ImageFacts:
    """Read the facts of an image file: header, and the overview when the file (or cache) has a small level.

    ``metadata`` (the project's ``pixel_size_um`` and ``channel_names``, app.core.project_edit.entry_metadata)
    wins over the file's, as it does in the runs; channel names only when their count matches.
    """
    from app.core.pyramid import open_pyramid

    metadata = metadata or {}
    with open_pyramid(path, cache_dir) as pyramid:
        level = pyramid.overview_level(OVERVIEW_MAX_PX)
        overview = pyramid.read(level) if level is not None else None
        channels = tuple(pyramid.channel_names)
        given = tuple(metadata.get("channel_names") or ())
        if given and len(given) == pyramid.n_channels:
            channels = given
        return ImageFacts(name=name, height=pyramid.height, width=pyramid.width, n_channels=pyramid.n_channels,
                          n_planes=pyramid.n_planes, channels=channels,
                          pixel_size_um=metadata.get("pixel_size_um") or pyramid.pixel_size_um, overview=overview)


def image_kind(facts: ImageFacts) -> str:
    """``brightfield-stack`` (several focal planes), ``section`` (large, or a DNA stain among several
    channels) or ``fluorescence`` (a small image of nuclei or cells)."""
    if facts.n_planes > 1:
        return "brightfield-stack"
    large = max(facts.height, facts.width) >= SECTION_MIN_PX
    if large or (facts.n_channels > 1 and facts.has_dna_channel()):
        return "section"
    return "fluorescence"


def suggest_pipeline(facts: Iterable[ImageFacts], specs: Mapping[str, Any]) -> str | None:
    """The pipeline to offer first for these images: the one whose first declared image kind is the
    images' most common kind (ties: the earliest title), or None when none fits."""
    kinds = Counter(image_kind(f) for f in facts)
    for kind, _count in kinds.most_common():
        fitting = sorted((spec.title, name) for name, spec in specs.items()
                         if tuple(getattr(spec, "image_kinds", ()) or ())[:1] == (kind,))
        if fitting:
            return fitting[0][1]
    return None


def refusals(pipeline: str, facts: Iterable[ImageFacts], params: Any = None,
             models: Mapping[str, str] | None = None) -> list[str]:
    """One line per image that ``pipeline`` cannot analyse (empty when the run may start)."""
    check = _CHECKS.get(pipeline)
    if check is None:
        return []
    out = []
    for item in facts:
        reason = check(item, params, dict(models or {}))
        if reason:
            out.append(f"{item.name}: {reason}")
    return out


# ------------------------------------------------------------------------------------- the rules


def _stagetool(facts: ImageFacts, params: Any, _models: dict[str, str]) -> str | None:
    if facts.n_planes > 1:
        return f"a z-stack of {facts.n_planes} planes, not a testis section (try Brightfield)"
    side = facts.side_um()
    if side is None:
        return "no pixel size; Stagetool measures tubules in µm (set it: File > Image > Pixel size and channels)"
    if side < TUBULE_DIAMETER_UM:
        return (f"{facts.width} x {facts.height} px ({side:.0f} µm across) is smaller than one seminiferous "
                f"tubule (~{TUBULE_DIAMETER_UM:.0f} µm): not a testis section (try Kaizen)")
    dapi = _channel_index(facts, getattr(params, "dapi", "0"))
    if isinstance(dapi, str):
        return dapi
    for antibody in _antibodies(params):
        where = _channel_index(facts, antibody.channel)
        if isinstance(where, str):
            return f"antibody {antibody.name}: {where}"
    if facts.overview is not None and _tissue_fraction(facts.overview[min(dapi, len(facts.overview) - 1)]) \
            < MIN_TISSUE_FRACTION:
        return "no tissue found on the DAPI channel (an empty or blank image)"
    return None


def _brightfield(facts: ImageFacts, _params: Any, models: dict[str, str]) -> str | None:
    card = _card(models.get("brightfield"))
    if card is None:
        return None if facts.planes > 1 else "one plane only; Brightfield needs the focal planes of a z-stack"
    planes = (card.get("extra") or {}).get("planes") or {}
    wanted = {int(card.get("input_channels") or 0)}
    if planes:
        wanted = {int(planes.get("n_stack", 0)), len(planes.get("indices", []))}
    wanted.discard(0)
    if wanted and facts.planes not in wanted:
        need = " or ".join(str(n) for n in sorted(wanted))
        return (f"{facts.planes} plane(s), but model {card.get('name', '?')} was trained on {need}-plane "
                "brightfield stacks")
    return None


_CHECKS = {"stagetool": _stagetool, "brightfield": _brightfield}


def _channel_index(facts: ImageFacts, channel: Any) -> int | str:
    """A channel given by name or 0-based index as its index, or the one-line reason it is not there."""
    text = str(channel).strip()
    listing = ", ".join(facts.channels) or f"{facts.n_channels} unnamed"
    if text.isdigit():
        index = int(text)
        return index if index < facts.n_channels else f"no channel {index} (channels: {listing})"
    names = [c.strip().lower() for c in facts.channels]
    if text.lower() in names:
        return names.index(text.lower())
    return f"no channel {text!r} (channels: {listing})"


def _antibodies(params: Any) -> list[Any]:
    """The run's antibody channels (parsed; a malformed entry raises UserError before any image is read)."""
    if params is None or not hasattr(params, "antibody_list"):
        return []
    return list(params.antibody_list())


def _tissue_fraction(channel: np.ndarray) -> float:
    """Share of an overview that holds tissue (Stagetool's own mask; a flat picture has none)."""
    from app.pipelines.stagetool.predict import tissue_mask

    channel = np.asarray(channel, np.float32)
    if channel.size == 0 or float(np.ptp(channel)) == 0.0:
        return 0.0
    return float(tissue_mask(channel).mean())


def _card(model: str | None) -> dict[str, Any] | None:
    """A model folder's card.json (None when no folder or no card is given)."""
    if not model:
        return None
    path = Path(model) / "card.json"
    try:
        return json.loads(path.read_text()) if path.is_file() else None
    except (OSError, ValueError):
        return None
