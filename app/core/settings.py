"""The user's settings: one typed object with a schema version, stored as JSON under platformdirs.

The file lives at :func:`app.core.paths.settings_path` (``$STAGESCOPE_CONFIG_DIR`` overrides the
folder, which is how tests keep away from a real user's file).  Older files are upgraded through
:data:`MIGRATIONS`; a corrupt file is set aside as ``settings.json.corrupt`` and defaults are used,
so a bad file never stops the app from starting.  No Qt here: the GUI's settings dialog edits a
:class:`Settings` and calls :func:`save_settings`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app.core.atomic import atomic_write_json
from app.core.paths import settings_path

log = logging.getLogger(__name__)

SETTINGS_SCHEMA_VERSION = 1
DEVICES = ("auto", "cpu", "cuda", "mps")
THEMES = ("system", "light", "dark")
MAX_RECENT = 10
DASK_PORT = 8786  # the Dask scheduler's default port


@dataclass
class Settings:
    """Everything the app remembers for a user between sessions."""

    schema_version: int = SETTINGS_SCHEMA_VERSION
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    theme: str = "system"  # system | light | dark
    default_models: dict[str, str] = field(default_factory=dict)  # model pipeline -> model folder or name
    last_folders: dict[str, str] = field(default_factory=dict)  # purpose (project, images, models, reports) -> folder
    recent_projects: list[str] = field(default_factory=list)  # newest first
    pipeline_params: dict[str, dict[str, Any]] = field(default_factory=dict)  # pipeline -> last used parameters
    antibody_thresholds: dict[str, float] = field(default_factory=dict)  # marker name -> threshold T
    window: dict[str, str] = field(default_factory=dict)  # saved geometry/state (base64), GUI only
    # where queued batches run: "" this computer, "tcp://host:8786" a Dask scheduler, "local:N" N local workers
    batch_cluster: str = ""
    # CPU threads torch may use in a job (0 = torch's choice, all cores): on a small or busy machine one
    # thread was about 3x faster than all of them (Stagetool, issue 14: 24.5 s vs 79 s for one section)
    threads: int = 1

    def add_recent_project(self, folder: str | os.PathLike[str]) -> None:
        """Put ``folder`` first in the recent projects (no duplicates, at most :data:`MAX_RECENT`)."""
        text = str(Path(folder).expanduser().absolute())
        self.recent_projects = [text] + [p for p in self.recent_projects if p != text]
        del self.recent_projects[MAX_RECENT:]

    def last_folder(self, purpose: str, default: str | os.PathLike[str] | None = None) -> str:
        """The folder last used for ``purpose`` if it still exists, else ``default`` (or home)."""
        folder = self.last_folders.get(purpose)
        if folder and Path(folder).is_dir():
            return folder
        return str(default if default is not None else Path.home())

    def remember_folder(self, purpose: str, path: str | os.PathLike[str]) -> None:
        """Remember the folder of ``path`` (a file's parent, or the folder itself) for ``purpose``."""
        path = Path(path)
        self.last_folders[purpose] = str(path if path.is_dir() else path.parent)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form stored on disk."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Settings:
        """Build settings from a (migrated) dict; unknown keys are dropped, wrong types fall back to defaults."""
        defaults = cls()
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            if f.name not in data:
                continue
            value, default = data[f.name], getattr(defaults, f.name)
            if isinstance(default, (dict, list)) and not isinstance(value, type(default)):
                log.warning("settings: ignoring %s=%r (expected a %s)", f.name, value, type(default).__name__)
                continue
            if isinstance(default, str) and not isinstance(value, str):
                log.warning("settings: ignoring %s=%r (expected text)", f.name, value)
                continue
            values[f.name] = value
        settings = cls(**values)
        settings.schema_version = SETTINGS_SCHEMA_VERSION
        if settings.theme not in THEMES:
            settings.theme = "system"
        try:
            settings.batch_cluster = check_batch_cluster(settings.batch_cluster)
        except ValueError as error:
            log.warning("settings: ignoring batch_cluster: %s", error)
            settings.batch_cluster = ""
        return settings


def check_batch_cluster(text: str) -> str:
    """The run-queue setting in its stored form ("", "tcp://host:port" or "local:N"); ValueError says what is wrong.

    A bare "host:port" gets the ``tcp://`` prefix; a scheduler address without a port gets Dask's 8786.
    """
    text = (text or "").strip()
    if not text:
        return ""
    if text.lower().startswith("local:"):
        count = text.split(":", 1)[1].strip()
        if not count.isdigit() or int(count) < 1:
            raise ValueError(f"a local cluster needs a number of workers of at least 1, as in local:4 (not {text!r})")
        return f"local:{int(count)}"
    address = text if "://" in text else f"tcp://{text}"
    scheme, rest = address.split("://", 1)
    host, _, port = rest.partition(":")
    if scheme not in ("tcp", "tls") or not host or "/" in rest or (port and not port.isdigit()):
        raise ValueError(f"a Dask scheduler address looks like tcp://host:8786 (not {text!r})")
    return f"{scheme}://{host}:{port or DASK_PORT}"


def _migrate_0_to_1(data: dict[str, Any]) -> dict[str, Any]:
    """Version 0 (unversioned prototype): ``recent`` list and ``gpu`` flag."""
    data = dict(data)
    if "recent" in data and "recent_projects" not in data:
        data["recent_projects"] = list(data.pop("recent") or [])
    if "gpu" in data and "device" not in data:
        data["device"] = "auto" if data.pop("gpu") else "cpu"
    return data


MIGRATIONS: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {0: _migrate_0_to_1}
"""``MIGRATIONS[n]`` turns a settings dict of schema n into schema n + 1."""


def migrate_settings(data: dict[str, Any]) -> dict[str, Any]:
    """Bring a settings dict to :data:`SETTINGS_SCHEMA_VERSION`; a newer one is read as far as it is known."""
    version = data.get("schema_version", 0)
    if not isinstance(version, int) or version < 0:
        version = 0
    while version < SETTINGS_SCHEMA_VERSION:
        data = MIGRATIONS[version](data)
        version += 1
        data["schema_version"] = version
    return data


def load_settings(path: str | os.PathLike[str] | None = None) -> Settings:
    """The user's settings, or defaults when there is no file; a corrupt file is set aside, never fatal."""
    path = Path(path) if path is not None else settings_path()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return Settings()
    except OSError as error:
        log.warning("cannot read settings %s (%s); using defaults", path, error)
        return Settings()
    try:
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
    except ValueError as error:
        backup = path.with_name(path.name + ".corrupt")
        log.warning("settings %s are corrupt (%s); kept as %s, using defaults", path, error, backup)
        try:
            os.replace(path, backup)
        except OSError:
            pass
        return Settings()
    if isinstance(data.get("schema_version"), int) and data["schema_version"] > SETTINGS_SCHEMA_VERSION:
        log.warning("settings %s are from a newer Stagescope; reading the fields this version knows", path)
    return Settings.from_dict(migrate_settings(data))


def save_settings(settings: Settings, path: str | os.PathLike[str] | None = None) -> Path:
    """Write the settings atomically (the folder is created); returns the file written."""
    path = Path(path) if path is not None else settings_path()
    return atomic_write_json(path, settings.to_dict())
