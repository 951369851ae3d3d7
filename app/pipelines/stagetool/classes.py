"""Stagetool class names (tubule stages, cell types, antibody markers) and which markers light which cells.

The names are shared by the models, the annotation files, the reports and the phantoms, so they are
defined once here.  The marker table follows the thesis (chapter 3, "Stagetool-derived antigen
expression profiles", Figure 19) and the literature it cites: SOX9, AR and USF1 in Sertoli cells,
SALL4 in spermatogonia, SCP3 in spermatocytes, CREM in round spermatids, PNA in round and elongating
spermatids; AR high in early-to-mid stages and lower in IX-XII; USF1 also in a small subset of
spermatogonia.
"""

from __future__ import annotations

from collections.abc import Mapping

STAGES: tuple[str, ...] = ("I-V", "VI-VIII", "IX", "X-XI", "XII")
CELL_TYPES: tuple[str, ...] = (
    "Sertoli", "Spg", "Spc prePach", "Spc Pach", "m2m", "Spc sec", "round spermatid",
    "early elongating spermatid", "late elongating spermatid",
)
MARKERS: tuple[str, ...] = ("SOX9", "SALL4", "SCP3", "CREM", "PNA", "AR", "USF1")

# One palette for stages and cell types together (the viewer draws both in one view, the legend lists
# both): every pair differs by CIEDE2000 >= 18 in normal vision and >= 11 under simulated
# deuteranopia (Machado et al. 2009, severity 1.0, in linear RGB), also against the excluded-tubule
# grey and the white selection outline; all have L* >= 52 and chroma >= 30, so they stand out on a
# dark fluorescence image.  Chosen by a max-min search over a 15-step sRGB grid;
# tests/test_gui_look.py recomputes the distances.  Stages run blue -> green -> yellow -> orange
# -> purple as before, so the order I-V .. XII still reads as a progression; the most numerous cells
# (early elongating spermatids) get pale yellow, which stands out on the blue DAPI channel.
STAGE_COLOURS: Mapping[str, str] = {
    "I-V": "#a5a5ff", "VI-VIII": "#00b45a", "IX": "#ffc300", "X-XI": "#ff5a00", "XII": "#d200ff",
}
CELL_TYPE_COLOURS: Mapping[str, str] = {
    "Sertoli": "#ffb496", "Spg": "#00e1e1", "Spc prePach": "#698700", "Spc Pach": "#c35a78", "m2m": "#1e87a5",
    "Spc sec": "#009687", "round spermatid": "#ffa5c3", "early elongating spermatid": "#ffff96",
    "late elongating spermatid": "#c3ffd2",
}
CLASS_COLOURS: Mapping[str, str] = {**STAGE_COLOURS, **CELL_TYPE_COLOURS}
EXCLUDED_COLOUR = "#9e9e9e"  # excluded tubules (drawn dashed)
SELECTION_COLOUR = "#ffffff"  # the outline of the selected object

SPERMATOCYTES: tuple[str, ...] = ("Spc prePach", "Spc Pach", "m2m", "Spc sec")
SPERMATIDS: tuple[str, ...] = ("round spermatid", "early elongating spermatid", "late elongating spermatid")

# Relative expression level (1 = the marker's brightest cells) of each marker in the cell types it
# lights; types not listed are negative.  Levels inside a marker's list are plausible relative
# intensities, not measurements: SCP3 is strongest on pachytene synaptonemal complexes and weaker
# before (preleptotene-zygotene) and after (metaphase remnants, secondary spermatocytes); PNA marks
# the acrosome, which is still small in round spermatids.
MARKER_LEVELS: Mapping[str, Mapping[str, float]] = {
    "SOX9": {"Sertoli": 1.0},
    "SALL4": {"Spg": 1.0},
    "SCP3": {"Spc prePach": 0.6, "Spc Pach": 1.0, "m2m": 0.7, "Spc sec": 0.45},
    "CREM": {"round spermatid": 1.0},
    "PNA": {"round spermatid": 0.7, "early elongating spermatid": 1.0, "late elongating spermatid": 0.9},
    "AR": {"Sertoli": 1.0},
    # USF1: the thesis (Figure 19 and its text, after Faisal et al. 2019) reports uniform expression in
    # Sertoli cells at every stage and in a small subset of (undifferentiated / early differentiating)
    # spermatogonia; we model that subset as 30 % of spermatogonia at a somewhat lower level.
    "USF1": {"Sertoli": 0.8, "Spg": 0.6},
}

# Stage-dependent factor on a marker's level (default 1): AR is high in Sertoli cells of early-to-mid
# stages and lower in late stages IX-XII.
MARKER_STAGE_FACTOR: Mapping[str, Mapping[str, float]] = {
    "AR": {"I-V": 1.0, "VI-VIII": 0.9, "IX": 0.35, "X-XI": 0.3, "XII": 0.3},
}

# Fraction of the cells of a lit type that express the marker at all (default DEFAULT_POSITIVE_FRACTION).
MARKER_POSITIVE_FRACTION: Mapping[str, Mapping[str, float]] = {
    "USF1": {"Spg": 0.3},
}
DEFAULT_POSITIVE_FRACTION = 0.95

MARKER_TARGETS: Mapping[str, tuple[str, ...]] = {m: tuple(levels) for m, levels in MARKER_LEVELS.items()}


def stage_index(stage: str) -> int:
    """Index of a stage name in :data:`STAGES` (a ValueError names the known stages)."""
    try:
        return STAGES.index(stage)
    except ValueError:
        raise ValueError(f"unknown stage {stage!r}; known: {', '.join(STAGES)}") from None


def cell_type_index(cell_type: str) -> int:
    """Index of a cell type name in :data:`CELL_TYPES` (a ValueError names the known types)."""
    try:
        return CELL_TYPES.index(cell_type)
    except ValueError:
        raise ValueError(f"unknown cell type {cell_type!r}; known: {', '.join(CELL_TYPES)}") from None


def _check_marker(marker: str) -> None:
    if marker not in MARKER_LEVELS:
        raise ValueError(f"unknown marker {marker!r}; known: {', '.join(MARKERS)}")


def marker_level(marker: str, cell_type: str, stage: str | None = None) -> float:
    """Expected relative expression of ``marker`` in a cell of ``cell_type`` at ``stage`` (0 = negative)."""
    _check_marker(marker)
    level = MARKER_LEVELS[marker].get(cell_type, 0.0)
    if stage is not None:
        level *= MARKER_STAGE_FACTOR.get(marker, {}).get(stage, 1.0)
    return level


def positive_fraction(marker: str, cell_type: str) -> float:
    """Fraction of cells of ``cell_type`` expressing ``marker`` (0 for types the marker does not light)."""
    _check_marker(marker)
    if cell_type not in MARKER_LEVELS[marker]:
        return 0.0
    return MARKER_POSITIVE_FRACTION.get(marker, {}).get(cell_type, DEFAULT_POSITIVE_FRACTION)
