"""Normalised axes: how a file's native axes (T, C, Z, Q, I, S, Y, X ...) map onto C, Z, Y, X.

Shared by every reader (TIFF, Pillow, the libraries of :mod:`app.core.readers`) so that one rule
decides which axes become channels or z-planes and which files are refused (time series, ...).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from app.core.errors import ImageError


@dataclass(frozen=True)
class Layout:
    """How the file's native axes map onto the normalised ones."""

    roles: tuple[str, ...]  # per native axis: "C", "Z", "Y", "X" or "" (length 1, index 0)
    channel_indices: tuple[int, ...]  # native indices kept along the C axis (alpha dropped)
    axes: str  # normalised axes
    shape: tuple[int, ...]  # normalised shape (level 0)



def map_axes(path: Path, axes: str, shape: tuple[int, ...], override: str | None,
              rgb: bool, alpha: bool) -> Layout:
    """Map native axes to roles C/Z/Y/X; ImageError for time series and other unsupported axes."""
    if len(axes) != len(shape) or "Y" not in axes or "X" not in axes:
        raise ImageError(f"{path}: unsupported image layout: axes {axes!r} with shape {shape}")
    roles: list[str] = []
    guesses: list[int] = []
    for i, (axis, size) in enumerate(zip(axes, shape)):
        if axis in "YX":
            roles.append(axis)
        elif size == 1:
            roles.append("")
        elif axis in "CZ":
            roles.append(axis)
        elif axis == "S":
            roles.append("C")
        elif axis in "QI" or override is not None:
            roles.append("?")
            guesses.append(i)
        elif axis == "T":
            raise ImageError(f"{path}: a time series ({size} time points) is not supported; "
                             "export one time point")
        else:
            raise ImageError(f"{path}: unsupported axis {axis!r} of length {size} (axes {axes!r}, "
                             f"shape {shape}); export an image with only channels, z-planes, Y and X")
    if override is not None:
        roles = _apply_override(path, axes, shape, roles, override)
    else:
        for i in guesses:
            free = [r for r in "CZ" if r not in roles]
            if not free:
                raise ImageError(f"{path}: cannot tell what axes {axes!r} {shape} are; "
                                 "give the axes explicitly (e.g. 'CZYX')")
            roles[i] = free[0]
    for axis in "CZ":
        if roles.count(axis) > 1:
            raise ImageError(f"{path}: two axes would be {'channels' if axis == 'C' else 'z-planes'} "
                             f"(axes {axes!r}, shape {shape}); this layout is not supported")
    if roles.index("Y") > roles.index("X"):
        raise ImageError(f"{path}: transposed images (X before Y) are not supported")
    channel_indices: tuple[int, ...] = (0,)
    if "C" in roles:
        n = shape[roles.index("C")]
        if axes[roles.index("C")] == "S" and alpha and n in (2, 4):
            n -= 1  # drop the alpha sample
        channel_indices = tuple(range(n))
    norm_axes = "".join(a for a in "CZYX" if a in roles)
    norm_shape = tuple(len(channel_indices) if a == "C" else shape[roles.index(a)] for a in norm_axes)
    return Layout(roles=tuple(roles), channel_indices=channel_indices, axes=norm_axes, shape=norm_shape)


def _apply_override(path: Path, axes: str, shape: tuple[int, ...], roles: list[str], override: str) -> list[str]:
    """Assign the caller's axes string to the non-singleton axes (in file order)."""
    override = override.upper()
    wanted = [a for a in override if a not in "YX"]
    open_slots = [i for i, r in enumerate(roles) if r not in ("", "Y", "X")]
    if set(override) - set("CZYX") or len(set(override)) != len(override) or len(wanted) != len(open_slots):
        raise ImageError(f"{path}: axes {override!r} do not fit the file's axes {axes!r} with shape "
                         f"{shape}; name each non-singleton axis once, from C, Z, Y, X")
    for slot, role in zip(open_slots, wanted):
        roles[slot] = role
    return roles


def axis_length(layout: Layout, axis: str) -> int:
    """Length of a normalised axis (1 when absent)."""
    return layout.shape[layout.axes.index(axis)] if axis in layout.axes else 1
