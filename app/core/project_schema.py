"""The project.json schema: names usable as file names, one image entry, migrations of older files.

Split from :mod:`app.core.project` (the Project class) and :mod:`app.core.runs` (run folders) so each
stays readable; ``project.json`` carries a ``schema_version`` and older files are migrated step by
step through :data:`MIGRATIONS`.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from app.core.errors import ProjectError

SCHEMA_VERSION = 1
PROJECT_FILE = "project.json"
IMAGES_DIR, ANNOTATIONS_DIR, RUNS_DIR, REPORTS_DIR = "images", "annotations", "runs", "reports"
SUBFOLDERS = (IMAGES_DIR, ANNOTATIONS_DIR, RUNS_DIR, REPORTS_DIR)
MODES = ("copy", "link")
# Multi-part image suffixes removed when an image name is derived from its file name.
_LONG_SUFFIXES = (".ome.tiff", ".ome.tif", ".ome.btf")
_BAD_NAME_CHARS = re.compile(r'[\\/:*?"<>|\x00-\x1f]')


def now_iso() -> str:
    """Local time with its UTC offset, to the second (unambiguous and readable)."""
    return datetime.now().astimezone().isoformat(timespec="seconds")


def check_name(name: str, what: str = "image name") -> str:
    """Refuse names that cannot be used as a file name on every platform (they name output files)."""
    if not isinstance(name, str) or not name.strip() or name in (".", "..") or _BAD_NAME_CHARS.search(name):
        raise ProjectError(f"{what} {name!r} is not usable: it must be a non-empty file name "
                           "without / \\ : * ? \" < > |")
    return name


def safe_name(text: str) -> str:
    """``text`` with characters that are not allowed in file names replaced by ``_``."""
    cleaned = _BAD_NAME_CHARS.sub("_", text).strip()
    return cleaned if cleaned not in ("", ".", "..") else "image"


def split_image_name(filename: str) -> tuple[str, str]:
    """Split a file name into (name, suffix), treating ``.ome.tif`` and the like as one suffix."""
    lower = filename.lower()
    for suffix in _LONG_SUFFIXES:
        if lower.endswith(suffix) and len(filename) > len(suffix):
            return filename[: -len(suffix)], filename[-len(suffix):]
    path = Path(filename)
    return path.stem, path.suffix


def unique_name(base: str, taken: Callable[[str], bool]) -> str:
    """``base``, or ``base_2``, ``base_3`` ... the first that ``taken`` refuses."""
    candidate, n = base, 1
    while taken(candidate):
        n += 1
        candidate = f"{base}_{n}"
    return candidate


# --------------------------------------------------------------------------------------- images


@dataclass
class ImageEntry:
    """One image of the project as recorded in project.json.

    ``path`` is relative to the project folder (posix separators) for copies and for files inside
    the project, absolute for linked files elsewhere.
    """

    name: str
    path: str
    mode: str
    channels: list[str] = field(default_factory=list)
    pixel_size_um: float | None = None
    group: str | None = None
    added: str = ""

    def to_dict(self) -> dict[str, Any]:
        """The JSON form stored in project.json."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str) -> ImageEntry:
        """Read an entry; ``where`` names it in the error message if a field is missing or wrong."""
        if not isinstance(data, Mapping):
            raise ProjectError(f"{where} is not an object")
        missing = [key for key in ("name", "path", "mode") if key not in data]
        if missing:
            raise ProjectError(f"{where} has no {', '.join(repr(m) for m in missing)}")
        if data["mode"] not in MODES:
            raise ProjectError(f"{where} has mode {data['mode']!r}; expected 'copy' or 'link'")
        known = {f.name for f in dataclasses.fields(cls)}
        values = {key: value for key, value in data.items() if key in known}
        for key, expected, check in _ENTRY_TYPES:
            if key in values and not check(values[key]):
                raise ProjectError(f"{where} ({values['name'] if isinstance(values['name'], str) else '?'}): "
                                   f"{key!r} must be {expected}, not {values[key]!r}; fix project.json by hand")
        values["channels"] = list(values.get("channels") or [])
        if values.get("pixel_size_um") is not None:
            size = float(values["pixel_size_um"])
            # older versions stored tifffile's 1 pixel-per-inch fallback (25,400 µm) as a calibration
            values["pixel_size_um"] = size if size <= MAX_PIXEL_SIZE_UM else None
        return cls(**values)


