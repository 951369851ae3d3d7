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

This module holds the :class:`Project` class; the project.json schema (names, image entries,
migrations) lives in :mod:`app.core.project_schema` and run folders in :mod:`app.core.runs`.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import shutil
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from app import __version__
from app.core.atomic import (
    _fsync_dir, _fsync_file, atomic_path, atomic_write_bytes, atomic_write_json, atomic_write_text, temp_path_for,
)
from app.core.errors import ImageError, ProjectError
from app.core.locks import hold_project_lock, project_lock
from app.core.outputs import versioned
from app.core.project_schema import (
    ANNOTATIONS_DIR, IMAGES_DIR, MIGRATIONS, MODES, PROJECT_FILE, REPORTS_DIR, RUNS_DIR, SCHEMA_VERSION, SUBFOLDERS,
    ImageEntry, check_name, migrate, now_iso, parse_project_json, safe_name, split_image_name, unique_name,
)
from app.core.runs import RUN_FILE, RUN_STATUSES, Run, jsonable, model_refs, new_run_id  # noqa: F401 (re-exported)

# Run, now_iso and the schema names stay importable from here: the GUI and Stagetool import them from this
# module (app.core.runs and app.core.project_schema are their homes).
__all__ = [
    "SCHEMA_VERSION", "MIGRATIONS", "PROJECT_FILE", "RUN_FILE", "RUN_STATUSES",
    "ImageEntry", "Project", "Run", "ProjectError", "locked_project", "now_iso", "new_run_id",
    "atomic_path", "atomic_write_bytes", "atomic_write_text", "atomic_write_json",
]

log = logging.getLogger(__name__)

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
        data = parse_project_json(raw, path)
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
        backup_name = unique_name(base, lambda n: (self.folder / n).exists())
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
        return parse_project_json(self._read_raw(), self.path)["schema_version"]

    def _read_raw(self) -> bytes:
        try:
            return self.path.read_bytes()
        except OSError as exc:
            raise ProjectError(f"cannot read {self.path}: {exc.strerror or exc}") from exc

    def _reload(self) -> None:
        """Replace name, settings and images by what project.json holds now (migrated in memory if older)."""
        data = parse_project_json(self._read_raw(), self.path)
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

        path = self.image_path(name)
        if not path.is_file():
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
        source = Path(os.path.abspath(Path(path).expanduser()))
        if not source.is_file():
            raise ImageError(f"cannot add image: {source} is not a file")
        if name is not None:
            check_name(name)
        self._check_addable(source, mode, name)  # early, before a long copy; again under the lock
        channels, pixel_size = _read_image_metadata(source)
        base, suffix = split_image_name(source.name)
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
                name = name if name is not None else unique_name(safe_name(base), self._name_taken)
                if copied is not None:
                    stem = unique_name(name, lambda n: (self.images_dir / f"{n}{suffix}").exists())
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
                  parameters=dict(jsonable(parameters) or {}), models=model_refs(models),
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
        """Report files in ``reports/``, sorted by name with ``x (2).xlsx`` after ``x.xlsx`` (temporary files
        of unfinished writes excluded)."""
        if not self.reports_dir.is_dir():
            return []
        return sorted((p for p in self.reports_dir.iterdir() if p.is_file() and not p.name.startswith(".")),
                      key=_report_order)

    def report_path(self, name: str) -> Path:
        """A path in ``reports/`` for a new report ``name`` that never overwrites one.

        Copies are named as the command line names them (``x (2).xlsx``, :func:`app.core.outputs.versioned`).
        """
        check_name(name, "report name")
        path, number = self.reports_dir / name, 1
        while path.exists():
            number += 1
            path = versioned(self.reports_dir / name, number)
        self.reports_dir.mkdir(exist_ok=True)
        return path


def _report_order(path: Path) -> tuple[str, int, str]:
    """Sort key: the name without its `` (n)`` copy number, then that number (1 for the original)."""
    stem, dot, suffix = path.name.partition(".")
    match = re.fullmatch(r"(.*) \((\d+)\)", stem)
    base, number = (match.group(1), int(match.group(2))) if match else (stem, 1)
    return (f"{base}{dot}{suffix}".lower(), number, path.name)


@contextmanager
def locked_project(folder: str | os.PathLike[str]) -> Iterator[Project]:
    """Open the project in ``folder`` for a change: yields it locked and fresh, saves it at the end.

    ``with locked_project(folder) as project: project.settings["x"] = 1`` is safe while other
    processes change the same project.
    """
    with Project.open(folder).locked() as project:
        yield project


def _read_image_metadata(path: Path) -> tuple[list[str], float | None]:
    """Channel names and pixel size (µm) of an image, via app.core.images (imported here, lazily)."""
    from app.core.images import open_image

    with open_image(path) as image:
        info = image.info
        channels = [str(c) for c in (info.channel_names or [])]
        pixel_size = info.pixel_size_um
    return channels, (float(pixel_size) if pixel_size is not None else None)
