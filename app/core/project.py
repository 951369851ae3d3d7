"""A project folder on disk: its images, annotations, runs and reports, written atomically.

Layout::

    MyProject/
      project.json       schema_version, name, created, app_version, images[], settings{}
      images/            copies of images added with mode="copy"
      annotations/       COCO JSON per image
      runs/<run-id>/     run.json (pipeline, parameters, models, status, per-image results) + outputs
      reports/           Excel workbooks

Raw images are read-only to the app: a linked image is only ever opened for reading, a copy is
made with ``shutil.copy2``, and removing an image deletes at most its copy inside ``images/``.
Every write goes through :mod:`app.core.atomic`, so a crash loses at most the file being written;
a run records each finished image so a restarted batch skips it.

``project.json`` carries a ``schema_version``; older files are migrated step by step through
:data:`MIGRATIONS` (the original is kept as ``project.json.bak-v<N>``), newer or corrupt files are
refused with a :class:`ProjectError` and left untouched.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import secrets
import shutil
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from app import __version__
from app.core.atomic import (
    _fsync_dir, _fsync_file, atomic_path, atomic_write_bytes, atomic_write_json, atomic_write_text, read_json,
    temp_path_for,
)
from app.core.errors import ImageError, ProjectError
from app.core.locks import hold_project_lock, project_lock

__all__ = [
    "SCHEMA_VERSION", "MIGRATIONS", "PROJECT_FILE", "RUN_FILE", "RUN_STATUSES",
    "ImageEntry", "Project", "Run", "ProjectError", "locked_project",
    "atomic_path", "atomic_write_bytes", "atomic_write_text", "atomic_write_json",
]

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
PROJECT_FILE = "project.json"
RUN_FILE = "run.json"
RUN_SCHEMA_VERSION = 1
IMAGES_DIR, ANNOTATIONS_DIR, RUNS_DIR, REPORTS_DIR = "images", "annotations", "runs", "reports"
SUBFOLDERS = (IMAGES_DIR, ANNOTATIONS_DIR, RUNS_DIR, REPORTS_DIR)
MODES = ("copy", "link")
RUN_STATUSES = ("running", "finished", "failed", "cancelled")
# Multi-part image suffixes removed when an image name is derived from its file name.
_LONG_SUFFIXES = (".ome.tiff", ".ome.tif", ".ome.btf")
_BAD_NAME_CHARS = re.compile(r'[\\/:*?"<>|\x00-\x1f]')


def now_iso() -> str:
    """Local time with its UTC offset, to the second (unambiguous and readable)."""
    return datetime.now().astimezone().isoformat(timespec="seconds")


def _jsonable(value: Any) -> Any:
    """Dataclasses (a pipeline's parameters) as dicts; everything else unchanged."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    return value


def _model_refs(models: Any) -> Any:
    """Model ids for run.json: objects with ``model_id()`` (a ModelCard) become its short dict."""
    if models is None:
        return []
    if hasattr(models, "model_id"):
        return [models.model_id()]
    if isinstance(models, Mapping):
        return {key: _model_refs(value)[0] if hasattr(value, "model_id") else value
                for key, value in models.items()}
    if isinstance(models, (list, tuple)):
        return [m.model_id() if hasattr(m, "model_id") else m for m in models]
    return models


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


def _unique(base: str, taken: Callable[[str], bool]) -> str:
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
            values["pixel_size_um"] = float(values["pixel_size_um"])
        return cls(**values)


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
        name = _unique(split_image_name(Path(old["file"]).name)[0], lambda n: n.lower() in taken)
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


# ---------------------------------------------------------------------------------------- runs


def new_run_id() -> str:
    """A unique id that sorts by start time: UTC ``YYYYmmdd-HHMMSS-mmm`` + 6 random hex digits."""
    now = datetime.now(timezone.utc)
    return f"{now:%Y%m%d-%H%M%S}-{now.microsecond // 1000:03d}-{secrets.token_hex(3)}"


@dataclass
class Run:
    """One pipeline run in ``runs/<id>/``: what ran, with what, and which images are done.

    Outputs of an image are written (atomically) into :attr:`folder` first, then
    :meth:`mark_image_done` records them; a restarted batch asks :meth:`is_done` and skips.
    """

    folder: Path
    id: str
    pipeline: str
    parameters: dict[str, Any] = field(default_factory=dict)
    models: Any = field(default_factory=list)
    started: str = ""
    finished: str | None = None
    status: str = "running"
    app_version: str = __version__
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)

    @property
    def path(self) -> Path:
        """The run.json file."""
        return self.folder / RUN_FILE

    def to_dict(self) -> dict[str, Any]:
        """The JSON form stored in run.json."""
        return {
            "schema_version": RUN_SCHEMA_VERSION, "id": self.id, "pipeline": self.pipeline,
            "parameters": self.parameters, "models": self.models, "app_version": self.app_version,
            "started": self.started, "finished": self.finished, "status": self.status,
            "results": self.results, "failed": self.failed,
        }

    def save(self) -> None:
        """Write run.json atomically."""
        atomic_write_json(self.path, self.to_dict())

    @classmethod
    def load(cls, folder: str | os.PathLike[str]) -> Run:
        """Read ``folder/run.json``; a missing or corrupt file raises ProjectError naming it."""
        folder = Path(folder)
        path = folder / RUN_FILE
        data = read_json(path, ProjectError, "run file", missing=f"no run found: {path} does not exist")
        if not isinstance(data, dict) or "pipeline" not in data:
            raise ProjectError(f"run file {path} is not a Stagescope run (no 'pipeline')")
        version = data.get("schema_version", 1)
        if not isinstance(version, int) or version > RUN_SCHEMA_VERSION:
            raise ProjectError(f"run file {path} has schema {version!r}, newer than this app reads; "
                               "update Stagescope")
        return cls(
            folder=folder, id=data.get("id", folder.name), pipeline=data["pipeline"],
            parameters=data.get("parameters", {}), models=data.get("models", []),
            started=data.get("started", ""), finished=data.get("finished"),
            status=data.get("status", "running"), app_version=data.get("app_version", ""),
            results=data.get("results", {}), failed=data.get("failed", {}),
        )

    def image_dir(self, image_name: str) -> Path:
        """A folder for one image's outputs inside the run (created)."""
        folder = self.folder / check_name(image_name)
        folder.mkdir(parents=True, exist_ok=True)
        return folder

    def _relative(self, value: Any) -> Any:
        """Paths inside the run folder as relative posix strings, so the project can move."""
        if isinstance(value, os.PathLike):
            path = Path(value)
            try:
                return path.absolute().relative_to(self.folder.absolute()).as_posix()
            except ValueError:
                return os.fspath(path)
        if isinstance(value, Mapping):
            return {key: self._relative(item) for key, item in value.items()}
        if isinstance(value, (list, tuple)):
            return [self._relative(item) for item in value]
        return value

    def mark_image_done(self, image_name: str, outputs: Mapping[str, Any] | None = None,
                        source: Mapping[str, Any] | None = None) -> None:
        """Record that ``image_name`` is finished with its ``outputs`` (files, counts) and save.

        ``source``: the input's fingerprint (app.core.fingerprint), so a rerun sees a changed input.
        """
        self.results[image_name] = {"finished": now_iso(), "outputs": self._relative(dict(outputs or {}))}
        if source is not None:
            self.results[image_name]["source"] = dict(source)
        self.failed.pop(image_name, None)
        self.save()

    def mark_image_failed(self, image_name: str, message: str) -> None:
        """Record that ``image_name`` failed (it is retried on restart) and save."""
        self.results.pop(image_name, None)
        self.failed[image_name] = str(message)
        self.save()

    def is_done(self, image_name: str) -> bool:
        """Whether ``image_name`` finished in this run (a restarted batch skips it)."""
        return image_name in self.results

    def source_of(self, image_name: str) -> dict[str, Any] | None:
        """The input fingerprint recorded with a finished image (None when none was recorded)."""
        value = self.results.get(image_name, {}).get("source")
        return value if isinstance(value, dict) else None

    def output_path(self, image_name: str, key: str) -> Path | None:
        """Absolute path of a recorded output file of a finished image, or None if not recorded."""
        value = self.results.get(image_name, {}).get("outputs", {}).get(key)
        if not isinstance(value, str):
            return None
        return self.folder / value

    def finish(self, status: str = "finished") -> None:
        """Close the run with ``status`` (finished, failed or cancelled) and the time, and save."""
        if status not in RUN_STATUSES:
            raise ValueError(f"run status must be one of {RUN_STATUSES}, not {status!r}")
        self.status, self.finished = status, now_iso()
        self.save()

    def resume(self) -> None:
        """Mark a stopped run as running again (its done images stay done) and save."""
        self.status, self.finished = "running", None
        self.save()


