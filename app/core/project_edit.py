"""Editing a project's image entries: relinking moved raw files, and pixel size / channel names the file lacks.

Raw data moves (to a server, another disk) while the project keeps absolute links to it.
:func:`relink` finds every missing image from one new location: a folder (each missing file is
looked for under it by the tail of its old path) or one located file (the other missing files
are expected at the same place relative to it).  :func:`set_image_metadata` stores a pixel size
and channel names in project.json for a plain TIFF without them; :func:`apply_entry_metadata`
makes those values win over the file's wherever a project image is analysed or shown.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.core.errors import ProjectError
from app.core.project_schema import MAX_PIXEL_SIZE_UM


@dataclass
class RelinkResult:
    """What :func:`relink` did: image name -> new path, and the images still missing."""

    relinked: dict[str, Path] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)


def missing_images(project: Any) -> list[str]:
    """Names of the project's images whose file is not where project.json says."""
    return [e.name for e in project.images() if not project.image_path(e.name).is_file()]


def _same_kind(old: Path, new: Path) -> bool:
    return old.suffix.lower() == new.suffix.lower()


def _prefix_pairs(old: Path, new: Path) -> list[tuple[Path, Path]]:
    """(old folder, new folder) pairs under which ``old`` and ``new`` end the same way, deepest match first."""
    old_parts, new_parts = old.parts, new.parts
    common = 0
    while common < min(len(old_parts), len(new_parts)) - 1 and \
            old_parts[-1 - common].lower() == new_parts[-1 - common].lower():
        common += 1
    pairs = []
    for tail in range(common, 0, -1):
        pairs.append((Path(*old_parts[:-tail]), Path(*new_parts[:-tail])))
    if not pairs:  # the located file was renamed: only its folder tells where the others went
        pairs.append((old.parent, new.parent))
    return pairs


def _candidate_under_root(old: Path, root: Path) -> Path | None:
    """``old``'s file under ``root`` by the longest tail of its old path that exists there."""
    parts = old.parts
    for start in range(1, len(parts)):
        candidate = root.joinpath(*parts[start:])
        if candidate.is_file():
            return candidate
    return None


def relink(project: Any, location: str | os.PathLike[str], image: str | None = None) -> RelinkResult:
    """Point missing images at their new place; ``location`` is a folder or the new file of one image.

    With a file, ``image`` names which missing image it is (default: the missing image with the
    same file name).  Images found are saved in project.json as they are found; images that still
    exist are never touched.
    """
    location = Path(os.path.abspath(Path(location).expanduser()))
    missing = missing_images(project)
    result = RelinkResult()
    if not missing:
        return result
    old_paths = {name: project.image_path(name) for name in missing}
    if location.is_file():
        if image is None:
            same = [n for n in missing if old_paths[n].name.lower() == location.name.lower()]
            if len(same) != 1:
                raise ProjectError(f"{location.name} is not the file of exactly one missing image "
                                   f"({', '.join(same) or 'none has that file name'}); say which image it is")
            image = same[0]
        if image not in old_paths:
            raise ProjectError(f"image {image!r} is not missing (or not in the project); nothing to relink")
        pairs = _prefix_pairs(old_paths[image], location)
        found = {image: location}
        for name, old in old_paths.items():
            if name == image:
                continue
            for old_root, new_root in pairs:
                try:
                    candidate = new_root / old.relative_to(old_root)
                except ValueError:
                    continue
                if candidate.is_file() and _same_kind(old, candidate):
                    found[name] = candidate
                    break
    elif location.is_dir():
        found = {}
        for name, old in old_paths.items():
            candidate = _candidate_under_root(old, location)
            if candidate is not None and _same_kind(old, candidate):
                found[name] = candidate
    else:
        raise ProjectError(f"{location} does not exist; give the folder the raw data moved to, or one moved file")
    for name, path in found.items():
        project.update_image(name, path=_stored(project, path))
        result.relinked[name] = path
    result.missing = [n for n in missing if n not in found]
    return result


def _stored(project: Any, path: Path) -> str:
    """Relative posix path inside the project folder, else absolute (as the project stores links)."""
    try:
        return path.relative_to(Path(project.folder)).as_posix()
    except ValueError:
        return str(path)


def parse_channels(text: str | Sequence[str] | None) -> list[str] | None:
    """``"DAPI,SOX9"`` -> ``["DAPI", "SOX9"]``; None stays None; empty names are refused."""
    if text is None:
        return None
    names = [n.strip() for n in (text.split(",") if isinstance(text, str) else text)]
    if not names or any(not n for n in names):
        raise ProjectError(f"channel names must be a comma-separated list without empty names, not {text!r}")
    doubles = sorted({n for n in names if names.count(n) > 1})
    if doubles:
        raise ProjectError(f"channel name used twice: {', '.join(doubles)}")
    return names


def set_image_metadata(project: Any, name: str, pixel_size_um: float | None = None,
                       channels: str | Sequence[str] | None = None) -> Any:
    """Store a pixel size (µm) and/or channel names for image ``name`` in project.json; returns its entry.

    The channel count must match the file's, so an antibody named by channel reads the right plane.
    """
    changes: dict[str, Any] = {}
    if pixel_size_um is not None:
        size = float(pixel_size_um)
        if not math.isfinite(size) or size <= 0 or size > MAX_PIXEL_SIZE_UM:
            raise ProjectError(f"pixel size must be a positive number of micrometres (at most {MAX_PIXEL_SIZE_UM:g}), "
                               f"not {pixel_size_um!r}")
        changes["pixel_size_um"] = size
    names = parse_channels(channels)
    if names is not None:
        path = project.image_path(name)
        if path.is_file():
            from app.core.images import open_image

            with open_image(path) as image:
                count = image.info.n_channels
            if len(names) != count:
                raise ProjectError(f"{name} has {count} channel(s) but {len(names)} name(s) were given "
                                   f"({', '.join(names)})")
        changes["channels"] = names
    if not changes:
        raise ProjectError("nothing to set: give --pixel-size and/or --channels")
    return project.update_image(name, **changes)


def entry_metadata(project: Any, name: str) -> dict[str, Any]:
    """The pixel size and channel names project.json holds for ``name`` (what wins over the file's)."""
    entry = project.image(name)
    out: dict[str, Any] = {}
    if entry.pixel_size_um:
        out["pixel_size_um"] = float(entry.pixel_size_um)
    if entry.channels:
        out["channel_names"] = list(entry.channels)
    return out


def apply_entry_metadata(image: Any, metadata: dict[str, Any] | None) -> Any:
    """Let the project's pixel size and channel names replace the file's in ``image.info`` (returns ``image``).

    Channel names are used only when their count matches the image's channels.
    """
    if not metadata:
        return image
    info = image.info
    changes: dict[str, Any] = {}
    if metadata.get("pixel_size_um"):
        changes["pixel_size_um"] = float(metadata["pixel_size_um"])
    names = metadata.get("channel_names")
    if names and len(names) == info.n_channels and tuple(names) != tuple(info.channel_names or ()):
        changes["channel_names"] = tuple(names)
    if changes:
        image.info = dataclasses.replace(info, **changes)
    return image