MAX_PIXEL_SIZE_UM = 1000.0
"""Largest pixel size (µm) a project keeps; larger ones read from project.json count as unknown."""


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


_ENTRY_TYPES: tuple[tuple[str, str, Callable[[Any], bool]], ...] = (
    ("name", "a non-empty string", lambda v: isinstance(v, str) and bool(v.strip())),
    ("path", "a non-empty string (a file path)", lambda v: isinstance(v, str) and bool(v.strip())),
    ("channels", "a list of channel names (strings)",
     lambda v: v is None or (isinstance(v, list) and all(isinstance(c, str) for c in v))),
    ("pixel_size_um", "a positive number or null",
     lambda v: v is None or (_is_number(v) and 0 < v < float("inf"))),
    ("group", "a string or null", lambda v: v is None or isinstance(v, str)),
    ("added", "a string", lambda v: isinstance(v, str)),
)
"""project.json image fields that must have the right JSON type: (field, what it must be, check).

A wrong type is refused rather than coerced: ``str("DAPI")`` as a channel list would become D,A,P,I."""


# ----------------------------------------------------------------------------------- migrations


def _migrate_0_to_1(data: dict[str, Any]) -> dict[str, Any]:
    """Version 0 (prototype): images as {file, channels, pixel_size}, all linked; 'version' for the app."""
    images, taken = [], set()
    for old in data.get("images", []):
        name = unique_name(split_image_name(Path(old["file"]).name)[0], lambda n: n.lower() in taken)
        taken.add(name.lower())
        images.append({
            "name": name, "path": old["file"], "mode": "link",
            "channels": list(old.get("channels", [])), "pixel_size_um": old.get("pixel_size"),
            "group": old.get("group"), "added": data.get("created", ""),
        })
    return {
        "schema_version": 1, "name": data.get("name", ""), "created": data.get("created", ""),
        "app_version": data.get("version", ""), "images": images, "settings": data.get("settings", {}),
    }


MIGRATIONS: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {0: _migrate_0_to_1}
"""``MIGRATIONS[n]`` turns a project.json dict of schema n into schema n + 1."""


def migrate(data: dict[str, Any], source: Path) -> dict[str, Any]:
    """Bring a project.json dict up to :data:`SCHEMA_VERSION` through :data:`MIGRATIONS`."""
    version = data["schema_version"]
    while version < SCHEMA_VERSION:
        step = MIGRATIONS.get(version)
        if step is None:
            raise ProjectError(f"{source}: this app cannot upgrade a project of schema {version}")
        try:
            data = step(dict(data))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ProjectError(f"{source}: cannot upgrade from schema {version}: {exc!r}") from exc
        version += 1
        data["schema_version"] = version
    return data


def parse_project_json(raw: bytes, path: Path) -> dict[str, Any]:
    """Parse and check the envelope of project.json; anything wrong raises ProjectError naming the file."""
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ProjectError(f"{path} is corrupt (not UTF-8 text); restore it from a backup") from exc
    except json.JSONDecodeError as exc:
        raise ProjectError(f"{path} is corrupt (invalid JSON at line {exc.lineno}, column {exc.colno}: "
                           f"{exc.msg}); restore it from a backup or fix it by hand") from exc
    if not isinstance(data, dict):
        raise ProjectError(f"{path} is corrupt: expected a JSON object, found {type(data).__name__}")
    version = data.get("schema_version")
    if isinstance(version, bool) or not isinstance(version, int):
        raise ProjectError(f"{path} is not a Stagescope project file (no integer 'schema_version')")
    if version > SCHEMA_VERSION:
        raise ProjectError(f"{path} was written by a newer Stagescope (project schema {version}; this app "
                           f"reads up to {SCHEMA_VERSION}); update Stagescope to open it")
    if version < 0:
        raise ProjectError(f"{path} has an invalid schema_version {version}")
    return data