# ------------------------------------------------------------------------------------- project


class Project:
    """An open project folder.  Create with :meth:`create`, open with :meth:`open`."""

    def __init__(self, folder: Path, data: dict[str, Any]) -> None:
        self.folder = Path(folder)
        self._lock = project_lock(self.folder)
        self._load_state(data)

    def _load_state(self, data: dict[str, Any]) -> None:
        """Take name, settings and images from a (migrated) project.json dict, checking their types."""
        for key in ("name", "created", "app_version"):
            if not isinstance(data.get(key, ""), str):
                raise ProjectError(f"{self.path} is invalid: {key!r} must be a string, not {data[key]!r}")
        self.name: str = data.get("name", "") or self.folder.name
        self.created: str = data.get("created", "")
        self.app_version: str = data.get("app_version", "")  # as read: the app that last wrote it
        settings = data.get("settings") or {}
        images = data.get("images", [])
        if not isinstance(settings, Mapping) or not isinstance(images, list):
            raise ProjectError(f"{self.path} is invalid: 'settings' must be an object and 'images' a list")
        entries = [ImageEntry.from_dict(item, f"{self.path}: images[{i}]") for i, item in enumerate(images)]
        names = [entry.name.lower() for entry in entries]
        doubles = sorted({entry.name for entry in entries if names.count(entry.name.lower()) > 1})
        if doubles:
            raise ProjectError(f"{self.path} is invalid: image names used twice: {', '.join(doubles)}")
        self.settings: dict[str, Any] = dict(settings)
        self._images = entries

    # -- opening and saving

    @property
    def root(self) -> Path:
        """The project folder (same as :attr:`folder`; the CLI and demo use this name)."""
        return self.folder

    @property
    def path(self) -> Path:
        """The project.json file."""
        return self.folder / PROJECT_FILE

    @classmethod
    def create(cls, folder: str | os.PathLike[str], name: str | None = None) -> Project:
        """Make a new project in ``folder`` (created if missing; an existing one must be empty)."""
        folder = Path(folder).expanduser().absolute()
        if (folder / PROJECT_FILE).exists():
            raise ProjectError(f"{folder} already holds a project; open it instead")
        if folder.exists() and not folder.is_dir():
            raise ProjectError(f"cannot create a project at {folder}: it is a file")
        if folder.is_dir() and any(folder.iterdir()):
            raise ProjectError(f"cannot create a project in {folder}: the folder is not empty "
                               "and is not a project; choose an empty or new folder")
        try:
            folder.mkdir(parents=True, exist_ok=True)
            for sub in SUBFOLDERS:
                (folder / sub).mkdir(exist_ok=True)
        except OSError as exc:
            raise ProjectError(f"cannot create a project in {folder}: {exc.strerror or exc}") from exc
        project = cls(folder, {"name": name or folder.name, "created": now_iso(), "app_version": __version__})
        with hold_project_lock(project._lock):
            if project.path.exists():  # another process created it meanwhile
                raise ProjectError(f"{folder} already holds a project; open it instead")
            project.save()
        return project

    @classmethod
    def open(cls, folder: str | os.PathLike[str]) -> Project:
        """Open the project in ``folder``, upgrading an older project.json (original kept as a backup)."""
        folder = Path(folder).expanduser().absolute()
        path = folder / PROJECT_FILE
        if not path.is_file():
            raise ProjectError(f"{folder} is not a Stagescope project (no {PROJECT_FILE})")
        raw = path.read_bytes()
        data = _parse_project_json(raw, path)
        version = data["schema_version"]
        if version < SCHEMA_VERSION:
            project = cls(folder, migrate(data, path))
            with project.locked():  # re-read under the lock: another process may have upgraded it
                if project._read_version() < SCHEMA_VERSION:
                    project._write_upgrade(path.read_bytes(), project._read_version())
        else:
            project = cls(folder, data)
        for sub in SUBFOLDERS:  # restore empty folders lost in a copy (git keeps none); read-only is fine
            try:
                (folder / sub).mkdir(exist_ok=True)
            except OSError:
                pass
        return project

    def _write_upgrade(self, original: bytes, old_version: int) -> None:
        """Keep the original bytes as project.json.bak-v<old> (never overwriting one), then save."""
        base = f"{PROJECT_FILE}.bak-v{old_version}"
        backup_name = _unique(base, lambda n: (self.folder / n).exists())
        try:
            atomic_write_bytes(self.folder / backup_name, original)
            self.save()
        except OSError as exc:
            raise ProjectError(f"cannot upgrade {self.path} (schema {old_version} to {SCHEMA_VERSION}): "
                               f"{exc.strerror or exc}") from exc
        log.info("upgraded %s from schema %d to %d; original kept as %s",
                 self.path, old_version, SCHEMA_VERSION, backup_name)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form stored in project.json."""
        return {
            "schema_version": SCHEMA_VERSION, "name": self.name, "created": self.created,
            "app_version": __version__,  # the app that last wrote the file
            "images": [entry.to_dict() for entry in self._images], "settings": self.settings,
        }

    def save(self) -> None:
        """Write project.json atomically, holding the project's lock.

        To change the project, prefer :meth:`locked` (or :func:`locked_project`): it re-reads the
        file first, so a change made by another process meanwhile is kept, not overwritten.
        """
        with hold_project_lock(self._lock):
            atomic_write_json(self.path, self.to_dict())

    @contextmanager
    def locked(self) -> Iterator[Project]:
        """Hold project.json's lock, re-read it, yield this project to change, and save it at the end.

        Every change of project.json is such a read-modify-write, so two processes (CLI and GUI, two
        ``project add``) never lose each other's changes.  Nothing is saved if the block raises.
        """
        with hold_project_lock(self._lock):
            self._reload()
            yield self
            self.save()

    def _read_version(self) -> int:
        """The schema_version of project.json as it is on disk now."""
        return _parse_project_json(self._read_raw(), self.path)["schema_version"]

    def _read_raw(self) -> bytes:
        try:
            return self.path.read_bytes()
        except OSError as exc:
            raise ProjectError(f"cannot read {self.path}: {exc.strerror or exc}") from exc

    def _reload(self) -> None:
        """Replace name, settings and images by what project.json holds now (migrated in memory if older)."""
        data = _parse_project_json(self._read_raw(), self.path)
        if data["schema_version"] < SCHEMA_VERSION:
            data = migrate(data, self.path)
        self._load_state(data)

    # -- folders

    @property
    def images_dir(self) -> Path:
        return self.folder / IMAGES_DIR

    @property
    def annotations_dir(self) -> Path:
        return self.folder / ANNOTATIONS_DIR

    @property
    def runs_dir(self) -> Path:
        return self.folder / RUNS_DIR

    @property
    def reports_dir(self) -> Path:
        return self.folder / REPORTS_DIR

    def annotation_path(self, image_name: str) -> Path:
        """Where the COCO JSON of an image lives (``annotations/<name>.json``); may not exist yet."""
        self.image(image_name)
        return self.annotations_dir / f"{image_name}.json"

    # -- images

    def images(self, group: str | None = None) -> list[ImageEntry]:
        """The project's images in the order added (copies), optionally only one group."""
        return [dataclasses.replace(e) for e in self._images if group is None or e.group == group]

    def image(self, name: str) -> ImageEntry:
        """The entry of image ``name``; an unknown name raises ProjectError listing some known ones."""
        for entry in self._images:
            if entry.name == name:
                return dataclasses.replace(entry)
        known = ", ".join(e.name for e in self._images[:10]) or "none"
        raise ProjectError(f"project {self.name!r} has no image named {name!r} (images: {known})")

    def image_path(self, name: str) -> Path:
        """Absolute path of image ``name`` (relative entries are resolved against the project folder)."""
        stored = Path(self.image(name).path)
        return stored if stored.is_absolute() else self.folder / stored

    def open_image(self, name: str) -> Any:
        """Open image ``name`` read-only with :func:`app.core.images.open_image`."""
        from app.core.images import open_image

        from app.core.formats import is_image_path, split_scene

        path = self.image_path(name)
        if not path.is_file() and not is_image_path(split_scene(path)[0]):
            raise ImageError(f"image {name!r} is missing: {path} not found (moved or deleted?)")
        return open_image(path)

    def _name_taken(self, name: str) -> bool:
        """Names are compared without case: they become file names on case-insensitive disks."""
        return any(e.name.lower() == name.lower() for e in self._images)

    def _stored_path(self, path: Path) -> str:
        """Relative posix path if ``path`` is inside the project folder, else the absolute path."""
        try:
            return path.relative_to(self.folder).as_posix()
        except ValueError:
            return str(path)

    def add_image(
        self,
        path: str | os.PathLike[str],
        mode: str = "link",
        group: str | None = None,
        name: str | None = None,
    ) -> ImageEntry:
        """Add an image by linking to it (default) or copying it into ``images/``; returns its entry.

        Channel names and pixel size are read from the file.  A derived name that is already used
        gets a suffix (``a_2``); an explicit ``name`` that is used, or a file already linked, is an
        error.
        """
        if mode not in MODES:
            raise ProjectError(f"image mode must be 'copy' or 'link', not {mode!r}")
        from app.core.formats import image_stem, is_image_path, split_scene

        source = Path(os.path.abspath(Path(path).expanduser()))
        file, scene = split_scene(source)
        if not source.is_file() and not is_image_path(file):
            raise ImageError(f"cannot add image: {source} is not a file")
        if mode == "copy" and (scene is not None or not file.is_file()):
            raise ProjectError(f"{source}: a scene of a multi-scene file or an OME-Zarr folder is linked, "
                               "not copied; add it without --copy")
        if name is not None:
            check_name(name)
        self._check_addable(source, mode, name)  # early, before a long copy; again under the lock
        channels, pixel_size = _read_image_metadata(source)
        base, suffix = split_image_name(source.name)
        if scene is not None or not source.is_file():
            base = image_stem(source)  # file.czi#scene-2 -> file_scene-2, sample.ome.zarr -> sample
        copied = None
        if mode == "copy":  # copied outside the lock (it may take a while), renamed into place inside it
            self.images_dir.mkdir(exist_ok=True)
            copied = temp_path_for(self.images_dir / source.name)
            try:
                shutil.copy2(source, copied)
                _fsync_file(copied)
            except BaseException:
                copied.unlink(missing_ok=True)
                raise
        try:
            with self.locked():
                self._check_addable(source, mode, name)
                name = name if name is not None else _unique(safe_name(base), self._name_taken)
                if copied is not None:
                    stem = _unique(name, lambda n: (self.images_dir / f"{n}{suffix}").exists())
                    target = self.images_dir / f"{stem}{suffix}"
                    os.replace(copied, target)
                    copied = None
                    _fsync_dir(self.images_dir)
                    stored = self._stored_path(target)
                else:
                    stored = self._stored_path(source)
                entry = ImageEntry(name=name, path=stored, mode=mode, channels=channels,
                                   pixel_size_um=pixel_size, group=group, added=now_iso())
                self._images.append(entry)
        finally:
            if copied is not None:
                copied.unlink(missing_ok=True)
        return dataclasses.replace(entry)

    def _check_addable(self, source: Path, mode: str, name: str | None) -> None:
        """Refuse a file linked twice or an explicit name already used."""
        for entry in self._images:
            if entry.mode == "link" and mode == "link" and self.image_path(entry.name) == source:
                raise ProjectError(f"{source} is already in the project as {entry.name!r}")
        if name is not None and self._name_taken(name):
            raise ProjectError(f"project {self.name!r} already has an image named {name!r}")

    def set_group(self, name: str, group: str | None) -> None:
        """Put image ``name`` in ``group`` (None for no group) and save."""
        with self.locked():
            self.image(name)
            for entry in self._images:
                if entry.name == name:
                    entry.group = group

    def update_image(self, name: str, **changes: Any) -> ImageEntry:
        """Change fields of image ``name``'s entry (e.g. path, channels, pixel_size_um) and save; returns it."""
        unknown = set(changes) - {f.name for f in dataclasses.fields(ImageEntry)} | ({"name"} & set(changes))
        if unknown:
            raise ProjectError(f"cannot change {', '.join(sorted(unknown))} of an image entry")
        with self.locked():  # read-modify-write under project.json's lock, like every other change
            self.image(name)
            for entry in self._images:
                if entry.name == name:
                    for key, value in changes.items():
                        setattr(entry, key, value)
                    changed = dataclasses.replace(entry)
        return changed

    def remove_image(self, name: str) -> None:
        """Forget image ``name``; for a copy, also delete the copy in ``images/``.  Linked files stay."""
        with self.locked():  # saved first, so a crash leaves an unused copy rather than an entry without its file
            entry = self.image(name)
            path = self.image_path(name)
            self._images = [e for e in self._images if e.name != name]
        if entry.mode != "copy":
            return
        try:
            path.resolve().relative_to(self.images_dir.resolve())
        except ValueError:
            log.warning("not deleting %s: a copy outside %s", path, self.images_dir)
            return
        path.unlink(missing_ok=True)

    # -- runs

    def new_run(self, pipeline: str, parameters: Any = None, models: Any = None) -> Run:
        """Start a run of ``pipeline``: a new ``runs/<id>/`` with run.json saved (status running).

        ``parameters`` is a dict or the pipeline's parameter dataclass; ``models`` the model ids
        used (names, card dicts or anything JSON-able).
        """
        self.runs_dir.mkdir(exist_ok=True)
        while True:
            run_id = new_run_id()
            folder = self.runs_dir / run_id
            try:
                folder.mkdir()
                break
            except FileExistsError:
                continue
        run = Run(folder=folder, id=run_id, pipeline=pipeline,
                  parameters=dict(_jsonable(parameters) or {}), models=_model_refs(models),
                  started=now_iso())
        run.save()
        return run

    def runs(self, pipeline: str | None = None) -> list[Run]:
        """The project's runs, oldest first; folders without a readable run.json are skipped (logged)."""
        found = []
        if not self.runs_dir.is_dir():
            return found
        for folder in sorted(p for p in self.runs_dir.iterdir() if p.is_dir()):
            try:
                run = Run.load(folder)
            except ProjectError as exc:
                log.warning("skipping run: %s", exc)
                continue
            if pipeline is None or run.pipeline == pipeline:
                found.append(run)
        return found

    def get_run(self, run_id: str) -> Run:
        """The run with id ``run_id`` (for resuming a batch or reading its results)."""
        return Run.load(self.runs_dir / check_name(run_id, "run id"))

    # -- reports

    def reports(self) -> list[Path]:
        """Report files in ``reports/``, sorted by name (temporary files of unfinished writes excluded)."""
        if not self.reports_dir.is_dir():
            return []
        return sorted(p for p in self.reports_dir.iterdir() if p.is_file() and not p.name.startswith("."))

    def report_path(self, name: str) -> Path:
        """A path in ``reports/`` for a new report ``name`` that never overwrites one (``x_2.xlsx``)."""
        check_name(name, "report name")
        base, suffix = split_image_name(name)
        stem = _unique(base, lambda n: (self.reports_dir / f"{n}{suffix}").exists())
        self.reports_dir.mkdir(exist_ok=True)
        return self.reports_dir / f"{stem}{suffix}"


@contextmanager
def locked_project(folder: str | os.PathLike[str]) -> Iterator[Project]:
    """Open the project in ``folder`` for a change: yields it locked and fresh, saves it at the end.

    ``with locked_project(folder) as project: project.settings["x"] = 1`` is safe while other
    processes change the same project.
    """
    with Project.open(folder).locked() as project:
        yield project


def _parse_project_json(raw: bytes, path: Path) -> dict[str, Any]:
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


def _read_image_metadata(path: Path) -> tuple[list[str], float | None]:
    """Channel names and pixel size (µm) of an image, via app.core.images (imported here, lazily)."""
    from app.core.images import open_image

    with open_image(path) as image:
        info = image.info
        channels = [str(c) for c in (info.channel_names or [])]
        pixel_size = info.pixel_size_um
    return channels, (float(pixel_size) if pixel_size is not None else None)

